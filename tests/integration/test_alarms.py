"""The disk alarm: below the free-space limit, publishing connections are
blocked (connection.blocked to clients that asked for it) and nothing they
publish is taken in; consumers go on; it all resumes when space returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika

from amqpy.server.embedded import EmbeddedBroker

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
