"""/metrics and /metrics/per-object in RabbitMQ's Prometheus names, and the
API's message_stats: pika does the traffic, the scrape must count exactly
what it did (the counts RabbitMQ 3.10.8 gave for the same steps)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pika
import pytest
from helpers.management import Api, path
from helpers.queue_features import wait_until
from pika.exceptions import ChannelClosedByBroker, UnroutableError

from amqpy.server.embedded import EmbeddedBroker

Labels = frozenset[tuple[str, str]]
Scrape = dict[str, dict[Labels, float]]

AMQP = {"protocol": "amqp091"}
CLASSIC = {"protocol": "amqp091", "queue_type": "rabbit_classic_queue"}

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_exposition(text: str) -> tuple[Scrape, dict[str, str]]:
    """A strict reader of the Prometheus text format 0.0.4 as RabbitMQ
    writes it: every family's `# TYPE` line comes first, then `# HELP`, then
    its samples; a sample of an undeclared family, a repeated family or
    sample, or an unparsable line fails the test. Returns the samples by
    name and labels, and each family's type."""
    assert text.endswith("\n")
    samples: Scrape = {}
    types: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"family {name} twice"
            assert kind in ("counter", "gauge", "untyped", "summary", "histogram")
            types[name] = kind
            current = name
            samples[name] = {}
            continue
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name == current, f"HELP for {name} not right after its TYPE"
            continue
        match = _SAMPLE.fullmatch(line)
        assert match is not None, f"not a sample: {line!r}"
        name, label_text, value = match.groups()
        assert name == current, f"sample of {name} outside its family"
        labels: list[tuple[str, str]] = []
        rest = label_text or ""
        while rest:
            label = _LABEL.match(rest)
            assert label is not None, f"bad labels: {label_text!r}"
            raw = label.group(2)
            unescaped = re.sub(
                r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw
            )
            labels.append((label.group(1), unescaped))
            rest = rest[label.end() :]
        key = frozenset(labels)
        assert key not in samples[name], f"sample {line!r} twice"
        samples[name][key] = float(value)
    return samples, types


def value(scrape: Scrape, name: str, **labels: str) -> float:
    return scrape[name][frozenset(labels.items())]


@pytest.fixture
def broker(managed_broker: EmbeddedBroker) -> EmbeddedBroker:
    return managed_broker


@pytest.fixture
def scrape(broker: EmbeddedBroker) -> Callable[..., Scrape]:
    """GET /metrics (or /metrics/per-object) without credentials, parsed."""

    def get(path: str = "/metrics") -> Scrape:
        answer = httpx.get(broker.management_url + path, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/plain; version=0.0.4"
        return parse_exposition(answer.text)[0]

    return get


def test_every_counter_counts_what_the_clients_did(
    scrape: Callable[..., Scrape],
    api: Api,
    connect: Callable[..., pika.BlockingConnection],
    names: Callable[[str], str],
) -> None:
    connection = connect()
    channel = connection.channel()
    q, q2, fanout = names("q"), names("q2"), names("fx")
    dlx, dead, rejecting = names("dlx"), names("dead"), names("rq")
    short, instant = names("short"), names("ttl0")
    nowhere = names("nowhere")
    channel.queue_declare(q)
    channel.queue_declare(q2)
    channel.exchange_declare(fanout, "fanout")
    channel.queue_bind(q, fanout)
    channel.queue_bind(q2, fanout)
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dead)
    channel.queue_bind(dead, dlx)
    channel.queue_declare(rejecting, arguments={"x-dead-letter-exchange": dlx})
    channel.queue_declare(short, arguments={"x-max-length": 1})
    channel.queue_declare(instant, arguments={"x-message-ttl": 0})

    for _ in range(3):
        channel.basic_publish("", q, b"plain")
    channel.basic_publish("", nowhere, b"dropped")
    channel.basic_publish("", nowhere, b"returned", mandatory=True)
    channel.basic_publish(fanout, "", b"to both")
    confirming = connection.channel()
    confirming.confirm_delivery()
    confirming.basic_publish("", q, b"confirmed")
    confirming.basic_publish("", q, b"confirmed")
    with pytest.raises(UnroutableError):
        confirming.basic_publish("", nowhere, b"returned", mandatory=True)

    # q has 6 messages, q2 has 1.
    assert channel.basic_get(q2, auto_ack=True)[0] is not None
    assert channel.basic_get(q2, auto_ack=True)[0] is None
    got = channel.basic_get(q, auto_ack=False)[0]
    assert got is not None
    channel.basic_ack(got.delivery_tag)

    tags: list[int] = []
    channel.basic_consume(
        q, lambda _c, method, _p, _b: tags.append(method.delivery_tag)
    )
    wait_until(channel, lambda: len(tags) == 5)
    channel.basic_nack(tags[0], requeue=True)
    wait_until(channel, lambda: len(tags) == 6)  # the nacked one, redelivered
    channel.basic_ack(tags[-1], multiple=True)

    channel.basic_publish("", q2, b"auto")
    channel.basic_publish("", q2, b"auto")
    auto: list[bytes] = []
    channel.basic_consume(q2, lambda *args: auto.append(args[3]), auto_ack=True)
    wait_until(channel, lambda: len(auto) == 2)

    channel.basic_publish("", rejecting, b"rejected")
    got = channel.basic_get(rejecting, auto_ack=False)[0]
    assert got is not None
    channel.basic_reject(got.delivery_tag, requeue=False)
    for _ in range(3):
        channel.basic_publish("", short, b"over the limit")
    channel.basic_publish("", instant, b"expires at once")

    refused = connection.channel()
    refused.basic_publish(names("no-such-exchange"), "", b"refused")
    with pytest.raises(ChannelClosedByBroker):
        refused.queue_declare(q, passive=True)
    channel.queue_declare(q, passive=True)  # every publish above is handled

    metrics = scrape()
    expected_counters = {
        "rabbitmq_global_messages_received_total": (AMQP, 17),
        "rabbitmq_global_messages_received_confirm_total": (AMQP, 3),
        "rabbitmq_global_messages_routed_total": (AMQP, 14),
        "rabbitmq_global_messages_confirmed_total": (AMQP, 3),
        "rabbitmq_global_messages_unroutable_dropped_total": (AMQP, 1),
        "rabbitmq_global_messages_unroutable_returned_total": (AMQP, 2),
        "rabbitmq_global_messages_delivered_total": (CLASSIC, 11),
        "rabbitmq_global_messages_delivered_consume_auto_ack_total": (CLASSIC, 2),
        "rabbitmq_global_messages_delivered_consume_manual_ack_total": (CLASSIC, 6),
        "rabbitmq_global_messages_delivered_get_auto_ack_total": (CLASSIC, 1),
        "rabbitmq_global_messages_delivered_get_manual_ack_total": (CLASSIC, 2),
        "rabbitmq_global_messages_redelivered_total": (CLASSIC, 1),
        "rabbitmq_global_messages_acknowledged_total": (CLASSIC, 6),
        "rabbitmq_global_messages_get_empty_total": (CLASSIC, 1),
        "rabbitmq_global_consumers": (AMQP, 2),
    }
    for name, (labels, count) in expected_counters.items():
        assert value(metrics, name, **labels) == count, name
    dead_lettered = {
        (reason, strategy): value(
            metrics,
            f"rabbitmq_global_messages_dead_lettered_{reason}_total",
            queue_type="rabbit_classic_queue",
            dead_letter_strategy=strategy,
        )
        for reason in ("rejected", "expired", "maxlen")
        for strategy in ("at_most_once", "disabled")
    }
    assert dead_lettered == {
        ("rejected", "at_most_once"): 1,
        ("rejected", "disabled"): 0,
        ("expired", "at_most_once"): 0,
        ("expired", "disabled"): 1,
        ("maxlen", "at_most_once"): 0,
        ("maxlen", "disabled"): 2,
    }
    assert {
        name: value(metrics, name)
        for name in (
            "rabbitmq_connections_opened_total",
            "rabbitmq_connections_closed_total",
            "rabbitmq_channels_opened_total",
            "rabbitmq_channels_closed_total",
            "rabbitmq_connections",
            "rabbitmq_channels",
            "rabbitmq_consumers",
            "rabbitmq_queues",
            "rabbitmq_queue_messages_ready",
            "rabbitmq_queue_messages_unacked",
            "rabbitmq_queue_messages",
            "rabbitmq_queue_consumers",
        )
    } == {
        "rabbitmq_connections_opened_total": 1,
        "rabbitmq_connections_closed_total": 0,
        "rabbitmq_channels_opened_total": 3,
        "rabbitmq_channels_closed_total": 1,
        "rabbitmq_connections": 1,
        "rabbitmq_channels": 2,
        "rabbitmq_consumers": 2,
        "rabbitmq_queues": 6,
        # One in the dead-letter queue, one in the length-limited one.
        "rabbitmq_queue_messages_ready": 2,
        "rabbitmq_queue_messages_unacked": 0,
        "rabbitmq_queue_messages": 2,
        "rabbitmq_queue_consumers": 2,
    }

    overview = api.get("/api/overview").json()["message_stats"]
    assert {key: count for key, count in overview.items() if "_details" not in key} == {
        "publish": 16,  # received, less the one refused before routing
        "confirm": 3,
        "return_unroutable": 2,
        "drop_unroutable": 1,
        "deliver": 6,
        "deliver_no_ack": 2,
        "get": 2,
        "get_no_ack": 1,
        "get_empty": 1,
        "deliver_get": 11,
        "ack": 6,
        "redeliver": 1,
    }
    assert all(
        overview[key] == {"rate": overview[key]["rate"]}
        and isinstance(overview[key]["rate"], float)
        for key in overview
        if key.endswith("_details")
    )

    def queue_stats(name: str) -> dict[str, Any]:
        document = api.get(path("queues", "/", name)).json()
        counts = document.get("message_stats", {})
        return {key: count for key, count in counts.items() if "_details" not in key}

    assert queue_stats(q) == {
        "publish": 6,
        "deliver": 6,
        "deliver_no_ack": 0,
        "get": 1,
        "get_no_ack": 0,
        "get_empty": 0,
        "ack": 6,
        "redeliver": 1,
        "deliver_get": 7,
    }
    assert queue_stats(q2) == {
        "publish": 3,
        "deliver": 0,
        "deliver_no_ack": 2,
        "get": 0,
        "get_no_ack": 1,
        "get_empty": 1,
        "ack": 0,
        "redeliver": 0,
        "deliver_get": 3,
    }
    # As RabbitMQ: a queue that never had traffic has no message_stats.
    channel.queue_declare(names("idle"))
    assert "message_stats" not in api.get(path("queues", "/", names("idle"))).json()


def test_per_object_queue_metrics_carry_vhost_and_queue_labels(
    scrape: Callable[..., Scrape],
    channel: Any,
    names: Callable[[str], str],
) -> None:
    busy, idle = names("busy"), names('odd "name" \\ here')
    channel.queue_declare(busy)
    channel.queue_declare(idle)
    for _ in range(3):
        channel.basic_publish("", busy, b"m")
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(busy, lambda *args: None)
    channel.queue_declare(busy, passive=True)

    per_object = scrape("/metrics/per-object")
    wanted = {
        "rabbitmq_queue_messages_ready": (2, 0),
        "rabbitmq_queue_messages_unacked": (1, 0),
        "rabbitmq_queue_messages": (3, 0),
        "rabbitmq_queue_consumers": (1, 0),
        "rabbitmq_queue_messages_ready_bytes": (2, 0),
    }
    for name, (on_busy, on_idle) in wanted.items():
        assert per_object[name] == {
            frozenset({("vhost", "/"), ("queue", busy)}): on_busy,
            frozenset({("vhost", "/"), ("queue", idle)}): on_idle,
        }, name
    # Aggregated: one sample without labels.
    assert scrape()["rabbitmq_queue_messages"] == {frozenset(): 3}
    # The rest is the same on both.
    assert per_object["rabbitmq_queues"] == {frozenset(): 2}


def test_counts_outlive_channels_connections_queues_and_vhosts(
    broker: EmbeddedBroker,
    scrape: Callable[..., Scrape],
    connect: Callable[..., pika.BlockingConnection],
    names: Callable[[str], str],
) -> None:
    vhost, queue = names("vhost"), names("q")

    def add_vhost() -> None:
        broker.server.broker.add_vhost(vhost)
        broker.server.broker.set_permissions("guest", vhost, ".*", ".*", ".*")

    broker.call(add_vhost)
    connection = connect(virtual_host=vhost)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"1")
    channel.basic_publish("", queue, b"2")
    assert channel.basic_get(queue, auto_ack=True)[0] is not None
    channel.queue_delete(queue)
    connection.close()

    deadline = time.monotonic() + 5
    while value(scrape(), "rabbitmq_connections_closed_total") < 1:
        assert time.monotonic() < deadline, "the connection's end was not counted"
        time.sleep(0.01)
    broker.call(lambda: broker.server.delete_vhost(vhost))

    metrics = scrape()
    assert value(metrics, "rabbitmq_global_messages_received_total", **AMQP) == 2
    assert (
        value(metrics, "rabbitmq_global_messages_received_confirm_total", **AMQP) == 2
    )
    assert value(metrics, "rabbitmq_global_messages_confirmed_total", **AMQP) == 2
    assert value(metrics, "rabbitmq_global_messages_routed_total", **AMQP) == 2
    assert (
        value(
            metrics, "rabbitmq_global_messages_delivered_get_auto_ack_total", **CLASSIC
        )
        == 1
    )
    assert value(metrics, "rabbitmq_connections_opened_total") == 1
    assert value(metrics, "rabbitmq_connections_closed_total") == 1
    assert value(metrics, "rabbitmq_channels_opened_total") == 1
    assert value(metrics, "rabbitmq_channels_closed_total") == 1
    assert value(metrics, "rabbitmq_queues") == 0


def test_a_failed_login_is_a_closed_connection_as_in_rabbitmq(
    broker: EmbeddedBroker, scrape: Callable[..., Scrape]
) -> None:
    parameters = pika.ConnectionParameters(
        "127.0.0.1",
        broker.port,
        credentials=pika.PlainCredentials("guest", "wrong"),
        connection_attempts=1,
    )
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(parameters)
    deadline = time.monotonic() + 5
    while value(scrape(), "rabbitmq_connections_closed_total") < 1:
        assert time.monotonic() < deadline, "the refused connection was not counted"
        time.sleep(0.01)
    metrics = scrape()
    assert value(metrics, "rabbitmq_connections_opened_total") == 0
    assert value(metrics, "rabbitmq_connections_closed_total") == 1


def test_the_scrape_has_rabbitmqs_families_and_needs_no_login(
    broker: EmbeddedBroker,
) -> None:
    answer = httpx.get(broker.management_url + "/metrics", timeout=10)
    assert answer.status_code == 200
    scrape, types = parse_exposition(answer.text)
    assert types["rabbitmq_global_messages_received_total"] == "counter"
    assert types["rabbitmq_queue_messages_ready"] == "gauge"
    assert types["rabbitmq_identity_info"] == "untyped"
    assert value(scrape, "rabbitmq_disk_space_available_bytes") > 0
    assert value(scrape, "rabbitmq_disk_space_available_limit_bytes") == (
        broker.config.store.disk_free_limit_bytes
    )
    assert value(scrape, "rabbitmq_process_resident_memory_bytes") > 0
    assert value(scrape, "rabbitmq_resident_memory_limit_bytes") == (
        broker.server.memory_limit_bytes
    )
    identity = next(iter(scrape["rabbitmq_identity_info"]))
    assert dict(identity)["rabbitmq_cluster"] == broker.config.server.cluster_name
    # As RabbitMQ's: the TYPE line first, then HELP.
    assert (
        "# TYPE rabbitmq_queues gauge\n# HELP rabbitmq_queues Queues available\n"
        "rabbitmq_queues 0\n"
    ) in answer.text
