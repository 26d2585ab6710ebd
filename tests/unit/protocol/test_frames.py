"""FrameReader and the struct encoders of amqpy.protocol.frames, without sockets.

The encoders are checked by decoding their output with pamqp, an independent
implementation of the same wire format.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from amqpy.protocol.constants import FRAME_MIN_SIZE, PROTOCOL_HEADER
from amqpy.protocol.errors import ProtocolError
from amqpy.protocol.frames import (
    HEARTBEAT_FRAME,
    FrameReader,
    encode_content,
    encode_deliver,
    encode_get_ok,
    encode_method,
    encode_properties,
    encode_queue_declare_ok,
    encode_raw_method,
    encode_return,
    erlang_binary,
)
from amqpy.reply_code import ReplyCode


def frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return (
        struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes((end,))
    )


def unmarshal_all(data: bytes) -> list[tuple[int, object]]:
    """Every frame in `data` decoded by pamqp, as (channel, value)."""
    decoded = []
    while data:
        consumed, channel, value = pamqp_frame.unmarshal(data)
        decoded.append((channel, value))
        data = data[consumed:]
    return decoded


def read_all(reader: FrameReader) -> list[tuple[int, int, bytes]]:
    return list(reader.frames())


# 3-byte characters: 85 of them are exactly 255 bytes of UTF-8.
NAME_255_UTF8 = "漢" * 85
NAME_255_ASCII = "q" * 255
NAME_MIXED = "q-é漢字 😀"
NAMES = pytest.mark.parametrize(
    "name", ["", NAME_MIXED, NAME_255_UTF8], ids=["empty", "mixed", "utf8-255"]
)

STREAM = (
    frame(1, 0, encode_method(0, commands.Connection.Open())[7:-1])
    + frame(1, 1, b"\x00\x14\x00\x0a\x00")
    + HEARTBEAT_FRAME
    + frame(2, 1, struct.pack(">HHQH", 60, 0, 5, 0))
    + frame(3, 1, b"hello")
    + frame(3, 7, b"")
)
STREAM_FRAMES = [
    (1, 0, b"\x00\x0a\x00\x28\x01/\x00\x00"),
    (1, 1, b"\x00\x14\x00\x0a\x00"),
    (8, 0, b""),
    (2, 1, struct.pack(">HHQH", 60, 0, 5, 0)),
    (3, 1, b"hello"),
    (3, 7, b""),
]


class TestFrameReader:
    def test_splits_a_stream_into_frames(self) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        reader.feed(STREAM)
        assert read_all(reader) == STREAM_FRAMES
        assert reader.buffered == 0

    @pytest.mark.parametrize("split", range(1, len(STREAM)))
    def test_a_stream_split_at_any_byte_gives_the_same_frames(self, split: int) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        reader.feed(STREAM[:split])
        first = read_all(reader)
        reader.feed(STREAM[split:])
        assert first + read_all(reader) == STREAM_FRAMES
        assert reader.buffered == 0

    def test_a_stream_fed_one_byte_at_a_time(self) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        frames = []
        for byte in STREAM:
            reader.feed(bytes((byte,)))
            frames += read_all(reader)
        assert frames == STREAM_FRAMES

    @given(st.lists(st.integers(0, len(STREAM)), max_size=8))
    def test_any_chunking_gives_the_same_frames(self, cuts: list[int]) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        frames = []
        bounds = [0, *sorted(cuts), len(STREAM)]
        for start, end in itertools.pairwise(bounds):
            reader.feed(STREAM[start:end])
            frames += read_all(reader)
        assert frames == STREAM_FRAMES

    def test_an_incomplete_frame_stays_buffered(self) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        data = frame(3, 1, b"abcdef")
        reader.feed(data[:-1])
        assert read_all(reader) == []
        assert reader.buffered == len(data) - 1
        reader.feed(data[-1:])
        assert read_all(reader) == [(3, 1, b"abcdef")]

    def test_payload_of_exactly_frame_max_is_accepted(self) -> None:
        # RabbitMQ forgives the 8 bytes of framing: the payload may be frame_max.
        reader = FrameReader(FRAME_MIN_SIZE)
        reader.feed(frame(3, 1, b"x" * FRAME_MIN_SIZE))
        assert read_all(reader) == [(3, 1, b"x" * FRAME_MIN_SIZE)]

    def test_frame_above_frame_max_is_refused_from_its_header_alone(self) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        # Only the 7-byte frame header: the body never has to arrive.
        reader.feed(struct.pack(">BHI", 3, 1, FRAME_MIN_SIZE + 1))
        with pytest.raises(ProtocolError) as error:
            read_all(reader)
        assert error.value.reply_code == ReplyCode.FRAME_ERROR
        assert error.value.reply_text == (
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}"
        )
        assert (error.value.class_id, error.value.method_id) == (0, 0)

    def test_frame_too_large_text_matches_rabbitmq_at_default_frame_max(self) -> None:
        reader = FrameReader(131072)
        reader.feed(struct.pack(">BHI", 1, 1, 200000))
        with pytest.raises(ProtocolError) as error:
            read_all(reader)
        assert error.value.reply_text == (
            "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,200000,131064}"
        )

    def test_frame_max_can_be_raised_after_tuning(self) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        reader.frame_max = 131072
        reader.feed(frame(3, 1, b"x" * 100000))
        assert read_all(reader) == [(3, 1, b"x" * 100000)]

    def test_bad_frame_end_is_a_frame_error_with_the_payload(self) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        reader.feed(frame(1, 1, b"\x00\x14\x00\x0a\x00", end=0))
        with pytest.raises(ProtocolError) as error:
            read_all(reader)
        assert error.value.reply_code == ReplyCode.FRAME_ERROR
        assert error.value.reply_text == (
            "FRAME_ERROR - type 1, all octets = <<0,20,0,10,0>>: "
            "{invalid_frame_end_marker,0}"
        )

    def test_bad_frame_end_on_a_heartbeat(self) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        reader.feed(frame(8, 0, b"", end=0xCD))
        with pytest.raises(ProtocolError) as error:
            read_all(reader)
        assert error.value.reply_text == (
            "FRAME_ERROR - type 8, all octets = <<>>: {invalid_frame_end_marker,205}"
        )

    def test_frames_before_a_bad_one_are_delivered(self) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        reader.feed(HEARTBEAT_FRAME + frame(3, 1, b"ab", end=1))
        frames = reader.frames()
        assert next(frames) == (8, 0, b"")
        with pytest.raises(ProtocolError):
            next(frames)

    def test_take_protocol_header(self) -> None:
        reader = FrameReader(FRAME_MIN_SIZE)
        reader.feed(PROTOCOL_HEADER[:5])
        assert reader.take_protocol_header() is None
        reader.feed(PROTOCOL_HEADER[5:] + HEARTBEAT_FRAME)
        assert reader.take_protocol_header() == PROTOCOL_HEADER
        assert read_all(reader) == [(8, 0, b"")]


class TestErlangBinary:
    @pytest.mark.parametrize(
        ("data", "text"),
        [
            (b"", "<<>>"),
            (b"abc", '<<"abc">>'),
            (b'a"b\\', '<<"a\\"b\\\\">>'),
            (b"\x00\x14", "<<0,20>>"),
            (b"ab\x00", "<<97,98,0>>"),
        ],
    )
    def test_prints_like_erlang(self, data: bytes, text: str) -> None:
        assert erlang_binary(data) == text


class TestEncoders:
    def test_heartbeat_frame(self) -> None:
        assert bytes.fromhex("08000000000000ce") == HEARTBEAT_FRAME

    @NAMES
    def test_deliver_round_trips_through_pamqp(self, name: str) -> None:
        # pamqp decodes a longlong as signed: stay below 2**63.
        data = encode_deliver(9, name, 2**63 - 1, True, NAME_255_ASCII, name)
        [(channel, deliver)] = unmarshal_all(data)
        assert channel == 9
        assert isinstance(deliver, commands.Basic.Deliver)
        assert deliver.consumer_tag == name
        assert deliver.delivery_tag == 2**63 - 1
        assert deliver.redelivered is True
        assert deliver.exchange == NAME_255_ASCII
        assert deliver.routing_key == name

    def test_deliver_matches_pamqp_encoding(self) -> None:
        method = commands.Basic.Deliver(
            consumer_tag="ctag", delivery_tag=7, redelivered=False,
            exchange="amq.direct", routing_key="rk",
        )  # fmt: skip
        assert encode_deliver(3, "ctag", 7, False, "amq.direct", "rk") == (
            pamqp_frame.marshal(method, 3)
        )

    @NAMES
    def test_get_ok_round_trips_through_pamqp(self, name: str) -> None:
        data = encode_get_ok(1, 42, False, name, name, 4294967295)
        [(channel, get_ok)] = unmarshal_all(data)
        assert channel == 1
        assert isinstance(get_ok, commands.Basic.GetOk)
        assert (get_ok.delivery_tag, get_ok.redelivered) == (42, False)
        assert (get_ok.exchange, get_ok.routing_key) == (name, name)
        assert get_ok.message_count == 4294967295

    @NAMES
    def test_return_round_trips_through_pamqp(self, name: str) -> None:
        data = encode_return(2, 312, "NO_ROUTE", name, name)
        [(channel, returned)] = unmarshal_all(data)
        assert channel == 2
        assert isinstance(returned, commands.Basic.Return)
        assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")
        assert (returned.exchange, returned.routing_key) == (name, name)

    @NAMES
    def test_queue_declare_ok_round_trips_through_pamqp(self, name: str) -> None:
        data = encode_queue_declare_ok(65535, name, 3, 1)
        [(channel, declare_ok)] = unmarshal_all(data)
        assert channel == 65535
        assert isinstance(declare_ok, commands.Queue.DeclareOk)
        assert declare_ok.queue == name
        assert (declare_ok.message_count, declare_ok.consumer_count) == (3, 1)

    @pytest.mark.parametrize(
        "encode",
        [
            lambda name: encode_deliver(1, name, 1, False, "", ""),
            lambda name: encode_get_ok(1, 1, False, name, "", 0),
            lambda name: encode_return(1, 312, "NO_ROUTE", "", name),
            lambda name: encode_queue_declare_ok(1, name, 0, 0),
        ],
    )
    def test_names_above_255_bytes_are_refused(
        self, encode: Callable[[str], bytes]
    ) -> None:
        with pytest.raises(ValueError, match="255 bytes"):
            encode("漢" * 86)  # 258 bytes

    def test_raw_method_frame(self) -> None:
        assert encode_raw_method(1, b"\x00\x1e\x00\x0b\x00\x01") == bytes.fromhex(
            "01000100000006001e000b0001ce"
        )

    def test_content_without_body_is_a_header_frame_only(self) -> None:
        properties = commands.Basic.Properties(content_type="text/plain")
        data = encode_content(4, encode_properties(properties), b"", 131072)
        [(channel, header)] = unmarshal_all(data)
        assert channel == 4
        assert isinstance(header, pamqp_header.ContentHeader)
        assert header.body_size == 0
        assert header.properties.content_type == "text/plain"

    def test_content_properties_pass_through_unchanged(self) -> None:
        properties = commands.Basic.Properties(
            headers={"k": 1, "nested": {"a": "b"}}, delivery_mode=2, priority=3,
            correlation_id="c", reply_to="r", expiration="1000", message_id="m",
            message_type="t", user_id="guest", app_id="a",
        )  # fmt: skip
        raw = encode_properties(properties)
        data = encode_content(1, raw, b"body", 131072)
        [(_, header), (_, body)] = unmarshal_all(data)
        assert header.properties == properties
        assert header.body_size == 4
        assert body.value == b"body"
        assert data[19 : 19 + len(raw)] == raw

    @pytest.mark.parametrize(
        ("frame_max", "size", "chunks"),
        [
            (4096, 4088, [4088]),
            (4096, 4089, [4088, 1]),
            (4096, 3 * 4088, [4088, 4088, 4088]),
            (4096, 10000, [4088, 4088, 1824]),
            (131072, 131064, [131064]),
            (131072, 131065, [131064, 1]),
            (131072, 1, [1]),
        ],
    )
    def test_body_is_split_so_no_frame_exceeds_frame_max(
        self, frame_max: int, size: int, chunks: list[int]
    ) -> None:
        body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        data = encode_content(5, b"\x00\x00", body, frame_max)
        decoded = unmarshal_all(data)
        header = decoded[0][1]
        assert isinstance(header, pamqp_header.ContentHeader)
        assert header.body_size == size
        bodies = [value for _, value in decoded[1:]]
        assert all(isinstance(value, pamqp_body.ContentBody) for value in bodies)
        assert [len(value.value) for value in bodies] == chunks
        assert b"".join(value.value for value in bodies) == body
        assert {channel for channel, _ in decoded} == {5}
        # And the frames themselves (payload + 8) all fit in frame_max.
        reader = FrameReader(frame_max - 8)
        reader.feed(data)
        assert len(read_all(reader)) == 1 + len(chunks)

    @settings(max_examples=50)
    @given(
        body=st.binary(max_size=20000),
        frame_max=st.integers(FRAME_MIN_SIZE, 9000),
        channel=st.integers(1, 65535),
    )
    def test_content_round_trips_for_any_body(
        self, body: bytes, frame_max: int, channel: int
    ) -> None:
        data = encode_content(channel, b"\x00\x00", body, frame_max)
        decoded = unmarshal_all(data)
        assert decoded[0][1].body_size == len(body)
        assert b"".join(value.value for _, value in decoded[1:]) == body
        assert all(len(value.value) <= frame_max - 8 for _, value in decoded[1:])
        assert all(len(value.value) > 0 for _, value in decoded[1:])


@pytest.mark.parametrize("body_size", [0, 10, 4088, 4089, 20000])
def test_encode_delivery_is_deliver_then_content(body_size: int) -> None:
    from amqpy.protocol import frames

    body = bytes(range(256)) * (body_size // 256) + bytes(body_size % 256)
    properties = b"\x10\x00\x02"  # delivery-mode 2
    expected = frames.encode_deliver(
        3, "ctag-é", 42, True, "ex", "rk.ü"
    ) + frames.encode_content(3, properties, body, 4096)
    assert (
        frames.encode_delivery(
            3,
            frames.shortstr("ctag-é"),
            42,
            True,
            frames.shortstr("ex") + frames.shortstr("rk.ü"),
            properties,
            body,
            4096,
        )
        == expected
    )
