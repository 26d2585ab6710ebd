"""Running the broker: listeners, connections, signals, shutdown."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import ssl
import weakref
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import trio

from amqpy.broker.broker import Broker
from amqpy.broker.channel import Channel
from amqpy.config import Config, ConfigError, MemoryConfig, TlsConfig
from amqpy.reply_code import ReplyCode
from amqpy.server.channel import ChannelHandler
from amqpy.server.connection import ConnectionHandler
from amqpy.server.timers import TrioScheduler
from amqpy.store.definitions import (
    DefinitionChange,
    DefinitionsStore,
    StoreFormatError,
    read_definitions_file,
)
from amqpy.store.lock import DataDirLock, DataDirLockedError
from amqpy.store.message_store import MessageStore
from amqpy.store.queue_log import LogFormatError

LOGGER = logging.getLogger(__name__)

SHUTDOWN_TEXT = (
    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
)
# Errors from accept() that mean "out of resources", not "listener broken".
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class StartupError(Exception):
    """The broker cannot start with this data folder; nothing was changed."""


class StoreFailedError(Exception):
    """The broker stopped because it could not write its durable state."""


class BrokerServer:
    """A broker with its listeners and connections."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._data_dir = Path(config.store.data_dir)
        self._definitions = DefinitionsStore(self._data_dir)
        self._definitions_changed = trio.Event()
        # Each durable change bumps the generation; replies that follow one
        # wait until a save has covered it (so a declare-ok is never sent for
        # a durable queue that a crash could lose).
        self.definitions_generation = 0
        self._saved_generation = 0
        self._definitions_saved = trio.Event()
        self._definitions_lock = trio.Lock()
        # Durable exchange/queue/binding changes not yet in the definitions
        # log, and whether something else changed (a snapshot is due).
        self._unsaved_changes: list[DefinitionChange] = []
        self._snapshot_due = False
        self.store = MessageStore(
            self._data_dir,
            config.store.segment_max_bytes,
            on_pending=self._wake_committer,
        )
        self._committer_wakeup = trio.Event()
        self._store_committed = trio.Event()
        # Resource alarms in force ("disk"); publishers wait while any is.
        self.alarms: set[str] = set()
        self._alarms_cleared = trio.Event()
        self.disk_free_limit_bytes = config.store.disk_free_limit_bytes
        self.memory_limit_bytes = memory_limit_bytes(config.memory)
        # Channels with confirms waiting for a group commit.
        self.awaiting_confirms: set[ChannelHandler] = set()
        self.scheduler = TrioScheduler()
        self.broker = Broker(
            on_durable_change=self._mark_definitions_changed,
            open_log=self.store.open_log,
            scheduler=self.scheduler,
        )
        self.connections: set[ConnectionHandler] = set()
        # Open (past connection.open) connections per vhost and per user,
        # for the max-connections limits.
        self.vhost_connections: Counter[str] = Counter()
        self.user_connections: Counter[str] = Counter()
        self.port = 0
        self.management_port = 0  # when the management API is enabled
        self.tls_port = 0  # when the TLS listener is enabled
        self.failed = False  # a fail-stop error ended the broker
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    def connection_opened(self, connection: ConnectionHandler) -> None:
        self.vhost_connections[connection.vhost.name] += 1
        self.user_connections[connection.username] += 1

    def connection_released(self, connection: ConnectionHandler) -> None:
        for counter, key in (
            (self.vhost_connections, connection.vhost.name),
            (self.user_connections, connection.username),
        ):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def close_connections(
        self,
        reply_code: int,
        reply_text: str,
        predicate: Callable[[ConnectionHandler], bool],
    ) -> int:
        """Close (from our side) every open connection `predicate` picks."""
        chosen = [c for c in self.connections if c.opened and predicate(c)]
        for connection in chosen:
            connection.close(reply_code, reply_text)
        return len(chosen)

    def delete_vhost(self, name: str) -> bool:
        """Close the vhost's connections, then drop it and all it holds."""
        if name not in self.broker.vhosts:
            return False
        self.close_connections(
            ReplyCode.CONNECTION_FORCED,
            f"CONNECTION_FORCED - vhost '{name}' is deleted",
            lambda connection: connection.vhost.name == name,
        )
        return self.broker.delete_vhost(name)

    def delete_user(self, name: str) -> bool:
        """Drop a user; their open connections are closed."""
        if not self.broker.delete_user(name):
            return False
        self.close_connections(
            ReplyCode.CONNECTION_FORCED,
            f"CONNECTION_FORCED - user '{name}' is deleted",
            lambda connection: connection.username == name,
        )
        return True

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        _prepare_data_dir(self._data_dir)
        lock = DataDirLock(self._data_dir)
        try:
            lock.acquire()
        except DataDirLockedError as error:
            raise StartupError(str(error)) from error
        try:
            self._recover()
            await self._serve(task_status)
        finally:
            lock.release()

    def _recover(self) -> None:
        """Load the durable definitions (before anything is written)."""
        try:
            definitions = self._definitions.load()
            self.broker.import_definitions(definitions)
            if "users" not in definitions:
                # A new data folder (or one from before users were kept).
                self._seed_defaults()
            # Start from a snapshot of what was recovered: the log replayed
            # at this start is folded in, and the import's own changes
            # (which re-announce every binding) need not be logged.
            self._unsaved_changes.clear()
            self._snapshot_due = bool(
                self._definitions.log_changes or self.definitions_generation
            )
            self.store.check_formats()
            message_count = self.broker.recover_messages()
            self.store.remove_unused()
        except (StoreFormatError, LogFormatError, ValueError, OSError) as error:
            raise StartupError(f"cannot recover: {error}") from error
        load_path = self.config.store.load_definitions
        if load_path:
            # RabbitMQ's load_definitions: a definitions file (RabbitMQ's own
            # exports included) applied at every start; what exists stays.
            try:
                self.broker.import_definitions(read_definitions_file(Path(load_path)))
            except (OSError, ValueError) as error:
                raise StartupError(f"cannot load {load_path}: {error}") from error
            LOGGER.info("imported definitions from %s", load_path)
        LOGGER.info(
            "recovered %d exchanges, %d queues, %d bindings from %s",
            len(definitions.get("exchanges", [])),
            len(definitions.get("queues", [])),
            len(definitions.get("bindings", [])),
            self._definitions.path,
        )
        LOGGER.info("recovered %d persistent messages", message_count)

    def _seed_defaults(self) -> None:
        auth = self.config.auth
        configure, write, read = auth.default_permissions
        self.broker.seed_defaults(
            auth.default_user,
            auth.default_pass,
            auth.default_vhost,
            auth.default_user_tags,
            (configure, write, read),
        )

    def _mark_definitions_changed(self, change: DefinitionChange | None) -> None:
        if change is None:
            self._snapshot_due = True
            self._unsaved_changes.clear()  # the snapshot will hold them
        elif not self._snapshot_due:
            self._unsaved_changes.append(change)
        self.definitions_generation += 1
        self._definitions_changed.set()

    async def wait_definitions_saved(self, generation: int) -> None:
        while self._saved_generation < generation:
            await self._definitions_saved.wait()

    async def _definitions_writer_task(self) -> None:
        """Save the definitions whenever they change, off the event loop."""
        while True:
            await self._definitions_changed.wait()
            self._definitions_changed = trio.Event()
            await self._save_definitions()

    async def _save_definitions(self) -> None:
        async with self._definitions_lock:  # one writer of the file at a time
            if self._saved_generation >= self.definitions_generation:
                return
            await self._save_definitions_locked()

    async def _save_definitions_locked(self) -> None:
        """Append the changes since the last save to the definitions log, or
        write a whole snapshot when one is due (the log outgrew the last
        snapshot, or a change that is not logged happened)."""
        generation = self.definitions_generation
        store = self._definitions
        try:
            if (
                self._snapshot_due
                or not store.can_append
                or store.log_bytes
                > max(self.config.store.definitions_log_min_bytes, store.snapshot_bytes)
            ):
                # Exported on the loop (a consistent view), written in a thread.
                snapshot = self.broker.export_definitions()
                self._snapshot_due = False
                self._unsaved_changes.clear()
                await trio.to_thread.run_sync(store.save, snapshot)
            else:
                changes, self._unsaved_changes = self._unsaved_changes, []
                await trio.to_thread.run_sync(store.append, changes)
            self._saved_generation = generation
            self._definitions_saved.set()
            self._definitions_saved = trio.Event()
        except OSError:
            # Fail-stop: a broker that cannot keep its definitions must not
            # go on promising durability.
            LOGGER.exception("cannot write %s; stopping", self._definitions.path)
            self.failed = True
            self.request_shutdown()

    def _wake_committer(self) -> None:
        self._committer_wakeup.set()

    async def _committer_task(self) -> None:
        """Group commit: whatever queues wrote since the last fsync goes to
        disk in one batch, in a thread; then the confirms it covers leave."""
        interval = self.config.store.commit_interval_ms / 1000
        while True:
            await self._committer_wakeup.wait()
            self._committer_wakeup = trio.Event()
            if interval:
                await trio.sleep(interval)
            await self._commit()

    async def wait_alarms_cleared(self) -> None:
        while self.alarms:
            await self._alarms_cleared.wait()

    def set_alarm(self, name: str, active: bool) -> None:
        if active and name not in self.alarms:
            LOGGER.warning("%s resource alarm set; publishers are blocked", name)
            self.alarms.add(name)
        elif not active and name in self.alarms:
            LOGGER.warning("%s resource alarm cleared", name)
            self.alarms.discard(name)
            if not self.alarms:
                self._alarms_cleared.set()
                self._alarms_cleared = trio.Event()

    async def _disk_monitor_task(self) -> None:
        """RabbitMQ's disk alarm: free space under the limit blocks publishers."""
        interval = self.config.store.disk_check_interval_s
        while True:
            try:
                usage = await trio.to_thread.run_sync(os.statvfs, self._data_dir)
            except OSError as error:
                # The data folder is gone or unreadable: nothing can be stored.
                LOGGER.error("cannot check free disk space: %s", error)
                self.set_alarm("disk", True)
            else:
                free = usage.f_bavail * usage.f_frsize
                self.set_alarm("disk", free < self.disk_free_limit_bytes)
            await trio.sleep(interval)

    async def _memory_monitor_task(self) -> None:
        """RabbitMQ's memory alarm: resident memory above the high watermark
        blocks publishers; consumers go on draining, which frees it."""
        interval = self.config.memory.check_interval_s
        while True:
            used = resident_memory_bytes()
            if used is not None and self.memory_limit_bytes:
                if used > self.memory_limit_bytes and release_free_memory():
                    # Freed memory may still be counted: the C allocator
                    # keeps it until trimmed. Count what is really in use.
                    used = resident_memory_bytes() or used
                self.set_alarm("memory", used > self.memory_limit_bytes)
            await trio.sleep(interval)

    async def _consumer_timeout_task(self) -> None:
        """RabbitMQ's consumer_timeout: a channel holding a delivery (from a
        consumer or basic.get) unacknowledged for longer is closed with 406.

        No clock is read per delivery: every check notes each channel's next
        delivery tag; a delivery whose tag is below the one noted at least
        `timeout` ago is that old."""
        timeout_ms = self.config.limits.consumer_timeout_ms
        if not timeout_ms:
            return
        timeout = timeout_ms / 1000
        interval = min(timeout / 2, 60.0)
        # Per channel: (time, next delivery tag then), oldest first.
        marks: weakref.WeakKeyDictionary[Channel, deque[tuple[float, int]]] = (
            weakref.WeakKeyDictionary()
        )
        text = (
            "delivery acknowledgement on channel {} timed out. Timeout value "
            f"used: {timeout_ms} ms. This timeout value can be configured, see "
            "consumers doc guide to learn more"
        )
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for connection in list(self.connections):
                for channel_id, handler in list(connection.channels.items()):
                    channel = handler.channel
                    history = marks.setdefault(channel, deque())
                    history.append((now, channel.next_delivery_tag))
                    cutoff = None
                    while history and history[0][0] <= now - timeout:
                        cutoff = history.popleft()[1]
                    if cutoff is None:
                        continue
                    history.appendleft((now - timeout, cutoff))
                    if channel.unacked and min(channel.unacked) < cutoff:
                        connection.timed_out(channel_id, text.format(channel_id))

    async def wait_store_committed(self) -> None:
        """Until the next group commit has finished."""
        await self._store_committed.wait()

    async def _commit(self) -> None:
        batch, generation = self.store.take_batch()
        if self._saved_generation < self.definitions_generation:
            # A message may go to a queue whose declaration is not on disk
            # yet: the definitions are saved first, so no confirm outlives a
            # crash that would forget its queue.
            await self._save_definitions()
            if self.failed:
                return
        if batch:
            try:
                await trio.to_thread.run_sync(batch.run)
            except Exception:
                # Fail-stop: nothing that is not on disk may be confirmed.
                LOGGER.exception("message store write failed; stopping")
                self.failed = True
                self.request_shutdown()
                return
        self.store.committed_generation = generation
        self._store_committed.set()
        self._store_committed = trio.Event()
        for handler in list(self.awaiting_confirms):
            if not handler.release_confirms(generation):
                self.awaiting_confirms.discard(handler)

    async def _open_listeners(
        self, bind: str, port: int, what: str
    ) -> list[trio.SocketListener]:
        try:
            listeners = await trio.open_tcp_listeners(port, host=bind)
        except OSError as error:
            raise OSError(
                error.errno, f"cannot listen on {bind}:{port}{what}: {error.strerror}"
            ) from error
        return listeners

    async def _serve(self, task_status: trio.TaskStatus[int]) -> None:
        config = self.config
        # (listener, TLS context or None for plain AMQP)
        listeners: list[tuple[trio.SocketListener, ssl.SSLContext | None]] = []
        if config.listener.enabled:
            plain = await self._open_listeners(
                config.listener.bind, config.listener.port, ""
            )
            self.port = plain[0].socket.getsockname()[1]
            LOGGER.info("listening on %s:%d", config.listener.bind, self.port)
            listeners += [(listener, None) for listener in plain]
        if config.tls.enabled:
            context = tls_context(config.tls)
            secure = await self._open_listeners(
                config.tls.bind, config.tls.port, " (TLS)"
            )
            self.tls_port = secure[0].socket.getsockname()[1]
            LOGGER.info("TLS listening on %s:%d", config.tls.bind, self.tls_port)
            listeners += [(listener, context) for listener in secure]
        async with trio.open_nursery() as service_nursery:
            service_nursery.start_soon(self._definitions_writer_task)
            service_nursery.start_soon(self._committer_task)
            service_nursery.start_soon(self._disk_monitor_task)
            service_nursery.start_soon(self._memory_monitor_task)
            service_nursery.start_soon(self._consumer_timeout_task)
            service_nursery.start_soon(self.scheduler.run)
            if config.management.enabled:
                # Imported here: the HTTP stack is not needed without it.
                from amqpy.management.http import serve_management

                self.management_port = await service_nursery.start(
                    serve_management, self, trio.sleep_forever
                )
            async with trio.open_nursery() as connections_nursery:
                async with trio.open_nursery() as listener_nursery:
                    for listener, context in listeners:
                        listener_nursery.start_soon(
                            self._accept_loop, listener, context, connections_nursery
                        )
                    task_status.started(self.port)
                    await self._shutdown.wait()
                    listener_nursery.cancel_scope.cancel()
                for listener, _ in listeners:
                    await listener.aclose()
                await self._close_connections(connections_nursery)
            service_nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            if not self.failed:
                await self._save_definitions()
            if self.store.has_pending and not self.failed:
                await self._commit()
        LOGGER.info("amqpy stopped")
        self._stopped.set()

    async def _close_connections(self, nursery: trio.Nursery) -> None:
        for connection in list(self.connections):
            connection.close(ReplyCode.CONNECTION_FORCED, SHUTDOWN_TEXT)
        nursery.cancel_scope.deadline = (
            trio.current_time() + self.config.listener.shutdown_grace_s
        )

    async def _accept_loop(
        self,
        listener: trio.SocketListener,
        context: ssl.SSLContext | None,
        nursery: trio.Nursery,
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
            # A fixed name: trio would build a string per connection.
            nursery.start_soon(self._run_connection, stream, context, name="amqp")

    async def _run_connection(
        self, stream: trio.SocketStream, context: ssl.SSLContext | None
    ) -> None:
        try:
            peer = _format_address(stream.socket.getpeername())
            local = _format_address(stream.socket.getsockname())
        except OSError:
            await stream.aclose()
            return
        connection_stream: trio.abc.Stream = stream
        if context is not None:
            secure = await self._tls_handshake(stream, context, peer)
            if secure is None:
                return
            connection_stream = secure
        handler = ConnectionHandler(self, connection_stream, peer, local)
        del peer, local  # the handler keeps its own copies in its name
        self.connections.add(handler)
        LOGGER.debug("accepting AMQP connection %s", handler.name)
        try:
            await handler.run()
        except Exception:
            # One connection's bug must not take the broker down.
            LOGGER.exception("connection %s crashed", handler.name)
        finally:
            self.connections.discard(handler)

    async def _tls_handshake(
        self, stream: trio.SocketStream, context: ssl.SSLContext, peer: str
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """The TLS stream once the handshake is done; None (socket closed, a
        log line) when it fails or takes longer than the handshake timeout."""
        secure = trio.SSLStream(stream, context, server_side=True)
        reason = None
        with trio.move_on_after(self.config.listener.handshake_timeout_s) as scope:
            try:
                await secure.do_handshake()
            except trio.BrokenResourceError as error:
                cause = error.__cause__
                reason = str(cause or "connection closed during the handshake")
        if scope.cancelled_caught:
            reason = "handshake timeout"
        if reason is None:
            return secure
        LOGGER.warning("TLS handshake with %s failed: %s", peer, reason)
        with trio.move_on_after(1) as close_scope:
            close_scope.shield = True
            await stream.aclose()
        return None


def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def memory_limit_bytes(settings: MemoryConfig) -> int:
    """The memory high watermark in bytes (0 when it cannot be known)."""
    if settings.high_watermark_bytes:
        return settings.high_watermark_bytes
    return int(total_memory_bytes() * settings.high_watermark)


def release_free_memory() -> bool:
    """Give memory the C allocator holds but nobody uses back to the system
    (glibc's malloc_trim); False where that is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def resident_memory_bytes() -> int | None:
    """This process's resident set size (Linux), None where unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def tls_context(settings: TlsConfig) -> ssl.SSLContext:
    """The server's TLS context, as RabbitMQ's ssl_options describe it.

    Raises:
        StartupError: a certificate, key or CA file cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.certfile, settings.keyfile)
        if settings.cacertfile:
            context.load_verify_locations(settings.cacertfile)
    except (OSError, ssl.SSLError) as error:
        raise StartupError(f"cannot load the TLS certificates: {error}") from error
    if settings.fail_if_no_peer_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif settings.verify_peer:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


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
    if server.failed:
        raise StoreFailedError("stopped after a store write failed (see the log)")


async def _wait_for_signals(server: BrokerServer) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            LOGGER.info("received %s, shutting down", signal.Signals(signum).name)
            server.request_shutdown()
            return
