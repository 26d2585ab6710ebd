"""amqpy.broker.stats: what queues and channels count, and how totals are
summed from live objects plus the ones that are gone."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from amqpy.broker import stats
from amqpy.broker.channel import Channel
from amqpy.broker.queue import Queue
from amqpy.broker.stats import BrokerStats, Counts, Rates, vhost_counts
from amqpy.broker.vhost import VHost
from amqpy.model.message import Message


class Sink:
    def can_accept(self) -> bool:
        return True

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        pass

    def consumer_cancelled(self, consumer_tag: str) -> None:
        pass


@dataclass
class FakeChannelCounters:
    """A publishing channel's counters (as ChannelHandler has them)."""

    stat_publish: int = 0
    stat_publish_refused: int = 0
    stat_publish_confirm: int = 0
    stat_confirm: int = 0
    stat_return_unroutable: int = 0
    stat_drop_unroutable: int = 0


def publish(queue: Queue, count: int) -> None:
    for index in range(count):
        queue.stat_publish += 1  # as the publishing channel counts it
        queue.enqueue(Message("", queue.name, b"\x00\x00", b"m%d" % index))


def queue_counters(queue: Queue) -> dict[str, int]:
    return {name: getattr(queue, "stat_" + name) for name in stats.QUEUE_COUNTERS}


@pytest.fixture
def channel() -> Channel:
    return Channel(Sink(), owner=object())


def test_deliveries_gets_acks_and_redeliveries_are_counted_on_the_queue(
    channel: Channel,
) -> None:
    queue = Queue("q", "/")
    publish(queue, 6)
    got = channel.get(queue, no_ack=False)
    assert got is not None
    assert channel.get(queue, no_ack=True) is not None
    manual = channel.consume(queue, "manual", no_ack=False, exclusive=False)
    channel.start(manual)  # takes the 4 left
    channel.reject(got[0], multiple=False, requeue=True)  # back, redelivered
    channel.ack(channel.next_delivery_tag - 1, multiple=True)
    assert channel.get(queue, no_ack=True) is None

    assert queue_counters(queue) == {
        "publish": 6,
        "deliver": 5,  # 4, then the requeued one again
        "deliver_no_ack": 0,
        "get": 1,
        "get_no_ack": 1,
        "get_empty": 1,
        "ack": 5,
        "redeliver": 1,
    }
    assert stats.queue_message_stats(queue)["deliver_get"] == 7


def test_auto_ack_consumers_count_deliver_no_ack(channel: Channel) -> None:
    queue = Queue("q", "/")
    channel.start(channel.consume(queue, "auto", no_ack=True, exclusive=False))
    publish(queue, 3)
    assert queue.stat_deliver_no_ack == 3
    assert queue.stat_deliver == 0
    assert queue.stat_ack == 0


def test_dead_lettered_counts_carry_reason_and_strategy(channel: Channel) -> None:
    vhost = VHost("/")
    vhost.declare_exchange("dlx", "fanout")
    with_dlx = vhost.declare_queue(
        "with-dlx", owner=None, arguments={"x-dead-letter-exchange": "dlx"}
    )
    dropped = vhost.declare_queue("no-dlx", owner=None, arguments={})
    short = vhost.declare_queue("short", owner=None, arguments={"x-max-length": 1})
    for queue in (with_dlx, dropped):
        publish(queue, 2)
        for _ in range(2):
            got = channel.get(queue, no_ack=False)
            assert got is not None
            channel.reject(got[0], multiple=False, requeue=False)
    publish(short, 3)

    counts = vhost_counts(vhost, ())
    assert counts.dead_lettered == {
        ("rejected", "at_most_once"): 2,
        ("rejected", "disabled"): 2,
        ("maxlen", "disabled"): 2,
    }


def test_a_deleted_queue_keeps_counting_in_its_vhost(channel: Channel) -> None:
    vhost = VHost("/")
    queue = vhost.declare_queue("gone", owner=None, arguments={})
    publish(queue, 2)
    assert channel.get(queue, no_ack=True) is not None
    vhost.delete_queue("gone", owner=None)
    survivor = vhost.declare_queue("here", owner=None, arguments={})
    publish(survivor, 1)

    counts = vhost_counts(vhost, [FakeChannelCounters(stat_publish=3)])
    assert counts.queue["publish"] == 3
    assert counts.queue["get_no_ack"] == 1
    assert counts.channel["publish"] == 3
    # Summing does not change what is kept.
    assert vhost_counts(vhost, ()).queue["publish"] == 3


def test_counts_add_up() -> None:
    first, second = Counts(), Counts()
    first.add_channel(FakeChannelCounters(stat_publish=2, stat_confirm=1))
    second.add_channel(FakeChannelCounters(stat_publish=5, stat_drop_unroutable=1))
    second.dead_lettered[("expired", "disabled")] = 4
    total = first.copy()
    total.add(second)
    assert total.channel["publish"] == 7
    assert total.channel["confirm"] == 1
    assert total.channel["drop_unroutable"] == 1
    assert total.dead_lettered == {("expired", "disabled"): 4}
    assert first.channel["publish"] == 2  # copy() left it alone


def test_a_deleted_vhost_counts_on_in_the_broker_totals() -> None:
    broker_stats = BrokerStats()
    kept, deleted = VHost("kept"), VHost("deleted")
    for vhost in (kept, deleted):
        publish(vhost.declare_queue("q", owner=None, arguments={}), 2)
    broker_stats.forget_deleted([kept, deleted])
    deleted.destroy()  # its queues' counts go to its retired counts
    broker_stats.forget_deleted([kept])
    assert broker_stats.retired.queue["publish"] == 2
    # Folded once, not again on the next look.
    broker_stats.forget_deleted([kept])
    assert broker_stats.retired.queue["publish"] == 2


def test_broker_stats_are_one_per_broker() -> None:
    class Broker:
        pass

    first, second = Broker(), Broker()
    assert stats.broker_stats(first) is stats.broker_stats(first)
    assert stats.broker_stats(first) is not stats.broker_stats(second)


def test_rates_are_the_change_between_samples_interval_apart() -> None:
    rates = Rates(interval_s=5.0)
    key = Queue("q", "/")
    assert rates.rates(key, {"publish": 10}, now=100.0) == {"publish": 0.0}
    # Too soon for a new sample: still no rate.
    assert rates.rates(key, {"publish": 20}, now=102.0) == {"publish": 0.0}
    assert rates.rates(key, {"publish": 60}, now=105.0) == {"publish": 10.0}
    # Between samples the last rate stands.
    assert rates.rates(key, {"publish": 99}, now=107.0) == {"publish": 10.0}
    assert rates.rates(key, {"publish": 60}, now=110.0) == {"publish": 0.0}
    assert rates.rates("user:someone", {"ack": 1}, now=0.0) == {"ack": 0.0}


def test_message_stats_has_rabbitmqs_shape() -> None:
    assert stats.message_stats({"publish": 3, "ack": 1}, {"publish": 0.5}) == {
        "ack": 1,
        "ack_details": {"rate": 0.0},
        "publish": 3,
        "publish_details": {"rate": 0.5},
    }


def test_overview_publish_leaves_out_refused_publishes() -> None:
    counts = Counts()
    counts.add_channel(
        FakeChannelCounters(stat_publish=5, stat_publish_refused=2, stat_confirm=3)
    )
    overview = stats.overview_message_stats(counts)
    assert overview["publish"] == 3
    assert overview["confirm"] == 3
    assert set(overview) == {
        "publish",
        "confirm",
        "return_unroutable",
        "drop_unroutable",
        "deliver",
        "deliver_no_ack",
        "get",
        "get_no_ack",
        "get_empty",
        "deliver_get",
        "ack",
        "redeliver",
    }
