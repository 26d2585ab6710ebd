"""The manual-ack hot path: a single basic.ack, one consumer's dispatch loop,
and a backlog that costs no dispatch per publish. Whatever frees room must
still deliver what waits (nothing else wakes a queue that has a backlog)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from amqpy.broker.channel import Channel
from amqpy.broker.errors import PreconditionFailedError
from amqpy.broker.queue import Queue
from amqpy.broker.timers import Timer
from amqpy.model.message import Message
from tests.unit.broker.test_channel import FakeSink


def publish(queue: Queue, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        queue.enqueue(Message("", queue.name, b"\x00\x00", b"m%d" % i))


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
def channel(sink: FakeSink) -> Channel:
    return Channel(sink, owner=object())


def consume(channel: Channel, queue: Queue, tag: str = "c") -> None:
    channel.start(channel.consume(queue, tag, no_ack=False, exclusive=False))


def bodies(sink: FakeSink) -> list[bytes]:
    return [delivery.body for delivery in sink.deliveries]


def test_single_ack_settles_one_delivery(channel: Channel, sink: FakeSink) -> None:
    queue = Queue("q", "/")
    channel.qos(10, global_=True)
    consume(channel, queue)
    publish(queue, 3)
    channel.ack(2, multiple=False)
    assert list(channel.unacked) == [1, 3]
    assert queue.unacked_count == 2
    assert queue.stat_ack == 1
    assert channel.consumers["c"].unacked == 2
    assert channel.consumer_unacked == 2
    with pytest.raises(PreconditionFailedError, match="unknown delivery tag 2"):
        channel.ack(2, multiple=False)


def test_single_ack_of_a_basic_get_message(channel: Channel) -> None:
    queue = Queue("q", "/")
    publish(queue, 1)
    got = channel.get(queue, no_ack=False)
    assert got is not None
    channel.ack(got[0], multiple=False)
    assert channel.unacked == {}
    assert queue.unacked_count == 0
    assert channel.consumer_unacked == 0  # a get takes no prefetch slot


def test_one_consumer_takes_the_backlog_in_order_up_to_its_prefetch(
    channel: Channel, sink: FakeSink
) -> None:
    queue = Queue("q", "/")
    publish(queue, 10)
    channel.qos(4, global_=False)
    consume(channel, queue)
    assert bodies(sink) == [b"m0", b"m1", b"m2", b"m3"]
    publish(queue, 2, start=10)  # behind a backlog: no delivery
    assert len(sink.deliveries) == 4
    for tag in (1, 2, 3):
        channel.ack(tag, multiple=False)
    assert bodies(sink)[4:] == [b"m4", b"m5", b"m6"]
    channel.ack(7, multiple=True)
    assert bodies(sink)[7:] == [b"m7", b"m8", b"m9", b"m10"]
    assert queue.message_count == 1


def test_deferred_acks_dispatch_once_when_kicked(
    channel: Channel, sink: FakeSink
) -> None:
    kicks: list[Channel] = []
    channel.defer_kick = kicks.append
    queue = Queue("q", "/")
    publish(queue, 6)
    channel.qos(2, global_=False)
    consume(channel, queue)
    channel.ack(1, multiple=False)
    channel.ack(2, multiple=False)
    assert len(sink.deliveries) == 2  # nothing until the kick
    assert kicks == [channel, channel]
    channel.kick()
    assert bodies(sink) == [b"m0", b"m1", b"m2", b"m3"]


def test_a_backlog_moves_when_the_sink_drains(channel: Channel, sink: FakeSink) -> None:
    queue = Queue("q", "/")
    consume(channel, queue)
    sink.accepting = False
    publish(queue, 3)
    assert sink.deliveries == []
    sink.accepting = True
    publish(queue, 1, start=3)  # a backlog: the publish does not dispatch
    assert sink.deliveries == []
    channel.kick()  # what the connection does when its buffer drains
    assert bodies(sink) == [b"m0", b"m1", b"m2", b"m3"]


def test_a_backlog_moves_when_qos_rises(channel: Channel, sink: FakeSink) -> None:
    queue = Queue("q", "/")
    channel.qos(1, global_=True)
    consume(channel, queue)
    publish(queue, 3)
    assert len(sink.deliveries) == 1
    channel.qos(3, global_=True)
    assert len(sink.deliveries) == 3


def test_a_backlog_goes_to_a_new_consumer(sink: FakeSink) -> None:
    queue = Queue("q", "/")
    first = Channel(sink, owner=object())
    first.qos(1, global_=False)
    consume(first, queue, "a")
    publish(queue, 3)
    second = Channel(sink, owner=object())
    consume(second, queue, "b")
    assert [d.consumer_tag for d in sink.deliveries] == ["a", "b", "b"]


def test_two_consumers_still_take_turns(channel: Channel, sink: FakeSink) -> None:
    queue = Queue("q", "/")
    publish(queue, 4)
    consume(channel, queue, "a")
    consume(channel, queue, "b")
    publish(queue, 4, start=4)
    # "a" took the first four alone; then they alternate.
    assert [d.consumer_tag for d in sink.deliveries] == [*"aaaa", *"abab"]


class StoppedClock:
    """Time moves when told, and no timer ever fires: expired messages stay
    at the head until a dispatch finds them."""

    def __init__(self) -> None:
        self.time = 1000.0

    def now(self) -> float:
        return self.time

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        return Timer(deadline, callback)


def test_one_consumer_skips_expired_messages(channel: Channel, sink: FakeSink) -> None:
    clock = StoppedClock()
    dead: list[bytes] = []
    queue = Queue(
        "q",
        "/",
        arguments={"x-message-ttl": 1000},
        scheduler=clock,
        on_dead_letter=lambda _q, entries, _reason: dead.extend(
            entry.message.body for entry in entries
        ),
    )
    queue.dead_letter_exchange = "dlx"
    channel.qos(1, global_=False)
    consume(channel, queue)
    publish(queue, 4)
    assert bodies(sink) == [b"m0"]
    clock.time += 2.0  # the three waiting ones expire
    publish(queue, 1, start=4)
    channel.ack(1, multiple=False)
    assert bodies(sink) == [b"m0", b"m4"]
    assert dead == [b"m1", b"m2", b"m3"]
    assert queue.message_count == 0
