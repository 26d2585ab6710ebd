"""Queue features and durability, through every client that can express them.

TTL with dead-lettering, max-length (drop-head and reject-publish), priority
queues; and what survives a broker restart (run when the suite can restart the
broker: its own amqpy, or --broker-restart-command).
"""

from __future__ import annotations

import pytest

from interop.base import Props, require
from interop.clients import PikaAdapter
from interop.helpers import death_of, expect, poll_get

pytestmark = pytest.mark.timeout(60)

# A restart of RabbitMQ (run_rabbitmq.sh restart) takes ~20 s, and minutes on
# a loaded machine; the command bounds itself (RESTART_TIMEOUT_S in conftest).
restarts = pytest.mark.timeout(400)


def test_ttl_dead_letter(client, broker_url, names) -> None:
    """A queue's x-message-ttl and a message's expiration both dead-letter
    the message to x-dead-letter-exchange, with an x-death header."""
    require(client, "arguments", "exchanges", "props")
    dlx, dead_q = names.exchange("dlx"), names.queue("dead")
    queue_ttl, message_ttl = names.queue("queue-ttl"), names.queue("message-ttl")
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        channel.declare_exchange(dlx, "fanout")
        channel.declare_queue(dead_q)
        channel.bind_queue(dead_q, dlx)
        channel.declare_queue(
            queue_ttl,
            arguments={"x-message-ttl": 50, "x-dead-letter-exchange": dlx},
        )
        channel.declare_queue(message_ttl, arguments={"x-dead-letter-exchange": dlx})
        channel.publish("", queue_ttl, b"queue-ttl", Props(headers={"x-n": 1}))
        channel.publish("", message_ttl, b"message-ttl", Props(expiration="20"))

        channel.consume(dead_q, auto_ack=False)
        got = {}
        for _ in range(2):
            delivery = expect(channel)
            got[delivery.body] = delivery
            channel.ack(delivery)
        assert set(got) == {b"queue-ttl", b"message-ttl"}

        first = got[b"queue-ttl"]
        assert (first.exchange, first.routing_key) == (dlx, queue_ttl)
        assert first.props.headers.get("x-n") == 1
        dead = death_of(first)
        assert (dead["reason"], dead["queue"], dead["count"]) == (
            "expired",
            queue_ttl,
            1,
        )
        second = got[b"message-ttl"]
        dead = death_of(second)
        assert (dead["reason"], dead["queue"]) == ("expired", message_ttl)
        # The per-message TTL moves to x-death's original-expiration.
        assert dead.get("original-expiration") == "20"
        assert second.props.expiration is None
        assert channel.message_count(queue_ttl) == 0
        assert channel.message_count(message_ttl) == 0
    finally:
        connection.close()


def test_max_length_drop_head(client, broker_url, names) -> None:
    """x-max-length 3: the oldest messages make room; with a dead-letter
    exchange they go there with reason maxlen."""
    require(client, "arguments", "exchanges")
    queue, dlx, dropped = (
        names.queue("bounded"),
        names.exchange("dlx"),
        names.queue("dropped"),
    )
    connection = client.connect(broker_url, confirms="confirms" in client.features)
    try:
        channel = connection.channel()
        channel.declare_exchange(dlx, "fanout")
        channel.declare_queue(dropped)
        channel.bind_queue(dropped, dlx)
        channel.declare_queue(
            queue, arguments={"x-max-length": 3, "x-dead-letter-exchange": dlx}
        )
        for i in range(5):
            channel.publish("", queue, b"m%d" % i)
        assert channel.message_count(queue) == 3
        assert [channel.get(queue).body for _ in range(3)] == [b"m2", b"m3", b"m4"]
        assert channel.get(queue) is None
        heads = [poll_get(channel, dropped) for _ in range(2)]
        assert [d.body for d in heads if d] == [b"m0", b"m1"]
        assert death_of(heads[0])["reason"] == "maxlen"
    finally:
        connection.close()


def test_max_length_reject_publish(client, broker_url, names, raised) -> None:
    """x-overflow reject-publish: a full queue nacks the publish; the client
    with confirms raises, and the queue keeps what it had."""
    require(client, "arguments", "confirms")
    queue = names.queue("full")
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        channel.declare_queue(
            queue, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
        )
        channel.publish("", queue, b"one")
        channel.publish("", queue, b"two")
        with pytest.raises(client.nack_error) as info:
            channel.publish("", queue, b"three")
        raised(info.value)
        # The channel stays usable after a nack.
        assert channel.message_count(queue) == 2
        assert channel.get(queue).body == b"one"
        channel.publish("", queue, b"four")
        assert [channel.get(queue).body for _ in range(2)] == [b"two", b"four"]
    finally:
        connection.close()


def test_priority_queue(client, broker_url, names) -> None:
    """x-max-priority: waiting messages come out highest priority first, in
    publish order within a priority; above the maximum counts as the maximum."""
    require(client, "arguments", "props")
    queue = names.queue("prio")
    connection = client.connect(broker_url, confirms="confirms" in client.features)
    try:
        channel = connection.channel()
        channel.declare_queue(queue, arguments={"x-max-priority": 5})
        for body, priority in (
            (b"none", None),
            (b"low", 1),
            (b"high-a", 5),
            (b"mid", 3),
            (b"high-b", 9),
            (b"zero", 0),
        ):
            channel.publish("", queue, body, Props(priority=priority))
        assert channel.message_count(queue) == 6
        channel.qos(1)
        channel.consume(queue, auto_ack=False)
        order = []
        for _ in range(6):
            delivery = expect(channel)
            order.append(delivery.body)
            channel.ack(delivery)
        assert order == [b"high-a", b"high-b", b"mid", b"low", b"none", b"zero"]
    finally:
        connection.close()


@restarts
def test_persistent_message_survives_restart(client, broker, names) -> None:
    """A durable queue keeps its persistent messages over a restart and
    loses its transient ones."""
    if not broker.can_restart:
        broker.restart()  # skips, saying why
    queue = names.queue("durable")
    connection = client.connect(broker.url, confirms="confirms" in client.features)
    try:
        channel = connection.channel()
        channel.declare_queue(queue, durable=True)
        channel.publish("", queue, b"persistent-1", Props(delivery_mode=2))
        channel.publish("", queue, b"transient", Props(delivery_mode=1))
        channel.publish(
            "", queue, b"persistent-2", Props(delivery_mode=2, content_type="text/x")
        )
    finally:
        connection.close()
    broker.restart()
    connection = client.connect(broker.url)
    try:
        channel = connection.channel()
        got = [channel.get(queue) for _ in range(3)]
        assert [d.body for d in got if d] == [b"persistent-1", b"persistent-2"]
        if "props" in client.features:
            assert got[1].props.delivery_mode == 2
            assert got[1].props.content_type == "text/x"
    finally:
        connection.close()


@restarts
def test_durable_topology_survives_restart(client, broker, names) -> None:
    """Durable exchanges, queues and their bindings come back after a
    restart; transient ones and exclusive queues do not."""
    if not broker.can_restart:
        broker.restart()  # skips, saying why
    require(client, "exchanges", "passive", "exclusive")
    durable_x, transient_x = names.exchange("durable"), names.exchange("transient")
    durable_q, transient_q = names.queue("durable"), names.queue("transient")
    connection = client.connect(broker.url)
    try:
        channel = connection.channel()
        channel.declare_exchange(durable_x, "direct", durable=True)
        channel.declare_exchange(transient_x, "fanout", durable=False)
        channel.declare_queue(durable_q, durable=True)
        channel.declare_queue(transient_q, durable=False)
        channel.bind_queue(durable_q, durable_x, "key")
    finally:
        connection.close()
    broker.restart()
    connection = client.connect(broker.url, confirms="confirms" in client.features)
    try:
        channel = connection.channel()
        channel.publish(durable_x, "key", b"routed")
        delivery = poll_get(channel, durable_q)
        assert delivery is not None and delivery.body == b"routed"
        with pytest.raises(client.channel_error) as info:
            channel.declare_queue(transient_q, passive=True)
        assert client.reply_code(info.value) == 404
    finally:
        connection.close()
    # The transient exchange is gone too (asked through pika: a passive
    # exchange declare is not in the adapter interface).
    check = PikaAdapter().connect(broker.url)
    try:
        with pytest.raises(PikaAdapter.channel_error) as info:
            check.native.channel().exchange_declare(transient_x, passive=True)
        assert info.value.reply_code == 404
    finally:
        check.close()
