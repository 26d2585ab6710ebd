"""Frame splitting and encoding.

`FrameReader` turns a byte stream into complete frames without copying the
buffer per frame (one `del` per batch), and checks frame_max from the frame
header before it waits for the payload, so a peer cannot make us buffer a
frame larger than negotiated.

The encoders for the frames on the hot path (basic.deliver, the content
header passed through as raw bytes, body frames) and for the server frames
that carry queue or exchange names are written with `struct`: pamqp validates
names on encode with a stricter rule than RabbitMQ's (any UTF-8 up to 255
bytes), and is several times slower. Everything else is encoded by pamqp.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from pamqp import base as pamqp_base
from pamqp import frame as pamqp_frame

from amqpy.protocol.constants import (
    CLASS_BASIC,
    FRAME_BODY,
    FRAME_END,
    FRAME_END_BYTE,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_OVERHEAD,
    PROTOCOL_HEADER,
)
from amqpy.protocol.errors import ProtocolError
from amqpy.reply_code import ReplyCode

_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">HH")
_CONTENT_HEADER_PREFIX = struct.Struct(">HHQ")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")

HEARTBEAT_FRAME = _FRAME_HEAD.pack(FRAME_HEARTBEAT, 0, 0) + FRAME_END_BYTE


# Bytes of a payload an error text shows: the close frame carries 255 bytes
# of text anyway, and a frame_max-sized payload must not make a log line of
# half a megabyte.
ERLANG_BINARY_MAX_SHOWN = 512
_PRINTABLE = bytes(range(32, 127))


def erlang_binary(data: bytes) -> str:
    """Bytes as Erlang prints a binary, as RabbitMQ's error texts show them;
    past ERLANG_BINARY_MAX_SHOWN bytes cut short as Erlang's ~P does."""
    # Printable or not is decided on all of it, as RabbitMQ does.
    printable = bool(data) and not data.translate(None, _PRINTABLE)
    shown = data[:ERLANG_BINARY_MAX_SHOWN]
    more = "..." if len(data) > len(shown) else ""
    if printable:
        escaped = shown.decode("ascii").replace("\\", "\\\\").replace('"', '\\"')
        return f'<<"{escaped}"{more}>>'
    return "<<" + ",".join([*map(str, shown), *([more] if more else [])]) + ">>"


class FrameReader:
    """Splits a byte stream into frames: (frame_type, channel_id, payload)."""

    __slots__ = ("_buffer", "_error", "frame_max")

    def __init__(self, frame_max: int) -> None:
        self._buffer = bytearray()
        self._error: ProtocolError | None = None
        self.frame_max = frame_max

    def feed(self, data: bytes) -> None:
        # Past a framing error the stream cannot be parsed again: drop what
        # follows, or a peer could fill our memory during the close timeout.
        if self._error is None:
            self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def take_protocol_header(self) -> bytes | None:
        """The first 8 bytes of the stream, once they are all here."""
        if len(self._buffer) < len(PROTOCOL_HEADER):
            return None
        header = bytes(self._buffer[: len(PROTOCOL_HEADER)])
        del self._buffer[: len(PROTOCOL_HEADER)]
        return header

    def frames(self) -> Iterator[tuple[int, int, bytes]]:
        """Yield every complete frame in the buffer.

        Raises:
            ProtocolError: 501 FRAME_ERROR for a frame above frame_max or a bad
                frame-end octet; the same error again on every later call.
        """
        if self._error is not None:
            error = self._error
            raise ProtocolError(error.reply_code, error.text)
        buffer = self._buffer
        position = 0
        unpack_head = _FRAME_HEAD.unpack_from
        try:
            while True:
                available = len(buffer) - position
                if available < FRAME_HEADER_SIZE:
                    return
                frame_type, channel_id, size = unpack_head(buffer, position)
                # RabbitMQ lets the payload itself reach frame_max (it
                # forgives the 8 bytes of framing), and so do we.
                if size > self.frame_max:
                    raise self._broken(
                        ReplyCode.FRAME_ERROR,
                        f"type {frame_type}, all octets = <<>>: "
                        f"{{frame_too_large,{size},{self.frame_max - FRAME_OVERHEAD}}}",
                    )
                end = position + FRAME_HEADER_SIZE + size
                if end >= len(buffer):
                    return
                if buffer[end] != FRAME_END:
                    payload = bytes(buffer[position + FRAME_HEADER_SIZE : end])
                    raise self._broken(
                        ReplyCode.FRAME_ERROR,
                        f"type {frame_type}, all octets = {erlang_binary(payload)}: "
                        f"{{invalid_frame_end_marker,{buffer[end]}}}",
                    )
                payload = bytes(buffer[position + FRAME_HEADER_SIZE : end])
                position = end + 1
                yield frame_type, channel_id, payload
        finally:
            if position:
                del buffer[:position]

    def _broken(self, reply_code: ReplyCode, text: str) -> ProtocolError:
        self._error = ProtocolError(reply_code, text)
        self._buffer.clear()
        return ProtocolError(reply_code, text)


def encode_method(channel_id: int, method: pamqp_base.Frame) -> bytes:
    """Encode any method with pamqp (validating it)."""
    return pamqp_frame.marshal(method, channel_id)


def _shortstr(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def encode_raw_method(channel_id: int, payload: bytes) -> bytes:
    """A method frame around an already encoded method payload."""
    return _method_frame(channel_id, payload)


def _method_frame(channel_id: int, payload: bytes) -> bytes:
    return (
        _FRAME_HEAD.pack(FRAME_METHOD, channel_id, len(payload))
        + payload
        + (FRAME_END_BYTE)
    )


_DELIVER_ID = _METHOD_ID.pack(CLASS_BASIC, 60)
_GET_OK_ID = _METHOD_ID.pack(CLASS_BASIC, 71)
_RETURN_ID = _METHOD_ID.pack(CLASS_BASIC, 50)
_DECLARE_OK_ID = _METHOD_ID.pack(50, 11)


def _deliver_frame(
    channel_id: int,
    consumer_tag_raw: bytes,
    delivery_tag: int,
    redelivered: bool,
    route_raw: bytes,
) -> tuple[bytes, ...]:
    """The parts of a basic.deliver method frame, short strings pre-encoded."""
    return (
        _FRAME_HEAD.pack(
            FRAME_METHOD, channel_id, 13 + len(consumer_tag_raw) + len(route_raw)
        ),
        _DELIVER_ID,
        consumer_tag_raw,
        _U64.pack(delivery_tag),
        b"\x01" if redelivered else b"\x00",
        route_raw,
        FRAME_END_BYTE,
    )


def encode_deliver(
    channel_id: int,
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
) -> bytes:
    return b"".join(
        _deliver_frame(
            channel_id,
            _shortstr(consumer_tag),
            delivery_tag,
            redelivered,
            _shortstr(exchange) + _shortstr(routing_key),
        )
    )


def encode_get_ok(
    channel_id: int,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    message_count: int,
) -> bytes:
    payload = b"".join(
        (
            _GET_OK_ID,
            _U64.pack(delivery_tag),
            b"\x01" if redelivered else b"\x00",
            _shortstr(exchange),
            _shortstr(routing_key),
            struct.pack(">I", message_count),
        )
    )
    return _method_frame(channel_id, payload)


def encode_return(
    channel_id: int, reply_code: int, reply_text: str, exchange: str, routing_key: str
) -> bytes:
    payload = b"".join(
        (
            _RETURN_ID,
            _U16.pack(reply_code),
            _shortstr(reply_text),
            _shortstr(exchange),
            _shortstr(routing_key),
        )
    )
    return _method_frame(channel_id, payload)


def encode_queue_declare_ok(
    channel_id: int, queue_name: str, message_count: int, consumer_count: int
) -> bytes:
    payload = (
        _DECLARE_OK_ID
        + _shortstr(queue_name)
        + struct.pack(">II", message_count, consumer_count)
    )
    return _method_frame(channel_id, payload)


def _content_parts(
    channel_id: int, properties_raw: bytes, body: bytes, frame_max: int
) -> list[bytes | memoryview]:
    parts: list[bytes | memoryview] = [
        _FRAME_HEAD.pack(FRAME_HEADER, channel_id, 12 + len(properties_raw)),
        _CONTENT_HEADER_PREFIX.pack(CLASS_BASIC, 0, len(body)),
        properties_raw,
        FRAME_END_BYTE,
    ]
    if body:
        chunk_size = frame_max - FRAME_OVERHEAD
        if len(body) <= chunk_size:
            parts += (
                _FRAME_HEAD.pack(FRAME_BODY, channel_id, len(body)),
                body,
                FRAME_END_BYTE,
            )
        else:
            view = memoryview(body)
            for start in range(0, len(body), chunk_size):
                chunk = view[start : start + chunk_size]
                parts += (
                    _FRAME_HEAD.pack(FRAME_BODY, channel_id, len(chunk)),
                    chunk,
                    FRAME_END_BYTE,
                )
    return parts


def encode_content(
    channel_id: int, properties_raw: bytes, body: bytes, frame_max: int
) -> bytes:
    """The content header (raw properties passed through) and body frames."""
    return b"".join(_content_parts(channel_id, properties_raw, body, frame_max))


def shortstr(value: str) -> bytes:
    """A short string as encoded on the wire (length byte first)."""
    return _shortstr(value)


def encode_delivery(
    channel_id: int,
    consumer_tag_raw: bytes,
    delivery_tag: int,
    redelivered: bool,
    route_raw: bytes,
    properties_raw: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    """basic.deliver with its content, in one piece: the hot path.

    `consumer_tag_raw` is the encoded short string of the consumer tag and
    `route_raw` those of the exchange and routing key, so callers can reuse
    them across deliveries.
    """
    parts = _content_parts(channel_id, properties_raw, body, frame_max)
    parts[:0] = _deliver_frame(
        channel_id, consumer_tag_raw, delivery_tag, redelivered, route_raw
    )
    return b"".join(parts)


# The varying fields of a delivery, packed at once: delivery tag and
# redelivered; the content header's frame head, class, weight and body size;
# the header's frame end and the body frame's head.
_TAG_REDELIVERED = struct.Struct(">QB")
_HEADER_HEAD = struct.Struct(">BHIHHQ")
_END_BODY_HEAD = struct.Struct(">BBHI")


def deliver_template(
    channel_id: int, consumer_tag_raw: bytes, route_raw: bytes
) -> tuple[bytes, bytes]:
    """What a consumer's basic.deliver frames share while the route stays
    the same: the bytes before the delivery tag and those after the
    redelivered bit (for `encode_delivery_from`)."""
    head = (
        _FRAME_HEAD.pack(
            FRAME_METHOD, channel_id, 13 + len(consumer_tag_raw) + len(route_raw)
        )
        + _DELIVER_ID
        + consumer_tag_raw
    )
    return head, route_raw + FRAME_END_BYTE


def encode_delivery_from(
    template: tuple[bytes, bytes],
    channel_id: int,
    delivery_tag: int,
    redelivered: bool,
    properties_raw: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    """`encode_delivery` with the method frame's fixed parts taken from a
    `deliver_template`: the same bytes, with three packs and one join for a
    body that fits one frame (the hot path)."""
    body_size = len(body)
    if not body or body_size > frame_max - FRAME_OVERHEAD:
        return b"".join(
            [
                template[0],
                _TAG_REDELIVERED.pack(delivery_tag, redelivered),
                template[1],
                *_content_parts(channel_id, properties_raw, body, frame_max),
            ]
        )
    return b"".join(
        (
            template[0],
            _TAG_REDELIVERED.pack(delivery_tag, redelivered),
            template[1],
            _HEADER_HEAD.pack(
                FRAME_HEADER,
                channel_id,
                12 + len(properties_raw),
                CLASS_BASIC,
                0,
                body_size,
            ),
            properties_raw,
            _END_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel_id, body_size),
            body,
            FRAME_END_BYTE,
        )
    )


def encode_properties(properties: pamqp_base.BasicProperties) -> bytes:
    """Property flags and values, as they follow body_size in a content header."""
    return properties.marshal()
