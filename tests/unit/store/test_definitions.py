"""DefinitionsStore: durable definitions round-trip through definitions.json,
are replaced atomically (a crash leaves the old file or the new one, never a
mix), and a file that is not ours, corrupt, or newer stops the broker."""

from __future__ import annotations

import datetime
import decimal
import json
import os
from pathlib import Path
from typing import Any

import pytest

from amqpy.store.definitions import (
    DEFINITIONS_FILE,
    DEFINITIONS_LOG_FILE,
    FORMAT_KEY,
    FORMAT_VERSION,
    DefinitionsStore,
    StoreFormatError,
    empty_definitions,
)


def definitions(queue: str = "orders") -> dict[str, Any]:
    return {
        "vhosts": [{"name": "/"}, {"name": "стенд ✓"}],
        "exchanges": [
            {
                "name": "events.🐇",
                "vhost": "стенд ✓",
                "type": "topic",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {"alternate-exchange": "ae"},
            }
        ],
        "queues": [
            {
                "name": queue,
                "vhost": "/",
                "durable": True,
                "auto_delete": False,
                "arguments": {"x-max-length": 10, "x-queue-mode": "lazy"},
            }
        ],
        "bindings": [
            {
                "source": "events.🐇",
                "vhost": "стенд ✓",
                "destination": queue,
                "destination_type": "queue",
                "routing_key": "a.#",
                "arguments": {},
            }
        ],
    }


def test_no_file_yet_means_empty_definitions(tmp_path: Path) -> None:
    store = DefinitionsStore(tmp_path)
    assert store.load() == empty_definitions()
    assert not (tmp_path / DEFINITIONS_FILE).exists()


def test_saved_definitions_load_back(tmp_path: Path) -> None:
    store = DefinitionsStore(tmp_path)
    store.save(definitions())
    assert DefinitionsStore(tmp_path).load() == {
        **definitions(),
        FORMAT_KEY: FORMAT_VERSION,
    }
    # An operator can read it: RabbitMQ's shape, real UTF-8 names.
    text = (tmp_path / DEFINITIONS_FILE).read_text(encoding="utf-8")
    assert json.loads(text)["queues"][0]["name"] == "orders"


def test_amqp_field_values_are_stored_as_json(tmp_path: Path) -> None:
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    arguments = {
        "bytes": b"raw \xff",
        "decimal": decimal.Decimal("1.5"),
        "timestamp": when,
        "nested": {"list": [1, b"x", (2, 3)], "flag": True, "none": None},
    }
    document = definitions()
    document["queues"][0]["arguments"] = arguments
    store = DefinitionsStore(tmp_path)
    store.save(document)
    assert store.load()["queues"][0]["arguments"] == {
        "bytes": "raw \ufffd",
        "decimal": 1.5,
        "timestamp": int(when.timestamp()),
        "nested": {"list": [1, "x", [2, 3]], "flag": True, "none": None},
    }


def test_a_save_replaces_the_whole_file(tmp_path: Path) -> None:
    store = DefinitionsStore(tmp_path)
    store.save(definitions("first"))
    store.save(definitions("second"))
    loaded = store.load()
    assert [queue["name"] for queue in loaded["queues"]] == ["second"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        DEFINITIONS_FILE,
        DEFINITIONS_LOG_FILE,
    ]
    assert (tmp_path / DEFINITIONS_LOG_FILE).read_bytes().count(b"\n") == 1  # header


def test_a_temp_file_left_by_a_crash_before_the_rename_is_ignored(
    tmp_path: Path,
) -> None:
    store = DefinitionsStore(tmp_path)
    store.save(definitions("old"))
    # What a crash between the write of the temp file and the rename leaves
    # (half-written, even). The reader must see the old file, whole.
    leftover = tmp_path / f".{DEFINITIONS_FILE}.tmp"
    whole = json.dumps({**definitions("new"), FORMAT_KEY: FORMAT_VERSION}).encode()
    leftover.write_bytes(whole[: len(whole) // 2])

    assert [queue["name"] for queue in store.load()["queues"]] == ["old"]
    # The next save goes through, and takes the temp file's place.
    store.save(definitions("next"))
    assert [queue["name"] for queue in store.load()["queues"]] == ["next"]
    assert not leftover.exists()


def test_a_save_that_fails_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DefinitionsStore(tmp_path)
    store.save(definitions("old"))

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        store.save(definitions("new"))
    monkeypatch.undo()
    assert [queue["name"] for queue in store.load()["queues"]] == ["old"]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00garbage", id="binary"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"[]", id="a-list"),
        pytest.param(b'"text"', id="a-string"),
        pytest.param(json.dumps(definitions()).encode(), id="no-format-marker"),
        pytest.param(
            json.dumps({"rabbit_version": "3.10.0", **definitions()}).encode(),
            id="rabbitmq-export",
        ),
        pytest.param(
            json.dumps({**definitions(), FORMAT_KEY: FORMAT_VERSION + 1}).encode(),
            id="newer-version",
        ),
        pytest.param(
            json.dumps({**definitions(), FORMAT_KEY: "1"}).encode(),
            id="version-not-a-number",
        ),
        pytest.param(
            json.dumps({FORMAT_KEY: FORMAT_VERSION, "queues": {"q": {}}}).encode(),
            id="queues-not-a-list",
        ),
    ],
)
def test_a_file_that_is_not_ours_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / DEFINITIONS_FILE
    path.write_bytes(content)
    with pytest.raises(StoreFormatError, match=DEFINITIONS_FILE):
        DefinitionsStore(tmp_path).load()
    assert path.read_bytes() == content  # left for the operator to look at


def test_a_truncated_file_is_refused_at_every_length(tmp_path: Path) -> None:
    store = DefinitionsStore(tmp_path)
    store.save(definitions())
    whole = store.path.read_bytes()
    for length in range(len(whole)):
        store.path.write_bytes(whole[:length])
        with pytest.raises(StoreFormatError):
            store.load()
