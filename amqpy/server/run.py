"""Running the broker: listeners, connections, signals, shutdown."""

from __future__ import annotations

import errno
import logging
import os
import signal
from pathlib import Path

import trio

from amqpy.broker.broker import Broker
from amqpy.config import Config, ConfigError
from amqpy.reply_code import ReplyCode
from amqpy.server.connection import ConnectionHandler

LOGGER = logging.getLogger(__name__)

SHUTDOWN_TEXT = (
    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
)
# Errors from accept() that mean "out of resources", not "listener broken".
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class BrokerServer:
    """A broker with its listeners and connections."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker = Broker()
        self.broker.add_vhost(config.auth.default_vhost)
        self.broker.add_user(
            config.auth.default_user, config.auth.default_pass, ("administrator",)
        )
        self.connections: set[ConnectionHandler] = set()
        self.port = 0
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        _prepare_data_dir(Path(self.config.store.data_dir))
        bind, port = self.config.listener.bind, self.config.listener.port
        try:
            listeners = await trio.open_tcp_listeners(port, host=bind)
        except OSError as error:
            raise OSError(
                error.errno, f"cannot listen on {bind}:{port}: {error.strerror}"
            ) from error
        sockname = listeners[0].socket.getsockname()
        self.port = sockname[1]
        LOGGER.info("listening on %s:%d", self.config.listener.bind, self.port)
        async with trio.open_nursery() as connections_nursery:
            async with trio.open_nursery() as listener_nursery:
                for listener in listeners:
                    listener_nursery.start_soon(
                        self._accept_loop, listener, connections_nursery
                    )
                task_status.started(self.port)
                await self._shutdown.wait()
                listener_nursery.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()
            await self._close_connections(connections_nursery)
        LOGGER.info("amqpy stopped")
        self._stopped.set()

    async def _close_connections(self, nursery: trio.Nursery) -> None:
        for connection in list(self.connections):
            connection.close(ReplyCode.CONNECTION_FORCED, SHUTDOWN_TEXT)
        nursery.cancel_scope.deadline = (
            trio.current_time() + self.config.listener.shutdown_grace_s
        )

    async def _accept_loop(
        self, listener: trio.SocketListener, nursery: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as error:
                if error.errno in _ACCEPT_RESOURCE_ERRORS:
                    LOGGER.error("accept failed (%s); retrying in 100 ms", error)
                    await trio.sleep(0.1)
                    continue
                raise
            nursery.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = _format_address(stream.socket.getpeername())
            local = _format_address(stream.socket.getsockname())
        except OSError:
            await stream.aclose()
            return
        handler = ConnectionHandler(self, stream, peer, local)
        self.connections.add(handler)
        LOGGER.debug("accepting AMQP connection %s", handler.name)
        try:
            await handler.run()
        except Exception:
            # One connection's bug must not take the broker down.
            LOGGER.exception("connection %s crashed", handler.name)
        finally:
            self.connections.discard(handler)


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _prepare_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create data dir {path}: {error}") from error
    if not os.access(path, os.W_OK):
        raise ConfigError(f"data dir {path} is not writable")


async def run_broker(
    config: Config,
    *,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[BrokerServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a broker until its shutdown is requested (or SIGINT/SIGTERM)."""
    server = BrokerServer(config)
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_wait_for_signals, server)
        await nursery.start(server.serve)
        task_status.started(server)
        await server.wait_stopped()
        nursery.cancel_scope.cancel()


async def _wait_for_signals(server: BrokerServer) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            LOGGER.info("received %s, shutting down", signal.Signals(signum).name)
            server.request_shutdown()
            return
