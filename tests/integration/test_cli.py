"""The `amqpy server` command as an operator runs it: a subprocess, its log on
stderr, signals, the config file and the flags that override it."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from helpers.server_process import EXIT_TIMEOUT_S, Server

from amqpy.config import Config

REPO = Path(__file__).resolve().parents[2]
SHUTDOWN_TEXT = (
    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def pika_connection(port: int, host: str = "127.0.0.1") -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(host, port, socket_timeout=5, connection_attempts=1)
    )


def local_address(connection: pika.BlockingConnection) -> str:
    host, port = connection._impl._transport._sock.getsockname()[:2]
    return f"{host}:{port}"


def wait_closed_by_broker(
    connection: pika.BlockingConnection, timeout: float = EXIT_TIMEOUT_S
) -> pika.exceptions.ConnectionClosedByBroker:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
    except pika.exceptions.ConnectionClosedByBroker as error:
        return error
    raise AssertionError(f"connection not closed by the broker within {timeout} s")


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_server_logs_connections_and_stops_on_signal(
    tmp_path: Path, servers: list[Server], signum: signal.Signals
) -> None:
    data_dir = tmp_path / "data"
    server = Server("--port", "0", "--data-dir", str(data_dir), "--log-level", "info")
    servers.append(server)
    port = server.wait_listening()
    assert port != 0
    assert data_dir.is_dir()

    first = pika_connection(port)
    peer = re.escape(local_address(first))
    server.wait_for_line(
        rf"accepted AMQP connection {peer} -> 127\.0\.0\.1:{port} "
        r"\(vhost '/', user 'guest'\)"
    )
    first.close()
    server.wait_for_line(
        rf"closing AMQP connection {peer} -> 127\.0\.0\.1:{port} "
        r"\(vhost '/', user 'guest'\)"
    )

    second = pika_connection(port)
    second.channel().queue_declare("", exclusive=True)
    server.process.send_signal(signum)
    error = wait_closed_by_broker(second)
    assert (error.reply_code, error.reply_text) == (320, SHUTDOWN_TEXT)
    assert server.wait_exit() == 0
    assert any(
        f"received {signum.name}, shutting down" in line for line in server.lines
    )
    assert not any("Traceback" in line for line in server.lines)


def test_config_file_sets_bind_port_and_more(
    tmp_path: Path, servers: list[Server]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        free_port = probe.getsockname()[1]
    config = tmp_path / "amqpy.toml"
    config.write_text(
        f'[listener]\nbind = "127.0.0.2"\nport = {free_port}\n\n'
        f'[store]\ndata_dir = "{tmp_path / "data"}"\n\n'
        '[server]\nproduct = "amqpy-cli-test"\n'
    )
    server = Server("--config", str(config))
    servers.append(server)
    assert server.wait_listening("127.0.0.2") == free_port
    connection = pika_connection(free_port, host="127.0.0.2")
    try:
        assert connection._impl.server_properties["product"] == "amqpy-cli-test"
    finally:
        connection.close()
    assert (tmp_path / "data").is_dir()


def test_flags_override_the_config_file(tmp_path: Path, servers: list[Server]) -> None:
    # The file names a port that is taken: only the flag lets the server start.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        config = tmp_path / "amqpy.toml"
        config.write_text(
            f'[listener]\nbind = "127.0.0.2"\nport = {taken_port}\n\n'
            '[server]\nproduct = "from-the-file"\n'
        )
        server = Server(
            "--config", str(config),
            "--bind", "127.0.0.1",
            "--port", "0",
            "--data-dir", str(tmp_path / "data"),
        )  # fmt: skip
        servers.append(server)
        port = server.wait_listening("127.0.0.1")
        assert port != taken_port
        connection = pika_connection(port)
        try:
            # Keys the flags do not name still come from the file.
            assert connection._impl.server_properties["product"] == "from-the-file"
        finally:
            connection.close()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "amqpy", "server", "--port", str(port),
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=EXIT_TIMEOUT_S, cwd=REPO,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[listener]\nfoo = 1\n", "amqpy: unknown config key listener.foo"),
        ("[nosuch]\nport = 1\n", "amqpy: unknown config section [nosuch]"),
        ('[listener]\nport = "five"\n', "amqpy: listener.port must be an integer"),
        ("[listener]\nport = 70000\n", "amqpy: listener.port out of range: 70000"),
        ("[listener\n", "amqpy: invalid TOML in "),
    ],
    ids=["unknown-key", "unknown-section", "wrong-type", "out-of-range", "bad-toml"],
)
def test_bad_config_file_exits_with_a_message(
    tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "amqpy", "server", "--config", str(config),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=EXIT_TIMEOUT_S, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_with_a_message(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = subprocess.run(
        [sys.executable, "-m", "amqpy", "server", "--config", str(missing)],
        capture_output=True, text=True, timeout=EXIT_TIMEOUT_S, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"amqpy: cannot read config file {missing}" in result.stderr


def test_documented_config_file_matches_the_defaults() -> None:
    assert Config.from_toml(REPO / "conf" / "amqpy.toml") == Config()
