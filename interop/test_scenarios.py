"""Scenarios written once, run through every client adapter (interop/clients.py).

The `client` fixture parametrizes each test over every adapter
(interop/adapters.py); a step a client cannot express ends the case as
"n/a: <reason>" in the table.
"""

from __future__ import annotations

import time
import uuid

import pytest

from interop.base import Props, require
from interop.helpers import WAIT_S, expect

pytestmark = pytest.mark.timeout(30)


def test_round_trip(client, broker_url, names) -> None:
    queue = names.queue("rt")
    headers = {"x-text": "héllo", "x-int": 42, "x-neg": -7, "x-bool": True}
    props = Props(
        content_type="application/x-interop",
        correlation_id="corr-1",
        reply_to="nowhere",
        message_id="msg-1",
        type="greeting",
        app_id="interop",
        delivery_mode=2,
        headers=headers,
    )
    connection = client.connect(broker_url)
    try:
        channel = connection.channel()
        assert channel.declare_queue(queue) == queue
        body = bytes(range(256)) * 3
        channel.publish("", queue, body, props)
        channel.consume(queue, auto_ack=False)
        delivery = expect(channel)
        assert delivery.body == body
        assert (delivery.exchange, delivery.routing_key) == ("", queue)
        assert not delivery.redelivered
        got = delivery.props
        assert got.content_type == props.content_type
        assert got.correlation_id == props.correlation_id
        assert got.reply_to == props.reply_to
        assert got.message_id == props.message_id
        assert got.type == props.type
        assert got.app_id == props.app_id
        assert got.delivery_mode == 2
        for key, value in headers.items():
            assert got.headers.get(key) == value, (key, got.headers)
        channel.ack(delivery)
        assert channel.message_count(queue) == 0
    finally:
        connection.close()


def test_publisher_confirms(client, broker_url, names) -> None:
    require(client, "confirms")
    queue = names.queue("confirms")
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        channel.declare_queue(queue)
        for i in range(20):
            # Returns only once the broker has acked this message.
            channel.publish("", queue, b"m%d" % i, Props(delivery_mode=2))
        assert channel.message_count(queue) == 20
        bodies = [channel.get(queue) for _ in range(20)]
        assert [d.body for d in bodies if d] == [b"m%d" % i for i in range(20)]
    finally:
        connection.close()


def test_work_queue_prefetch_1(client, broker_url, names) -> None:
    queue = names.queue("work")
    total = 10
    setup = client.connect(broker_url)
    workers = [client.connect(broker_url) for _ in range(2)]
    try:
        producer = setup.channel()
        producer.declare_queue(queue)
        channels = []
        for worker in workers:
            channel = worker.channel()
            channel.qos(1)
            channel.consume(queue, auto_ack=False)
            channels.append(channel)
        for i in range(total):
            producer.publish("", queue, b"job-%d" % i)

        # Each worker holds one unacked job; prefetch 1 means it gets no second
        # one until it acks, so the first two jobs go to different workers.
        first = [expect(channel) for channel in channels]
        assert channels[0].next_delivery(0.2) is None
        got: list[list[bytes]] = [[d.body] for d in first]
        for channel, delivery in zip(channels, first, strict=True):
            channel.ack(delivery)

        deadline = time.monotonic() + WAIT_S
        while sum(map(len, got)) < total and time.monotonic() < deadline:
            for index, channel in enumerate(channels):
                delivery = channel.next_delivery(0.05)
                if delivery is not None:
                    got[index].append(delivery.body)
                    channel.ack(delivery)
        everything = got[0] + got[1]
        assert sorted(everything) == sorted(b"job-%d" % i for i in range(total))
        assert got[0] and got[1], got
        assert producer.get(queue) is None
    finally:
        for connection in (*workers, setup):
            connection.close()


def test_fanout_late_subscriber(client, broker_url, names) -> None:
    exchange = names.exchange("fanout")
    early_q, late_q = names.queue("early"), names.queue("late")
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        channel.declare_exchange(exchange, "fanout")
        channel.declare_queue(early_q)
        channel.bind_queue(early_q, exchange)
        channel.publish(exchange, "ignored", b"before")
        channel.declare_queue(late_q)
        channel.bind_queue(late_q, exchange)
        channel.publish(exchange, "ignored", b"after")

        early = connection.channel()
        early.consume(early_q, auto_ack=True)
        assert [expect(early).body, expect(early).body] == [b"before", b"after"]
        late = connection.channel()
        late.consume(late_q, auto_ack=True)
        delivery = expect(late)
        assert (delivery.body, delivery.exchange) == (b"after", exchange)
        assert late.message_count(late_q) == 0
        assert early.next_delivery(0.1) is None
        assert late.next_delivery(0.1) is None
    finally:
        connection.close()


def test_rpc_exclusive_reply_queue(client, broker_url, names) -> None:
    requests = names.queue("rpc")
    server_conn = client.connect(broker_url)
    client_conn = client.connect(broker_url)
    try:
        server = server_conn.channel()
        server.declare_queue(requests)
        server.qos(1)
        server.consume(requests, auto_ack=False)

        caller = client_conn.channel()
        reply_q = caller.declare_queue("", exclusive=True)
        assert reply_q.startswith("amq.gen-"), reply_q
        caller.consume(reply_q, auto_ack=True)

        for n in (3, 7, 11):
            correlation = uuid.uuid4().hex
            caller.publish(
                "",
                requests,
                str(n).encode(),
                Props(reply_to=reply_q, correlation_id=correlation),
            )
            request = expect(server)
            assert request.props.reply_to == reply_q
            server.publish(
                "",
                request.props.reply_to,
                str(int(request.body) ** 2).encode(),
                Props(correlation_id=request.props.correlation_id),
            )
            server.ack(request)
            response = expect(caller)
            assert response.props.correlation_id == correlation
            assert response.body == str(n * n).encode()

        # The reply queue is exclusive: another connection may not use it.
        intruder = server_conn.channel()
        with pytest.raises(client.channel_error) as info:
            intruder.consume(reply_q)
            intruder.next_delivery(1.0)
        assert client.reply_code(info.value) == 405
    finally:
        client_conn.close()
        server_conn.close()
