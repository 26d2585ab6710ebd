"""Policies (from definitions, as `rabbitmqctl set_policy` makes them):
pattern, apply-to, priority, and how they combine with queue arguments."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from amqpy.server.embedded import EmbeddedBroker


def set_policies(broker: EmbeddedBroker, *policies: dict[str, Any]) -> None:
    def apply() -> None:
        broker.server.broker.import_definitions({"policies": list(policies)})

    broker.call(apply)


def policy(name: str, pattern: str, definition: dict[str, Any], **extra: Any) -> dict:
    return {
        "name": name,
        "vhost": "/",
        "pattern": pattern,
        "apply-to": extra.get("apply_to", "queues"),
        "priority": extra.get("priority", 0),
        "definition": definition,
    }


def wait_ready(channel: Any, queue: str, count: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while channel.queue_declare(queue, passive=True).method.message_count != count:
        assert time.monotonic() < deadline, f"{queue} never had {count} ready"
        channel.connection.process_data_events(time_limit=0.02)


@pytest.fixture
def policy_broker(make_broker: Callable[..., EmbeddedBroker]) -> EmbeddedBroker:
    return make_broker()


@pytest.fixture
def open_channel() -> Iterator[Callable[[EmbeddedBroker], Any]]:
    connections: list[pika.BlockingConnection] = []

    def open_(broker: EmbeddedBroker) -> Any:
        connection = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
        )
        connections.append(connection)
        return connection.channel()

    yield open_
    for connection in connections:
        if connection.is_open:
            connection.close()


def test_policy_sets_ttl_and_dead_letter_exchange(
    policy_broker: EmbeddedBroker, open_channel: Callable[[EmbeddedBroker], Any]
) -> None:
    channel = open_channel(policy_broker)
    channel.exchange_declare("dlx", "fanout")
    channel.queue_declare("dead")
    channel.queue_bind("dead", "dlx")
    set_policies(
        policy_broker,
        policy("ttl", r"^orders\.", {"message-ttl": 20, "dead-letter-exchange": "dlx"}),
    )
    channel.queue_declare("orders.new")
    channel.queue_declare("other")
    channel.basic_publish("", "orders.new", b"expires")
    channel.basic_publish("", "other", b"stays")
    wait_ready(channel, "dead", 1)
    _, properties, body = channel.basic_get("dead", auto_ack=True)
    assert body == b"expires"
    assert properties.headers["x-death"][0]["reason"] == "expired"
    assert channel.queue_declare("other", passive=True).method.message_count == 1


def test_smaller_length_wins_and_arguments_win_for_the_rest(
    policy_broker: EmbeddedBroker, open_channel: Callable[[EmbeddedBroker], Any]
) -> None:
    channel = open_channel(policy_broker)
    set_policies(
        policy_broker,
        policy("limit", ".*", {"max-length": 2, "overflow": "reject-publish"}),
    )
    channel.queue_declare(
        "small", arguments={"x-max-length": 1, "x-overflow": "drop-head"}
    )
    channel.queue_declare("big", arguments={"x-max-length": 5})
    for index in range(3):
        channel.basic_publish("", "small", str(index).encode())
        channel.basic_publish("", "big", str(index).encode())
    # small: argument 1 < policy 2, drop-head (argument) keeps the newest.
    wait_ready(channel, "small", 1)
    assert channel.basic_get("small", auto_ack=True)[2] == b"2"
    # big: policy 2 < argument 5, reject-publish (policy) keeps the oldest two.
    wait_ready(channel, "big", 2)
    assert channel.basic_get("big", auto_ack=True)[2] == b"0"


def test_highest_priority_policy_applies_to_existing_queues(
    policy_broker: EmbeddedBroker, open_channel: Callable[[EmbeddedBroker], Any]
) -> None:
    channel = open_channel(policy_broker)
    channel.queue_declare("q")
    for index in range(5):
        channel.basic_publish("", "q", str(index).encode())
    wait_ready(channel, "q", 5)
    set_policies(
        policy_broker,
        policy("loose", ".*", {"max-length": 4}, priority=1),
        policy("tight", "^q$", {"max-length": 2}, priority=5),
    )
    # A lower limit takes effect at once: the oldest go.
    wait_ready(channel, "q", 2)
    assert channel.basic_get("q", auto_ack=True)[2] == b"3"


def test_alternate_exchange_policy(
    policy_broker: EmbeddedBroker, open_channel: Callable[[EmbeddedBroker], Any]
) -> None:
    channel = open_channel(policy_broker)
    channel.exchange_declare("ae", "fanout")
    channel.queue_declare("unrouted")
    channel.queue_bind("unrouted", "ae")
    channel.exchange_declare("events", "direct")
    set_policies(
        policy_broker,
        policy("ae", "^events$", {"alternate-exchange": "ae"}, apply_to="exchanges"),
    )
    channel.basic_publish("events", "nobody", b"caught")
    wait_ready(channel, "unrouted", 1)


def test_malformed_policy_is_refused(
    policy_broker: EmbeddedBroker, open_channel: Callable[[EmbeddedBroker], Any]
) -> None:
    with pytest.raises(ValueError, match="malformed policy"):
        set_policies(policy_broker, {"name": "bad", "pattern": "(", "definition": {}})


@pytest.mark.parametrize(
    "definition",
    [{"max-length": -1}, {"message-ttl": "10"}, {"expires": 0}, {"overflow": "x"}],
)
def test_out_of_range_policy_values_are_refused(
    policy_broker: EmbeddedBroker, definition: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="policy 'bad'"):
        set_policies(policy_broker, policy("bad", ".*", definition))
