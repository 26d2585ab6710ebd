"""The few calls of RabbitMQ's management HTTP API the suite needs (users,
permissions, closing a connection), on the standard library's urllib so that
the suite depends on no HTTP client and works against amqpy and RabbitMQ
alike."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from interop.base import OP_TIMEOUT_S

WAIT_S = 10.0
POLL_S = 0.05


class ManagementError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")
        self.status = status


def quote(segment: str) -> str:
    """A path segment as the API wants it ("/" -> "%2F")."""
    return urllib.parse.quote(segment, safe="")


def url_as(url: str, user: str, password: str) -> str:
    """The AMQP URL with other credentials."""
    parts = urllib.parse.urlsplit(url)
    netloc = f"{quote(user)}:{quote(password)}@{parts.hostname}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def vhost_of(amqp_url: str) -> str:
    path = urllib.parse.urlsplit(amqp_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


class Management:
    """base_url: http://[user:password@]host:port[/api]; credentials default
    to the AMQP URL's (guest/guest)."""

    def __init__(self, base_url: str, amqp_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        amqp = urllib.parse.urlsplit(amqp_url)
        user = urllib.parse.unquote(parts.username or amqp.username or "guest")
        password = urllib.parse.unquote(parts.password or amqp.password or "guest")
        host = parts.hostname or "127.0.0.1"
        self.base = f"{parts.scheme}://{host}:{parts.port}"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.vhost = vhost_of(amqp_url)
        self.url = self.base + "/api"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={
                "Authorization": self.auth,
                "Content-Type": "application/json",
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=OP_TIMEOUT_S) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ManagementError(
                method, path, exc.code, exc.read().decode(errors="replace")
            ) from exc
        return json.loads(raw) if raw else None

    # ---------------------------------------------------------------- users

    def create_user(
        self,
        name: str,
        password: str,
        *,
        configure: str = ".*",
        write: str = ".*",
        read: str = ".*",
    ) -> None:
        """A user without tags, with these permissions on the suite's vhost."""
        self.request(
            "PUT", f"/api/users/{quote(name)}", {"password": password, "tags": ""}
        )
        self.set_permissions(name, configure=configure, write=write, read=read)

    def set_permissions(
        self, user: str, *, configure: str = ".*", write: str = ".*", read: str = ".*"
    ) -> None:
        self.request(
            "PUT",
            f"/api/permissions/{quote(self.vhost)}/{quote(user)}",
            {"configure": configure, "write": write, "read": read},
        )

    def clear_permissions(self, user: str) -> None:
        """The user keeps its password but may no longer use the vhost."""
        self.request("DELETE", f"/api/permissions/{quote(self.vhost)}/{quote(user)}")

    def delete_user(self, name: str) -> None:
        try:
            self.request("DELETE", f"/api/users/{quote(name)}")
        except ManagementError as exc:
            if exc.status != 404:
                raise

    # ---------------------------------------------------------- connections

    def connections_of(self, user: str) -> list[dict[str, Any]]:
        return [
            c for c in self.request("GET", "/api/connections") if c.get("user") == user
        ]

    def wait_connections(
        self, user: str, count: int, timeout: float = WAIT_S
    ) -> list[dict[str, Any]]:
        """Poll until the user has exactly `count` connections (RabbitMQ lists
        a new connection a moment after it opened)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.connections_of(user)
            if len(found) == count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{user} has {len(found)} connections, not {count}, "
                    f"after {timeout} s: {[c.get('name') for c in found]}"
                )
            time.sleep(POLL_S)

    def close_connection(self, name: str, reason: str = "interop test") -> None:
        try:
            self.request(
                "DELETE",
                f"/api/connections/{quote(name)}",
                headers={"X-Reason": reason},
            )
        except ManagementError as exc:
            # Closed in between: the connection is gone either way.
            if exc.status != 404:
                raise

    def close_connections_of(self, user: str, reason: str = "interop test") -> int:
        """Close every connection of `user` and wait until none is listed."""
        found = self.connections_of(user)
        for connection in found:
            self.close_connection(connection["name"], reason)
        self.wait_connections(user, 0)
        return len(found)
