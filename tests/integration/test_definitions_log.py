"""Durable declares and deletes go to definitions.log (one appended line
each, not a rewrite of every definition), survive kill -9 in order, and the
log is folded into definitions.json when it outgrows it and at each start."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from helpers.server_process import Server

QUEUES = [f"orders.{number}" for number in range(30)]
DELETED = QUEUES[::3]


def connect(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", port, socket_timeout=5)
    )


def snapshot_queue_names(data_dir: Path) -> set[str]:
    document = json.loads((data_dir / "definitions.json").read_bytes())
    return {entry["name"] for entry in document["queues"]}


def declare_and_delete(port: int) -> None:
    connection = connect(port)
    channel = connection.channel()
    channel.exchange_declare("events", "topic", durable=True)
    for name in QUEUES:
        channel.queue_declare(name, durable=True, arguments={"x-max-length": 100})
        channel.queue_bind(name, "events", f"{name}.#")
    for name in DELETED:
        channel.queue_delete(name)
    # Declared again: back, but without its old binding.
    channel.queue_declare(DELETED[0], durable=True)
    channel.queue_unbind(QUEUES[1], "events", f"{QUEUES[1]}.#")
    connection.close()


def routed_queues(port: int) -> dict[str, int]:
    """How many messages each queue got from one publish per queue's key."""
    connection = connect(port)
    channel = connection.channel()
    channel.confirm_delivery()
    for name in QUEUES:
        channel.basic_publish("events", f"{name}.x", b"m")
    counts = {}
    for name in QUEUES:
        try:
            counts[name] = channel.queue_declare(
                name, passive=True
            ).method.message_count
        except pika.exceptions.ChannelClosedByBroker as error:
            assert error.reply_code == 404
            channel = connection.channel()
    connection.close()
    return counts


def expected_counts() -> dict[str, int]:
    counts = {name: 1 for name in QUEUES if name not in DELETED}
    counts[DELETED[0]] = 0
    counts[QUEUES[1]] = 0
    return counts


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*extra: str) -> Server:
        server = Server("--port", "0", "--data-dir", str(tmp_path / "data"), *extra)
        servers.append(server)
        server.wait_listening()
        return server

    yield start
    for server in servers:
        server.kill()


def test_declares_are_appended_and_survive_kill_9(
    run: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = run()
    declare_and_delete(server.port)
    # The snapshot written at start was not rewritten: the changes are in
    # the log, one line each (every declare-ok waited for its line's fsync).
    assert not snapshot_queue_names(data_dir) & set(QUEUES)
    log_lines = (data_dir / "definitions.log").read_bytes().splitlines()
    assert len(log_lines) >= 1 + 1 + 2 * len(QUEUES) + len(DELETED)
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit()

    restarted = run()
    restarted.wait_for_line(r"recovered 1 exchanges, 21 queues, 19 bindings")
    assert routed_queues(restarted.port) == expected_counts()
    # The start folded the log into a new snapshot.
    assert snapshot_queue_names(data_dir) == set(expected_counts())
    assert (data_dir / "definitions.log").read_bytes().count(b"\n") == 1


def test_a_log_that_outgrows_the_snapshot_is_folded_into_it(
    run: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "amqpy.toml"
    config.write_text("[store]\ndefinitions_log_min_bytes = 0\n")
    server = run("--config", str(config))
    declare_and_delete(server.port)
    snapshot_size = (data_dir / "definitions.json").stat().st_size
    log_size = (data_dir / "definitions.log").stat().st_size
    # Rewritten along the way (it holds queues declared after the start) ...
    assert snapshot_queue_names(data_dir) & set(QUEUES)
    # ... so the log stays within about one snapshot (plus the last batch).
    assert log_size < 2 * snapshot_size
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit()
    restarted = run("--config", str(config))
    assert routed_queues(restarted.port) == expected_counts()


def test_a_torn_log_tail_loses_only_the_torn_change(
    run: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = run()
    connection = connect(server.port)
    channel = connection.channel()
    channel.queue_declare("kept", durable=True)
    channel.queue_declare("torn", durable=True)
    connection.close()
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit()
    log = data_dir / "definitions.log"
    data = log.read_bytes()
    log.write_bytes(data[:-10])  # as if the machine died mid-append

    restarted = run()
    connection = connect(restarted.port)
    channel = connection.channel()
    channel.queue_declare("kept", passive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        connection.channel().queue_declare("torn", passive=True)
    assert error.value.reply_code == 404
    connection.close()
