"""One client connection: a reader task that feeds bytes to the sans-IO
protocol and handles its events inline, a writer task that is the only
caller of `send_all` and flushes everything queued in one write, and a
watchdog task for the handshake timeout and heartbeats."""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import trio
from pamqp import base as pamqp_base
from pamqp import commands

from amqpy import __version__
from amqpy.broker.channel import Channel
from amqpy.broker.errors import AmqpError, PreconditionFailedError
from amqpy.broker.stats import broker_stats
from amqpy.broker.vhost import VHost
from amqpy.protocol import events
from amqpy.protocol.connection import ConnectionState, ServerConnection
from amqpy.protocol.errors import (
    ChannelProtocolError,
    ProtocolError,
    ProtocolHeaderMismatchError,
)
from amqpy.protocol.frames import HEARTBEAT_FRAME
from amqpy.protocol.sasl import SaslError, parse_response
from amqpy.ratelimit import RateLimitedLog
from amqpy.reply_code import ReplyCode
from amqpy.server.channel import ChannelHandler

if TYPE_CHECKING:
    from amqpy.server.run import BrokerServer

LOGGER = logging.getLogger(__name__)

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


def server_properties(product: str, cluster_name: str) -> dict[str, Any]:
    return {
        "product": product,
        "version": __version__,
        "platform": f"Python {platform.python_version()}",
        "copyright": "amqpy contributors",
        "information": "An AMQP 0-9-1 broker compatible with RabbitMQ 3.x",
        "cluster_name": cluster_name,
        "capabilities": dict(SERVER_CAPABILITIES),
    }


def certificate_common_name(stream: trio.SSLStream[Any]) -> str | None:
    """The CN of the client's certificate, when the handshake verified one."""
    try:
        certificate = stream.getpeercert()
    except (ValueError, AttributeError):
        return None
    if not certificate:
        return None  # none sent, or not verified (verify_peer off)
    for relative_name in certificate.get("subject", ()):
        for key, value in relative_name:
            if key == "commonName":
                return str(value)
    return None


# Failed logins: logged with the peer, at most a burst then one a second.
LOGIN_FAILURES = RateLimitedLog(LOGGER)


class ConnectionHandler:
    def __init__(
        self, server: BrokerServer, stream: trio.abc.Stream, peer: str, local: str
    ) -> None:
        self.server = server
        # Connection and channel churn counters (amqpy.broker.stats).
        self.broker_stats = broker_stats(server.broker)
        config = server.config
        self.config = config
        self.stream = stream
        self.name = f"{peer} -> {local}"
        self.peer_host = peer.rsplit(":", 1)[0].strip("[]")
        self.tls = isinstance(stream, trio.SSLStream)
        # EXTERNAL (RabbitMQ's rabbitmq_auth_mechanism_ssl): the user named
        # by a verified client certificate's CN, offered only then.
        self.certificate_user = (
            certificate_common_name(stream)
            if isinstance(stream, trio.SSLStream)
            else None
        )
        self.mechanisms = [
            mechanism
            for mechanism in config.auth.mechanisms
            if mechanism != "EXTERNAL" or self.certificate_user is not None
        ]
        self.protocol = ServerConnection(
            server_properties=server_properties(
                config.server.product, config.server.cluster_name
            ),
            mechanisms=" ".join(self.mechanisms),
            channel_max=config.limits.channel_max,
            frame_max=config.limits.frame_max,
            heartbeat=config.heartbeat.interval_s,
            max_message_size=config.limits.max_message_size,
        )
        self.client_properties: dict[str, Any] = {}
        self.username = ""
        self._vhost: VHost | None = None
        self.channels: dict[int, ChannelHandler] = {}
        self._high_water = config.limits.outbox_high_water_bytes
        self._low_water = config.limits.outbox_low_water_bytes
        self._store_max_pending = config.store.max_pending_bytes
        self._writer_wakeup = trio.Event()
        self._drained = trio.Event()
        self._sending = False  # the writer is inside send_all
        self._deliveries_refused = False
        self._output_barrier = 0
        self._paused_reads = 0  # > 0 while we deliberately do not read
        self._aborted = False
        # Channels whose acks freed room during this read batch: their queues
        # dispatch once at its end, not once per ack.
        self._kick_after_batch: set[Channel] = set()
        # A publish held back while a resource alarm is on.
        self._held_content: events.ContentReceived | None = (
            None  # definitions generation our output waits for
        )
        self._closing = False  # no more input is processed
        self._close_deadline: float | None = None
        now = trio.current_time()
        self.last_received = now
        self.last_sent = now
        self.opened = False
        # For the management API: when it connected (epoch ms), and how the
        # client logged in.
        self.connected_at = int(time.time() * 1000)
        self.auth_mechanism = ""
        self._nursery: trio.Nursery | None = None

    # -- facts the channels use --------------------------------------------------

    @property
    def vhost(self) -> VHost:
        assert self._vhost is not None
        return self._vhost

    @property
    def frame_max(self) -> int:
        return self.protocol.frame_max

    def client_capability(self, name: str) -> bool:
        capabilities = self.client_properties.get("capabilities")
        return isinstance(capabilities, Mapping) and capabilities.get(name) is True

    def can_accept_deliveries(self) -> bool:
        if self._closing:
            return False
        if self.protocol.pending_output < self._high_water:
            return True
        self._deliveries_refused = True
        return False

    def send_raw(self, data: bytes) -> None:
        self.protocol.send_raw(data)
        self._writer_wakeup.set()

    def send_method(self, channel_id: int, method: pamqp_base.Frame) -> None:
        self.protocol.send_method(channel_id, method)
        self._writer_wakeup.set()

    # -- life cycle ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer_task, name="_writer_task")
                nursery.start_soon(self._watchdog_task, name="_watchdog_task")
                await self._reader_task()
                await self._flush_and_stop(nursery)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away; cleanup below
        finally:
            self._release()
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self.stream.aclose()

    async def _flush_and_stop(self, nursery: trio.Nursery) -> None:
        """Let the writer send what is queued (bounded), then stop the tasks."""
        with trio.move_on_after(self.config.listener.close_timeout_s):
            # Also while a send is under way: cancelling it midway would
            # cut the last frames (and break a TLS stream's close_notify).
            while self.protocol.pending_output or self._sending:
                self._writer_wakeup.set()
                self._drained = trio.Event()
                await self._drained.wait()
        nursery.cancel_scope.cancel()

    def _release(self) -> None:
        self._closing = True  # no deliveries to a connection that is gone
        for handler in list(self.channels.values()):
            handler.close()
        self.channels.clear()
        if self._vhost is not None:
            self._vhost.owner_closed(self)
        self.server.connections.discard(self)
        # RabbitMQ counts every connection that ends, opened or not.
        self.broker_stats.connections_closed += 1
        if self.opened:
            self.server.connection_released(self)
            LOGGER.info(
                "closing AMQP connection %s (vhost '%s', user '%s')",
                self.name,
                self.vhost.name,
                self.username,
            )

    def close(self, reply_code: int, reply_text: str) -> None:
        """Close from the broker's side (shutdown, operator)."""
        if self._closing:
            return
        self._close_connection(reply_code, reply_text)
        self._writer_wakeup.set()

    # -- reader -------------------------------------------------------------------

    async def _reader_task(self) -> None:
        receive_size = self.config.limits.receive_size_bytes
        stream = self.stream
        while True:
            # Once we have sent connection.close, only close-ok is awaited,
            # and only until the close timeout.
            deadline = self._close_deadline
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                data = await stream.receive_some(receive_size)
                deadline = None
            if deadline is not None or not data:
                return
            self.last_received = trio.current_time()
            self.protocol.receive_data(data)
            self._process_events()
            while self._held_content is not None:
                async with self._reads_paused():
                    await self._wait_publish_allowed()
                content, self._held_content = self._held_content, None
                self._handle_event(content)
                self._process_events()
            if self.protocol.state is ConnectionState.CLOSED:
                return
            if self._close_deadline is not None:
                continue
            if self.protocol.pending_output >= self._high_water:
                # The client is not reading what we send (replies, confirms):
                # stop reading its requests until it catches up.
                async with self._reads_paused():
                    await self._wait_drained()
            store = self.server.store
            if store.has_pending and store.pending_bytes > self._store_max_pending:
                # The disk is behind: stop reading publishes until the
                # committer has caught up (TCP pushes back on the client).
                async with self._reads_paused():
                    await self.server.wait_store_committed()

    @contextlib.asynccontextmanager
    async def _reads_paused(self) -> AsyncIterator[None]:
        """We chose not to read: the client's silence is ours, not a missed
        heartbeat (RabbitMQ pauses its heartbeat monitor likewise)."""
        self._paused_reads += 1
        try:
            yield
        finally:
            self._paused_reads -= 1
            self.last_received = trio.current_time()

    async def _wait_publish_allowed(self) -> None:
        """Blocked by a resource alarm (RabbitMQ's connection.blocked): tell
        the client if it asked to know, and wait until the alarm clears."""
        if not self.server.alarms:
            return
        notify = self.client_capability("connection.blocked")
        if notify:
            reason = " & ".join(sorted(self.server.alarms))
            self.send_method(0, commands.Connection.Blocked(reason=f"low on {reason}"))
        LOGGER.info(
            "%s: blocked by alarm (%s)", self.name, ", ".join(self.server.alarms)
        )
        await self.server.wait_alarms_cleared()
        if notify and not self._closing:
            self.send_method(0, commands.Connection.Unblocked())
        LOGGER.info("%s: unblocked", self.name)

    async def _wait_drained(self) -> None:
        while self.protocol.pending_output >= self._low_water and not self._closing:
            self._drained = trio.Event()
            self._writer_wakeup.set()
            await self._drained.wait()

    def defer_kick(self, channel: Channel) -> None:
        self._kick_after_batch.add(channel)

    def _process_events(self) -> None:
        generation = self.server.definitions_generation
        try:
            self._process_events_inner()
        finally:
            if self._kick_after_batch:
                self._flush_kicks()
            if self.server.definitions_generation != generation:
                # Hold our replies until the definitions file covers them.
                self._output_barrier = self.server.definitions_generation

    def _process_events_inner(self) -> None:
        protocol = self.protocol
        while True:
            try:
                event = protocol.next_event()
                if event is None:
                    break
                self._handle_event(event)
                if self._held_content is not None:
                    break
                if self._aborted:
                    break  # nothing more is read
            except ProtocolHeaderMismatchError:
                LOGGER.info("%s: closing, unsupported protocol header", self.name)
                self._closing = True
                break
            except ChannelProtocolError as error:
                self._close_channel(error.channel_id, error)
            except ProtocolError as error:
                if self._close_deadline is not None:
                    # The same unparseable bytes again (a framing error is
                    # raised on every read): the close is already under way.
                    break
                LOGGER.warning("%s: %s", self.name, error.reply_text)
                if error.silent:
                    self._abort()
                    break
                self._close_connection(
                    error.reply_code, error.reply_text, error.class_id, error.method_id
                )
                break
        if protocol.pending_output:
            self._writer_wakeup.set()

    def _flush_kicks(self) -> None:
        channels, self._kick_after_batch = self._kick_after_batch, set()
        for channel in channels:
            channel.kick()

    def _handle_event(self, event: events.Event) -> None:
        if self._kick_after_batch and not (
            type(event) is events.MethodReceived
            and type(event.method) is commands.Basic.Ack
        ):
            # Consecutive acks share one dispatch; anything else sees their
            # effects first, so a reply never overtakes a delivery they freed.
            self._flush_kicks()
        if type(event) is events.ContentReceived:
            if self.server.alarms and self._held_content is None:
                # A resource alarm: this publish waits, and so does the rest.
                self._held_content = event
                return
            handler = self.channels.get(event.channel_id)
            if handler is not None:
                try:
                    handler.on_publish(event)
                except AmqpError as error:
                    # Received, but never routed (RabbitMQ's channel stats
                    # leave it out of "publish").
                    handler.stat_publish_refused += 1
                    self._amqp_error(event.channel_id, error, 60, 40)
            return
        if type(event) is events.MethodReceived:
            handler = self.channels.get(event.channel_id)
            if handler is None:
                return
            method = event.method
            try:
                handler.handle_method(method)
            except AmqpError as error:
                self._amqp_error(
                    event.channel_id, error, method.index >> 16, method.index & 0xFFFF
                )
            return
        if isinstance(event, events.ChannelOpened):
            self.channels[event.channel_id] = ChannelHandler(self, event.channel_id)
        elif isinstance(event, events.ChannelClosed):
            handler = self.channels.pop(event.channel_id, None)
            if handler is not None:
                handler.close()
        elif isinstance(event, events.HeartbeatReceived):
            pass
        elif isinstance(event, events.StartOkReceived):
            self._on_start_ok(event)
        elif isinstance(event, events.TuneOkReceived):
            pass
        elif isinstance(event, events.OpenReceived):
            self._on_open(event)
        elif isinstance(
            event, events.ConnectionCloseReceived | events.ConnectionCloseOkReceived
        ):
            self._closing = True

    def timed_out(self, channel_id: int, text: str) -> None:
        """A delivery on the channel went unacknowledged too long."""
        LOGGER.warning("%s: %s", self.name, text)
        self._amqp_error(channel_id, PreconditionFailedError(text), 0, 0)
        self._writer_wakeup.set()

    def _amqp_error(
        self, channel_id: int, error: AmqpError, class_id: int, method_id: int
    ) -> None:
        if error.is_hard:
            LOGGER.warning("%s: %s", self.name, error.reply_text)
            self._close_connection(
                error.reply_code, error.reply_text, class_id, method_id
            )
        else:
            self._close_channel(
                channel_id,
                ProtocolError(error.reply_code, error.text, class_id, method_id),
            )

    def _close_channel(self, channel_id: int, error: ProtocolError) -> None:
        handler = self.channels.pop(channel_id, None)
        if handler is not None:
            handler.close()
        self.protocol.close_channel(
            channel_id,
            error.reply_code,
            error.reply_text,
            error.class_id,
            error.method_id,
        )

    def _close_connection(
        self, reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        # Closing first: what the channels requeue must not be delivered to
        # this connection's other channels.
        self._closing = True
        for handler in list(self.channels.values()):
            handler.close()
        self.channels.clear()
        self.protocol.close(reply_code, reply_text, class_id, method_id)
        if self._close_deadline is None:  # more input must not postpone it
            self._close_deadline = (
                trio.current_time() + self.config.listener.close_timeout_s
            )
            if self._nursery is not None:
                # The reader may be waiting with no deadline (a close from
                # the API, or while it is paused): the drop is timed here.
                self._nursery.start_soon(self._drop_at_close_deadline)

    async def _drop_at_close_deadline(self) -> None:
        assert self._close_deadline is not None
        await trio.sleep_until(self._close_deadline)
        if self.protocol.state is not ConnectionState.CLOSED:
            LOGGER.warning("%s: no close-ok in time, dropping", self.name)
            self._abort()

    # -- handshake -----------------------------------------------------------------

    def _on_start_ok(self, event: events.StartOkReceived) -> None:
        self.client_properties = event.client_properties
        try:
            if event.mechanism not in self.mechanisms:
                raise SaslError(
                    f"unsupported authentication mechanism '{event.mechanism}'"
                )
            if event.mechanism == "EXTERNAL":
                username, password = self.certificate_user or "", ""
            else:
                username, password = parse_response(event.mechanism, event.response)
        except SaslError as error:
            # An unknown mechanism or a malformed response: RabbitMQ closes
            # the socket without a close frame.
            LOGGER.warning("%s: %s, closing", self.name, error)
            self._abort()
            return
        if event.mechanism == "EXTERNAL":
            # The certificate was verified by the TLS handshake; the user
            # must exist, and no password is asked.
            user = self.server.broker.access.users.get(username)
        else:
            user = self.server.broker.authenticate(username, password)
        if user is None:
            LOGIN_FAILURES.warning(
                "%s: user '%s' failed to authenticate", self.name, username
            )
            self._refuse_login(event.mechanism)
            return
        if username in self.config.auth.loopback_users and not _is_loopback(
            self.peer_host
        ):
            LOGIN_FAILURES.warning(
                "%s: user '%s' can only connect via localhost", self.name, username
            )
            self._refuse_login(event.mechanism)
            return
        self.username = username
        self.auth_mechanism = event.mechanism
        self.protocol.channel_open_refusal = self._user_channel_refusal
        self.protocol.start_tune()

    def _refuse_login(self, mechanism: str) -> None:
        """RabbitMQ's auth_fail: the reason goes to the log only. A client that
        announces authentication_failure_close gets a 403 close; any other
        sees the socket closed."""
        if not self.client_capability("authentication_failure_close"):
            self._abort()
            return
        self._close_connection(
            ReplyCode.ACCESS_REFUSED,
            f"ACCESS_REFUSED - Login was refused using authentication mechanism "
            f"{mechanism}. For details see the broker logfile.",
        )

    def _on_open(self, event: events.OpenReceived) -> None:
        broker = self.server.broker
        vhost = broker.vhosts.get(event.virtual_host)
        refusal = None
        if vhost is None:
            refusal = f"vhost {event.virtual_host} not found"
        else:
            # RabbitMQ checks the vhost's connection limit first.
            refusal = self._connection_limit_refusal(vhost)
            if refusal is None and not broker.access.can_access_vhost(
                self.username, vhost.name
            ):
                refusal = (
                    f"access to vhost '{vhost.name}' refused for user '{self.username}'"
                )
        if refusal is not None:
            LOGGER.warning("%s: %s", self.name, refusal)
            self._close_connection(
                ReplyCode.NOT_ALLOWED, f"NOT_ALLOWED - {refusal}", 10, 40
            )
            return
        assert vhost is not None
        self._vhost = vhost
        self.protocol.accept_open()
        self.opened = True
        self.server.connection_opened(self)
        self.broker_stats.connections_opened += 1
        self.broker_stats.track(vhost)
        LOGGER.info(
            "accepted AMQP connection %s (vhost '%s', user '%s')",
            self.name,
            vhost.name,
            self.username,
        )

    def _connection_limit_refusal(self, vhost: VHost) -> str | None:
        """The node's, the vhost's and the user's max-connections, checked
        at open."""
        limit = self.config.limits.max_connections
        if sum(self.server.vhost_connections.values()) >= limit:
            return f"connection refused: node connection limit ({limit}) is reached"
        limit = vhost.limits.get("max-connections")
        if limit is not None and self.server.vhost_connections[vhost.name] >= limit:
            return (
                f"access to vhost '{vhost.name}' refused for user "
                f"'{self.username}': connection limit ({limit}) is reached"
            )
        user = self.server.broker.access.users.get(self.username)
        limit = user.limits.get("max-connections") if user is not None else None
        if limit is not None and self.server.user_connections[self.username] >= limit:
            return (
                f"connection refused for user '{self.username}': user connection "
                f"limit ({limit}) is reached"
            )
        return None

    def _user_channel_refusal(self) -> str | None:
        """RabbitMQ's per-user max-channels, across the user's connections."""
        user = self.server.broker.access.users.get(self.username)
        limit = user.limits.get("max-channels") if user is not None else None
        if limit is None:
            return None
        opened = sum(
            len(connection.channels)
            for connection in self.server.connections
            if connection.username == self.username
        )
        if opened < limit:
            return None
        return (
            f"number of channels opened for user '{self.username}' has reached "
            f"the maximum allowed user limit of ({limit})"
        )

    # -- writer ----------------------------------------------------------------------

    async def _writer_task(self) -> None:
        protocol = self.protocol
        stream = self.stream
        while True:
            if not protocol.pending_output:
                self._drained.set()
                self._writer_wakeup = trio.Event()
                await self._writer_wakeup.wait()
                continue
            while self._output_barrier:
                # Replies that follow a durable change wait for its save; the
                # barrier may rise while we wait, so look again.
                barrier = self._output_barrier
                await self.server.wait_definitions_saved(barrier)
                if self._output_barrier == barrier:
                    self._output_barrier = 0
            data = protocol.data_to_send()
            self._sending = True
            await stream.send_all(data)
            self._sending = False
            self.last_sent = trio.current_time()
            if protocol.pending_output < self._low_water:
                # Wake a reader waiting for us before consumers refill the
                # buffer: a busy consumer's own requests must still be read.
                self._drained.set()
            if (
                self._deliveries_refused
                and protocol.pending_output < self._low_water
                and not self._closing
            ):
                self._deliveries_refused = False
                for handler in list(self.channels.values()):
                    handler.channel.kick()

    # -- watchdog ----------------------------------------------------------------------

    async def _watchdog_task(self) -> None:
        handshake_deadline = (
            trio.current_time() + self.config.listener.handshake_timeout_s
        )
        while not self.protocol.is_open:
            if trio.current_time() >= handshake_deadline:
                if not self._closing:
                    LOGGER.warning("%s: handshake timeout, closing", self.name)
                self._abort()
                return
            await trio.sleep(min(0.5, self.config.listener.handshake_timeout_s))
        heartbeat = self.protocol.heartbeat
        if not heartbeat:
            return
        while True:
            await trio.sleep(heartbeat / 2)
            now = trio.current_time()
            if not self._paused_reads and now - self.last_received > 2 * heartbeat:
                LOGGER.warning(
                    "%s: missed heartbeats from client, timeout: %ss",
                    self.name,
                    heartbeat,
                )
                self._abort()
                return
            # Idle for (about) half an interval: a heartbeat keeps the client's
            # view of us alive, every heartbeat/2 when idle, as RabbitMQ. The
            # slack covers our own last heartbeat leaving just after its tick.
            if now - self.last_sent >= 0.4 * heartbeat and not self._closing:
                self.send_raw(HEARTBEAT_FRAME)

    def _abort(self) -> None:
        """Drop the connection at once (no close handshake)."""
        self._closing = True
        self._aborted = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost", "::ffff:127.0.0.1")
