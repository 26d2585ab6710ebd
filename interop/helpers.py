"""Steps the scenarios share."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from interop.base import Delivery

WAIT_S = 5.0


def unavailable(reason: str) -> None:
    """A tool this case needs is not installed: skip here, fail in CI (where
    .ci/run installs every tool, so a skip would hide a broken install)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


def expect(channel: Any, timeout: float = WAIT_S) -> Delivery:
    delivery = channel.next_delivery(timeout)
    assert delivery is not None, f"no delivery within {timeout} s"
    return delivery


def death_of(delivery: Delivery) -> dict[str, Any]:
    """The first entry of a dead-lettered message's x-death header."""
    deaths = delivery.props.headers.get("x-death")
    assert isinstance(deaths, list) and deaths, delivery.props.headers
    return deaths[0]


def poll_get(channel: Any, queue: str, timeout: float = WAIT_S) -> Delivery | None:
    """basic.get until a message comes or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        delivery = channel.get(queue)
        if delivery is not None or time.monotonic() >= deadline:
            return delivery
        time.sleep(0.02)


def go_on(client: Any, url: str, connection: Any, closed: Any, queue: str) -> None:
    """After a channel error: the broker closed the channel (or the client
    reopened it), and a new channel on the same connection and a new
    connection both work."""
    assert connection.is_open
    if client.reopens_channel_after_error:
        assert closed.is_open
        closed.declare_queue(queue)
    else:
        assert not closed.is_open
    channel = connection.channel()
    channel.declare_queue(queue)
    channel.publish("", queue, b"after-error")
    delivery = poll_get(channel, queue)
    assert delivery is not None and delivery.body == b"after-error"
    fresh = client.connect(url)
    try:
        assert fresh.channel().get(queue) is None
    finally:
        fresh.close()
