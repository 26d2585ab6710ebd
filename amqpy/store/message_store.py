"""All message logs of a broker, and the group commit that makes them durable.

Queues append and ack on the event loop (memory only); the committer takes
one batch for every log with pending writes and runs it in a thread; when it
returns, everything appended up to the batch's generation is on disk and may
be confirmed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from amqpy.store.queue_log import QueueLog, WriteBatch

MESSAGES_DIR = "msgs"


def queue_dir_name(vhost: str, queue: str) -> str:
    """A file-system-safe folder name for any queue name (UTF-8, 255 bytes)."""
    return hashlib.sha256(f"{vhost}\0{queue}".encode()).hexdigest()[:40]


class MessageStore:
    def __init__(
        self,
        data_dir: Path,
        segment_max_bytes: int,
        on_pending: Callable[[], None] | None = None,
    ) -> None:
        self.directory = data_dir / MESSAGES_DIR
        self._on_pending = on_pending or (lambda: None)
        self.segment_max_bytes = segment_max_bytes
        self._dirty: set[QueueLog] = set()
        # Bumped on every append; a batch taken at generation G makes every
        # append up to G durable once it has run.
        self.generation = 0
        self.committed_generation = 0

    def open_log(self, vhost: str, queue: str) -> QueueLog:
        return QueueLog(
            self.directory / queue_dir_name(vhost, queue),
            self.segment_max_bytes,
            on_change=self._mark_dirty,
        )

    def _mark_dirty(self, log: QueueLog, appended: bool) -> None:
        if not self._dirty:
            self._on_pending()
        self._dirty.add(log)
        if appended:
            self.generation += 1

    @property
    def has_pending(self) -> bool:
        return bool(self._dirty)

    @property
    def pending_bytes(self) -> int:
        return sum(log.pending_bytes for log in self._dirty)

    def take_batch(self) -> tuple[WriteBatch, int]:
        """Everything pending, and the generation it makes durable."""
        batch = WriteBatch()
        for log in self._dirty:
            batch.merge(log.take_batch())
        self._dirty.clear()
        return batch, self.generation
