"""The disk alarm: below the free-space limit, publishing connections are
blocked (connection.blocked to clients that asked for it) and nothing they
publish is taken in; consumers go on; it all resumes when space returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika

from amqpy.server.embedded import EmbeddedBroker
from amqpy.server.run import resident_memory_bytes

NO_DISK = {"disk_free_limit_bytes": 10**18, "disk_check_interval_s": 0.05}


def process_until(
    connection: pika.BlockingConnection,
    condition: Callable[[], bool],
    timeout: float = 5,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        connection.process_data_events(time_limit=0.05)


def test_disk_alarm_blocks_publishers_until_space_returns(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(store=NO_DISK)
    parameters = pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
    publisher = pika.BlockingConnection(parameters)
    events: list[str] = []
    publisher.add_on_connection_blocked_callback(
        lambda _conn, frame: events.append(f"blocked: {frame.method.reason}")
    )
    publisher.add_on_connection_unblocked_callback(
        lambda _conn, _frame: events.append("unblocked")
    )
    consumer = pika.BlockingConnection(parameters)
    consumer_channel = consumer.channel()
    consumer_channel.queue_declare("q")
    publish_channel = publisher.channel()
    publish_channel.basic_publish("", "q", b"held")
    process_until(publisher, lambda: bool(events))
    assert events == ["blocked: low on disk"]

    # The consumer's connection is not blocked, and nothing got in.
    def ready() -> int:
        return consumer_channel.queue_declare("q", passive=True).method.message_count

    assert ready() == 0

    def lift() -> None:
        broker.server.disk_free_limit_bytes = 0

    broker.call(lift)
    process_until(publisher, lambda: "unblocked" in events)
    process_until(consumer, lambda: ready() == 1)
    assert consumer_channel.basic_get("q", auto_ack=True)[2] == b"held"
    publisher.close()
    consumer.close()


def test_client_without_capability_is_held_silently(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(store=NO_DISK)
    properties: dict[str, Any] = {"capabilities": {"connection.blocked": False}}
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", broker.port, socket_timeout=5, client_properties=properties
        )
    )
    channel = connection.channel()
    channel.queue_declare("q")
    channel.basic_publish("", "q", b"held")
    # Blocked: a publish followed by a synchronous call gets no answer yet.
    other_connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
    )
    other = other_connection.channel()
    assert other.queue_declare("q", passive=True).method.message_count == 0
    broker.call(lambda: setattr(broker.server, "disk_free_limit_bytes", 0))
    deadline = time.monotonic() + 5
    while other.queue_declare("q", passive=True).method.message_count != 1:
        assert time.monotonic() < deadline
        connection.process_data_events(time_limit=0.05)
    connection.close()
    other_connection.close()


def test_memory_alarm_blocks_publishers_until_consumers_free_memory(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    """RabbitMQ's vm_memory_high_watermark: with memory above the mark,
    publishers get connection.blocked "low on memory" and nothing they send
    is taken in; a purge frees the memory and they are unblocked."""
    broker = make_broker(memory={"check_interval_s": 0.05})
    parameters = pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
    filler = pika.BlockingConnection(parameters)
    fill = filler.channel()
    fill.queue_declare("big")
    fill.queue_declare("small")
    fill.confirm_delivery()
    # The broker runs in this process. 1 MiB bodies are each their own
    # allocation, given back to the system when freed.
    baseline = resident_memory_bytes()
    assert baseline is not None
    for _ in range(64):
        fill.basic_publish("", "big", b"x" * 2**20)

    def lower_the_mark() -> None:
        # As `rabbitmqctl set_vm_memory_high_watermark` at run time.
        broker.server.memory_limit_bytes = baseline + 32 * 2**20

    broker.call(lower_the_mark)
    deadline = time.monotonic() + 5
    while "memory" not in broker.call(lambda: set(broker.server.alarms)):
        assert time.monotonic() < deadline, "no memory alarm"
        time.sleep(0.02)
    publisher = pika.BlockingConnection(parameters)
    events: list[str] = []
    publisher.add_on_connection_blocked_callback(
        lambda _conn, frame: events.append(f"blocked: {frame.method.reason}")
    )
    publisher.add_on_connection_unblocked_callback(
        lambda _conn, _frame: events.append("unblocked")
    )
    publisher.channel().basic_publish("", "small", b"held")
    process_until(publisher, lambda: bool(events))
    assert events == ["blocked: low on memory"]

    # The filler's connection is not blocked; its purge frees the memory.
    assert fill.queue_declare("small", passive=True).method.message_count == 0
    fill.queue_purge("big")
    process_until(publisher, lambda: "unblocked" in events, timeout=10)
    process_until(
        filler,
        lambda: fill.queue_declare("small", passive=True).method.message_count == 1,
    )
    publisher.close()
    filler.close()
