"""Consumers, prefetch, acknowledgements, basic.get, recover, requeue on close,
publisher confirms and the message size limit, driven by stock clients (pika,
aio-pika) and, where exact frames matter, a raw socket client.

Expected codes and texts are RabbitMQ 3.10's as observed on the oracle
(/work/oracle/results.md, sections 8-12, 15 and 17).

Deliveries are counted after a *barrier*: a synchronous request on the same
connection (a passive queue.declare). The broker dispatches synchronously
while it handles a request, so every delivery a request caused is on the wire
before the reply to any later request; nothing here sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import pika
import pika.exceptions
import pytest
from helpers.amqp_client import AmqpClient, open_client
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import header as pamqp_header

from amqpy.server.embedded import EmbeddedBroker

TIMEOUT_S = 5.0


# -- helpers -------------------------------------------------------------------


class Received:
    """A pika on_message_callback that records what arrives."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int, bool, bytes]] = []

    def __call__(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.items.append(
            (method.consumer_tag, method.delivery_tag, method.redelivered, body)
        )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def bodies(self) -> list[bytes]:
        return [item[3] for item in self.items]

    @property
    def tags(self) -> list[int]:
        return [item[1] for item in self.items]

    def by_consumer(self, consumer_tag: str) -> list[bytes]:
        return [item[3] for item in self.items if item[0] == consumer_tag]


def bodies(count: int, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


def fill(channel: Any, queue: str, count: int, prefix: str = "m") -> list[bytes]:
    """Declare `queue` and publish `count` messages to it; returns the bodies."""
    channel.queue_declare(queue)
    sent = bodies(count, prefix)
    for body in sent:
        channel.basic_publish("", queue, body)
    ready_count(channel, queue)  # the publishes are routed before this answer
    return sent


def ready_count(channel: Any, queue: str) -> int:
    """Ready messages (a barrier too: see the module docstring)."""
    return channel.queue_declare(queue, passive=True).method.message_count


def settle(connection: Any, channel: Any, queue: str) -> int:
    """Barrier, then run the callbacks of what arrived; ready messages left."""
    count = ready_count(channel, queue)
    connection.process_data_events(time_limit=0)
    return count


def pump(connection: Any, done: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
    """Process pika events until `done()` (or fail at the deadline)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        connection.process_data_events(time_limit=0.02)


def wait_until(done: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def drain_queue(channel: Any, queue: str) -> list[tuple[bytes, bool]]:
    """basic.get (auto-ack) everything ready: (body, redelivered) in order."""
    got = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((body, method.redelivered))


def raw_client(broker: EmbeddedBroker, **options: Any) -> AmqpClient:
    client = open_client(broker.port, **options)
    client.open_channel(1)
    return client


def raw_declare(client: AmqpClient, queue: str, channel: int = 1) -> None:
    client.send_method(channel, commands.Queue.Declare(queue=queue))
    client.expect(commands.Queue.DeclareOk, channel)


def raw_consume(
    client: AmqpClient, queue: str, tag: str = "", channel: int = 1, **flags: Any
) -> str:
    client.send_method(
        channel, commands.Basic.Consume(queue=queue, consumer_tag=tag, **flags)
    )
    return client.expect(commands.Basic.ConsumeOk, channel).consumer_tag


def read_content(client: AmqpClient, channel: int | None = 1) -> tuple[Any, bytes]:
    """A content-bearing method (deliver, get-ok, return) and its body."""
    frame = client.read()
    assert channel is None or frame.channel == channel, frame
    method = frame.value
    header = client.expect(pamqp_header.ContentHeader, frame.channel)
    body = b""
    while len(body) < header.body_size:
        body += client.read().value.value
    return method, body


# -- basic.consume -------------------------------------------------------------


def test_server_generates_amq_ctag_consumer_tags(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        raw_declare(client, "q")
        first = raw_consume(client, "q")
        second = raw_consume(client, "q")
        assert re.fullmatch(r"amq\.ctag-[A-Za-z0-9_-]{22}", first)
        assert re.fullmatch(r"amq\.ctag-[A-Za-z0-9_-]{22}", second)
        assert first != second
        # Client-chosen tags are echoed, including ones that look generated.
        assert raw_consume(client, "q", "amq.ctag-foo") == "amq.ctag-foo"
        assert raw_consume(client, "q", "t" * 255) == "t" * 255


def test_reusing_a_consumer_tag_closes_the_connection(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        raw_declare(client, "q")
        raw_declare(client, "other")
        client.open_channel(2)
        assert raw_consume(client, "q", "dup") == "dup"
        assert raw_consume(client, "q", "dup", channel=2) == "dup"  # fine elsewhere
        client.send_method(1, commands.Basic.Consume(queue="other", consumer_tag="dup"))
        assert client.expect_connection_close() == (
            530,
            "NOT_ALLOWED - attempt to reuse consumer tag 'dup'",
            60,
            20,
        )
        client.wait_closed()


def test_exclusive_consume_refused_while_the_queue_has_a_consumer(
    connect: Callable[..., Any],
) -> None:
    connection = connect()
    first = connection.channel()
    first.queue_declare("q9r")
    first.basic_consume("q9r", Received())
    other = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        other.basic_consume("q9r", Received(), exclusive=True)
    assert error.value.reply_code == 403
    assert error.value.reply_text == (
        "ACCESS_REFUSED - queue 'q9r' in vhost '/' in exclusive use"
    )
    assert first.is_open


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("where", ["same connection", "other connection"])
def test_no_consumer_may_join_an_exclusive_consumer(
    connect: Callable[..., Any], exclusive: bool, where: str
) -> None:
    connection = connect()
    owner = connection.channel()
    owner.queue_declare("q9r")
    owner.basic_consume("q9r", Received(), exclusive=True)
    second = (connection if where == "same connection" else connect()).channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        second.basic_consume("q9r", Received(), exclusive=exclusive)
    assert error.value.reply_code == 403
    assert error.value.reply_text == (
        "ACCESS_REFUSED - queue 'q9r' in vhost '/' in exclusive use"
    )


def test_exclusive_consumer_gets_everything(
    connect: Callable[..., Any], channel: Any
) -> None:
    connection = connect()
    consumer = connection.channel()
    consumer.queue_declare("q")
    received = Received()
    consumer.basic_consume("q", received, exclusive=True)
    sent = fill(channel, "q", 5)
    pump(connection, lambda: len(received) == 5)
    assert received.bodies == sent


def test_consume_on_a_missing_queue_is_404(channel: Any) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        channel.basic_consume("nosuchq", Received())
    assert error.value.reply_code == 404
    assert error.value.reply_text == "NOT_FOUND - no queue 'nosuchq' in vhost '/'"


def test_cancel_stops_deliveries(connect: Callable[..., Any]) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("q")
    received = Received()
    tag = channel.basic_consume("q", received, auto_ack=True)
    channel.basic_publish("", "q", b"before")
    pump(connection, lambda: len(received) == 1)
    channel.basic_cancel(tag)
    channel.basic_publish("", "q", b"after")
    assert settle(connection, channel, "q") == 1
    assert received.bodies == [b"before"]
    assert drain_queue(channel, "q") == [(b"after", False)]


def test_unacked_messages_stay_ackable_after_cancel(
    connect: Callable[..., Any],
) -> None:
    connection = connect()
    channel = connection.channel()
    fill(channel, "q", 2)
    received = Received()
    tag = channel.basic_consume("q", received)
    pump(connection, lambda: len(received) == 2)
    channel.basic_cancel(tag)
    channel.basic_ack(0, multiple=True)
    assert ready_count(channel, "q") == 0
    channel.close()  # nothing left to requeue
    assert ready_count(connection.channel(), "q") == 0


def test_cancel_of_an_unknown_tag_is_answered(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        client.send_method(1, commands.Basic.Cancel(consumer_tag="never"))
        assert client.expect(commands.Basic.CancelOk, 1).consumer_tag == "never"
        # With nowait nothing comes back: the next frame answers the qos.
        client.send_method(1, commands.Basic.Cancel(consumer_tag="x", nowait=True))
        client.send_method(1, commands.Basic.Qos(prefetch_count=1))
        client.expect(commands.Basic.QosOk, 1)


def test_deleting_a_queue_cancels_its_consumers_first(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        client.open_channel(2)
        raw_declare(client, "q11")
        raw_consume(client, "q11", "c11")
        client.send_method(2, commands.Queue.Delete(queue="q11"))
        cancel = client.read()
        assert cancel.channel == 1
        assert isinstance(cancel.value, commands.Basic.Cancel)
        assert (cancel.value.consumer_tag, cancel.value.nowait) == ("c11", True)
        assert client.expect(commands.Queue.DeleteOk, 2).message_count == 0


def test_no_cancel_notification_without_the_client_capability(
    broker: EmbeddedBroker,
) -> None:
    with raw_client(broker, capabilities={}) as client:
        client.open_channel(2)
        raw_declare(client, "q11")
        raw_consume(client, "q11", "c11")
        client.send_method(2, commands.Queue.Delete(queue="q11"))
        client.expect(commands.Queue.DeleteOk, 2)


def test_no_ack_consumer_settles_on_delivery(
    connect: Callable[..., Any], channel: Any
) -> None:
    connection = connect()
    consumer = connection.channel()
    consumer.basic_qos(prefetch_count=1)  # no effect on no-ack consumers
    consumer.queue_declare("q")
    received = Received()
    consumer.basic_consume("q", received, auto_ack=True)
    sent = fill(channel, "q", 10)
    pump(connection, lambda: len(received) == 10)
    assert received.bodies == sent
    consumer.close()  # nothing was unacked, so nothing comes back
    assert ready_count(channel, "q") == 0


def test_acking_a_no_ack_delivery_is_an_unknown_tag(
    connect: Callable[..., Any],
) -> None:
    connection = connect()
    channel = connection.channel()
    fill(channel, "q", 1)
    received = Received()
    channel.basic_consume("q", received, auto_ack=True)
    pump(connection, lambda: len(received) == 1)
    channel.basic_ack(received.tags[0])
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        ready_count(channel, "q")
    assert error.value.reply_code == 406
    assert error.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"


def test_round_robin_across_consumers(
    connect: Callable[..., Any], channel: Any
) -> None:
    channel.queue_declare("q")
    connection = connect()
    first, second = connection.channel(), connection.channel()
    received = Received()
    first.basic_consume("q", received, auto_ack=True, consumer_tag="a")
    second.basic_consume("q", received, auto_ack=True, consumer_tag="b")
    other_connection = connect()
    third = other_connection.channel()
    third_received = Received()
    third.basic_consume("q", third_received, auto_ack=True, consumer_tag="c")
    sent = fill(channel, "q", 9)
    pump(connection, lambda: len(received) == 6)
    pump(other_connection, lambda: len(third_received) == 3)
    assert received.by_consumer("a") == [sent[0], sent[3], sent[6]]
    assert received.by_consumer("b") == [sent[1], sent[4], sent[7]]
    assert third_received.bodies == [sent[2], sent[5], sent[8]]


# -- prefetch ------------------------------------------------------------------


@pytest.fixture
def two_full_queues(channel: Any) -> tuple[list[bytes], list[bytes]]:
    """qa and qb with 6 messages each (the oracle's qos scenarios)."""
    return fill(channel, "qa", 6, "a"), fill(channel, "qb", 6, "b")


def test_per_consumer_prefetch(
    connect: Callable[..., Any], two_full_queues: Any
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=2)
    received = Received()
    channel.basic_consume("qa", received, consumer_tag="A")
    channel.basic_consume("qb", received, consumer_tag="B")
    assert settle(connection, channel, "qa") == 4
    assert received.by_consumer("A") == [b"a0", b"a1"]
    assert received.by_consumer("B") == [b"b0", b"b1"]
    channel.basic_ack(received.tags[0])  # frees one of A's slots only
    assert settle(connection, channel, "qa") == 3
    assert received.by_consumer("A") == [b"a0", b"a1", b"a2"]
    assert len(received.by_consumer("B")) == 2
    assert ready_count(channel, "qb") == 4


def test_per_consumer_prefetch_applies_to_later_consumers_only(
    connect: Callable[..., Any], two_full_queues: Any
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    received = Received()
    channel.basic_consume("qa", received, consumer_tag="A")
    channel.basic_qos(prefetch_count=4)
    assert settle(connection, channel, "qa") == 5
    assert len(received.by_consumer("A")) == 1  # raising it gave A nothing
    channel.basic_consume("qb", received, consumer_tag="late")
    assert settle(connection, channel, "qb") == 2
    assert len(received.by_consumer("late")) == 4
    assert len(received.by_consumer("A")) == 1


def test_global_prefetch_is_shared_by_the_channel(
    connect: Callable[..., Any], two_full_queues: Any
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=3, global_qos=True)
    received = Received()
    channel.basic_consume("qa", received, consumer_tag="A")
    channel.basic_consume("qb", received, consumer_tag="B")
    settle(connection, channel, "qa")
    assert received.by_consumer("A") == [b"a0", b"a1", b"a2"]
    assert received.by_consumer("B") == []
    channel.basic_ack(received.tags[0])
    settle(connection, channel, "qa")
    assert len(received) == 4
    channel.basic_qos(prefetch_count=6, global_qos=True)  # raised: applies now
    settle(connection, channel, "qa")
    assert len(received) == 7


def test_per_consumer_and_global_prefetch_both_apply(
    connect: Callable[..., Any], two_full_queues: Any
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=2)
    channel.basic_qos(prefetch_count=3, global_qos=True)
    received = Received()
    channel.basic_consume("qa", received, consumer_tag="A")
    channel.basic_consume("qb", received, consumer_tag="B")
    settle(connection, channel, "qa")
    assert (len(received.by_consumer("A")), len(received.by_consumer("B"))) == (2, 1)


def test_per_consumer_qos_after_global_qos_lifts_the_channel_limit(
    connect: Callable[..., Any], two_full_queues: Any
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=3, global_qos=True)
    channel.basic_qos(prefetch_count=2)
    received = Received()
    channel.basic_consume("qa", received, consumer_tag="A")
    channel.basic_consume("qb", received, consumer_tag="B")
    settle(connection, channel, "qa")
    assert (len(received.by_consumer("A")), len(received.by_consumer("B"))) == (2, 2)


def test_basic_get_ignores_prefetch_and_takes_no_prefetch_slot(
    connect: Callable[..., Any], two_full_queues: Any
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    channel.basic_qos(prefetch_count=2, global_qos=True)
    got = [channel.basic_get("qa")[2] for _ in range(3)]
    assert got == [b"a0", b"a1", b"a2"]
    received = Received()
    channel.basic_consume("qb", received)
    settle(connection, channel, "qb")
    assert received.bodies == [b"b0"]  # the per-consumer limit of 1


def test_prefetch_size_is_not_implemented(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        client.send_method(1, commands.Basic.Qos(prefetch_size=1000))
        assert client.expect_connection_close() == (
            540,
            "NOT_IMPLEMENTED - prefetch_size!=0 (1000)",
            60,
            10,
        )


def test_prefetch_size_closes_a_pika_connection(
    connect: Callable[..., Any],
) -> None:
    channel = connect().channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as error:
        channel.basic_qos(prefetch_size=5, prefetch_count=1)
    assert error.value.reply_code == 540
    assert error.value.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (5)"


def test_prefetch_one_with_a_select_connection_acking_later(
    broker: EmbeddedBroker, channel: Any
) -> None:
    """An asynchronous consumer that acks a moment after each delivery never
    has more than one message outstanding, and gets them all in order."""
    sent = fill(channel, "q", 30)
    received: list[bytes] = []
    outstanding: list[int] = []
    most_outstanding = 0
    failures: list[str] = []
    parameters = pika.ConnectionParameters("127.0.0.1", broker.port)

    def on_open(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(consumer: Any) -> None:
        consumer.basic_qos(
            prefetch_count=1,
            callback=lambda _frame: consumer.basic_consume("q", on_message),
        )

    def on_message(consumer: Any, method: Any, properties: Any, body: bytes) -> None:
        nonlocal most_outstanding
        received.append(body)
        outstanding.append(method.delivery_tag)
        most_outstanding = max(most_outstanding, len(outstanding))
        tag = method.delivery_tag
        connection.ioloop.call_later(0.002, lambda: ack(consumer, tag))

    def ack(consumer: Any, tag: int) -> None:
        outstanding.remove(tag)
        consumer.basic_ack(tag)
        if len(received) == len(sent) and not outstanding:
            connection.close()

    def give_up() -> None:
        failures.append("timed out")
        connection.close()

    connection = pika.SelectConnection(
        parameters,
        on_open_callback=on_open,
        on_open_error_callback=lambda _c, error: failures.append(repr(error)),
        on_close_callback=lambda _c, _reason: connection.ioloop.stop(),
    )
    connection.ioloop.call_later(TIMEOUT_S, give_up)
    connection.ioloop.start()
    assert failures == []
    assert received == sent
    assert most_outstanding == 1
    assert ready_count(channel, "q") == 0


# -- acknowledgements ----------------------------------------------------------


def test_ack_nack_reject_single_and_multiple(connect: Callable[..., Any]) -> None:
    connection = connect()
    channel = connection.channel()
    sent = fill(channel, "q", 6)
    received = Received()
    channel.basic_consume("q", received)
    pump(connection, lambda: len(received) == 6)
    assert received.tags == [1, 2, 3, 4, 5, 6]
    channel.basic_ack(2, multiple=True)  # m0, m1
    channel.basic_reject(3, requeue=False)  # m2 is dropped
    channel.basic_nack(5, multiple=True, requeue=True)  # m3, m4 come straight back
    pump(connection, lambda: len(received) == 8)
    assert received.items[6:] == [
        (received.items[0][0], 7, True, sent[3]),
        (received.items[0][0], 8, True, sent[4]),
    ]
    channel.basic_nack(7, requeue=False)  # m3 dropped
    channel.basic_ack(0, multiple=True)  # m5 and m4
    assert ready_count(channel, "q") == 0
    channel.close()  # nothing unacked is left to come back
    assert ready_count(connection.channel(), "q") == 0


def test_ack_tag_zero_multiple_with_nothing_outstanding_is_fine(
    channel: Any,
) -> None:
    channel.queue_declare("q")
    channel.basic_ack(0, multiple=True)
    channel.basic_nack(0, multiple=True, requeue=True)
    assert ready_count(channel, "q") == 0
    assert channel.is_open


def test_requeued_messages_return_in_original_order(channel: Any) -> None:
    sent = fill(channel, "q", 5)
    tags = [channel.basic_get("q")[0].delivery_tag for _ in range(3)]  # m0..m2
    assert tags == [1, 2, 3]
    channel.basic_nack(3, requeue=True)  # m2
    channel.basic_reject(1, requeue=True)  # m0
    channel.basic_ack(2)  # m1
    assert drain_queue(channel, "q") == [
        (sent[0], True),
        (sent[2], True),
        (sent[3], False),
        (sent[4], False),
    ]


@pytest.mark.parametrize(
    "settle_twice",
    [
        lambda channel: channel.basic_ack(1),
        lambda channel: channel.basic_nack(1),
        lambda channel: channel.basic_reject(1, requeue=False),
    ],
    ids=["ack", "nack", "reject"],
)
def test_double_settlement_is_an_unknown_tag(
    channel: Any, settle_twice: Callable[[Any], None]
) -> None:
    fill(channel, "q", 2)
    channel.basic_get("q")
    channel.basic_ack(1)
    settle_twice(channel)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        ready_count(channel, "q")
    assert error.value.reply_code == 406
    assert error.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"


@pytest.mark.parametrize(
    ("method", "ids", "tag"),
    [
        (commands.Basic.Ack(delivery_tag=99), (60, 80), 99),
        (commands.Basic.Ack(delivery_tag=0), (60, 80), 0),
        (commands.Basic.Ack(delivery_tag=5, multiple=True), (60, 80), 5),
        (commands.Basic.Nack(delivery_tag=77), (60, 120), 77),
        (commands.Basic.Reject(delivery_tag=77), (60, 90), 77),
    ],
    ids=["ack", "ack-0", "ack-multiple-beyond", "nack", "reject"],
)
def test_unknown_delivery_tag_closes_the_channel(
    broker: EmbeddedBroker, method: Any, ids: tuple[int, int], tag: int
) -> None:
    with raw_client(broker) as client:
        client.open_channel(2)
        raw_declare(client, "q")
        client.publish(1, b"x", routing_key="q")
        client.send_method(1, commands.Basic.Get(queue="q"))
        get_ok, _ = read_content(client)
        assert get_ok.delivery_tag == 1
        client.send_method(1, method)
        assert client.expect_channel_close(1) == (
            406,
            f"PRECONDITION_FAILED - unknown delivery tag {tag}",
            *ids,
        )
        # Only the channel: the connection goes on, and the message is back.
        client.send_method(2, commands.Queue.Declare(queue="q", passive=True))
        assert client.expect(commands.Queue.DeclareOk, 2).message_count == 1


def test_channel_closed_by_an_error_requeues_its_unacked(
    connect: Callable[..., Any],
) -> None:
    connection = connect()
    channel = connection.channel()
    sent = fill(channel, "q", 3)
    received = Received()
    channel.basic_consume("q", received)
    pump(connection, lambda: len(received) == 3)
    channel.basic_ack(99)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ready_count(channel, "q")
    assert drain_queue(connection.channel(), "q") == [(body, True) for body in sent]


# -- basic.get -----------------------------------------------------------------


def test_basic_get_message_count_is_what_remains(channel: Any) -> None:
    sent = fill(channel, "q", 3)
    counts = []
    for expected in sent:
        method, _, body = channel.basic_get("q")
        assert body == expected
        assert method.redelivered is False
        counts.append(method.message_count)
    assert counts == [2, 1, 0]  # the three unacked ones are not counted
    assert channel.basic_get("q") == (None, None, None)
    assert ready_count(channel, "q") == 0


def test_get_empty_frame(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        raw_declare(client, "q")
        client.send_method(1, commands.Basic.Get(queue="q"))
        frame = client.read()
        assert isinstance(frame.value, commands.Basic.GetEmpty)
        assert frame.raw == bytes.fromhex("01000100000005003c004800ce")


def test_basic_get_on_a_missing_queue_is_404(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        client.send_method(1, commands.Basic.Get(queue="nosuchq"))
        assert client.expect_channel_close(1) == (
            404,
            "NOT_FOUND - no queue 'nosuchq' in vhost '/'",
            60,
            70,
        )


def test_basic_get_no_ack_removes_the_message(channel: Any) -> None:
    fill(channel, "q", 1)
    _, _, body = channel.basic_get("q", auto_ack=True)
    assert body == b"m0"
    channel.close()
    # Nothing to requeue.
    assert ready_count(channel.connection.channel(), "q") == 0


# -- basic.recover -------------------------------------------------------------


def test_recover_requeue_redelivers_with_new_tags(connect: Callable[..., Any]) -> None:
    connection = connect()
    channel = connection.channel()
    sent = fill(channel, "q", 3)
    received = Received()
    channel.basic_consume("q", received)
    pump(connection, lambda: len(received) == 3)
    channel.basic_ack(2)
    channel.basic_recover(requeue=True)
    pump(connection, lambda: len(received) == 5)
    assert [item[1:] for item in received.items[3:]] == [
        (4, True, sent[0]),
        (5, True, sent[2]),
    ]


def test_recover_puts_basic_get_messages_back(channel: Any) -> None:
    sent = fill(channel, "q", 2)
    channel.basic_get("q")
    channel.basic_recover(requeue=True)
    method, _, body = channel.basic_get("q")
    assert (body, method.redelivered, method.delivery_tag) == (sent[0], True, 2)


def test_recover_without_requeue_is_not_implemented(
    connect: Callable[..., Any],
) -> None:
    channel = connect().channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as error:
        channel.basic_recover(requeue=False)
    assert error.value.reply_code == 540
    assert error.value.reply_text == "NOT_IMPLEMENTED - requeue=false"


@pytest.mark.filterwarnings("ignore:This command is deprecated:DeprecationWarning")
def test_recover_async(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        raw_declare(client, "q")
        client.publish(1, b"x", routing_key="q")
        raw_consume(client, "q", "c")
        deliver, body = read_content(client)
        assert (deliver.delivery_tag, deliver.redelivered, body) == (1, False, b"x")
        client.send_method(1, commands.Basic.RecoverAsync(requeue=True))
        deliver, body = read_content(client)  # no reply, just the redelivery
        assert (deliver.delivery_tag, deliver.redelivered, body) == (2, True, b"x")
        client.send_method(1, commands.Basic.RecoverAsync(requeue=False))
        assert client.expect_connection_close() == (
            540,
            "NOT_IMPLEMENTED - requeue=false",
            60,
            100,
        )


# -- requeue when a consumer goes away -----------------------------------------


def test_closing_a_channel_requeues_its_unacked_in_order(
    connect: Callable[..., Any],
) -> None:
    connection = connect()
    consumer = connection.channel()
    sent = fill(consumer, "q", 6)
    received = Received()
    consumer.basic_consume("q", received)
    pump(connection, lambda: len(received) == 6)
    consumer.basic_ack(2)
    consumer.close()
    assert drain_queue(connection.channel(), "q") == [
        (body, True) for body in sent if body != sent[1]
    ]


def test_requeued_messages_go_to_the_remaining_consumer_in_order(
    connect: Callable[..., Any],
) -> None:
    connection = connect()
    leaving = connection.channel()
    sent = fill(leaving, "q", 4)
    leaving_received = Received()
    leaving.basic_consume("q", leaving_received)
    pump(connection, lambda: len(leaving_received) == 4)
    staying_connection = connect()
    staying = staying_connection.channel()
    received = Received()
    staying.basic_consume("q", received)
    leaving.close()
    pump(staying_connection, lambda: len(received) == 4)
    assert [(item[2], item[3]) for item in received.items] == [
        (True, body) for body in sent
    ]


def test_a_connection_error_sends_no_deliveries_before_its_close(
    broker: EmbeddedBroker, channel: Any
) -> None:
    """Unacked messages of a connection closed by the broker go back to the
    queue, not to its other channels: connection.close is the next frame."""
    sent = fill(channel, "q", 3)
    with raw_client(broker) as client:
        client.open_channel(2)
        raw_consume(client, "q", "holder")
        for body in sent:
            deliver, got = read_content(client)
            assert (deliver.consumer_tag, got) == ("holder", body)
        raw_consume(client, "q", "idle", channel=2)  # room, but nothing ready
        client.send_method(1, commands.Basic.Qos(prefetch_size=1))
        assert client.expect_connection_close()[0] == 540
        client.wait_closed()
    wait_until(lambda: ready_count(channel, "q") == 3)
    assert drain_queue(channel, "q") == [(body, True) for body in sent]


def test_closing_a_connection_requeues_its_unacked_in_order(
    connect: Callable[..., Any], channel: Any
) -> None:
    sent = fill(channel, "q", 5)
    connection = connect()
    consumer = connection.channel()
    consumer.basic_qos(prefetch_count=3)
    received = Received()
    consumer.basic_consume("q", received)
    second = connection.channel()
    got = [second.basic_get("q")[2] for _ in range(2)]  # two taken by get
    pump(connection, lambda: len(received) + len(got) == 5)
    connection.close()
    wait_until(lambda: ready_count(channel, "q") == 5)
    assert drain_queue(channel, "q") == [(body, True) for body in sent]


def test_a_dropped_socket_requeues_its_unacked_in_order(
    broker: EmbeddedBroker, channel: Any
) -> None:
    sent = fill(channel, "q", 5)
    client = raw_client(broker)
    client.open_channel(2)
    client.send_method(1, commands.Basic.Qos(prefetch_count=2))
    client.expect(commands.Basic.QosOk, 1)
    for channel_id in (1, 2):  # two channels on the same queue
        client.send_method(channel_id, commands.Basic.Consume(queue="q"))
    delivered: dict[int, list[bytes]] = {1: [], 2: []}
    consume_oks = 0
    while consume_oks < 2 or sum(map(len, delivered.values())) < len(sent):
        frame = client.read()
        if isinstance(frame.value, commands.Basic.ConsumeOk):
            consume_oks += 1
            continue
        assert isinstance(frame.value, commands.Basic.Deliver), frame
        header = client.expect(pamqp_header.ContentHeader, frame.channel)
        body = client.expect(pamqp_body.ContentBody, frame.channel).value
        assert len(body) == header.body_size
        delivered[frame.channel].append(body)
    assert delivered == {1: sent[:2], 2: sent[2:]}
    # Reset the connection: no close handshake at all.
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    wait_until(lambda: ready_count(channel, "q") == 5)
    assert drain_queue(channel, "q") == [(body, True) for body in sent]


# -- publisher confirms --------------------------------------------------------


def test_pika_confirms(channel: Any) -> None:
    channel.queue_declare("q")
    channel.confirm_delivery()
    for body in bodies(10):
        channel.basic_publish("", "q", body)  # raises on nack or return
    channel.basic_publish("", "nowhere", b"unroutable, not mandatory")
    with pytest.raises(pika.exceptions.UnroutableError) as error:
        channel.basic_publish("", "nowhere", b"returned", mandatory=True)
    returned = error.value.messages[0]
    assert returned.body == b"returned"
    assert (returned.method.reply_code, returned.method.reply_text) == (312, "NO_ROUTE")
    assert ready_count(channel, "q") == 10


def test_confirms_on_the_wire(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        raw_declare(client, "q")
        client.send_method(1, commands.Confirm.Select())
        client.expect(commands.Confirm.SelectOk, 1)
        for body in bodies(5):
            client.publish(1, body, routing_key="q")
        confirmed: set[int] = set()
        while len(confirmed) < 5:
            ack = client.expect(commands.Basic.Ack, 1)
            tags = (
                range(1, ack.delivery_tag + 1) if ack.multiple else [ack.delivery_tag]
            )
            confirmed.update(tags)
        assert confirmed == {1, 2, 3, 4, 5}
        # Unroutable and mandatory: the return comes before the ack.
        client.publish(
            1, b"back", exchange="amq.direct", routing_key="x", mandatory=True
        )
        returned, body = read_content(client)
        assert isinstance(returned, commands.Basic.Return)
        assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")
        assert (returned.exchange, returned.routing_key, body) == (
            "amq.direct",
            "x",
            b"back",
        )
        ack = client.expect(commands.Basic.Ack, 1)
        assert (ack.delivery_tag, ack.multiple) == (6, False)


def test_confirm_select_nowait_and_twice(broker: EmbeddedBroker) -> None:
    with raw_client(broker) as client:
        client.send_method(1, commands.Confirm.Select(nowait=True))
        client.send_method(1, commands.Confirm.Select())
        client.expect(commands.Confirm.SelectOk, 1)
        client.publish(1, b"x", routing_key="nowhere")
        ack = client.expect(commands.Basic.Ack, 1)
        assert ack.delivery_tag == 1


def test_aio_pika_default_channel_confirms(broker: EmbeddedBroker) -> None:
    async def main() -> None:
        async with asyncio.timeout(TIMEOUT_S * 2):
            connection = await aio_pika.connect(broker.url)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue("q")
                confirmations = await asyncio.gather(
                    *(
                        channel.default_exchange.publish(
                            aio_pika.Message(body), routing_key="q"
                        )
                        for body in bodies(50)
                    )
                )
                assert all(isinstance(c, aiormq.spec.Basic.Ack) for c in confirmations)
                assert queue.declaration_result.message_count == 0
                declared = await channel.declare_queue("q", passive=True)
                assert declared.declaration_result.message_count == 50

                strict = await connection.channel(on_return_raises=True)
                with pytest.raises(aiormq.exceptions.PublishError):
                    await strict.default_exchange.publish(
                        aio_pika.Message(b"nowhere"), routing_key="nowhere"
                    )

    asyncio.run(main())


def test_aio_pika_consumer_acks(broker: EmbeddedBroker) -> None:
    async def main() -> list[bytes]:
        async with asyncio.timeout(TIMEOUT_S * 2):
            connection = await aio_pika.connect(broker.url)
            async with connection:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=3)
                queue = await channel.declare_queue("q")
                for body in bodies(20):
                    await channel.default_exchange.publish(
                        aio_pika.Message(body), routing_key="q"
                    )
                got = []
                async with queue.iterator() as messages:
                    async for message in messages:
                        got.append(message.body)
                        await message.ack()
                        if len(got) == 20:
                            break
                declared = await channel.declare_queue("q", passive=True)
                assert declared.declaration_result.message_count == 0
                return got

    assert asyncio.run(main()) == bodies(20)


# -- message size limit --------------------------------------------------------


def test_max_message_size(make_broker: Callable[..., EmbeddedBroker]) -> None:
    broker = make_broker(limits={"max_message_size": 1000})
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.port)
    )
    try:
        channel = connection.channel()
        channel.queue_declare("q")
        channel.basic_publish("", "q", b"x" * 1000)
        assert ready_count(channel, "q") == 1
        channel.basic_publish("", "q", b"x" * 1001)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            ready_count(channel, "q")
        assert error.value.reply_code == 406
        assert error.value.reply_text == (
            "PRECONDITION_FAILED - message size 1001 is larger than configured "
            "max size 1000"
        )
        assert connection.is_open  # a channel error only
        assert ready_count(connection.channel(), "q") == 1
    finally:
        connection.close()


def test_max_message_size_on_the_wire(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(limits={"max_message_size": 1000})
    with raw_client(broker) as client:
        client.publish(1, b"x" * 5000, routing_key="q")
        assert client.expect_channel_close(1) == (
            406,
            "PRECONDITION_FAILED - message size 5000 is larger than configured "
            "max size 1000",
            60,
            40,
        )


# -- consume arguments ---------------------------------------------------------


def test_invalid_x_priority_is_refused(channel: Any) -> None:
    channel.queue_declare("q9")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        channel.basic_consume("q9", Received(), arguments={"x-priority": "abc"})
    assert error.value.reply_code == 406
    assert error.value.reply_text == (
        "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'q9' in vhost '/': "
        '"expected integer, got longstr"'
    )


def test_unknown_consume_arguments_are_accepted(channel: Any) -> None:
    channel.queue_declare("q9")
    channel.basic_consume("q9", Received(), arguments={"x-foo": "bar"})
    assert channel.is_open


def test_single_active_consumer_hands_over_when_the_active_channel_closes(
    broker: EmbeddedBroker,
) -> None:
    """aio-pika closes a channel with channel.close alone (no basic.cancel
    first): the active consumer's requeued message goes to the next consumer
    at once, as RabbitMQ does (found by the interop suite)."""

    async def main() -> tuple[bytes, bool]:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            setup = await connection.channel()
            await setup.declare_queue(
                "sac", arguments={"x-single-active-consumer": True}
            )
            active, waiting = await connection.channel(), await connection.channel()
            got_active: asyncio.Queue[Any] = asyncio.Queue()
            got_waiting: asyncio.Queue[Any] = asyncio.Queue()
            await (await active.get_queue("sac")).consume(got_active.put)
            await (await waiting.get_queue("sac")).consume(got_waiting.put)
            await setup.default_exchange.publish(aio_pika.Message(b"m0"), "sac")
            await asyncio.wait_for(got_active.get(), 5)
            await active.close()  # the message was unacked: requeued
            message = await asyncio.wait_for(got_waiting.get(), 5)
            return message.body, message.redelivered

    assert asyncio.run(main()) == (b"m0", True)
