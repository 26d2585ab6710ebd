"""Topic permissions (RabbitMQ 3.10's set_topic_permissions): regexes on the
routing keys a user may publish with, and bind with, on a topic exchange.
The refusal text is the one a RabbitMQ 3.10.8 node answered."""

from __future__ import annotations

from collections.abc import Callable

import pika
import pika.exceptions
import pytest
from helpers.management import Api, path

from amqpy.server.embedded import EmbeddedBroker


@pytest.fixture
def broker(managed_broker: EmbeddedBroker) -> EmbeddedBroker:
    return managed_broker


def topic_refused(key: str, exchange: str = "tx", user: str = "bob") -> str:
    return (
        f"ACCESS_REFUSED - access to topic '{key}' in exchange '{exchange}' in "
        f"vhost '/' refused for user '{user}'"
    )


@pytest.fixture
def bob(
    api: Api, connect: Callable[..., pika.BlockingConnection]
) -> pika.BlockingConnection:
    """User bob with full permissions on "/" and topic permissions on "tx",
    set through the management API, connected with pika."""
    assert (
        api.put(path("users", "bob"), {"password": "bob", "tags": ""}).status_code
        == 201
    )
    permissions = {"configure": ".*", "write": ".*", "read": ".*"}
    assert api.put(path("permissions", "/", "bob"), permissions).status_code == 201
    topic = {"exchange": "tx", "write": r"^allowed\.", "read": r"^{username}\."}
    assert api.put(path("topic-permissions", "/", "bob"), topic).status_code == 201
    connection = connect(credentials=pika.PlainCredentials("bob", "bob"))
    channel = connection.channel()
    channel.exchange_declare("tx", "topic")
    channel.exchange_declare("other", "topic")
    channel.close()
    return connection


def test_publish_is_checked_against_the_write_pattern(
    bob: pika.BlockingConnection,
) -> None:
    channel = bob.channel()
    channel.confirm_delivery()
    channel.basic_publish("tx", "allowed.one", b"ok")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.basic_publish("tx", "denied.one", b"no")
    assert (closed.value.reply_code, closed.value.reply_text) == (
        403,
        topic_refused("denied.one"),
    )
    # Another topic exchange has no entry for bob: anything goes.
    other = bob.channel()
    other.confirm_delivery()
    other.basic_publish("other", "denied.one", b"ok")


def test_bind_is_checked_against_the_read_pattern_with_the_user_name(
    bob: pika.BlockingConnection,
) -> None:
    channel = bob.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, "tx", "bob.#")  # "{username}" is bob
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.queue_bind(queue, "tx", "alice.#")
    assert (closed.value.reply_code, closed.value.reply_text) == (
        403,
        topic_refused("alice.#"),
    )
    channel = bob.channel()
    channel.exchange_declare("dest", "fanout", auto_delete=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.exchange_bind("dest", "tx", "alice.#")
    assert closed.value.reply_code == 403


def test_the_api_lists_changes_and_clears_them(
    api: Api, bob: pika.BlockingConnection
) -> None:
    listed = api.get("/api/topic-permissions").json()
    assert listed == [
        {
            "user": "bob",
            "vhost": "/",
            "exchange": "tx",
            "write": r"^allowed\.",
            "read": r"^{username}\.",
        }
    ]
    assert api.get(path("users", "bob", "topic-permissions")).json() == listed
    assert api.get(path("vhosts", "/", "topic-permissions")).json() == listed
    exported = api.get("/api/definitions").json()
    assert exported["topic_permissions"] == listed
    # A bad regex changes nothing.
    bad = {"exchange": "tx", "write": "(", "read": ".*"}
    assert api.put(path("topic-permissions", "/", "bob"), bad).status_code == 400
    assert api.get("/api/topic-permissions").json() == listed
    # Widened: the publish that was refused goes through on a new channel.
    wide = {"exchange": "tx", "write": ".*", "read": ".*"}
    assert api.put(path("topic-permissions", "/", "bob"), wide).status_code == 204
    channel = bob.channel()
    channel.confirm_delivery()
    channel.basic_publish("tx", "denied.one", b"now allowed")
    deleted = api.delete(path("topic-permissions", "/", "bob"))
    assert deleted.status_code == 204
    assert api.get("/api/topic-permissions").json() == []
    assert api.delete(path("topic-permissions", "/", "bob")).status_code == 404
