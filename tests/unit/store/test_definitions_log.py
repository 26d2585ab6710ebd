"""definitions.log: durable declares and deletes appended after a snapshot
load back in order, a torn or corrupt tail is cut, and a log that belongs to
an older snapshot is never replayed onto a newer one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from amqpy.store import definitions as definitions_module
from amqpy.store.definitions import (
    DEFINITIONS_LOG_FILE,
    DefinitionChange,
    DefinitionsStore,
    empty_definitions,
)


def queue(name: str, vhost: str = "/", **arguments: Any) -> DefinitionChange:
    return DefinitionChange(
        "queues",
        {
            "name": name,
            "vhost": vhost,
            "type": "classic",
            "durable": True,
            "auto_delete": False,
            "arguments": arguments,
        },
    )


def exchange(name: str, type_name: str = "topic") -> DefinitionChange:
    return DefinitionChange(
        "exchanges",
        {
            "name": name,
            "vhost": "/",
            "type": type_name,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        },
    )


def binding(
    source: str, destination: str, key: str = "", destination_type: str = "queue"
) -> DefinitionChange:
    return DefinitionChange(
        "bindings",
        {
            "source": source,
            "vhost": "/",
            "destination": destination,
            "destination_type": destination_type,
            "routing_key": key,
            "arguments": {"x-match": "all"} if key == "h" else {},
        },
    )


def removed(change: DefinitionChange) -> DefinitionChange:
    return DefinitionChange(change.kind, change.entry, removed=True)


def names(definitions: dict[str, Any], kind: str) -> list[str]:
    return [entry["name"] for entry in definitions[kind]]


def routes(definitions: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (entry["source"], entry["destination"], entry["routing_key"])
        for entry in definitions["bindings"]
    ]


@pytest.fixture
def store(tmp_path: Path) -> DefinitionsStore:
    store = DefinitionsStore(tmp_path)
    store.load()
    store.save({**empty_definitions(), "users": []})
    return store


def test_appended_changes_load_back_in_order(
    store: DefinitionsStore, tmp_path: Path
) -> None:
    store.append([exchange("events"), queue("orders", **{"x-max-length": 5})])
    store.append([binding("events", "orders", "a.#"), binding("events", "orders", "h")])
    store.append([removed(binding("events", "orders", "a.#")), queue("audit")])
    store.close()

    loaded = DefinitionsStore(tmp_path).load()
    assert names(loaded, "exchanges") == ["events"]
    assert names(loaded, "queues") == ["orders", "audit"]
    assert loaded["queues"][0]["arguments"] == {"x-max-length": 5}
    assert routes(loaded) == [("events", "orders", "h")]
    assert loaded["users"] == []  # what only the snapshot holds is kept


def test_a_redeclare_replaces_the_entry(
    store: DefinitionsStore, tmp_path: Path
) -> None:
    store.append([queue("orders", **{"x-max-length": 5})])
    store.append([removed(queue("orders")), queue("orders", **{"x-max-length": 9})])
    loaded = DefinitionsStore(tmp_path).load()
    assert [entry["arguments"] for entry in loaded["queues"]] == [{"x-max-length": 9}]


def test_a_deleted_queue_takes_its_bindings_along(
    store: DefinitionsStore, tmp_path: Path
) -> None:
    store.append([exchange("events"), queue("orders"), queue("audit")])
    store.append([binding("events", "orders", "k"), binding("events", "audit", "k")])
    # The broker logs only the queue's removal; its bindings go with it, and
    # a queue declared again under the name starts without them.
    store.append([removed(queue("orders")), queue("orders")])
    loaded = DefinitionsStore(tmp_path).load()
    assert names(loaded, "queues") == ["audit", "orders"]
    assert routes(loaded) == [("events", "audit", "k")]


def test_a_deleted_exchange_takes_bindings_from_and_to_it(
    store: DefinitionsStore, tmp_path: Path
) -> None:
    store.append([exchange("a"), exchange("b"), exchange("c"), queue("q")])
    store.append(
        [
            binding("a", "b", "x", "exchange"),
            binding("b", "q", "y"),
            binding("c", "q", "z"),
            binding("b", "b", "self", "exchange"),
        ]
    )
    store.append([removed(exchange("b"))])
    loaded = DefinitionsStore(tmp_path).load()
    assert names(loaded, "exchanges") == ["a", "c"]
    assert routes(loaded) == [("c", "q", "z")]


def test_a_queue_and_an_exchange_of_one_name_are_told_apart(
    store: DefinitionsStore, tmp_path: Path
) -> None:
    store.append([exchange("x"), exchange("same"), queue("same")])
    store.append(
        [binding("x", "same", "to-queue"), binding("x", "same", "e", "exchange")]
    )
    store.append([removed(queue("same"))])
    loaded = DefinitionsStore(tmp_path).load()
    assert routes(loaded) == [("x", "same", "e")]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda line: line[: len(line) // 2], id="torn"),
        pytest.param(lambda line: line.replace(b"audit", b"audiT"), id="crc-mismatch"),
        pytest.param(lambda line: b"zz" + line[2:], id="not-hex"),
    ],
)
def test_a_damaged_tail_is_cut_and_appends_go_on(
    store: DefinitionsStore, tmp_path: Path, damage: Any
) -> None:
    store.append([queue("orders")])
    store.append([queue("audit")])
    store.close()
    log = tmp_path / DEFINITIONS_LOG_FILE
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]) + damage(lines[-1]))

    reloaded = DefinitionsStore(tmp_path)
    assert names(reloaded.load(), "queues") == ["orders"]
    assert log.read_bytes() == b"".join(lines[:-1])  # the bad tail is gone
    reloaded.append([queue("later")])
    assert names(DefinitionsStore(tmp_path).load(), "queues") == ["orders", "later"]


def test_a_log_of_an_older_snapshot_is_not_replayed(
    store: DefinitionsStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append([queue("orders"), queue("gone")])
    store.append([removed(queue("gone"))])
    # A crash in a new snapshot's save after the snapshot, before its log:
    # the old log (which says "gone" was declared) must not be replayed on it.
    snapshot = DefinitionsStore(tmp_path).load()
    snapshot["queues"].append(queue("gone").entry)  # declared again since
    writes = []
    real_write = definitions_module.write_atomically

    def crash_on_second_write(path: Path, data: bytes) -> None:
        writes.append(path.name)
        if len(writes) == 2:
            raise OSError("crash")
        real_write(path, data)

    monkeypatch.setattr(definitions_module, "write_atomically", crash_on_second_write)
    with pytest.raises(OSError):
        store.save(snapshot)
    monkeypatch.undo()
    assert writes == ["definitions.json", DEFINITIONS_LOG_FILE]

    after_crash = DefinitionsStore(tmp_path)
    assert names(after_crash.load(), "queues") == ["orders", "gone"]
    # Appending starts the snapshot's own log.
    after_crash.append([removed(queue("orders"))])
    assert names(DefinitionsStore(tmp_path).load(), "queues") == ["gone"]


def test_appending_needs_a_snapshot_first(tmp_path: Path) -> None:
    store = DefinitionsStore(tmp_path)
    store.load()
    assert not store.can_append
    with pytest.raises(OSError):
        store.append([queue("orders")])
    store.save(empty_definitions())
    assert store.can_append


def test_sizes_are_tracked_for_compaction(
    store: DefinitionsStore, tmp_path: Path
) -> None:
    assert store.log_bytes == 0 and store.snapshot_bytes > 0
    store.append([queue("orders"), queue("audit")])
    assert store.log_changes == 2
    appended = store.log_bytes
    assert appended > 0
    reloaded = DefinitionsStore(tmp_path)
    reloaded.load()
    assert (reloaded.log_bytes, reloaded.log_changes) == (appended, 2)
    reloaded.save(reloaded.load())
    assert (reloaded.log_bytes, reloaded.log_changes) == (0, 0)
