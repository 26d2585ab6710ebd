"""The handshake's shortcuts give exactly the bytes and events of the
generic path: frames encoded once (connection.start, tune, open-ok, channel
open-ok and close-ok), client properties shared between connections, and
start-ok decoded by hand once its client properties are known."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import encode as pamqp_encode
from pamqp import frame as pamqp_frame

from amqpy.protocol import connection as protocol_connection
from amqpy.protocol import events
from amqpy.protocol.connection import ServerConnection, encode_start
from amqpy.protocol.constants import PROTOCOL_HEADER
from amqpy.protocol.errors import ProtocolError

SERVER_PROPERTIES = {"product": "amqpy", "capabilities": {"basic.nack": True}}
LIMITS = {"channel_max": 2047, "frame_max": 131072, "heartbeat": 60}
CAPABILITIES = {"publisher_confirms": True, "basic.nack": True}


def new_connection(**options: Any) -> ServerConnection:
    if "start_frame" not in options:
        options.setdefault("server_properties", SERVER_PROPERTIES)
    return ServerConnection(**LIMITS, max_message_size=1 << 27, **options)


def method(channel: int, value: Any) -> bytes:
    return pamqp_frame.marshal(value, channel)


def start_ok_payload(
    client_properties: dict[str, Any],
    mechanism: str = "PLAIN",
    response: bytes = b"\x00guest\x00guest",
    locale: str = "en_US",
) -> bytes:
    return (
        struct.pack(">HH", 10, 11)
        + pamqp_encode.field_table(client_properties)
        + pamqp_encode.short_string(mechanism)
        + struct.pack(">I", len(response))
        + response
        + pamqp_encode.short_string(locale)
    )


def method_frame(payload: bytes) -> bytes:
    return struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce"


def handshake_output(connection: ServerConnection) -> list[bytes]:
    """What the connection sends for a whole handshake and a channel."""
    sent = []
    connection.receive_data(PROTOCOL_HEADER)
    assert connection.next_event() is None
    sent.append(connection.data_to_send())
    connection.receive_data(
        method(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "test"},
                mechanism="PLAIN",
                response="\x00guest\x00guest",
                locale="en_US",
            ),
        )
    )
    assert isinstance(connection.next_event(), events.StartOkReceived)
    connection.start_tune()
    sent.append(connection.data_to_send())
    connection.receive_data(
        method(
            0, commands.Connection.TuneOk(channel_max=10, frame_max=4096, heartbeat=0)
        )
        + method(0, commands.Connection.Open(virtual_host="/"))
    )
    assert isinstance(connection.next_event(), events.TuneOkReceived)
    assert isinstance(connection.next_event(), events.OpenReceived)
    connection.accept_open()
    sent.append(connection.data_to_send())
    for channel in (1, 7, 65535):
        connection.receive_data(method(channel, commands.Channel.Open()))
        assert connection.next_event() == events.ChannelOpened(channel)
        sent.append(connection.data_to_send())
        connection.receive_data(
            method(
                channel,
                commands.Channel.Close(
                    reply_code=200, reply_text="x", class_id=0, method_id=0
                ),
            )
        )
        assert connection.next_event() == events.ChannelClosed(channel)
        sent.append(connection.data_to_send())
    connection.receive_data(
        method(
            0,
            commands.Connection.Close(
                reply_code=200, reply_text="bye", class_id=0, method_id=0
            ),
        )
    )
    assert isinstance(connection.next_event(), events.ConnectionCloseReceived)
    sent.append(connection.data_to_send())
    return sent


def test_handshake_frames_are_pamqps() -> None:
    expected = [
        method(
            0,
            commands.Connection.Start(
                version_major=0,
                version_minor=9,
                server_properties=SERVER_PROPERTIES,
                mechanisms="PLAIN AMQPLAIN",
                locales="en_US",
            ),
        ),
        method(0, commands.Connection.Tune(**LIMITS)),
        method(0, commands.Connection.OpenOk()),
    ]
    for channel in (1, 7, 65535):
        expected.append(method(channel, commands.Channel.OpenOk()))
        expected.append(method(channel, commands.Channel.CloseOk()))
    expected.append(method(0, commands.Connection.CloseOk()))
    assert handshake_output(new_connection()) == expected


def test_a_shared_start_frame_is_the_one_encoded_per_connection() -> None:
    shared = encode_start(SERVER_PROPERTIES, "PLAIN", "en_US")
    assert handshake_output(new_connection(start_frame=shared)) == handshake_output(
        new_connection(mechanisms="PLAIN")
    )


# -- client properties and start-ok ------------------------------------------------


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    protocol_connection._CLIENT_PROPERTIES.clear()


def start_ok_event(payload: bytes) -> events.Event | None:
    connection = new_connection()
    connection.receive_data(PROTOCOL_HEADER + method_frame(payload))
    return connection.next_event()


def test_connections_with_the_same_client_properties_share_them() -> None:
    payload = start_ok_payload({"product": "app", "capabilities": CAPABILITIES})
    first, second = start_ok_event(payload), start_ok_event(payload)
    assert isinstance(first, events.StartOkReceived)
    assert isinstance(second, events.StartOkReceived)
    assert first == second
    assert first.client_properties is second.client_properties


def test_client_properties_with_a_connection_name_are_not_shared() -> None:
    payload = start_ok_payload({"product": "app", "connection_name": "one"})
    first, second = start_ok_event(payload), start_ok_event(payload)
    assert isinstance(first, events.StartOkReceived)
    assert isinstance(second, events.StartOkReceived)
    assert first.client_properties == second.client_properties
    assert first.client_properties is not second.client_properties


def test_a_value_past_the_tables_end_is_not_shared() -> None:
    # A long string that claims 12 bytes, 3 of them in the table: pamqp
    # reads on into the mechanism, so the table alone does not decide it.
    table = struct.pack(">I", 7) + b"\x01kS" + struct.pack(">I", 12)
    payload = (
        struct.pack(">HH", 10, 11)
        + table
        + b"\x05PLAIN"
        + struct.pack(">I", 12)
        + b"\x00guest\x00guest"
        + b"\x05en_US"
    )
    start_ok_event(payload)
    assert protocol_connection._CLIENT_PROPERTIES == {}


texts = st.text(max_size=20)
property_values = st.one_of(st.booleans(), st.integers(-(2**31), 2**31 - 1), texts)


@settings(max_examples=200, deadline=None)
@given(
    properties=st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.one_of(property_values, st.dictionaries(texts, property_values)),
        max_size=5,
    ),
    mechanism=st.sampled_from(["PLAIN", "AMQPLAIN", "EXTERNAL", "é"]),
    response=st.binary(max_size=40),
    locale=texts,
    cut=st.integers(0, 80),
    trailer=st.binary(max_size=3),
)
def test_start_ok_decoded_by_hand_is_the_generic_decoding(
    properties: dict[str, Any],
    mechanism: str,
    response: bytes,
    locale: str,
    cut: int,
    trailer: bytes,
) -> None:
    """Cut short or with bytes after it, a start-ok gives the same event or
    the same error, whether its client properties are known or not."""
    payload = start_ok_payload(properties, mechanism, response, locale)
    start_ok_event(payload)  # the properties are known from now on
    for variant in (payload, payload[: len(payload) - cut], payload + trailer):
        protocol_connection._CLIENT_PROPERTIES.clear()
        generic = outcome(variant)
        start_ok_event(payload)
        assert outcome(variant) == generic


def outcome(payload: bytes) -> object:
    try:
        event = start_ok_event(payload)
    except ProtocolError as error:
        return (error.reply_code, error.reply_text)
    if isinstance(event, events.StartOkReceived):
        return (
            event.client_properties,
            event.mechanism,
            event.response,
            event.locale,
        )
    return event
