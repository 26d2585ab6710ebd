"""RabbitMQ's consumer_timeout: a delivery left unacknowledged too long
closes its channel with 406 and RabbitMQ 3.10's text (the oracle's, with
consumer_timeout = 1000), and its messages go back to the queue."""

from __future__ import annotations

import time
from collections.abc import Callable

import pika

from amqpy.server.embedded import EmbeddedBroker

TIMEOUT_MS = 400


def expected(channel_number: int) -> tuple[int, str]:
    return (
        406,
        f"PRECONDITION_FAILED - delivery acknowledgement on channel {channel_number} "
        f"timed out. Timeout value used: {TIMEOUT_MS} ms. This timeout value can "
        "be configured, see consumers doc guide to learn more",
    )


def wait_closed(
    connection: pika.BlockingConnection, closed: list[tuple[int, str]]
) -> float:
    started = time.monotonic()
    while not closed:
        assert time.monotonic() - started < 10, "the channel was not closed"
        connection.process_data_events(time_limit=0.05)
    return time.monotonic() - started


def watch(channel: object, closed: list[tuple[int, str]]) -> None:
    channel._impl.add_on_close_callback(  # type: ignore[attr-defined]
        lambda _channel, reason: closed.append((reason.reply_code, reason.reply_text))
    )


def test_an_unacked_delivery_closes_its_channel_and_is_requeued(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(limits={"consumer_timeout_ms": TIMEOUT_MS})
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
    )
    channel = connection.channel()
    channel.queue_declare("slow")
    channel.basic_publish("", "slow", b"never acked")
    closed: list[tuple[int, str]] = []
    watch(channel, closed)
    channel.basic_consume("slow", lambda *args: None)
    waited = wait_closed(connection, closed)
    assert closed == [expected(channel.channel_number)]
    assert waited >= TIMEOUT_MS / 1000 * 0.9
    # The connection goes on; the message is back, marked redelivered.
    again = connection.channel()
    method, _, body = again.basic_get("slow", auto_ack=True)
    assert method is not None and method.redelivered and body == b"never acked"
    connection.close()


def test_basic_get_deliveries_count_and_acked_ones_do_not(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(limits={"consumer_timeout_ms": TIMEOUT_MS})
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
    )
    prompt = connection.channel()
    prompt.queue_declare("q")
    # A consumer that acks at once keeps its channel however long it runs.
    for body in (b"1", b"2"):
        prompt.basic_publish("", "q", body)
    prompt.basic_consume(
        "q",
        lambda channel, method, _props, _body: channel.basic_ack(method.delivery_tag),
    )
    late = connection.channel()
    late.queue_declare("gets")
    late.basic_publish("", "gets", b"got")
    closed: list[tuple[int, str]] = []
    watch(late, closed)
    method, _, _ = late.basic_get("gets")
    assert method is not None
    wait_closed(connection, closed)
    assert closed == [expected(late.channel_number)]
    assert prompt.is_open
    connection.close()
