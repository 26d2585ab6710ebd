"""The server side of one AMQP 0-9-1 connection, without I/O.

Bytes go in through `receive_data`, events come out of `next_event`, and
frames the caller asks for collect in an output buffer that `data_to_send`
drains. The handshake, the channel table, the close handshakes and content
assembly live here; what a method *means* is the caller's business.

Errors the peer causes are raised from `next_event` as `ProtocolError`
(close the connection) or `ChannelProtocolError` (close one channel). Events
are produced lazily, one frame at a time, so a close the caller queues in
answer to one event is seen before the next frame is parsed.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pamqp import base as pamqp_base
from pamqp import commands

from amqpy.protocol import events
from amqpy.protocol.constants import (
    BASIC_PUBLISH_METHOD_ID,
    CLASS_BASIC,
    CLASS_CONNECTION,
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    PROTOCOL_HEADER,
)
from amqpy.protocol.errors import (
    ChannelProtocolError,
    ProtocolError,
    ProtocolHeaderMismatchError,
)
from amqpy.protocol.fieldtable import decode_table, unmarshal_method
from amqpy.protocol.frames import (
    FrameReader,
    encode_method,
    encode_raw_method,
    erlang_binary,
)
from amqpy.reply_code import ReplyCode

_METHOD_ID = struct.Struct(">HH")
_U32 = struct.Struct(">I")
_CONTENT_HEADER_PREFIX = struct.Struct(">HHQ")
_ACK = struct.Struct(">QB")


_BASIC_PUBLISH_PREFIX = _METHOD_ID.pack(CLASS_BASIC, BASIC_PUBLISH_METHOD_ID)
_BASIC_ACK_PREFIX = _METHOD_ID.pack(CLASS_BASIC, 80)
_KNOWN_FRAME_TYPES = frozenset(
    {FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT}
)
_EXPECTED_METHOD = "expected method frame, got non method frame instead"
_EXPECTED_HEADER = (
    f"expected content header for class {CLASS_BASIC}, "
    "got non content header frame instead"
)
_EXPECTED_BODY = "expected content body, got non content body frame instead"
# Methods only a server sends; from a client, RabbitMQ answers 503.
_SERVER_ONLY_METHODS = (
    commands.Channel.OpenOk,
    commands.Channel.FlowOk,
    commands.Exchange.DeclareOk,
    commands.Exchange.DeleteOk,
    commands.Exchange.BindOk,
    commands.Exchange.UnbindOk,
    commands.Queue.DeclareOk,
    commands.Queue.BindOk,
    commands.Queue.UnbindOk,
    commands.Queue.PurgeOk,
    commands.Queue.DeleteOk,
    commands.Basic.QosOk,
    commands.Basic.ConsumeOk,
    commands.Basic.CancelOk,
    commands.Basic.Return,
    commands.Basic.Deliver,
    commands.Basic.GetOk,
    commands.Basic.GetEmpty,
    commands.Basic.RecoverOk,
    commands.Confirm.SelectOk,
    commands.Tx.SelectOk,
    commands.Tx.CommitOk,
    commands.Tx.RollbackOk,
)
# access.request (class 30, obsolete; pamqp lacks the class): RabbitMQ answers
# access.request-ok with ticket 1.
_ACCESS_REQUEST_PREFIX = _METHOD_ID.pack(30, 10)
_ACCESS_REQUEST_OK_PAYLOAD = _METHOD_ID.pack(30, 11) + b"\x00\x01"


def _method_payload(method: pamqp_base.Frame) -> bytes:
    """A method's payload as pamqp encodes it (the frame without its framing)."""
    return encode_method(0, method)[7:-1]


# Replies without arguments, encoded once: pamqp takes tens of microseconds
# for each, and the handshake and every channel open and close send them.
_CONNECTION_OPEN_OK_FRAME = encode_method(0, commands.Connection.OpenOk())
_CONNECTION_CLOSE_OK_FRAME = encode_method(0, commands.Connection.CloseOk())
_CHANNEL_OPEN_OK_PAYLOAD = _method_payload(commands.Channel.OpenOk())
_CHANNEL_CLOSE_OK_PAYLOAD = _method_payload(commands.Channel.CloseOk())

# RabbitMQ also takes the pre-standard 0-9-1 header.
_ACCEPTED_PROTOCOL_HEADERS = (PROTOCOL_HEADER, b"AMQP\x01\x01\x00\x09")


class ConnectionState(enum.Enum):
    AWAIT_PROTOCOL_HEADER = enum.auto()
    AWAIT_START_OK = enum.auto()
    AWAIT_TUNE_OK = enum.auto()
    AWAIT_OPEN = enum.auto()
    OPEN = enum.auto()
    CLOSING = enum.auto()  # we sent connection.close, waiting for close-ok
    CLOSED = enum.auto()


class ChannelState(enum.Enum):
    OPEN = enum.auto()
    AWAIT_HEADER = enum.auto()
    AWAIT_BODY = enum.auto()
    CLOSING = enum.auto()  # we sent channel.close, waiting for close-ok


def encode_start(
    server_properties: Mapping[str, Any],
    mechanisms: str = "PLAIN AMQPLAIN",
    locales: str = "en_US",
) -> bytes:
    """The connection.start frame. It is the same for every connection of a
    listener: encode it once and pass it to each `ServerConnection`."""
    return encode_method(
        0,
        commands.Connection.Start(
            version_major=0,
            version_minor=9,
            server_properties=dict(server_properties),
            mechanisms=mechanisms,
            locales=locales,
        ),
    )


# Decoded client properties by their encoded bytes: the connections of one
# client library send the same table, and one decoded copy (about a
# kilobyte) serves them all. Bounded: emptied when full.
_CLIENT_PROPERTIES: dict[bytes, dict[str, Any]] = {}
_CLIENT_PROPERTIES_MAX = 256


def _shared_client_properties(
    payload: bytes, decoded: dict[str, Any]
) -> dict[str, Any]:
    """The decoded table of a connection.start-ok `payload`, shared with the
    connections that sent the same bytes (so it must be read only)."""
    # The table is start-ok's first argument, after the class and method ids.
    (size,) = _U32.unpack_from(payload, 4)
    key = payload[4 : 8 + size]
    shared = _CLIENT_PROPERTIES.get(key)
    if shared is not None:
        return shared
    if "connection_name" in decoded or not _self_contained(key, decoded):
        # A name is per connection: nothing to share. A value that runs
        # past the table's end (pamqp reads on) depends on more than `key`.
        return dict(decoded)
    if len(_CLIENT_PROPERTIES) >= _CLIENT_PROPERTIES_MAX:
        _CLIENT_PROPERTIES.clear()
    shared = _CLIENT_PROPERTIES[key] = dict(decoded)
    return shared


_START_OK_ID = _METHOD_ID.pack(CLASS_CONNECTION, 11)


def _known_start_ok(payload: bytes) -> events.StartOkReceived | None:
    """connection.start-ok decoded by hand when its client properties are
    known (decoding the table is most of the work): exactly what the generic
    decoder gives for a well-formed payload. None for anything else (then
    the generic decoder decides, errors included)."""
    if len(payload) < 8:
        return None
    (size,) = _U32.unpack_from(payload, 4)
    offset = 8 + size
    properties = _CLIENT_PROPERTIES.get(payload[4:offset])
    if properties is None or offset >= len(payload):
        return None
    end = offset + 1 + payload[offset]
    if end + 4 > len(payload):
        return None
    mechanism = payload[offset + 1 : end]
    (size,) = _U32.unpack_from(payload, end)
    offset = end + 4 + size
    if offset >= len(payload):
        return None
    response = payload[end + 4 : offset]
    end = offset + 1 + payload[offset]
    if end > len(payload):
        return None
    try:
        return events.StartOkReceived(
            properties,
            mechanism.decode("utf-8"),
            response,
            payload[offset + 1 : end].decode("utf-8"),
        )
    except UnicodeDecodeError:
        return None


def _self_contained(table: bytes, decoded: dict[str, Any]) -> bool:
    """Whether `decoded` came from `table`'s bytes alone: a value that ran
    past the end would read the added byte (or fail without it)."""
    try:
        return decode_table(table)[1] == decoded == decode_table(table + b"\xff")[1]
    except (ValueError, RecursionError, OverflowError, OSError):
        return False  # decode_table's failures: not self-contained


@functools.lru_cache(maxsize=16)
def _tune_frame(channel_max: int, frame_max: int, heartbeat: int) -> bytes:
    # The same three limits for every connection of a broker.
    return encode_method(
        0,
        commands.Connection.Tune(
            channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat
        ),
    )


class _Channel:
    __slots__ = (
        "body_parts",
        "body_received",
        "body_size",
        "content",
        "state",
    )

    def __init__(self) -> None:
        self.state = ChannelState.OPEN
        self.content: events.ContentReceived | None = None
        self.body_size = 0
        self.body_received = 0
        # The frames of a body in several frames; None for the usual one.
        self.body_parts: list[bytes] | None = None


def method_name(class_id: int, method_id: int) -> str:
    """RabbitMQ's name for a method, as it appears in error texts."""
    method = commands.INDEX_MAPPING.get((class_id << 16) | method_id)
    if method is None:
        return f"{class_id}/{method_id}"
    return str(method.name).lower()


def _safe_reply_text(text: str) -> str:
    """RabbitMQ's cap on a reply text (a shortstr): over 255 bytes of UTF-8,
    the first 252 bytes and "..." (a character cut in two is dropped here,
    where RabbitMQ would send its first bytes)."""
    raw = text.encode()
    if len(raw) <= 255:
        return text
    return raw[:252].decode("utf-8", "ignore") + "..."


def _ids(method: pamqp_base.Frame) -> tuple[int, int]:
    return method.index >> 16, method.index & 0xFFFF


class ServerConnection:
    """State of one connection as seen by the broker."""

    # One per client connection: no per-instance dict.
    __slots__ = (
        "_channels",
        "_frames",
        "_out",
        "_reader",
        "_start_frame",
        "channel_max",
        "channel_open_refusal",
        "frame_max",
        "heartbeat",
        "max_message_size",
        "state",
    )

    def __init__(
        self,
        *,
        server_properties: Mapping[str, Any] | None = None,
        mechanisms: str = "PLAIN AMQPLAIN",
        locales: str = "en_US",
        start_frame: bytes | None = None,
        channel_max: int,
        frame_max: int,
        heartbeat: int,
        max_message_size: int,
    ) -> None:
        """`start_frame` (from `encode_start`) is shared by the connections
        of a listener; without it, connection.start is encoded from
        `server_properties`, `mechanisms` and `locales`."""
        self.state = ConnectionState.AWAIT_PROTOCOL_HEADER
        if start_frame is None:
            start_frame = encode_start(server_properties or {}, mechanisms, locales)
        self._start_frame = start_frame
        # What we propose in connection.tune; replaced by the negotiated values.
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat = heartbeat
        self.max_message_size = max_message_size
        self._reader = FrameReader(FRAME_MIN_SIZE)
        self._frames: Iterator[tuple[int, int, bytes]] | None = None
        self._out = bytearray()
        self._channels: dict[int, _Channel] = {}
        # Asked before a channel opens; a text refuses it with a 530
        # connection close (RabbitMQ's per-user max-channels limit).
        self.channel_open_refusal: Callable[[], str | None] | None = None

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._reader.feed(data)

    def next_event(self) -> events.Event | None:
        """The next event, or None when more data is needed.

        Raises:
            ProtocolHeaderMismatchError: the stream did not start with the
                AMQP 0-9-1 header (ours is queued to be sent back).
            ProtocolError: the connection must be closed with its reply code.
            ChannelProtocolError: one channel must be closed with its code.
        """
        if self.state is ConnectionState.AWAIT_PROTOCOL_HEADER:
            header = self._reader.take_protocol_header()
            if header is None:
                return None
            if header not in _ACCEPTED_PROTOCOL_HEADERS:
                self._out += PROTOCOL_HEADER
                self.state = ConnectionState.CLOSED
                raise ProtocolHeaderMismatchError(header)
            self._send_start()
            self.state = ConnectionState.AWAIT_START_OK
        if self.state is ConnectionState.CLOSED:
            return None
        while True:
            if self._frames is None:
                self._frames = self._reader.frames()
            try:
                frame_type, channel_id, payload = next(self._frames)
            except StopIteration:
                self._frames = None
                return None
            event = self._handle_frame(frame_type, channel_id, payload)
            if event is not None:
                return event

    def _handle_frame(
        self, frame_type: int, channel_id: int, payload: bytes
    ) -> events.Event | None:
        if frame_type not in _KNOWN_FRAME_TYPES or (
            frame_type == FRAME_HEARTBEAT and channel_id == 0 and payload
        ):
            raise ProtocolError(
                ReplyCode.FRAME_ERROR,
                f"type {frame_type}, all octets = {erlang_binary(payload)}: "
                "unknown_frame",
            )
        if channel_id == 0:
            if frame_type == FRAME_METHOD:
                return self._handle_connection_method(payload)
            if frame_type == FRAME_HEARTBEAT:
                return events.HeartbeatReceived()
            raise ProtocolError(
                ReplyCode.UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
            )
        state = self.state
        if state is not ConnectionState.OPEN:
            if state is ConnectionState.CLOSING:
                return None
            raise ProtocolError(
                ReplyCode.UNEXPECTED_FRAME,
                f"type {frame_type}, all octets = {erlang_binary(payload)}",
                silent=state is not ConnectionState.AWAIT_OPEN,
            )
        channel = self._channels.get(channel_id)
        if frame_type == FRAME_METHOD:
            return self._handle_channel_method(channel_id, channel, payload)
        if frame_type == FRAME_HEADER:
            return self._handle_content_header(channel_id, channel, payload)
        if frame_type == FRAME_BODY:
            return self._handle_content_body(channel_id, channel, payload)
        raise ProtocolError(  # a heartbeat on a channel other than 0
            ReplyCode.UNEXPECTED_FRAME,
            f"type {frame_type}, all octets = {erlang_binary(payload)}",
        )

    def _decode_method(self, payload: bytes) -> pamqp_base.Frame:
        if len(payload) < 4:
            raise ProtocolError(
                ReplyCode.FRAME_ERROR,
                f"type {FRAME_METHOD}, all octets = {erlang_binary(payload)}: "
                "unknown_frame",
            )
        class_id, method_id = _METHOD_ID.unpack_from(payload)
        method_class = commands.INDEX_MAPPING.get((class_id << 16) | method_id)
        if method_class is None:
            # RabbitMQ drops the socket here; a close frame says more.
            raise ProtocolError(
                ReplyCode.NOT_IMPLEMENTED,
                f"unknown method: class {class_id}, method {method_id}",
                class_id,
                method_id,
            )
        method = method_class()
        try:
            unmarshal_method(method, payload[4:])
        except UnicodeDecodeError as error:
            raise ProtocolError(
                ReplyCode.FRAME_ERROR, "Malformed UTF-8 in shortstr"
            ) from error
        except Exception as error:  # any decode failure is the peer's fault
            raise ProtocolError(
                ReplyCode.FRAME_ERROR,
                f"cannot decode {erlang_binary(payload[4:68])}",
                class_id,
                method_id,
            ) from error
        return method

    # -- connection class ----------------------------------------------------

    def _handle_connection_method(self, payload: bytes) -> events.Event | None:
        state = self.state
        if state is ConnectionState.AWAIT_START_OK and payload[:4] == _START_OK_ID:
            start_ok = _known_start_ok(payload)
            if start_ok is not None:
                return start_ok
        method = self._decode_method(payload)
        if state is ConnectionState.CLOSING:
            if isinstance(method, commands.Connection.CloseOk):
                self.state = ConnectionState.CLOSED
                return events.ConnectionCloseOkReceived()
            if isinstance(method, commands.Connection.Close):
                self._out += _CONNECTION_CLOSE_OK_FRAME
                self.state = ConnectionState.CLOSED
                return events.ConnectionCloseOkReceived()
            return None
        if isinstance(method, commands.Connection.Close):
            self._out += _CONNECTION_CLOSE_OK_FRAME
            self.state = ConnectionState.CLOSED
            return events.ConnectionCloseReceived(method.reply_code, method.reply_text)
        if state is ConnectionState.AWAIT_START_OK and isinstance(
            method, commands.Connection.StartOk
        ):
            response = method.response
            if isinstance(response, str):
                response = response.encode("utf-8")
            return events.StartOkReceived(
                _shared_client_properties(payload, method.client_properties or {}),
                method.mechanism,
                response,
                method.locale,
            )
        if state is ConnectionState.AWAIT_TUNE_OK and isinstance(
            method, commands.Connection.TuneOk
        ):
            return self._handle_tune_ok(method)
        if state is ConnectionState.AWAIT_OPEN and isinstance(
            method, commands.Connection.Open
        ):
            return events.OpenReceived(method.virtual_host)
        class_id, method_id = _ids(method)
        if state is not ConnectionState.OPEN:
            raise ProtocolError(
                ReplyCode.COMMAND_INVALID,
                f"unexpected {method_name(class_id, method_id)} during the handshake",
                class_id,
                method_id,
                silent=True,
            )
        if isinstance(method, commands.Connection.UpdateSecret):
            self._out += encode_method(0, commands.Connection.UpdateSecretOk())
            return None
        raise ProtocolError(
            ReplyCode.CHANNEL_ERROR,
            "unexpected method in connection state running",
            class_id,
            method_id,
        )

    def _handle_tune_ok(self, method: commands.Connection.TuneOk) -> events.Event:
        channel_max, frame_max = method.channel_max, method.frame_max
        if self.channel_max and not 0 < channel_max <= self.channel_max:
            no_limit = " (no limit)" if channel_max == 0 else ""
            raise ProtocolError(
                ReplyCode.NOT_ALLOWED,
                f"negotiated channel_max = {channel_max}{no_limit} is higher than "
                f"the maximum allowed value ({self.channel_max})",
                10,
                31,
                silent=True,
            )
        if frame_max < FRAME_MIN_SIZE and frame_max != 0:
            raise ProtocolError(
                ReplyCode.NOT_ALLOWED,
                f"negotiated frame_max = {frame_max} is lower than the minimum "
                f"allowed value ({FRAME_MIN_SIZE})",
                10,
                31,
                silent=True,
            )
        if self.frame_max and not 0 < frame_max <= self.frame_max:
            raise ProtocolError(
                ReplyCode.NOT_ALLOWED,
                f"negotiated frame_max = {frame_max} is higher than the maximum "
                f"allowed value ({self.frame_max})",
                10,
                31,
                silent=True,
            )
        # A heartbeat above our proposal is accepted: the client's value wins.
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat = method.heartbeat
        self._reader.frame_max = frame_max
        self.state = ConnectionState.AWAIT_OPEN
        return events.TuneOkReceived(channel_max, frame_max, method.heartbeat)

    # -- channels ------------------------------------------------------------

    def _handle_channel_method(
        self, channel_id: int, channel: _Channel | None, payload: bytes
    ) -> events.Event | None:
        if channel is not None and channel.state is ChannelState.OPEN:
            prefix = payload[:4]
            if prefix == _BASIC_PUBLISH_PREFIX:  # the hot path
                return self._start_publish(channel_id, channel, payload)
            if prefix == _BASIC_ACK_PREFIX and len(payload) == 13:
                delivery_tag, bits = _ACK.unpack_from(payload, 4)
                return events.MethodReceived(
                    channel_id,
                    commands.Basic.Ack(
                        delivery_tag=delivery_tag, multiple=bool(bits & 1)
                    ),
                )
        if (
            payload[:4] == _ACCESS_REQUEST_PREFIX
            and channel is not None
            and channel.state is ChannelState.OPEN
        ):
            self._out += encode_raw_method(channel_id, _ACCESS_REQUEST_OK_PAYLOAD)
            return None
        method = self._decode_method(payload)
        class_id, method_id = _ids(method)
        if class_id == CLASS_CONNECTION:
            raise ProtocolError(
                ReplyCode.COMMAND_INVALID, "unimplemented method", class_id, method_id
            )
        if channel is None:
            if not isinstance(method, commands.Channel.Open):
                raise ProtocolError(
                    ReplyCode.CHANNEL_ERROR,
                    "expected 'channel.open'",
                    class_id,
                    method_id,
                )
            # channel_max bounds how many channels are open, not their numbers.
            if self.channel_max and len(self._channels) >= self.channel_max:
                raise ProtocolError(
                    ReplyCode.NOT_ALLOWED,
                    f"number of channels opened ({len(self._channels)}) has reached "
                    f"the negotiated channel_max ({self.channel_max})",
                )
            if self.channel_open_refusal is not None:
                refusal = self.channel_open_refusal()
                if refusal is not None:
                    raise ProtocolError(ReplyCode.NOT_ALLOWED, refusal)
            self._channels[channel_id] = _Channel()
            self._out += encode_raw_method(channel_id, _CHANNEL_OPEN_OK_PAYLOAD)
            return events.ChannelOpened(channel_id)
        state = channel.state
        if state is ChannelState.CLOSING:
            if isinstance(method, commands.Channel.CloseOk):
                del self._channels[channel_id]
                return events.ChannelClosed(channel_id)
            if isinstance(method, commands.Channel.Close):
                # Both sides closed at once: answer, and keep waiting for ours.
                self._out += encode_raw_method(channel_id, _CHANNEL_CLOSE_OK_PAYLOAD)
            elif isinstance(method, commands.Channel.Open):
                raise ProtocolError(
                    ReplyCode.CHANNEL_ERROR,
                    "second 'channel.open' seen",
                    class_id,
                    method_id,
                )
            return None
        if state is ChannelState.AWAIT_HEADER:
            raise self._unexpected_in_content(_EXPECTED_HEADER)
        if state is ChannelState.AWAIT_BODY:
            raise self._unexpected_in_content(_EXPECTED_BODY)
        if isinstance(method, commands.Channel.Close):
            self._out += encode_raw_method(channel_id, _CHANNEL_CLOSE_OK_PAYLOAD)
            del self._channels[channel_id]
            return events.ChannelClosed(channel_id)
        if isinstance(method, commands.Channel.Open):
            raise ProtocolError(
                ReplyCode.CHANNEL_ERROR,
                "second 'channel.open' seen",
                class_id,
                method_id,
            )
        if isinstance(method, _SERVER_ONLY_METHODS):
            raise ProtocolError(
                ReplyCode.COMMAND_INVALID, "unimplemented method", class_id, method_id
            )
        return events.MethodReceived(channel_id, method)

    @staticmethod
    def _unexpected_in_content(text: str) -> ProtocolError:
        return ProtocolError(
            ReplyCode.UNEXPECTED_FRAME, text, CLASS_BASIC, BASIC_PUBLISH_METHOD_ID
        )

    def _start_publish(
        self, channel_id: int, channel: _Channel, payload: bytes
    ) -> None:
        try:
            # reserved short, shortstr exchange, shortstr routing key, bits
            offset = 6
            length = payload[offset]
            exchange = payload[offset + 1 : offset + 1 + length].decode("utf-8")
            offset += 1 + length
            length = payload[offset]
            routing_key = payload[offset + 1 : offset + 1 + length].decode("utf-8")
            offset += 1 + length
            bits = payload[offset]
        except (IndexError, UnicodeDecodeError) as error:
            raise ProtocolError(
                ReplyCode.FRAME_ERROR,
                f"cannot decode basic.publish: {error}",
                CLASS_BASIC,
                BASIC_PUBLISH_METHOD_ID,
            ) from error
        channel.content = events.ContentReceived(
            channel_id, exchange, routing_key, bool(bits & 1), bool(bits & 2), b"", b""
        )
        channel.state = ChannelState.AWAIT_HEADER
        return None

    def _handle_content_header(
        self, channel_id: int, channel: _Channel | None, payload: bytes
    ) -> events.Event | None:
        if channel is None or channel.state is ChannelState.OPEN:
            raise ProtocolError(ReplyCode.UNEXPECTED_FRAME, _EXPECTED_METHOD)
        if channel.state is ChannelState.CLOSING:
            return None
        if channel.state is ChannelState.AWAIT_BODY:
            raise self._unexpected_in_content(_EXPECTED_BODY)
        if len(payload) < 14:
            raise ProtocolError(
                ReplyCode.FRAME_ERROR,
                f"type {FRAME_HEADER}, all octets = {erlang_binary(payload)}: "
                "unknown_frame",
            )
        class_id, _weight, body_size = _CONTENT_HEADER_PREFIX.unpack_from(payload)
        if class_id != CLASS_BASIC:
            raise self._unexpected_in_content(
                f"expected content header for class {CLASS_BASIC}, "
                f"got one for class {class_id} instead"
            )
        content = channel.content
        assert content is not None
        content.properties_raw = payload[12:]
        if body_size > self.max_message_size:
            channel.state = ChannelState.OPEN
            channel.content = None
            raise ChannelProtocolError(
                channel_id,
                ReplyCode.PRECONDITION_FAILED,
                f"message size {body_size} is larger than configured max size "
                f"{self.max_message_size}",
                CLASS_BASIC,
                BASIC_PUBLISH_METHOD_ID,
            )
        if body_size == 0:
            channel.state = ChannelState.OPEN
            channel.content = None
            return content
        channel.body_size = body_size
        channel.body_received = 0
        channel.body_parts = None
        channel.state = ChannelState.AWAIT_BODY
        return None

    def _handle_content_body(
        self, channel_id: int, channel: _Channel | None, payload: bytes
    ) -> events.Event | None:
        if channel is None or channel.state is ChannelState.OPEN:
            raise ProtocolError(ReplyCode.UNEXPECTED_FRAME, _EXPECTED_METHOD)
        if channel.state is ChannelState.CLOSING:
            return None
        if channel.state is ChannelState.AWAIT_HEADER:
            raise self._unexpected_in_content(_EXPECTED_HEADER)
        channel.body_received += len(payload)
        if channel.body_received > channel.body_size:
            # RabbitMQ waits for ever here; a clear error is kinder.
            raise ProtocolError(
                ReplyCode.FRAME_ERROR,
                f"content body larger than declared: {channel.body_received} > "
                f"{channel.body_size} bytes",
                CLASS_BASIC,
                BASIC_PUBLISH_METHOD_ID,
            )
        content = channel.content
        assert content is not None
        parts = channel.body_parts
        if channel.body_received == channel.body_size:
            if parts:
                parts.append(payload)
                content.body = b"".join(parts)
                channel.body_parts = None
            else:
                content.body = payload
            channel.state = ChannelState.OPEN
            channel.content = None
            return content
        if parts is None:
            channel.body_parts = [payload]
        else:
            parts.append(payload)
        return None

    # -- output --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def pending_output(self) -> int:
        return len(self._out)

    def send_raw(self, data: bytes) -> None:
        """Queue frames the caller encoded itself (deliveries, acks)."""
        self._out += data

    def send_method(self, channel_id: int, method: pamqp_base.Frame) -> None:
        self._out += encode_method(channel_id, method)

    def _send_start(self) -> None:
        self._out += self._start_frame

    def start_tune(self) -> None:
        """Authentication passed: propose our limits."""
        if self.state is not ConnectionState.AWAIT_START_OK:
            raise RuntimeError(f"start_tune in state {self.state}")
        self._out += _tune_frame(self.channel_max, self.frame_max, self.heartbeat)
        self.state = ConnectionState.AWAIT_TUNE_OK

    def accept_open(self) -> None:
        if self.state is not ConnectionState.AWAIT_OPEN:
            raise RuntimeError(f"accept_open in state {self.state}")
        self._out += _CONNECTION_OPEN_OK_FRAME
        self.state = ConnectionState.OPEN

    def close(
        self,
        reply_code: int,
        reply_text: str,
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        """Send connection.close; from now on only close-ok is awaited."""
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        if self.state is ConnectionState.AWAIT_PROTOCOL_HEADER:
            self.state = ConnectionState.CLOSED
            return
        self.send_method(
            0,
            commands.Connection.Close(
                reply_code=reply_code,
                reply_text=_safe_reply_text(reply_text),
                class_id=class_id,
                method_id=method_id,
            ),
        )
        self._channels.clear()
        self.state = ConnectionState.CLOSING

    def close_channel(
        self,
        channel_id: int,
        reply_code: int,
        reply_text: str,
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        """Send channel.close; the channel drops everything until close-ok."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is ChannelState.CLOSING:
            return
        channel.state = ChannelState.CLOSING
        channel.content = None
        channel.body_parts = None
        self.send_method(
            channel_id,
            commands.Channel.Close(
                reply_code=reply_code,
                reply_text=_safe_reply_text(reply_text),
                class_id=class_id,
                method_id=method_id,
            ),
        )

    def is_channel_open(self, channel_id: int) -> bool:
        channel = self._channels.get(channel_id)
        return channel is not None and channel.state is not ChannelState.CLOSING

    @property
    def is_open(self) -> bool:
        return self.state is ConnectionState.OPEN

    @property
    def open_channel_ids(self) -> list[int]:
        return list(self._channels)
