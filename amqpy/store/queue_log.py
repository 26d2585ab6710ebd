"""The message log of one durable queue: append-only segments of persistent
messages, with a separate ack file per segment.

    <queue dir>/msgs.0000000001   header, then records [u32 size][u32 crc32][payload]
    <queue dir>/acks.0000000001   header, then records [u64 seq][u32 crc32(seq)]

A message record's payload is its queue sequence number, exchange, routing
key, raw properties and body. An ack in acks.N settles a message of msgs.N;
when every message of a segment other than the one being written is acked,
both files are deleted, so disk use stays bounded under publish and ack.

The log is written in two halves: `append`/`ack` run on the event loop and only
fill in-memory buffers; `take_batch` hands the buffered bytes to the committer,
which writes and fsyncs them in a thread (`WriteBatch.run`). Recovery reads
both files, cuts a torn or corrupt tail at the first bad record, and returns
the unacked messages in order. See docs/storage-format.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

LOGGER = logging.getLogger(__name__)

SEGMENT_MAGIC = b"AMQPYMSG"
ACKS_MAGIC = b"AMQPYACK"
FORMAT_VERSION = 1
FILE_HEADER = struct.Struct(">8sI")  # magic, version
RECORD_HEAD = struct.Struct(">II")  # payload size, crc32 of payload
ACK_RECORD = struct.Struct(">QI")  # seq, crc32 of the 8 seq bytes
MESSAGE_HEAD = struct.Struct(">QB")  # seq, exchange length
_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

# A record larger than this is corruption, not a message (bodies are bounded
# by limits.max_message_size, far below).
MAX_RECORD_BYTES = 1 << 31


class LogFormatError(Exception):
    """A segment is of an unknown format or a newer version."""


@attrs.frozen
class StoredMessage:
    seq: int
    exchange: str
    routing_key: str
    properties_raw: bytes
    body: bytes


def encode_message(
    seq: int, exchange: str, routing_key: str, properties_raw: bytes, body: bytes
) -> bytes:
    exchange_raw = exchange.encode()
    routing_key_raw = routing_key.encode()
    payload = b"".join(
        (
            MESSAGE_HEAD.pack(seq, len(exchange_raw)),
            exchange_raw,
            _U8.pack(len(routing_key_raw)),
            routing_key_raw,
            _U32.pack(len(properties_raw)),
            properties_raw,
            body,
        )
    )
    return RECORD_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode_message(payload: bytes) -> StoredMessage:
    seq, exchange_size = MESSAGE_HEAD.unpack_from(payload)
    offset = MESSAGE_HEAD.size
    exchange = payload[offset : offset + exchange_size].decode()
    offset += exchange_size
    routing_key_size = payload[offset]
    offset += 1
    routing_key = payload[offset : offset + routing_key_size].decode()
    offset += routing_key_size
    (properties_size,) = _U32.unpack_from(payload, offset)
    offset += 4
    properties_raw = payload[offset : offset + properties_size]
    offset += properties_size
    return StoredMessage(seq, exchange, routing_key, properties_raw, payload[offset:])


def encode_ack(seq: int) -> bytes:
    raw = _U64.pack(seq)
    return ACK_RECORD.pack(seq, zlib.crc32(raw))


def _segment_name(kind: str, segment_id: int) -> str:
    return f"{kind}.{segment_id:010d}"


@attrs.define
class WriteBatch:
    """File operations for the committer thread: appends, then deletes."""

    appends: dict[Path, list[bytes]] = attrs.Factory(dict)
    deletes: list[Path] = attrs.Factory(list)
    remove_dirs: list[Path] = attrs.Factory(list)
    size: int = 0

    def add(self, path: Path, data: bytes) -> None:
        self.appends.setdefault(path, []).append(data)
        self.size += len(data)

    def merge(self, other: WriteBatch) -> None:
        for path, chunks in other.appends.items():
            self.appends.setdefault(path, []).extend(chunks)
        self.deletes.extend(other.deletes)
        self.remove_dirs.extend(other.remove_dirs)
        self.size += other.size

    def __bool__(self) -> bool:
        return bool(self.appends or self.deletes or self.remove_dirs)

    def run(self) -> None:
        """Remove folders, write, fsync, delete. Runs in the committer's thread.

        Folders go first: writes to a removed folder's path come from a queue
        declared again after the delete, and must land in a fresh folder.

        Raises:
            OSError: the caller must stop the broker (nothing may be confirmed).
        """
        touched: set[Path] = set()
        for directory in self.remove_dirs:
            try:
                shutil.rmtree(directory)
            except FileNotFoundError:
                pass  # never written, or already gone
            touched.add(directory.parent)
        for path, chunks in self.appends.items():
            if not path.exists():
                touched.add(path.parent)
                # A new folder's own entry must reach the disk as well.
                created = path.parent
                while not created.exists():
                    touched.add(created.parent)
                    created = created.parent
                path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as file:
                if file.tell() == 0:
                    magic = (
                        SEGMENT_MAGIC if path.name.startswith("msgs.") else ACKS_MAGIC
                    )
                    file.write(FILE_HEADER.pack(magic, FORMAT_VERSION))
                file.write(b"".join(chunks))
                file.flush()
                os.fsync(file.fileno())
        for path in self.deletes:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            touched.add(path.parent)
        for directory in touched:
            if directory.exists():
                _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class QueueLog:
    """Persistent messages of one durable queue."""

    def __init__(
        self,
        directory: Path,
        segment_max_bytes: int,
        on_change: Callable[[QueueLog, bool], None] | None = None,
    ) -> None:
        self.directory = directory
        # Told of every append (True) or other pending write (False).
        self._on_change = on_change or (lambda log, appended: None)
        self.segment_max_bytes = segment_max_bytes
        self._segment_id = 1
        self._segment_bytes = 0
        self._segment_of: dict[int, int] = {}  # seq -> segment id, unacked only
        self._live: dict[int, int] = {}  # segment id -> unacked messages in it
        self._batch = WriteBatch()
        self.destroyed = False
        # Paths of the segments in use, made once: a Path per record (and
        # its hash in the batch's dict) cost more than the record's encoding.
        self._paths: dict[tuple[str, int], Path] = {}

    @property
    def pending_bytes(self) -> int:
        return self._batch.size

    # -- event loop side -------------------------------------------------------

    def append(
        self,
        seq: int,
        exchange: str,
        routing_key: str,
        properties_raw: bytes,
        body: bytes,
    ) -> None:
        record = encode_message(seq, exchange, routing_key, properties_raw, body)
        if (
            self._segment_bytes
            and self._segment_bytes + len(record) > self.segment_max_bytes
        ):
            self._roll()
        self._batch.add(self._path("msgs", self._segment_id), record)
        self._segment_bytes += len(record)
        self._segment_of[seq] = self._segment_id
        self._live[self._segment_id] = self._live.get(self._segment_id, 0) + 1
        self._on_change(self, True)

    def ack(self, seq: int) -> None:
        segment_id = self._segment_of.pop(seq, None)
        if segment_id is None:
            return
        self._on_change(self, False)
        left = self._live[segment_id] - 1
        if left or segment_id == self._segment_id:
            self._live[segment_id] = left
            self._batch.add(self._path("acks", segment_id), encode_ack(seq))
            return
        # Every message of a finished segment is settled: drop both files.
        del self._live[segment_id]
        self._delete_segment(segment_id)

    def _path(self, kind: str, segment_id: int) -> Path:
        path = self._paths.get((kind, segment_id))
        if path is None:
            path = self._paths[kind, segment_id] = self.directory / _segment_name(
                kind, segment_id
            )
        return path

    def _delete_segment(self, segment_id: int) -> None:
        for kind in ("msgs", "acks"):
            path = self._paths.pop((kind, segment_id), None) or (
                self.directory / _segment_name(kind, segment_id)
            )
            self._batch.appends.pop(path, None)
            self._batch.deletes.append(path)

    def _roll(self) -> None:
        finished = self._segment_id
        self._segment_id += 1
        self._segment_bytes = 0
        if not self._live.get(finished):
            self._live.pop(finished, None)
            self._delete_segment(finished)

    def destroy(self) -> None:
        """The queue was deleted: its whole folder goes."""
        self.destroyed = True
        self._batch = WriteBatch(remove_dirs=[self.directory])
        self._on_change(self, False)
        self._segment_of.clear()
        self._live.clear()
        self._paths.clear()

    def take_batch(self) -> WriteBatch:
        batch, self._batch = self._batch, WriteBatch()
        return batch

    # -- start-up ----------------------------------------------------------------

    def recover(self) -> list[StoredMessage]:
        """Read the log (before the event loop serves anybody).

        Cuts torn or corrupt tails (logged), deletes fully acked segments, and
        returns the unacked messages in sequence order.

        Raises:
            LogFormatError: a file of an unknown format or a newer version.
            OSError: the files cannot be read or repaired.
        """
        if not self.directory.exists():
            return []
        self.check_format()
        segment_ids = sorted(_segment_ids(self.directory, "msgs"))
        # acks.N outlives msgs.N when a crash falls between their unlinks; it
        # would settle the messages of a later segment N.
        for segment_id in _segment_ids(self.directory, "acks") - set(segment_ids):
            path = self.directory / _segment_name("acks", segment_id)
            LOGGER.warning("%s: acks of a deleted segment; deleting them", path)
            path.unlink()
        recovered: list[StoredMessage] = []
        for segment_id in segment_ids:
            msgs_path = self.directory / _segment_name("msgs", segment_id)
            acks_path = self.directory / _segment_name("acks", segment_id)
            acked = set(_read_acks(acks_path))
            messages = [
                message
                for message in _read_messages(msgs_path)
                if message.seq not in acked
            ]
            if not messages:
                msgs_path.unlink()
                acks_path.unlink(missing_ok=True)
                continue
            for message in messages:
                self._segment_of[message.seq] = segment_id
            self._live[segment_id] = len(messages)
            recovered.extend(messages)
        # New messages go to a fresh segment: a recovered tail may be torn.
        self._segment_id = (segment_ids[-1] + 1) if segment_ids else 1
        recovered.sort(key=lambda message: message.seq)
        return recovered

    def check_format(self) -> None:
        """Refuse an unknown or newer file before recovery changes anything.

        Raises:
            LogFormatError: a file of an unknown format or a newer version.
            OSError: a file cannot be read.
        """
        if not self.directory.exists():
            return
        for kind, magic in (("msgs", SEGMENT_MAGIC), ("acks", ACKS_MAGIC)):
            for segment_id in _segment_ids(self.directory, kind):
                path = self.directory / _segment_name(kind, segment_id)
                with open(path, "rb") as file:
                    _check_header(path, file.read(FILE_HEADER.size), magic)


def _segment_ids(directory: Path, kind: str) -> set[int]:
    return {
        int(path.name.split(".")[1])
        for path in directory.glob(f"{kind}.*")
        if path.name.split(".")[1].isdigit()
    }


def _check_header(path: Path, data: bytes, magic: bytes) -> None:
    if len(data) < FILE_HEADER.size:
        return
    found_magic, version = FILE_HEADER.unpack_from(data)
    if found_magic != magic:
        raise LogFormatError(f"{path} is not an amqpy log file")
    if version > FORMAT_VERSION:
        raise LogFormatError(
            f"{path} has format version {version}; this amqpy reads up to "
            f"{FORMAT_VERSION}"
        )


def _truncate(path: Path, offset: int, reason: str) -> None:
    LOGGER.warning("%s: %s at byte %d; cutting the tail off", path, reason, offset)
    with open(path, "r+b") as file:
        file.truncate(max(offset, 0))
        file.flush()
        os.fsync(file.fileno())


def _read_messages(path: Path) -> Iterator[StoredMessage]:
    data = path.read_bytes()
    _check_header(path, data, SEGMENT_MAGIC)
    if len(data) < FILE_HEADER.size:
        _truncate(path, 0, "torn file header")
        return
    offset = FILE_HEADER.size
    while offset < len(data):
        if offset + RECORD_HEAD.size > len(data):
            _truncate(path, offset, "torn record header")
            return
        size, crc = RECORD_HEAD.unpack_from(data, offset)
        start = offset + RECORD_HEAD.size
        payload = data[start : start + size]
        if size > MAX_RECORD_BYTES or len(payload) < size or zlib.crc32(payload) != crc:
            _truncate(path, offset, "torn or corrupt record")
            return
        try:
            message = decode_message(payload)
        except (struct.error, UnicodeDecodeError, IndexError):
            _truncate(path, offset, "undecodable record")
            return
        yield message
        offset = start + size


def _read_acks(path: Path) -> Iterator[int]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    _check_header(path, data, ACKS_MAGIC)
    if len(data) < FILE_HEADER.size:
        _truncate(path, 0, "torn file header")
        return
    offset = FILE_HEADER.size
    while offset + ACK_RECORD.size <= len(data):
        seq, crc = ACK_RECORD.unpack_from(data, offset)
        if zlib.crc32(data[offset : offset + 8]) != crc:
            _truncate(path, offset, "corrupt ack record")
            return
        yield seq
        offset += ACK_RECORD.size
    if offset != len(data):
        _truncate(path, offset, "torn ack record")
