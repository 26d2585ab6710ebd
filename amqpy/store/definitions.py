"""Durable definitions (vhosts, users, exchanges, queues, bindings ...) as a
JSON snapshot in RabbitMQ's definitions format, plus an append-only log of
the exchanges, queues and bindings added or removed since that snapshot.

    definitions.json   the snapshot, written whole and atomically; names its log
    definitions.log    header line, then one line per change: crc32 (8 hex), JSON

A durable declare appends one line (a few hundred bytes and one fsync shared
with the other changes of the moment) instead of rewriting every definition:
with thousands of durable objects the rewrite took tens of milliseconds per
declare, on the event loop. The snapshot is rewritten (compacted) when the log
outgrows it, and for the rare changes that are not logged (users, vhosts,
permissions, policies, limits). A snapshot names the log that continues it, so
a log from before the snapshot is never replayed onto it. A torn or corrupt
tail of the log (a crash mid-write) is cut at the first bad line.
RabbitMQ's format is kept so that an operator can read the snapshot, and so
that exports and imports share one shape. See docs/storage-format.md.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from amqpy.store.atomic import write_atomically

DEFINITIONS_FILE = "definitions.json"
DEFINITIONS_LOG_FILE = "definitions.log"
FORMAT_KEY = "amqpy_definitions_format"
FORMAT_VERSION = 1
# Our addition to a queue's entry: the folder of its message log.
STORE_ID_KEY = "amqpy_store_id"
# The snapshot's name for the log that continues it.
LOG_ID_KEY = "amqpy_definitions_log"
LOG_MAGIC = b"amqpy-definitions-log"
LOG_VERSION = 1
LOGGED_KINDS = ("exchanges", "queues", "bindings")


@attrs.frozen
class DefinitionChange:
    """A durable exchange, queue or binding added (or replaced) or removed,
    as its definitions entry. Removing an exchange or queue removes its
    bindings too, as it does in the broker."""

    kind: str  # one of LOGGED_KINDS
    entry: dict[str, Any]
    removed: bool = False


class StoreFormatError(Exception):
    """A store file is of an unknown format or a newer version."""


def empty_definitions() -> dict[str, Any]:
    return {
        FORMAT_KEY: FORMAT_VERSION,
        "vhosts": [],
        "exchanges": [],
        "queues": [],
        "bindings": [],
    }


def json_value(value: Any) -> Any:
    """An AMQP field value as JSON (bytes become text, decimals numbers)."""
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return value


def read_definitions_file(path: Path) -> dict[str, Any]:
    """A definitions file as RabbitMQ exports it (or as amqpy does).

    Raises:
        OSError: it cannot be read.
        ValueError: it is not a JSON object.
    """
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a definitions object")
    return data


def to_rabbitmq_format(definitions: dict[str, Any], product_version: str) -> bytes:
    """Our definitions as a file RabbitMQ's import accepts."""
    document = {key: value for key, value in definitions.items() if key != FORMAT_KEY}
    for kind in ("queues", "exchanges"):
        document[kind] = [
            {key: value for key, value in entry.items() if key != STORE_ID_KEY}
            for entry in document.get(kind, [])
        ]
    document = {
        "product_name": "amqpy",
        "product_version": product_version,
        "users": [],
        "permissions": [],
        "policies": [],
        "parameters": [],
        "global_parameters": [],
        **document,
    }
    return json.dumps(json_value(document), indent=2, sort_keys=True).encode()


def _entry_key(kind: str, entry: dict[str, Any]) -> tuple[Any, ...]:
    vhost = entry.get("vhost", "/")
    if kind != "bindings":
        return (vhost, entry.get("name"))
    return (
        vhost,
        entry.get("source"),
        entry.get("destination"),
        entry.get("destination_type", "queue"),
        entry.get("routing_key", ""),
        json.dumps(json_value(entry.get("arguments") or {}), sort_keys=True),
    )


def apply_changes(
    definitions: dict[str, Any], changes: Iterable[DefinitionChange]
) -> dict[str, Any]:
    """`definitions` with `changes` applied in order (a new dict)."""
    sections = {
        kind: {_entry_key(kind, entry): entry for entry in definitions.get(kind, [])}
        for kind in LOGGED_KINDS
    }
    bindings = sections["bindings"]
    for change in changes:
        section = sections[change.kind]
        key = _entry_key(change.kind, change.entry)
        if not change.removed:
            section[key] = change.entry
            continue
        section.pop(key, None)
        if change.kind == "bindings":
            continue
        # An exchange takes the bindings from and to it along; a queue, those to it.
        vhost, name = key
        for binding_key in [
            binding_key
            for binding_key, binding in bindings.items()
            if binding_key[0] == vhost
            and (
                (change.kind == "exchanges" and binding_key[1] == name)
                or (
                    binding_key[2] == name
                    and binding_key[3] == change.kind.removesuffix("s")
                )
            )
        ]:
            del bindings[binding_key]
    return {
        **definitions,
        **{kind: list(entries.values()) for kind, entries in sections.items()},
    }


def encode_change(change: DefinitionChange) -> bytes:
    document = {"kind": change.kind, "entry": json_value(change.entry)}
    if change.removed:
        document["removed"] = True
    line = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(line), line)


def decode_change(line: bytes) -> DefinitionChange | None:
    """A log line's change, or None when it is torn or corrupt."""
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        document = json.loads(payload)
    except ValueError:
        return None
    if (
        not isinstance(document, dict)
        or document.get("kind") not in LOGGED_KINDS
        or not isinstance(document.get("entry"), dict)
    ):
        return None
    return DefinitionChange(
        document["kind"], document["entry"], bool(document.get("removed", False))
    )


def _log_header(log_id: str) -> bytes:
    return b"%s %d %s\n" % (LOG_MAGIC, LOG_VERSION, log_id.encode())


class DefinitionsStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DEFINITIONS_FILE
        self.log_path = data_dir / DEFINITIONS_LOG_FILE
        self._log_id: str | None = None  # the loaded or saved snapshot's log
        self._log_file: BinaryIO | None = None
        self._log_started = False  # the log file begins with our header
        self.snapshot_bytes = 0
        self.log_bytes = 0  # of valid changes in the log, header excluded
        self.log_changes = 0

    def load(self) -> dict[str, Any]:
        """The saved definitions (the snapshot with its log's changes), or
        empty ones when there is no file yet.

        Raises:
            StoreFormatError: the file is not ours, corrupt, or from a newer
                version of amqpy.
        """
        self.close()
        self.log_bytes = self.log_changes = 0
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._log_id = None
            self.snapshot_bytes = 0
            return empty_definitions()
        self.snapshot_bytes = len(raw)
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StoreFormatError(f"{self.path} is not valid JSON: {error}") from error
        if not isinstance(data, dict) or FORMAT_KEY not in data:
            raise StoreFormatError(f"{self.path} is not an amqpy definitions file")
        version = data[FORMAT_KEY]
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or (version > FORMAT_VERSION)
        ):
            raise StoreFormatError(
                f"{self.path} has format version {version!r}; this amqpy reads "
                f"up to {FORMAT_VERSION}"
            )
        for key in ("vhosts", "exchanges", "queues", "bindings"):
            if not isinstance(data.get(key, []), list):
                raise StoreFormatError(f"{self.path}: '{key}' is not a list")
        log_id = data.pop(LOG_ID_KEY, None)
        self._log_id = log_id if isinstance(log_id, str) else None
        changes = self._read_log()
        return apply_changes(data, changes) if changes else data

    def _read_log(self) -> list[DefinitionChange]:
        """The changes in the snapshot's log, up to a torn or corrupt tail
        (which is cut off, so that appends continue from good data)."""
        self._log_started = False
        if self._log_id is None:
            return []
        try:
            raw = self.log_path.read_bytes()
        except FileNotFoundError:
            return []
        header = _log_header(self._log_id)
        if not raw.startswith(header):
            return []  # a log of an older snapshot: all in the snapshot already
        self._log_started = True
        changes: list[DefinitionChange] = []
        position = len(header)
        while position < len(raw):
            end = raw.find(b"\n", position)
            change = decode_change(raw[position : end + 1]) if end >= 0 else None
            if change is None:
                with open(self.log_path, "r+b") as file:
                    file.truncate(position)
                    os.fsync(file.fileno())
                break
            changes.append(change)
            position = end + 1
        self.log_bytes = position - len(header)
        self.log_changes = len(changes)
        return changes

    def save(self, definitions: dict[str, Any]) -> None:
        """Write a new snapshot atomically and start its (empty) log.

        Raises:
            OSError: the write failed; what was saved before still loads.
        """
        self.close()
        log_id = uuid.uuid4().hex
        document = {**definitions, FORMAT_KEY: FORMAT_VERSION, LOG_ID_KEY: log_id}
        data = json.dumps(json_value(document), indent=1, sort_keys=True).encode()
        # The snapshot first: until the new log replaces the old one, the old
        # log's header names the old snapshot, so it is not replayed.
        write_atomically(self.path, data)
        write_atomically(self.log_path, _log_header(log_id))
        self._log_id = log_id
        self._log_started = True
        self.snapshot_bytes = len(data)
        self.log_bytes = self.log_changes = 0

    @property
    def can_append(self) -> bool:
        """False until a snapshot names a log (a new folder, or one from
        before the log existed): changes need a save() then."""
        return self._log_id is not None

    def append(self, changes: Iterable[DefinitionChange]) -> None:
        """Add changes to the log and fsync it (blocking: run it in a thread).

        Raises:
            OSError: the write failed (the log may hold part of this batch:
                save() a snapshot before appending again), or can_append is
                False.
        """
        data = b"".join(encode_change(change) for change in changes)
        if self._log_id is None:
            raise OSError("no definitions snapshot to log changes against")
        if not self._log_started:
            # The snapshot's log was never created (a crash between the two
            # writes of save()) or is an older snapshot's.
            write_atomically(self.log_path, _log_header(self._log_id))
            self._log_started = True
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (kept open)
        try:
            self._log_file.write(data)
            self._log_file.flush()
            os.fsync(self._log_file.fileno())
        except OSError:
            self._log_id = None  # appending to a log in an unknown state: no
            self.close()
            raise
        self.log_bytes += len(data)
        self.log_changes += data.count(b"\n")

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
