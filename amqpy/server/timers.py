"""The broker's timers on trio: one task sleeps until the earliest deadline."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from amqpy.broker.timers import Timer, TimerHeap

LOGGER = logging.getLogger(__name__)


def _cancelled() -> None:
    """What a cancelled timer holds instead of its callback."""


class _TrioTimer(Timer):
    __slots__ = ()

    def cancel(self) -> None:
        super().cancel()
        # A cancelled timer stays in the heap until its deadline or the next
        # compaction: it must not keep its callback's owner (a closed
        # connection and all it holds, say) alive that long.
        self.callback = _cancelled


class TrioScheduler:
    def __init__(self) -> None:
        self._timers = TimerHeap()
        self._wakeup = trio.Event()

    def now(self) -> float:
        return trio.current_time()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        timer = _TrioTimer(deadline, callback)
        if self._timers.push(timer):
            self._wakeup.set()  # a new earliest deadline
        return timer

    async def run(self) -> None:
        while True:
            deadline = self._timers.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            for timer in self._timers.pop_due(trio.current_time()):
                try:
                    timer.callback()
                except Exception:
                    # A timer's bug must not stop every other timer.
                    LOGGER.exception("timer callback failed")
