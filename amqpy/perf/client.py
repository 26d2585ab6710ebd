"""A lean AMQP 0-9-1 client on asyncio for `amqpy perf`.

A load generator must not be the slower side of the pair it measures, so
this client does per read, not per message, whatever it can: the frames of
the hot path (basic.deliver, content header, body, publisher confirms) are
picked out of the receive buffer with `struct` at their offsets, a consumer
sees its body as (buffer, offset, length) without a copy, and the acks a read
produces leave in one write. Publishing is the `Publisher`'s business
(amqpy/perf/load.py): pre-encoded batches, one write per batch. Everything
else (the handshake, declares, errors from the broker) goes through pamqp,
where speed does not matter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, cast
from urllib.parse import quote, unquote, urlsplit

import attrs
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp.base import Frame

from amqpy.protocol.constants import (
    CLASS_BASIC,
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_METHOD,
    PROTOCOL_HEADER,
)

CONNECT_TIMEOUT_S: Final = 10.0
FRAME_MAX: Final = 131072

_FRAME_HEAD = struct.Struct(">BHI").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
# basic.ack as a whole frame: type, channel, size, class, method, tag, bits, end.
_ACK_FRAME = struct.Struct(">BHIHHQBB").pack
_DELIVER: Final = (CLASS_BASIC << 16) | 60
_ACK: Final = (CLASS_BASIC << 16) | 80
_NACK: Final = (CLASS_BASIC << 16) | 120
# Publishing waits once this much is in our send buffer, until it is down to
# _WRITE_LOW: whole batches go out, and a broker that stops reading (TCP
# back-pressure, as RabbitMQ's flow control does) stops us early.
_WRITE_HIGH: Final = 1 << 20
_WRITE_LOW: Final = 1 << 18


class PerfError(Exception):
    """Something that ends the run, said in one line."""


@attrs.frozen
class AmqpUrl:
    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, text: str) -> AmqpUrl:
        """`amqp://user:password@host:port/vhost` (vhost %2F-encoded).

        Raises:
            ValueError: with the reason, for anything else.
        """
        parts = urlsplit(text)
        if parts.scheme != "amqp":
            raise ValueError(f"not an amqp:// URL: {text!r}")
        try:
            port = parts.port or 5672
        except ValueError as error:
            raise ValueError(f"bad port in {text!r}") from error
        path = parts.path
        # As pika: no path and "/" both mean the default virtual host.
        vhost = unquote(path[1:]) if len(path) > 1 else "/"
        return cls(
            parts.hostname or "127.0.0.1",
            port,
            unquote(parts.username) if parts.username is not None else "guest",
            unquote(parts.password) if parts.password is not None else "guest",
            vhost,
        )

    def shown(self) -> str:
        """The URL without its password, for reports."""
        user = quote(self.user, safe="")
        return f"amqp://{user}@{self.host}:{self.port}/{quote(self.vhost, safe='')}"


class Sink(Protocol):
    """Where a channel's deliveries go (amqpy/perf/load.py `Consumer`)."""

    def deliver(self, data: bytes | bytearray, offset: int, length: int) -> None: ...


class Channel:
    """One channel: RPCs in order, and the hot-path state of its consumer and
    its publisher confirms."""

    __slots__ = (
        "_body_left",
        "_confirm_waiter",
        "_low",
        "_out_of_order",
        "_parts",
        "_pending_acks",
        "_rpc",
        "ack_every",
        "confirm_mode",
        "confirm_times",
        "confirmed",
        "connection",
        "delivery_tag",
        "error",
        "id",
        "last_tag",
        "manual_ack",
        "nacked",
        "on_confirm_latency",
        "published",
        "redelivered",
        "returned",
        "sink",
    )

    def __init__(self, connection: Connection, channel_id: int) -> None:
        self.connection = connection
        self.id = channel_id
        self._rpc: collections.deque[tuple[tuple[type, ...], asyncio.Future[Any]]] = (
            collections.deque()
        )
        self.error: PerfError | None = None
        self.sink: Sink | None = None
        self.manual_ack = False
        self.ack_every = 1
        self._pending_acks = 0
        self.last_tag = 0
        self.delivery_tag = 0
        self.redelivered = 0
        self._body_left = 0
        self._parts: list[bytes] | None = None
        self.returned = 0
        self.confirm_mode = False
        self.published = 0
        self.confirmed = 0
        self.nacked = 0
        self._low = 1
        self._out_of_order: set[int] = set()
        # Its result: None when confirms came, True when interrupted.
        self._confirm_waiter: asyncio.Future[bool | None] | None = None
        # (last delivery tag of a batch, its send time): confirm latency.
        self.confirm_times: collections.deque[tuple[int, int]] = collections.deque()
        self.on_confirm_latency: Callable[[int], None] | None = None

    # --- RPC ---------------------------------------------------------------

    def send_method(self, method: Frame) -> None:
        if self.error is not None:
            raise self.error
        self.connection.write(pamqp_frame.marshal(method, self.id))

    def expect(self, *replies: type) -> asyncio.Future[Any]:
        """A future for the next method of one of these types."""
        future: asyncio.Future[Any] = self.connection.loop.create_future()
        self._rpc.append((replies, future))
        return future

    def call_nowait(self, method: Frame, *replies: type) -> asyncio.Future[Any]:
        self.send_method(method)
        return self.expect(*replies)

    async def call(self, method: Frame, *replies: type, within: float = 60.0) -> Any:
        return await asyncio.wait_for(self.call_nowait(method, *replies), within)

    def on_reply(self, method: Frame) -> None:
        """The reply the oldest call waits for (anything else is dropped)."""
        if self._rpc and isinstance(method, self._rpc[0][0]):
            _, future = self._rpc.popleft()
            if not future.done():
                future.set_result(method)

    def fail(self, error: PerfError) -> None:
        if self.error is None:
            self.error = error
        while self._rpc:
            _, future = self._rpc.popleft()
            if not future.done():
                future.set_exception(error)
                # Nobody may be waiting on it any more (a pipelined call).
                future.exception()
        self._wake()

    async def qos(self, prefetch_count: int) -> None:
        await self.call(
            commands.Basic.Qos(prefetch_count=prefetch_count), commands.Basic.QosOk
        )

    async def sync(self, within: float) -> None:
        """A round trip: the broker has handled all this channel sent before."""
        await self.call(
            commands.Basic.Qos(prefetch_count=0), commands.Basic.QosOk, within=within
        )

    async def confirm_select(self) -> None:
        await self.call(commands.Confirm.Select(), commands.Confirm.SelectOk)
        self.confirm_mode = True

    async def consume(
        self, queue: str, sink: Sink, *, no_ack: bool, ack_every: int
    ) -> str:
        self.sink = sink
        self.manual_ack = not no_ack
        self.ack_every = ack_every
        ok = await self.call(
            commands.Basic.Consume(queue=queue, no_ack=no_ack), commands.Basic.ConsumeOk
        )
        return str(ok.consumer_tag)

    # --- consuming ------------------------------------------------------------

    def on_deliver(self, buffer: bytearray, start: int) -> None:
        # class, method, consumer tag (short string), delivery tag, redelivered.
        position = start + 5 + buffer[start + 4]
        self.delivery_tag = _U64(buffer, position)[0]
        self.redelivered = buffer[position + 8] & 1
        self._parts = None

    def on_header(self, buffer: bytearray, start: int, acks: bytearray) -> None:
        # class, weight, body size, then properties we do not need.
        self._body_left = size = _U64(buffer, start + 4)[0]
        self._parts = None
        if size == 0:
            self._delivered(b"", 0, 0, acks)

    def on_body(
        self, buffer: bytearray, start: int, size: int, acks: bytearray
    ) -> None:
        left = self._body_left - size
        self._body_left = left
        parts = self._parts
        if parts is None:
            if left == 0:
                self._delivered(buffer, start, size, acks)
                return
            self._parts = [bytes(buffer[start : start + size])]
            return
        parts.append(bytes(buffer[start : start + size]))
        if left <= 0:
            body = b"".join(parts)
            self._parts = None
            self._delivered(body, 0, len(body), acks)

    def _delivered(
        self, data: bytes | bytearray, offset: int, length: int, acks: bytearray
    ) -> None:
        sink = self.sink
        if sink is None:
            # A returned message's content, or one after a cancel: not ours.
            return
        sink.deliver(data, offset, length)
        if self.manual_ack:
            self.ack(self.delivery_tag, acks)

    def ack(self, tag: int, acks: bytearray) -> None:
        """Ack delivery `tag` in `acks` (written once the read is handled),
        or count it towards the next multiple ack."""
        self.last_tag = tag
        if self.ack_every == 1:
            acks += _ACK_FRAME(
                FRAME_METHOD, self.id, 13, CLASS_BASIC, 80, tag, 0, FRAME_END
            )
            return
        self._pending_acks += 1
        if self._pending_acks >= self.ack_every:
            acks += _ACK_FRAME(
                FRAME_METHOD, self.id, 13, CLASS_BASIC, 80, tag, 1, FRAME_END
            )
            self._pending_acks = 0

    def flush_acks(self) -> None:
        """Ack what a multiple ack has not covered yet (at the end of a run:
        unacknowledged messages would go back to the queue)."""
        if self._pending_acks and self.error is None:
            self._pending_acks = 0
            self.connection.write(
                _ACK_FRAME(
                    FRAME_METHOD,
                    self.id,
                    13,
                    CLASS_BASIC,
                    80,
                    self.last_tag,
                    1,
                    FRAME_END,
                )
            )

    # --- publisher confirms -----------------------------------------------------

    def on_confirm(self, tag: int, multiple: int, nack: bool, now_ns: int) -> None:
        low = self._low
        if multiple:
            if tag < low:
                return
            count = tag - low + 1
            out_of_order = self._out_of_order
            if out_of_order:
                below = [t for t in out_of_order if t <= tag]
                count -= len(below)
                out_of_order.difference_update(below)
            self._low = tag + 1
        elif tag == low:
            count = 1
            low += 1
            out_of_order = self._out_of_order
            while low in out_of_order:
                out_of_order.discard(low)
                low += 1
            self._low = low
        elif tag > low:
            self._out_of_order.add(tag)
            count = 1
        else:
            return
        if nack:
            self.nacked += count
        else:
            self.confirmed += count
        times = self.confirm_times
        if times and times[0][0] < self._low:
            record = self.on_confirm_latency
            while times and times[0][0] < self._low:
                sent_ns = times.popleft()[1]
                if record is not None:
                    record(now_ns - sent_ns)
        self._wake()

    @property
    def unconfirmed(self) -> int:
        return self.published - self.confirmed - self.nacked

    async def wait_confirms(self, at_most: int, within: float) -> bool:
        """Wait until at most `at_most` publishes are unconfirmed; False
        after `within` seconds, or when `interrupt()` ends it first."""
        while self.unconfirmed > at_most:
            if self.error is not None:
                raise self.error
            self._confirm_waiter = waiter = self.connection.loop.create_future()
            try:
                await asyncio.wait_for(waiter, within)
            except TimeoutError:
                return False
            finally:
                self._confirm_waiter = None
            if waiter.result() is not None:
                return False
        return True

    def _wake(self, interrupt: bool = False) -> None:
        waiter = self._confirm_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True if interrupt else None)

    def interrupt(self) -> None:
        """End a `wait_confirms` early (the run is being stopped)."""
        self._wake(interrupt=True)


class Connection(asyncio.Protocol):
    """One AMQP connection; `await Connection.open(url)`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._acks = bytearray()
        self.channels: dict[int, Channel] = {0: Channel(self, 0)}
        self.frame_max = FRAME_MAX
        self.error: PerfError | None = None
        self.now_ns = 0
        self.blocked = False
        self._paused = False
        self._flow_waiter: asyncio.Future[None] | None = None
        # Done when the socket is closed: asyncio's own loop closes it a step
        # after transport.close(), so a run that ends its loop at once would
        # leave the connection (and its consumers) open on the broker.
        self._lost: asyncio.Future[None] = loop.create_future()
        self._next_channel = 1

    @classmethod
    async def open(
        cls, url: AmqpUrl, *, name: str, within: float = CONNECT_TIMEOUT_S
    ) -> Connection:
        """Connect and log in.

        Raises:
            PerfError: the host cannot be reached, or the broker refused us.
        """
        loop = asyncio.get_running_loop()
        self = cls(loop)
        where = f"{url.host}:{url.port}"
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, url.host, url.port), within
            )
        except TimeoutError:
            raise PerfError(f"cannot connect to {where}: timed out") from None
        except OSError as error:
            # asyncio's own loop puts "Connect call failed (...)" in strerror;
            # the errno's text is the same on every loop.
            reason = (os.strerror(error.errno) if error.errno else "") or str(error)
            raise PerfError(f"cannot connect to {where}: {reason}") from None
        channel0 = self.channels[0]
        try:
            start = channel0.expect(commands.Connection.Start)
            self.write(PROTOCOL_HEADER)
            await asyncio.wait_for(start, within)
        except TimeoutError:
            self.abort()
            raise PerfError(
                f"{where} does not answer as an AMQP 0-9-1 broker"
            ) from None
        except PerfError as error:
            raise PerfError(f"{where} is not an AMQP 0-9-1 broker ({error})") from None
        tune = channel0.expect(commands.Connection.Tune)
        capabilities = {
            "publisher_confirms": True,
            "basic.nack": True,
            "consumer_cancel_notify": True,
            "connection.blocked": True,
            "authentication_failure_close": True,
            "per_consumer_qos": True,
        }
        try:
            channel0.send_method(
                commands.Connection.StartOk(
                    client_properties={
                        "product": "amqpy perf",
                        "connection_name": name,
                        "capabilities": capabilities,
                    },
                    mechanism="PLAIN",
                    response=f"\0{url.user}\0{url.password}",
                )
            )
            reply = await asyncio.wait_for(tune, within)
            self.frame_max = min(reply.frame_max or FRAME_MAX, FRAME_MAX)
            channel0.send_method(
                commands.Connection.TuneOk(
                    channel_max=reply.channel_max or 2047,
                    frame_max=self.frame_max,
                    heartbeat=0,
                )
            )
            await channel0.call(
                commands.Connection.Open(virtual_host=url.vhost),
                commands.Connection.OpenOk,
                within=within,
            )
        except TimeoutError:
            self.abort()
            raise PerfError(f"{where}: no answer to the AMQP handshake") from None
        return self

    async def channel(self) -> Channel:
        channel = Channel(self, self._next_channel)
        self._next_channel += 1
        self.channels[channel.id] = channel
        await channel.call(commands.Channel.Open(), commands.Channel.OpenOk)
        return channel

    async def close(self, within: float = 10.0) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.error is None:
            with contextlib.suppress(PerfError, TimeoutError):
                await self.channels[0].call(
                    commands.Connection.Close(reply_code=200, reply_text="bye"),
                    commands.Connection.CloseOk,
                    within=within,
                )
        self._set_error(PerfError("connection closed by amqpy perf"))
        transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._lost), within)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- writing --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.error is not None:
            raise self.error
        if transport is None or transport.is_closing():
            raise PerfError("connection closed")
        transport.write(data)

    @property
    def must_wait(self) -> bool:
        """Writes are to wait: our send buffer is full, or the broker blocked
        publishers (connection.blocked, a resource alarm)."""
        return self._paused or self.blocked

    async def wait_writable(self, within: float) -> None:
        """Wait (at most `within` seconds) until `must_wait` is false."""
        if self.must_wait and self.error is None:
            self._flow_waiter = waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(waiter, within)
            except TimeoutError:
                pass
            finally:
                self._flow_waiter = None
        if self.error is not None:
            raise self.error

    def interrupt(self) -> None:
        """End a `wait_writable` early."""
        waiter = self._flow_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's.
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._set_error(PerfError(f"connection lost{reason}"))
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.interrupt()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        available = len(buffer)
        position = 0
        self.now_ns = now_ns = time.monotonic_ns()
        channels = self.channels
        acks = self._acks
        try:
            while available - position >= 8:
                frame_type, channel_id, size = _FRAME_HEAD(buffer, position)
                end = position + 7 + size
                if end >= available:
                    break
                if buffer[end] != FRAME_END:
                    self._fatal(PerfError("the broker sent a malformed frame"))
                    return
                start = position + 7
                channel = channels.get(channel_id)
                if channel is None:
                    pass
                elif frame_type == FRAME_BODY:
                    channel.on_body(buffer, start, size, acks)
                elif frame_type == FRAME_METHOD:
                    method = _U32(buffer, start)[0]
                    if method == _DELIVER:
                        # The common case, taken in one step: the content
                        # header and the whole body right behind.
                        header = end + 1
                        sink = channel.sink
                        if sink is not None and available - header > 19:
                            kind, on, header_size = _FRAME_HEAD(buffer, header)
                            body = header + 8 + header_size
                            if (
                                kind == FRAME_HEADER
                                and on == channel_id
                                and available - body >= 8
                                and buffer[body - 1] == FRAME_END
                            ):
                                length = _U64(buffer, header + 11)[0]
                                kind, on, body_size = _FRAME_HEAD(buffer, body)
                                end = body + 7 + body_size
                                if (
                                    kind == FRAME_BODY
                                    and on == channel_id
                                    and body_size == length
                                    and length
                                    and end < available
                                    and buffer[end] == FRAME_END
                                ):
                                    tag_at = start + 5 + buffer[start + 4]
                                    channel.redelivered = buffer[tag_at + 8] & 1
                                    sink.deliver(buffer, body + 7, length)
                                    if channel.manual_ack:
                                        channel.ack(_U64(buffer, tag_at)[0], acks)
                                    position = end + 1
                                    continue
                                # Not whole yet: back to this frame's end,
                                # and the frame by frame way.
                                end = header - 1
                        channel.on_deliver(buffer, start)
                    elif method in (_ACK, _NACK) and channel.confirm_mode:
                        channel.on_confirm(
                            _U64(buffer, start + 4)[0],
                            buffer[start + 12] & 1,
                            method == _NACK,
                            now_ns,
                        )
                    else:
                        self._slow_method(bytes(buffer[position : end + 1]))
                        if self.transport is None or self.transport.is_closing():
                            return
                elif frame_type == FRAME_HEADER:
                    channel.on_header(buffer, start, acks)
                # Heartbeats: we ask for none, and need not answer one.
                position = end + 1
        finally:
            del buffer[:position]
            if acks and self.transport is not None and not self.transport.is_closing():
                self.transport.write(bytes(acks))
            acks.clear()

    # --- the slow path -----------------------------------------------------------

    def _slow_method(self, raw: bytes) -> None:
        try:
            _, channel_id, method = pamqp_frame.unmarshal(raw)
        except Exception as error:  # noqa: BLE001 - any decode failure ends the run
            self._fatal(PerfError(f"cannot decode a frame from the broker: {error}"))
            return
        channel = self.channels[channel_id]
        if isinstance(method, commands.Connection.Close):
            self._set_error(
                PerfError(f"the broker closed the connection: {_reply(method)}")
            )
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(pamqp_frame.marshal(commands.Connection.CloseOk(), 0))
                transport.close()
            return
        if isinstance(method, commands.Channel.Close):
            with contextlib.suppress(PerfError):
                self.write(pamqp_frame.marshal(commands.Channel.CloseOk(), channel_id))
            channel.fail(PerfError(f"the broker closed a channel: {_reply(method)}"))
            self.channels.pop(channel_id, None)
            return
        if isinstance(method, commands.Connection.Blocked):
            self.blocked = True
            return
        if isinstance(method, commands.Connection.Unblocked):
            self.blocked = False
            self.interrupt()
            return
        if isinstance(method, commands.Basic.Return):
            channel.returned += 1
            # Its content follows; with no sink on a publishing channel it
            # is dropped.
            return
        if isinstance(method, commands.Basic.Cancel):
            channel.fail(PerfError("the broker cancelled a consumer (queue deleted?)"))
            return
        if isinstance(method, commands.Channel.Flow):
            with contextlib.suppress(PerfError):
                self.write(
                    pamqp_frame.marshal(
                        commands.Channel.FlowOk(active=method.active), channel_id
                    )
                )
            return
        channel.on_reply(method)

    def _set_error(self, error: PerfError) -> None:
        if self.error is None:
            self.error = error
        for channel in list(self.channels.values()):
            channel.fail(self.error)
        self.interrupt()

    def _fatal(self, error: PerfError) -> None:
        self._set_error(error)
        self.abort()


def _reply(method: commands.Connection.Close | commands.Channel.Close) -> str:
    return f"{method.reply_code} {method.reply_text}"
