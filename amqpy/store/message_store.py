"""All message logs of a broker, and the group commit that makes them durable.

Queues append and ack on the event loop (memory only); the committer takes
one batch for every log with pending writes and runs it in a thread; when it
returns, everything appended up to the batch's generation is on disk and may
be confirmed.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from amqpy.store.definitions import STORE_ID_KEY, DefinitionsStore
from amqpy.store.queue_log import QueueLog, WriteBatch, _fsync_dir

LOGGER = logging.getLogger(__name__)

MESSAGES_DIR = "msgs"


def new_store_id() -> str:
    """A fresh folder name for one incarnation of a durable queue: a queue
    deleted and declared again never shares files with its predecessor."""
    return uuid.uuid4().hex


def find_queue_dir(data_dir: Path, vhost: str, queue: str) -> Path:
    """The message folder of a durable queue, from the saved definitions.

    Raises:
        KeyError: no such durable queue in the definitions.
    """
    definitions = DefinitionsStore(data_dir).load()
    for entry in definitions.get("queues", []):
        if entry.get("vhost") == vhost and entry.get("name") == queue:
            return data_dir / MESSAGES_DIR / str(entry[STORE_ID_KEY])
    raise KeyError(f"no durable queue '{queue}' in vhost '{vhost}'")


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
        # The logs of the queues recovered at start, until remove_unused().
        self._recovering: list[QueueLog] | None = []

    def open_log(self, store_id: str) -> QueueLog:
        log = QueueLog(
            self.directory / store_id,
            self.segment_max_bytes,
            on_change=self._mark_dirty,
        )
        if self._recovering is not None:
            self._recovering.append(log)
        return log

    def check_formats(self) -> None:
        """At start, before any log's recovery repairs anything: refuse files
        of an unknown format or a newer version in any of them.

        Raises:
            LogFormatError: such a file.
            OSError: a file cannot be read.
        """
        for log in self._recovering or ():
            log.check_format()

    def remove_unused(self) -> None:
        """At start, once the durable queues are recovered: remove the folders
        of queues that no longer exist (a crash came between a queue's delete
        and the removal of its folder), so that a queue declared again under
        the same name starts empty.

        Raises:
            OSError: a folder cannot be removed.
        """
        keep = {log.directory for log in self._recovering or ()}
        self._recovering = None
        if not self.directory.exists():
            return
        unused = [
            path
            for path in self.directory.iterdir()
            if path.is_dir() and path not in keep
        ]
        for path in unused:
            LOGGER.warning("%s: messages of a deleted queue; removing them", path)
            shutil.rmtree(path)
        if unused:
            _fsync_dir(self.directory)

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
