"""The connection level against a real broker: protocol header, handshake,
authentication, tuning, heartbeats, timeouts, connection and channel errors,
and graceful shutdown.

Frame-exact checks use the raw client in tests/helpers; pika and aio-pika are
used where what a stock client sees is the point. Codes and texts are
RabbitMQ 3.10's (/work/oracle/results.md) unless a comment names one of the
deliberate differences listed in docs/compatibility.md.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pytest
from helpers.amqp_client import (
    DEFAULT_CAPABILITIES,
    FRAME_BODY,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    PROTOCOL_HEADER,
    AmqpClient,
    ServerClosedError,
    body_frame,
    content_header_frame,
    method_frame,
    method_payload,
    open_client,
    raw_frame,
    start_ok_payload,
)
from pamqp import commands

from amqpy.server.embedded import EmbeddedBroker

SHUTDOWN_TEXT = (
    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
)
LOGIN_REFUSED = (
    "ACCESS_REFUSED - Login was refused using authentication mechanism {}. "
    "For details see the broker logfile."
)


@pytest.fixture
def clients() -> Iterator[list[AmqpClient]]:
    """Raw clients a test opens, closed at its end."""
    opened: list[AmqpClient] = []
    yield opened
    for client in opened:
        client.close()


@pytest.fixture
def raw(broker: EmbeddedBroker, clients: list[AmqpClient]) -> Callable[..., AmqpClient]:
    """raw() is a connected client; raw(open=True, **handshake) is past open-ok."""

    def make(*, open: bool = False, **options: Any) -> AmqpClient:
        client = AmqpClient.connect(broker.port)
        clients.append(client)
        if open:
            client.open(**options)
        return client

    return make


def assert_broker_serves(port: int) -> None:
    """A new pika client can still open, publish and get on this broker."""
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", port, socket_timeout=5)
    )
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"still here")
        _, _, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"still here"
    finally:
        connection.close()


def send_start_ok(
    client: AmqpClient,
    mechanism: str,
    response: bytes,
    capabilities: dict[str, Any] | None = None,
) -> None:
    """Header, then a start-ok with any mechanism and response bytes."""
    client.send_header()
    client.expect(commands.Connection.Start)
    if capabilities is None:
        capabilities = dict(DEFAULT_CAPABILITIES)
    client.send_frame(
        FRAME_METHOD,
        0,
        start_ok_payload({"capabilities": capabilities}, mechanism, response, "en_US"),
    )


# -- protocol header -----------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"AMQP\x00\x00\x09\x00",
        b"AMQP\x00\x00\x08\x00",
        b"AMQP\x00\x00\x09\x02",
        b"AMQP\x00\x01\x00\x00",  # AMQP 1.0
        b"AMQP\x03\x01\x00\x00",  # AMQP 1.0 SASL
        # AMQP 0-8: RabbitMQ speaks it, amqpy does not (docs/compatibility.md).
        b"AMQP\x01\x01\x08\x00",
        b"HTTP/1.1",
        b"GET / HTTP/1.1\r\n\r\n",
        b"XXXXXXXX",
    ],
)
def test_wrong_protocol_header_gets_ours_back_and_the_socket_closed(
    broker: EmbeddedBroker, raw: Callable[..., AmqpClient], header: bytes
) -> None:
    client = raw()
    client.send(header)
    assert client.wait_closed() == PROTOCOL_HEADER
    assert_broker_serves(broker.port)


def test_old_0_9_1_header_is_accepted(raw: Callable[..., AmqpClient]) -> None:
    client = raw(open=True, header=b"AMQP\x01\x01\x00\x09")
    assert client.start is not None
    assert (client.start.version_major, client.start.version_minor) == (0, 9)
    client.open_channel(1)


# -- connection.start and tune -------------------------------------------------


def test_connection_start_offers_what_clients_need(
    raw: Callable[..., AmqpClient],
) -> None:
    client = raw(open=True)
    start = client.start
    assert start is not None
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms == "PLAIN AMQPLAIN"
    assert start.locales == "en_US"
    properties = start.server_properties
    for key in ("product", "version", "platform", "copyright", "information"):
        assert isinstance(properties[key], str)
        assert properties[key]
    assert isinstance(properties["cluster_name"], str)
    capabilities = properties["capabilities"]
    # What pika, aio-pika and kombu look for.
    for name in (
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ):
        assert capabilities.get(name) is True, name


def test_tune_proposes_rabbitmq_defaults(raw: Callable[..., AmqpClient]) -> None:
    client = raw()
    client.handshake(open_connection=False)
    tune = client.tune
    assert tune is not None
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)


def test_pika_sees_the_server_properties(
    connect: Callable[..., pika.BlockingConnection],
) -> None:
    connection = connect()
    properties = connection._impl.server_properties
    assert properties["capabilities"]["publisher_confirms"] is True
    assert properties["capabilities"]["basic.nack"] is True


# -- authentication and vhost -------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "AMQPLAIN"])
def test_login(raw: Callable[..., AmqpClient], mechanism: str) -> None:
    client = raw(open=True, mechanism=mechanism)
    client.open_channel(1)


def test_locale_is_not_checked(raw: Callable[..., AmqpClient]) -> None:
    raw(open=True, locale="xx_XX").open_channel(1)


def test_bad_password_with_pika(broker: EmbeddedBroker) -> None:
    parameters = pika.ConnectionParameters(
        "127.0.0.1",
        broker.port,
        credentials=pika.PlainCredentials("guest", "wrong"),
        socket_timeout=5,
        connection_attempts=1,
    )
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as error:
        pika.BlockingConnection(parameters)
    assert "(403)" in str(error.value)
    assert LOGIN_REFUSED.format("PLAIN") in str(error.value)
    assert_broker_serves(broker.port)


@pytest.mark.parametrize(
    ("mechanism", "username", "password"),
    [
        ("PLAIN", "guest", "wrong"),
        ("PLAIN", "nobody", "guest"),
        ("AMQPLAIN", "guest", "wrong"),
    ],
)
def test_bad_credentials_close_with_403(
    raw: Callable[..., AmqpClient], mechanism: str, username: str, password: str
) -> None:
    client = raw()
    frame = client.handshake(mechanism=mechanism, username=username, password=password)
    assert isinstance(frame.value, commands.Connection.Close)
    assert frame.channel == 0
    close = frame.value
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        403,
        LOGIN_REFUSED.format(mechanism),
        0,
        0,
    )
    client.send_method(0, commands.Connection.CloseOk())
    assert client.wait_closed() == b""


def test_bad_password_without_the_capability_is_a_silent_close(
    raw: Callable[..., AmqpClient],
) -> None:
    client = raw()
    # No authentication_failure_close: RabbitMQ sends no reason (amqpy closes
    # at once rather than after 3 s, docs/compatibility.md).
    send_start_ok(client, "PLAIN", b"\x00guest\x00wrong", capabilities={})
    assert client.wait_closed() == b""


@pytest.mark.parametrize(
    ("mechanism", "response"),
    [
        ("FOO", b"\x00guest\x00guest"),
        ("plain", b"\x00guest\x00guest"),  # mechanism names are case-sensitive
        ("PLAIN", b"guest"),
        ("PLAIN", b""),
        ("AMQPLAIN", b"\xff\xfe garbage"),
    ],
    ids=["unknown", "lower-case", "plain-no-nul", "plain-empty", "amqplain-garbage"],
)
def test_unusable_mechanism_or_response_is_a_silent_close(
    broker: EmbeddedBroker,
    raw: Callable[..., AmqpClient],
    mechanism: str,
    response: bytes,
) -> None:
    client = raw()
    send_start_ok(client, mechanism, response)
    assert client.wait_closed() == b""
    assert_broker_serves(broker.port)


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_guest_from_a_non_loopback_address_is_refused(
    make_broker: Callable[..., EmbeddedBroker], clients: list[AmqpClient]
) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    broker = make_broker(listener={"bind": "0.0.0.0"})
    client = AmqpClient.connect(broker.port, host=address)
    clients.append(client)
    frame = client.handshake()
    assert isinstance(frame.value, commands.Connection.Close)
    # RabbitMQ keeps the reason ("can only connect via localhost") for its log.
    assert (frame.value.reply_code, frame.value.reply_text) == (
        403,
        LOGIN_REFUSED.format("PLAIN"),
    )


def test_unknown_vhost_with_pika(broker: EmbeddedBroker) -> None:
    parameters = pika.ConnectionParameters(
        "127.0.0.1",
        broker.port,
        virtual_host="nosuchvhost",
        socket_timeout=5,
        connection_attempts=1,
    )
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as error:
        pika.BlockingConnection(parameters)
    assert "(530)" in str(error.value)
    assert "NOT_ALLOWED - vhost nosuchvhost not found" in str(error.value)


@pytest.mark.parametrize(
    ("vhost", "text"),
    [
        ("nosuchvhost", "NOT_ALLOWED - vhost nosuchvhost not found"),
        ("", "NOT_ALLOWED - vhost  not found"),
    ],
)
def test_unknown_vhost(raw: Callable[..., AmqpClient], vhost: str, text: str) -> None:
    client = raw()
    frame = client.handshake(vhost=vhost)
    assert isinstance(frame.value, commands.Connection.Close)
    close = frame.value
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        530,
        text,
        10,
        40,
    )
    client.send_method(0, commands.Connection.CloseOk())
    assert client.wait_closed() == b""


# -- tune negotiation ----------------------------------------------------------


@pytest.mark.parametrize(
    "tune",
    [
        {"heartbeat": 600},
        {"heartbeat": 65535},
        {"channel_max": 2},
        {"frame_max": 4096},
    ],
    ids=["heartbeat-600", "heartbeat-65535", "channel-max-2", "frame-max-4096"],
)
def test_acceptable_tune_ok(
    raw: Callable[..., AmqpClient], tune: dict[str, int]
) -> None:
    client = raw(open=True, **tune)
    client.open_channel(1)


def test_pika_heartbeat_above_the_proposal(
    connect: Callable[..., pika.BlockingConnection],
) -> None:
    connection = connect(heartbeat=600)
    assert connection._impl.params.heartbeat == 600
    connection.channel().queue_declare("", exclusive=True)


@pytest.mark.parametrize(
    "tune",
    [
        {"frame_max": 131073},
        {"frame_max": 1000000},
        {"frame_max": 4095},
        {"frame_max": 0},
        {"channel_max": 0},
        {"channel_max": 2048},
        {"channel_max": 65535},
    ],
    ids=lambda tune: "-".join(f"{key}={value}" for key, value in tune.items()),
)
def test_tune_ok_above_the_proposal_closes_the_socket(
    broker: EmbeddedBroker, raw: Callable[..., AmqpClient], tune: dict[str, int]
) -> None:
    client = raw()
    client.handshake(open_connection=False, **tune)
    # No close frame, as RabbitMQ (which waits 3 s first).
    assert client.wait_closed() == b""
    assert_broker_serves(broker.port)


def test_channel_open_before_connection_open(raw: Callable[..., AmqpClient]) -> None:
    client = raw()
    client.handshake(open_connection=False)
    client.send_method(1, commands.Channel.Open())
    assert client.expect_connection_close() == (
        505,
        "UNEXPECTED_FRAME - type 1, all octets = <<0,20,0,10,1,48>>",
        0,
        0,
    )
    assert client.wait_closed(timeout=2) == b""


# -- heartbeats ------------------------------------------------------------------


def test_server_sends_heartbeats_every_half_interval(
    raw: Callable[..., AmqpClient],
) -> None:
    client = raw(open=True, heartbeat=1)
    opened = time.monotonic()
    arrivals = []
    while len(arrivals) < 4:
        frame = client.read_frame(timeout=2)
        assert frame.frame_type == FRAME_HEARTBEAT, frame
        assert frame.raw == bytes.fromhex("08000000000000ce")
        arrivals.append(time.monotonic())
        client.send_heartbeat()  # stay alive
    assert arrivals[0] - opened < 1.2
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(0.25 < gap < 0.9 for gap in gaps), gaps
    client.open_channel(1)


def test_silent_client_is_disconnected_after_two_intervals(
    raw: Callable[..., AmqpClient],
) -> None:
    client = raw(open=True, heartbeat=1)
    opened = time.monotonic()
    received = client.wait_closed(timeout=5)
    elapsed = time.monotonic() - opened
    # Only heartbeats came, then the socket was closed with no close frame.
    assert received == bytes.fromhex("08000000000000ce") * (len(received) // 8)
    assert 1.5 < elapsed < 4.5, elapsed


def test_no_heartbeats_when_the_client_turns_them_off(
    make_broker: Callable[..., EmbeddedBroker], clients: list[AmqpClient]
) -> None:
    broker = make_broker(heartbeat={"interval_s": 1})
    client = open_client(broker.port, heartbeat=0)
    clients.append(client)
    assert client.tune is not None
    assert client.tune.heartbeat == 1
    # 2.5 intervals of silence from both sides: nothing arrives, still open.
    client.assert_quiet(2.5, allow_heartbeats=False)
    client.open_channel(1)


# -- handshake timeout -----------------------------------------------------------


@pytest.fixture
def quick_handshake_broker(
    make_broker: Callable[..., EmbeddedBroker],
) -> EmbeddedBroker:
    return make_broker(listener={"handshake_timeout_s": 0.5})


@pytest.mark.parametrize(
    "progress",
    [b"", b"AMQ"],
    ids=["nothing", "partial-header"],
)
def test_handshake_timeout_before_the_header(
    quick_handshake_broker: EmbeddedBroker, clients: list[AmqpClient], progress: bytes
) -> None:
    client = AmqpClient.connect(quick_handshake_broker.port)
    clients.append(client)
    client.send(progress)
    started = time.monotonic()
    assert client.wait_closed(timeout=5) == b""
    assert 0.4 < time.monotonic() - started < 3


@pytest.mark.parametrize("step", ["start", "tune"])
def test_handshake_timeout_after_the_header(
    quick_handshake_broker: EmbeddedBroker, clients: list[AmqpClient], step: str
) -> None:
    client = AmqpClient.connect(quick_handshake_broker.port)
    clients.append(client)
    started = time.monotonic()
    if step == "start":
        client.send_header()
        client.expect(commands.Connection.Start)
    else:
        client.handshake(open_connection=False)
    # No close frame, as RabbitMQ.
    assert client.wait_closed(timeout=5) == b""
    assert 0.4 < time.monotonic() - started < 3


def test_heartbeat_does_not_count_as_handshake_progress(
    quick_handshake_broker: EmbeddedBroker, clients: list[AmqpClient]
) -> None:
    client = AmqpClient.connect(quick_handshake_broker.port)
    clients.append(client)
    client.send_header()
    client.expect(commands.Connection.Start)
    started = time.monotonic()
    client.send_heartbeat()  # ignored before start-ok, as RabbitMQ
    assert client.wait_closed(timeout=5) == b""
    assert time.monotonic() - started < 3


def test_a_finished_handshake_is_not_timed_out(
    quick_handshake_broker: EmbeddedBroker, clients: list[AmqpClient]
) -> None:
    client = open_client(quick_handshake_broker.port)
    clients.append(client)
    client.assert_quiet(1.2)  # over twice the handshake timeout
    client.open_channel(1)


# -- connection and channel errors ----------------------------------------------


def _publish_then(channel: int, *frames: bytes) -> bytes:
    return method_frame(
        channel, commands.Basic.Publish(exchange="", routing_key="q")
    ) + b"".join(frames)


ERROR_CASES: list[tuple[str, bytes, tuple[int, str, int, int]]] = [
    (
        "second-channel-open",
        method_frame(1, commands.Channel.Open()),
        (504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10),
    ),
    (
        "method-on-unopened-channel",
        method_frame(5, commands.Queue.Declare(queue="q")),
        (504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10),
    ),
    (
        "close-on-unopened-channel",
        method_frame(
            5, commands.Channel.Close(reply_code=200, class_id=0, method_id=0)
        ),
        (504, "CHANNEL_ERROR - expected 'channel.open'", 20, 40),
    ),
    (
        "channel-method-on-channel-0",
        method_frame(0, commands.Queue.Declare(queue="q")),
        (504, "CHANNEL_ERROR - unexpected method in connection state running", 50, 10),
    ),
    (
        "second-connection-open",
        method_frame(0, commands.Connection.Open()),
        (504, "CHANNEL_ERROR - unexpected method in connection state running", 10, 40),
    ),
    (
        "connection-open-on-channel-1",
        method_frame(1, commands.Connection.Open()),
        (503, "COMMAND_INVALID - unimplemented method", 10, 40),
    ),
    (
        "heartbeat-on-channel-1",
        raw_frame(FRAME_HEARTBEAT, 1, b""),
        (505, "UNEXPECTED_FRAME - type 8, all octets = <<>>", 0, 0),
    ),
    (
        "heartbeat-with-payload",
        raw_frame(FRAME_HEARTBEAT, 0, b"abc"),
        (501, 'FRAME_ERROR - type 8, all octets = <<"abc">>: unknown_frame', 0, 0),
    ),
    (
        "unknown-frame-type",
        raw_frame(5, 1, b"abc"),
        (501, 'FRAME_ERROR - type 5, all octets = <<"abc">>: unknown_frame', 0, 0),
    ),
    (
        "content-header-without-publish",
        content_header_frame(1, 3),
        (
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0,
        ),
    ),
    (
        "body-without-header",
        body_frame(1, b"abc"),
        (
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0,
        ),
    ),
    (
        "method-between-publish-and-header",
        _publish_then(1, method_frame(1, commands.Basic.Qos())),
        (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, "
            "got non content header frame instead",
            60,
            40,
        ),
    ),
    (
        "body-shorter-than-declared",
        _publish_then(
            1,
            content_header_frame(1, 5),
            body_frame(1, b"abc"),
            method_frame(1, commands.Basic.Qos()),
        ),
        (
            505,
            "UNEXPECTED_FRAME - expected content body, "
            "got non content body frame instead",
            60,
            40,
        ),
    ),
    (
        # Deliberate difference: RabbitMQ drops the socket without a frame.
        "unknown-method",
        raw_frame(FRAME_METHOD, 1, method_payload(99, 1)),
        (540, "NOT_IMPLEMENTED - unknown method: class 99, method 1", 99, 1),
    ),
    (
        "server-only-method",
        method_frame(
            1,
            commands.Queue.DeclareOk(queue="q", message_count=0, consumer_count=0),
        ),
        (503, "COMMAND_INVALID - unimplemented method", 50, 11),
    ),
    (
        "truncated-arguments",
        raw_frame(FRAME_METHOD, 1, method_payload(50, 10)),
        (501, "FRAME_ERROR - cannot decode <<>>", 50, 10),
    ),
    (
        # Deliberate difference: RabbitMQ waits for ever.
        "body-larger-than-declared",
        _publish_then(1, content_header_frame(1, 3), body_frame(1, b"abcde")),
        (501, "FRAME_ERROR - content body larger than declared: 5 > 3 bytes", 60, 40),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    [pytest.param(data, expected, id=name) for name, data, expected in ERROR_CASES],
)
def test_connection_error(
    broker: EmbeddedBroker,
    raw: Callable[..., AmqpClient],
    data: bytes,
    expected: tuple[int, str, int, int],
) -> None:
    client = raw(open=True)
    client.open_channel(1)
    client.send(data)
    assert client.expect_connection_close() == expected
    # After our close-ok the broker closes the socket at once.
    assert client.wait_closed(timeout=2) == b""
    assert_broker_serves(broker.port)


def test_frames_after_the_brokers_close_are_ignored_until_close_ok(
    raw: Callable[..., AmqpClient],
) -> None:
    client = raw(open=True)
    client.open_channel(1)
    client.send_method(1, commands.Channel.Open())
    assert client.expect_connection_close(reply_close_ok=False)[0] == 504
    client.send_method(1, commands.Queue.Declare(queue="q"))
    client.send_method(2, commands.Channel.Open())
    client.publish(1, b"ignored", routing_key="q")
    client.send_method(0, commands.Connection.CloseOk())
    assert client.wait_closed(timeout=2) == b""


def test_client_that_never_sends_close_ok_is_disconnected(
    make_broker: Callable[..., EmbeddedBroker], clients: list[AmqpClient]
) -> None:
    # RabbitMQ waits 30 s; amqpy listener.close_timeout_s (docs/compatibility.md).
    broker = make_broker(listener={"close_timeout_s": 0.5})
    client = open_client(broker.port)
    clients.append(client)
    client.open_channel(1)
    client.send_method(1, commands.Channel.Open())
    assert client.expect_connection_close(reply_close_ok=False)[0] == 504
    started = time.monotonic()
    assert client.wait_closed(timeout=5) == b""
    assert time.monotonic() - started < 3


def test_client_connection_close(raw: Callable[..., AmqpClient]) -> None:
    client = raw(open=True)
    client.open_channel(1)
    client.close_connection()
    assert client.wait_closed(timeout=2) == b""


def test_channel_close_and_reopen(raw: Callable[..., AmqpClient]) -> None:
    client = raw(open=True)
    client.open_channel(1)
    client.send(
        method_frame(1, commands.Channel.Close(reply_code=200, class_id=0, method_id=0))
        + method_frame(1, commands.Channel.Open())
    )
    client.expect(commands.Channel.CloseOk, 1)
    client.expect(commands.Channel.OpenOk, 1)


def test_access_request_gets_ticket_1(raw: Callable[..., AmqpClient]) -> None:
    client = raw(open=True)
    client.open_channel(1)
    client.send_frame(FRAME_METHOD, 1, method_payload(30, 10, b"\x05/data\x1f"))
    frame = client.read_frame()
    assert frame.raw == bytes.fromhex("01000100000006001e000b0001ce")


def test_update_secret(raw: Callable[..., AmqpClient]) -> None:
    client = raw(open=True)
    client.send_method(
        0, commands.Connection.UpdateSecret(new_secret="s", reason="rotation")
    )
    client.expect(commands.Connection.UpdateSecretOk, 0)


def test_channel_max_limits_open_channels_not_numbers(
    raw: Callable[..., AmqpClient],
) -> None:
    client = raw(open=True, channel_max=2)
    client.open_channel(1)
    client.open_channel(3000)
    client.send_method(7, commands.Channel.Open())
    assert client.expect_connection_close() == (
        530,
        "NOT_ALLOWED - number of channels opened (2) has reached the "
        "negotiated channel_max (2)",
        0,
        0,
    )


@pytest.mark.parametrize(
    ("frame_end", "text"),
    [
        (0x00, "{invalid_frame_end_marker,0}"),
        (0xCD, "{invalid_frame_end_marker,205}"),
    ],
)
def test_bad_frame_end(
    broker: EmbeddedBroker, raw: Callable[..., AmqpClient], frame_end: int, text: str
) -> None:
    client = raw(open=True)
    client.open_channel(1)
    client.send_frame(FRAME_METHOD, 1, method_payload(20, 10, b"\x00"), frame_end)
    assert client.expect_connection_close() == (
        501,
        f"FRAME_ERROR - type 1, all octets = <<0,20,0,10,0>>: {text}",
        0,
        0,
    )
    assert_broker_serves(broker.port)


def test_frame_larger_than_frame_max(
    make_broker: Callable[..., EmbeddedBroker], clients: list[AmqpClient]
) -> None:
    broker = make_broker(limits={"frame_max": 4096})
    client = open_client(broker.port)
    clients.append(client)
    assert client.tune is not None
    assert client.tune.frame_max == 4096
    client.open_channel(1)
    # A payload of exactly frame_max passes (RabbitMQ forgives the framing).
    queue = "frame-max-queue"
    client.send_method(1, commands.Queue.Declare(queue=queue, exclusive=True))
    client.expect(commands.Queue.DeclareOk, 1)
    client.send(
        method_frame(1, commands.Basic.Publish(exchange="", routing_key=queue))
        + content_header_frame(1, 4096)
        + body_frame(1, b"x" * 4096)
    )
    client.send_method(1, commands.Basic.Get(queue=queue, no_ack=True))
    client.expect(commands.Basic.GetOk, 1)
    # The broker re-splits the body to fit frame_max on the way out.
    client.read()
    chunks = [client.read(), client.read()]
    assert [len(chunk.payload) for chunk in chunks] == [4088, 8]
    assert all(chunk.frame_type == FRAME_BODY for chunk in chunks)
    # One byte more is refused from the frame header alone.
    client.send(bytes.fromhex("03000100001001"))
    assert client.expect_connection_close() == (
        501,
        "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}",
        0,
        0,
    )
    assert_broker_serves(broker.port)


def test_max_message_size_is_a_channel_error_with_pika(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(limits={"max_message_size": 1000})
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
    )
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"x" * 1000)
        _, _, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"x" * 1000
        channel.basic_publish("", queue, b"x" * 1001)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            channel.queue_declare(queue, passive=True)
        assert error.value.reply_code == 406
        assert error.value.reply_text == (
            "PRECONDITION_FAILED - message size 1001 is larger than configured "
            "max size 1000"
        )
        # Only the channel was closed.
        assert connection.is_open
        other = connection.channel()
        other.queue_declare(queue, passive=True)
    finally:
        connection.close()


# -- stock clients -----------------------------------------------------------------


def test_aio_pika_round_trip(broker: EmbeddedBroker) -> None:
    async def main() -> None:
        connection = await aio_pika.connect(broker.url, timeout=5)
        async with connection:
            channel = await connection.channel()  # publisher confirms on
            queue = await channel.declare_queue("", exclusive=True)
            await channel.default_exchange.publish(
                aio_pika.Message(b"round trip", headers={"k": "v"}, message_id="m1"),
                routing_key=queue.name,
            )
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        assert message.body == b"round trip"
                        assert message.headers == {"k": "v"}
                        assert message.message_id == "m1"
                        assert message.routing_key == queue.name
                    break

    asyncio.run(asyncio.wait_for(main(), timeout=20))


def test_pika_consume_round_trip(
    connect: Callable[..., pika.BlockingConnection],
) -> None:
    channel = connect().channel()
    channel.confirm_delivery()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", queue, b"one", mandatory=True)
    for method, _, body in channel.consume(queue, inactivity_timeout=5):
        assert method is not None, "no delivery within 5 s"
        assert body == b"one"
        channel.basic_ack(method.delivery_tag)
        break
    channel.cancel()


# -- graceful shutdown -------------------------------------------------------------


def _stop_in_background(broker: EmbeddedBroker) -> threading.Thread:
    stopper = threading.Thread(target=broker.stop, name="broker-stop", daemon=True)
    stopper.start()
    return stopper


def test_shutdown_closes_clients_with_320(
    make_broker: Callable[..., EmbeddedBroker], clients: list[AmqpClient]
) -> None:
    broker = make_broker()
    idle = open_client(broker.port)
    consumer = open_client(broker.port)
    clients += [idle, consumer]
    consumer.open_channel(1)
    consumer.send_method(1, commands.Queue.Declare(queue="", exclusive=True))
    queue = consumer.expect(commands.Queue.DeclareOk, 1).queue
    consumer.send_method(1, commands.Basic.Consume(queue=queue, consumer_tag="c"))
    consumer.expect(commands.Basic.ConsumeOk, 1)

    stopper = _stop_in_background(broker)
    for client in (idle, consumer):
        # The close comes first: no basic.cancel before it.
        frame = client.read()
        assert frame.raw == bytes.fromhex(
            "01000000000056000a003201404b434f4e4e454354494f4e5f464f52434544202d20"
            "62726f6b657220666f7263656420636f6e6e656374696f6e20636c6f7375726520"
            "7769746820726561736f6e202773687574646f776e2700000000ce"
        )
        assert frame.value.reply_text == SHUTDOWN_TEXT
        client.send_method(0, commands.Connection.CloseOk())
        assert client.wait_closed(timeout=5) == b""
    stopper.join(10)
    assert not stopper.is_alive()


def test_shutdown_with_pika(make_broker: Callable[..., EmbeddedBroker]) -> None:
    broker = make_broker()
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
    )
    connection.channel()
    stopper = _stop_in_background(broker)
    deadline = time.monotonic() + 10
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as error:
        while time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
    assert error.value.reply_code == 320
    assert error.value.reply_text == SHUTDOWN_TEXT
    stopper.join(10)
    assert not stopper.is_alive()


def test_shutdown_does_not_wait_for_a_client_that_ignores_it(
    make_broker: Callable[..., EmbeddedBroker], clients: list[AmqpClient]
) -> None:
    broker = make_broker(listener={"shutdown_grace_s": 0.5, "close_timeout_s": 0.5})
    client = open_client(broker.port)
    clients.append(client)
    started = time.monotonic()
    stopper = _stop_in_background(broker)
    assert client.expect_connection_close(reply_close_ok=False)[0] == 320
    stopper.join(5)
    assert not stopper.is_alive()
    assert time.monotonic() - started < 3
    assert client.wait_closed(timeout=2) == b""


def test_bytes_after_a_frame_error_do_not_hold_the_connection_open(
    make_broker: Callable[..., EmbeddedBroker], clients: list[AmqpClient]
) -> None:
    # After a framing error the stream cannot be parsed, so the close-ok is
    # never seen (RabbitMQ too keeps the socket). More bytes from the client
    # must not push the close timeout back.
    broker = make_broker(listener={"close_timeout_s": 0.5})
    client = open_client(broker.port)
    clients.append(client)
    client.open_channel(1)
    client.send_frame(FRAME_METHOD, 1, method_payload(20, 10, b"\x00"), 0)
    assert client.expect_connection_close()[0] == 501
    deadline = time.monotonic() + 3
    closed = False
    while not closed and time.monotonic() < deadline:
        try:
            client.send_method(0, commands.Connection.CloseOk())
        except OSError:
            closed = True
            break
        try:
            client.read_frame(timeout=0.2)
        except TimeoutError:
            continue
        except ServerClosedError:
            closed = True
    assert closed, "the broker kept the connection open while the client talked"
