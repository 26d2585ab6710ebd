"""The management HTTP API: RabbitMQ's paths, JSON field names, status codes
and error bodies, so scripts and monitoring written for RabbitMQ's
management plugin work unchanged.

Requests run on the broker's trio loop (hypercorn's trio worker), so a
handler reads and changes the broker directly: no locks, no copies. Each
endpoint module gives a list of `Endpoint`s; `create_app` routes them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from amqpy.broker.access import (
    ADMINISTRATOR,
    MANAGEMENT_TAGS,
    MONITORING,
    POLICYMAKER,
    User,
)
from amqpy.broker.errors import AmqpError
from amqpy.broker.vhost import VHost
from amqpy.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from amqpy.server.run import BrokerServer

LOGGER = logging.getLogger("amqpy.management")

REALM = 'Basic realm="RabbitMQ Management"'
# Failed logins: logged with the peer, at most a burst then one a second.
LOGIN_FAILURES = RateLimitedLog(LOGGER)

# The user of a public endpoint's requests (no name, tags or permissions).
ANONYMOUS = User(name="", password_hash="")


class Level(enum.IntEnum):
    """What a user's tags let them do in the API, as RabbitMQ's tags."""

    MANAGEMENT = 1  # their own vhosts' objects
    POLICYMAKER = 2  # ... and policies there
    MONITORING = 3  # ... and read everything
    ADMINISTRATOR = 4  # everything


def user_level(user: User) -> Level | None:
    tags = set(user.tags)
    if ADMINISTRATOR in tags:
        return Level.ADMINISTRATOR
    if MONITORING in tags:
        return Level.MONITORING
    if POLICYMAKER in tags:
        return Level.POLICYMAKER
    if tags & MANAGEMENT_TAGS:
        return Level.MANAGEMENT
    return None


class ApiError(Exception):
    """An error answer: `{"error": error, "reason": reason}` with `status`."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def not_found() -> ApiError:
    return ApiError(404, "Object Not Found", "Not Found")


def bad_request(reason: str) -> ApiError:
    return ApiError(400, "bad_request", reason)


def not_administrator() -> ApiError:
    return ApiError(401, "not_authorised", "Not administrator user")


@attrs.define
class Context:
    """One authenticated request."""

    request: Request
    server: BrokerServer
    user: User
    level: Level

    @property
    def broker(self) -> Any:
        return self.server.broker

    @property
    def node_name(self) -> str:
        """This node's name in the API (RabbitMQ's rabbit@host)."""
        return str(self.server.config.server.cluster_name)

    async def durably_saved(self) -> None:
        """Until the definitions on disk hold every change made so far:
        RabbitMQ answers a change after its own durable write."""
        await self.server.wait_definitions_saved(self.server.definitions_generation)

    def param(self, name: str) -> str:
        """A path segment, percent-decoded once more (RabbitMQ's paths carry
        "%2F" for the vhost "/", which the router has decoded to "/")."""
        return unquote(self.request.path_params[name])

    def vhost(self, name: str | None = None) -> VHost:
        """The vhost named in the path (`vhost`), 404 if missing or not
        visible to the user."""
        name = self.param("vhost") if name is None else name
        vhost = self.broker.vhosts.get(name)
        if vhost is None or not self.can_see_vhost(name):
            raise not_found()
        return vhost

    def can_see_vhost(self, name: str, *, monitoring: bool = False) -> bool:
        """Objects in a vhost are shown to administrators and to users with
        permissions there; `monitoring`: also to monitoring users (RabbitMQ
        shows them every vhost in /api/vhosts and the overview's totals,
        but only their own vhosts' queues and exchanges)."""
        if self.level >= (Level.MONITORING if monitoring else Level.ADMINISTRATOR):
            return True
        return self.broker.access.can_access_vhost(self.user.name, name)

    def visible_vhosts(self, *, monitoring: bool = False) -> list[VHost]:
        return [
            vhost
            for name, vhost in self.broker.vhosts.items()
            if self.can_see_vhost(name, monitoring=monitoring)
        ]

    def require(self, level: Level) -> None:
        if self.level < level:
            raise (
                not_administrator()
                if level is Level.ADMINISTRATOR
                else ApiError(401, "not_authorised", "Not authorised")
            )

    def authorize(self, vhost: VHost, permission: str, kind: str, name: str) -> None:
        """The user's AMQP permission in `vhost`, as the API checks it before
        changing an object (401 "Access refused." when missing)."""
        try:
            self.broker.access.check(self.user.name, vhost.name, permission, kind, name)
        except AmqpError as error:
            raise ApiError(401, "not_authorised", "Access refused.") from error

    async def json_body(self, *, error: str = "not_json") -> dict[str, Any]:
        """The request's JSON object (400 when it is not one)."""
        raw = await self.request.body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, "bad_request", error) from exc
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", error)
        return body


Handler = Callable[[Context], Awaitable[Any]]


@attrs.frozen
class Endpoint:
    path: str
    methods: tuple[str, ...]
    handler: Handler
    # The least a user needs to get in (their tags); endpoints check more.
    level: Level = Level.MANAGEMENT
    # Served without authentication (as RabbitMQ's Prometheus /metrics); the
    # handler's context has a user with no name, no tags and no vhosts.
    public: bool = False


def _credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, colon, password = decoded.partition(":")
    return (name, password) if colon else None


def error_response(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": REALM} if error.status == 401 else None
    if not error.error:
        return Response(status_code=error.status, headers=headers)
    return JSONResponse(
        {"error": error.error, "reason": error.reason},
        status_code=error.status,
        headers=headers,
    )


def _authenticate(server: BrokerServer, request: Request) -> tuple[User, Level]:
    credentials = _credentials(request)
    if credentials is None:
        raise ApiError(401, "", "")  # RabbitMQ: the challenge, no body
    name, password = credentials
    user = server.broker.authenticate(name, password)
    peer = request.client.host if request.client else ""
    if user is None or (
        name in server.config.auth.loopback_users and not _is_loopback(peer)
    ):
        LOGIN_FAILURES.warning("HTTP login refused for user '%s' from %s", name, peer)
        raise ApiError(401, "not_authorized", "Login failed")
    level = user_level(user)
    if level is None:
        raise ApiError(401, "not_authorised", "Not management user")
    return user, level


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def _wrap(server: BrokerServer, endpoint: Endpoint) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Request) -> Response:
        try:
            if endpoint.public:
                user, level = ANONYMOUS, Level.MANAGEMENT
            else:
                user, level = _authenticate(server, request)
            context = Context(request, server, user, level)
            context.require(endpoint.level)
            result = await endpoint.handler(context)
        except ApiError as error:
            return error_response(error)
        except AmqpError as error:
            # What a channel would be closed with is a 400 here, with the
            # same text (RabbitMQ's inequivalent-argument answers, say).
            return error_response(ApiError(400, "bad_request", error.text))
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    return handle


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(not_found())


def create_app(server: BrokerServer, endpoints: Iterable[Endpoint]) -> Starlette:
    routes = [
        Route(
            endpoint.path,
            _wrap(server, endpoint),
            methods=list(endpoint.methods),
        )
        for endpoint in endpoints
    ]
    return Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        {"error": "Method Not Allowed", "reason": "Method Not Allowed"},
        status_code=405,
    )


def no_content() -> Response:
    return Response(status_code=204)


def created() -> Response:
    return Response(status_code=201)
