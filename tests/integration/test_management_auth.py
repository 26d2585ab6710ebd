"""The management API's front door: HTTP basic auth with the broker's users,
RabbitMQ's tag rules, its error bodies, and the %2F vhost in paths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest
from helpers.management import Api

from amqpy.server.embedded import EmbeddedBroker


@pytest.fixture
def broker(managed_broker: EmbeddedBroker) -> EmbeddedBroker:
    return managed_broker


def add_user(broker: EmbeddedBroker, name: str, tags: tuple[str, ...]) -> None:
    broker.call(lambda: broker.server.broker.put_user(name, password=name, tags=tags))


def test_overview_counts_what_pika_made(
    api: Api, connect: Callable[..., pika.BlockingConnection]
) -> None:
    channel = connect().channel()
    channel.queue_declare("counted")
    for body in (b"1", b"2", b"3"):
        channel.basic_publish("", "counted", body)
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume("counted", lambda *args: None)
    # The consumer holds one unacked once the broker has delivered it.
    deadline_checks = 50
    overview: dict[str, Any] = {}
    for _ in range(deadline_checks):
        connection = channel.connection
        connection.process_data_events(time_limit=0.1)
        overview = api.get("/api/overview").json()
        if overview["queue_totals"]["messages_unacknowledged"] == 1:
            break
    assert overview["queue_totals"] == {
        "messages": 3,
        "messages_ready": 2,
        "messages_unacknowledged": 1,
    }
    totals = overview["object_totals"]
    assert totals["connections"] == 1
    assert totals["channels"] == 1
    assert totals["consumers"] == 1
    assert totals["queues"] == 1


def test_whoami(api: Api) -> None:
    answer = api.get("/api/whoami")
    assert answer.status_code == 200
    assert answer.json() == {"name": "guest", "tags": ["administrator"]}


def test_login_failures_are_rabbitmqs(api: Api, broker: EmbeddedBroker) -> None:
    anonymous = api.client.get("/api/overview", auth=None)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="RabbitMQ Management"'

    wrong = api.as_user("guest", "nope").get("/api/overview")
    assert wrong.status_code == 401
    assert wrong.json() == {"error": "not_authorized", "reason": "Login failed"}

    add_user(broker, "plain", ())
    untagged = api.as_user("plain", "plain").get("/api/overview")
    assert untagged.status_code == 401
    assert untagged.json() == {
        "error": "not_authorised",
        "reason": "Not management user",
    }

    add_user(broker, "watcher", ("monitoring",))
    assert api.as_user("watcher", "watcher").get("/api/overview").status_code == 200


def test_unknown_paths_are_404_in_rabbitmqs_shape(api: Api) -> None:
    answer = api.get("/api/no-such-thing")
    assert answer.status_code == 404
    assert answer.json() == {"error": "Object Not Found", "reason": "Not Found"}
