"""Message TTL, length limits, queue TTL and dead-lettering in the broker
model, with time moved by hand (ManualScheduler): expiry happens at the head
only, through one timer and never a scan; expired messages are never
delivered; requeued messages keep their expiry; ready_bytes stays the sum of
the ready bodies through every operation; x-expires restarts on use.

The integration tests (tests/integration/test_ttl.py, test_limits.py,
test_dead_letter.py) check the same rules against what RabbitMQ 3.10 does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands, header

from amqpy.broker.channel import Channel
from amqpy.broker.errors import NotFoundError
from amqpy.broker.queue import Consumer, Queue, QueueEntry
from amqpy.broker.timers import ManualScheduler, Timer
from amqpy.broker.vhost import VHost
from amqpy.model.message import Message

OWNER = object()


class CountingScheduler(ManualScheduler):
    """A ManualScheduler that counts the timers set and the ones that fired."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled = 0
        self.fired = 0

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        self.scheduled += 1

        def fire() -> None:
            self.fired += 1
            callback()

        return super().call_at(deadline, fire)


class FakeSink:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.tags: list[int] = []

    def can_accept(self) -> bool:
        return True

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        self.bodies.append(message.body)
        self.tags.append(delivery_tag)

    def consumer_cancelled(self, consumer_tag: str) -> None:
        pass


class DeadLetters:
    """Records what a queue dead-letters: (body, reason) in order."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes, str]] = []

    def __call__(self, queue: Queue, entries: list[QueueEntry], reason: str) -> None:
        self.items.extend((entry.message.body, reason) for entry in entries)


def message(body: bytes = b"m", expiration: str | None = None) -> Message:
    properties_raw = b"\x00\x00"
    if expiration is not None:
        properties = commands.Basic.Properties(expiration=expiration)
        properties_raw = header.ContentHeader(0, 0, properties).marshal()[12:]
    return Message("", "q", properties_raw, body)


def make_queue(
    scheduler: ManualScheduler, dead: DeadLetters | None = None, **arguments: Any
) -> Queue:
    """A queue; any dead-letter callback needs an x-dead-letter-exchange."""
    if dead is not None:
        arguments.setdefault("x-dead-letter-exchange", "dlx")
    return Queue(
        "q",
        "/",
        arguments={key.replace("_", "-"): value for key, value in arguments.items()},
        scheduler=scheduler,
        on_dead_letter=dead,
    )


def bodies(queue: Queue) -> list[bytes]:
    return [entry.message.body for entry in queue.messages]


def consume(channel: Channel, queue: Queue, tag: str = "c") -> Consumer:
    consumer = channel.consume(queue, tag, no_ack=False, exclusive=False)
    channel.start(consumer)
    return consumer


def check_bytes(queue: Queue) -> None:
    assert queue.ready_bytes == sum(len(entry.message.body) for entry in queue.messages)


@pytest.fixture
def scheduler() -> CountingScheduler:
    return CountingScheduler()


@pytest.fixture
def dead() -> DeadLetters:
    return DeadLetters()


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
def channel(sink: FakeSink) -> Channel:
    return Channel(sink, owner=OWNER)


# -- expiry at the head, with one timer ------------------------------------------------


def test_expiry_happens_at_the_head_only(
    scheduler: CountingScheduler, dead: DeadLetters, channel: Channel
) -> None:
    queue = make_queue(scheduler, dead)
    queue.enqueue(message(b"long", "5000"))
    queue.enqueue(message(b"short", "10"))
    queue.enqueue(message(b"none"))
    queue.enqueue(message(b"short2", "20"))
    scheduler.advance(1.0)
    assert bodies(queue) == [b"long", b"short", b"none", b"short2"]
    assert dead.items == []
    # Taking the head drops the expired message that reaches it, at once.
    got = channel.get(queue, no_ack=True)
    assert got is not None and got[1].message.body == b"long"
    assert bodies(queue) == [b"none", b"short2"]
    assert dead.items == [(b"short", "expired")]
    channel.get(queue, no_ack=True)
    assert bodies(queue) == []
    assert dead.items == [(b"short", "expired"), (b"short2", "expired")]


def test_the_timer_fires_at_the_head_deadline(
    scheduler: CountingScheduler, dead: DeadLetters
) -> None:
    queue = make_queue(scheduler, dead, x_message_ttl=200)
    queue.enqueue(message(b"a", "100"))
    queue.enqueue(message(b"b"))  # the queue's 200 ms
    queue.enqueue(message(b"c", "5000"))  # the lower TTL wins: 200 ms
    scheduler.advance(0.099)
    assert bodies(queue) == [b"a", b"b", b"c"]
    scheduler.advance(0.001)
    assert bodies(queue) == [b"b", b"c"]
    scheduler.advance(0.1)
    assert bodies(queue) == []
    assert dead.items == [(b"a", "expired"), (b"b", "expired"), (b"c", "expired")]


def test_a_ttl_behind_a_message_without_one_gets_a_timer_once_at_the_head(
    scheduler: CountingScheduler, channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue(scheduler)
    queue.enqueue(message(b"forever"))
    queue.enqueue(message(b"short", "30"))
    channel.qos(1, False)
    consume(channel, queue)
    assert sink.bodies == [b"forever"]
    scheduler.advance(0.03)
    assert bodies(queue) == []


def test_expired_messages_are_never_delivered(
    scheduler: CountingScheduler, dead: DeadLetters, channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue(scheduler, dead)
    queue.enqueue(message(b"forever"))
    queue.enqueue(message(b"short", "10"))  # expires behind the head
    queue.enqueue(message(b"kept", "10000"))
    scheduler.advance(0.5)
    consume(channel, queue)
    assert sink.bodies == [b"forever", b"kept"]
    assert dead.items == [(b"short", "expired")]
    check_bytes(queue)


def test_ttl_zero_reaches_a_waiting_consumer_or_expires(
    scheduler: CountingScheduler, dead: DeadLetters, channel: Channel, sink: FakeSink
) -> None:
    queue = make_queue(scheduler, dead)
    queue.enqueue(message(b"alone", "0"))
    assert (bodies(queue), dead.items) == ([], [(b"alone", "expired")])
    channel.qos(1, False)
    consume(channel, queue)
    queue.enqueue(message(b"taken", "0"))
    queue.enqueue(message(b"no-room", "0"))
    assert sink.bodies == [b"taken"]
    assert dead.items == [(b"alone", "expired"), (b"no-room", "expired")]
    assert queue.ready_bytes == 0


def test_requeued_messages_keep_their_expiry(
    scheduler: CountingScheduler, dead: DeadLetters, channel: Channel
) -> None:
    queue = make_queue(scheduler, dead)
    queue.enqueue(message(b"late", "100"))
    queue.enqueue(message(b"soon", "300"))
    late_tag, _ = channel.get(queue, no_ack=False) or (0, None)
    soon_tag, _ = channel.get(queue, no_ack=False) or (0, None)
    scheduler.advance(0.2)
    # "late" is past its time: requeued, it expires instead.
    channel.reject(late_tag, multiple=False, requeue=True)
    assert (bodies(queue), dead.items) == ([], [(b"late", "expired")])
    # "soon" is not: back at the head, it expires at its original deadline.
    channel.reject(soon_tag, multiple=False, requeue=True)
    assert bodies(queue) == [b"soon"]
    scheduler.advance(0.099)
    assert bodies(queue) == [b"soon"]
    scheduler.advance(0.001)
    assert bodies(queue) == []
    assert dead.items[-1] == (b"soon", "expired")


def test_a_hundred_thousand_messages_expire_through_one_timer(
    scheduler: CountingScheduler,
) -> None:
    queue = make_queue(scheduler, x_message_ttl=1000)
    for _ in range(100):
        for _ in range(1000):
            queue.enqueue(message())
        scheduler.advance(0.001)
    assert queue.message_count == 100_000
    assert scheduler.scheduled == 1  # one timer for the head, never one each
    scheduler.advance(0.9)
    assert (queue.message_count, scheduler.fired) == (100_000, 0)
    scheduler.advance(0.2)
    assert queue.message_count == 0
    assert queue.ready_bytes == 0
    # One callback per distinct deadline (100 batches), not per message.
    assert scheduler.fired <= 100
    assert scheduler.scheduled <= 101


def test_purge_and_get_move_the_timer_to_the_new_head(
    scheduler: CountingScheduler, channel: Channel
) -> None:
    queue = make_queue(scheduler)
    queue.enqueue(message(b"a", "1000"))
    queue.enqueue(message(b"b", "100"))
    channel.get(queue, no_ack=True)
    scheduler.advance(0.1)
    assert bodies(queue) == []
    queue.enqueue(message(b"c", "50"))
    assert queue.purge() == 1
    fired = scheduler.fired
    scheduler.advance(1.0)
    assert scheduler.fired == fired  # the purged head's timer was cancelled


# -- length limits and ready_bytes -----------------------------------------------------


def test_drop_head_dead_letters_the_oldest_first(
    scheduler: CountingScheduler, dead: DeadLetters
) -> None:
    queue = make_queue(scheduler, dead, x_max_length=2)
    for index in range(5):
        queue.enqueue(message(b"d%d" % index))
    assert bodies(queue) == [b"d3", b"d4"]
    assert dead.items == [(b"d0", "maxlen"), (b"d1", "maxlen"), (b"d2", "maxlen")]
    check_bytes(queue)


def test_max_length_bytes_counts_ready_bodies(
    scheduler: CountingScheduler, dead: DeadLetters, channel: Channel
) -> None:
    queue = make_queue(scheduler, dead, x_max_length_bytes=10)
    for body in (b"aaaa", b"bbbb", b"cc", b"d"):
        queue.enqueue(message(body))
    assert (bodies(queue), queue.ready_bytes) == ([b"bbbb", b"cc", b"d"], 7)
    tag, _ = channel.get(queue, no_ack=False) or (0, None)
    assert queue.ready_bytes == 3  # unacked bytes do not count
    queue.enqueue(message(b"eeeeeee"))
    assert queue.ready_bytes == 10
    channel.reject(tag, multiple=False, requeue=True)  # 14 bytes: drop the head
    assert bodies(queue) == [b"cc", b"d", b"eeeeeee"]
    assert dead.items[-1] == (b"bbbb", "maxlen")
    check_bytes(queue)
    queue.enqueue(message(b"x" * 11))  # over the limit on its own
    assert bodies(queue) == []
    assert queue.ready_bytes == 0


def test_reject_publish_refuses_and_requeue_may_overfill(
    scheduler: CountingScheduler, dead: DeadLetters, channel: Channel
) -> None:
    queue = make_queue(scheduler, x_max_length=2, x_overflow="reject-publish")
    assert [queue.enqueue(message(b)) for b in (b"a", b"b", b"c")] == [
        True,
        True,
        False,
    ]
    channel.get(queue, no_ack=False)
    tag, _ = channel.get(queue, no_ack=False) or (0, None)
    assert [queue.enqueue(message(b)) for b in (b"c", b"d", b"e")] == [
        True,
        True,
        False,
    ]
    channel.reject(tag, multiple=True, requeue=True)
    assert bodies(queue) == [b"a", b"b", b"c", b"d"]  # nothing dropped
    assert queue.enqueue(message(b"f")) is False
    check_bytes(queue)


def test_reject_publish_dlx_dead_letters_the_refused_message(
    scheduler: CountingScheduler, dead: DeadLetters
) -> None:
    queue = make_queue(scheduler, dead, x_max_length=1, x_overflow="reject-publish-dlx")
    assert queue.enqueue(message(b"in")) is True
    assert queue.enqueue(message(b"out")) is False
    assert (bodies(queue), dead.items) == ([b"in"], [(b"out", "maxlen")])


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("publish"),
            st.integers(0, 12),
            st.sampled_from([None, "0", "5", "50"]),
        ),
        st.tuples(st.just("get"), st.booleans()),
        st.tuples(st.just("ack"), st.booleans()),
        st.tuples(st.just("reject"), st.booleans()),
        st.tuples(st.just("advance"), st.sampled_from([0.001, 0.01, 0.1])),
        st.tuples(st.just("purge")),
        st.tuples(st.just("consume")),
        st.tuples(st.just("cancel")),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=OPERATIONS,
    limits=st.sampled_from(
        [
            {"x_max_length": 3},
            {"x_max_length_bytes": 20},
            {"x_max_length": 2, "x_max_length_bytes": 15},
            {"x_max_length": 3, "x_overflow": "reject-publish"},
            {"x_max_length_bytes": 20, "x_overflow": "reject-publish-dlx"},
            {"x_message_ttl": 20},
        ]
    ),
)
def test_ready_bytes_and_limits_hold_through_any_operations(
    operations: list[tuple[Any, ...]], limits: dict[str, Any]
) -> None:
    scheduler = CountingScheduler()
    sink = FakeSink()
    channel = Channel(sink, owner=OWNER)
    channel.qos(2, False)
    queue = make_queue(scheduler, DeadLetters(), **limits)
    consumer: Consumer | None = None
    for operation in operations:
        kind = operation[0]
        if kind == "publish":
            queue.enqueue(message(b"x" * operation[1], operation[2]))
        elif kind == "get":
            channel.get(queue, no_ack=operation[1])
        elif kind in ("ack", "reject") and channel.unacked:
            tag = next(iter(channel.unacked))
            if kind == "ack":
                channel.ack(tag, multiple=operation[1])
            else:
                channel.reject(tag, multiple=False, requeue=operation[1])
        elif kind == "advance":
            scheduler.advance(operation[1])
        elif kind == "purge":
            queue.purge()
        elif kind == "consume" and consumer is None:
            consumer = consume(channel, queue)
        elif kind == "cancel" and consumer is not None:
            channel.cancel(consumer.tag)
            consumer = None
        check_bytes(queue)
        overflow = limits.get("x_overflow", "drop-head")
        if overflow == "drop-head":
            assert queue.message_count <= limits.get("x_max_length", 10**9)
            assert queue.ready_bytes <= limits.get("x_max_length_bytes", 10**9)
        # Nothing at the head is past its time once the timers have run.
        head = queue.messages[0] if queue.messages else None
        if head is not None and head.expires_at is not None:
            assert head.expires_at > scheduler.now()
    for tag in list(channel.unacked):
        channel.reject(tag, multiple=False, requeue=True)
    check_bytes(queue)


# -- queue TTL (x-expires) -------------------------------------------------------------


@pytest.fixture
def vhost(scheduler: CountingScheduler) -> VHost:
    return VHost("/", scheduler=scheduler)


def exists(vhost: VHost, name: str) -> bool:
    return name in vhost.queues


def test_an_unused_queue_goes_after_x_expires_with_its_messages(
    vhost: VHost, scheduler: CountingScheduler
) -> None:
    vhost.declare_queue("dlq", owner=OWNER)
    queue = vhost.declare_queue(
        "q",
        owner=OWNER,
        arguments={
            "x-expires": 1000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq",
        },
    )
    queue.enqueue(message(b"lost"))  # publishing is not using the queue
    scheduler.advance(0.999)
    assert exists(vhost, "q")
    scheduler.advance(0.001)
    assert not exists(vhost, "q")
    assert vhost.queues["dlq"].message_count == 0  # not dead-lettered
    with pytest.raises(NotFoundError):
        vhost.declare_queue("q", owner=OWNER, passive=True)


@pytest.mark.parametrize("use", ["passive-declare", "redeclare", "basic-get"])
def test_using_a_queue_restarts_x_expires(
    vhost: VHost, scheduler: CountingScheduler, channel: Channel, use: str
) -> None:
    arguments = {"x-expires": 1000}
    queue = vhost.declare_queue("q", owner=OWNER, arguments=arguments)
    scheduler.advance(0.9)
    if use == "passive-declare":
        vhost.declare_queue("q", owner=OWNER, passive=True)
    elif use == "redeclare":
        vhost.declare_queue("q", owner=OWNER, arguments=arguments)
    else:
        assert channel.get(queue, no_ack=True) is None
    scheduler.advance(0.9)
    assert exists(vhost, "q")
    scheduler.advance(0.1)
    assert not exists(vhost, "q")


def test_consumers_hold_off_x_expires_until_the_last_one_leaves(
    vhost: VHost, scheduler: CountingScheduler, sink: FakeSink
) -> None:
    queue = vhost.declare_queue("q", owner=OWNER, arguments={"x-expires": 1000})
    first, second = Channel(sink, owner=OWNER), Channel(sink, owner=OWNER)
    consume(first, queue, "a")
    consume(second, queue, "b")
    scheduler.advance(5.0)
    assert exists(vhost, "q")
    first.cancel("a")
    scheduler.advance(5.0)
    assert exists(vhost, "q")
    second.close()  # a closing channel takes its consumer with it
    scheduler.advance(0.999)
    assert exists(vhost, "q")
    scheduler.advance(0.001)
    assert not exists(vhost, "q")


def test_a_deleted_queue_stops_its_timers(
    vhost: VHost, scheduler: CountingScheduler
) -> None:
    queue = vhost.declare_queue(
        "q", owner=OWNER, arguments={"x-expires": 1000, "x-message-ttl": 500}
    )
    queue.enqueue(message())
    vhost.delete_queue("q", owner=OWNER)
    fired = scheduler.fired
    scheduler.advance(2.0)
    assert scheduler.fired == fired


# -- dead-lettering through the vhost --------------------------------------------------


def test_vhost_dead_letters_in_order_and_drops_expiry_cycles(
    vhost: VHost, scheduler: CountingScheduler
) -> None:
    dlq = vhost.declare_queue("dlq", owner=OWNER)
    src = vhost.declare_queue(
        "src",
        owner=OWNER,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq",
            "x-max-length": 1,
        },
    )
    for index in range(3):
        src.enqueue(message(b"m%d" % index))
    assert bodies(dlq) == [b"m0", b"m1"]
    headers = dlq.messages[0].message.headers or {}
    assert [(d["queue"], d["reason"], d["count"]) for d in headers["x-death"]] == [
        ("src", "maxlen", 1)
    ]
    assert dlq.messages[0].message.routing_key == "dlq"
    # A queue that dead-letters expired messages to itself drops them.
    looping = vhost.declare_queue(
        "loop",
        owner=OWNER,
        arguments={"x-dead-letter-exchange": "", "x-message-ttl": 10},
    )
    looping.enqueue(message(b"once"))
    scheduler.advance(0.01)
    assert looping.message_count == 0


def test_each_priority_level_expires_at_its_own_head(
    scheduler: CountingScheduler, dead: DeadLetters
) -> None:
    queue = make_queue(scheduler, dead, x_max_priority=5)

    def prioritized(body: bytes, priority: int, expiration: str | None) -> Message:
        properties = commands.Basic.Properties(priority=priority, expiration=expiration)
        raw = header.ContentHeader(0, 0, properties).marshal()[12:]
        return Message("", "q", raw, body)

    queue.enqueue(prioritized(b"high, no ttl", 5, None))
    queue.enqueue(prioritized(b"low, 10 ms", 1, "10"))
    scheduler.advance(0.05)
    # The low level's head expired although a high-priority message is ahead.
    assert bodies(queue) == [b"high, no ttl"]
    assert dead.items == [(b"low, 10 ms", "expired")]
    check_bytes(queue)
