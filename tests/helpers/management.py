"""A client of the management HTTP API, for tests."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

TIMEOUT_S = 10.0


def path(*segments: str) -> str:
    """An API path with each segment percent-encoded ("/" -> %2F)."""
    return "/api/" + "/".join(quote(segment, safe="") for segment in segments)


class Api:
    def __init__(self, base_url: str, user: str = "guest", password: str = "guest"):
        self.base_url = base_url
        self.client = httpx.Client(
            base_url=base_url, auth=(user, password), timeout=TIMEOUT_S
        )

    def as_user(self, user: str, password: str) -> Api:
        return Api(self.base_url, user, password)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(url, **kwargs)

    def put(self, url: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return self.client.put(url, json=body, **kwargs)

    def post(self, url: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return self.client.post(url, json=body, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.delete(url, **kwargs)

    def close(self) -> None:
        self.client.close()
