"""Time for the broker model: a clock and one-shot timers, injected so that
the model stays synchronous and tests can move time by hand. The server
provides a trio implementation (amqpy/server/timers.py)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Protocol


class Timer:
    """A scheduled callback; `cancel()` before it fires stops it."""

    __slots__ = ("_heap", "callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self._heap: TimerHeap | None = None

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self._heap is not None:
                self._heap.cancelled_one()


class Scheduler(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` (synchronously, on the broker's thread) at `deadline`."""


class TimerHeap:
    """Timers ordered by deadline; the base of both schedulers."""

    # Rebuild once cancelled timers are the majority of a heap this big, so
    # timers re-armed again and again (x-expires, head expiry) cannot pile up.
    COMPACT_MIN_SIZE = 64

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._cancelled = 0

    def push(self, timer: Timer) -> bool:
        """Add a timer; True when it is now the earliest."""
        timer._heap = self
        heapq.heappush(self._heap, (timer.deadline, next(self._order), timer))
        return self._heap[0][2] is timer

    def cancelled_one(self) -> None:
        self._cancelled += 1
        if len(self._heap) >= self.COMPACT_MIN_SIZE and self._cancelled * 2 > len(
            self._heap
        ):
            self._heap = [item for item in self._heap if not item[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled = max(0, self._cancelled - 1)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Timer]:
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            timer._heap = None
            if timer.cancelled:
                self._cancelled = max(0, self._cancelled - 1)
            else:
                due.append(timer)
        return due

    def __len__(self) -> int:
        return len(self._heap)


class ManualScheduler:
    """Time that moves only when told to (tests, and tools without a loop)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers = TimerHeap()

    def now(self) -> float:
        return self._now

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(deadline, callback)
        self._timers.push(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in deadline order."""
        target = self._now + seconds
        while True:
            deadline = self._timers.next_deadline()
            if deadline is None or deadline > target:
                break
            self._now = max(self._now, deadline)
            for timer in self._timers.pop_due(self._now):
                timer.callback()
        self._now = target
