"""Fixtures: brokers on free ports, each with its own data folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from helpers.management import Api
from helpers.queue_features import unique_names
from helpers.server_process import Server

from amqpy.server.embedded import EmbeddedBroker


@pytest.fixture
def make_broker() -> Iterator[Callable[..., EmbeddedBroker]]:
    """Start brokers with config overrides: make_broker(limits={...})."""
    started: list[EmbeddedBroker] = []

    def make(**overrides: Any) -> EmbeddedBroker:
        broker = EmbeddedBroker(**overrides).start()
        started.append(broker)
        return broker

    yield make
    for broker in reversed(started):
        broker.stop()


@pytest.fixture
def broker(make_broker: Callable[..., EmbeddedBroker]) -> EmbeddedBroker:
    return make_broker()


@pytest.fixture
def connect(broker: EmbeddedBroker) -> Iterator[Callable[..., pika.BlockingConnection]]:
    """Open pika BlockingConnections to `broker`; closed after the test."""
    connections: list[pika.BlockingConnection] = []

    def open_connection(**params: Any) -> pika.BlockingConnection:
        parameters = pika.ConnectionParameters(
            "127.0.0.1",
            broker.port,
            blocked_connection_timeout=10,
            socket_timeout=10,
            **params,
        )
        connection = pika.BlockingConnection(parameters)
        connections.append(connection)
        return connection

    yield open_connection
    for connection in connections:
        if connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - a test may have broken it on purpose
                pass


@pytest.fixture
def channel(connect: Callable[..., pika.BlockingConnection]) -> Any:
    return connect().channel()


@pytest.fixture
def managed_broker(
    make_broker: Callable[..., EmbeddedBroker],
) -> EmbeddedBroker:
    """A broker with its management API on a free port."""
    return make_broker(management={"enabled": True})


@pytest.fixture
def api(managed_broker: EmbeddedBroker) -> Iterator[Api]:
    """The management API of `managed_broker`, as guest (administrator)."""
    client = Api(managed_broker.management_url)
    yield client
    client.close()


@pytest.fixture
def names() -> Callable[[str], str]:
    """Unique queue and exchange names for one test."""
    return unique_names()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `python -m amqpy server` subprocesses on a free port, all on the
    test's data folder unless told another; killed after the test."""
    servers: list[Server] = []

    def start_server(data_dir: Path | None = None) -> Server:
        server = Server("--port", "0", "--data-dir", str(data_dir or tmp_path / "data"))
        servers.append(server)
        server.wait_listening()
        return server

    yield start_server
    for server in servers:
        server.kill()
