"""A small client of the management HTTP API, for the `amqpy` CLI.

Standard library only (urllib, json, base64), so the CLI works wherever
amqpy is installed. It speaks to amqpy's API and to RabbitMQ's management
plugin alike: same paths, same JSON, same status codes. Every failure
becomes a `ClientError` whose text a person can act on.
"""

from __future__ import annotations

import base64
import html
import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_URL = "http://127.0.0.1:15672"
DEFAULT_TIMEOUT_S = 30.0


class ClientError(Exception):
    """A failure to report in one line; `status` is the HTTP status (0 when
    there was no HTTP answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class UsageError(Exception):
    """Bad command-line input, found before anything was sent."""


def api_path(*segments: str) -> str:
    """`/api/...` with each segment percent-encoded ("/" becomes %2F)."""
    return "/api/" + "/".join(quote(segment, safe="") for segment in segments)


def base_url(url: str) -> str:
    """The management base URL, from what a person may type: with or without
    a trailing "/" or "/api"."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"--url must be the management API's base URL, as {DEFAULT_URL}; "
            f"got {url!r}"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise UsageError(f"--url has a bad port: {url!r}") from error
    trimmed = url.rstrip("/")
    if trimmed.endswith("/api"):
        trimmed = trimmed[: -len("/api")]
    return trimmed


class ManagementClient:
    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url = base_url(url)
        self.user = user
        self.timeout = timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        # Sent with the first request: the API answers 401 without a body to
        # a request that has none, so waiting for the challenge gains nothing.
        self._authorization = f"Basic {token}"

    def get(self, path: str, *, what: str = "", vhost: str | None = None) -> Any:
        return self.request("GET", path, what=what, vhost=vhost)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        what: str = "",
        vhost: str | None = None,
        accept: Iterable[int] = (),
    ) -> Any:
        """Send one request; the answer's JSON (None when empty).

        `what` names the object for a 404 message ("queue 'q' in vhost '/'"),
        `vhost` the vhost for 401/404 messages; statuses in `accept` are
        answers, not errors (the alarms check answers 503 with a body).
        """
        url = self.url + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", self._authorization)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return self._json(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read() if error.fp is not None else b""
            error.close()
            if error.code in accept:
                return self._json(raw)
            raise self._http_error(error.code, raw, method, path, what, vhost) from None
        except urllib.error.URLError as error:
            raise self._unreachable(error.reason) from None
        except http.client.HTTPException as error:
            # For instance the AMQP port, which answers an HTTP request with
            # the AMQP protocol header and closes.
            raise ClientError(
                f"unexpected answer from {self.url}: not HTTP ({type(error).__name__})"
                " — is --url the management API's port, not the AMQP port?"
            ) from None
        except OSError as error:
            raise self._unreachable(error) from None

    def _json(self, raw: bytes) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ClientError(
                f"unexpected answer from {self.url}: not JSON"
                " — is --url the management API's base URL?"
            ) from None

    def _unreachable(self, reason: object) -> ClientError:
        prefix = f"cannot reach the management API at {self.url}"
        if isinstance(reason, ConnectionRefusedError):
            return ClientError(
                f"{prefix}: connection refused — is the broker running with the "
                "management API enabled?"
            )
        if isinstance(reason, socket.gaierror):
            host = urlsplit(self.url).hostname
            return ClientError(f"{prefix}: unknown host {host!r}")
        if isinstance(reason, ConnectionResetError):
            return ClientError(
                f"{prefix}: connection reset — is --url the management API's "
                "port, not the AMQP port?"
            )
        if isinstance(reason, TimeoutError):
            return ClientError(f"{prefix}: no answer within {self.timeout:g} s")
        if isinstance(reason, OSError) and reason.strerror:
            return ClientError(f"{prefix}: {reason.strerror.lower()}")
        return ClientError(f"{prefix}: {reason}")

    def _http_error(
        self,
        status: int,
        raw: bytes,
        method: str,
        path: str,
        what: str,
        vhost: str | None,
    ) -> ClientError:
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = {}
        reason = body.get("reason", "") if isinstance(body, dict) else ""
        reason = readable_reason(reason)
        in_vhost = f" in vhost '{vhost}'" if vhost is not None else ""
        if status == 401:
            return ClientError(self._refusal(reason, in_vhost), status)
        if status == 404:
            if reason == "vhost_not_found" and vhost is not None:
                return ClientError(f"vhost '{vhost}' not found", status)
            if reason and reason != "Not Found":
                return ClientError(f"not found: {reason}", status)
            if what and isinstance(body, dict) and "error" in body:
                return ClientError(f"{what} not found", status)
            # Not the API's own 404 answer, or a path that names no object.
            return ClientError(
                f"the management API at {self.url} has no {path}"
                " — is --url its base URL?",
                status,
            )
        if status == 400:
            return ClientError(f"refused by the broker: {reason or 'bad request'}", 400)
        if status == 405:
            return ClientError(
                f"the management API at {self.url} does not support {method} {path}",
                status,
            )
        detail = f": {reason}" if reason else ""
        return ClientError(
            f"the management API at {self.url} failed with HTTP {status}{detail}",
            status,
        )

    def _refusal(self, reason: str, in_vhost: str) -> str:
        user = self.user
        if reason == "Not management user":
            return (
                f"user '{user}' may not use the management API: it needs the "
                "management, monitoring or administrator tag"
            )
        if reason == "Not administrator user":
            return f"user '{user}' is not an administrator: this needs that tag"
        if reason == "Access refused.":
            return (
                f"access refused to user '{user}'{in_vhost}: it lacks the "
                "permission (or the name is reserved, as amq.*)"
            )
        if reason in ("Login failed", ""):
            return (
                f"login to the management API at {self.url} failed for user "
                f"'{user}': wrong user name or password (set --user/--password "
                "or AMQPY_USER/AMQPY_PASSWORD)"
            )
        return f"user '{user}' is not authorised: {reason}"


def readable_reason(reason: Any) -> str:
    """An error body's reason as one line of text. RabbitMQ's may be an
    Erlang term rendered as JSON (strings as lists of character codes) or
    HTML-escaped text."""
    if isinstance(reason, str):
        return " ".join(html.unescape(reason).split())
    return json.dumps(_strings(reason), ensure_ascii=False)


def _strings(term: Any) -> Any:
    if isinstance(term, list):
        if term and all(isinstance(c, int) and 32 <= c < 127 for c in term):
            return "".join(map(chr, term))
        return [_strings(item) for item in term]
    return term
