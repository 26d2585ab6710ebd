"""Queues: ready messages in order, consumers in round-robin, dispatch.

Dispatch is a plain synchronous call made whenever something may let a
message move (a publish, an ack, a new consumer, a qos change, a consumer's
connection draining its outbound buffer). It hands as many messages as the
consumers have room for to their channels, which encode them straight into
their connection's output; nothing is awaited per message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from amqpy.broker.dead_letter import EXPIRED, MAXLEN
from amqpy.broker.ready import FifoMessages, PriorityMessages
from amqpy.broker.stats import count_dead_lettered
from amqpy.broker.timers import Scheduler, Timer
from amqpy.model.message import Message
from amqpy.store.queue_log import QueueLog, StoredMessage

if TYPE_CHECKING:
    from amqpy.broker.channel import Channel


class QueueEntry:
    """A message's place in one queue; `seq` orders requeues."""

    __slots__ = ("expires_at", "message", "persisted", "priority", "redelivered", "seq")

    def __init__(self, message: Message, seq: int, redelivered: bool = False) -> None:
        self.message = message
        self.seq = seq
        self.redelivered = redelivered
        self.persisted = False  # in the queue's log until settled
        self.expires_at: float | None = None  # monotonic seconds (message TTL)
        self.priority = 0  # the message's priority, in a priority queue


class Consumer:
    __slots__ = (
        "arguments",
        "channel",
        "exclusive",
        "no_ack",
        "prefetch_count",
        "priority",
        "queue",
        "tag",
        "unacked",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue,
        channel: Channel,
        *,
        no_ack: bool,
        exclusive: bool,
        prefetch_count: int,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch_count = prefetch_count
        self.arguments = dict(arguments or {})
        self.unacked = 0
        priority = self.arguments.get("x-priority", 0)
        self.priority = priority if isinstance(priority, int) else 0


# Expired messages removed per timer callback before yielding to other work.
EXPIRY_BATCH = 5000


def _int_argument(arguments: Mapping[str, Any], key: str) -> int | None:
    value = arguments.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_argument(arguments: Mapping[str, Any], key: str) -> str | None:
    value = arguments.get(key)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


class Queue:
    """One queue in a vhost.

    Message TTL, length limits and queue expiry follow RabbitMQ's classic
    queues: expired messages are removed when they reach the head (one timer
    for the head, never a scan), never delivered; limits count ready messages
    only; the queue's TTL (x-expires) runs while it has no consumers.
    """

    def __init__(
        self,
        name: str,
        vhost_name: str,
        *,
        durable: bool = False,
        exclusive_owner: object | None = None,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        on_unused: Callable[[Queue], None] | None = None,
        scheduler: Scheduler | None = None,
        on_dead_letter: Callable[[Queue, list[QueueEntry], str], None] | None = None,
    ) -> None:
        self.name = name
        self.vhost_name = vhost_name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments: dict[str, Any] = dict(arguments or {})
        self.max_priority = _int_argument(self.arguments, "x-max-priority") or 0
        self.messages: FifoMessages | PriorityMessages = (
            PriorityMessages(self.max_priority) if self.max_priority else FifoMessages()
        )
        self.consumers: deque[Consumer] = deque()
        self.unacked_count = 0
        self.ready_bytes = 0  # body bytes of the ready messages
        self.deleted = False
        # Persistent messages are written here when the queue is durable.
        self.log: QueueLog | None = None
        self.store_id: str | None = None  # the log's folder
        self._next_seq = 0
        self._had_consumer = False
        self._dispatching = False
        # The message being enqueued: a waiting consumer gets it whatever its
        # TTL, as RabbitMQ hands a publish to a consumer before enqueueing it.
        self._arriving: QueueEntry | None = None
        # Called when an auto-delete queue loses its last consumer, and when
        # an x-expires queue has been unused for its TTL.
        self._on_unused = on_unused
        self._scheduler = scheduler
        self._on_dead_letter = on_dead_letter
        self.single_active_consumer = (
            self.arguments.get("x-single-active-consumer") is True
        )
        self._consumer_priorities = False  # some consumer has x-priority != 0
        self._expiry_timer: Timer | None = None
        self._idle_timer: Timer | None = None
        # Message counters (amqpy.broker.stats.QUEUE_COUNTERS): plain ints,
        # bumped where the event happens anyway.
        self.stat_publish = 0
        self.stat_deliver = 0
        self.stat_deliver_no_ack = 0
        self.stat_get = 0
        self.stat_get_no_ack = 0
        self.stat_get_empty = 0
        self.stat_ack = 0
        self.stat_redeliver = 0
        # (reason, dead-letter strategy) -> messages; None until one is.
        self.stat_dead_lettered: dict[tuple[str, str], int] | None = None
        self.configure(self.arguments)

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Apply the arguments in force (the queue's own, merged with its
        policy). Messages already queued keep their expiry; a lower length
        limit drops (or dead-letters) from the head at once."""
        self.message_ttl_ms = _int_argument(settings, "x-message-ttl")
        self.max_length = _int_argument(settings, "x-max-length")
        self.max_length_bytes = _int_argument(settings, "x-max-length-bytes")
        self.overflow = _str_argument(settings, "x-overflow") or "drop-head"
        self.expires_ms = _int_argument(settings, "x-expires")
        self.dead_letter_exchange = _str_argument(settings, "x-dead-letter-exchange")
        self.dead_letter_routing_key = _str_argument(
            settings, "x-dead-letter-routing-key"
        )
        self.touch()
        if self.overflow == "drop-head" and (
            self.max_length is not None or self.max_length_bytes is not None
        ):
            self._drop_head_over_limit()

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} in {self.vhost_name!r}>"

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        return len(self.messages)

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    @property
    def has_exclusive_consumer(self) -> bool:
        return any(consumer.exclusive for consumer in self.consumers)

    # -- messages ------------------------------------------------------------

    def _ttl_ms(self, message: Message) -> int | None:
        ttl = self.message_ttl_ms
        expiration = message.expiration_ms
        if expiration is not None and (ttl is None or expiration < ttl):
            return expiration
        return ttl

    def _is_full(self, extra_bytes: int = 0) -> bool:
        """At or over a length limit (counting a message of `extra_bytes`)."""
        if self.max_length is not None and len(self.messages) >= self.max_length:
            return True
        return (
            self.max_length_bytes is not None
            and self.ready_bytes + extra_bytes > self.max_length_bytes
        )

    def enqueue(self, message: Message) -> bool:
        """Add a message; False when the queue refused it (reject-publish)."""
        if (
            self.overflow != "drop-head"
            and (self.max_length is not None or self.max_length_bytes is not None)
            and self._is_full(len(message.body))
        ):
            if self.overflow == "reject-publish-dlx":
                self._next_seq += 1
                count_dead_lettered(self, MAXLEN, 1)
                self._dead_letter([QueueEntry(message, self._next_seq)], MAXLEN)
            return False
        self._next_seq += 1
        entry = QueueEntry(message, self._next_seq)
        if self.max_priority:
            entry.priority = message.priority
        log = self.log
        if log is not None and message.persistent:
            log.append(
                entry.seq,
                message.exchange,
                message.routing_key,
                message.properties_raw,
                message.body,
            )
            entry.persisted = True
        ttl = self._ttl_ms(message) if self._scheduler is not None else None
        if ttl is not None:
            entry.expires_at = self._now() + ttl / 1000
        messages = self.messages
        messages.append(entry)
        self.ready_bytes += len(message.body)
        # With older messages still ready, every consumer is full (whatever
        # frees room dispatches: an ack, a qos, a drained connection, a new
        # consumer), so a backlog costs no dispatch per publish.
        if self.consumers and len(messages) == 1:
            self._arriving = entry
            try:
                self.dispatch()
            finally:
                self._arriving = None
        if ttl == 0 and self.messages.remove_tail(entry):
            # TTL 0: delivered at once or never (RabbitMQ expires it now).
            self.ready_bytes -= len(message.body)
            self._expired([entry])
        if self.max_length is not None or self.max_length_bytes is not None:
            self._drop_head_over_limit()
        if ttl is not None and (self._expiry_timer is None or self.max_priority):
            # In a priority queue a new message can be the earliest level head.
            self._schedule_expiry()
        return True

    def _drop_head_over_limit(self) -> None:
        dropped = []
        messages = self.messages
        while messages and (
            (self.max_length is not None and len(messages) > self.max_length)
            or (
                self.max_length_bytes is not None
                and self.ready_bytes > self.max_length_bytes
            )
        ):
            entry = messages.popleft()
            self.ready_bytes -= len(entry.message.body)
            dropped.append(entry)
        if dropped:
            self.discard(dropped, MAXLEN)
            # The new head may have expired while it waited behind the old.
            self.expire_head()
            self._schedule_expiry()

    def _now(self) -> float:
        assert self._scheduler is not None
        return self._scheduler.now()

    # -- expiry ----------------------------------------------------------------

    def _schedule_expiry(self) -> None:
        """One timer, for the head message's expiry."""
        if self._scheduler is None or self.deleted:
            return
        head_expiry = self.messages.next_expiry()
        timer = self._expiry_timer
        if timer is not None:
            if head_expiry is not None and timer.deadline == head_expiry:
                return
            timer.cancel()
            self._expiry_timer = None
        if head_expiry is not None:
            self._expiry_timer = self._scheduler.call_at(head_expiry, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry_timer = None
        if self.expire_head(EXPIRY_BATCH) and self._scheduler is not None:
            # More are due: carry on in a fresh timer, letting other work run
            # in between, so a million expiring messages never stall the loop.
            self._expiry_timer = self._scheduler.call_at(self._now(), self._on_expiry)
            return
        self._schedule_expiry()

    def expire_head(self, limit: int | None = None) -> bool:
        """Remove the expired messages at the head (of each priority level)
        and dead-letter them, at most `limit` of them; True when expired ones
        are left at a head."""
        if self._scheduler is None or not self.messages:
            return False
        now = self._now()
        expired = self.messages.pop_expired(now, limit)
        if expired:
            for entry in expired:
                self.ready_bytes -= len(entry.message.body)
            self._expired(expired)
        next_expiry = self.messages.next_expiry()
        return next_expiry is not None and next_expiry <= now

    def _expired(self, entries: list[QueueEntry]) -> None:
        self.discard(entries, EXPIRED)

    def discard(self, entries: list[QueueEntry], reason: str) -> None:
        """Messages leave for good (rejected, expired, dropped): settle them
        in the log and dead-letter them if the queue has a dead-letter exchange."""
        for entry in entries:
            if entry.persisted:
                self.settle(entry)
        count_dead_lettered(self, reason, len(entries))
        self._dead_letter(entries, reason)

    def _dead_letter(self, entries: list[QueueEntry], reason: str) -> None:
        if self.dead_letter_exchange is not None and self._on_dead_letter is not None:
            self._on_dead_letter(self, entries, reason)

    # -- queue TTL (x-expires) -------------------------------------------------

    def touch(self) -> None:
        """The queue was used (declared, basic.get, a consumer left): its
        x-expires countdown starts again while it has no consumers."""
        if self.expires_ms is None or self._scheduler is None or self.deleted:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if not self.consumers:
            self._idle_timer = self._scheduler.call_at(
                self._now() + self.expires_ms / 1000, self._on_idle
            )

    def _on_idle(self) -> None:
        self._idle_timer = None
        if not self.consumers and not self.deleted and self._on_unused is not None:
            self._on_unused(self)

    def stop_timers(self) -> None:
        for timer in (self._expiry_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._expiry_timer = self._idle_timer = None

    def settle(self, entry: QueueEntry) -> None:
        """A persisted message left the queue for good: record it in the log."""
        if self.log is not None:
            self.log.ack(entry.seq)

    def restore(self, messages: Iterable[StoredMessage]) -> None:
        """Messages recovered from the log at start. They may have been
        delivered before the restart, so they come back redelivered."""
        for stored in messages:
            entry = QueueEntry(
                Message(
                    stored.exchange,
                    stored.routing_key,
                    stored.properties_raw,
                    stored.body,
                ),
                stored.seq,
                redelivered=True,
            )
            entry.persisted = True
            if self.max_priority:
                entry.priority = entry.message.priority
            self.messages.append(entry)
            self.ready_bytes += len(stored.body)
            self._next_seq = max(self._next_seq, stored.seq)

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """Put entries back at their original places, marked redelivered."""
        if self.deleted:
            return
        returning = sorted(entries, key=lambda entry: entry.seq)
        if not returning:
            return
        for entry in returning:
            entry.redelivered = True
            self.ready_bytes += len(entry.message.body)
        self.messages.requeue(returning)
        if self.overflow == "drop-head" and (
            self.max_length is not None or self.max_length_bytes is not None
        ):
            # RabbitMQ applies drop-head to requeues too (dead-lettered maxlen).
            self._drop_head_over_limit()
        self.expire_head()
        self._schedule_expiry()
        self.dispatch()

    def take(self) -> QueueEntry | None:
        """The head message, for basic.get (never an expired one)."""
        self.touch()
        self.expire_head()
        if not self.messages:
            return None
        entry = self.messages.popleft()
        self.ready_bytes -= len(entry.message.body)
        # Expired messages now at the head go before get-ok's message_count.
        self.expire_head()
        self._schedule_expiry()
        return entry

    def purge(self) -> int:
        count = len(self.messages)
        if self.log is not None:
            for entry in self.messages:
                if entry.persisted:
                    self.log.ack(entry.seq)
        self.messages.clear()
        self.ready_bytes = 0
        self._schedule_expiry()
        return count

    # -- consumers -----------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        if consumer.priority:
            self._consumer_priorities = True
        self._had_consumer = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        self._consumer_priorities = any(other.priority for other in self.consumers)
        if not self.consumers:
            self.touch()
        elif self.messages and not self.deleted:
            # Those left may take what the removed one could not (a single
            # active consumer's successor, a closing channel's requeued
            # messages), as RabbitMQ hands them over at once.
            self.dispatch()
        if (
            self.auto_delete
            and not self.consumers
            and self._had_consumer
            and not self.deleted
            and self._on_unused is not None
        ):
            self._on_unused(self)

    def _next_by_priority(self) -> Consumer | None:
        """The highest-priority consumer with room; round-robin among equals
        (RabbitMQ's consumer priorities: lower ones get messages only while
        higher ones are full)."""
        best: Consumer | None = None
        for consumer in self.consumers:  # in round-robin order
            if (best is None or consumer.priority > best.priority) and (
                consumer.channel.can_deliver(consumer)
            ):
                best = consumer
        if best is not None:
            self.consumers.remove(best)
            self.consumers.append(best)
        return best

    def dispatch(self) -> None:
        """Deliver ready messages to consumers with room for them."""
        if self._dispatching or self.deleted:
            return  # re-entered from a delivery: the outer loop carries on
        self._dispatching = True
        delivered = False
        try:
            messages = self.messages
            consumers = self.consumers
            while messages and consumers:
                if len(consumers) == 1:
                    # One consumer (the common case): no turns to take, so
                    # deliver while it has room.
                    consumer = consumers[0]
                    channel = consumer.channel
                    arriving = self._arriving
                    while messages and channel.can_deliver(consumer):
                        entry = messages.popleft()
                        self.ready_bytes -= len(entry.message.body)
                        expires_at = entry.expires_at
                        if (
                            expires_at is not None
                            and entry is not arriving
                            and expires_at <= self._now()
                        ):
                            self._expired([entry])
                            break  # dead-lettering may change the consumers
                        delivered = True
                        channel.deliver(consumer, entry)
                    else:
                        return  # full or empty; an ack or a drain wakes us
                    continue
                if self.single_active_consumer:
                    # Only the first consumer receives; the next takes over
                    # when it goes.
                    consumer = consumers[0]
                    if not consumer.channel.can_deliver(consumer):
                        return
                elif self._consumer_priorities:
                    found = self._next_by_priority()
                    if found is None:
                        return
                    consumer = found
                else:
                    for _ in range(len(consumers)):
                        consumer = consumers[0]
                        consumers.rotate(-1)
                        if consumer.channel.can_deliver(consumer):
                            break
                    else:
                        return  # every consumer is full; an ack or drain wakes us
                entry = messages.popleft()
                self.ready_bytes -= len(entry.message.body)
                if (
                    entry.expires_at is not None
                    and entry is not self._arriving
                    and entry.expires_at <= self._now()
                ):
                    self._expired([entry])  # expired messages are never delivered
                    continue
                delivered = True
                consumer.channel.deliver(consumer, entry)
        finally:
            self._dispatching = False
            if delivered:
                # The new head may have a TTL even when the old one had none.
                self._schedule_expiry()
