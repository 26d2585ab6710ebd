"""Serving the management API with hypercorn's trio worker, on the broker's
own trio loop."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from amqpy.management.app import create_app
from amqpy.management.endpoints import ENDPOINTS

if TYPE_CHECKING:
    from amqpy.server.run import BrokerServer

LOGGER = logging.getLogger("amqpy.management")

Scope = MutableMapping[str, Any]
Asgi = Callable[[Scope, Any, Any], Awaitable[None]]


def keep_encoded_slashes(app: Asgi) -> Asgi:
    """RabbitMQ's paths carry the vhost "/" as %2F. ASGI servers decode the
    path, which would turn /api/queues/%2F/q into /api/queues///q; route on
    the raw path instead, with %2F left encoded for the handlers to decode."""

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and raw:
            raw_path = raw.decode("latin-1").split("?", 1)[0]
            scope = dict(scope)
            scope["path"] = unquote(
                raw_path.replace("%2F", "%252F").replace("%2f", "%252F")
            )
        await app(scope, receive, send)

    return wrapped


async def serve_management(
    server: BrokerServer,
    shutdown: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` returns; reports the port it listens on.

    Raises:
        OSError: the address cannot be bound.
    """
    settings = server.config.management
    config = HypercornConfig()
    config.bind = [f"{settings.bind}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("amqpy.http")
    config.graceful_timeout = 1.0
    if settings.certfile and settings.keyfile:
        config.certfile = settings.certfile
        config.keyfile = settings.keyfile
    app = keep_encoded_slashes(create_app(server, ENDPOINTS))
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(
                partial(serve, app, config, shutdown_trigger=shutdown)  # type: ignore[arg-type]
            )
        except OSError as error:
            raise OSError(
                error.errno,
                f"cannot listen on {settings.bind}:{settings.port} for the "
                f"management API: {error.strerror} (see --management-port)",
            ) from error
        port = int(binds[0].rsplit(":", 1)[1])
        LOGGER.info("management API listening on %s:%d", settings.bind, port)
        task_status.started(port)
