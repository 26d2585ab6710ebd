"""The `amqpy` command as an operator runs it: `amqpy server` as a subprocess
(its log on stderr, signals, the config file and the flags that override it),
and the management commands (`amqpy queues list`, ...) against a broker's
HTTP API, with pika making the traffic they show."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pika
import pika.exceptions
import pytest
from helpers.queue_features import message_count, wait_until
from helpers.server_process import EXIT_TIMEOUT_S, Server
from pika.adapters.blocking_connection import BlockingChannel

from amqpy.cli import main
from amqpy.config import Config
from amqpy.server.embedded import EmbeddedBroker

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


# --- the management commands: `amqpy OBJECT VERB` against the HTTP API -------
#
# In-process (amqpy.cli.main with captured output) unless the exit status of
# a real process is the point.


@attrs.frozen
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)

    def rows(self) -> list[dict[str, str]]:
        """The table's rows by header; cells are separated by 2+ spaces (the
        tests pick columns whose cells are never empty)."""
        assert self.code == 0, self.err
        header, *lines = self.out.splitlines()
        names = header.split()
        rows = [re.split(r"\s{2,}", line.strip()) for line in lines]
        assert all(len(row) == len(names) for row in rows), self.out
        return [dict(zip(names, row, strict=True)) for row in rows]


Cli = Callable[..., Result]


@pytest.fixture
def broker(managed_broker: EmbeddedBroker) -> EmbeddedBroker:
    """The pika `connect`/`channel` fixtures use the managed broker."""
    return managed_broker


@pytest.fixture
def cli(
    managed_broker: EmbeddedBroker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    """cli("queues", "list") runs `amqpy queues list` against the broker's
    API (through AMQPY_URL, as a person's shell would give it)."""
    monkeypatch.setenv("AMQPY_URL", managed_broker.management_url)
    monkeypatch.delenv("AMQPY_USER", raising=False)
    monkeypatch.delenv("AMQPY_PASSWORD", raising=False)

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def assert_failed(result: Result, code: int, text: str) -> None:
    """A non-zero exit with one line on stderr that says what went wrong."""
    assert result.code == code, result
    assert result.err.startswith("amqpy: "), result.err
    assert result.err.count("\n") == 1, result.err
    assert text in result.err
    assert "Traceback" not in result.err
    assert result.out == ""


def cli_process(*args: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amqpy", *args],
        capture_output=True, text=True, timeout=EXIT_TIMEOUT_S, cwd=REPO,
        env={**os.environ, "AMQPY_URL": url, **env},
    )  # fmt: skip


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def consume_one(channel: BlockingChannel, queue: str) -> None:
    """Consume `queue` with prefetch 1 until the broker has delivered one
    (so one is unacknowledged)."""
    delivered: list[bytes] = []
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue, lambda _ch, _m, _p, body: delivered.append(body))
    wait_until(channel, lambda: bool(delivered))


def test_queues_list_shows_what_pika_made(cli: Cli, channel: BlockingChannel) -> None:
    channel.confirm_delivery()
    channel.queue_declare("busy", durable=True)
    channel.queue_declare("idle")
    for body in (b"1", b"2", b"3"):
        channel.basic_publish("", "busy", body)
    consume_one(channel, "busy")

    rows = {row["name"]: row for row in cli("queues", "list").rows()}
    assert rows["busy"] == {
        "vhost": "/",
        "name": "busy",
        "type": "classic",
        "durable": "true",
        "messages_ready": "2",
        "messages_unacknowledged": "1",
        "consumers": "1",
    }
    assert rows["idle"]["messages_ready"] == "0"
    assert rows["idle"]["durable"] == "false"

    # --format json: the API's objects, for scripts.
    queues = {q["name"]: q for q in cli("queues", "list", "--format", "json").json()}
    assert queues["busy"]["messages"] == 3
    assert queues["busy"]["messages_ready"] == 2
    assert queues["busy"]["messages_unacknowledged"] == 1
    assert queues["busy"]["consumers"] == 1
    assert queues["busy"]["arguments"] == {}

    chosen = cli("queues", "list", "--vhost", "/", "--columns", "name,messages")
    assert {row["name"]: row["messages"] for row in chosen.rows()} == {
        "busy": "3",
        "idle": "0",
    }
    consumers = cli("consumers", "list", "--columns", "queue.name,prefetch_count")
    assert consumers.rows() == [{"queue.name": "busy", "prefetch_count": "1"}]
    channels = cli("channels", "list", "--format", "json").json()
    assert [c["consumer_count"] for c in channels] == [1]


def test_declare_and_delete_a_queue_seen_over_amqp(
    cli: Cli, connect: Callable[..., pika.BlockingConnection]
) -> None:
    channel = connect().channel()
    made = cli("queues", "declare", "from-cli", "--arguments", '{"x-max-length": 2}')
    assert made.code == 0, made.err
    assert made.out == "declared queue 'from-cli' in vhost '/'\n"
    assert channel.queue_declare("from-cli", passive=True).method.message_count == 0
    # The same queue with other arguments: the broker's reason, nothing changed.
    other = cli("queues", "declare", "from-cli", "--arguments", '{"x-max-length": 3}')
    assert_failed(other, 1, "inequivalent arg 'x-max-length' for queue 'from-cli'")

    deleted = cli("queues", "delete", "from-cli")
    assert deleted.code == 0, deleted.err
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.queue_declare("from-cli", passive=True)
    assert closed.value.reply_code == 404


def test_publish_then_get(cli: Cli, channel: BlockingChannel) -> None:
    assert cli("queues", "declare", "inbox").code == 0
    published = cli(
        "publish", "", "inbox", "hello", "--properties", '{"headers": {"n": 1}}'
    )
    assert published.code == 0, published.err
    assert cli("publish", "", "inbox", "world").code == 0

    # By default get puts the messages back.
    peek = cli("queues", "get", "inbox", "--count", "5")
    assert peek.out == "hello\nworld\n"
    fetched = cli("queues", "get", "inbox", "--format", "json").json()
    assert len(fetched) == 1
    assert fetched[0]["payload"] == "hello"
    assert fetched[0]["redelivered"] is True
    assert fetched[0]["properties"]["headers"] == {"n": 1}
    assert message_count(channel, "inbox") == 2

    taken = cli("queues", "get", "inbox", "--ackmode", "ack_requeue_false")
    assert taken.out == "hello\n"
    _method, _properties, body = channel.basic_get("inbox", auto_ack=True)
    assert body == b"world"
    assert (
        cli("queues", "get", "inbox").err
        == "queue 'inbox' in vhost '/' has no messages\n"
    )

    # Unroutable: not an error, but the person is told.
    lost = cli("publish", "amq.direct", "nowhere", "lost")
    assert lost.code == 0
    assert "no queue is bound with routing key 'nowhere'" in lost.err


def test_purge(cli: Cli, channel: BlockingChannel) -> None:
    channel.confirm_delivery()
    channel.queue_declare("full")
    for body in (b"1", b"2"):
        channel.basic_publish("", "full", body)
    assert cli("queues", "purge", "full").code == 0
    assert message_count(channel, "full") == 0


def test_exchanges_and_bindings_route(cli: Cli, channel: BlockingChannel) -> None:
    assert cli("exchanges", "declare", "events", "--type", "topic").code == 0
    assert cli("queues", "declare", "audit").code == 0
    bound = cli("bindings", "declare", "events", "audit", "--routing-key", "user.*")
    assert bound.code == 0, bound.err
    exchanges = cli("exchanges", "list", "--columns", "name,type").out
    assert re.search(r"^events\s+topic$", exchanges, re.MULTILINE)
    assert "(AMQP default)" in exchanges
    bindings = cli("bindings", "list", "--format", "json").json()
    assert {(b["source"], b["destination"], b["routing_key"]) for b in bindings} >= {
        ("events", "audit", "user.*"),
        ("", "audit", "audit"),
    }

    channel.confirm_delivery()
    channel.basic_publish("events", "user.created", b"routed")
    assert cli("queues", "get", "audit", "--ackmode", "ack_requeue_false").out == (
        "routed\n"
    )

    unbound = cli("bindings", "delete", "events", "audit", "--routing-key", "user.*")
    assert unbound.code == 0, unbound.err
    assert cli("publish", "events", "user.created", "x").err.startswith(
        "published to exchange 'events' in vhost '/', but no queue is bound"
    )
    again = cli("bindings", "delete", "events", "audit", "--routing-key", "user.*")
    assert_failed(again, 1, "no binding from exchange 'events' to queue 'audit'")
    assert cli("exchanges", "delete", "events").code == 0
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.exchange_declare("events", passive=True)
    assert closed.value.reply_code == 404


def test_close_a_connection_with_a_reason(
    cli: Cli, connect: Callable[..., pika.BlockingConnection]
) -> None:
    victim = connect(client_properties={"connection_name": "victim"})
    listed = cli("connections", "list", "--format", "json").json()
    (name,) = [c["name"] for c in listed if c.get("user_provided_name") == "victim"]
    table = cli("connections", "list", "--columns", "user,vhost,user_provided_name")
    assert table.rows() == [
        {"user": "guest", "vhost": "/", "user_provided_name": "victim"}
    ]

    closed = cli("connections", "close", name, "--reason", "maintenance")
    assert closed.code == 0, closed.err
    error = wait_closed_by_broker(victim)
    assert (error.reply_code, error.reply_text) == (
        320,
        "CONNECTION_FORCED - maintenance",
    )
    missing = cli("connections", "close", name)
    assert_failed(missing, 1, f"connection '{name}' not found")


def test_user_and_permissions_let_pika_log_in(
    cli: Cli, managed_broker: EmbeddedBroker
) -> None:
    added = cli("users", "add", "alice", "--password", "s3cret", "--tags", "management")
    assert added.code == 0, added.err
    assert cli("vhosts", "add", "team", "--description", "the team's").code == 0
    granted = cli(
        "permissions", "set", "alice", "^alice-", ".*", ".*", "--vhost", "team"
    )
    assert granted.code == 0, granted.err

    users = {row["name"]: row["tags"] for row in cli("users", "list").rows()}
    assert users["alice"] == "management"
    vhosts = cli("vhosts", "list", "--format", "json").json()
    assert {v["name"]: v["description"] for v in vhosts}["team"] == "the team's"
    permissions = cli("permissions", "list", "--vhost", "team").rows()
    assert {"user": "alice", "vhost": "team", "configure": "^alice-", "write": ".*",
            "read": ".*"} in permissions  # fmt: skip

    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            managed_broker.port,
            virtual_host="team",
            credentials=pika.PlainCredentials("alice", "s3cret"),
            socket_timeout=5,
        )
    )
    try:
        channel = connection.channel()
        channel.queue_declare("alice-work")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare("shared")
        assert refused.value.reply_code == 403
    finally:
        connection.close()

    # alice may use the API (management tag) but not list users.
    as_alice = cli("users", "list", "--user", "alice", "--password", "s3cret")
    assert_failed(as_alice, 1, "user 'alice' is not an administrator")

    assert cli("permissions", "clear", "alice", "--vhost", "team").code == 0
    assert "alice" not in cli("permissions", "list", "--vhost", "team").out
    assert cli("users", "delete", "alice").code == 0
    assert cli("vhosts", "delete", "team").code == 0
    assert "team" not in cli("vhosts", "list").out


def test_policies(cli: Cli) -> None:
    made = cli(
        "policies", "set", "short", "--pattern", "^short\\.",
        "--definition", '{"max-length": 10}', "--apply-to", "queues",
        "--priority", "2",
    )  # fmt: skip
    assert made.code == 0, made.err
    (policy,) = cli("policies", "list", "--format", "json").json()
    assert policy == {
        "vhost": "/",
        "name": "short",
        "pattern": "^short\\.",
        "apply-to": "queues",
        "definition": {"max-length": 10},
        "priority": 2,
    }
    assert cli("policies", "clear", "short").code == 0
    assert cli("policies", "list", "--format", "json").json() == []
    assert_failed(cli("policies", "clear", "short"), 1, "policy 'short' in vhost")


def test_overview_and_alarms(
    cli: Cli, make_broker: Callable[..., EmbeddedBroker], channel: BlockingChannel
) -> None:
    channel.queue_declare("one")
    overview = cli("overview").out
    assert re.search(r"^object_totals\.queues\s+1$", overview, re.MULTILINE)
    assert re.search(r"^object_totals\.connections\s+1$", overview, re.MULTILINE)
    assert (
        cli("overview", "show", "--format", "json").json()["object_totals"]["queues"]
        == 1
    )

    healthy = cli("alarms")
    assert (healthy.code, healthy.out) == (0, "no alarms in effect\n")
    # No free disk is ever enough: the disk alarm goes on at start.
    full = make_broker(
        management={"enabled": True},
        store={"disk_free_limit_bytes": 10**18, "disk_check_interval_s": 0.05},
    )
    alarmed = cli("alarms", "--url", full.management_url)
    assert alarmed.code == 1
    assert re.search(r"^disk\s+\S+$", alarmed.out, re.MULTILINE)
    assert alarmed.err.startswith("amqpy: ") and "disk" in alarmed.err


def amqp_login(
    broker: EmbeddedBroker, vhost: str, user: str = "guest", password: str = "guest"
) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            broker.port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password),
            socket_timeout=5,
        )
    )


def test_definitions_export_then_import_into_another_broker(
    cli: Cli,
    managed_broker: EmbeddedBroker,
    make_broker: Callable[..., EmbeddedBroker],
    tmp_path: Path,
) -> None:
    for args in (
        ("vhosts", "add", "shop"),
        ("users", "add", "bob", "--password", "hunter2", "--tags", ""),
        ("permissions", "set", "bob", ".*", ".*", ".*", "--vhost", "shop"),
    ):
        result = cli(*args)
        assert result.code == 0, (args, result.err)
    first = amqp_login(managed_broker, "shop")
    try:
        channel = first.channel()
        channel.exchange_declare("orders", "fanout", durable=True)
        channel.queue_declare("billing", durable=True)
        channel.queue_bind("billing", "orders")
    finally:
        first.close()

    # A real process: what an operator's backup script runs.
    file = tmp_path / "definitions.json"
    exported = cli_process(
        "definitions", "export", str(file), url=managed_broker.management_url
    )
    assert exported.returncode == 0, exported.stderr
    definitions = json.loads(file.read_text())
    assert {v["name"] for v in definitions["vhosts"]} == {"/", "shop"}
    assert [q["name"] for q in definitions["queues"]] == ["billing"]

    second = make_broker(management={"enabled": True})
    imported = cli("definitions", "import", str(file), "--url", second.management_url)
    assert imported.code == 0, imported.err
    # bob's password came across as its hash: he logs in to the new broker,
    # where the exchange routes to the queue.
    connection = amqp_login(second, "shop", "bob", "hunter2")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("orders", "", b"order 1")
        assert message_count(channel, "billing") == 1
    finally:
        connection.close()

    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    assert_failed(cli("definitions", "import", str(bad)), 1, "is not valid JSON")


CLOSED_URL = "http://127.0.0.1:{closed_port}"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("vhosts", "list", "--url", CLOSED_URL),
            1,
            f"cannot reach the management API at {CLOSED_URL}: connection refused "
            "— is the broker running with the management API enabled?",
        ),
        (
            ("vhosts", "list", "--password", "nope"),
            1,
            "failed for user 'guest': wrong user name or password (set "
            "--user/--password or AMQPY_USER/AMQPY_PASSWORD)",
        ),
        (("queues", "purge", "nosuch"), 1, "queue 'nosuch' in vhost '/' not found"),
        (("queues", "list", "--vhost", "nowhere"), 1, "vhost 'nowhere' not found"),
        (("users", "delete", "nobody"), 1, "user 'nobody' not found"),
        (
            ("policies", "set", "p", "--pattern", ".", "--definition", "{a: 1}"),
            2,
            "--definition is not valid JSON",
        ),
        (
            ("policies", "set", "p", "--pattern", ".",
             "--definition", '{"max-length": "abc"}'),
            1,
            "refused by the broker: ",
        ),
        (
            ("permissions", "set", "guest", "(", ".*", ".*"),
            1,
            "refused by the broker: ",
        ),
        (("vhosts", "list", "--url", "localhost:15672"), 2, "--url must be"),
    ],
    ids=[
        "unreachable",
        "wrong-password",
        "missing-queue",
        "missing-vhost",
        "missing-user",
        "bad-json-option",
        "refused-policy",
        "refused-regex",
        "bad-url",
    ],
)  # fmt: skip
def test_failures_say_what_to_do(
    cli: Cli, args: tuple[str, ...], code: int, message: str
) -> None:
    port = str(closed_port())
    args = tuple(arg.replace("{closed_port}", port) for arg in args)
    before = cli("definitions", "export", "-").json()
    assert_failed(cli(*args), code, message.replace("{closed_port}", port))
    assert cli("definitions", "export", "-").json() == before


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["queues", "declare"])
    assert usage.value.code == 2
    assert "the following arguments are required: NAME" in capsys.readouterr().err


def test_a_real_process_exits_non_zero(managed_broker: EmbeddedBroker) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    unreachable = cli_process("queues", "list", url=url)
    assert unreachable.returncode == 1
    assert unreachable.stderr == (
        f"amqpy: cannot reach the management API at {url}: connection refused — "
        "is the broker running with the management API enabled?\n"
    )
    wrong = cli_process(
        "vhosts", "list", url=managed_broker.management_url, AMQPY_PASSWORD="nope"
    )
    assert wrong.returncode == 1
    assert "wrong user name or password" in wrong.stderr
    listed = cli_process("vhosts", "list", url=managed_broker.management_url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[0] == "/"
