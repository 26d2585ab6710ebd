"""What an idle connection costs the broker: two parked trio tasks (reader
and writer) and one timer of the broker's scheduler for the handshake
timeout, then the heartbeats; no per-instance dict."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika
import trio

from amqpy.server.connection import ConnectionHandler
from amqpy.server.embedded import EmbeddedBroker

CONNECTIONS = 3


def task_count() -> int:
    tasks = 0
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        tasks += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return tasks


def settled(broker: EmbeddedBroker, expected: int) -> int:
    """The broker's task count, once it is `expected` (or 10 s have passed)."""
    deadline = time.monotonic() + 10
    while True:
        count = broker.call(task_count)
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def test_an_idle_connection_is_two_tasks_and_a_timer(
    broker: EmbeddedBroker,
    connect: Callable[..., pika.BlockingConnection],
) -> None:
    before = broker.call(task_count)
    channels = [connect(heartbeat=60).channel() for _ in range(CONNECTIONS)]
    assert settled(broker, before + 2 * CONNECTIONS) == before + 2 * CONNECTIONS

    def timers() -> list[Any]:
        return [handler._timer for handler in broker.server.connections]

    armed = broker.call(timers)
    assert len(armed) == CONNECTIONS
    # The heartbeat ticks, the handshake timeouts being cancelled at open.
    assert all(timer is not None and not timer.cancelled for timer in armed)
    for channel in channels:
        channel.connection.close()
    assert settled(broker, before) == before


def test_connection_handlers_have_no_instance_dict(
    broker: EmbeddedBroker,
    connect: Callable[..., pika.BlockingConnection],
) -> None:
    connect().channel()
    (handler,) = broker.call(lambda: list(broker.server.connections))
    assert isinstance(handler, ConnectionHandler)
    assert not hasattr(handler, "__dict__")
    assert not hasattr(handler.protocol, "__dict__")
