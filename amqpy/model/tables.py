"""Field tables rewritten without losing wire types.

A decoded table cannot say which of AMQP's integer or float types a value
came in, and a re-encode with pamqp picks its own (a double 'd' becomes a
float 'f', a long 'l' a 32-bit 'I'). Where the broker changes a table a
client gave it (dead-lettering's x-death), it splits the table into
encoded values, keeps the ones it does not change byte for byte, and
encodes the new ones with the types RabbitMQ uses.
"""

from __future__ import annotations

import struct

from amqpy.protocol.fieldtable import decode_value, value_size

__all__ = ["decode_value"]

_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")


def split_table(data: bytes) -> list[tuple[str, bytes]]:
    """A field table (with its length prefix) as (key, encoded value) pairs
    in wire order; an encoded value is its type tag and data.

    Raises:
        ValueError: the bytes are not exactly one field table.
    """
    end = 4 + int.from_bytes(data[:4], "big")
    if end != len(data):
        raise ValueError("field table length does not match its data")
    entries: list[tuple[str, bytes]] = []
    offset = 4
    while offset < end:
        key_length = data[offset]
        key = data[offset + 1 : offset + 1 + key_length].decode("utf-8")
        offset += 1 + key_length
        consumed = value_size(data, offset)
        if consumed == 0 or offset + consumed > end:
            raise ValueError("field table value runs past its table")
        entries.append((key, bytes(data[offset : offset + consumed])))
        offset += consumed
    return entries


def split_array_value(value: bytes) -> list[bytes]:
    """An encoded array value ('A', length, items) as its encoded items.

    Raises:
        ValueError: it is not exactly one array value.
    """
    if value[:1] != b"A" or 5 + int.from_bytes(value[1:5], "big") != len(value):
        raise ValueError("not an encoded field array")
    items: list[bytes] = []
    offset = 5
    while offset < len(value):
        consumed = value_size(value, offset)
        if consumed == 0 or offset + consumed > len(value):
            raise ValueError("field array item runs past its array")
        items.append(value[offset : offset + consumed])
        offset += consumed
    return items


def table_body(entries: list[tuple[str, bytes]]) -> bytes:
    """A field table (with its length prefix) of encoded values."""
    parts = []
    for key, value in entries:
        raw_key = key.encode("utf-8")
        parts.append(bytes((len(raw_key),)) + raw_key + value)
    content = b"".join(parts)
    return _U32.pack(len(content)) + content


def table_value(entries: list[tuple[str, bytes]]) -> bytes:
    return b"F" + table_body(entries)


def array_value(items: list[bytes]) -> bytes:
    content = b"".join(items)
    return b"A" + _U32.pack(len(content)) + content


def longstr_value(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return b"S" + _U32.pack(len(raw)) + raw


def long_value(number: int) -> bytes:
    return b"l" + _I64.pack(number)


def timestamp_value(seconds: int) -> bytes:
    return b"T" + _U64.pack(seconds)
