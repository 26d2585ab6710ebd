"""ServerConnection, the sans-IO state machine of one connection.

Bytes go in, events and queued frames come out; no sockets. The reply codes
and texts are the ones RabbitMQ 3.10 sends (/work/oracle/results.md), except
where a comment names a deliberate difference.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import base as pamqp_base
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from amqpy.protocol import events
from amqpy.protocol.connection import (
    ConnectionState,
    ServerConnection,
    method_name,
)
from amqpy.protocol.constants import PROTOCOL_HEADER
from amqpy.protocol.errors import (
    ChannelProtocolError,
    ProtocolError,
    ProtocolHeaderMismatchError,
)
from amqpy.reply_code import ReplyCode

SERVER_PROPERTIES = {"product": "amqpy", "capabilities": {"basic.nack": True}}
LIMITS = {"channel_max": 2047, "frame_max": 131072, "heartbeat": 60}
PLAIN_RESPONSE = "\x00guest\x00guest"


# -- helpers -------------------------------------------------------------------


def new_connection(**overrides: Any) -> ServerConnection:
    options: dict[str, Any] = {
        "server_properties": SERVER_PROPERTIES,
        **LIMITS,
        "max_message_size": 134217728,
        **overrides,
    }
    return ServerConnection(**options)


def method(channel: int, value: pamqp_base.Frame) -> bytes:
    return pamqp_frame.marshal(value, channel)


def raw_frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return (
        struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes((end,))
    )


def header(channel: int, body_size: int, class_id: int = 60) -> bytes:
    payload = struct.pack(">HHQ", class_id, 0, body_size) + b"\x00\x00"
    return raw_frame(2, channel, payload)


def body(channel: int, data: bytes) -> bytes:
    return raw_frame(3, channel, data)


def publish(
    channel: int, exchange: str = "", routing_key: str = "q", **flags: bool
) -> bytes:
    return method(
        channel,
        commands.Basic.Publish(exchange=exchange, routing_key=routing_key, **flags),
    )


HEARTBEAT = raw_frame(8, 0, b"")


def feed(connection: ServerConnection, data: bytes) -> list[events.Event]:
    """Every event the data produces (errors propagate)."""
    connection.receive_data(data)
    produced = []
    while (event := connection.next_event()) is not None:
        produced.append(event)
    return produced


def sent(connection: ServerConnection) -> list[tuple[int, Any]]:
    """The frames queued for the peer, decoded by pamqp, as (channel, value)."""
    data = connection.data_to_send()
    frames = []
    while data:
        consumed, channel, value = pamqp_frame.unmarshal(data)
        frames.append((channel, value))
        data = data[consumed:]
    return frames


def error_of(connection: ServerConnection, data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        feed(connection, data)
    return caught.value


def close_args(error: ProtocolError) -> tuple[int, str, int, int]:
    return error.reply_code, error.reply_text, error.class_id, error.method_id


def start_ok(mechanism: str = "PLAIN", response: str = PLAIN_RESPONSE) -> bytes:
    return method(
        0,
        commands.Connection.StartOk(
            client_properties={"product": "test", "capabilities": {"a": True}},
            mechanism=mechanism,
            response=response,
            locale="en_US",
        ),
    )


def tune_ok(
    channel_max: int = 2047, frame_max: int = 131072, heartbeat: int = 0
) -> bytes:
    return method(
        0,
        commands.Connection.TuneOk(
            channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat
        ),
    )


def to_await_tune_ok(connection: ServerConnection) -> ServerConnection:
    feed(connection, PROTOCOL_HEADER + start_ok())
    connection.start_tune()
    connection.data_to_send()
    return connection


def to_await_open(connection: ServerConnection, **tune: int) -> ServerConnection:
    to_await_tune_ok(connection)
    feed(connection, tune_ok(**tune))
    return connection


def opened(*channels: int, **overrides: Any) -> ServerConnection:
    """A connection past connection.open-ok with these channels open."""
    tune = {key: overrides.pop(key) for key in ("channel_max",) if key in overrides}
    connection = to_await_open(new_connection(**overrides), **tune)
    feed(connection, method(0, commands.Connection.Open(virtual_host="/")))
    connection.accept_open()
    for channel in channels:
        feed(connection, method(channel, commands.Channel.Open()))
    connection.data_to_send()
    return connection


# -- protocol header -----------------------------------------------------------


class TestProtocolHeader:
    def test_header_gets_connection_start(self) -> None:
        connection = new_connection()
        assert feed(connection, PROTOCOL_HEADER) == []
        [(channel, start)] = sent(connection)
        assert channel == 0
        assert isinstance(start, commands.Connection.Start)
        assert (start.version_major, start.version_minor) == (0, 9)
        assert start.server_properties == SERVER_PROPERTIES
        assert start.mechanisms == "PLAIN AMQPLAIN"
        assert start.locales == "en_US"
        assert connection.state is ConnectionState.AWAIT_START_OK

    def test_old_0_9_1_header_is_accepted(self) -> None:
        connection = new_connection()
        feed(connection, b"AMQP\x01\x01\x00\x09")
        [(_, start)] = sent(connection)
        assert isinstance(start, commands.Connection.Start)
        assert (start.version_major, start.version_minor) == (0, 9)

    def test_partial_header_waits_for_more(self) -> None:
        connection = new_connection()
        assert feed(connection, PROTOCOL_HEADER[:7]) == []
        assert connection.data_to_send() == b""
        assert connection.state is ConnectionState.AWAIT_PROTOCOL_HEADER

    @pytest.mark.parametrize(
        "wrong",
        [
            b"AMQP\x00\x00\x09\x00",
            b"AMQP\x00\x00\x08\x00",
            b"AMQP\x00\x00\x09\x02",
            b"AMQP\x00\x01\x00\x00",
            b"AMQP\x03\x01\x00\x00",
            b"HTTP/1.1",
            b"GET / HTTP/1.1\r\n\r\n",
            b"XXXXXXXX",
        ],
    )
    def test_wrong_header_gets_ours_back(self, wrong: bytes) -> None:
        connection = new_connection()
        connection.receive_data(wrong)
        with pytest.raises(ProtocolHeaderMismatchError):
            connection.next_event()
        assert connection.data_to_send() == b"AMQP\x00\x00\x09\x01"
        assert connection.state is ConnectionState.CLOSED
        assert connection.next_event() is None


# -- handshake -----------------------------------------------------------------


class TestHandshake:
    def test_full_handshake(self) -> None:
        connection = new_connection()
        feed(connection, PROTOCOL_HEADER)
        connection.data_to_send()

        [event] = feed(connection, start_ok(response=PLAIN_RESPONSE))
        assert event == events.StartOkReceived(
            {"product": "test", "capabilities": {"a": True}},
            "PLAIN",
            b"\x00guest\x00guest",
            "en_US",
        )
        connection.start_tune()
        [(_, tune)] = sent(connection)
        assert isinstance(tune, commands.Connection.Tune)
        assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)
        assert connection.state is ConnectionState.AWAIT_TUNE_OK

        [event] = feed(connection, tune_ok(channel_max=10, frame_max=4096, heartbeat=5))
        assert event == events.TuneOkReceived(10, 4096, 5)
        assert (connection.channel_max, connection.frame_max) == (10, 4096)
        assert connection.heartbeat == 5
        assert connection.state is ConnectionState.AWAIT_OPEN
        assert connection.data_to_send() == b""

        [event] = feed(
            connection, method(0, commands.Connection.Open(virtual_host="vh"))
        )
        assert event == events.OpenReceived("vh")
        assert not connection.is_open
        connection.accept_open()
        [(_, open_ok)] = sent(connection)
        assert isinstance(open_ok, commands.Connection.OpenOk)
        assert connection.is_open

    def test_handshake_fed_one_byte_at_a_time(self) -> None:
        connection = new_connection()
        produced: list[events.Event] = []
        for byte in PROTOCOL_HEADER + start_ok():
            produced += feed(connection, bytes((byte,)))
        assert [type(event) for event in produced] == [events.StartOkReceived]

    def test_tuned_frame_max_applies_to_incoming_frames(self) -> None:
        connection = to_await_open(new_connection(), frame_max=4096)
        feed(connection, method(0, commands.Connection.Open()))
        connection.accept_open()
        error = error_of(connection, struct.pack(">BHI", 3, 1, 4097))
        assert error.reply_text == (
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}"
        )

    def test_frame_max_is_the_spec_minimum_before_tuning(self) -> None:
        connection = new_connection()
        feed(connection, PROTOCOL_HEADER)
        error = error_of(connection, struct.pack(">BHI", 1, 0, 4097))
        assert error.reply_code == ReplyCode.FRAME_ERROR

    @pytest.mark.parametrize("heartbeat", [0, 61, 600, 65535])
    def test_any_client_heartbeat_is_accepted(self, heartbeat: int) -> None:
        connection = to_await_open(new_connection(), heartbeat=heartbeat)
        assert connection.heartbeat == heartbeat

    @pytest.mark.parametrize(("channel_max", "frame_max"), [(1, 4096), (2047, 131072)])
    def test_limits_at_or_below_the_proposal_are_accepted(
        self, channel_max: int, frame_max: int
    ) -> None:
        connection = to_await_open(
            new_connection(), channel_max=channel_max, frame_max=frame_max
        )
        assert connection.state is ConnectionState.AWAIT_OPEN

    @pytest.mark.parametrize(
        ("tune", "text"),
        [
            (
                {"frame_max": 131073},
                "negotiated frame_max = 131073 is higher than the maximum allowed "
                "value (131072)",
            ),
            (
                {"frame_max": 1000000},
                "negotiated frame_max = 1000000 is higher than the maximum allowed "
                "value (131072)",
            ),
            (
                {"frame_max": 4095},
                "negotiated frame_max = 4095 is lower than the minimum allowed "
                "value (4096)",
            ),
            (
                {"frame_max": 0},
                "negotiated frame_max = 0 is higher than the maximum allowed "
                "value (131072)",
            ),
            (
                {"channel_max": 0},
                "negotiated channel_max = 0 (no limit) is higher than the maximum "
                "allowed value (2047)",
            ),
            (
                {"channel_max": 2048},
                "negotiated channel_max = 2048 is higher than the maximum allowed "
                "value (2047)",
            ),
            (
                {"channel_max": 65535},
                "negotiated channel_max = 65535 is higher than the maximum allowed "
                "value (2047)",
            ),
        ],
    )
    def test_tune_ok_above_the_proposal_is_a_silent_close(
        self, tune: dict[str, int], text: str
    ) -> None:
        connection = to_await_tune_ok(new_connection())
        error = error_of(connection, tune_ok(**tune))
        assert error.reply_code == ReplyCode.NOT_ALLOWED
        assert error.text == text
        # RabbitMQ sends no close frame: the caller just drops the socket.
        assert error.silent

    def test_heartbeat_before_start_ok_is_ignored(self) -> None:
        connection = new_connection()
        feed(connection, PROTOCOL_HEADER)
        assert feed(connection, HEARTBEAT) == [events.HeartbeatReceived()]
        assert connection.state is ConnectionState.AWAIT_START_OK

    def test_channel_open_instead_of_start_ok_is_a_silent_close(self) -> None:
        connection = new_connection()
        feed(connection, PROTOCOL_HEADER)
        assert error_of(connection, method(1, commands.Channel.Open())).silent

    def test_connection_open_instead_of_tune_ok_is_a_silent_close(self) -> None:
        connection = to_await_tune_ok(new_connection())
        error = error_of(connection, method(0, commands.Connection.Open()))
        assert error.silent
        assert error.reply_code == ReplyCode.COMMAND_INVALID

    def test_second_start_ok_is_a_silent_close(self) -> None:
        connection = to_await_tune_ok(new_connection())
        assert error_of(connection, start_ok()).silent

    def test_channel_open_before_connection_open(self) -> None:
        connection = to_await_open(new_connection())
        error = error_of(connection, method(1, commands.Channel.Open()))
        assert not error.silent
        assert close_args(error) == (
            505,
            "UNEXPECTED_FRAME - type 1, all octets = <<0,20,0,10,1,48>>",
            0,
            0,
        )

    def test_second_connection_open(self) -> None:
        connection = opened()
        error = error_of(connection, method(0, commands.Connection.Open()))
        assert close_args(error) == (
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            10,
            40,
        )

    def test_client_close_during_handshake(self) -> None:
        connection = to_await_tune_ok(new_connection())
        produced = feed(
            connection,
            method(
                0,
                commands.Connection.Close(
                    reply_code=200, reply_text="bye", class_id=0, method_id=0
                ),
            ),
        )
        assert produced == [events.ConnectionCloseReceived(200, "bye")]
        [(_, close_ok)] = sent(connection)
        assert isinstance(close_ok, commands.Connection.CloseOk)
        assert connection.state is ConnectionState.CLOSED

    def test_caller_steps_out_of_order_are_refused(self) -> None:
        connection = new_connection()
        with pytest.raises(RuntimeError):
            connection.start_tune()
        with pytest.raises(RuntimeError):
            connection.accept_open()
        to_await_open(connection)
        with pytest.raises(RuntimeError):
            connection.start_tune()


# -- the connection after open ----------------------------------------------


UNEXPECTED_ON_CHANNEL_0 = [
    commands.Channel.Open(),
    commands.Queue.Declare(queue="q"),
    commands.Connection.TuneOk(channel_max=1, frame_max=4096, heartbeat=0),
    commands.Connection.CloseOk(),
    commands.Connection.Blocked(reason="x"),
    commands.Connection.SecureOk(response="x"),
]


class TestConnectionLevel:
    @pytest.mark.parametrize(
        "value", UNEXPECTED_ON_CHANNEL_0, ids=lambda value: value.name
    )
    def test_non_connection_methods_on_channel_0(self, value: pamqp_base.Frame) -> None:
        error = error_of(opened(), method(0, value))
        assert close_args(error) == (
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            value.index >> 16,
            value.index & 0xFFFF,
        )

    def test_connection_open_on_channel_1(self) -> None:
        error = error_of(opened(1), method(1, commands.Connection.Open()))
        assert close_args(error) == (
            503,
            "COMMAND_INVALID - unimplemented method",
            10,
            40,
        )

    def test_heartbeat_is_an_event(self) -> None:
        assert feed(opened(), HEARTBEAT) == [events.HeartbeatReceived()]

    @pytest.mark.parametrize("channel", [1, 2], ids=["open", "unopened"])
    def test_heartbeat_on_a_channel(self, channel: int) -> None:
        error = error_of(opened(1), raw_frame(8, channel, b""))
        assert close_args(error) == (
            505,
            "UNEXPECTED_FRAME - type 8, all octets = <<>>",
            0,
            0,
        )

    def test_heartbeat_with_a_payload(self) -> None:
        error = error_of(opened(), raw_frame(8, 0, b"abc"))
        assert close_args(error) == (
            501,
            'FRAME_ERROR - type 8, all octets = <<"abc">>: unknown_frame',
            0,
            0,
        )

    @pytest.mark.parametrize("frame_type", [0, 4, 5, 9, 255])
    def test_unknown_frame_type(self, frame_type: int) -> None:
        error = error_of(opened(1), raw_frame(frame_type, 1, b"abc"))
        assert close_args(error) == (
            501,
            f'FRAME_ERROR - type {frame_type}, all octets = <<"abc">>: unknown_frame',
            0,
            0,
        )

    def test_update_secret_is_answered(self) -> None:
        connection = opened()
        update = commands.Connection.UpdateSecret(new_secret="s", reason="r")
        assert feed(connection, method(0, update)) == []
        [(channel, reply)] = sent(connection)
        assert channel == 0
        assert isinstance(reply, commands.Connection.UpdateSecretOk)

    def test_client_close(self) -> None:
        connection = opened(1)
        close = commands.Connection.Close(
            reply_code=320, reply_text="going", class_id=0, method_id=0
        )
        assert feed(connection, method(0, close)) == [
            events.ConnectionCloseReceived(320, "going")
        ]
        assert connection.data_to_send() == bytes.fromhex("01000000000004000a0033ce")
        assert connection.state is ConnectionState.CLOSED
        # Nothing after the close is looked at.
        assert feed(connection, method(1, commands.Channel.Open())) == []

    def test_server_close_ignores_everything_until_close_ok(self) -> None:
        connection = opened(1)
        connection.close(320, "CONNECTION_FORCED - shutdown")
        [(channel, close)] = sent(connection)
        assert channel == 0
        assert (close.reply_code, close.reply_text) == (
            320,
            "CONNECTION_FORCED - shutdown",
        )
        assert connection.state is ConnectionState.CLOSING
        assert not connection.is_open
        assert connection.open_channel_ids == []
        ignored = (
            method(1, commands.Queue.Declare(queue="q"))
            + publish(1)
            + header(1, 3)
            + body(1, b"abc")
            + method(2, commands.Channel.Open())
            + method(0, commands.Connection.Open())
            + HEARTBEAT
        )
        assert feed(connection, ignored) == [events.HeartbeatReceived()]
        assert connection.data_to_send() == b""
        produced = feed(connection, method(0, commands.Connection.CloseOk()))
        assert produced == [events.ConnectionCloseOkReceived()]
        assert connection.state is ConnectionState.CLOSED

    def test_client_close_crossing_server_close_gets_close_ok(self) -> None:
        connection = opened()
        connection.close(541, "INTERNAL_ERROR")
        connection.data_to_send()
        close = commands.Connection.Close(
            reply_code=200, reply_text="bye", class_id=0, method_id=0
        )
        assert feed(connection, method(0, close)) == [
            events.ConnectionCloseOkReceived()
        ]
        assert connection.data_to_send() == bytes.fromhex("01000000000004000a0033ce")

    def test_close_twice_sends_one_close(self) -> None:
        connection = opened()
        connection.close(320, "a")
        connection.close(320, "b")
        assert len(sent(connection)) == 1

    def test_close_before_the_header_sends_nothing(self) -> None:
        connection = new_connection()
        connection.close(320, "CONNECTION_FORCED - shutdown")
        assert connection.data_to_send() == b""
        assert connection.state is ConnectionState.CLOSED

    @pytest.mark.parametrize("text", ["x" * 300, "é" * 200], ids=["ascii", "utf8"])
    def test_close_text_is_cut_to_a_short_string(self, text: str) -> None:
        connection = opened(1)
        connection.close_channel(1, 406, text)
        connection.close(541, text)
        for _, close in sent(connection):
            assert len(close.reply_text.encode()) <= 255
            assert close.reply_text.endswith("...")
            assert text.startswith(close.reply_text[:-3])
            assert len(close.reply_text.encode()) >= 250


# -- channels ----------------------------------------------------------------


SERVER_ONLY = [
    commands.Channel.OpenOk(),
    commands.Channel.FlowOk(active=True),
    commands.Exchange.DeclareOk(),
    commands.Exchange.DeleteOk(),
    commands.Exchange.BindOk(),
    commands.Exchange.UnbindOk(),
    commands.Queue.DeclareOk(queue="q", message_count=0, consumer_count=0),
    commands.Queue.BindOk(),
    commands.Queue.UnbindOk(),
    commands.Queue.PurgeOk(message_count=0),
    commands.Queue.DeleteOk(message_count=0),
    commands.Basic.QosOk(),
    commands.Basic.ConsumeOk(consumer_tag="c"),
    commands.Basic.CancelOk(consumer_tag="c"),
    commands.Basic.GetEmpty(),
    commands.Basic.RecoverOk(),
    commands.Confirm.SelectOk(),
    commands.Tx.SelectOk(),
    commands.Tx.CommitOk(),
    commands.Tx.RollbackOk(),
]


class TestChannels:
    def test_open(self) -> None:
        connection = opened()
        assert feed(connection, method(1, commands.Channel.Open())) == [
            events.ChannelOpened(1)
        ]
        [(channel, open_ok)] = sent(connection)
        assert channel == 1
        assert isinstance(open_ok, commands.Channel.OpenOk)
        assert connection.is_channel_open(1)
        assert connection.open_channel_ids == [1]

    def test_channel_numbers_above_channel_max_may_be_opened(self) -> None:
        # channel_max bounds how many channels are open, not their numbers.
        connection = opened(channel_max=2)
        assert feed(connection, method(3000, commands.Channel.Open())) == [
            events.ChannelOpened(3000)
        ]
        assert feed(connection, method(65535, commands.Channel.Open())) == [
            events.ChannelOpened(65535)
        ]

    def test_opening_more_than_channel_max_channels(self) -> None:
        connection = opened(1, 2, channel_max=2)
        error = error_of(connection, method(3, commands.Channel.Open()))
        assert close_args(error) == (
            530,
            "NOT_ALLOWED - number of channels opened (2) has reached the "
            "negotiated channel_max (2)",
            0,
            0,
        )

    def test_a_closed_channel_frees_its_slot(self) -> None:
        connection = opened(1, 2, channel_max=2)
        feed(
            connection,
            method(2, commands.Channel.Close(reply_code=200, class_id=0, method_id=0)),
        )
        assert feed(connection, method(3, commands.Channel.Open())) == [
            events.ChannelOpened(3)
        ]

    def test_second_open(self) -> None:
        error = error_of(opened(1), method(1, commands.Channel.Open()))
        assert close_args(error) == (
            504,
            "CHANNEL_ERROR - second 'channel.open' seen",
            20,
            10,
        )

    @pytest.mark.parametrize(
        "value",
        [
            commands.Queue.Declare(queue="q"),
            commands.Channel.Close(reply_code=200, class_id=0, method_id=0),
            commands.Channel.CloseOk(),
            commands.Basic.Publish(),
            commands.Basic.Ack(delivery_tag=1),
        ],
        ids=lambda value: value.name,
    )
    def test_method_on_an_unopened_channel(self, value: pamqp_base.Frame) -> None:
        error = error_of(opened(1), method(5, value))
        assert close_args(error) == (
            504,
            "CHANNEL_ERROR - expected 'channel.open'",
            value.index >> 16,
            value.index & 0xFFFF,
        )

    def test_method_is_an_event(self) -> None:
        connection = opened(1)
        # queue.declare of "é漢" (pamqp would refuse to encode the name).
        name = "é漢".encode()
        arguments = b"\x00\x00" + bytes((len(name),)) + name + b"\x00" + b"\x00" * 4
        [event] = feed(connection, raw_frame(1, 1, b"\x00\x32\x00\x0a" + arguments))
        assert isinstance(event, events.MethodReceived)
        assert event.channel_id == 1
        assert isinstance(event.method, commands.Queue.Declare)
        assert event.method.queue == "é漢"

    def test_basic_ack_fast_path(self) -> None:
        connection = opened(1)
        produced = feed(
            connection,
            method(1, commands.Basic.Ack(delivery_tag=2**40, multiple=True))
            + method(1, commands.Basic.Ack(delivery_tag=7)),
        )
        assert [event.channel_id for event in produced] == [1, 1]
        acks = [event.method for event in produced]
        assert all(isinstance(ack, commands.Basic.Ack) for ack in acks)
        assert [(ack.delivery_tag, ack.multiple) for ack in acks] == [
            (2**40, True),
            (7, False),
        ]

    def test_access_request_gets_ticket_1(self) -> None:
        connection = opened(1)
        # access.request (30,10): realm "/data", exclusive/passive/active/write/read.
        assert feed(connection, raw_frame(1, 1, b"\x00\x1e\x00\x0a\x05/data\x1f")) == []
        assert connection.data_to_send() == bytes.fromhex(
            "01000100000006001e000b0001ce"
        )

    def test_client_close_then_method(self) -> None:
        connection = opened(1)
        assert feed(
            connection,
            method(1, commands.Channel.Close(reply_code=200, class_id=0, method_id=0)),
        ) == [events.ChannelClosed(1)]
        [(channel, close_ok)] = sent(connection)
        assert channel == 1
        assert isinstance(close_ok, commands.Channel.CloseOk)
        assert not connection.is_channel_open(1)
        error = error_of(connection, method(1, commands.Queue.Declare(queue="q")))
        assert close_args(error) == (
            504,
            "CHANNEL_ERROR - expected 'channel.open'",
            50,
            10,
        )

    def test_close_and_reopen_pipelined(self) -> None:
        connection = opened(1)
        produced = feed(
            connection,
            method(1, commands.Channel.Close(reply_code=200, class_id=0, method_id=0))
            + method(1, commands.Channel.Open()),
        )
        assert produced == [events.ChannelClosed(1), events.ChannelOpened(1)]
        replies = [type(value) for _, value in sent(connection)]
        assert replies == [commands.Channel.CloseOk, commands.Channel.OpenOk]

    def test_server_close_ignores_the_channel_until_close_ok(self) -> None:
        connection = opened(1, 2)
        connection.close_channel(
            1, 404, "NOT_FOUND - no queue 'q' in vhost '/'", 50, 10
        )
        [(channel, close)] = sent(connection)
        assert channel == 1
        assert isinstance(close, commands.Channel.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (404, 50, 10)
        assert not connection.is_channel_open(1)
        ignored = (
            method(1, commands.Queue.Declare(queue="q"))
            + publish(1)
            + header(1, 3)
            + body(1, b"abc")
            + method(1, commands.Basic.Ack(delivery_tag=1))
        )
        assert feed(connection, ignored) == []
        # Other channels carry on meanwhile.
        [event] = feed(connection, method(2, commands.Basic.Qos(prefetch_count=1)))
        assert isinstance(event, events.MethodReceived)
        assert connection.data_to_send() == b""
        assert feed(connection, method(1, commands.Channel.CloseOk())) == [
            events.ChannelClosed(1)
        ]
        assert feed(connection, method(1, commands.Channel.Open())) == [
            events.ChannelOpened(1)
        ]

    def test_client_close_crossing_server_close_gets_close_ok(self) -> None:
        connection = opened(1)
        connection.close_channel(1, 406, "PRECONDITION_FAILED - x")
        connection.data_to_send()
        assert (
            feed(
                connection,
                method(
                    1, commands.Channel.Close(reply_code=200, class_id=0, method_id=0)
                ),
            )
            == []
        )
        [(_, close_ok)] = sent(connection)
        assert isinstance(close_ok, commands.Channel.CloseOk)
        # Still waiting for the client's close-ok to our close.
        assert feed(connection, method(1, commands.Channel.CloseOk())) == [
            events.ChannelClosed(1)
        ]

    def test_open_on_a_closing_channel(self) -> None:
        connection = opened(1)
        connection.close_channel(1, 406, "PRECONDITION_FAILED - x")
        error = error_of(connection, method(1, commands.Channel.Open()))
        assert close_args(error) == (
            504,
            "CHANNEL_ERROR - second 'channel.open' seen",
            20,
            10,
        )

    def test_close_channel_twice_or_unknown_sends_one_close(self) -> None:
        connection = opened(1)
        connection.close_channel(1, 406, "a")
        connection.close_channel(1, 406, "b")
        connection.close_channel(9, 406, "c")
        assert len(sent(connection)) == 1

    def test_unknown_method(self) -> None:
        # RabbitMQ drops the socket; amqpy says why (a deliberate difference).
        error = error_of(opened(1), raw_frame(1, 1, b"\x00\x63\x00\x01"))
        assert close_args(error) == (
            540,
            "NOT_IMPLEMENTED - unknown method: class 99, method 1",
            99,
            1,
        )

    def test_unknown_method_on_channel_0(self) -> None:
        error = error_of(opened(), raw_frame(1, 0, b"\x00\x0a\x00\x63"))
        assert error.reply_code == ReplyCode.NOT_IMPLEMENTED
        assert (error.class_id, error.method_id) == (10, 99)

    @pytest.mark.parametrize("value", SERVER_ONLY, ids=lambda value: value.name)
    def test_server_only_method(self, value: pamqp_base.Frame) -> None:
        error = error_of(opened(1), method(1, value))
        assert close_args(error) == (
            503,
            "COMMAND_INVALID - unimplemented method",
            value.index >> 16,
            value.index & 0xFFFF,
        )

    @pytest.mark.xfail(
        strict=True,
        reason="RabbitMQ reads the content of a client basic.deliver/get-ok/return "
        "before its 503; amqpy answers 503 at the method",
    )
    def test_server_only_content_method_is_refused_after_its_content(self) -> None:
        connection = opened(1)
        deliver = commands.Basic.Deliver(
            consumer_tag="c", delivery_tag=1, exchange="", routing_key="q"
        )
        # Before the content arrives, the content rules apply.
        error = error_of(
            connection, method(1, deliver) + method(1, commands.Basic.Qos())
        )
        assert close_args(error) == (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, "
            "got non content header frame instead",
            60,
            40,
        )

    def test_truncated_method_arguments(self) -> None:
        error = error_of(opened(1), raw_frame(1, 1, b"\x00\x32\x00\x0a"))
        assert close_args(error) == (501, "FRAME_ERROR - cannot decode <<>>", 50, 10)

    def test_method_payload_shorter_than_its_ids(self) -> None:
        error = error_of(opened(1), raw_frame(1, 1, b"\x00\x32"))
        assert close_args(error) == (
            501,
            "FRAME_ERROR - type 1, all octets = <<0,50>>: unknown_frame",
            0,
            0,
        )

    def test_invalid_utf8_in_a_short_string(self) -> None:
        payload = b"\x00\x32\x00\x0a\x00\x00\x02\xff\xfe\x00\x00\x00\x00\x00"
        error = error_of(opened(1), raw_frame(1, 1, payload))
        assert close_args(error) == (
            501,
            "FRAME_ERROR - Malformed UTF-8 in shortstr",
            0,
            0,
        )

    def test_method_name(self) -> None:
        assert method_name(50, 10) == "queue.declare"
        assert method_name(99, 1) == "99/1"


# -- content -------------------------------------------------------------------


def content(
    channel: int = 1,
    exchange: str = "",
    routing_key: str = "q",
    body_data: bytes = b"",
    *,
    mandatory: bool = False,
    immediate: bool = False,
    properties_raw: bytes = b"\x00\x00",
) -> events.ContentReceived:
    return events.ContentReceived(
        channel, exchange, routing_key, mandatory, immediate, properties_raw, body_data
    )


class TestContent:
    def test_publish_header_body(self) -> None:
        connection = opened(1)
        produced = feed(
            connection,
            publish(1, "amq.direct", "rk", mandatory=True)
            + header(1, 5)
            + body(1, b"hello"),
        )
        assert produced == [content(1, "amq.direct", "rk", b"hello", mandatory=True)]
        assert connection.data_to_send() == b""

    def test_immediate_flag_is_reported(self) -> None:
        connection = opened(1)
        [event] = feed(connection, publish(1, immediate=True) + header(1, 0))
        assert event.immediate is True
        assert event.mandatory is False

    def test_properties_are_passed_through_raw(self) -> None:
        connection = opened(1)
        properties = commands.Basic.Properties(
            content_type="text/plain", headers={"k": 1}, delivery_mode=2
        )
        content_header = pamqp_frame.marshal(
            pamqp_header.ContentHeader(0, 2, properties), 1
        )
        [event] = feed(connection, publish(1) + content_header + body(1, b"hi"))
        assert event.properties_raw == properties.marshal()
        assert event.body == b"hi"

    def test_zero_length_body_completes_at_the_header(self) -> None:
        connection = opened(1)
        assert feed(connection, publish(1) + header(1, 0)) == [content()]

    def test_multi_frame_body_is_joined(self) -> None:
        connection = opened(1)
        parts = [b"a" * 100, b"b" * 200, b"c"]
        data = publish(1) + header(1, 301) + b"".join(body(1, part) for part in parts)
        assert feed(connection, data) == [content(body_data=b"".join(parts))]

    def test_body_frames_arriving_one_at_a_time(self) -> None:
        connection = opened(1)
        assert feed(connection, publish(1) + header(1, 6)) == []
        assert feed(connection, body(1, b"abc")) == []
        assert feed(connection, body(1, b"def")) == [content(body_data=b"abcdef")]

    def test_empty_body_frames_are_allowed(self) -> None:
        connection = opened(1)
        data = publish(1) + header(1, 2) + body(1, b"") + body(1, b"ab")
        assert feed(connection, data) == [content(body_data=b"ab")]

    def test_heartbeat_between_publish_and_header(self) -> None:
        connection = opened(1)
        produced = feed(
            connection, publish(1) + HEARTBEAT + header(1, 1) + body(1, b"x")
        )
        assert produced == [events.HeartbeatReceived(), content(body_data=b"x")]

    def test_contents_on_two_channels_may_interleave(self) -> None:
        connection = opened(1, 2)
        data = (
            publish(1, routing_key="one")
            + publish(2, routing_key="two")
            + header(2, 2)
            + header(1, 2)
            + body(1, b"1a")
            + body(2, b"2b")
        )
        assert feed(connection, data) == [
            content(1, routing_key="one", body_data=b"1a"),
            content(2, routing_key="two", body_data=b"2b"),
        ]

    def test_messages_in_a_row(self) -> None:
        connection = opened(1)
        data = b"".join(
            publish(1, routing_key=str(n)) + header(1, 1) + body(1, bytes((n,)))
            for n in range(50)
        )
        produced = feed(connection, data)
        assert [(event.routing_key, event.body) for event in produced] == [
            (str(n), bytes((n,))) for n in range(50)
        ]

    def test_body_up_to_frame_max_per_frame(self) -> None:
        connection = opened(1)
        data = publish(1) + header(1, 131072) + body(1, b"x" * 131072)
        [event] = feed(connection, data)
        assert len(event.body) == 131072

    @pytest.mark.parametrize(
        "data",
        [
            header(1, 3),  # on an open channel
            header(2, 3),  # on a channel never opened
            body(1, b"abc"),
            publish(1) + header(1, 0) + body(1, b"x"),  # after a complete message
            publish(1) + header(2, 0),  # header on another channel
        ],
        ids=[
            "header",
            "header-unopened",
            "body",
            "body-after-empty",
            "header-elsewhere",
        ],
    )
    def test_content_frame_where_a_method_is_expected(self, data: bytes) -> None:
        error = error_of(opened(1, 3), data)
        assert close_args(error) == (
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0,
        )

    @pytest.mark.parametrize(
        "after_publish",
        [
            method(1, commands.Basic.Qos()),
            body(1, b"abc"),
            publish(1),
            method(1, commands.Channel.Close(reply_code=200, class_id=0, method_id=0)),
        ],
        ids=["method", "body", "publish", "close"],
    )
    def test_no_header_after_publish(self, after_publish: bytes) -> None:
        error = error_of(opened(1), publish(1) + after_publish)
        assert close_args(error) == (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, "
            "got non content header frame instead",
            60,
            40,
        )

    def test_header_of_another_class(self) -> None:
        error = error_of(opened(1), publish(1) + header(1, 1, class_id=50))
        assert close_args(error) == (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, "
            "got one for class 50 instead",
            60,
            40,
        )

    @pytest.mark.parametrize(
        "after_short_body",
        [method(1, commands.Basic.Qos()), header(1, 3), publish(1)],
        ids=["method", "header", "publish"],
    )
    def test_body_shorter_than_declared(self, after_short_body: bytes) -> None:
        error = error_of(
            opened(1), publish(1) + header(1, 5) + body(1, b"abc") + after_short_body
        )
        assert close_args(error) == (
            505,
            "UNEXPECTED_FRAME - expected content body, "
            "got non content body frame instead",
            60,
            40,
        )

    @pytest.mark.parametrize(
        ("bodies", "received"),
        [([b"abcde"], 5), ([b"ab", b"ab"], 4)],
        ids=["one-frame", "two-frames"],
    )
    def test_body_larger_than_declared(
        self, bodies: list[bytes], received: int
    ) -> None:
        # RabbitMQ waits for ever here; amqpy closes with 501 (deliberate).
        data = publish(1) + header(1, 3) + b"".join(body(1, part) for part in bodies)
        error = error_of(opened(1), data)
        assert error.reply_code == ReplyCode.FRAME_ERROR
        assert error.reply_text == (
            f"FRAME_ERROR - content body larger than declared: {received} > 3 bytes"
        )
        assert (error.class_id, error.method_id) == (60, 40)

    def test_truncated_header_payload(self) -> None:
        error = error_of(opened(1), publish(1) + raw_frame(2, 1, b"\x00\x3c\x00"))
        assert error.reply_code == ReplyCode.FRAME_ERROR

    @pytest.mark.parametrize(
        "payload",
        [
            b"\x00\x3c\x00\x28",
            b"\x00\x3c\x00\x28\x00\x00\x05ab",
            b"\x00\x3c\x00\x28\x00\x00\x00\x00",
        ],
        ids=["no-arguments", "short-exchange", "no-bits"],
    )
    def test_truncated_publish(self, payload: bytes) -> None:
        error = error_of(opened(1), raw_frame(1, 1, payload))
        assert error.reply_code == ReplyCode.FRAME_ERROR
        assert (error.class_id, error.method_id) == (60, 40)

    def test_message_larger_than_max_message_size_closes_the_channel(self) -> None:
        connection = opened(1, 2, max_message_size=1000)
        with pytest.raises(ChannelProtocolError) as caught:
            feed(connection, publish(1) + header(1, 1001) + body(1, b"x" * 1001))
        error = caught.value
        assert error.channel_id == 1
        assert close_args(error) == (
            406,
            "PRECONDITION_FAILED - message size 1001 is larger than configured "
            "max size 1000",
            60,
            40,
        )
        # The caller closes the channel; the body already buffered is dropped
        # because events are produced one frame at a time.
        connection.close_channel(1, error.reply_code, error.reply_text, 60, 40)
        assert feed(connection, body(1, b"more")) == []
        assert feed(connection, method(1, commands.Channel.CloseOk())) == [
            events.ChannelClosed(1)
        ]

    def test_message_of_exactly_max_message_size(self) -> None:
        connection = opened(1, max_message_size=1000)
        [event] = feed(connection, publish(1) + header(1, 1000) + body(1, b"x" * 1000))
        assert len(event.body) == 1000

    def test_channel_close_drops_a_partial_message(self) -> None:
        connection = opened(1)
        feed(connection, publish(1) + header(1, 10) + body(1, b"abc"))
        connection.close_channel(1, 406, "PRECONDITION_FAILED - x")
        feed(connection, method(1, commands.Channel.CloseOk()))
        feed(connection, method(1, commands.Channel.Open()))
        assert feed(connection, publish(1) + header(1, 1) + body(1, b"z")) == [
            content(body_data=b"z")
        ]


# -- fuzzing -------------------------------------------------------------------


FRAME_TYPES = st.sampled_from([1, 1, 1, 2, 3, 8, 0, 4, 206])
CHANNELS = st.sampled_from([0, 1, 2, 3, 65535])
KNOWN_METHODS = st.sampled_from(sorted(commands.INDEX_MAPPING)).map(
    lambda index: struct.pack(">I", index)
)


def _frame_bytes(
    frame_type: int, channel: int, payload: bytes, good_end: bool
) -> bytes:
    return raw_frame(frame_type, channel, payload, 0xCE if good_end else 0)


FRAMES = st.builds(
    _frame_bytes,
    FRAME_TYPES,
    CHANNELS,
    st.one_of(
        st.binary(max_size=40),
        st.tuples(KNOWN_METHODS, st.binary(max_size=40)).map(b"".join),
        st.just(publish(1)[7:-1]),
        st.just(struct.pack(">HHQ", 60, 0, 3) + b"\x00\x00"),
    ),
    st.sampled_from([True, True, True, True, False]),  # a good frame end
)
VALID_FRAMES = st.sampled_from(
    [
        method(1, commands.Channel.Open()),
        method(2, commands.Channel.Open()),
        method(1, commands.Channel.Close(reply_code=200, class_id=0, method_id=0)),
        method(1, commands.Channel.CloseOk()),
        method(1, commands.Basic.Qos(prefetch_count=1)),
        publish(1),
        publish(2),
        header(1, 3),
        header(1, 4),  # above max_message_size
        header(2, 0),
        publish(1) + header(1, 3) + body(1, b"abc"),
        body(1, b"abc"),
        body(2, b"x"),
        HEARTBEAT,
        method(0, commands.Connection.Close(reply_code=200, class_id=0, method_id=0)),
        method(0, commands.Connection.CloseOk()),
        pamqp_frame.marshal(pamqp_body.ContentBody(b"y"), 1),
    ]
)
STREAMS = st.lists(
    st.one_of(VALID_FRAMES, VALID_FRAMES, FRAMES, st.binary(max_size=12)), max_size=12
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    stream=STREAMS,
    chunk=st.integers(1, 64),
    server_closes=st.lists(st.integers(0, 3), max_size=3),
)
def test_arbitrary_bytes_give_only_events_or_protocol_errors(
    stream: list[bytes], chunk: int, server_closes: list[int]
) -> None:
    connection = opened(1, max_message_size=3)
    for channel in server_closes:
        connection.close_channel(channel, 406, "PRECONDITION_FAILED - fuzz")
    data = b"".join(stream)
    for start in range(0, len(data), chunk):
        connection.receive_data(data[start : start + chunk])
        while True:
            try:
                event = connection.next_event()
            except ChannelProtocolError as error:
                # What the server does: close that channel and go on.
                connection.close_channel(
                    error.channel_id, error.reply_code, error.reply_text
                )
                continue
            except ProtocolError as error:
                assert 300 <= error.reply_code < 600
                assert error.reply_text.startswith(error.reply_code.name + " - ")
                connection.close(error.reply_code, error.reply_text)
                return
            if event is None:
                break
            assert isinstance(event, events.Event)
        connection.data_to_send()
