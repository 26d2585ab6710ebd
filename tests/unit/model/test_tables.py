"""Content-header properties and field tables split into their encoded
values and joined again give back the same bytes, so a rewrite keeps every
value it does not change exactly as the publisher encoded it."""

from __future__ import annotations

import datetime
import struct

import pytest
from pamqp import commands
from pamqp import encode as pamqp_encode

from amqpy.model.message import join_properties, split_properties
from amqpy.model.tables import (
    array_value,
    decode_value,
    long_value,
    longstr_value,
    split_array_value,
    split_table,
    table_body,
    timestamp_value,
)

PROPERTIES = [
    commands.Basic.Properties(),
    commands.Basic.Properties(delivery_mode=2),
    commands.Basic.Properties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"a": 1, "nested": {"list": [1, "x", True]}, "ts": 5},
        delivery_mode=1,
        priority=9,
        correlation_id="c",
        reply_to="r",
        expiration="60000",
        message_id="m",
        timestamp=datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC),
        message_type="t",
        user_id="guest",
        app_id="app",
        cluster_id="",
    ),
]


@pytest.mark.parametrize("properties", PROPERTIES)
def test_properties_split_and_join_are_exact(
    properties: commands.Basic.Properties,
) -> None:
    raw = properties.marshal()
    parts = split_properties(raw)
    assert join_properties(parts) == raw
    if properties.expiration:
        assert parts["expiration"] == b"\x0560000"
        del parts["expiration"]
        assert split_properties(join_properties(parts)).keys() == parts.keys()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01",
        b"\x00\x01",  # a continuation word: no Basic property needs one
        b"\x01\x00\x05abc",  # expiration runs past the end
        b"\x10\x00\x02\x00",  # trailing bytes after delivery-mode
        b"\x20\x00\x00\x00\x00\x09\x00",  # headers longer than the data
    ],
)
def test_malformed_properties_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        split_properties(raw)


def test_tables_split_and_join_keep_every_type() -> None:
    table = (
        b"\x01dd"
        + struct.pack(">d", 0.1)
        + b"\x01ll"
        + struct.pack(">q", -5)
        + b"\x01ff"
        + struct.pack(">f", 1.5)
        + b"\x01ss"
        + struct.pack(">h", 3)
        + b"\x01t\x74\x01"
        + b"\x01xx\x00\x00\x00\x02\xff\x00"
    )
    raw = struct.pack(">I", len(table)) + table
    entries = split_table(raw)
    assert [key for key, _ in entries] == ["d", "l", "f", "s", "t", "x"]
    assert table_body(entries) == raw
    assert [decode_value(value) for _, value in entries] == [
        0.1,
        -5,
        1.5,
        3,
        True,
        bytearray(b"\xff\x00"),
    ]
    pamqp_table = pamqp_encode.field_table({"k": [1, "two", {"n": None}]})
    assert table_body(split_table(pamqp_table)) == pamqp_table


def test_new_values_use_rabbitmqs_types() -> None:
    items = [longstr_value("ключ"), long_value(2**40), timestamp_value(1_700_000_000)]
    array = array_value(items)
    assert split_array_value(array) == items
    assert decode_value(array) == [
        "ключ",
        2**40,
        datetime.datetime.fromtimestamp(1_700_000_000, datetime.UTC),
    ]


@pytest.mark.parametrize(
    "raw", [b"", b"\x00\x00\x00\x05\x01ab", b"\x00\x00\x00\x03\x01aZ", b"\x00\x00"]
)
def test_malformed_tables_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        split_table(raw)
    with pytest.raises(ValueError):
        split_array_value(b"A" + raw)
