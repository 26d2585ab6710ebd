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

from amqpy.model.message import Message
from amqpy.store.queue_log import QueueLog, StoredMessage

if TYPE_CHECKING:
    from amqpy.broker.channel import Channel


class QueueEntry:
    """A message's place in one queue; `seq` orders requeues."""

    __slots__ = ("message", "persisted", "redelivered", "seq")

    def __init__(self, message: Message, seq: int, redelivered: bool = False) -> None:
        self.message = message
        self.seq = seq
        self.redelivered = redelivered
        self.persisted = False  # in the queue's log until settled


class Consumer:
    __slots__ = (
        "arguments",
        "channel",
        "exclusive",
        "no_ack",
        "prefetch_count",
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


class Queue:
    """One queue in a vhost."""

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
    ) -> None:
        self.name = name
        self.vhost_name = vhost_name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments: dict[str, Any] = dict(arguments or {})
        self.messages: deque[QueueEntry] = deque()
        self.consumers: deque[Consumer] = deque()
        self.unacked_count = 0
        self.deleted = False
        # Persistent messages are written here when the queue is durable.
        self.log: QueueLog | None = None
        self._next_seq = 0
        self._had_consumer = False
        self._dispatching = False
        # Called when an auto-delete queue loses its last consumer.
        self._on_unused = on_unused

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

    def enqueue(self, message: Message) -> None:
        self._next_seq += 1
        entry = QueueEntry(message, self._next_seq)
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
        self.messages.append(entry)
        if self.consumers:
            self.dispatch()

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
            self.messages.append(entry)
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
        messages = self.messages
        if not messages or returning[-1].seq < messages[0].seq:
            messages.extendleft(reversed(returning))
        else:
            merged = sorted([*messages, *returning], key=lambda entry: entry.seq)
            self.messages = deque(merged)
        self.dispatch()

    def take(self) -> QueueEntry | None:
        """The head message, for basic.get."""
        return self.messages.popleft() if self.messages else None

    def purge(self) -> int:
        count = len(self.messages)
        if self.log is not None:
            for entry in self.messages:
                if entry.persisted:
                    self.log.ack(entry.seq)
        self.messages.clear()
        return count

    # -- consumers -----------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self._had_consumer = True
        self.dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if (
            self.auto_delete
            and not self.consumers
            and self._had_consumer
            and not self.deleted
            and self._on_unused is not None
        ):
            self._on_unused(self)

    def dispatch(self) -> None:
        """Deliver ready messages to consumers with room for them."""
        if self._dispatching or self.deleted:
            return  # re-entered from a delivery: the outer loop carries on
        self._dispatching = True
        try:
            messages = self.messages
            consumers = self.consumers
            while messages and consumers:
                for _ in range(len(consumers)):
                    consumer = consumers[0]
                    consumers.rotate(-1)
                    if consumer.channel.can_deliver(consumer):
                        break
                else:
                    return  # every consumer is full; an ack or drain wakes us
                consumer.channel.deliver(consumer, messages.popleft())
        finally:
            self._dispatching = False
