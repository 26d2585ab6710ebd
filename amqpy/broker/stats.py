"""Message counters: what the management API's message_stats and the
Prometheus /metrics endpoint report.

The hot path only bumps plain int attributes of objects it already has in
hand, named `stat_<counter>`:

- a queue (`Queue.stat_publish`, `stat_deliver`, ... `QUEUE_COUNTERS`): what
  was routed to it by publishers and what it handed out and got acked;
- a channel (`ChannelHandler.stat_publish`, ... `CHANNEL_COUNTERS`): what its
  publisher sent, and what came of it (confirmed, returned, dropped).

Nothing is counted twice: a total is the sum over the live queues and
channels plus what the gone ones had counted when they went (a vhost's
`retired` counts of its deleted queues and closed channels; a broker's
`BrokerStats.retired` of its deleted vhosts). Summing is done when someone
asks, off the hot path.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from amqpy.broker.queue import Queue
    from amqpy.broker.vhost import VHost

# Counted on queues, named as RabbitMQ's queue message_stats. `publish` is a
# message routed to the queue by a publisher (a fanout to two queues counts
# two, as RabbitMQ's messages_routed); `deliver` and `get` are deliveries
# that need an ack, `_no_ack` ones do not.
QUEUE_COUNTERS = (
    "publish",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "ack",
    "redeliver",
)

# Counted on channels. `publish` is every basic.publish received (RabbitMQ's
# messages_received), `publish_refused` those refused before routing (no
# such exchange, no permission); `publish_confirm` those in confirm or tx
# mode (messages_received_confirm); `confirm` the basic.acks sent for them.
CHANNEL_COUNTERS = (
    "publish",
    "publish_refused",
    "publish_confirm",
    "confirm",
    "return_unroutable",
    "drop_unroutable",
)

# RabbitMQ's dead_letter_strategy label for a classic queue: at_most_once
# when it has a dead-letter exchange, disabled when the message is dropped.
AT_MOST_ONCE = "at_most_once"
DISABLED = "disabled"

# Seconds between the samples that rates are computed from (RabbitMQ's
# collect_statistics_interval).
SAMPLE_INTERVAL_S = 5.0


class ChannelCounters(Protocol):
    """What a channel counts (amqpy.server.channel.ChannelHandler)."""

    stat_publish: int
    stat_publish_refused: int
    stat_confirm: int
    stat_return_unroutable: int
    stat_drop_unroutable: int

    @property
    def stat_publish_confirm(self) -> int: ...


def count_dead_lettered(queue: Queue, reason: str, count: int) -> None:
    """`count` messages left `queue` for good for `reason` (rejected,
    expired, maxlen): dead-lettered, or dropped when it has no dead-letter
    exchange (RabbitMQ counts both, told apart by the strategy label)."""
    strategy = AT_MOST_ONCE if queue.dead_letter_exchange is not None else DISABLED
    counts = queue.stat_dead_lettered
    if counts is None:
        counts = queue.stat_dead_lettered = {}
    key = (reason, strategy)
    counts[key] = counts.get(key, 0) + count


class Counts:
    """Counters summed over some queues and channels."""

    def __init__(self) -> None:
        self.queue: dict[str, int] = dict.fromkeys(QUEUE_COUNTERS, 0)
        self.channel: dict[str, int] = dict.fromkeys(CHANNEL_COUNTERS, 0)
        # (reason, strategy) -> messages
        self.dead_lettered: dict[tuple[str, str], int] = {}

    def add_queue(self, queue: Queue) -> None:
        counts = self.queue
        for name in QUEUE_COUNTERS:
            counts[name] += getattr(queue, "stat_" + name)
        if queue.stat_dead_lettered:
            self._add_dead_lettered(queue.stat_dead_lettered)

    def add_channel(self, channel: ChannelCounters) -> None:
        counts = self.channel
        for name in CHANNEL_COUNTERS:
            counts[name] += getattr(channel, "stat_" + name)

    def add(self, other: Counts) -> None:
        for name, value in other.queue.items():
            self.queue[name] += value
        for name, value in other.channel.items():
            self.channel[name] += value
        self._add_dead_lettered(other.dead_lettered)

    def _add_dead_lettered(self, counts: Mapping[tuple[str, str], int]) -> None:
        for key, value in counts.items():
            self.dead_lettered[key] = self.dead_lettered.get(key, 0) + value

    def copy(self) -> Counts:
        result = Counts()
        result.add(self)
        return result

    @property
    def delivered(self) -> int:
        """Every message handed to a client: consumed or got, acked or not."""
        queue = self.queue
        return (
            queue["deliver"]
            + queue["deliver_no_ack"]
            + queue["get"]
            + queue["get_no_ack"]
        )


def vhost_counts(vhost: VHost, channels: Iterable[ChannelCounters]) -> Counts:
    """A vhost's counters: its queues, its open `channels`, and the deleted
    and closed ones before them."""
    counts = vhost.retired.copy()
    for queue in vhost.queues.values():
        counts.add_queue(queue)
    for channel in channels:
        counts.add_channel(channel)
    return counts


class BrokerStats:
    """Broker-wide counters that outlive vhosts: connection and channel
    churn, and what deleted vhosts had counted."""

    def __init__(self) -> None:
        self.connections_opened = 0
        self.connections_closed = 0
        self.channels_opened = 0
        self.channels_closed = 0
        self.retired = Counts()
        # Every vhost that may have counted something, so that its counts
        # are kept when it is deleted (the vhost object lives on until then).
        self._vhosts: dict[int, VHost] = {}

    def track(self, vhost: VHost) -> None:
        self._vhosts[id(vhost)] = vhost

    def forget_deleted(self, live: Iterable[VHost]) -> None:
        """Fold the counts of tracked vhosts no longer in `live` (deleted;
        their queues and channels are in their `retired` counts by then)."""
        live_ids = {id(vhost) for vhost in live}
        for key, vhost in list(self._vhosts.items()):
            if key not in live_ids:
                self.retired.add(vhost_counts(vhost, ()))
                del self._vhosts[key]
        for vhost in live:
            self.track(vhost)


_BROKER_STATS: weakref.WeakKeyDictionary[Any, BrokerStats] = weakref.WeakKeyDictionary()


def broker_stats(broker: Any) -> BrokerStats:
    """The broker-wide counters of `broker` (kept beside it, one per broker)."""
    stats = _BROKER_STATS.get(broker)
    if stats is None:
        stats = _BROKER_STATS[broker] = BrokerStats()
    return stats


_Sample = tuple[float, dict[str, int]]
_Samples = tuple[_Sample | None, _Sample]


class Rates:
    """Rates (per second) of counters, from samples taken at most every
    SAMPLE_INTERVAL_S when they are asked for: the rate is the change
    between the last two samples, as RabbitMQ's rates are the change over
    its last stats interval. 0.0 until there are two samples."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        # key -> (previous sample, latest sample), each (time, counters):
        # objects' samples go with them; named ones (a user's) are kept.
        self._samples: weakref.WeakKeyDictionary[Any, _Samples] = (
            weakref.WeakKeyDictionary()
        )
        self._named: dict[str, _Samples] = {}

    def rates(
        self, key: object, counters: Mapping[str, int], now: float | None = None
    ) -> dict[str, float]:
        """Rates of `counters` (current values) of `key`: an object (a
        queue, say) or a name."""
        now = time.monotonic() if now is None else now
        samples: MutableMapping[Any, _Samples] = (
            self._named if isinstance(key, str) else self._samples
        )
        entry = samples.get(key)
        if entry is None:
            samples[key] = (None, (now, dict(counters)))
            return dict.fromkeys(counters, 0.0)
        previous, latest = entry
        if now - latest[0] >= self.interval_s:
            previous, latest = latest, (now, dict(counters))
            samples[key] = (previous, latest)
        if previous is None:
            return dict.fromkeys(counters, 0.0)
        elapsed = latest[0] - previous[0]
        return {
            name: (latest[1].get(name, 0) - previous[1].get(name, 0)) / elapsed
            for name in counters
        }


def message_stats(
    counters: Mapping[str, int], rates: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """RabbitMQ's message_stats object: each counter with its `_details`
    ({"rate": messages per second}), keys in RabbitMQ's (sorted) order."""
    result: dict[str, Any] = {}
    for name in sorted(counters):
        result[name] = counters[name]
        rate = rates.get(name, 0.0) if rates is not None else 0.0
        result[f"{name}_details"] = {"rate": float(rate)}
    return result


def queue_message_stats(queue: Queue) -> dict[str, int]:
    """The counters of a queue's message_stats (as RabbitMQ's, deliver_get
    being every delivery and get)."""
    counters = {name: getattr(queue, "stat_" + name) for name in QUEUE_COUNTERS}
    counters["deliver_get"] = (
        counters["deliver"]
        + counters["deliver_no_ack"]
        + counters["get"]
        + counters["get_no_ack"]
    )
    return counters


def overview_message_stats(counts: Counts) -> dict[str, int]:
    """The counters of /api/overview's message_stats (and a vhost's):
    publish is what publishers sent that was routed (or found unroutable),
    confirm what was confirmed to them."""
    queue = counts.queue
    channel = counts.channel
    return {
        "publish": channel["publish"] - channel["publish_refused"],
        "confirm": channel["confirm"],
        "return_unroutable": channel["return_unroutable"],
        "drop_unroutable": channel["drop_unroutable"],
        "deliver": queue["deliver"],
        "deliver_no_ack": queue["deliver_no_ack"],
        "get": queue["get"],
        "get_no_ack": queue["get_no_ack"],
        "get_empty": queue["get_empty"],
        "deliver_get": counts.delivered,
        "ack": queue["ack"],
        "redeliver": queue["redeliver"],
    }
