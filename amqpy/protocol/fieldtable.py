"""Field tables and method arguments decoded in linear time.

pamqp's decoder hands each table value a copy of the rest of the buffer
(`value[offset:]`), so a table of many tiny values costs time quadratic in
its size: one 128 KB frame holding an array of 1-byte voids took 8 s of CPU,
with every other client of the broker waiting (found by the protocol fuzzer,
docs/reliability.md). These functions read by position instead and give
exactly pamqp's results, quirks included (a value may run past the end of
its table; a long string that is not UTF-8 comes back as bytes), so nothing
else changes (tests/unit/protocol/test_fuzz_protocol.py checks that).
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import base as pamqp_base
from pamqp import decode as pamqp_decode

_U32 = struct.Struct(">I")

# Fixed-size scalars decoded here (as pamqp decodes them); the rarer decimal
# and timestamp go to pamqp, on slices of their own size.
_SCALARS = {
    b"t": struct.Struct("B"),
    b"b": struct.Struct(">b"),
    b"B": struct.Struct(">B"),
    b"s": struct.Struct(">h"),
    b"u": struct.Struct(">H"),
    b"I": struct.Struct(">l"),
    b"i": struct.Struct(">L"),
    b"l": struct.Struct(">q"),
    b"L": struct.Struct(">q"),
    b"f": struct.Struct(">f"),
    b"d": struct.Struct(">d"),
}
_PAMQP_SCALAR_SIZES = {b"D": 5, b"T": 8}
_VOIDS = (b"V", b"\x00")


def _length(buffer: bytes, position: int) -> int:
    try:
        return int(_U32.unpack(buffer[position : position + 4])[0])
    except struct.error as error:
        raise ValueError("Could not unpack length") from error


def _value(buffer: bytes, position: int) -> tuple[int, Any]:
    """pamqp.decode.embedded_value(buffer[position:]), without the copy."""
    if position >= len(buffer):
        return 0, None
    tag = buffer[position : position + 1]
    start = position + 1
    if tag in _VOIDS:
        return 1, None
    scalar = _SCALARS.get(tag)
    if scalar is not None:
        try:
            (value,) = scalar.unpack_from(buffer, start)
        except struct.error as error:
            raise ValueError(f"Could not unpack {tag!r} value") from error
        return scalar.size + 1, bool(value) if tag == b"t" else value
    size = _PAMQP_SCALAR_SIZES.get(tag)
    if size is not None:
        consumed, value = pamqp_decode.TABLE_MAPPING[tag](buffer[start : start + size])
    elif tag == b"S":
        length = _length(buffer, start)
        raw = buffer[start + 4 : start + 4 + length]
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw
        consumed = length + 4
    elif tag == b"x":
        length = _length(buffer, start)
        consumed, value = length + 4, bytearray(buffer[start + 4 : start + 4 + length])
    elif tag == b"F":
        consumed, value = _table(buffer, start)
    elif tag == b"A":
        consumed, value = _array(buffer, start)
    else:
        raise ValueError(f"Unknown type: {tag!r}")
    return consumed + 1, value


def _table(buffer: bytes, position: int) -> tuple[int, dict[str, Any]]:
    """pamqp.decode.field_table(buffer[position:]), without the copies."""
    length = _length(buffer, position)
    offset = position + 4
    end = offset + length
    if end > len(buffer):
        raise ValueError("Field table length exceeds available data")
    table: dict[str, Any] = {}
    while offset < end:
        key_length = buffer[offset]
        offset += 1
        if offset + key_length > end:
            raise ValueError("Field table key length exceeds data")
        key = buffer[offset : offset + key_length].decode("utf-8")
        offset += key_length
        consumed, table[key] = _value(buffer, offset)
        offset += consumed
    return end - position, table


def _array(buffer: bytes, position: int) -> tuple[int, list[Any]]:
    """pamqp.decode.field_array(buffer[position:]), without the copies."""
    length = _length(buffer, position)
    offset = position + 4
    end = offset + length
    if end > len(buffer):
        raise ValueError("Field array length exceeds available data")
    array: list[Any] = []
    while offset < end:
        consumed, value = _value(buffer, offset)
        offset += consumed
        array.append(value)
    return offset - position, array


def decode_table(data: bytes) -> tuple[int, dict[str, Any]]:
    """A field table (with its length prefix): (bytes consumed, table).

    Raises:
        ValueError: the bytes are not a field table (as pamqp would).
        RecursionError, OverflowError, OSError: nesting too deep, or a
            timestamp out of range (pamqp lets these through too).
    """
    return _table(data, 0)


def _by_type(data: bytes, data_type: str, bit_offset: int) -> tuple[int, Any]:
    if data_type == "table":
        return _table(data, 0)
    return pamqp_decode.by_type(data, data_type, bit_offset)


def unmarshal_method(method: pamqp_base.Frame, data: bytes) -> None:
    """`method.unmarshal(data)` (the arguments after the class and method
    ids), with tables decoded in linear time."""
    bit_offset, in_bits = 0, False
    for name in method.__slots__:
        data_type = method.amqp_type(name)
        if in_bits and (data_type != "bit" or bit_offset == 8):
            data = data[1:]
            bit_offset, in_bits = 0, False
        consumed, value = _by_type(data, data_type, bit_offset)
        if data_type == "bit":
            bit_offset += 1
            in_bits = True
            consumed = 0
        setattr(method, name, value)
        if consumed:
            data = data[consumed:]


def unmarshal_properties(
    properties: pamqp_base.BasicProperties, flags: int, data: bytes
) -> None:
    """`properties.unmarshal(flags, data)`, with the headers table decoded in
    linear time."""
    for name in properties.__slots__:
        if flags & properties.flags[name]:
            data_type = getattr(type(properties), "_" + name)
            consumed, value = _by_type(data, data_type, 0)
            setattr(properties, name, value)
            data = data[consumed:]


def value_size(buffer: bytes, position: int) -> int:
    """How many bytes the encoded value at `position` takes (type tag
    included; 0 past the end).

    Raises:
        ValueError: it is not a valid encoded value.
    """
    return _value(buffer, position)[0]


def decode_value(value: bytes) -> Any:
    """An encoded value's Python value (as pamqp decodes it)."""
    return _value(value, 0)[1]
