"""The ready messages of a queue: FIFO, or FIFO within priorities.

Both containers offer the same small interface, so a queue does not care
which it has: append, popleft, head (`[0]`), len, iteration in delivery
order, clear, remove_tail(entry) and requeue(entries) (entries go back to
their original places by sequence number, with a linear merge)."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amqpy.broker.queue import QueueEntry


def _merge_back(level: deque[QueueEntry], returning: list[QueueEntry]) -> None:
    """Put `returning` (sorted by seq) into `level` (sorted by seq), in place."""
    if not level or returning[-1].seq < level[0].seq:
        level.extendleft(reversed(returning))
        return
    merged = list(heapq.merge(level, returning, key=lambda entry: entry.seq))
    level.clear()
    level.extend(merged)


def _pop_expired(
    level: deque[QueueEntry], now: float, limit: int | None, into: list[QueueEntry]
) -> None:
    while level and (limit is None or len(into) < limit):
        expires_at = level[0].expires_at
        if expires_at is None or expires_at > now:
            return
        into.append(level.popleft())


class FifoMessages(deque["QueueEntry"]):
    def next_expiry(self) -> float | None:
        """When the head expires (expiry happens at the head only)."""
        return self[0].expires_at if self else None

    def pop_expired(self, now: float, limit: int | None) -> list[QueueEntry]:
        expired: list[QueueEntry] = []
        _pop_expired(self, now, limit, expired)
        return expired

    def remove_tail(self, entry: QueueEntry) -> bool:
        if self and self[-1] is entry:
            self.pop()
            return True
        return False

    def requeue(self, returning: list[QueueEntry]) -> None:
        _merge_back(self, returning)


class PriorityMessages:
    """RabbitMQ's priority queue: higher priority first, FIFO within one."""

    def __init__(self, max_priority: int) -> None:
        self.max_priority = max_priority
        self._levels: list[deque[QueueEntry]] = [
            deque() for _ in range(max_priority + 1)
        ]
        self._count = 0

    def priority_of(self, entry: QueueEntry) -> int:
        return min(entry.priority, self.max_priority)

    def _top(self) -> deque[QueueEntry]:
        for level in reversed(self._levels):
            if level:
                return level
        raise IndexError("no ready messages")

    def append(self, entry: QueueEntry) -> None:
        self._levels[self.priority_of(entry)].append(entry)
        self._count += 1

    def next_expiry(self) -> float | None:
        """The earliest expiry among the heads of the priority levels (each
        level expires at its own head, as RabbitMQ's priority queues do)."""
        expiries = [
            level[0].expires_at
            for level in self._levels
            if level and level[0].expires_at is not None
        ]
        return min(expiries) if expiries else None

    def pop_expired(self, now: float, limit: int | None) -> list[QueueEntry]:
        expired: list[QueueEntry] = []
        for level in reversed(self._levels):
            _pop_expired(level, now, limit, expired)
        self._count -= len(expired)
        return expired

    def popleft(self) -> QueueEntry:
        entry = self._top().popleft()
        self._count -= 1
        return entry

    def __getitem__(self, index: int) -> QueueEntry:
        if index != 0:
            raise IndexError("only the head of a priority queue is addressable")
        return self._top()[0]

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[QueueEntry]:
        for level in reversed(self._levels):
            yield from level

    def clear(self) -> None:
        for level in self._levels:
            level.clear()
        self._count = 0

    def remove_tail(self, entry: QueueEntry) -> bool:
        level = self._levels[self.priority_of(entry)]
        if level and level[-1] is entry:
            level.pop()
            self._count -= 1
            return True
        return False

    def requeue(self, returning: Iterable[QueueEntry]) -> None:
        by_level: dict[int, list[QueueEntry]] = {}
        for entry in returning:
            by_level.setdefault(self.priority_of(entry), []).append(entry)
        for priority, entries in by_level.items():
            _merge_back(self._levels[priority], entries)
            self._count += len(entries)
