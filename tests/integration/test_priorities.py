"""Priority queues (x-max-priority), consumer priorities (x-priority) and
single active consumer (x-single-active-consumer), as RabbitMQ 3.10."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika

Connect = Callable[..., pika.BlockingConnection]


def drain(channel: Any, queue: str) -> list[bytes]:
    bodies = []
    while (got := channel.basic_get(queue, auto_ack=True))[0] is not None:
        bodies.append(got[2])
    return bodies


def test_higher_priority_first_and_fifo_within_a_priority(channel: Any) -> None:
    channel.queue_declare("pq", arguments={"x-max-priority": 5})
    for body, priority in [
        (b"low-1", 1),
        (b"none-1", None),
        (b"high-1", 5),
        (b"low-2", 1),
        (b"capped", 9),  # above the maximum: treated as 5
        (b"high-2", 5),
        (b"none-2", 0),
    ]:
        channel.basic_publish("", "pq", body, pika.BasicProperties(priority=priority))
    assert drain(channel, "pq") == [
        b"high-1",
        b"capped",
        b"high-2",
        b"low-1",
        b"low-2",
        b"none-1",
        b"none-2",
    ]


def test_requeued_messages_return_to_their_priority_and_place(channel: Any) -> None:
    channel.queue_declare("pq", arguments={"x-max-priority": 2})
    for body, priority in [(b"a2", 2), (b"b2", 2), (b"c1", 1)]:
        channel.basic_publish("", "pq", body, pika.BasicProperties(priority=priority))
    first = channel.basic_get("pq")[0]
    channel.basic_publish("", "pq", b"d2", pika.BasicProperties(priority=2))
    channel.basic_nack(first.delivery_tag, requeue=True)
    assert drain(channel, "pq") == [b"a2", b"b2", b"d2", b"c1"]


def test_plain_queue_ignores_the_priority_property(channel: Any) -> None:
    channel.queue_declare("fifo")
    for body, priority in [(b"1", 1), (b"2", 9), (b"3", 5)]:
        channel.basic_publish("", "fifo", body, pika.BasicProperties(priority=priority))
    assert drain(channel, "fifo") == [b"1", b"2", b"3"]


def test_consumer_priorities(connect: Connect) -> None:
    connection = connect()
    setup = connection.channel()
    setup.queue_declare("q")
    channels: dict[str, Any] = {}
    got: dict[str, list[bytes]] = {"high": [], "low": []}
    for name, priority in (("low", 1), ("high", 10)):
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2)
        channel.basic_consume(
            "q",
            lambda _ch, _m, _p, body, name=name: got[name].append(body),
            arguments={"x-priority": priority},
        )
        channels[name] = channel
    for index in range(3):
        setup.basic_publish("", "q", str(index).encode())
    deadline = time.monotonic() + 5
    while len(got["high"]) + len(got["low"]) < 3:
        assert time.monotonic() < deadline, got
        connection.process_data_events(time_limit=0.02)
    # The high-priority consumer takes what its prefetch allows; only then
    # does the low one get anything.
    assert got == {"high": [b"0", b"1"], "low": [b"2"]}


def test_single_active_consumer_takes_over_in_order(connect: Connect) -> None:
    connection = connect()
    setup = connection.channel()
    setup.queue_declare("sac", arguments={"x-single-active-consumer": True})
    got: dict[str, list[bytes]] = {"first": [], "second": []}
    tags = {}
    channels = {}
    for name in ("first", "second"):
        channel = connection.channel()
        tags[name] = channel.basic_consume(
            "sac",
            lambda ch, method, _p, body, name=name: (
                got[name].append(body),
                ch.basic_ack(method.delivery_tag),
            ),
        )
        channels[name] = channel
    for index in range(4):
        setup.basic_publish("", "sac", str(index).encode())
    deadline = time.monotonic() + 5
    while len(got["first"]) < 4:
        assert time.monotonic() < deadline, got
        connection.process_data_events(time_limit=0.02)
    assert got["second"] == []
    channels["first"].basic_cancel(tags["first"])
    setup.basic_publish("", "sac", b"after")
    deadline = time.monotonic() + 5
    while not got["second"]:
        assert time.monotonic() < deadline, got
        connection.process_data_events(time_limit=0.02)
    assert got["second"] == [b"after"]


def test_aio_pika_priority_queue_and_single_active_consumer(broker: Any) -> None:
    import asyncio

    import aio_pika

    async def scenario() -> tuple[list[bytes], list[str]]:
        connection = await aio_pika.connect(broker.url)
        channel = await connection.channel()
        queue = await channel.declare_queue(
            "apq", arguments={"x-max-priority": 3, "x-single-active-consumer": True}
        )
        for body, priority in [(b"low", 0), (b"high", 3), (b"mid", 2)]:
            await channel.default_exchange.publish(
                aio_pika.Message(body, priority=priority), routing_key="apq"
            )
        got: list[bytes] = []
        who: list[str] = []
        done = asyncio.Event()

        def consumer(name: str) -> Any:
            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                got.append(message.body)
                who.append(name)
                await message.ack()
                if len(got) == 3:
                    done.set()

            return on_message

        await queue.consume(consumer("first"))
        await queue.consume(consumer("second"))
        await asyncio.wait_for(done.wait(), 10)
        await connection.close()
        return got, who

    got, who = asyncio.run(scenario())
    assert got == [b"high", b"mid", b"low"]
    assert who == ["first", "first", "first"]
