"""The management API's object endpoints: exchanges, queues, bindings,
connections, channels and consumers, in RabbitMQ's shape, checked against
what pika and aio-pika do and see."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pika
import pytest
from helpers.management import Api, path
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from amqpy.management.endpoints.objects import properties_key
from amqpy.server.embedded import EmbeddedBroker

DEADLINE_S = 5.0


@pytest.fixture
def broker(managed_broker: EmbeddedBroker) -> EmbeddedBroker:
    return managed_broker


def wait_for(
    probe: Callable[[], Any],
    connection: pika.BlockingConnection | None = None,
    timeout: float = DEADLINE_S,
) -> Any:
    """Poll `probe` (letting pika run) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        if connection is not None:
            connection.process_data_events(time_limit=0.02)
        else:
            time.sleep(0.02)


def queue_of(api: Api, name: str, vhost: str = "/") -> dict[str, Any]:
    answer = api.get(path("queues", vhost, name))
    assert answer.status_code == 200, answer.text
    return answer.json()


def counts(queue: dict[str, Any]) -> tuple[int, int, int, int]:
    return (
        queue["messages"],
        queue["messages_ready"],
        queue["messages_unacknowledged"],
        queue["consumers"],
    )


def add_user(
    broker: EmbeddedBroker,
    name: str,
    tags: tuple[str, ...],
    permissions: dict[str, tuple[str, str, str]],
) -> None:
    def setup() -> None:
        server_broker = broker.server.broker
        server_broker.put_user(name, password=name, tags=tags)
        for vhost, (configure, write, read) in permissions.items():
            server_broker.add_vhost(vhost)
            server_broker.set_permissions(name, vhost, configure, write, read)

    broker.call(setup)


def grant_all(broker: EmbeddedBroker, user: str, vhost: str) -> None:
    def setup() -> None:
        broker.server.broker.add_vhost(vhost)
        broker.server.broker.set_permissions(user, vhost, ".*", ".*", ".*")

    broker.call(setup)


def publish(api: Api, exchange: str, routing_key: str, body: str, **extra: Any) -> Any:
    answer = api.post(
        path("exchanges", "/", exchange or "amq.default", "publish"),
        {
            "properties": extra.pop("properties", {}),
            "routing_key": routing_key,
            "payload": body,
            "payload_encoding": extra.pop("payload_encoding", "string"),
        },
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def get(api: Api, queue: str, ackmode: str, count: int = 1, **extra: Any) -> Any:
    answer = api.post(
        path("queues", "/", queue, "get"),
        {"count": count, "ackmode": ackmode, "encoding": "auto", **extra},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


# -- counts follow the traffic ----------------------------------------------------


def test_queue_channel_and_consumer_counts_follow_pika(
    api: Api, connect: Callable[..., pika.BlockingConnection], names: Any
) -> None:
    queue = names("counted")
    connection = connect(client_properties={"connection_name": "counter"})
    publisher = connection.channel()
    publisher.queue_declare(queue, durable=True)
    persistent = pika.BasicProperties(delivery_mode=2)
    for body in (b"one", b"two", b"three", b"four", b"five"):
        publisher.basic_publish("", queue, body, persistent)
    consumer = connection.channel()
    consumer.basic_qos(prefetch_count=2)
    delivered: list[int] = []
    consumer.basic_consume(
        queue,
        lambda channel, method, properties, body: delivered.append(method.delivery_tag),
        consumer_tag="counting",
    )

    state = wait_for(
        lambda: (q := queue_of(api, queue)) and counts(q) == (5, 3, 2, 1) and q,
        connection,
    )
    assert state["message_bytes"] == len(b"onetwothreefourfive")
    assert state["message_bytes_unacknowledged"] == len(b"onetwo")
    assert state["message_bytes_ready"] == len(b"threefourfive")
    assert state["messages_persistent"] == 5
    assert state["durable"] is True
    assert state["type"] == "classic"
    assert state["state"] == "running"
    assert state["memory"] > state["message_bytes"]
    [detail] = state["consumer_details"]
    assert detail["consumer_tag"] == "counting"
    assert detail["prefetch_count"] == 2
    assert detail["ack_required"] is True
    assert detail["channel_details"]["number"] == consumer.channel_number

    listed = [q for q in api.get("/api/queues").json() if q["name"] == queue]
    assert counts(listed[0]) == (5, 3, 2, 1)
    assert "consumer_details" not in listed[0]

    [channel_state] = [
        c
        for c in api.get("/api/channels").json()
        if c["number"] == consumer.channel_number
    ]
    assert channel_state["consumer_count"] == 1
    assert channel_state["messages_unacknowledged"] == 2
    assert channel_state["prefetch_count"] == 2
    assert channel_state["name"].endswith(f" ({consumer.channel_number})")
    [consumer_state] = api.get(path("consumers", "/")).json()
    assert consumer_state["queue"] == {"name": queue, "vhost": "/"}
    assert consumer_state["channel_details"]["name"] == channel_state["name"]

    # An ack frees a prefetch slot: one more is delivered.
    wait_for(lambda: len(delivered) == 2, connection)
    consumer.basic_ack(delivered[0])
    wait_for(lambda: counts(queue_of(api, queue)) == (4, 2, 2, 1), connection)


def test_aio_pika_connection_is_listed_with_its_client_properties(
    api: Api, broker: EmbeddedBroker
) -> None:
    async def scenario() -> tuple[list[Any], list[Any], dict[str, Any]]:
        connection = await aio_pika.connect(
            f"amqp://guest:guest@127.0.0.1:{broker.port}/",
            client_properties={"connection_name": "aio-watch"},
        )
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=7)
            queue = await channel.declare_queue("aio-q", exclusive=True)

            async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                pass

            await queue.consume(ignore, consumer_tag="aio")
            async with httpx.AsyncClient(
                base_url=broker.management_url, auth=("guest", "guest")
            ) as client:
                connections = (await client.get("/api/connections")).json()
                consumers = (await client.get("/api/consumers")).json()
                queue_state = (await client.get("/api/queues/%2F/aio-q")).json()
        return connections, consumers, queue_state

    connections, consumers, queue_state = asyncio.run(asyncio.wait_for(scenario(), 20))
    [connection] = connections
    assert connection["user_provided_name"] == "aio-watch"
    assert connection["client_properties"]["connection_name"] == "aio-watch"
    assert connection["protocol"] == "AMQP 0-9-1"
    assert connection["user"] == "guest"
    assert connection["vhost"] == "/"
    assert connection["state"] == "running"
    assert connection["channels"] == 1
    assert connection["auth_mechanism"] == "PLAIN"
    assert connection["ssl"] is False
    assert connection["peer_host"] == "127.0.0.1"
    assert connection["port"] == broker.port
    assert connection["name"] == (
        f"127.0.0.1:{connection['peer_port']} -> 127.0.0.1:{broker.port}"
    )
    assert abs(connection["connected_at"] / 1000 - time.time()) < 60
    [consumer] = consumers
    assert consumer["consumer_tag"] == "aio"
    assert consumer["prefetch_count"] == 7
    assert consumer["channel_details"]["connection_name"] == connection["name"]
    assert queue_state["exclusive"] is True
    assert queue_state["owner_pid_details"]["name"] == connection["name"]
    # The exclusive queue went with its connection.
    assert api.get("/api/queues/%2F/aio-q").status_code == 404


# -- declare, delete, bind ---------------------------------------------------------


def test_objects_declared_through_the_api_work_over_amqp(
    api: Api, channel: Any, names: Any
) -> None:
    queue, exchange = names("apiq"), names("apix")
    assert api.put(path("queues", "/", queue), {"durable": True}).status_code == 201
    assert api.put(path("queues", "/", queue), {"durable": True}).status_code == 204
    assert channel.queue_declare(queue, passive=True).method.message_count == 0
    created = api.put(path("exchanges", "/", exchange), {"type": "fanout"})
    assert created.status_code == 201
    assert created.content == b""
    channel.exchange_declare(exchange, "fanout", passive=True)
    bound = api.post(path("bindings", "/", "e", exchange, "q", queue), {})
    assert bound.status_code == 201
    assert bound.headers["location"] == f"{queue}/~"

    channel.basic_publish(exchange, "any", b"via fanout")
    wait_for(lambda: queue_of(api, queue)["messages_ready"] == 1)
    assert api.get(path("exchanges", "/", exchange)).json() == {
        "arguments": {},
        "auto_delete": False,
        "durable": False,
        "incoming": [],
        "internal": False,
        "name": exchange,
        "outgoing": [],
        "type": "fanout",
        "vhost": "/",
    }

    assert api.delete(path("exchanges", "/", exchange)).status_code == 204
    assert api.delete(path("exchanges", "/", exchange)).status_code == 404
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.exchange_declare(exchange, "fanout", passive=True)
    assert closed.value.reply_code == 404

    other = channel.connection.channel()
    assert api.delete(path("queues", "/", queue)).status_code == 204
    with pytest.raises(ChannelClosedByBroker) as closed:
        other.queue_declare(queue, passive=True)
    assert closed.value.reply_code == 404


def test_delete_conditions_and_reserved_exchanges(
    api: Api, channel: Any, names: Any
) -> None:
    queue, exchange = names("cond"), names("condx")
    api.put(path("queues", "/", queue), {})
    api.put(path("exchanges", "/", exchange), {"type": "direct"})
    api.post(path("bindings", "/", "e", exchange, "q", queue), {"routing_key": "k"})
    channel.basic_publish("", queue, b"keep me")
    wait_for(lambda: queue_of(api, queue)["messages"] == 1)

    refused = api.delete(path("queues", "/", queue) + "?if-empty=true")
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "bad_request",
        "reason": f"queue '{queue}' in vhost '/' not empty",
    }
    in_use = api.delete(path("exchanges", "/", exchange) + "?if-unused=true")
    assert in_use.status_code == 400
    assert in_use.json()["reason"] == f"exchange '{exchange}' in vhost '/' in use"
    assert queue_of(api, queue)["messages"] == 1

    default = api.get(path("exchanges", "/", "amq.default"))
    assert default.json()["name"] == ""
    assert default.json()["user_who_performed_action"] == "rmq-internal"
    for method, exchange_path in (
        ("DELETE", path("exchanges", "/", "amq.direct")),
        ("DELETE", path("exchanges", "/", "amq.default")),
        ("PUT", path("exchanges", "/", "amq.mine")),
    ):
        answer = api.request(method, exchange_path, json={"type": "direct"})
        assert answer.status_code == 401
        assert answer.json() == {
            "error": "not_authorised",
            "reason": "Access refused.",
        }
    names_listed = [x["name"] for x in api.get("/api/exchanges/%2F").json()]
    assert names_listed[:2] == ["", "amq.direct"]
    assert "amq.mine" not in names_listed


# -- publish and get ----------------------------------------------------------------


def test_publish_reaches_pika_with_properties_and_headers(
    api: Api, channel: Any, names: Any
) -> None:
    queue = names("published")
    channel.queue_declare(queue)
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": {"trace": "abc", "count": 3, "flags": [True, "x"], "n": {"a": 1}},
        "delivery_mode": 2,
        "priority": 4,
        "correlation_id": "corr",
        "reply_to": "replies",
        "expiration": "60000",
        "message_id": "m-1",
        "timestamp": 1_600_000_000,
        "type": "greeting",
        "app_id": "tests",
    }
    payload = base64.b64encode(b"\x00\x01binary").decode()
    routed = publish(
        api,
        "amq.default",
        queue,
        payload,
        properties=properties,
        payload_encoding="base64",
    )
    assert routed == {"routed": True}
    method, got, body = _poll_get(channel, queue)
    assert body == b"\x00\x01binary"
    assert method.exchange == ""
    assert method.routing_key == queue
    assert got.content_type == "application/json"
    assert got.content_encoding == "utf-8"
    assert got.headers == {
        "trace": "abc",
        "count": 3,
        "flags": [True, "x"],
        "n": {"a": 1},
    }
    assert got.delivery_mode == 2
    assert got.priority == 4
    assert got.correlation_id == "corr"
    assert got.reply_to == "replies"
    assert got.expiration == "60000"
    assert got.message_id == "m-1"
    assert got.timestamp == 1_600_000_000
    assert got.type == "greeting"
    assert got.app_id == "tests"

    assert publish(api, "amq.default", names("nowhere"), "x") == {"routed": False}
    missing = api.post(
        path("exchanges", "/", "nosuchx", "publish"),
        {
            "properties": {},
            "routing_key": "",
            "payload": "",
            "payload_encoding": "string",
        },
    )
    assert missing.status_code == 400
    assert missing.json() == {
        "error": "bad_request",
        "reason": "404 NOT_FOUND - no exchange 'nosuchx' in vhost '/'",
    }


def _poll_get(channel: Any, queue: str) -> tuple[Any, Any, bytes]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, properties, body
        assert time.monotonic() < deadline, "no message arrived"
        channel.connection.process_data_events(time_limit=0.02)


def test_persistent_publish_is_stored_like_an_amqp_one(
    make_broker: Callable[..., EmbeddedBroker], tmp_path: Path
) -> None:
    settings = {"management": {"enabled": True}, "store": {"data_dir": str(tmp_path)}}
    first = make_broker(**settings)
    client = Api(first.management_url)
    client.put(path("queues", "/", "kept"), {"durable": True})
    publish(client, "", "kept", "durable", properties={"delivery_mode": 2})
    publish(client, "", "kept", "transient", properties={})
    state = queue_of(client, "kept")
    assert (state["messages"], state["messages_persistent"]) == (2, 1)
    client.close()
    first.stop()

    second = make_broker(**settings)
    client = Api(second.management_url)
    try:
        [message] = get(client, "kept", "ack_requeue_false", count=5)
    finally:
        client.close()
    assert message["payload"] == "durable"
    assert message["properties"] == {"delivery_mode": 2}
    assert message["redelivered"] is True  # recovered messages may have been seen


def test_get_in_each_ackmode(api: Api, channel: Any, names: Any) -> None:
    queue, dead = names("got"), names("dead")
    channel.queue_declare(dead)
    channel.queue_declare(
        queue,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
    )
    channel.basic_publish(
        "",
        queue,
        "héllo wörld".encode(),
        pika.BasicProperties(message_id="m1", headers={"a": 1}, priority=3),
    )
    channel.basic_publish("", queue, b"\xff\xfe")
    channel.basic_publish("", queue, b"third")
    wait_for(lambda: queue_of(api, queue)["messages_ready"] == 3)

    # ack_requeue_true: looked at, then put back, redelivered.
    first = get(api, queue, "ack_requeue_true", count=2, truncate=6)
    assert first == [
        {
            "payload_bytes": len("héllo wörld".encode()),
            "redelivered": False,
            "exchange": "",
            "routing_key": queue,
            "message_count": 2,
            "properties": {"message_id": "m1", "priority": 3, "headers": {"a": 1}},
            "payload": "héllo",
            "payload_encoding": "string",
        },
        {
            "payload_bytes": 2,
            "redelivered": False,
            "exchange": "",
            "routing_key": queue,
            "message_count": 1,
            "properties": [],
            "payload": base64.b64encode(b"\xff\xfe").decode(),
            "payload_encoding": "base64",
        },
    ]
    assert counts(queue_of(api, queue)) == (3, 3, 0, 0)
    again = get(api, queue, "reject_requeue_true", encoding="base64")
    assert again[0]["redelivered"] is True
    assert again[0]["payload_encoding"] == "base64"
    assert base64.b64decode(again[0]["payload"]) == "héllo wörld".encode()
    assert queue_of(api, queue)["messages_ready"] == 3

    # ack_requeue_false takes it for good; reject_requeue_false dead-letters.
    taken = get(api, queue, "ack_requeue_false")
    assert taken[0]["message_count"] == 2
    assert queue_of(api, queue)["messages"] == 2
    rejected = get(api, queue, "reject_requeue_false")
    assert rejected[0]["payload"] == base64.b64encode(b"\xff\xfe").decode()
    assert queue_of(api, queue)["messages"] == 1
    wait_for(lambda: queue_of(api, dead)["messages_ready"] == 1)
    _, properties, body = _poll_get(channel, dead)
    assert body == b"\xff\xfe"
    assert properties.headers["x-death"][0]["reason"] == "rejected"

    assert get(api, queue, "ack_requeue_false", count=5)[0]["payload"] == "third"
    assert get(api, queue, "ack_requeue_false") == []


def test_purge_empties_the_ready_messages(api: Api, channel: Any, names: Any) -> None:
    queue = names("purged")
    channel.queue_declare(queue)
    for body in (b"a", b"b", b"c"):
        channel.basic_publish("", queue, body)
    wait_for(lambda: queue_of(api, queue)["messages_ready"] == 3)
    answer = api.delete(path("queues", "/", queue, "contents"))
    assert answer.status_code == 204
    assert channel.queue_declare(queue, passive=True).method.message_count == 0
    assert queue_of(api, queue)["messages"] == 0
    missing = api.delete(path("queues", "/", names("nope"), "contents"))
    assert missing.status_code == 404
    assert missing.json() == {"error": "Object Not Found", "reason": "Not Found"}


# -- bindings --------------------------------------------------------------------------


def test_bindings_with_arguments_are_named_by_rabbitmqs_properties_key(
    api: Api, channel: Any, names: Any
) -> None:
    queue, exchange, relay = names("bq"), names("bx"), names("relay")
    channel.queue_declare(queue)
    api.put(path("exchanges", "/", exchange), {"type": "headers"})
    api.put(path("exchanges", "/", relay), {"type": "direct"})
    bindings = path("bindings", "/", "e", exchange, "q", queue)

    created = api.post(
        bindings, {"routing_key": "rk", "arguments": {"x-match": "all", "a": 1}}
    )
    assert created.status_code == 201
    location = created.headers["location"]
    assert location.startswith(f"{queue}/rk~")
    key = location.split("/", 1)[1]
    # RabbitMQ's own key for {"a": 1} on "rk" (from its answers).
    api.post(bindings, {"routing_key": "rk", "arguments": {"a": 1}})
    listed = api.get(bindings).json()
    assert {b["properties_key"] for b in listed} == {key, "rk~Ajat_Q"}
    assert api.get(f"{bindings}/{key}").json() == {
        "source": exchange,
        "vhost": "/",
        "destination": queue,
        "destination_type": "queue",
        "routing_key": "rk",
        "arguments": {"x-match": "all", "a": 1},
        "properties_key": key,
    }

    # The binding routes: a message with header a=1 arrives.
    channel.basic_publish(
        exchange, "", b"match", pika.BasicProperties(headers={"a": 1})
    )
    assert _poll_get(channel, queue)[2] == b"match"

    assert api.delete(f"{bindings}/{key}").status_code == 204
    assert api.delete(f"{bindings}/rk~Ajat_Q").status_code == 204
    assert api.delete(f"{bindings}/{key}").status_code == 404
    assert api.get(bindings).json() == []
    unbound = publish(api, exchange, "", "lost", properties={"headers": {"a": 1}})
    assert unbound == {"routed": False}
    assert queue_of(api, queue)["messages"] == 0

    # Exchange to exchange, with the source's and destination's views.
    e2e = api.post(
        path("bindings", "/", "e", relay, "e", exchange), {"routing_key": "a/b"}
    )
    assert e2e.status_code == 201
    assert e2e.headers["location"] == f"{exchange}/a%252Fb"
    [source_view] = api.get(path("exchanges", "/", relay, "bindings", "source")).json()
    [destination_view] = api.get(
        path("exchanges", "/", exchange, "bindings", "destination")
    ).json()
    assert source_view == destination_view
    assert source_view["destination_type"] == "exchange"
    assert source_view["properties_key"] == "a%2Fb"
    by_key = api.get(
        path("bindings", "/", "e", relay, "e", exchange, source_view["properties_key"])
    )
    assert by_key.json()["routing_key"] == "a/b"

    # Every queue is bound to the default exchange by its name.
    assert api.get(path("queues", "/", queue, "bindings")).json() == [
        {
            "source": "",
            "vhost": "/",
            "destination": queue,
            "destination_type": "queue",
            "routing_key": queue,
            "arguments": {},
            "properties_key": queue,
        }
    ]
    everything = api.get("/api/bindings").json()
    assert [b["source"] for b in everything].count("") == 1
    refused = api.post(path("bindings", "/", "e", "amq.default", "q", queue), {})
    assert refused.status_code == 401
    missing = api.post(path("bindings", "/", "e", "nosuchx", "q", queue), {})
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "not_found",
        "reason": "no exchange 'nosuchx' in vhost '/'",
    }


# -- connections -------------------------------------------------------------------


def _connection_named(api: Api, provided: str) -> dict[str, Any]:
    return wait_for(
        lambda: next(
            (
                c
                for c in api.get("/api/connections").json()
                if c.get("user_provided_name") == provided
            ),
            None,
        )
    )


def test_closing_a_connection_through_the_api(
    api: Api, connect: Callable[..., pika.BlockingConnection]
) -> None:
    with_reason = connect(client_properties={"connection_name": "to-close"})
    plain = connect(client_properties={"connection_name": "to-close-too"})
    plain.channel()
    target = _connection_named(api, "to-close")
    name_path = path("connections", target["name"])
    assert api.get(name_path).json()["name"] == target["name"]

    answer = api.delete(name_path, headers={"X-Reason": "maintenance window"})
    assert answer.status_code == 204
    with pytest.raises(ConnectionClosedByBroker) as closed:
        wait_for(lambda: False, with_reason)
    assert closed.value.reply_code == 320
    assert closed.value.reply_text == "CONNECTION_FORCED - maintenance window"

    other = _connection_named(api, "to-close-too")
    channels = api.get(path("connections", other["name"], "channels")).json()
    assert [c["number"] for c in channels] == [1]
    assert api.delete(path("connections", other["name"])).status_code == 204
    with pytest.raises(ConnectionClosedByBroker) as closed:
        wait_for(lambda: False, plain)
    assert closed.value.reply_text == "CONNECTION_FORCED - Closed via management plugin"

    wait_for(lambda: api.get("/api/connections").json() == [])
    assert api.delete(name_path).status_code == 404
    assert api.get(name_path).status_code == 404


def test_channel_objects_show_confirm_and_transactions(
    api: Api, connect: Callable[..., pika.BlockingConnection]
) -> None:
    connection = connect()
    confirming = connection.channel()
    confirming.confirm_delivery()
    transacting = connection.channel()
    transacting.tx_select()
    transacting.basic_publish("", "anywhere", b"uncommitted")
    transacting.basic_qos(prefetch_count=5, global_qos=True)
    channels = wait_for(
        lambda: (
            (listed := api.get("/api/vhosts/%2F/channels").json())
            and len(listed) == 2
            and listed
        )
    )
    by_number = {c["number"]: c for c in channels}
    assert by_number[confirming.channel_number]["confirm"] is True
    assert by_number[confirming.channel_number]["transactional"] is False
    tx_channel = by_number[transacting.channel_number]
    assert tx_channel["transactional"] is True
    assert tx_channel["messages_uncommitted"] == 1
    assert tx_channel["global_prefetch_count"] == 5
    assert tx_channel["vhost"] == "/"
    assert tx_channel["user"] == "guest"
    single = api.get(path("channels", tx_channel["name"]))
    assert single.json() == tx_channel
    assert api.get(path("channels", "nope (1)")).status_code == 404
    [conn] = api.get(path("vhosts", "/", "connections")).json()
    assert tx_channel["connection_details"] == {
        "name": conn["name"],
        "peer_host": conn["peer_host"],
        "peer_port": conn["peer_port"],
    }


# -- bad input ------------------------------------------------------------------


def test_bad_input_is_refused_with_a_reason_and_changes_nothing(
    api: Api, channel: Any, names: Any
) -> None:
    queue = names("strict")
    assert api.put(path("queues", "/", queue), {"durable": True}).status_code == 201

    def refused(method: str, url: str, status: int, **kwargs: Any) -> Any:
        answer = api.request(method, url, **kwargs)
        assert answer.status_code == status, answer.text
        return answer.json()

    fresh = path("queues", "/", names("never"))
    assert refused("PUT", fresh, 400, content=b'{"durable": tru') == {
        "error": "bad_request",
        "reason": "not_json",
    }
    assert refused("PUT", fresh, 400, json={"durable": "yes"})["reason"] == [
        "not_boolean",
        "yes",
    ]
    assert refused("PUT", fresh, 400, json={"arguments": {"x-max-length": None}}) == {
        "error": "bad_request",
        "reason": "null_not_allowed",
    }
    assert refused("PUT", fresh, 400, json={"arguments": {"x-max-length": "5"}})[
        "reason"
    ] == (
        f"invalid arg 'x-max-length' for queue '{names('never')}' in vhost '/': "
        '"expected integer, got longstr"'
    )
    assert refused("PUT", path("queues", "nosuchvhost", "q"), 404, json={}) == {
        "error": "not_found",
        "reason": "vhost_not_found",
    }
    assert refused("PUT", path("queues", "/", queue), 400, json={"durable": False}) == {
        "error": "bad_request",
        "reason": f"inequivalent arg 'durable' for queue '{queue}' in vhost '/': "
        "received 'false' but current is 'true'",
    }
    assert refused("PUT", path("exchanges", "/", "x"), 400, json={"type": "nope"}) == {
        "error": "bad_request",
        "reason": "unknown exchange type 'nope'",
    }
    assert refused("GET", path("queues", "nosuchvhost"), 404) == {
        "error": "Object Not Found",
        "reason": "Not Found",
    }
    publish_path = path("exchanges", "/", "amq.default", "publish")
    assert refused("POST", publish_path, 400, json={"properties": {}})["reason"] == (
        "[{key_missing,routing_key},{key_missing,payload},"
        "{key_missing,payload_encoding}]"
    )
    assert refused(
        "POST",
        publish_path,
        400,
        json={
            "properties": {"delivery_mode": "2"},
            "routing_key": queue,
            "payload": "x",
            "payload_encoding": "string",
        },
    )["reason"] == ["not_int", "delivery_mode"]
    get_path = path("queues", "/", queue, "get")
    bogus = refused(
        "POST", get_path, 400, json={"count": 1, "ackmode": "bogus", "encoding": "auto"}
    )
    assert "ackmode" in bogus["reason"]
    assert (
        refused(
            "POST", get_path, 400, json={"count": 1, "ackmode": "ack_requeue_false"}
        )["reason"]
        == "[{key_missing,encoding}]"
    )
    unknown_queue = refused(
        "POST",
        path("queues", "/", "nosuchq", "get"),
        404,
        json={"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"},
    )
    assert unknown_queue["reason"] == "NOT_FOUND - no queue 'nosuchq' in vhost '/'"

    # Nothing was created, and the queue is as it was.
    assert api.get(fresh).status_code == 404
    assert api.get(path("exchanges", "/", "x")).status_code == 404
    assert queue_of(api, queue)["durable"] is True
    assert queue_of(api, queue)["messages"] == 0
    assert channel.queue_declare(queue, passive=True).method.message_count == 0


# -- permissions and visibility ------------------------------------------------------


def test_writes_need_the_users_amqp_permissions(
    api: Api, broker: EmbeddedBroker, connect: Callable[..., pika.BlockingConnection]
) -> None:
    add_user(broker, "noconf", ("management",), {"/": ("^$", ".*", ".*")})
    add_user(broker, "noread", ("management",), {"/": (".*", ".*", "^$")})
    limited = api.as_user("noconf", "noconf")
    answer = limited.put(path("queues", "/", "forbidden"), {})
    assert answer.status_code == 401
    assert answer.json() == {"error": "not_authorised", "reason": "Access refused."}
    assert api.get(path("queues", "/", "forbidden")).status_code == 404

    api.put(path("queues", "/", "readable"), {})
    publish(api, "", "readable", "secret")
    reader = api.as_user("noread", "noread")
    answer = reader.post(
        path("queues", "/", "readable", "get"),
        {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"},
    )
    assert answer.status_code == 401
    assert answer.json()["reason"] == (
        "ACCESS_REFUSED - access to queue 'readable' in vhost '/' refused for "
        "user 'noread'"
    )
    assert reader.delete(path("queues", "/", "readable", "contents")).status_code == 401
    assert queue_of(api, "readable")["messages"] == 1


def test_management_users_see_their_vhosts_and_connections(
    api: Api, broker: EmbeddedBroker, connect: Callable[..., pika.BlockingConnection]
) -> None:
    add_user(broker, "tenant", ("management",), {"/": (".*", ".*", ".*")})
    add_user(broker, "watcher", ("monitoring",), {"/": (".*", ".*", ".*")})
    grant_all(broker, "guest", "private")
    assert api.put(path("queues", "private", "hidden"), {}).status_code == 201
    api.put(path("queues", "/", "shared"), {})
    guest_connection = connect()
    guest_connection.channel()
    tenant_connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            broker.port,
            credentials=pika.PlainCredentials("tenant", "tenant"),
        )
    )
    try:
        tenant = api.as_user("tenant", "tenant")
        watcher = api.as_user("watcher", "watcher")
        assert [q["name"] for q in tenant.get("/api/queues").json()] == ["shared"]
        assert [q["name"] for q in watcher.get("/api/queues").json()] == ["shared"]
        assert [q["name"] for q in api.get("/api/queues").json()] == [
            "shared",
            "hidden",
        ]
        for client in (tenant, watcher):
            answer = client.get(path("queues", "private"))
            assert answer.status_code == 401
            assert answer.json()["reason"] == (
                "User not authorised to access virtual host"
            )

        everyone = wait_for(
            lambda: (
                (listed := watcher.get("/api/connections").json())
                and len(listed) == 2
                and listed
            )
        )
        [own] = tenant.get("/api/connections").json()
        assert own["user"] == "tenant"
        [guests] = [c for c in everyone if c["user"] == "guest"]
        assert tenant.get(path("connections", guests["name"])).json() == {
            "error": "not_authorised",
            "reason": "User not authorised to access object",
        }
        assert tenant.get(path("connections", own["name"])).status_code == 200
        # Only an administrator (or its owner) may close a connection.
        assert watcher.delete(path("connections", guests["name"])).status_code == 401
        assert tenant.get("/api/channels").json() == []
        assert len(watcher.get("/api/channels").json()) == 1
    finally:
        tenant_connection.close()


# -- list parameters ------------------------------------------------------------


def test_lists_sort_page_and_select_columns(api: Api) -> None:
    for name, messages in (("b-queue", 2), ("a-queue", 1), ("c-queue", 3)):
        api.put(path("queues", "/", name), {})
        for _ in range(messages):
            publish(api, "", name, "m")

    by_name = api.get("/api/queues?columns=name").json()
    assert by_name == [{"name": "a-queue"}, {"name": "b-queue"}, {"name": "c-queue"}]
    busiest = api.get(
        "/api/queues?sort=messages&sort_reverse=true&columns=name,messages"
    ).json()
    assert busiest == [
        {"messages": 3, "name": "c-queue"},
        {"messages": 2, "name": "b-queue"},
        {"messages": 1, "name": "a-queue"},
    ]
    page = api.get("/api/queues?page=2&page_size=2&columns=name").json()
    assert page == {
        "filtered_count": 3,
        "item_count": 1,
        "items": [{"name": "c-queue"}],
        "page": 2,
        "page_count": 2,
        "page_size": 2,
        "total_count": 3,
    }
    filtered = api.get("/api/queues?page=1&name=B-Q&columns=name").json()
    assert (filtered["filtered_count"], filtered["items"]) == (1, [{"name": "b-queue"}])
    out_of_range = api.get("/api/queues?page=9&page_size=2")
    assert out_of_range.status_code == 400
    assert out_of_range.json() == {
        "error": "page_out_of_range",
        "reason": "Page out of range, page: 9 page size: 2, len: 3",
    }
    assert api.get("/api/queues?page=x").status_code == 400
    single = api.get(path("queues", "/", "a-queue") + "?columns=name,messages")
    assert single.json() == {"messages": 1, "name": "a-queue"}


def test_properties_keys_are_rabbitmqs() -> None:
    # Keys RabbitMQ 3.10.8 gave for these bindings (its phash2 of the
    # arguments, url-safe base64), and its quoting of routing keys.
    assert properties_key("k2", {"x-foo": "bar"}) == "k2~EDqv5Q"
    assert properties_key("rk", {"a": 1}) == "rk~Ajat_Q"
    assert properties_key("", {"b": {"c": [1, "x", True, 2.5]}}) == "~c7iwpw"
    assert properties_key("", {}) == "~"
    assert properties_key("a/b", {}) == "a%2Fb"
    assert properties_key("é", {}) == "%C3%A9"
    assert properties_key("a b~c", {}) == "a+b%7Ec"
