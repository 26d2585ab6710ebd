"""frames.encode_delivery_from (a delivery from a cached template) gives the
same bytes as frames.encode_delivery and as pamqp decodes them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pamqp_frame

from amqpy.protocol import frames


def _reference(
    channel_id: int,
    tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    return frames.encode_delivery(
        channel_id,
        frames.shortstr(tag),
        delivery_tag,
        redelivered,
        frames.shortstr(exchange) + frames.shortstr(routing_key),
        properties,
        body,
        frame_max,
    )


def _from_template(
    channel_id: int,
    tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    template = frames.deliver_template(
        channel_id,
        frames.shortstr(tag),
        frames.shortstr(exchange) + frames.shortstr(routing_key),
    )
    return frames.encode_delivery_from(
        template, channel_id, delivery_tag, redelivered, properties, body, frame_max
    )


# 0: no body frame; 4088: exactly one frame of frame_max 4096; beyond: several.
@pytest.mark.parametrize("body_size", [0, 1, 16, 4087, 4088, 4089, 20000])
@pytest.mark.parametrize("redelivered", [False, True])
def test_same_bytes_as_encode_delivery(body_size: int, redelivered: bool) -> None:
    body = bytes(range(256)) * (body_size // 256) + bytes(body_size % 256)
    arguments = (7, "amq.ctag-é", 2**40 + 3, redelivered, "ex", "rk.ü")
    properties = b"\x10\x00\x02"  # delivery-mode 2
    assert _from_template(*arguments, properties, body, 4096) == _reference(
        *arguments, properties, body, 4096
    )


def test_pamqp_reads_it() -> None:
    data = _from_template(3, "c1", 5, True, "", "q", b"\x00\x00", b"hello", 131072)
    consumed, channel_id, method = pamqp_frame.unmarshal(data)
    assert channel_id == 3
    assert isinstance(method, commands.Basic.Deliver)
    assert (method.consumer_tag, method.delivery_tag, method.redelivered) == (
        "c1",
        5,
        True,
    )
    assert (method.exchange, method.routing_key) == ("", "q")
    data = data[consumed:]
    consumed, _, header = pamqp_frame.unmarshal(data)
    assert header.body_size == 5
    _, _, body = pamqp_frame.unmarshal(data[consumed:])
    assert body.value == b"hello"


@settings(max_examples=200, deadline=None)
@given(
    channel_id=st.integers(1, 65535),
    tag=st.text(max_size=40),
    delivery_tag=st.integers(1, 2**64 - 1),
    redelivered=st.booleans(),
    exchange=st.text(max_size=40),
    routing_key=st.text(max_size=40),
    properties=st.binary(max_size=40),
    body=st.binary(max_size=9000),
    frame_max=st.sampled_from([4096, 8192, 131072]),
)
def test_same_bytes_for_any_delivery(
    channel_id: int,
    tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> None:
    arguments = (channel_id, tag, delivery_tag, redelivered, exchange, routing_key)
    assert _from_template(*arguments, properties, body, frame_max) == _reference(
        *arguments, properties, body, frame_max
    )
