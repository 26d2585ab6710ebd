"""Fuzzing the sans-IO protocol layer (issue 8): hostile byte streams fed to
`ServerConnection`, driven the way `amqpy.server.connection` drives it.

Every example opens with a protocol header, goes some way through the
handshake, then sends a mix of well-formed and broken frames (every method in
pamqp's set with fuzzed arguments, content out of order, oversize frames,
heartbeats on channels, unknown frame types, raw garbage), cut into random
chunks. The properties:

- `next_event` returns events or raises `ProtocolError` (a
  `ChannelProtocolError` for one channel); nothing else ever escapes, and the
  calls the server makes in answer (start_tune, accept_open, close,
  close_channel) never raise either;
- every byte queued for the peer parses as a frame, and each step's frames are
  exactly the ones its event calls for;
- once the server has sent connection.close, only close-ok handling follows;
  once the connection is closed, input produces nothing at all;
- a channel error closes that channel only: the connection and the other
  channels are untouched.

Below those: the bugs it led to (input buffered past a framing error, a
half-megabyte error text) and the linear-time field-table decoder checked
against pamqp's results (docs/reliability.md, "Fuzzing").

The search is seeded (AMQPY_FUZZ_SEED, default 8) so CI runs are
reproducible; AMQPY_FUZZ_EXAMPLES raises the number of examples for a longer
run. `--hypothesis-show-statistics` prints how many inputs were tried and
how they ended.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, event, given, seed, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import decode as pamqp_decode
from pamqp import frame as pamqp_frame

from amqpy.protocol import events
from amqpy.protocol.connection import ConnectionState, ServerConnection
from amqpy.protocol.constants import FRAME_MIN_SIZE, PROTOCOL_HEADER
from amqpy.protocol.errors import (
    ChannelProtocolError,
    ProtocolError,
    ProtocolHeaderMismatchError,
)
from amqpy.protocol.fieldtable import decode_table, unmarshal_method
from amqpy.reply_code import HARD_ERROR_CODES, ReplyCode

FUZZ_SEED = int(os.environ.get("AMQPY_FUZZ_SEED", "8"))
FUZZ_EXAMPLES = int(os.environ.get("AMQPY_FUZZ_EXAMPLES", "0"))
MAX_MESSAGE_SIZE = 64  # small, so the 406 path is hit often
SERVER_FRAME_MAX = 131072
SERVER_CHANNEL_MAX = 16


def fuzz_settings(examples: int) -> settings:
    """CI budget unless AMQPY_FUZZ_EXAMPLES asks for a longer run; no example
    database, so a run depends on its seed only."""
    return settings(
        max_examples=FUZZ_EXAMPLES or examples,
        deadline=None,
        database=None,
        # The explain phase re-runs a failure hundreds of times: too slow.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- raw encoders (no validation: the point is to send what pamqp would not) --


def frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return (
        struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes((end,))
    )


def method_frame(channel: int, method: Any) -> bytes:
    return pamqp_frame.marshal(method, channel)


def shortstr(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


# -- strategies ----------------------------------------------------------------

# Names the broker gives meaning to, beside arbitrary text and bytes.
NAMES = [
    "",
    "q",
    "x",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "amq.match",
    "amq.gen-fuzz",
    "amq.rabbitmq.reply-to",
    "amq.rabbitmq.reply-to.abc",
    "direct",
    "fanout",
    "topic",
    "headers",
    "x-delayed-message",
    "classic",
    "quorum",
    "stream",
    "lazy",
    "/",
    "PLAIN",
    "AMQPLAIN",
    "EXTERNAL",
    "en_US",
    "#",
    "*.a.#",
]
KEYS = [
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-priority",
    "x-match",
    "x-delayed-type",
    "x-delay",
    "x-cancel-on-ha-failover",
    "alternate-exchange",
    "capabilities",
    "LOGIN",
    "PASSWORD",
    "CC",
    "BCC",
]
SHORTSTR_RAW = st.one_of(
    st.sampled_from(NAMES).map(str.encode),
    st.text(max_size=12).map(str.encode),
    st.binary(max_size=12),  # invalid UTF-8 too
    st.just(b"a" * 255),
)
# A tagged field value as on the wire; arrays and tables nest.
SCALAR_VALUES = st.one_of(
    st.booleans().map(lambda v: b"t" + bytes((v,))),
    st.integers(-128, 127).map(lambda v: b"b" + struct.pack(">b", v)),
    st.integers(0, 255).map(lambda v: b"B" + bytes((v,))),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: b"s" + struct.pack(">h", v)),
    st.integers(0, 2**16 - 1).map(lambda v: b"u" + struct.pack(">H", v)),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: b"I" + struct.pack(">i", v)),
    st.integers(0, 2**32 - 1).map(lambda v: b"i" + struct.pack(">I", v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: b"l" + struct.pack(">q", v)),
    st.floats(width=32).map(lambda v: b"f" + struct.pack(">f", v)),
    st.floats().map(lambda v: b"d" + struct.pack(">d", v)),
    st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1)).map(
        lambda v: b"D" + struct.pack(">BI", *v)
    ),
    st.one_of(st.sampled_from(NAMES).map(str.encode), st.binary(max_size=10)).map(
        lambda v: b"S" + longstr(v)
    ),
    st.integers(0, 2**64 - 1).map(lambda v: b"T" + struct.pack(">Q", v)),
    st.binary(max_size=8).map(lambda v: b"x" + longstr(v)),
    st.sampled_from([b"V", b"\x00"]),
    st.binary(min_size=1, max_size=6),  # an unknown tag, or a truncated value
)


def table_bytes(entries: list[tuple[bytes, bytes]]) -> bytes:
    return longstr(b"".join(shortstr(key) + value for key, value in entries))


TABLE_KEYS = st.one_of(st.sampled_from(KEYS).map(str.encode), SHORTSTR_RAW)
FIELD_VALUES = st.recursive(
    SCALAR_VALUES,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda v: b"A" + longstr(b"".join(v))),
        st.lists(st.tuples(TABLE_KEYS, children), max_size=3).map(
            lambda v: b"F" + table_bytes(v)
        ),
    ),
    max_leaves=6,
)
TABLES = st.one_of(
    st.lists(st.tuples(TABLE_KEYS, FIELD_VALUES), max_size=4).map(table_bytes),
    # A length that lies about what follows.
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=12)).map(
        lambda v: struct.pack(">I", v[0]) + v[1]
    ),
)
FIELDS = {
    "octet": st.integers(0, 255).map(lambda v: bytes((v,))),
    "short": st.one_of(st.sampled_from([0, 1, 2, 3, 65535]), st.integers(0, 65535)).map(
        lambda v: struct.pack(">H", v)
    ),
    "long": st.one_of(
        st.sampled_from([0, 1, 4096, 2**32 - 1]), st.integers(0, 2**32 - 1)
    ).map(lambda v: struct.pack(">I", v)),
    "longlong": st.one_of(
        st.sampled_from([0, 1, 2, 2**64 - 1]), st.integers(0, 2**64 - 1)
    ).map(lambda v: struct.pack(">Q", v)),
    "timestamp": st.integers(0, 2**64 - 1).map(lambda v: struct.pack(">Q", v)),
    "shortstr": SHORTSTR_RAW.map(shortstr),
    "longstr": st.one_of(st.just(b"\x00guest\x00guest"), st.binary(max_size=24)).map(
        longstr
    ),
    "table": TABLES,
}
METHOD_CLASSES = sorted(commands.INDEX_MAPPING.values(), key=lambda cls: cls.index)
# What a client sends on an open channel, but for basic.publish (content
# follows it) and the channel class: a well-behaved stream may use these.
SERVER_ONLY = {
    "Channel.OpenOk",
    "Channel.FlowOk",
    "Basic.Return",
    "Basic.Deliver",
    "Basic.GetOk",
    "Basic.GetEmpty",
}
CLIENT_CHANNEL_METHODS = [
    cls
    for cls in METHOD_CLASSES
    if cls.index >> 16 != 10
    and cls.name not in SERVER_ONLY
    and not cls.name.startswith("Channel.")
    and cls.name != "Basic.Publish"
    and not cls.name.endswith("Ok")
]


@st.composite
def method_payloads(draw: st.DrawFn, client_only: bool = False) -> bytes:
    """A method of the 0-9-1 set (pamqp's), arguments fuzzed by type, bits
    packed as on the wire; unless `client_only`, any method, sometimes cut
    short or with bytes left over."""
    classes = CLIENT_CHANNEL_METHODS if client_only else METHOD_CLASSES
    method_class = draw(st.sampled_from(classes))
    parts = [struct.pack(">I", method_class.index)]
    bits = bit_count = 0
    for name in method_class.__slots__:
        kind = method_class.amqp_type(name)
        if kind == "bit":
            bits |= draw(st.booleans()) << bit_count
            bit_count += 1
            if bit_count == 8:
                parts.append(bytes((bits,)))
                bits = bit_count = 0
            continue
        if bit_count:
            parts.append(bytes((bits,)))
            bits = bit_count = 0
        parts.append(draw(FIELDS[kind]))
    if bit_count:
        parts.append(bytes((bits,)))
    payload = b"".join(parts)
    if client_only:
        return payload
    mutation = draw(st.sampled_from(["none"] * 6 + ["cut", "extend"]))
    if mutation == "cut":
        payload = payload[: draw(st.integers(0, len(payload)))]
    elif mutation == "extend":
        payload += draw(st.binary(min_size=1, max_size=8))
    return payload


# Channel numbers: mostly the few the prelude opens, sometimes any.
CHANNELS = st.one_of(
    st.sampled_from([0, 1, 1, 1, 2, 2, 3]),
    st.sampled_from([4, 65535]),
    st.integers(0, 65535),
)
CLOSE = commands.Connection.Close(
    reply_code=200, reply_text="bye", class_id=0, method_id=0
)
CHANNEL_CLOSE = commands.Channel.Close(
    reply_code=200, reply_text="", class_id=0, method_id=0
)


def publish(channel: int, routing_key: str = "q") -> bytes:
    return method_frame(
        channel, commands.Basic.Publish(exchange="", routing_key=routing_key)
    )


def content_header(
    channel: int, body_size: int, class_id: int = 60, properties: bytes = b"\x00\x00"
) -> bytes:
    return frame(2, channel, struct.pack(">HHQ", class_id, 0, body_size) + properties)


PROPERTIES = st.one_of(
    st.just(b"\x00\x00"),
    st.just(
        commands.Basic.Properties(
            delivery_mode=2, headers={"a": 1}, expiration="100"
        ).marshal()
    ),
    # Flags with values that may or may not follow (decoded only by the broker).
    st.tuples(st.integers(0, 65535), st.binary(max_size=16)).map(
        lambda v: struct.pack(">H", v[0]) + v[1]
    ),
)


@st.composite
def contents(draw: st.DrawFn, broken: bool = True) -> bytes:
    """A basic.publish with its header and bodies; if `broken`, maybe with
    sizes that disagree, a frame dropped, two swapped, one repeated."""
    channel = draw(st.sampled_from([1, 1, 2, 3]))
    # Small bodies, and some around MAX_MESSAGE_SIZE (406 above it).
    body = draw(st.one_of(st.binary(max_size=16), st.binary(min_size=56, max_size=72)))
    declared = len(body)
    class_id = 60
    if broken:
        declared = draw(
            st.one_of(st.just(len(body)), st.integers(0, 100), st.just(2**64 - 1))
        )
        class_id = draw(st.sampled_from([60, 60, 60, 10, 0]))
    frames = [
        publish(channel),
        content_header(channel, declared, class_id, draw(PROPERTIES)),
    ]
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    start = 0
    for cut in [*cuts, len(body)]:
        if cut > start:
            frames.append(frame(3, channel, body[start:cut]))
            start = cut
    if declared and not body:
        frames.append(frame(3, channel, b""))  # an empty body frame
    mutation = "none"
    if broken:
        mutation = draw(st.sampled_from(["none"] * 4 + ["drop", "swap", "repeat"]))
    if mutation != "none" and len(frames) > 1:
        index = draw(st.integers(0, len(frames) - 2))
        if mutation == "drop":
            del frames[index]
        elif mutation == "swap":
            frames[index], frames[index + 1] = frames[index + 1], frames[index]
        else:
            frames.insert(index, frames[index])
    return b"".join(frames)


HANDSHAKE_METHODS = st.sampled_from(
    [
        commands.Connection.StartOk(
            client_properties={},
            mechanism="PLAIN",
            response="\x00guest\x00guest",
            locale="en_US",
        ),
        commands.Connection.TuneOk(channel_max=0, frame_max=131072, heartbeat=0),
        commands.Connection.TuneOk(channel_max=16, frame_max=4096, heartbeat=60),
        commands.Connection.Open(virtual_host="/"),
        commands.Connection.Close(
            reply_code=200, reply_text="", class_id=0, method_id=0
        ),
        commands.Connection.CloseOk(),
        commands.Connection.UpdateSecret(new_secret="s", reason="r"),
        commands.Connection.Blocked(reason="x"),
    ]
).map(lambda value: method_frame(0, value))

OPEN_CHANNELS = st.sampled_from([1, 1, 1, 2, 2, 3])
# Frames a client may send on the channels the prelude opens.
WELL_BEHAVED = st.one_of(
    st.tuples(OPEN_CHANNELS, method_payloads(client_only=True)).map(
        lambda v: frame(1, v[0], v[1])
    ),
    contents(broken=False),
    contents(broken=False),
    st.just(frame(8, 0, b"")),
    OPEN_CHANNELS.map(lambda channel: frame(1, channel, b"\x00\x1e\x00\x0a\x01/\x00")),
)
HOSTILE = st.one_of(
    # Any method with fuzzed arguments, on any channel.
    st.tuples(CHANNELS, method_payloads()).map(lambda v: frame(1, v[0], v[1])),
    st.tuples(CHANNELS, method_payloads()).map(lambda v: frame(1, v[0], v[1])),
    contents(),
    contents(),
    # Well-formed channel life-cycle methods, in any order.
    st.tuples(
        CHANNELS,
        st.sampled_from(
            [
                commands.Channel.Open(),
                CHANNEL_CLOSE,
                commands.Channel.CloseOk(),
                commands.Basic.Qos(prefetch_count=1),
                commands.Basic.Ack(delivery_tag=1),
                commands.Confirm.Select(),
                commands.Channel.OpenOk(),
            ]
        ),
    ).map(lambda v: method_frame(*v)),
    HANDSHAKE_METHODS,
    # access.request (class 30, which pamqp lacks).
    CHANNELS.map(lambda channel: frame(1, channel, b"\x00\x1e\x00\x0a\x01/\x00")),
    # Content frames on their own.
    st.tuples(CHANNELS, st.integers(0, 200), st.sampled_from([60, 10])).map(
        lambda v: content_header(v[0], v[1], v[2])
    ),
    st.tuples(CHANNELS, st.binary(max_size=20)).map(lambda v: frame(3, *v)),
    # Heartbeats, on channel 0 and elsewhere, with and without a payload.
    st.tuples(CHANNELS, st.sampled_from([b"", b"", b"x"])).map(lambda v: frame(8, *v)),
    # Frames of any type, with a good or bad frame-end octet.
    st.tuples(
        st.integers(0, 255),
        CHANNELS,
        st.binary(max_size=24),
        st.sampled_from([0xCE, 0xCE, 0xCE, 0x00, 0xCF]),
    ).map(lambda v: frame(*v)),
    # A frame header announcing more than frame_max.
    st.tuples(
        st.sampled_from([1, 2, 3, 8]),
        CHANNELS,
        st.integers(SERVER_FRAME_MAX - 7, 2**32 - 1),
    ).map(lambda v: struct.pack(">BHI", *v) + b"\x00" * 8),
    # Raw garbage: it desynchronises the framing.
    st.binary(min_size=1, max_size=12),
)
# Streams from well-behaved to hostile: hostile frames end most examples
# early, and the states deep in a session need long well-behaved runs.
STREAMS = st.one_of(
    st.lists(WELL_BEHAVED, max_size=16),
    st.lists(st.one_of(WELL_BEHAVED, WELL_BEHAVED, WELL_BEHAVED, HOSTILE), max_size=16),
    st.lists(st.one_of(WELL_BEHAVED, HOSTILE), min_size=1, max_size=12),
    st.lists(HOSTILE, min_size=1, max_size=8),
)


@st.composite
def handshakes(draw: st.DrawFn) -> tuple[bytes, int]:
    """The valid prefix of a session: the header, then as far through the
    handshake as drawn (0 = header only ... 3 = open, then channels)."""
    header = draw(st.sampled_from([PROTOCOL_HEADER] * 9 + [b"AMQP\x01\x01\x00\x09"]))
    depth = draw(st.sampled_from([0, 1, 2, 3, 3, 3, 3, 3, 3, 3]))
    parts = [header]
    if depth >= 1:
        mechanism, response = draw(
            st.sampled_from(
                [
                    ("PLAIN", b"\x00guest\x00guest"),
                    (
                        "AMQPLAIN",
                        table_bytes([(b"LOGIN", b"Sguest"), (b"PASSWORD", b"Sx")])[4:],
                    ),
                ]
            )
        )
        start_ok = commands.Connection.StartOk(
            client_properties={"capabilities": {"publisher_confirms": True}},
            mechanism=mechanism,
            response=response.decode(),
            locale="en_US",
        )
        parts.append(method_frame(0, start_ok))
    if depth >= 2:
        frame_max = draw(st.sampled_from([FRAME_MIN_SIZE, SERVER_FRAME_MAX]))
        channel_max = draw(st.sampled_from([SERVER_CHANNEL_MAX] * 3 + [3]))
        parts.append(
            method_frame(
                0,
                commands.Connection.TuneOk(
                    channel_max=channel_max, frame_max=frame_max, heartbeat=0
                ),
            )
        )
    if depth >= 3:
        parts.append(method_frame(0, commands.Connection.Open(virtual_host="/")))
        channels = draw(st.sampled_from([[1, 2, 3]] * 4 + [[], [1], [1, 2]]))
        parts += [
            method_frame(channel, commands.Channel.Open()) for channel in channels
        ]
    return b"".join(parts), depth


# -- the driver and its checks -------------------------------------------------

SERVER_METHOD_NAMES = {
    "Connection.Start",
    "Connection.Tune",
    "Connection.OpenOk",
    "Connection.Close",
    "Connection.CloseOk",
    "Connection.UpdateSecretOk",
    "Channel.OpenOk",
    "Channel.Close",
    "Channel.CloseOk",
    "Access.RequestOk",
    "Basic.QosOk",  # what the driver itself answers
}
AWAITING_HEADER = ConnectionState.AWAIT_PROTOCOL_HEADER
HANDSHAKE_STATES = (
    ConnectionState.AWAIT_START_OK,
    ConnectionState.AWAIT_TUNE_OK,
    ConnectionState.AWAIT_OPEN,
)


def parse_output(data: bytes, frame_max: int) -> Iterator[tuple[int, str, Any]]:
    """Every frame the server queued, as (channel, method name, method);
    fails the example on anything that is not a well-formed method frame."""
    position = 0
    while position < len(data):
        assert len(data) - position >= 8, (
            f"truncated frame in output: {data[position:]!r}"
        )
        frame_type, channel, size = struct.unpack_from(">BHI", data, position)
        end = position + 7 + size
        assert frame_type == 1, f"server sent a frame of type {frame_type}"
        assert size + 8 <= frame_max, "server frame above frame_max"
        assert end < len(data) and data[end] == 0xCE, "bad frame end in output"
        payload = data[position + 7 : end]
        if payload == b"\x00\x1e\x00\x0b\x00\x01":  # access.request-ok, ticket 1
            yield channel, "Access.RequestOk", None
        else:
            consumed, decoded_channel, value = pamqp_frame.unmarshal(
                data[position : end + 1]
            )
            assert (consumed, decoded_channel) == (end + 1 - position, channel)
            yield channel, value.name, value
        position = end + 1


class Driver:
    """Plays the server's part (amqpy.server.connection) and checks each step.

    `reactions` picks what the server does where it has a choice: refuse a
    login or a vhost, fail a method with a channel or connection error.
    """

    def __init__(self, connection: ServerConnection, reactions: list[int]) -> None:
        self.connection = connection
        self._reactions = iter(reactions)
        self.closing = False  # we sent connection.close
        self.gone = False  # the socket would be closed now
        self.open: set[int] = set()  # channels opened and not yet closed
        self.closing_channels: set[int] = set()  # we sent channel.close
        self.outcome = "still open"
        self.started = False  # connection.start sent

    def reaction(self) -> int:
        return next(self._reactions, 0)

    def feed(self, chunk: bytes) -> None:
        connection = self.connection
        if connection.state is ConnectionState.CLOSED:
            # Closed is final: more input changes nothing and sends nothing.
            connection.receive_data(chunk)
            assert connection.next_event() is None
            assert connection.data_to_send() == b""
            return
        if self.gone:
            return
        connection.receive_data(chunk)
        self.pump()

    def pump(self) -> None:
        connection = self.connection
        while not self.gone and connection.state is not ConnectionState.CLOSED:
            try:
                item = connection.next_event()
            except ChannelProtocolError as error:
                self.check_step(None)
                self.on_channel_error(error)
                continue
            except ProtocolError as error:
                self.check_step(None)
                self.on_connection_error(error)
                return
            self.check_step(item)
            if item is None:
                return
            self.react(item)

    # -- what the server does ----------------------------------------------------

    def react(self, item: events.Event) -> None:
        connection = self.connection
        if self.closing:
            assert isinstance(
                item, events.HeartbeatReceived | events.ConnectionCloseOkReceived
            ), f"{item} after connection.close"
        if isinstance(item, events.StartOkReceived):
            choice = self.reaction() % 16
            if choice == 14:  # login refused, authentication_failure_close
                self.close(403, "ACCESS_REFUSED - Login was refused")
            elif choice == 15:  # login refused, no close frame
                self.gone = True
                self.outcome = "login refused"
            else:
                connection.start_tune()
                self.expect([(0, "Connection.Tune")])
        elif isinstance(item, events.TuneOkReceived):
            assert connection.state is ConnectionState.AWAIT_OPEN
            assert 0 < item.frame_max <= SERVER_FRAME_MAX
        elif isinstance(item, events.OpenReceived):
            if self.reaction() % 16 == 15:
                self.close(530, "NOT_ALLOWED - vhost x not found", 10, 40)
            else:
                connection.accept_open()
                self.expect([(0, "Connection.OpenOk")])
        elif isinstance(item, events.MethodReceived):
            channel = item.channel_id
            assert channel in self.open and channel not in self.closing_channels
            # Methods only a server sends, the connection class and the
            # channel's life cycle never reach the broker.
            name = item.method.name
            assert name not in SERVER_ONLY and item.method.index >> 16 != 10
            assert name not in ("Channel.Open", "Channel.Close")
            assert not name.endswith("Ok") or name == "Channel.CloseOk"
            choice = self.reaction() % 20
            if choice == 17:  # a soft error from the broker
                self.close_channel(channel, 404, "NOT_FOUND - no queue 'q'")
            elif choice == 18:  # a hard error from the broker
                self.close(
                    504, "CHANNEL_ERROR - fuzz", *divmod(item.method.index, 1 << 16)
                )
            elif choice == 19:  # some reply
                connection.send_method(channel, commands.Basic.QosOk())
                self.expect([(channel, "Basic.QosOk")])
        elif isinstance(item, events.ContentReceived):
            assert item.channel_id in self.open
            assert item.channel_id not in self.closing_channels
            assert len(item.body) <= MAX_MESSAGE_SIZE
        elif isinstance(
            item, events.ConnectionCloseReceived | events.ConnectionCloseOkReceived
        ):
            assert connection.state is ConnectionState.CLOSED
            self.outcome = "closed by peer" if not self.closing else self.outcome

    def on_channel_error(self, error: ChannelProtocolError) -> None:
        connection = self.connection
        channel = error.channel_id
        assert not self.closing
        assert connection.state is ConnectionState.OPEN
        assert channel in self.open and channel not in self.closing_channels
        assert error.reply_code not in HARD_ERROR_CODES
        others = {
            other: connection.is_channel_open(other) for other in self.open - {channel}
        }
        self.close_channel(
            channel, error.reply_code, error.reply_text, error.class_id, error.method_id
        )
        # Only that channel: the connection and its other channels go on.
        assert connection.state is ConnectionState.OPEN
        assert {other: connection.is_channel_open(other) for other in others} == others
        event(f"channel closed {int(error.reply_code)}")

    def on_connection_error(self, error: ProtocolError) -> None:
        assert error.reply_code in HARD_ERROR_CODES, error
        assert error.reply_text.startswith(f"{error.reply_code.name} - ")
        if self.closing:
            return  # the server ignores input while its close is under way
        if error.silent:
            # RabbitMQ drops the socket for errors before the connection is
            # tuned; never once it is open.
            assert self.connection.state in HANDSHAKE_STATES, error
            self.gone = True
            self.outcome = "dropped in the handshake"
            return
        self.close(error.reply_code, error.reply_text, error.class_id, error.method_id)
        self.outcome = f"connection closed {int(error.reply_code)}"

    def close(
        self, code: int, text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        self.connection.close(code, text, class_id, method_id)
        self.expect([(0, "Connection.Close")])
        self.closing = True
        self.open.clear()
        self.closing_channels.clear()
        self.outcome = f"connection closed {code}"

    def close_channel(
        self, channel: int, code: int, text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        self.connection.close_channel(channel, code, text, class_id, method_id)
        self.expect([(channel, "Channel.Close")])
        self.closing_channels.add(channel)
        assert not self.connection.is_channel_open(channel)

    # -- what the server sends ---------------------------------------------------

    def frames(self) -> list[tuple[int, str, Any]]:
        sent = list(parse_output(self.connection.data_to_send(), self.frame_max))
        for _channel, name, value in sent:
            assert name in SERVER_METHOD_NAMES, name
            if name.endswith("Close"):
                assert len(value.reply_text.encode()) <= 255
        return sent

    @property
    def frame_max(self) -> int:
        return self.connection.frame_max or SERVER_FRAME_MAX

    def expect(self, expected: list[tuple[int, str]]) -> None:
        """What a call of ours queued: exactly these frames."""
        assert [(channel, name) for channel, name, _ in self.frames()] == expected

    def check_step(self, item: events.Event | None) -> None:
        """The frames one next_event call queued: replies sent without an
        event first, then exactly what the event calls for."""
        sent = [(channel, name) for channel, name, _ in self.frames()]
        if not self.started and self.connection.state is not AWAITING_HEADER:
            # The protocol header is answered first, and with nothing else.
            assert sent[:1] == [(0, "Connection.Start")], sent
            sent.pop(0)
            self.started = True
        while sent and self._silent_reply(*sent[0]):
            sent.pop(0)
        if self.closing:
            # After connection.close: at most the close-ok to the peer's close.
            assert sent in ([], [(0, "Connection.CloseOk")]), sent
            return
        if isinstance(item, events.ChannelOpened):
            assert item.channel_id not in self.open
            assert item.channel_id > 0
            assert sent == [(item.channel_id, "Channel.OpenOk")]
            self.open.add(item.channel_id)
            assert len(self.open) <= self.connection.channel_max
        elif isinstance(item, events.ChannelClosed):
            channel = item.channel_id
            assert channel in self.open
            if channel in self.closing_channels:
                assert sent == []  # the peer's close-ok to our close
            else:
                assert sent == [(channel, "Channel.CloseOk")]  # the peer closed
            self.open.discard(channel)
            self.closing_channels.discard(channel)
        elif isinstance(item, events.ConnectionCloseReceived):
            assert sent == [(0, "Connection.CloseOk")]
        else:
            assert sent == [], f"{sent} for {item}"

    def _silent_reply(self, channel: int, name: str) -> bool:
        """Frames answered inside the protocol layer, without an event."""
        if self.closing:
            return False
        if name == "Access.RequestOk":
            return channel in self.open and channel not in self.closing_channels
        if name == "Connection.UpdateSecretOk":
            return channel == 0 and self.connection.state is ConnectionState.OPEN
        if name == "Channel.CloseOk":  # the peer closed while we were closing
            return channel in self.closing_channels
        return False


def new_connection() -> ServerConnection:
    return ServerConnection(
        server_properties={"product": "amqpy"},
        channel_max=SERVER_CHANNEL_MAX,
        frame_max=SERVER_FRAME_MAX,
        heartbeat=60,
        max_message_size=MAX_MESSAGE_SIZE,
    )


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    position = 0
    index = 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        yield data[position : position + size]
        position += size
        index += 1


@seed(FUZZ_SEED)
@fuzz_settings(500)
@given(
    handshake=handshakes(),
    pieces=STREAMS,
    sizes=st.lists(
        st.one_of(st.integers(1, 16), st.integers(17, 4096)), min_size=1, max_size=8
    ),
    reactions=st.lists(st.integers(0, 255), max_size=12),
)
def test_any_byte_stream_gives_events_protocol_errors_and_well_formed_frames(
    handshake: tuple[bytes, int],
    pieces: list[bytes],
    sizes: list[int],
    reactions: list[int],
) -> None:
    prefix, depth = handshake
    connection = new_connection()
    driver = Driver(connection, reactions)
    stream = prefix + b"".join(pieces)
    for chunk in chunks(stream, sizes):
        driver.feed(chunk)
        if driver.gone:
            break
    event(driver.outcome)
    if not driver.gone and connection.state is ConnectionState.OPEN:
        # Whatever happened, the connection can still be closed cleanly.
        in_frame = connection._reader.buffered  # a frame cut short
        driver.close(320, "CONNECTION_FORCED - shutdown")
        driver.feed(method_frame(0, commands.Connection.CloseOk()))
        if not in_frame:
            assert connection.state is ConnectionState.CLOSED
    event(f"handshake depth {depth}")


@seed(FUZZ_SEED)
@fuzz_settings(200)
@given(header=st.binary(min_size=8, max_size=8), rest=st.binary(max_size=64))
def test_a_wrong_protocol_header_gets_ours_and_nothing_else(
    header: bytes, rest: bytes
) -> None:
    connection = new_connection()
    connection.receive_data(header + rest)
    if header in (PROTOCOL_HEADER, b"AMQP\x01\x01\x00\x09"):
        return
    with pytest.raises(ProtocolHeaderMismatchError):
        connection.next_event()
    assert connection.data_to_send() == PROTOCOL_HEADER
    assert connection.state is ConnectionState.CLOSED
    connection.receive_data(rest)
    assert connection.next_event() is None
    assert connection.data_to_send() == b""


# -- framing errors leave nothing to grow ---------------------------------------


def opened_connection() -> ServerConnection:
    connection = new_connection()
    driver = Driver(connection, [])
    driver.feed(
        PROTOCOL_HEADER
        + method_frame(
            0,
            commands.Connection.StartOk(
                client_properties={},
                mechanism="PLAIN",
                response="\x00g\x00g",
                locale="en_US",
            ),
        )
        + method_frame(
            0,
            commands.Connection.TuneOk(
                channel_max=16, frame_max=SERVER_FRAME_MAX, heartbeat=0
            ),
        )
        + method_frame(0, commands.Connection.Open(virtual_host="/"))
    )
    assert connection.state is ConnectionState.OPEN
    return connection


@pytest.mark.parametrize(
    "bad_frame",
    [
        frame(1, 1, b"x" * 100, end=0),  # a bad frame-end octet
        struct.pack(">BHI", 1, 0, SERVER_FRAME_MAX + 1),  # above frame_max
    ],
    ids=["bad frame end", "frame too large"],
)
def test_after_a_framing_error_more_input_is_not_buffered(bad_frame: bytes) -> None:
    # The stream cannot be parsed past a framing error: what follows must be
    # dropped, or a peer could fill our memory during the close timeout.
    connection = opened_connection()
    connection.receive_data(bad_frame)
    with pytest.raises(ProtocolError) as caught:
        connection.next_event()
    assert caught.value.reply_code == ReplyCode.FRAME_ERROR
    connection.close(caught.value.reply_code, caught.value.reply_text)
    connection.data_to_send()
    for _ in range(64):
        connection.receive_data(b"\x01" * 65536)
        with contextlib.suppress(ProtocolError):
            assert connection.next_event() is None
        assert connection.data_to_send() == b""
    assert connection._reader.buffered < SERVER_FRAME_MAX


def test_a_huge_frame_error_text_stays_small() -> None:
    # The text goes to the log: a frame of frame_max bytes must not make a
    # log line of half a megabyte (the close frame carries 255 bytes anyway).
    connection = opened_connection()
    connection.receive_data(frame(1, 1, bytes(SERVER_FRAME_MAX - 8), end=0))
    with pytest.raises(ProtocolError) as caught:
        connection.next_event()
    assert len(caught.value.reply_text) < 2000
    assert caught.value.reply_text.startswith(
        "FRAME_ERROR - type 1, all octets = <<0,0,0,"
    )
    assert caught.value.reply_text.endswith("...>>: {invalid_frame_end_marker,0}")


# -- the linear field-table decoder ------------------------------------------


@seed(FUZZ_SEED)
@fuzz_settings(250)
@given(
    data=st.one_of(
        st.lists(st.tuples(TABLE_KEYS, FIELD_VALUES), max_size=6).map(table_bytes),
        TABLES,
        st.binary(max_size=40),
    ),
    tail=st.binary(max_size=8),
)
def test_table_decoder_agrees_with_pamqp(data: bytes, tail: bytes) -> None:
    """amqpy decodes tables in linear time; on every input it must give what
    pamqp gives (values, bytes consumed) or fail where pamqp fails."""
    expected: Any
    try:
        expected = pamqp_decode.field_table(data + tail)
    except Exception as error:  # noqa: BLE001 - any failure must be matched
        expected = type(error)
    try:
        got: Any = decode_table(data + tail)
    except Exception as error:  # noqa: BLE001
        got = type(error)
    if isinstance(expected, type) or isinstance(got, type):
        # Both fail (the exception types may differ: we only promise "fails").
        assert isinstance(expected, type) and isinstance(got, type), (expected, got)
    else:
        assert repr(got) == repr(expected)


@seed(FUZZ_SEED)
@fuzz_settings(250)
@given(payload=method_payloads())
def test_method_decoder_agrees_with_pamqp(payload: bytes) -> None:
    assume(len(payload) >= 4)  # a method id to look up
    method_class = commands.INDEX_MAPPING[struct.unpack_from(">I", payload)[0]]
    expected: Any = method_class()
    try:
        expected.unmarshal(payload[4:])
    except Exception as error:  # noqa: BLE001 - any failure must be matched
        expected = type(error)
    got: Any = method_class()
    try:
        unmarshal_method(got, payload[4:])
    except Exception as error:  # noqa: BLE001
        got = type(error)
    if isinstance(expected, type) or isinstance(got, type):
        assert isinstance(expected, type) and isinstance(got, type), (expected, got)
    else:
        assert repr(dict(got)) == repr(dict(expected))


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (b"A" + longstr(b"V" * 120_000), 120_000),  # an array of voids
        (b"F" + table_bytes([(b"%d" % i, b"V") for i in range(16_000)])[0:], 16_000),
    ],
    ids=["array", "table"],
)
def test_a_frame_full_of_tiny_table_values_decodes_in_linear_time(
    value: bytes, count: int
) -> None:
    # pamqp copies the rest of the buffer for every value: 8 s of CPU for one
    # 128 KB frame, with every other client of the broker waiting.
    payload = struct.pack(">HH", 50, 10) + b"\x00\x00" + shortstr(b"q") + b"\x00"
    payload += table_bytes([(b"k", value)])
    method = commands.Queue.Declare()
    started = time.perf_counter()
    unmarshal_method(method, payload[4:])
    assert time.perf_counter() - started < 0.5
    assert method.queue == "q"
    assert len(method.arguments["k"]) == count
