"""Prometheus metrics in the names and shape of RabbitMQ's rabbitmq_prometheus
plugin (3.10): GET /metrics (queue metrics summed over all queues) and
/metrics/per-object (one sample per queue, labelled {vhost, queue}), text
format 0.0.4, served without authentication as RabbitMQ serves them.

Only families amqpy has a counterpart for are given; each is written as
RabbitMQ writes it: `# TYPE`, then `# HELP`, then the samples.
"""

from __future__ import annotations

import base64
import hashlib
import os
import platform
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from amqpy import __version__
from amqpy.broker import stats
from amqpy.broker.stats import (
    AT_MOST_ONCE,
    DISABLED,
    Counts,
    Rates,
    broker_stats,
    vhost_counts,
)
from amqpy.management.app import Context, Endpoint, Level
from amqpy.server.run import resident_memory_bytes

if TYPE_CHECKING:
    from amqpy.broker.queue import Queue
    from amqpy.broker.vhost import VHost
    from amqpy.server.run import BrokerServer

CONTENT_TYPE = "text/plain; version=0.0.4"
RABBITMQ_VERSION = "3.10.8"

Labels = Sequence[tuple[str, str]]
Sample = tuple[Labels, int | float]

AMQP = (("protocol", "amqp091"),)
CLASSIC = (*AMQP, ("queue_type", "rabbit_classic_queue"))

# Rates of the API's message_stats, per object (queue, user, broker).
RATES = Rates()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: int | float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    return str(int(value))


class Exposition:
    """Metric families in the Prometheus text format 0.0.4."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[Sample]
    ) -> None:
        lines = self._lines
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"# HELP {name} {help_text}")
        for labels, value in samples:
            if labels:
                text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels)
                lines.append(f"{name}{{{text}}} {_format_value(value)}")
            else:
                lines.append(f"{name} {_format_value(value)}")

    def single(self, name: str, kind: str, help_text: str, value: int | float) -> None:
        self.family(name, kind, help_text, [((), value)])

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def global_counts(server: BrokerServer) -> Counts:
    """Every counter of the broker: its vhosts' queues and open channels,
    and what deleted queues, closed channels and deleted vhosts counted."""
    broker = server.broker
    churn = broker_stats(broker)
    churn.forget_deleted(broker.vhosts.values())
    counts = churn.retired.copy()
    for vhost in broker.vhosts.values():
        counts.add(vhost_counts(vhost, ()))
    for connection in server.connections:
        for handler in connection.channels.values():
            counts.add_channel(handler)
    return counts


def vhost_counts_of(server: BrokerServer, vhosts: Iterable[VHost]) -> Counts:
    """The counters of `vhosts` summed: their queues, their open channels,
    and the deleted queues and closed channels before them."""
    wanted = {id(vhost): vhost for vhost in vhosts}
    counts = Counts()
    for vhost in wanted.values():
        counts.add(vhost_counts(vhost, ()))
    for connection in server.connections:
        if connection.opened and id(connection.vhost) in wanted:
            for handler in connection.channels.values():
                counts.add_channel(handler)
    return counts


def overview_message_stats(context: Context) -> dict[str, Any]:
    """/api/overview's message_stats: the whole broker's for monitoring
    users and administrators, the user's vhosts' for others (as RabbitMQ).
    Rates are the change between samples taken at most every 5 s when the
    overview is read."""
    server = context.server
    if context.level >= Level.MONITORING:
        counts = global_counts(server)
        key: object = broker_stats(server.broker)
    else:
        vhosts = context.visible_vhosts()
        counts = vhost_counts_of(server, vhosts)
        key = "user:" + context.user.name
    counters = stats.overview_message_stats(counts)
    return stats.message_stats(counters, RATES.rates(key, counters))


def queue_message_stats(queue: Queue) -> dict[str, Any]:
    """`{"message_stats": ...}` for a queue's JSON, RabbitMQ's shape, with
    rates from samples taken at most every 5 s when it is read; `{}` for a
    queue that never had traffic (RabbitMQ leaves the field out then)."""
    counters = stats.queue_message_stats(queue)
    if not any(counters.values()):
        return {}
    return {
        "message_stats": stats.message_stats(counters, RATES.rates(queue, counters))
    }


def _queue_families(out: Exposition, queues: list[Queue], per_object: bool) -> None:
    """RabbitMQ's queue gauges: summed without labels, or per queue."""

    def samples(values: Iterable[int]) -> list[Sample]:
        if per_object:
            return [
                ((("vhost", queue.vhost_name), ("queue", queue.name)), value)
                for queue, value in zip(queues, values, strict=True)
            ]
        return [((), sum(values))]

    ready = [queue.message_count for queue in queues]
    unacked = [queue.unacked_count for queue in queues]
    out.family(
        "rabbitmq_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers",
        samples(ready),
    )
    out.family(
        "rabbitmq_queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged",
        samples(unacked),
    )
    out.family(
        "rabbitmq_queue_messages",
        "gauge",
        "Sum of ready and unacknowledged messages - total queue depth",
        samples([r + u for r, u in zip(ready, unacked, strict=True)]),
    )
    out.family(
        "rabbitmq_queue_consumers",
        "gauge",
        "Consumers on a queue",
        samples([queue.consumer_count for queue in queues]),
    )
    out.family(
        "rabbitmq_queue_messages_ready_bytes",
        "gauge",
        "Size in bytes of ready messages",
        samples([queue.ready_bytes for queue in queues]),
    )


def _disk_free_bytes(server: BrokerServer) -> int | None:
    try:
        usage = os.statvfs(server.config.store.data_dir)
    except OSError:
        return None
    return usage.f_bavail * usage.f_frsize


def _cluster_id(cluster_name: str) -> str:
    """A stable stand-in for RabbitMQ's rabbitmq_cluster_permanent_id."""
    digest = hashlib.sha256(cluster_name.encode()).digest()
    return "rabbitmq-cluster-id-" + base64.urlsafe_b64encode(digest).decode()[:22]


def exposition(server: BrokerServer, *, per_object: bool) -> str:
    """The whole scrape, as text."""
    broker = server.broker
    churn = broker_stats(broker)
    counts = global_counts(server)
    queues = [
        queue for vhost in broker.vhosts.values() for queue in vhost.queues.values()
    ]
    connections = [connection for connection in server.connections if connection.opened]
    out = Exposition()

    out.single(
        "rabbitmq_connections_opened_total",
        "counter",
        "Total number of connections opened",
        churn.connections_opened,
    )
    out.single(
        "rabbitmq_connections_closed_total",
        "counter",
        "Total number of connections closed or terminated",
        churn.connections_closed,
    )
    out.single(
        "rabbitmq_channels_opened_total",
        "counter",
        "Total number of channels opened",
        churn.channels_opened,
    )
    out.single(
        "rabbitmq_channels_closed_total",
        "counter",
        "Total number of channels closed",
        churn.channels_closed,
    )
    memory = resident_memory_bytes()
    if memory is not None:
        out.single(
            "rabbitmq_process_resident_memory_bytes",
            "gauge",
            "Memory used in bytes",
            memory,
        )
    disk_free = _disk_free_bytes(server)
    if disk_free is not None:
        out.single(
            "rabbitmq_disk_space_available_bytes",
            "gauge",
            "Disk space available in bytes",
            disk_free,
        )
    if server.memory_limit_bytes:  # 0 when the machine's memory is unknown
        out.single(
            "rabbitmq_resident_memory_limit_bytes",
            "gauge",
            "Memory high watermark in bytes",
            server.memory_limit_bytes,
        )
    out.single(
        "rabbitmq_disk_space_available_limit_bytes",
        "gauge",
        "Free disk space low watermark in bytes",
        server.disk_free_limit_bytes,
    )

    _queue_families(out, queues, per_object)

    consumers = sum(queue.consumer_count for queue in queues)
    out.single(
        "rabbitmq_connections", "gauge", "Connections currently open", len(connections)
    )
    out.single(
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        sum(len(connection.channels) for connection in connections),
    )
    out.single(
        "rabbitmq_consumers", "gauge", "Consumers currently connected", consumers
    )
    out.single("rabbitmq_queues", "gauge", "Queues available", len(queues))
    out.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
        [
            (
                (
                    ("rabbitmq_version", RABBITMQ_VERSION),
                    ("prometheus_plugin_version", RABBITMQ_VERSION),
                    ("amqpy_version", __version__),
                    ("python_version", platform.python_version()),
                ),
                1,
            )
        ],
    )
    cluster_name = server.config.server.cluster_name
    out.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
        [
            (
                (
                    ("rabbitmq_node", cluster_name),
                    ("rabbitmq_cluster", cluster_name),
                    ("rabbitmq_cluster_permanent_id", _cluster_id(cluster_name)),
                ),
                1,
            )
        ],
    )
    _global_families(out, counts, consumers)
    return out.text()


def _global_families(out: Exposition, counts: Counts, consumers: int) -> None:
    """RabbitMQ's rabbitmq_global_* counters (classic queues only here)."""
    queue = counts.queue
    channel = counts.channel
    out.family(
        "rabbitmq_global_consumers",
        "gauge",
        "Current number of consumers",
        [(AMQP, consumers)],
    )
    out.family(
        "rabbitmq_global_messages_acknowledged_total",
        "counter",
        "Total number of messages acknowledged by consumers",
        [(CLASSIC, queue["ack"])],
    )
    out.family(
        "rabbitmq_global_messages_confirmed_total",
        "counter",
        "Total number of messages confirmed to publishers",
        [(AMQP, channel["confirm"])],
    )
    for reason, help_text in (
        ("expired", "message TTL exceeded"),
        ("maxlen", "overflow drop-head or reject-publish-dlx"),
        ("rejected", "basic.reject or basic.nack"),
    ):
        out.family(
            f"rabbitmq_global_messages_dead_lettered_{reason}_total",
            "counter",
            f"Total number of messages dead-lettered due to {help_text}",
            [
                (
                    (
                        ("queue_type", "rabbit_classic_queue"),
                        ("dead_letter_strategy", strategy),
                    ),
                    counts.dead_lettered.get((reason, strategy), 0),
                )
                for strategy in (AT_MOST_ONCE, DISABLED)
            ],
        )
    for name, counter, how in (
        ("consume_auto_ack", "deliver_no_ack", "basic.consume with automatic"),
        ("consume_manual_ack", "deliver", "basic.consume with manual"),
        ("get_auto_ack", "get_no_ack", "basic.get with automatic"),
        ("get_manual_ack", "get", "basic.get with manual"),
    ):
        out.family(
            f"rabbitmq_global_messages_delivered_{name}_total",
            "counter",
            f"Total number of messages delivered to consumers using {how} "
            "acknowledgment",
            [(CLASSIC, queue[counter])],
        )
    out.family(
        "rabbitmq_global_messages_delivered_total",
        "counter",
        "Total number of messages delivered to consumers",
        [(CLASSIC, counts.delivered)],
    )
    out.family(
        "rabbitmq_global_messages_get_empty_total",
        "counter",
        "Total number of times basic.get operations fetched no message",
        [(CLASSIC, queue["get_empty"])],
    )
    out.family(
        "rabbitmq_global_messages_received_confirm_total",
        "counter",
        "Total number of messages received from publishers expecting confirmations",
        [(AMQP, channel["publish_confirm"])],
    )
    out.family(
        "rabbitmq_global_messages_received_total",
        "counter",
        "Total number of messages received from publishers",
        [(AMQP, channel["publish"])],
    )
    out.family(
        "rabbitmq_global_messages_redelivered_total",
        "counter",
        "Total number of messages redelivered to consumers",
        [(CLASSIC, queue["redeliver"])],
    )
    out.family(
        "rabbitmq_global_messages_routed_total",
        "counter",
        "Total number of messages routed to queues or streams",
        [(AMQP, queue["publish"])],
    )
    out.family(
        "rabbitmq_global_messages_unroutable_dropped_total",
        "counter",
        "Total number of messages published as non-mandatory into an exchange "
        "and dropped as unroutable",
        [(AMQP, channel["drop_unroutable"])],
    )
    out.family(
        "rabbitmq_global_messages_unroutable_returned_total",
        "counter",
        "Total number of messages published as mandatory into an exchange and "
        "returned to the publisher as unroutable",
        [(AMQP, channel["return_unroutable"])],
    )


def _response(text: str) -> Response:
    # Set as is: starlette would add "; charset=utf-8" to a text/ media type.
    return Response(text, headers={"content-type": CONTENT_TYPE})


async def metrics(context: Context) -> Response:
    return _response(exposition(context.server, per_object=False))


async def metrics_per_object(context: Context) -> Response:
    return _response(exposition(context.server, per_object=True))


ENDPOINTS: list[Endpoint] = [
    Endpoint("/metrics", ("GET",), metrics, public=True),
    Endpoint("/metrics/per-object", ("GET",), metrics_per_object, public=True),
]
