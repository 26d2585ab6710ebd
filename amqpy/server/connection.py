"""One client connection: a reader task that feeds bytes to the sans-IO
protocol and handles its events inline, and a writer task that is the only
caller of `send_all` and flushes everything queued in one write. The
handshake timeout and heartbeats are timers of the broker's scheduler, not
tasks: an idle connection costs two parked tasks and a timer."""

from __future__ import annotations

import contextlib
import functools
import logging
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
from amqpy.broker.timers import Timer
from amqpy.broker.vhost import VHost
from amqpy.protocol import events
from amqpy.protocol.connection import (
    ConnectionState,
    ServerConnection,
    encode_start,
)
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


@functools.lru_cache(maxsize=16)
def _start_frame(product: str, cluster_name: str, mechanisms: str) -> bytes:
    """connection.start: the same bytes for every connection of a listener,
    so encoded once (pamqp takes tens of microseconds per encoding)."""
    return encode_start(server_properties(product, cluster_name), mechanisms)


@functools.lru_cache(maxsize=16)
def _offered_mechanisms(
    configured: tuple[str, ...], verified_certificate: bool
) -> tuple[str, ...]:
    """The SASL mechanisms a connection is offered (one tuple shared by all)."""
    return tuple(
        mechanism
        for mechanism in configured
        if mechanism != "EXTERNAL" or verified_certificate
    )


class ConnectionHandler:
    # Thousands of these may be open: no per-instance dict.
    __slots__ = (
        "__weakref__",
        "_aborted",
        "_close_deadline",
        "_closing",
        "_deliveries_refused",
        "_drained",
        "_held_content",
        "_high_water",
        "_kick_after_batch",
        "_low_water",
        "_nursery",
        "_output_barrier",
        "_paused_reads",
        "_sending",
        "_store_max_pending",
        "_timer",
        "_vhost",
        "_writer_parked",
        "auth_mechanism",
        "broker_stats",
        "certificate_user",
        "channels",
        "client_properties",
        "config",
        "connected_at",
        "last_received",
        "last_sent",
        "mechanisms",
        "name",
        "opened",
        "peer_host",
        "protocol",
        "server",
        "stream",
        "tls",
        "username",
    )

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
        self.mechanisms = _offered_mechanisms(
            tuple(config.auth.mechanisms), self.certificate_user is not None
        )
        self.protocol = ServerConnection(
            start_frame=_start_frame(
                config.server.product,
                config.server.cluster_name,
                " ".join(self.mechanisms),
            ),
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
        # The writer's task while it waits for output (woken by
        # `_wake_writer`), None while it runs.
        self._writer_parked: trio.lowlevel.Task | None = None
        # Set by the writer when its buffer drains; made by whoever waits.
        self._drained: trio.Event | None = None
        self._sending = False  # the writer is inside send_all
        self._deliveries_refused = False
        self._output_barrier = 0
        self._paused_reads = 0  # > 0 while we deliberately do not read
        self._aborted = False
        # Channels whose acks freed room during this read batch: their queues
        # dispatch once at its end, not once per ack. A dict as an ordered
        # set (an empty one is a quarter of an empty set's size).
        self._kick_after_batch: dict[Channel, None] = {}
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
        # The handshake timeout, then the heartbeat tick (the scheduler's).
        self._timer: Timer | None = None

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
        task = self._writer_parked
        if task is not None:
            self._writer_parked = None
            trio.lowlevel.reschedule(task)

    def send_method(self, channel_id: int, method: pamqp_base.Frame) -> None:
        self.protocol.send_method(channel_id, method)
        self._wake_writer()

    def _wake_writer(self) -> None:
        task = self._writer_parked
        if task is not None:
            self._writer_parked = None
            trio.lowlevel.reschedule(task)

    # -- life cycle ---------------------------------------------------------------

    async def run(self) -> None:
        scheduler = self.server.scheduler
        self._timer = scheduler.call_at(
            scheduler.now() + self.config.listener.handshake_timeout_s,
            self._handshake_timed_out,
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer_task, name="_writer_task")
                await self._reader_task()
                await self._flush_and_stop(nursery)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away; cleanup below
        finally:
            self._nursery = None  # done (and no cycle: see _release)
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
                await self._wait_writer_progress()
        nursery.cancel_scope.cancel()

    async def _wait_writer_progress(self) -> None:
        """Until the writer has sent what it has, or enough of it."""
        self._drained = drained = trio.Event()
        self._wake_writer()
        await drained.wait()

    def _release(self) -> None:
        self._closing = True  # no deliveries to a connection that is gone
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # No reference cycle through us: a closed connection (its buffers,
        # socket objects and channels) is freed at once, not at the next
        # full garbage collection.
        self.protocol.channel_open_refusal = None
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
        self._wake_writer()

    # -- reader -------------------------------------------------------------------

    async def _reader_task(self) -> None:
        receive_size = self.config.limits.receive_size_bytes
        stream = self.stream
        # A plain socket's readiness can be awaited on its own (TLS has
        # buffered bytes of its own, so not there).
        raw_socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        drained = False  # the last read emptied the socket
        while True:
            deadline = self._close_deadline
            if deadline is None:
                if drained and raw_socket is not None:
                    # Likely idle: wait here, three frames deep, not inside
                    # receive_some's eight (about 2 KB per idle connection),
                    # and skip the read that would only find nothing.
                    await trio.lowlevel.wait_readable(raw_socket)
                # No cancel scope per read: it would cost a scope (and its
                # sets) per idle connection and per read.
                data = await stream.receive_some(receive_size)
            else:
                # Once we have sent connection.close, only close-ok is
                # awaited, and only until the close timeout.
                with trio.move_on_at(deadline):
                    data = await stream.receive_some(receive_size)
                    deadline = None
                if deadline is not None:
                    return
            if not data:
                return
            drained = len(data) < receive_size
            self.last_received = trio.current_time()
            self.protocol.receive_data(data)
            # The protocol copied it: an idle connection must not keep its
            # last read (up to receive_size) while it waits for the next.
            del data
            self._process_events()
            await self._send_replies()
            while self._held_content is not None:
                async with self._reads_paused():
                    await self._wait_publish_allowed()
                content, self._held_content = self._held_content, None
                self._handle_event(content)
                del content  # nor a held message's body
                self._process_events()
                await self._send_replies()
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
            await self._wait_writer_progress()

    def defer_kick(self, channel: Channel) -> None:
        self._kick_after_batch[channel] = None

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

    async def _send_replies(self) -> None:
        """Send what processing queued: from the reader while no channel is
        open (the handshake: the client waits for each reply, and nothing
        but replies is written), which spares the writer a wakeup per step;
        else by waking the writer."""
        protocol = self.protocol
        if not protocol.pending_output:
            return
        if (
            not self.channels
            and self._writer_parked is not None  # so not sending either
            and not self._output_barrier
        ):
            data = protocol.data_to_send()
            self._sending = True  # the writer, if woken meanwhile, waits
            await self.stream.send_all(data)
            self._sending = False
            self.last_sent = trio.current_time()
            if not protocol.pending_output:
                return
        self._wake_writer()

    def _flush_kicks(self) -> None:
        channels, self._kick_after_batch = self._kick_after_batch, {}
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
        self._wake_writer()

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
            # The reader may be waiting with no deadline (a close from the
            # API, or while it is paused): the drop is timed here. A timer,
            # not a task: the connection's nursery may already be closing.
            # It replaces the handshake timeout (later) or the heartbeats
            # (none are sent while closing).
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.server.scheduler.call_at(
                self._close_deadline, self._close_timed_out
            )

    def _close_timed_out(self) -> None:
        self._timer = None
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
        # The users table's and the config's strings, not copies per
        # connection (user.name is the name the client sent).
        self.username = user.name
        self.auth_mechanism = self.mechanisms[self.mechanisms.index(event.mechanism)]
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
        if self._timer is not None:
            self._timer.cancel()  # the handshake is done in time
            self._timer = None
        if self.protocol.heartbeat:
            self._arm_heartbeat()
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
            if not protocol.pending_output or self._sending:
                if not self._sending:  # (else the reader sends a reply)
                    self._signal_drained()
                # Parked by hand rather than on a trio.Event: no event
                # object per wait, and a wakeup is one reschedule.
                self._writer_parked = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._writer_unparked)
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
            del data  # not kept while the writer waits
            self._sending = False
            self.last_sent = trio.current_time()
            if protocol.pending_output < self._low_water:
                # Wake a reader waiting for us before consumers refill the
                # buffer: a busy consumer's own requests must still be read.
                self._signal_drained()
            if (
                self._deliveries_refused
                and protocol.pending_output < self._low_water
                and not self._closing
            ):
                self._deliveries_refused = False
                for handler in list(self.channels.values()):
                    handler.channel.kick()

    def _writer_unparked(self, _: object) -> trio.lowlevel.Abort:
        """The parked writer is cancelled (the connection ends)."""
        self._writer_parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _signal_drained(self) -> None:
        drained = self._drained
        if drained is not None:
            self._drained = None
            drained.set()

    # -- timers: handshake timeout and heartbeats ------------------------------------

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.protocol.is_open:
            return
        if not self._closing:
            LOGGER.warning("%s: handshake timeout, closing", self.name)
        self._abort()

    def _arm_heartbeat(self) -> None:
        scheduler = self.server.scheduler
        self._timer = scheduler.call_at(
            scheduler.now() + self.protocol.heartbeat / 2, self._heartbeat_tick
        )

    def _heartbeat_tick(self) -> None:
        """Every heartbeat/2 once open, until the connection is released."""
        self._timer = None
        heartbeat = self.protocol.heartbeat
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
        self._arm_heartbeat()

    def _abort(self) -> None:
        """Drop the connection at once (no close handshake)."""
        self._closing = True
        self._aborted = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost", "::ffff:127.0.0.1")
