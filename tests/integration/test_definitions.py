"""Definitions in RabbitMQ's JSON format: a file exported by RabbitMQ 3.10
(tests/data/rabbitmq-3.10-definitions.json, made with `rabbitmqctl
export_definitions`) imports into amqpy, works, and exports back out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pika
import pytest
from helpers.server_process import EXIT_TIMEOUT_S, REPO, Server

RABBITMQ_EXPORT = REPO / "tests" / "data" / "rabbitmq-3.10-definitions.json"


def amqpy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amqpy", *args],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        cwd=REPO,
        check=False,
    )


def normalized(definitions: dict[str, Any]) -> dict[str, list[str]]:
    def canon(entries: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> list[str]:
        return sorted(
            json.dumps({k: v for k, v in e.items() if k not in drop}, sort_keys=True)
            for e in entries
        )

    return {
        key: canon(definitions.get(key, []))
        for key in (
            "vhosts",
            "users",
            "permissions",
            "policies",
            "exchanges",
            "queues",
            "bindings",
        )
    }


def check_imported_broker_works(port: int) -> None:
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", port, socket_timeout=5)
    )
    channel = connection.channel()
    channel.confirm_delivery()
    # events -> (e2e) orders -> orders.created and audit; the queue keeps its
    # arguments (a redeclare without them is refused).
    channel.basic_publish("events", "order.eu.created", b"o1", mandatory=True)
    channel.basic_publish("events", "nowhere", b"ae1", mandatory=True)
    assert channel.basic_get("orders.created", auto_ack=True)[2] == b"o1"
    assert channel.basic_get("audit", auto_ack=True)[2] == b"o1"
    assert channel.basic_get("unrouted", auto_ack=True)[2] == b"ae1"
    declared = channel.queue_declare(
        "orders.created",
        durable=True,
        arguments={
            "x-dead-letter-exchange": "ae",
            "x-max-length": 1000,
            "x-message-ttl": 60000,
        },
    )
    assert declared.method.message_count == 0
    connection.close()
    # Users, password hashes and permissions come from RabbitMQ's export:
    # guest has no permissions on staging; alice ("s3cret") has.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError, match="530"):
        pika.BlockingConnection(
            pika.ConnectionParameters(
                "127.0.0.1", port, virtual_host="staging", socket_timeout=5
            )
        )
    staging = pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            port,
            virtual_host="staging",
            credentials=pika.PlainCredentials("alice", "s3cret"),
            socket_timeout=5,
        )
    )
    staging.close()


def test_rabbitmq_export_imports_offline_and_exports_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    imported = amqpy(
        "definitions", "import", str(RABBITMQ_EXPORT), "--data-dir", str(data_dir)
    )
    assert imported.returncode == 0, imported.stderr

    server = Server("--port", "0", "--data-dir", str(data_dir))
    try:
        server.wait_listening()
        check_imported_broker_works(server.port)
        # Exporting works while the broker runs (the file is only read).
        out = tmp_path / "out.json"
        exported = amqpy("definitions", "export", str(out), "--data-dir", str(data_dir))
        assert exported.returncode == 0, exported.stderr
    finally:
        server.kill()
    original = json.loads(RABBITMQ_EXPORT.read_text())
    # RabbitMQ leaves internal exchanges (here "headers-x") out of its export
    # but keeps their bindings; a binding whose source is missing cannot be
    # imported. amqpy writes "internal" for every exchange.
    sources = {exchange["name"] for exchange in original["exchanges"]}
    original["bindings"] = [
        binding for binding in original["bindings"] if binding["source"] in sources
    ]
    assert len(original["bindings"]) == 4
    exported = json.loads(out.read_text())
    for exchange in exported["exchanges"]:
        assert exchange.pop("internal") is False
    assert normalized(exported) == normalized(original)


def test_load_definitions_at_start(tmp_path: Path) -> None:
    server = Server(
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--load-definitions",
        str(RABBITMQ_EXPORT),
    )
    try:
        server.wait_listening()
        check_imported_broker_works(server.port)
    finally:
        server.kill()


def test_import_refuses_a_running_broker_and_bad_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server("--port", "0", "--data-dir", str(data_dir))
    try:
        server.wait_listening()
        refused = amqpy(
            "definitions", "import", str(RABBITMQ_EXPORT), "--data-dir", str(data_dir)
        )
        assert refused.returncode != 0
        assert "in use by another amqpy process" in refused.stderr
    finally:
        server.kill()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    refused = amqpy("definitions", "import", str(bad), "--data-dir", str(data_dir))
    assert refused.returncode != 0
    assert "is not valid JSON" in refused.stderr
