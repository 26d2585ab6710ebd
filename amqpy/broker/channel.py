"""The broker's side of an AMQP channel: consumers, unacked deliveries,
prefetch (basic.qos) and acknowledgements. No frames, no channel numbers:
deliveries leave through a `DeliverySink` the server provides.

Prefetch follows RabbitMQ: `global=false` sets the limit for consumers
started afterwards on this channel, each counting its own unacked messages;
`global=true` sets one limit shared by all consumers of the channel. Both may
be in force at once.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from amqpy.broker.arguments import InvalidArgumentError, validate_consumer_arguments
from amqpy.broker.dead_letter import REJECTED
from amqpy.broker.errors import (
    AccessRefusedError,
    NotAllowedError,
    PreconditionFailedError,
)
from amqpy.broker.queue import Consumer, Queue, QueueEntry
from amqpy.model.message import Message


class DeliverySink(Protocol):
    """Where a channel's deliveries go (the server encodes them as frames)."""

    def can_accept(self) -> bool:
        """False while the connection's outbound buffer is over its high mark."""

    def deliver(
        self,
        consumer_tag: str,
        delivery_tag: int,
        redelivered: bool,
        message: Message,
    ) -> None: ...

    def consumer_cancelled(self, consumer_tag: str) -> None:
        """The broker cancelled a consumer (its queue was deleted)."""


class _ClosedSink:
    """The sink of a closed channel: nothing more is delivered to it."""

    def can_accept(self) -> bool:
        return False

    def deliver(
        self,
        consumer_tag: str,
        delivery_tag: int,
        redelivered: bool,
        message: Message,
    ) -> None:
        raise RuntimeError("delivery to a closed channel")

    def consumer_cancelled(self, consumer_tag: str) -> None:
        pass


CLOSED_SINK: DeliverySink = _ClosedSink()


def generate_name(prefix: str) -> str:
    """A RabbitMQ-style generated name: prefix + 22 url-safe base64 chars."""
    return prefix + base64.urlsafe_b64encode(os.urandom(16)).decode()[:22]


class Unacked:
    __slots__ = ("consumer", "delivery_tag", "entry", "queue")

    def __init__(
        self,
        delivery_tag: int,
        queue: Queue,
        entry: QueueEntry,
        consumer: Consumer | None,
    ) -> None:
        self.delivery_tag = delivery_tag
        self.queue = queue
        self.entry = entry
        self.consumer = consumer


class Channel:
    def __init__(self, sink: DeliverySink, owner: object) -> None:
        self.sink = sink
        self.owner = owner  # the connection, for exclusive-queue checks
        self.consumers: dict[str, Consumer] = {}
        self.unacked: dict[int, Unacked] = {}
        self._next_delivery_tag = 1
        self.prefetch_count = 0  # for consumers started from now on
        # When set, acks ask for a later kick() instead of dispatching at once
        # (the server kicks once per batch of acks read together).
        self.defer_kick: Callable[[Channel], None] | None = None
        self.global_prefetch_count = 0
        # Unacked consumer deliveries: what the global limit counts (as
        # RabbitMQ's limiter, basic.get messages take no prefetch slot).
        self.consumer_unacked = 0
        self.closed = False

    @property
    def next_delivery_tag(self) -> int:
        """The tag the next delivery will get."""
        return self._next_delivery_tag

    # -- delivery (called by queues) ----------------------------------------

    def can_deliver(self, consumer: Consumer) -> bool:
        if self.closed:
            return False  # requeued by close() while its consumers still hang on
        if consumer.no_ack:
            return self.sink.can_accept()
        if consumer.prefetch_count and consumer.unacked >= consumer.prefetch_count:
            return False
        if (
            self.global_prefetch_count
            and self.consumer_unacked >= self.global_prefetch_count
        ):
            return False
        return self.sink.can_accept()

    def deliver(self, consumer: Consumer, entry: QueueEntry) -> None:
        delivery_tag = self._next_delivery_tag
        self._next_delivery_tag = delivery_tag + 1
        queue = consumer.queue
        if not consumer.no_ack:
            self.unacked[delivery_tag] = Unacked(delivery_tag, queue, entry, consumer)
            consumer.unacked += 1
            self.consumer_unacked += 1
            queue.unacked_count += 1
            queue.stat_deliver += 1
        else:
            queue.stat_deliver_no_ack += 1
            if entry.persisted:
                queue.settle(entry)
        redelivered = entry.redelivered
        if redelivered:
            queue.stat_redeliver += 1
        self.sink.deliver(consumer.tag, delivery_tag, redelivered, entry.message)

    def get(self, queue: Queue, no_ack: bool) -> tuple[int, QueueEntry] | None:
        """basic.get: the head message and its delivery tag, or None."""
        entry = queue.take()
        if entry is None:
            queue.stat_get_empty += 1
            return None
        delivery_tag = self._next_delivery_tag
        self._next_delivery_tag = delivery_tag + 1
        if not no_ack:
            self.unacked[delivery_tag] = Unacked(delivery_tag, queue, entry, None)
            queue.unacked_count += 1
            queue.stat_get += 1
        else:
            queue.stat_get_no_ack += 1
            if entry.persisted:
                queue.settle(entry)
        if entry.redelivered:
            queue.stat_redeliver += 1
        return delivery_tag, entry

    # -- consumers -------------------------------------------------------------

    def consume(
        self,
        queue: Queue,
        consumer_tag: str,
        *,
        no_ack: bool,
        exclusive: bool,
        arguments: Mapping[str, Any] | None = None,
    ) -> Consumer:
        if not consumer_tag:
            consumer_tag = generate_name("amq.ctag-")
        try:
            validate_consumer_arguments(arguments or {})
        except InvalidArgumentError as error:
            raise PreconditionFailedError(
                f"invalid arg '{error.key}' for queue '{queue.name}' in vhost "
                f"'{queue.vhost_name}': {error.detail}"
            ) from error
        if consumer_tag in self.consumers:
            raise NotAllowedError(f"attempt to reuse consumer tag '{consumer_tag}'")
        if queue.has_exclusive_consumer or (exclusive and queue.consumers):
            raise AccessRefusedError(
                f"queue '{queue.name}' in vhost '{queue.vhost_name}' in exclusive use"
            )
        consumer = Consumer(
            consumer_tag,
            queue,
            self,
            no_ack=no_ack,
            exclusive=exclusive,
            prefetch_count=self.prefetch_count,
            arguments=arguments,
        )
        self.consumers[consumer_tag] = consumer
        return consumer

    def start(self, consumer: Consumer) -> None:
        """Attach the consumer to its queue (after consume-ok is queued)."""
        consumer.queue.add_consumer(consumer)

    def cancel(self, consumer_tag: str) -> bool:
        consumer = self.consumers.pop(consumer_tag, None)
        if consumer is None:
            return False
        consumer.queue.remove_consumer(consumer)
        return True

    def queue_deleted(self, consumer: Consumer) -> None:
        """The consumer's queue went away: forget it and tell the client."""
        if self.consumers.pop(consumer.tag, None) is not None:
            self.sink.consumer_cancelled(consumer.tag)

    # -- qos -------------------------------------------------------------------

    def qos(self, prefetch_count: int, global_: bool) -> None:
        if global_:
            self.global_prefetch_count = prefetch_count
        else:
            # As RabbitMQ 3.x does: a per-consumer qos lifts the channel limit.
            self.prefetch_count = prefetch_count
            self.global_prefetch_count = 0
        self.kick()

    def kick(self) -> None:
        """Let this channel's queues deliver again (room may have opened up)."""
        if self.closed:
            return
        for queue in {consumer.queue for consumer in self.consumers.values()}:
            queue.dispatch()

    # -- acknowledgements ------------------------------------------------------

    def _take(self, delivery_tag: int, multiple: bool) -> list[Unacked]:
        unacked = self.unacked
        if multiple:
            if delivery_tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if delivery_tag not in unacked:
                raise PreconditionFailedError(f"unknown delivery tag {delivery_tag}")
            return [unacked.pop(tag) for tag in list(self._tags_up_to(delivery_tag))]
        found = unacked.pop(delivery_tag, None)
        if found is None:
            raise PreconditionFailedError(f"unknown delivery tag {delivery_tag}")
        return [found]

    def _tags_up_to(self, delivery_tag: int) -> Iterator[int]:
        for tag in self.unacked:  # insertion order is delivery order
            if tag > delivery_tag:
                return
            yield tag

    def _settle(self, taken: list[Unacked]) -> None:
        for item in taken:
            item.queue.unacked_count -= 1
            if item.consumer is not None:
                item.consumer.unacked -= 1
                self.consumer_unacked -= 1

    @staticmethod
    def _forget(taken: list[Unacked]) -> None:
        """Acked: the messages are done with for good."""
        for item in taken:
            queue = item.queue
            queue.stat_ack += 1
            if item.entry.persisted:
                queue.settle(item.entry)

    @staticmethod
    def _discard(taken: list[Unacked]) -> None:
        """Rejected without requeue: settled, and dead-lettered if configured."""
        for item in taken:
            item.queue.discard([item.entry], REJECTED)

    def take(self, delivery_tag: int, multiple: bool) -> list[Unacked]:
        """Validate and remove acked deliveries without settling them yet (a
        transaction settles them at commit, or restores them at rollback).

        Raises:
            PreconditionFailedError: unknown delivery tag.
        """
        return self._take(delivery_tag, multiple)

    def settle(self, taken: list[Unacked], requeue: bool | None) -> None:
        """Settle taken deliveries: ack (requeue None), reject or requeue."""
        self._settle(taken)
        if requeue:
            self._requeue(taken)
        elif requeue is None:
            self._forget(taken)
        else:
            self._discard(taken)
        self.kick()

    def restore(self, taken: list[Unacked]) -> None:
        """Taken deliveries become unacked again, in delivery-tag order."""
        if not taken:
            return
        merged = [*self.unacked.values(), *taken]
        merged.sort(key=lambda item: item.delivery_tag)
        self.unacked = {item.delivery_tag: item for item in merged}

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            taken = self._take(delivery_tag, multiple)
            self._settle(taken)
            self._forget(taken)
        else:
            # One basic.ack per message is the common case: _take, _settle
            # and _forget for one delivery, without their lists and loops.
            item = self.unacked.pop(delivery_tag, None)
            if item is None:
                raise PreconditionFailedError(f"unknown delivery tag {delivery_tag}")
            queue = item.queue
            queue.unacked_count -= 1
            queue.stat_ack += 1
            consumer = item.consumer
            if consumer is not None:
                consumer.unacked -= 1
                self.consumer_unacked -= 1
            if item.entry.persisted:
                queue.settle(item.entry)
        if self.defer_kick is not None:
            self.defer_kick(self)  # the caller kicks once for many acks
        else:
            self.kick()

    def reject(self, delivery_tag: int, multiple: bool, requeue: bool) -> None:
        """basic.nack / basic.reject."""
        taken = self._take(delivery_tag, multiple)
        self._settle(taken)
        if requeue:
            self._requeue(taken)
        else:
            self._discard(taken)
        self.kick()

    def recover(self) -> None:
        """basic.recover(requeue=true): every unacked message goes back."""
        taken = list(self.unacked.values())
        self.unacked.clear()
        self._settle(taken)
        self._requeue(taken)
        self.kick()

    @staticmethod
    def _requeue(taken: list[Unacked]) -> None:
        by_queue: dict[Queue, list[QueueEntry]] = {}
        for item in taken:
            by_queue.setdefault(item.queue, []).append(item.entry)
        for queue, entries in by_queue.items():
            queue.requeue(entries)

    def close(self) -> None:
        """The channel is gone: cancel its consumers, requeue what it held."""
        if self.closed:
            return
        self.closed = True
        consumers = list(self.consumers.values())
        self.consumers.clear()
        taken = list(self.unacked.values())
        self.unacked.clear()
        self._settle(taken)
        # Requeue before the consumers go, so an auto-delete queue deleted by
        # losing its last consumer does not swallow them first; RabbitMQ drops
        # them with the queue either way.
        self._requeue(taken)
        for consumer in consumers:
            consumer.queue.remove_consumer(consumer)
        # Break the channel <-> sink (the server's channel handler) cycle, so a
        # closed connection's objects go by reference counting, not at the
        # next full garbage collection.
        self.sink = CLOSED_SINK
        self.defer_kick = None
