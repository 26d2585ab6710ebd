"""A tiny blocking AMQP 0-9-1 client on a raw socket, for frame-exact tests.

It sends whatever it is told to (pamqp methods, hand-made frames, raw bytes)
and reads frames back one at a time, with a bounded timeout on every read, so
a test can check the exact bytes, codes and texts a broker answers with.

    client = AmqpClient.connect(broker.port)
    client.handshake()
    client.open_channel(1)
    client.send_method(1, commands.Channel.Open())
    assert client.expect_connection_close() == (504, "...", 20, 10)
    client.wait_closed()
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
from pamqp import base as pamqp_base
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import encode as pamqp_encode
from pamqp import exceptions as pamqp_exceptions
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
HEARTBEAT_BYTES = b"\x08\x00\x00\x00\x00\x00\x00\xce"
DEFAULT_TIMEOUT_S = 5.0

# What pika announces; the broker changes behaviour on some of these.
DEFAULT_CAPABILITIES: Mapping[str, bool] = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "publisher_confirms": True,
}

_FRAME_HEAD = struct.Struct(">BHI")
M = TypeVar("M", bound=pamqp_base.Frame)


class ServerClosedError(ConnectionError):
    """The server closed the socket while a frame was expected."""


@attrs.frozen
class Frame:
    """One frame as received: its header fields, raw payload, decoded value."""

    frame_type: int
    channel: int
    payload: bytes
    # A pamqp method, ContentHeader or ContentBody; None for heartbeats.
    value: Any

    @property
    def raw(self) -> bytes:
        return (
            _FRAME_HEAD.pack(self.frame_type, self.channel, len(self.payload))
            + self.payload
            + bytes((FRAME_END,))
        )


def raw_frame(
    frame_type: int, channel: int, payload: bytes, frame_end: int = FRAME_END
) -> bytes:
    """A frame built by hand: any type, channel, payload and end octet."""
    return (
        _FRAME_HEAD.pack(frame_type, channel, len(payload))
        + payload
        + bytes((frame_end,))
    )


def method_payload(class_id: int, method_id: int, arguments: bytes = b"") -> bytes:
    return struct.pack(">HH", class_id, method_id) + arguments


def method_frame(channel: int, method: pamqp_base.Frame) -> bytes:
    return pamqp_frame.marshal(method, channel)


def content_header_frame(
    channel: int,
    body_size: int,
    properties: commands.Basic.Properties | None = None,
) -> bytes:
    return pamqp_frame.marshal(
        pamqp_header.ContentHeader(0, body_size, properties), channel
    )


def body_frame(channel: int, data: bytes) -> bytes:
    return pamqp_frame.marshal(pamqp_body.ContentBody(data), channel)


def start_ok_payload(
    client_properties: Mapping[str, Any], mechanism: str, response: bytes, locale: str
) -> bytes:
    """connection.start-ok by hand: pamqp would take the response as text."""
    return b"".join(
        (
            method_payload(10, 11),
            pamqp_encode.field_table(dict(client_properties)),
            pamqp_encode.short_string(mechanism),
            struct.pack(">I", len(response)),
            response,
            pamqp_encode.short_string(locale),
        )
    )


def plain_response(username: str, password: str) -> bytes:
    return b"\x00" + username.encode() + b"\x00" + password.encode()


def amqplain_response(username: str, password: str) -> bytes:
    """LOGIN and PASSWORD as a field table without its length prefix."""
    parts = []
    for key, value in (("LOGIN", username), ("PASSWORD", password)):
        raw = value.encode()
        parts.append(
            bytes((len(key),)) + key.encode() + b"S" + struct.pack(">I", len(raw)) + raw
        )
    return b"".join(parts)


class AmqpClient:
    """One client connection; every read waits at most `timeout` seconds."""

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.sock = sock
        self.timeout = timeout
        self._buffer = bytearray()
        self.start: commands.Connection.Start | None = None
        self.tune: commands.Connection.Tune | None = None
        self.frame_max = 131072

    @classmethod
    def connect(
        cls, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT_S
    ) -> AmqpClient:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> AmqpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sending -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Raw bytes, exactly as given."""
        self.sock.sendall(data)

    def send_header(self, header: bytes = PROTOCOL_HEADER) -> None:
        self.send(header)

    def send_frame(
        self, frame_type: int, channel: int, payload: bytes, frame_end: int = FRAME_END
    ) -> None:
        self.send(raw_frame(frame_type, channel, payload, frame_end))

    def send_method(self, channel: int, method: pamqp_base.Frame) -> None:
        self.send(method_frame(channel, method))

    def send_heartbeat(self, channel: int = 0) -> None:
        self.send_frame(FRAME_HEARTBEAT, channel, b"")

    def publish(
        self,
        channel: int,
        body: bytes,
        exchange: str = "",
        routing_key: str = "",
        *,
        properties: commands.Basic.Properties | None = None,
        mandatory: bool = False,
    ) -> None:
        """basic.publish, its content header and body frames within frame_max."""
        data = [
            method_frame(
                channel,
                commands.Basic.Publish(
                    exchange=exchange, routing_key=routing_key, mandatory=mandatory
                ),
            ),
            content_header_frame(channel, len(body), properties),
        ]
        chunk = self.frame_max - 8
        data += (
            body_frame(channel, body[start : start + chunk])
            for start in range(0, len(body), chunk)
        )
        self.send(b"".join(data))

    # -- receiving -----------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete frame from the server in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no complete frame from the server in time") from None
        except ConnectionResetError:
            data = b""
        if not data:
            raise ServerClosedError(
                f"server closed the socket ({len(self._buffer)} bytes left unread)"
            )
        self._buffer += data

    def read_bytes(self, count: int, timeout: float | None = None) -> bytes:
        """Exactly `count` raw bytes (e.g. a protocol header sent back)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buffer) < count:
            self._fill(deadline)
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def read_frame(self, timeout: float | None = None) -> Frame:
        """The next frame, heartbeats included.

        Raises:
            TimeoutError: no complete frame within the timeout.
            ServerClosedError: the server closed the socket.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buffer) < _FRAME_HEAD.size:
            self._fill(deadline)
        frame_type, channel, size = _FRAME_HEAD.unpack_from(self._buffer)
        end = _FRAME_HEAD.size + size
        while len(self._buffer) <= end:
            self._fill(deadline)
        assert self._buffer[end] == FRAME_END, f"bad frame end {self._buffer[end]}"
        raw = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        payload = raw[_FRAME_HEAD.size : end]
        value = None
        if frame_type != FRAME_HEARTBEAT:
            try:
                _, _, value = pamqp_frame.unmarshal(raw)
            except pamqp_exceptions.UnmarshalingException:
                pass  # a method pamqp does not know (access.request-ok)
        return Frame(frame_type, channel, payload, value)

    def read(self, timeout: float | None = None) -> Frame:
        """The next frame that is not a heartbeat."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.read_frame(max(deadline - time.monotonic(), 0.001))
            if frame.frame_type != FRAME_HEARTBEAT:
                return frame

    def expect(
        self,
        method_type: type[M],
        channel: int | None = None,
        timeout: float | None = None,
    ) -> M:
        """The next non-heartbeat frame, which must be `method_type`."""
        frame = self.read(timeout)
        assert isinstance(frame.value, method_type), (
            f"expected {method_type.__name__}, got {frame.value!r} "
            f"on channel {frame.channel}"
        )
        if channel is not None:
            assert frame.channel == channel, (
                f"{method_type.__name__} on channel {frame.channel}, not {channel}"
            )
        return frame.value

    def expect_connection_close(
        self, *, reply_close_ok: bool = True, timeout: float | None = None
    ) -> tuple[int, str, int, int]:
        """(reply_code, reply_text, class_id, method_id) of connection.close.

        The close must be the next non-heartbeat frame, on channel 0. Answers
        with close-ok unless told not to.
        """
        close = self.expect(commands.Connection.Close, 0, timeout)
        if reply_close_ok:
            self.send_method(0, commands.Connection.CloseOk())
        return close.reply_code, close.reply_text, close.class_id, close.method_id

    def expect_channel_close(
        self, channel: int, *, reply_close_ok: bool = True, timeout: float | None = None
    ) -> tuple[int, str, int, int]:
        close = self.expect(commands.Channel.Close, channel, timeout)
        if reply_close_ok:
            self.send_method(channel, commands.Channel.CloseOk())
        return close.reply_code, close.reply_text, close.class_id, close.method_id

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
        """Wait until the server closes the socket; return what it sent first.

        Raises:
            AssertionError: the socket was still open after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        received = bytes(self._buffer)
        self._buffer.clear()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"server did not close the socket within {timeout} s "
                    f"(received {received[:64]!r})"
                )
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += data

    def assert_quiet(self, seconds: float, *, allow_heartbeats: bool = True) -> None:
        """For `seconds`, nothing arrives (heartbeats aside, if allowed) and
        the socket stays open. Only for checking that something does *not*
        happen; `seconds` bounds it."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                frame = self.read_frame(remaining)
            except TimeoutError:
                return
            assert allow_heartbeats and frame.frame_type == FRAME_HEARTBEAT, (
                f"unexpected frame {frame.raw!r}"
            )

    # -- handshake -----------------------------------------------------------

    def handshake(
        self,
        *,
        username: str = "guest",
        password: str = "guest",
        mechanism: str = "PLAIN",
        response: bytes | None = None,
        capabilities: Mapping[str, Any] | None = None,
        client_properties: Mapping[str, Any] | None = None,
        locale: str = "en_US",
        channel_max: int | None = None,
        frame_max: int | None = None,
        heartbeat: int = 0,
        vhost: str = "/",
        header: bytes = PROTOCOL_HEADER,
        open_connection: bool = True,
    ) -> Frame:
        """Header, start-ok, tune-ok and (by default) connection.open.

        None for channel_max/frame_max takes the server's proposal. Returns
        the frame that answers the last step: open-ok, or tune (when
        open_connection is false), or whatever the server sent instead.
        """
        self.send_header(header)
        self.start = self.expect(commands.Connection.Start, 0)
        properties = dict(
            client_properties
            if client_properties is not None
            else {"product": "amqpy tests", "platform": "Python"}
        )
        properties["capabilities"] = dict(
            DEFAULT_CAPABILITIES if capabilities is None else capabilities
        )
        if response is None:
            if mechanism == "AMQPLAIN":
                response = amqplain_response(username, password)
            else:
                response = plain_response(username, password)
        self.send_frame(
            FRAME_METHOD, 0, start_ok_payload(properties, mechanism, response, locale)
        )
        frame = self.read()
        if not isinstance(frame.value, commands.Connection.Tune):
            return frame
        self.tune = frame.value
        tune_ok = commands.Connection.TuneOk(
            channel_max=self.tune.channel_max if channel_max is None else channel_max,
            frame_max=self.tune.frame_max if frame_max is None else frame_max,
            heartbeat=heartbeat,
        )
        self.frame_max = tune_ok.frame_max or self.frame_max
        self.send_method(0, tune_ok)
        if not open_connection:
            return frame
        self.send_method(0, commands.Connection.Open(virtual_host=vhost))
        return self.read()

    def open(self, **options: Any) -> AmqpClient:
        """Complete a handshake that must end in open-ok."""
        frame = self.handshake(**options)
        assert isinstance(frame.value, commands.Connection.OpenOk), frame
        return self

    def open_channel(self, channel: int) -> None:
        self.send_method(channel, commands.Channel.Open())
        self.expect(commands.Channel.OpenOk, channel)

    def close_connection(self) -> None:
        """A clean client close: connection.close, then close-ok."""
        self.send_method(
            0,
            commands.Connection.Close(
                reply_code=200, reply_text="bye", class_id=0, method_id=0
            ),
        )
        self.expect(commands.Connection.CloseOk, 0)


def open_client(port: int, **options: Any) -> AmqpClient:
    """A connected client past connection.open-ok."""
    client = AmqpClient.connect(port)
    try:
        return client.open(**options)
    except BaseException:
        client.close()
        raise
