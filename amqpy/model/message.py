"""A published message: routing facts, raw properties and body.

The properties stay as the bytes the publisher sent (flags and values) and are
passed through to consumers unchanged; they are decoded once, lazily, only
when a feature needs them (headers routing, delivery mode, expiration).
"""

from __future__ import annotations

import re
from typing import Any

from pamqp import commands

from amqpy.protocol.fieldtable import unmarshal_properties


def decode_properties(properties_raw: bytes) -> commands.Basic.Properties:
    """Decode property flags and values as they follow body_size in a header.

    Raises:
        ValueError: the bytes are not a valid property list.
    """
    flags = 0
    offset = 0
    index = 0
    while True:
        if len(properties_raw) < offset + 2:
            raise ValueError("content header property flags are truncated")
        word = int.from_bytes(properties_raw[offset : offset + 2], "big")
        flags |= word << (index * 16)
        offset += 2
        index += 1
        if not word & 1:
            break
    properties = commands.Basic.Properties()
    try:
        # Linear-time tables: pamqp's are quadratic (amqpy.protocol.fieldtable).
        unmarshal_properties(properties, flags, properties_raw[offset:])
    except Exception as error:  # any decode failure means malformed input
        raise ValueError(f"malformed content header properties: {error}") from error
    return properties


# Basic's properties in wire order, with their flag bits and value kinds.
PROPERTY_LAYOUT = (
    ("content_type", 0x8000, "shortstr"),
    ("content_encoding", 0x4000, "shortstr"),
    ("headers", 0x2000, "table"),
    ("delivery_mode", 0x1000, "octet"),
    ("priority", 0x0800, "octet"),
    ("correlation_id", 0x0400, "shortstr"),
    ("reply_to", 0x0200, "shortstr"),
    ("expiration", 0x0100, "shortstr"),
    ("message_id", 0x0080, "shortstr"),
    ("timestamp", 0x0040, "timestamp"),
    ("message_type", 0x0020, "shortstr"),
    ("user_id", 0x0010, "shortstr"),
    ("app_id", 0x0008, "shortstr"),
    ("cluster_id", 0x0004, "shortstr"),
)


def split_properties(properties_raw: bytes) -> dict[str, bytes]:
    """The present properties' encoded values by name, in wire order (a
    table with its length prefix, a short string with its length byte).

    Raises:
        ValueError: malformed, or more than one flag word (no Basic property
            needs one).
    """
    if len(properties_raw) < 2:
        raise ValueError("content header property flags are truncated")
    flags = int.from_bytes(properties_raw[:2], "big")
    if flags & 0x0003:
        raise ValueError("unexpected property flags")
    parts: dict[str, bytes] = {}
    offset = 2
    for name, bit, kind in PROPERTY_LAYOUT:
        if not flags & bit:
            continue
        if kind == "shortstr":
            size = 1 + properties_raw[offset] if offset < len(properties_raw) else 1
        elif kind == "table":
            size = 4 + int.from_bytes(properties_raw[offset : offset + 4], "big")
        else:
            size = 1 if kind == "octet" else 8
        if offset + size > len(properties_raw):
            raise ValueError("content header properties are truncated")
        parts[name] = properties_raw[offset : offset + size]
        offset += size
    if offset != len(properties_raw):
        raise ValueError("content header properties have trailing bytes")
    return parts


def join_properties(parts: dict[str, bytes]) -> bytes:
    """Flags and values from split_properties' shape."""
    flags = 0
    values = []
    for name, bit, _ in PROPERTY_LAYOUT:
        value = parts.get(name)
        if value is not None:
            flags |= bit
            values.append(value)
    return flags.to_bytes(2, "big") + b"".join(values)


MAX_EXPIRY_MS = 315_360_000_000

_INTEGER_PREFIX = re.compile(rb"[+-]?[0-9]+")
# Bytes Erlang's ~p prints inside a string (io_lib:printable_latin1_list/1).
_ERLANG_ESCAPES = {
    0x22: '\\"',
    0x5C: "\\\\",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x0B: "\\v",
    0x08: "\\b",
    0x0C: "\\f",
    0x1B: "\\e",
}


def _erlang_string(raw: bytes) -> str:
    """A byte list as Erlang's ~p prints it (a latin-1 str, one char a byte)."""
    if all(32 <= byte <= 126 or byte >= 160 or byte in _ERLANG_ESCAPES for byte in raw):
        return '"' + "".join(_ERLANG_ESCAPES.get(b, chr(b)) for b in raw) + '"'
    return "[" + ",".join(str(byte) for byte in raw) + "]"


def parse_expiration(value: str | bytes) -> int:
    """An expiration property as milliseconds, as RabbitMQ parses it
    (string:to_integer/1, then rabbit_misc:check_expiry/1).

    Raises:
        ValueError: with RabbitMQ's reason as Erlang prints it ("no_integer",
            "{value_negative,-1}", '{leftover_string,".5"}', ...).
    """
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    match = _INTEGER_PREFIX.match(raw)
    if match is None:
        raise ValueError("no_integer")
    leftover = raw[match.end() :]
    if leftover:
        raise ValueError(f"{{leftover_string,{_erlang_string(leftover)}}}")
    number = int(match.group())
    if number > MAX_EXPIRY_MS:
        raise ValueError(f"{{value_too_large,{number}}}")
    if number < 0:
        raise ValueError(f"{{value_negative,{number}}}")
    return number


def expiration_error_text(value: str | bytes, reason: str) -> str:
    """RabbitMQ's "invalid expiration '~s': ~p" for `reason` from
    parse_expiration, wrapped as Erlang's pretty printer wraps a tuple that
    would reach column 79 (columns counted in bytes, tabs to multiples of 8)."""
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    prefix = "invalid expiration '" + raw.decode("latin-1") + "': "
    column = 0
    for char in prefix:
        column = (column + 8) // 8 * 8 if char == "\t" else column + 1
    if reason.startswith("{") and column + len(reason) >= 79:
        tag, _, rest = reason.partition(",")
        reason = f"{tag},\n{' ' * (column + 1)}{rest}"
    return (prefix + reason).encode("latin-1").decode("utf-8", "replace")


class Message:
    """One message, shared by every queue it was routed to."""

    __slots__ = ("_properties", "body", "exchange", "properties_raw", "routing_key")

    def __init__(
        self, exchange: str, routing_key: str, properties_raw: bytes, body: bytes
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties_raw = properties_raw
        self.body = body
        self._properties: commands.Basic.Properties | None = None

    @property
    def properties(self) -> commands.Basic.Properties:
        """Decoded properties (cached). Raises ValueError when malformed."""
        if self._properties is None:
            self._properties = decode_properties(self.properties_raw)
        return self._properties

    @property
    def headers(self) -> dict[str, Any] | None:
        raw = self.properties_raw
        if not raw or not raw[0] & 0x20:
            return None  # fast path: the headers flag (0x2000) is not set
        headers = self.properties.headers
        return headers if isinstance(headers, dict) else None

    @property
    def persistent(self) -> bool:
        """delivery_mode == 2, read without decoding the properties when the
        flags fit one word (the headers table is skipped by its length)."""
        raw = self.properties_raw
        if self._properties is None and len(raw) >= 2 and not raw[1] & 1:
            flags = (raw[0] << 8) | raw[1]
            if not flags & 0x1000:
                return False
            offset = 2
            try:
                if flags & 0x8000:  # content-type
                    offset += 1 + raw[offset]
                if flags & 0x4000:  # content-encoding
                    offset += 1 + raw[offset]
                if flags & 0x2000:  # headers: a table with a u32 length
                    offset += 4 + int.from_bytes(raw[offset : offset + 4], "big")
                return raw[offset] == 2
            except IndexError:
                return False  # truncated properties: kept in memory only
        try:
            return self.properties.delivery_mode == 2
        except ValueError:
            return False  # unreadable properties: kept in memory only

    @property
    def expiration_ms(self) -> int | None:
        """The per-message TTL (the expiration property), or None.

        Raises:
            ValueError: RabbitMQ's reason, when the property is not a
                non-negative integer (e.g. "no_integer").
        """
        raw = self.properties_raw
        if len(raw) >= 2 and not raw[0] & 0x01 and not raw[1] & 1:
            return None  # one flags word, and the expiration flag (0x0100) unset
        value = self.properties.expiration
        if value is None:
            return None
        return parse_expiration(value)

    @property
    def priority(self) -> int:
        """The priority property (0 when absent or unreadable)."""
        try:
            return self.properties.priority or 0
        except ValueError:
            return 0

    @property
    def size(self) -> int:
        return len(self.body)


# Sender-selected distribution: headers whose arrays of longstr add routing keys.
ROUTING_HEADERS = ("CC", "BCC")
# Direct reply-to: the pseudo-queue and the prefix of the names it hands out.
REPLY_TO_QUEUE = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX = REPLY_TO_QUEUE + "."


def header_routes(headers: dict[str, Any]) -> list[str]:
    """The extra routing keys in the CC and BCC headers
    (rabbit_basic:header_routes/1: non-longstr array items are skipped).

    Raises:
        ValueError: a header is not an array, with RabbitMQ's reason text
            ('{unacceptable_type_in_header,"CC",longstr}').
    """
    from amqpy.broker.arguments import amqp_type_name

    routes: list[str] = []
    for key in ROUTING_HEADERS:
        if key not in headers:
            continue
        value = headers[key]
        if not isinstance(value, list):
            raise ValueError(
                f'{{unacceptable_type_in_header,"{key}",{amqp_type_name(value)}}}'
            )
        routes.extend(item for item in value if isinstance(item, str))
    return routes


def with_routing_key(message: Message, routing_key: str) -> Message:
    """A view of `message` routed by another key (its decoded properties
    shared), for routing by CC/BCC keys."""
    view = Message(message.exchange, routing_key, message.properties_raw, message.body)
    view._properties = message._properties
    return view
