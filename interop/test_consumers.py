"""Consumers and acknowledgements, through every client that can express
them: basic.reject and basic.nack (requeued: redelivered; not requeued:
dead-lettered or dropped), transactions, direct reply-to, single active
consumer, consumer priorities, basic.qos per consumer and per channel, a
queue's x-expires, and the broker's basic.cancel when a consumed queue is
deleted.
"""

from __future__ import annotations

import time
import uuid

import pytest

from interop.base import Props, require
from interop.helpers import WAIT_S, death_of, expect, poll_get

pytestmark = pytest.mark.timeout(30)

REPLY_TO = "amq.rabbitmq.reply-to"


def _dead_letter_setup(channel, names) -> tuple[str, str]:
    """A queue dead-lettering to a fanout exchange bound to a second queue:
    (queue, dead-letter queue)."""
    dlx, dead = names.exchange("dlx"), names.queue("dead")
    queue = names.queue("work")
    channel.declare_exchange(dlx, "fanout")
    channel.declare_queue(dead)
    channel.bind_queue(dead, dlx)
    channel.declare_queue(queue, arguments={"x-dead-letter-exchange": dlx})
    return queue, dead


def test_reject_requeue_and_dead_letter(client, broker_url, names) -> None:
    """basic.reject with requeue puts the message back at the head of the
    queue and redelivers it flagged redelivered; without requeue it is
    dead-lettered (reason rejected), or dropped where there is no DLX."""
    require(client, "reject", "arguments", "exchanges", "props")
    plain = names.queue("plain")
    connection = client.connect(broker_url)
    try:
        channel = connection.channel()
        queue, dead = _dead_letter_setup(channel, names)
        channel.declare_queue(plain)
        channel.publish("", queue, b"first")
        channel.publish("", queue, b"second")
        channel.publish("", plain, b"dropped")
        channel.qos(1)
        channel.consume(queue, auto_ack=False)

        delivery = expect(channel)
        assert (delivery.body, delivery.redelivered) == (b"first", False)
        channel.reject(delivery, requeue=True)
        again = expect(channel)
        assert (again.body, again.redelivered) == (b"first", True)
        channel.reject(again, requeue=False)
        second = expect(channel)
        assert (second.body, second.redelivered) == (b"second", False)
        channel.ack(second)

        dead_letter = poll_get(channel, dead)
        assert dead_letter is not None and dead_letter.body == b"first"
        entry = death_of(dead_letter)
        assert (entry["reason"], entry["queue"], entry["count"]) == (
            "rejected",
            queue,
            1,
        )
        assert dead_letter.routing_key == queue

        other = connection.channel()
        other.consume(plain, auto_ack=False)
        delivery = expect(other)
        other.reject(delivery, requeue=False)
        # The count is asked on the channel that rejected: after the reject.
        assert other.message_count(plain) == 0
        assert channel.message_count(queue) == 0
    finally:
        connection.close()


def test_nack_requeue_and_dead_letter(client, broker_url, names) -> None:
    """basic.nack with multiple and requeue puts back every message up to
    the tag, in order, redelivered; nack without requeue dead-letters."""
    require(client, "nack", "arguments", "exchanges", "props")
    connection = client.connect(broker_url)
    try:
        channel = connection.channel()
        queue, dead = _dead_letter_setup(channel, names)
        for body in (b"m1", b"m2", b"m3"):
            channel.publish("", queue, body)
        channel.consume(queue, auto_ack=False)
        got = [expect(channel) for _ in range(3)]
        assert [d.body for d in got] == [b"m1", b"m2", b"m3"]

        channel.nack(got[1], requeue=True, multiple=True)  # m1 and m2
        again = [expect(channel) for _ in range(2)]
        assert [(d.body, d.redelivered) for d in again] == [
            (b"m1", True),
            (b"m2", True),
        ]
        channel.nack(again[0], requeue=False)
        channel.ack(again[1])
        channel.ack(got[2])

        dead_letter = poll_get(channel, dead)
        assert dead_letter is not None and dead_letter.body == b"m1"
        assert death_of(dead_letter)["reason"] == "rejected"
        assert channel.message_count(queue) == 0
        assert channel.get(dead) is None
    finally:
        connection.close()


def test_transactions(client, broker_url, names) -> None:
    """tx.select: publishes and acks take effect at tx.commit and are
    discarded by tx.rollback (a rolled-back ack leaves the message unacked,
    so it comes back when the channel closes)."""
    require(client, "tx")
    queue = names.queue("tx")
    connection = client.connect(broker_url)
    try:
        observer = connection.channel()
        observer.declare_queue(queue)
        channel = connection.channel()
        channel.tx_select()
        channel.publish("", queue, b"rolled-back")
        channel.tx_rollback()
        channel.publish("", queue, b"one")
        channel.publish("", queue, b"two")
        assert observer.message_count(queue) == 0
        channel.tx_commit()
        assert observer.message_count(queue) == 2

        channel.consume(queue, auto_ack=False)
        one, two = expect(channel), expect(channel)
        assert (one.body, two.body) == (b"one", b"two")
        channel.ack(one)
        channel.tx_rollback()
        channel.ack(two)
        channel.tx_commit()
        channel.close()
        # "one" was never acked (its ack was rolled back): requeued on close.
        back = poll_get(observer, queue)
        assert back is not None and back.body == b"one"
        assert observer.get(queue) is None
    finally:
        connection.close()


def test_direct_reply_to_rpc(client, broker_url, names, raised) -> None:
    """RPC over amq.rabbitmq.reply-to: the caller consumes the pseudo-queue
    (no-ack) and publishes with reply_to on the same channel; the server
    sees a generated name and replies to it through the default exchange.
    Without that consumer, such a publish closes the channel with 406."""
    require(client, "one_channel", "props")
    requests = names.queue("requests")
    server_conn = client.connect(broker_url)
    client_conn = client.connect(broker_url)
    try:
        server = server_conn.channel()
        server.declare_queue(requests)
        server.consume(requests, auto_ack=False)

        caller = client_conn.channel()
        caller.consume(REPLY_TO, auto_ack=True)
        for n in (3, 12):
            correlation = uuid.uuid4().hex
            caller.publish(
                "",
                requests,
                str(n).encode(),
                Props(reply_to=REPLY_TO, correlation_id=correlation),
            )
            request = expect(server)
            reply_to = request.props.reply_to
            assert reply_to.startswith(REPLY_TO + "."), reply_to
            server.publish(
                "",
                reply_to,
                str(n * n).encode(),
                Props(correlation_id=request.props.correlation_id),
            )
            server.ack(request)
            response = expect(caller)
            assert response.body == str(n * n).encode()
            assert response.props.correlation_id == correlation
            assert (response.exchange, response.routing_key) == ("", reply_to)

        lone = client_conn.channel()
        with pytest.raises(client.channel_error) as info:
            lone.publish("", requests, b"no-consumer", Props(reply_to=REPLY_TO))
            lone.declare_queue(requests)
        raised(info.value)
        assert client.reply_code(info.value) == 406
    finally:
        client_conn.close()
        server_conn.close()


def test_single_active_consumer(client, broker_url, names) -> None:
    """x-single-active-consumer: only the first consumer gets messages; when
    its channel closes, its unacked messages and the rest go to the next."""
    require(client, "arguments", "confirms")
    queue = names.queue("sac")
    connection = client.connect(broker_url, confirms=True)
    try:
        producer = connection.channel()
        producer.declare_queue(queue, arguments={"x-single-active-consumer": True})
        first, second = connection.channel(), connection.channel()
        first.consume(queue, auto_ack=False)
        second.consume(queue, auto_ack=False)
        for i in range(4):
            producer.publish("", queue, b"m%d" % i)
        # Each message goes to one consumer: all four to the active one.
        got = [expect(first) for _ in range(4)]
        assert [d.body for d in got] == [b"m0", b"m1", b"m2", b"m3"]
        first.ack(got[0])
        first.ack(got[1])
        first.close()

        taken_over = [expect(second) for _ in range(2)]
        assert [(d.body, d.redelivered) for d in taken_over] == [
            (b"m2", True),
            (b"m3", True),
        ]
        producer.publish("", queue, b"m4")
        fresh = expect(second)
        assert (fresh.body, fresh.redelivered) == (b"m4", False)
        for delivery in (*taken_over, fresh):
            second.ack(delivery)
    finally:
        connection.close()


def test_consumer_priorities(client, broker_url, names) -> None:
    """x-priority: messages go to the highest-priority consumer while its
    prefetch allows, then to the lower one; an ack makes room again."""
    require(client, "consumer_arguments", "confirms")
    queue = names.queue("prio")
    connection = client.connect(broker_url, confirms=True)
    try:
        producer = connection.channel()
        producer.declare_queue(queue)
        low, high = connection.channel(), connection.channel()
        low.qos(10)
        low.consume(queue, auto_ack=False, arguments={"x-priority": 1})
        high.qos(2)
        high.consume(queue, auto_ack=False, arguments={"x-priority": 10})
        for i in range(5):
            producer.publish("", queue, b"m%d" % i)
        to_high = [expect(high) for _ in range(2)]
        to_low = [expect(low) for _ in range(3)]
        assert [d.body for d in to_high] == [b"m0", b"m1"]
        assert [d.body for d in to_low] == [b"m2", b"m3", b"m4"]

        high.ack(to_high[0])
        # Published on the acking channel, so the broker sees the ack first.
        high.publish("", queue, b"m5")
        assert expect(high).body == b"m5"
        assert producer.message_count(queue) == 0
    finally:
        connection.close()


def test_qos_per_consumer_and_global(client, broker_url, names) -> None:
    """basic.qos global=false limits each consumer; global=true limits all
    the channel's consumers together."""
    require(client, "qos_global", "confirms")
    queues = [names.queue(f"q{i}") for i in range(4)]
    connection = client.connect(broker_url, confirms=True)
    try:
        producer = connection.channel()
        for queue in queues:
            producer.declare_queue(queue)
            for i in range(4):
                producer.publish("", queue, b"m%d" % i)

        per_consumer = connection.channel()
        per_consumer.qos(2)
        per_consumer.consume(queues[0], auto_ack=False)
        per_consumer.consume(queues[1], auto_ack=False)
        got = [expect(per_consumer) for _ in range(4)]
        assert sorted(d.routing_key for d in got) == sorted(queues[:2] * 2)
        assert [producer.message_count(q) for q in queues[:2]] == [2, 2]

        shared = connection.channel()
        shared.qos(3, global_=True)
        shared.consume(queues[2], auto_ack=False)
        shared.consume(queues[3], auto_ack=False)
        got = [expect(shared) for _ in range(3)]
        # Three in flight over both consumers; the other five wait.
        assert sum(producer.message_count(q) for q in queues[2:]) == 5
        shared.ack(got[0])
        expect(shared)
        assert sum(producer.message_count(q) for q in queues[2:]) == 4
    finally:
        connection.close()


EXPIRES_MS = 200


def _gone(channel, queue: str) -> bool:
    """Whether the queue no longer exists, asked with a mandatory publish
    (publishing is no use of the queue, unlike a passive declare, which
    renews x-expires' lease on RabbitMQ)."""
    channel.publish("", queue, b"probe", mandatory=True)
    return bool(channel.returned())


def _wait_gone(channel, queue: str, timeout: float = WAIT_S) -> float:
    """Seconds until the queue is gone (bounded)."""
    start = time.monotonic()
    while not _gone(channel, queue):
        assert time.monotonic() - start < timeout, f"{queue} did not expire"
        time.sleep(0.02)
    return time.monotonic() - start


def test_queue_expires(client, broker_url, names) -> None:
    """x-expires: a queue without consumers is deleted once unused that
    long; a consumer keeps it, and it expires after the consumer leaves."""
    require(client, "arguments", "confirms", "returns")
    used, unused = names.queue("used"), names.queue("unused")
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        consumer = connection.channel()
        channel.declare_queue(used, arguments={"x-expires": EXPIRES_MS})
        consumer.consume(used, auto_ack=True)
        declared = time.monotonic()
        channel.declare_queue(unused, arguments={"x-expires": EXPIRES_MS})
        assert not _gone(channel, unused)
        _wait_gone(channel, unused)
        # Twice the lease has passed since `used` was declared: the consumer
        # kept it.
        time.sleep(max(0.0, declared + 2 * EXPIRES_MS / 1000 - time.monotonic()))
        assert not _gone(channel, used)
        consumer.close()
        assert _wait_gone(channel, used) >= EXPIRES_MS / 1000 * 0.5
    finally:
        connection.close()


def test_consumer_cancel_notification(client, broker_url, names) -> None:
    """Deleting a consumed queue sends the consumer basic.cancel (to clients
    announcing consumer_cancel_notify); the channel stays open."""
    require(client, "cancel_notify")
    queue, after = names.queue("doomed"), names.queue("after")
    connection = client.connect(broker_url)
    # The queue is deleted from another connection: py-amqp raises a
    # basic.cancel from whichever call reads it.
    admin = client.connect(broker_url)
    try:
        channel = connection.channel()
        channel.declare_queue(queue)
        tag = channel.consume(queue, auto_ack=False)
        admin.channel().delete_queue(queue)
        assert channel.next_cancel(WAIT_S) == tag
        channel.declare_queue(after)
        channel.publish("", after, b"still-open")
        delivery = poll_get(channel, after)
        assert delivery is not None and delivery.body == b"still-open"
    finally:
        admin.close()
        connection.close()
