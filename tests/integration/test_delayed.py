"""The x-delayed-message exchange type, as the RabbitMQ plugin provides it:
x-delay holds a message, x-delayed-type routes it; durable delays survive a
restart."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest
from helpers.server_process import Server

DELAYED = {"x-delayed-type": "direct"}


def ready(channel: Any, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def wait_ready(channel: Any, queue: str, count: int, timeout: float = 10) -> float:
    started = time.monotonic()
    while ready(channel, queue) != count:
        assert time.monotonic() - started < timeout, f"{queue} never had {count}"
        channel.connection.process_data_events(time_limit=0.02)
    return time.monotonic() - started


def test_delayed_messages_are_held_then_routed(channel: Any) -> None:
    channel.exchange_declare("delayed", "x-delayed-message", arguments=DELAYED)
    channel.queue_declare("q")
    channel.queue_bind("q", "delayed", "k")
    channel.confirm_delivery()
    published = time.monotonic()
    channel.basic_publish(
        "delayed", "k", b"later", pika.BasicProperties(headers={"x-delay": 300})
    )
    channel.basic_publish("delayed", "k", b"now")
    channel.basic_publish(
        "delayed", "k", b"negative", pika.BasicProperties(headers={"x-delay": -5})
    )
    assert ready(channel, "q") == 2
    wait_ready(channel, "q", 3)
    assert time.monotonic() - published >= 0.3
    bodies = [channel.basic_get("q", auto_ack=True)[2] for _ in range(3)]
    assert bodies == [b"now", b"negative", b"later"]


def test_delayed_routing_follows_the_delayed_type(channel: Any) -> None:
    channel.exchange_declare(
        "delayed-topic", "x-delayed-message", arguments={"x-delayed-type": "topic"}
    )
    channel.queue_declare("orders")
    channel.queue_bind("orders", "delayed-topic", "order.#")
    for key in ("order.eu", "invoice.eu"):
        channel.basic_publish(
            "delayed-topic",
            key,
            key.encode(),
            pika.BasicProperties(headers={"x-delay": 50}),
        )
    wait_ready(channel, "orders", 1)
    assert channel.basic_get("orders", auto_ack=True)[2] == b"order.eu"


def test_missing_delayed_type_is_refused(channel: Any) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        channel.exchange_declare("bad", "x-delayed-message")
    assert (error.value.reply_code, error.value.reply_text) == (
        406,
        "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an "
        "existing exchange type",
    )


def test_durable_delays_survive_kill(start: Callable[[], Server]) -> None:
    server = start()
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", server.port, socket_timeout=5)
    )
    channel = connection.channel()
    channel.exchange_declare(
        "delayed", "x-delayed-message", durable=True, arguments=DELAYED
    )
    channel.queue_declare("q", durable=True)
    channel.queue_bind("q", "delayed", "k")
    channel.confirm_delivery()  # the confirm comes once the held message is on disk
    channel.basic_publish(
        "delayed",
        "k",
        b"held",
        pika.BasicProperties(delivery_mode=2, headers={"x-delay": 1500, "h": 1}),
    )
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit()

    restarted = start()
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", restarted.port, socket_timeout=5)
    )
    channel = connection.channel()
    wait_ready(channel, "q", 1)
    _, properties, body = channel.basic_get("q", auto_ack=True)
    assert body == b"held"
    assert properties.headers == {"x-delay": 1500, "h": 1}
    connection.close()


def test_aio_pika_delayed_publish(broker: Any) -> None:
    import asyncio

    import aio_pika

    async def scenario() -> tuple[bytes, float]:
        connection = await aio_pika.connect(broker.url)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            "adelayed", "x-delayed-message", arguments=DELAYED
        )
        queue = await channel.declare_queue("aq")
        await queue.bind(exchange, "k")
        started = time.monotonic()
        await exchange.publish(
            aio_pika.Message(b"later", headers={"x-delay": 200}), routing_key="k"
        )
        assert await queue.get(fail=False) is None
        while (message := await queue.get(fail=False)) is None:
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.02)
        await message.ack()
        await connection.close()
        return message.body, time.monotonic() - started

    body, waited = asyncio.run(scenario())
    assert body == b"later"
    assert waited >= 0.2


def test_rolled_back_delayed_publish_is_never_delivered(channel: Any) -> None:
    channel.exchange_declare("delayed", "x-delayed-message", arguments=DELAYED)
    channel.queue_declare("q")
    channel.queue_bind("q", "delayed", "k")
    channel.tx_select()
    channel.basic_publish(
        "delayed", "k", b"rolled back", pika.BasicProperties(headers={"x-delay": 50})
    )
    channel.tx_rollback()
    channel.basic_publish(
        "delayed", "k", b"committed", pika.BasicProperties(headers={"x-delay": 100})
    )
    channel.tx_commit()
    wait_ready(channel, "q", 1)
    # Long enough for the rolled-back one (due earlier) to have shown up.
    channel.connection.process_data_events(time_limit=0.2)
    assert ready(channel, "q") == 1
    assert channel.basic_get("q", auto_ack=True)[2] == b"committed"


def test_delayed_messages_keep_their_cc_routes(channel: Any) -> None:
    channel.exchange_declare("delayed", "x-delayed-message", arguments=DELAYED)
    for queue in ("main", "copy"):
        channel.queue_declare(queue)
    channel.queue_bind("main", "delayed", "k")
    channel.queue_bind("copy", "delayed", "cc")
    channel.basic_publish(
        "delayed",
        "k",
        b"m",
        pika.BasicProperties(headers={"x-delay": 50, "BCC": ["cc"]}),
    )
    wait_ready(channel, "main", 1)
    wait_ready(channel, "copy", 1)
    _, properties, _ = channel.basic_get("copy", auto_ack=True)
    assert "BCC" not in properties.headers
