"""A published message: routing facts, raw properties and body.

The properties stay as the bytes the publisher sent (flags and values) and are
passed through to consumers unchanged; they are decoded once, lazily, only
when a feature needs them (headers routing, delivery mode, expiration).
"""

from __future__ import annotations

from typing import Any

from pamqp import commands


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
        properties.unmarshal(flags, properties_raw[offset:])
    except Exception as error:  # any decode failure means malformed input
        raise ValueError(f"malformed content header properties: {error}") from error
    return properties


def parse_expiration(value: str | bytes) -> int:
    """An expiration property as milliseconds, as RabbitMQ parses it.

    Raises:
        ValueError: with RabbitMQ's reason ("no_integer", "{value_negative,N}").
    """
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    try:
        number = int(text, 10)
    except ValueError:
        raise ValueError("no_integer") from None
    if number < 0:
        raise ValueError(f"{{value_negative,{number}}}")
    return number


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
    def size(self) -> int:
        return len(self.body)
