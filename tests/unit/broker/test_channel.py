"""amqpy.broker.channel.Channel and queue dispatch, with a fake DeliverySink.

No sockets: a channel hands deliveries to the sink, which records them. The
expected behaviour is RabbitMQ 3.10's as observed (/work/oracle/results.md,
sections 9 and 10).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amqpy.broker.channel import Channel
from amqpy.broker.errors import (
    AccessRefusedError,
    NotAllowedError,
    PreconditionFailedError,
)
from amqpy.broker.queue import Consumer, Queue
from amqpy.broker.vhost import VHost
from amqpy.model.message import Message


@dataclass(frozen=True)
class Delivery:
    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    body: bytes


class FakeSink:
    """Records deliveries; `accepting` plays the connection's outbound buffer."""

    def __init__(self) -> None:
        self.accepting = True
        self.deliveries: list[Delivery] = []
        self.cancelled: list[str] = []

    def can_accept(self) -> bool:
        return self.accepting

    def deliver(
        self,
        consumer_tag: str,
        delivery_tag: int,
        redelivered: bool,
        message: Message,
    ) -> None:
        self.deliveries.append(
            Delivery(consumer_tag, delivery_tag, redelivered, message.body)
        )

    def consumer_cancelled(self, consumer_tag: str) -> None:
        self.cancelled.append(consumer_tag)

    def bodies(self, consumer_tag: str | None = None) -> list[bytes]:
        return [
            d.body
            for d in self.deliveries
            if consumer_tag is None or d.consumer_tag == consumer_tag
        ]

    def count(self, consumer_tag: str) -> int:
        return len(self.bodies(consumer_tag))


def make_queue(name: str = "q") -> Queue:
    return Queue(name, "/")


def publish(queue: Queue, *bodies: bytes) -> None:
    for body in bodies:
        queue.enqueue(Message("", queue.name, b"\x00\x00", body))


def fill(queue: Queue, count: int) -> list[bytes]:
    bodies = [b"m%d" % i for i in range(count)]
    publish(queue, *bodies)
    return bodies


def consume(
    channel: Channel, queue: Queue, tag: str, *, no_ack: bool = False
) -> Consumer:
    consumer = channel.consume(queue, tag, no_ack=no_ack, exclusive=False)
    channel.start(consumer)
    return consumer


def ready(queue: Queue) -> list[tuple[bytes, bool]]:
    return [(entry.message.body, entry.redelivered) for entry in queue.messages]


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
def channel(sink: FakeSink) -> Channel:
    return Channel(sink, owner=object())


# -- consumers -----------------------------------------------------------------


def test_empty_consumer_tag_gets_a_generated_amq_ctag(channel: Channel) -> None:
    queue = make_queue()
    first = channel.consume(queue, "", no_ack=False, exclusive=False)
    second = channel.consume(queue, "", no_ack=False, exclusive=False)
    assert re.fullmatch(r"amq\.ctag-[A-Za-z0-9_-]{22}", first.tag)
    assert first.tag != second.tag
    assert set(channel.consumers) == {first.tag, second.tag}


def test_reusing_a_consumer_tag_on_the_channel_is_a_hard_530(
    channel: Channel,
) -> None:
    consume(channel, make_queue("a"), "dup")
    with pytest.raises(NotAllowedError) as error:
        channel.consume(make_queue("b"), "dup", no_ack=False, exclusive=False)
    assert error.value.reply_code == 530
    assert error.value.is_hard
    assert error.value.reply_text == (
        "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"
    )
    # Once cancelled, the tag is free again.
    channel.cancel("dup")
    consume(channel, make_queue("b"), "dup")


def test_same_consumer_tag_on_another_channel_is_fine(sink: FakeSink) -> None:
    queue = make_queue()
    consume(Channel(sink, owner=None), queue, "same")
    consume(Channel(sink, owner=None), queue, "same")
    assert queue.consumer_count == 2


def test_exclusive_consume_refused_when_the_queue_has_a_consumer(
    sink: FakeSink,
) -> None:
    queue = make_queue("q9r")
    consume(Channel(sink, owner=None), queue, "c1")
    with pytest.raises(AccessRefusedError) as error:
        Channel(sink, owner=None).consume(queue, "c2", no_ack=False, exclusive=True)
    assert error.value.reply_code == 403
    assert not error.value.is_hard
    assert error.value.reply_text == (
        "ACCESS_REFUSED - queue 'q9r' in vhost '/' in exclusive use"
    )


@pytest.mark.parametrize("exclusive", [False, True])
def test_any_consume_refused_while_an_exclusive_consumer_exists(
    channel: Channel, exclusive: bool
) -> None:
    queue = make_queue("q9r")
    channel.start(channel.consume(queue, "owner", no_ack=False, exclusive=True))
    with pytest.raises(AccessRefusedError) as error:
        channel.consume(queue, "other", no_ack=False, exclusive=exclusive)
    assert error.value.reply_text == (
        "ACCESS_REFUSED - queue 'q9r' in vhost '/' in exclusive use"
    )
    assert queue.consumer_count == 1


def test_cancel_stops_deliveries_and_unknown_tag_is_not_an_error(
    channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue()
    consume(channel, queue, "c")
    publish(queue, b"before")
    assert channel.cancel("c") is True
    assert channel.cancel("c") is False
    assert channel.cancel("never") is False
    publish(queue, b"after")
    assert sink.bodies() == [b"before"]
    assert ready(queue) == [(b"after", False)]
    # A cancelled consumer's unacked message can still be acked.
    channel.ack(1, multiple=False)
    assert channel.unacked == {}
    assert queue.unacked_count == 0


def test_deleting_the_queue_cancels_its_consumers(
    channel: Channel, sink: FakeSink
) -> None:
    vhost = VHost("/")
    owner = object()
    queue = vhost.declare_queue(
        "gone",
        owner=owner,
        passive=False,
        durable=False,
        exclusive=False,
        auto_delete=False,
        arguments={},
    )
    consume(channel, queue, "c")
    vhost.delete_queue("gone", owner=owner, if_unused=False, if_empty=False)
    assert sink.cancelled == ["c"]
    assert channel.consumers == {}


# -- dispatch ------------------------------------------------------------------


def test_round_robin_across_consumers(channel: Channel, sink: FakeSink) -> None:
    queue = make_queue()
    consume(channel, queue, "a")
    consume(channel, queue, "b")
    consume(channel, queue, "c")
    fill(queue, 7)
    assert sink.bodies("a") == [b"m0", b"m3", b"m6"]
    assert sink.bodies("b") == [b"m1", b"m4"]
    assert sink.bodies("c") == [b"m2", b"m5"]
    assert [d.delivery_tag for d in sink.deliveries] == list(range(1, 8))


def test_round_robin_skips_a_full_consumer(channel: Channel, sink: FakeSink) -> None:
    queue = make_queue()
    channel.qos(1, global_=False)
    consume(channel, queue, "limited")
    channel.qos(0, global_=False)
    consume(channel, queue, "free")
    fill(queue, 4)
    assert sink.bodies("limited") == [b"m0"]
    assert sink.bodies("free") == [b"m1", b"m2", b"m3"]


def test_consumers_on_several_channels_share_a_queue(sink: FakeSink) -> None:
    queue = make_queue()
    first, second = Channel(sink, owner=None), Channel(sink, owner=None)
    consume(first, queue, "a")
    consume(second, queue, "b")
    fill(queue, 4)
    assert sink.bodies("a") == [b"m0", b"m2"]
    assert sink.bodies("b") == [b"m1", b"m3"]
    # Delivery tags are per channel and start at 1.
    assert [d.delivery_tag for d in sink.deliveries] == [1, 1, 2, 2]


def test_messages_published_before_consume_are_delivered_in_order(
    channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue()
    bodies = fill(queue, 5)
    consume(channel, queue, "c")
    assert sink.bodies() == bodies
    assert queue.message_count == 0
    assert queue.unacked_count == 5


# -- prefetch ------------------------------------------------------------------


def test_per_consumer_prefetch_counts_each_consumer(
    channel: Channel, sink: FakeSink
) -> None:
    qa, qb = make_queue("qa"), make_queue("qb")
    fill(qa, 6)
    fill(qb, 6)
    channel.qos(2, global_=False)
    consume(channel, qa, "A")
    consume(channel, qb, "B")
    assert (sink.count("A"), sink.count("B")) == (2, 2)
    assert (qa.message_count, qb.message_count) == (4, 4)


def test_per_consumer_prefetch_applies_only_to_consumers_started_after_it(
    channel: Channel, sink: FakeSink
) -> None:
    qa, qb = make_queue("qa"), make_queue("qb")
    fill(qa, 6)
    fill(qb, 6)
    channel.qos(1, global_=False)
    consume(channel, qa, "A")
    assert sink.count("A") == 1
    channel.qos(4, global_=False)
    assert sink.count("A") == 1  # raising it gives the existing consumer nothing
    consume(channel, qb, "late")
    assert sink.count("late") == 4


def test_last_per_consumer_qos_wins_for_new_consumers(
    channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue()
    fill(queue, 6)
    channel.qos(2, global_=False)
    channel.qos(5, global_=False)
    consume(channel, queue, "A")
    assert sink.count("A") == 5


def test_prefetch_zero_is_unlimited(channel: Channel, sink: FakeSink) -> None:
    queue = make_queue()
    fill(queue, 6)
    channel.qos(0, global_=False)
    consume(channel, queue, "A")
    assert sink.count("A") == 6


def test_ack_lets_one_more_through(channel: Channel, sink: FakeSink) -> None:
    queue = make_queue()
    fill(queue, 6)
    channel.qos(2, global_=False)
    consume(channel, queue, "A")
    assert sink.bodies() == [b"m0", b"m1"]
    channel.ack(1, multiple=False)
    assert sink.bodies() == [b"m0", b"m1", b"m2"]
    channel.reject(2, multiple=False, requeue=False)
    assert sink.bodies() == [b"m0", b"m1", b"m2", b"m3"]


def test_global_prefetch_is_shared_by_the_channels_consumers(
    channel: Channel, sink: FakeSink
) -> None:
    qa, qb = make_queue("qa"), make_queue("qb")
    fill(qa, 6)
    fill(qb, 6)
    channel.qos(3, global_=True)
    consume(channel, qa, "A")
    consume(channel, qb, "B")
    assert (sink.count("A"), sink.count("B")) == (3, 0)
    channel.ack(1, multiple=False)
    assert sink.count("A") + sink.count("B") == 4


def test_raising_global_prefetch_applies_to_existing_consumers(
    channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue()
    fill(queue, 6)
    channel.qos(1, global_=True)
    consume(channel, queue, "A")
    assert sink.count("A") == 1
    channel.qos(4, global_=True)
    assert sink.count("A") == 4


def test_per_consumer_and_global_prefetch_both_apply(
    channel: Channel, sink: FakeSink
) -> None:
    qa, qb = make_queue("qa"), make_queue("qb")
    fill(qa, 6)
    fill(qb, 6)
    channel.qos(2, global_=False)
    channel.qos(3, global_=True)
    consume(channel, qa, "A")
    consume(channel, qb, "B")
    assert (sink.count("A"), sink.count("B")) == (2, 1)


def test_per_consumer_qos_after_global_qos_lifts_the_channel_limit(
    channel: Channel, sink: FakeSink
) -> None:
    """RabbitMQ's quirk: basic.qos(global=false) removes the channel-wide limit."""
    qa, qb = make_queue("qa"), make_queue("qb")
    fill(qa, 6)
    fill(qb, 6)
    channel.qos(3, global_=True)
    channel.qos(2, global_=False)
    consume(channel, qa, "A")
    consume(channel, qb, "B")
    assert (sink.count("A"), sink.count("B")) == (2, 2)


def test_per_consumer_qos_lifts_the_global_limit_for_existing_consumers(
    channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue()
    fill(queue, 6)
    channel.qos(1, global_=True)
    consume(channel, queue, "A")  # started without a per-consumer limit
    assert sink.count("A") == 1
    channel.qos(2, global_=False)
    assert sink.count("A") == 6


def test_basic_get_ignores_prefetch(channel: Channel) -> None:
    queue = make_queue()
    fill(queue, 6)
    channel.qos(1, global_=False)
    channel.qos(1, global_=True)
    got = [channel.get(queue, no_ack=False) for _ in range(3)]
    assert [(tag, entry.message.body) for tag, entry in got] == [
        (1, b"m0"),
        (2, b"m1"),
        (3, b"m2"),
    ]
    assert queue.message_count == 3
    assert queue.unacked_count == 3


def test_basic_get_messages_do_not_count_against_the_global_prefetch(
    channel: Channel, sink: FakeSink
) -> None:
    """RabbitMQ's limiter counts consumer deliveries only (basic.get is not
    limited and its unacked messages take no prefetch slot)."""
    queue = make_queue()
    fill(queue, 6)
    channel.qos(2, global_=True)
    assert channel.get(queue, no_ack=False) is not None
    consume(channel, queue, "A")
    assert sink.count("A") == 2


def test_no_ack_consumers_ignore_prefetch(channel: Channel, sink: FakeSink) -> None:
    queue = make_queue()
    fill(queue, 6)
    channel.qos(1, global_=False)
    channel.qos(1, global_=True)
    consume(channel, queue, "auto", no_ack=True)
    assert sink.count("auto") == 6
    assert channel.unacked == {}
    assert queue.unacked_count == 0


def test_no_ack_deliveries_take_no_global_slot(
    channel: Channel, sink: FakeSink
) -> None:
    qa, qb = make_queue("qa"), make_queue("qb")
    fill(qa, 3)
    fill(qb, 3)
    channel.qos(1, global_=True)
    consume(channel, qa, "auto", no_ack=True)
    consume(channel, qb, "manual")
    assert (sink.count("auto"), sink.count("manual")) == (3, 1)


# -- acknowledgements ----------------------------------------------------------


@pytest.fixture
def five_unacked(channel: Channel, sink: FakeSink) -> Queue:
    queue = make_queue()
    consume(channel, queue, "c")
    fill(queue, 5)
    assert [d.delivery_tag for d in sink.deliveries] == [1, 2, 3, 4, 5]
    return queue


def test_ack_single(channel: Channel, five_unacked: Queue) -> None:
    channel.ack(3, multiple=False)
    assert list(channel.unacked) == [1, 2, 4, 5]
    assert five_unacked.unacked_count == 4
    assert channel.consumers["c"].unacked == 4


def test_ack_multiple_settles_everything_up_to_the_tag(
    channel: Channel, five_unacked: Queue
) -> None:
    channel.ack(2, multiple=False)
    channel.ack(4, multiple=True)
    assert list(channel.unacked) == [5]
    assert five_unacked.unacked_count == 1
    assert five_unacked.message_count == 0


def test_ack_tag_zero_multiple_settles_all_even_when_nothing_is_outstanding(
    channel: Channel, five_unacked: Queue
) -> None:
    channel.ack(0, multiple=True)
    assert channel.unacked == {}
    assert five_unacked.unacked_count == 0
    channel.ack(0, multiple=True)
    channel.reject(0, multiple=True, requeue=True)
    assert five_unacked.message_count == 0


def test_ack_tag_zero_single_is_unknown(channel: Channel, five_unacked: Queue) -> None:
    with pytest.raises(PreconditionFailedError) as error:
        channel.ack(0, multiple=False)
    assert error.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 0"


def test_unknown_delivery_tag_is_a_soft_406(
    channel: Channel, five_unacked: Queue
) -> None:
    with pytest.raises(PreconditionFailedError) as error:
        channel.ack(99, multiple=False)
    assert error.value.reply_code == 406
    assert not error.value.is_hard
    assert error.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99"


def test_double_ack_is_unknown(channel: Channel, five_unacked: Queue) -> None:
    channel.ack(1, multiple=False)
    with pytest.raises(PreconditionFailedError) as error:
        channel.ack(1, multiple=False)
    assert error.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"


def test_ack_multiple_beyond_the_last_tag_is_unknown(
    channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue()
    consume(channel, queue, "c")
    fill(queue, 1)
    with pytest.raises(PreconditionFailedError) as error:
        channel.ack(5, multiple=True)
    assert error.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 5"


@pytest.mark.parametrize("requeue", [False, True])
def test_reject_and_nack_of_unknown_or_settled_tags(
    channel: Channel, five_unacked: Queue, requeue: bool
) -> None:
    channel.reject(1, multiple=False, requeue=False)
    for tag, multiple in [(1, False), (77, False), (77, True)]:
        with pytest.raises(PreconditionFailedError) as error:
            channel.reject(tag, multiple=multiple, requeue=requeue)
        assert error.value.reply_text == (
            f"PRECONDITION_FAILED - unknown delivery tag {tag}"
        )


def test_reject_without_requeue_drops_the_message(
    channel: Channel, sink: FakeSink, five_unacked: Queue
) -> None:
    channel.reject(2, multiple=False, requeue=False)
    channel.reject(4, multiple=True, requeue=False)
    assert list(channel.unacked) == [5]
    assert five_unacked.message_count == 0
    assert five_unacked.unacked_count == 1
    assert len(sink.deliveries) == 5


def test_nack_multiple_requeue_redelivers_at_once_in_order(
    channel: Channel, sink: FakeSink, five_unacked: Queue
) -> None:
    channel.reject(3, multiple=True, requeue=True)
    again = sink.deliveries[5:]
    assert [(d.body, d.redelivered, d.delivery_tag) for d in again] == [
        (b"m0", True, 6),
        (b"m1", True, 7),
        (b"m2", True, 8),
    ]
    assert list(channel.unacked) == [4, 5, 6, 7, 8]


def test_requeued_messages_return_to_their_original_places(channel: Channel) -> None:
    queue = make_queue()
    fill(queue, 5)
    tags = [channel.get(queue, no_ack=False)[0] for _ in range(3)]  # m0, m1, m2
    assert tags == [1, 2, 3]
    channel.reject(2, multiple=False, requeue=True)  # in front of m3
    assert ready(queue) == [(b"m1", True), (b"m3", False), (b"m4", False)]
    channel.reject(3, multiple=False, requeue=True)  # between m1 and m3
    channel.reject(1, multiple=False, requeue=True)
    assert ready(queue) == [
        (b"m0", True),
        (b"m1", True),
        (b"m2", True),
        (b"m3", False),
        (b"m4", False),
    ]
    assert queue.unacked_count == 0
    _, entry = channel.get(queue, no_ack=True)
    assert (entry.message.body, entry.redelivered) == (b"m0", True)


def test_requeue_goes_behind_nothing_newer(channel: Channel) -> None:
    """A message requeued after newer ones were published stays ahead of them."""
    queue = make_queue()
    fill(queue, 2)
    tag, _ = channel.get(queue, no_ack=False)
    publish(queue, b"late")
    channel.reject(tag, multiple=False, requeue=True)
    assert ready(queue) == [(b"m0", True), (b"m1", False), (b"late", False)]


def test_recover_redelivers_unacked_with_new_tags(
    channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue()
    fill(queue, 5)
    channel.qos(3, global_=False)
    consume(channel, queue, "c")
    channel.ack(2, multiple=False)  # m3 follows as tag 4
    channel.recover()
    again = [(d.body, d.redelivered, d.delivery_tag) for d in sink.deliveries[4:]]
    assert again == [(b"m0", True, 5), (b"m2", True, 6), (b"m3", True, 7)]
    assert list(channel.unacked) == [5, 6, 7]
    assert ready(queue) == [(b"m4", False)]


def test_recover_puts_basic_get_messages_back(channel: Channel) -> None:
    queue = make_queue()
    fill(queue, 2)
    channel.get(queue, no_ack=False)
    channel.recover()
    assert ready(queue) == [(b"m0", True), (b"m1", False)]
    assert channel.unacked == {}
    assert queue.unacked_count == 0


# -- closing -------------------------------------------------------------------


def test_close_requeues_unacked_in_order_and_cancels_consumers(
    sink: FakeSink,
) -> None:
    queue = make_queue()
    closing = Channel(sink, owner=None)
    closing.qos(4, global_=False)
    consume(closing, queue, "c")
    fill(queue, 6)
    closing.ack(2, multiple=False)  # m1; m4 follows
    closing.close()
    assert ready(queue) == [
        (b"m0", True),
        (b"m2", True),
        (b"m3", True),
        (b"m4", True),
        (b"m5", False),
    ]
    assert queue.consumer_count == 0
    assert queue.unacked_count == 0
    assert closing.consumers == {}
    assert closing.unacked == {}
    assert len(sink.deliveries) == 5


def test_close_does_not_deliver_back_to_its_own_consumers(
    sink: FakeSink,
) -> None:
    """The requeued messages must not go to the closing channel's consumer,
    which still has room for them."""
    queue = make_queue()
    closing = Channel(sink, owner=None)
    consume(closing, queue, "c")
    fill(queue, 3)
    closing.close()
    assert len(sink.deliveries) == 3
    assert ready(queue) == [(b"m0", True), (b"m1", True), (b"m2", True)]


def test_close_hands_requeued_messages_to_other_consumers(sink: FakeSink) -> None:
    queue = make_queue()
    closing = Channel(sink, owner=None)
    consume(closing, queue, "closing")
    fill(queue, 2)
    other_sink = FakeSink()
    other = Channel(other_sink, owner=None)
    consume(other, queue, "other")
    closing.close()
    assert [(d.body, d.redelivered) for d in other_sink.deliveries] == [
        (b"m0", True),
        (b"m1", True),
    ]
    assert queue.message_count == 0
    assert queue.unacked_count == 2


def test_close_also_requeues_basic_get_messages(channel: Channel) -> None:
    queue = make_queue()
    fill(queue, 3)
    channel.get(queue, no_ack=False)
    channel.get(queue, no_ack=True)  # m1 is gone for good
    channel.close()
    assert ready(queue) == [(b"m0", True), (b"m2", False)]


def test_close_is_idempotent_and_a_closed_channel_never_delivers(
    channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue()
    consume(channel, queue, "c")
    channel.close()
    channel.close()
    channel.kick()
    fill(queue, 2)
    assert sink.deliveries == []
    assert queue.message_count == 2


# -- a sink that refuses -------------------------------------------------------


@pytest.mark.parametrize("no_ack", [False, True])
def test_refusing_sink_keeps_messages_in_the_queue_until_kick(
    channel: Channel, sink: FakeSink, no_ack: bool
) -> None:
    queue = make_queue()
    consume(channel, queue, "c", no_ack=no_ack)
    sink.accepting = False
    bodies = fill(queue, 3)
    assert sink.deliveries == []
    assert queue.message_count == 3
    sink.accepting = True
    assert sink.deliveries == []  # nothing moves until someone kicks
    channel.kick()
    assert sink.bodies() == bodies
    assert queue.message_count == 0


def test_refusing_sink_does_not_hold_up_other_consumers(sink: FakeSink) -> None:
    queue = make_queue()
    slow_sink = FakeSink()
    slow_sink.accepting = False
    slow = Channel(slow_sink, owner=None)
    consume(slow, queue, "slow")
    consume(Channel(sink, owner=None), queue, "fast")
    bodies = fill(queue, 4)
    assert sink.bodies("fast") == bodies
    assert slow_sink.deliveries == []


def test_sink_that_fills_up_mid_dispatch(channel: Channel, sink: FakeSink) -> None:
    queue = make_queue()
    consume(channel, queue, "c")
    original_deliver = sink.deliver

    def deliver_then_fill(*args: object) -> None:
        original_deliver(*args)  # type: ignore[arg-type]
        if len(sink.deliveries) == 2:
            sink.accepting = False

    sink.deliver = deliver_then_fill  # type: ignore[method-assign]
    fill(queue, 5)
    assert sink.bodies() == [b"m0", b"m1"]
    assert queue.message_count == 3
    sink.accepting = True
    channel.kick()
    assert sink.bodies() == [b"m0", b"m1", b"m2", b"m3", b"m4"]


# -- a property: nothing is lost or duplicated ---------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["ack", "ack_multi", "nack", "nack_multi", "drop", "recover"]),
        st.integers(min_value=0, max_value=30),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=12),
    prefetch=st.integers(min_value=0, max_value=4),
    global_=st.booleans(),
    ops=OPS,
)
def test_every_message_ends_exactly_once_acked_dropped_or_ready_in_order(
    count: int, prefetch: int, global_: bool, ops: list[tuple[str, int]]
) -> None:
    sink = FakeSink()
    channel = Channel(sink, owner=None)
    queue = make_queue()
    channel.qos(prefetch, global_=global_)
    consume(channel, queue, "c")
    bodies = fill(queue, count)
    by_tag = {d.delivery_tag: d.body for d in sink.deliveries}
    settled: list[bytes] = []
    for op, pick in ops:
        sink_before = len(sink.deliveries)
        outstanding = list(channel.unacked)
        if op == "recover":
            channel.recover()
        elif outstanding:
            tag = outstanding[pick % len(outstanding)]
            if op == "ack":
                channel.ack(tag, multiple=False)
                settled.append(by_tag[tag])
            elif op == "ack_multi":
                channel.ack(tag, multiple=True)
                settled += [by_tag[t] for t in outstanding if t <= tag]
            elif op == "nack":
                channel.reject(tag, multiple=False, requeue=True)
            elif op == "nack_multi":
                channel.reject(tag, multiple=True, requeue=True)
            else:
                channel.reject(tag, multiple=False, requeue=False)
                settled.append(by_tag[tag])
        for delivery in sink.deliveries[sink_before:]:
            by_tag[delivery.delivery_tag] = delivery.body
        held = [by_tag[tag] for tag in channel.unacked]
        if prefetch:
            assert len(held) <= prefetch
        assert queue.unacked_count == len(held)
        assert sorted(settled + held + [body for body, _ in ready(queue)]) == sorted(
            bodies
        )
    channel.close()
    left = [body for body, _ in ready(queue)]
    assert sorted(settled + left) == sorted(bodies)
    assert left == [body for body in bodies if body in left]  # original order
