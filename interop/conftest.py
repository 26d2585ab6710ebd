"""Interop suite: stock clients against any AMQP 0-9-1 broker.

    python -m pytest interop                        # starts amqpy itself
    AMQPY_INTEROP_URL=amqp://guest:guest@127.0.0.1:5672/%2F python -m pytest interop
    python -m pytest interop --broker-url amqp://... [--management-url http://...]
        [--broker-restart-command "..."]

Cases that need the management API (a user without permissions, closing a
connection) run when the suite knows its URL: it does when it starts amqpy;
for another broker pass --management-url (or AMQPY_INTEROP_MANAGEMENT_URL).
Cases that restart the broker run when the suite started amqpy, or with
--broker-restart-command (AMQPY_INTEROP_RESTART_COMMAND): a shell command that
restarts the broker on the same URLs and returns once it listens again.

A client whose tools are missing here (node amqplib, amqp-tools, celery) skips
with the install step as its reason; under CI=true it fails instead.

AMQPY_INTEROP_TABLE=path writes a Markdown table (scenario x client ->
pass/fail/n/a) of the run; AMQPY_INTEROP_RESULTS=path the same as JSON
(used by interop/make_table.py). This suite never imports amqpy.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The pytest settings use --import-mode=importlib and put only tests/ on
# sys.path: make `import interop.clients` work from the repository root.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from interop.adapters import ADAPTERS  # noqa: E402
from interop.base import NotExpressible, describe_error  # noqa: E402
from interop.clients import PikaAdapter  # noqa: E402
from interop.helpers import unavailable  # noqa: E402
from interop.management import Management  # noqa: E402

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
RESTART_TIMEOUT_S = 180.0
LISTENING = re.compile(r"(?<!API )listening on 127\.0\.0\.1:(\d+)\s*$")
MANAGEMENT_LISTENING = re.compile(r"management API listening on [^:\s]+:(\d+)\s*$")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "amqpy_only(reason): an amqpy extension RabbitMQ lacks; against RabbitMQ "
        "the table says amqpy-only instead of running it",
    )
    config.addinivalue_line(
        "markers",
        "amqpy_bug(reason, clients=None): a known amqpy bug (reported; the case "
        "asserts RabbitMQ's behaviour), through these clients (default all): a "
        "strict expected failure on amqpy, so the case fails once the bug is "
        "fixed and the marker must go",
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker-url",
        default=None,
        help="AMQP URL of the broker under test (else $AMQPY_INTEROP_URL, "
        "else a fresh `python -m amqpy server` subprocess)",
    )
    parser.addoption(
        "--management-url",
        default=None,
        help="the broker's management API, http://[user:pass@]host:port "
        "(else $AMQPY_INTEROP_MANAGEMENT_URL)",
    )
    parser.addoption(
        "--broker-restart-command",
        default=None,
        help="shell command that restarts the broker on the same URLs "
        "(else $AMQPY_INTEROP_RESTART_COMMAND)",
    )


class AmqpyProcess:
    """`python -m amqpy server --port 0` on 127.0.0.1 with a throw-away data
    dir; restart() starts it again on the same ports and data."""

    def __init__(self) -> None:
        self.data_dir = tempfile.TemporaryDirectory(prefix="amqpy-interop-")
        self.port = 0
        self.management_port = 0
        self.lines: list[str] = []
        self._start()

    def _start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "amqpy",
                "server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                self.data_dir.name,
                "--management-port",
                str(self.management_port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        self._wait_ports()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        lines = self._lines
        for line in process.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def _wait_ports(self) -> None:
        """Until both the AMQP and the management listener logged their port."""
        port = management = None
        deadline = time.monotonic() + START_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(
                    f"amqpy exited ({self.process.wait(STOP_TIMEOUT_S)}) before "
                    "listening:\n" + "\n".join(self.lines)
                )
            self.lines.append(line)
            if match := MANAGEMENT_LISTENING.search(line):
                management = int(match.group(1))
            elif match := LISTENING.search(line):
                port = int(match.group(1))
            if port is not None and management is not None:
                self.port, self.management_port = port, management
                return
        self.stop()
        raise RuntimeError(
            f"amqpy did not log both listeners within {START_TIMEOUT_S} s:\n"
            + "\n".join(self.lines)
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)

    def restart(self) -> None:
        self.stop()
        self._start()

    def close(self) -> None:
        self.stop()
        self.data_dir.cleanup()


class Broker:
    """The broker under test: its URL, its management API if known, and a way
    to restart it if there is one."""

    def __init__(
        self,
        url: str,
        management_url: str | None,
        restart: Callable[[], None] | None,
        restart_how: str,
    ) -> None:
        self.url = url
        self.management = Management(management_url, url) if management_url else None
        self._restart = restart
        self.restart_how = restart_how

    @property
    def product(self) -> str:
        """The broker's server-properties "product" ("RabbitMQ" for RabbitMQ)."""
        if not hasattr(self, "_product"):
            connection = PikaAdapter().connect(self.url)
            try:
                product = connection.native._impl.server_properties.get("product", "")
            finally:
                connection.close()
            self._product = (
                product.decode() if isinstance(product, bytes) else str(product)
            )
        return self._product

    @property
    def can_restart(self) -> bool:
        return self._restart is not None

    def restart(self) -> None:
        if self._restart is None:
            pytest.skip(
                "needs a broker the suite can restart: the suite's own amqpy, "
                "or --broker-restart-command"
            )
        self._restart()


def _run_restart_command(command: str) -> None:
    subprocess.run(command, shell=True, check=True, timeout=RESTART_TIMEOUT_S)


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    config = request.config
    url = config.getoption("--broker-url") or os.environ.get("AMQPY_INTEROP_URL")
    if url:
        management_url = config.getoption("--management-url") or os.environ.get(
            "AMQPY_INTEROP_MANAGEMENT_URL"
        )
        command = config.getoption("--broker-restart-command") or os.environ.get(
            "AMQPY_INTEROP_RESTART_COMMAND"
        )
        restart = (lambda: _run_restart_command(command)) if command else None
        yield Broker(url, management_url, restart, command or "")
        return
    server = AmqpyProcess()
    try:
        yield Broker(
            f"amqp://guest:guest@127.0.0.1:{server.port}/%2F",
            f"http://127.0.0.1:{server.management_port}",
            server.restart,
            "SIGTERM and start again",
        )
    finally:
        server.close()


AMQPY_BUG = "known amqpy bug: "


@pytest.fixture(autouse=True)
def _broker_markers(request: pytest.FixtureRequest) -> None:
    """amqpy_only cases skip on RabbitMQ; amqpy_bug cases are strict expected
    failures on amqpy."""
    marker = request.node.get_closest_marker("amqpy_only")
    if marker is not None and request.getfixturevalue("broker").product == "RabbitMQ":
        pytest.skip(f"amqpy-only: {marker.args[0]}")
    bug = request.node.get_closest_marker("amqpy_bug")
    if bug is not None and request.getfixturevalue("broker").product != "RabbitMQ":
        clients = bug.kwargs.get("clients")
        callspec = getattr(request.node, "callspec", None)
        who = callspec.params.get("client") if callspec is not None else None
        if clients is None or who in clients:
            request.applymarker(
                pytest.mark.xfail(reason=f"{AMQPY_BUG}{bug.args[0]}", strict=True)
            )


@pytest.fixture(scope="session")
def broker_url(broker: Broker) -> str:
    return broker.url


@pytest.fixture
def management(broker: Broker) -> Management:
    if broker.management is None:
        pytest.skip("needs the broker's management API: pass --management-url")
    return broker.management


@pytest.fixture(params=list(ADAPTERS))
def client(request: pytest.FixtureRequest) -> Any:
    adapter = ADAPTERS[request.param]
    if reason := adapter.missing():
        unavailable(reason)
    scenario = request.node.originalname.removeprefix("test_")
    if known := getattr(adapter, "known_failures", {}).get(scenario):
        # Runs all the same: if the client ever passes, strict xfail says so.
        request.applymarker(pytest.mark.xfail(reason=known, strict=True))
    return adapter


@pytest.fixture
def raised(request: pytest.FixtureRequest) -> Callable[[BaseException], None]:
    """raised(exc): note what the client raised (class and reply code) for
    the table's list of errors."""

    def note(exc: BaseException) -> None:
        client = request.getfixturevalue("client")
        text = describe_error(exc)
        if not isinstance(exc, client.nack_error):  # a nack has no reply code
            try:
                text += f" ({client.reply_code(exc)})"
            except AssertionError:
                text += " (no reply code)"
        request.node.user_properties.append(("raised", text))

    return note


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    # A step the client cannot express ends the case as n/a, with the reason.
    try:
        return (yield)
    except NotExpressible as exc:
        pytest.skip(f"n/a: {exc}")


@pytest.fixture
def names(request: pytest.FixtureRequest, broker: Broker) -> Iterator[Names]:
    """Unique queue/exchange/user names for one test; deletes what it handed
    out (through pika, whatever client the test used)."""
    made = Names(request.node.nodeid)
    yield made
    made.cleanup(broker)


class Names:
    def __init__(self, nodeid: str) -> None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", ".", nodeid.split("::", 1)[-1])
        self.prefix = f"interop.{stem}.{os.getpid()}.{time.monotonic_ns() % 10**9}"
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self.users: list[str] = []
        self._management: Management | None = None

    def queue(self, suffix: str) -> str:
        name = f"{self.prefix}.q.{suffix}"
        self.queues.append(name)
        return name

    def exchange(self, suffix: str) -> str:
        name = f"{self.prefix}.x.{suffix}"
        self.exchanges.append(name)
        return name

    def user(
        self, management: Management, suffix: str, **permissions: str
    ) -> tuple[str, str]:
        """A new user (name, password) with these permissions on the vhost
        (configure=, write=, read=; each ".*" unless given)."""
        name = f"{self.prefix}.u.{suffix}"
        password = secrets.token_hex(8)
        self.users.append(name)
        self._management = management
        management.create_user(name, password, **permissions)
        return name, password

    def cleanup(self, broker: Broker) -> None:
        if self.queues or self.exchanges:
            connection = PikaAdapter().connect(broker.url)
            try:
                for name in self.queues:
                    channel = connection.channel()
                    channel.delete_queue(name)
                    channel.close()
                for name in self.exchanges:
                    channel = connection.channel()
                    channel.delete_exchange(name)
                    channel.close()
            finally:
                connection.close()
        if self._management is not None:
            for user in self.users:
                self._management.delete_user(user)


# ------------------------------------------------------------ results table

_results: dict[tuple[str, str], str] = {}
_raised: dict[tuple[str, str], str] = {}


def _cell(item: pytest.Item) -> tuple[str, str] | None:
    """(scenario, client) of a test run through an adapter (the `client`
    fixture) or a real program (parametrized by `program`)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    who = callspec.params.get("client", callspec.params.get("program"))
    if who is None:
        return None
    scenario = item.originalname.removeprefix("test_")
    return scenario, who


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    cell = _cell(item)
    if cell is None:
        return report
    outcome = None
    if report.skipped and hasattr(report, "wasxfail"):
        reason = report.wasxfail
        known = reason.startswith(AMQPY_BUG)
        outcome = reason if known else f"known client limitation: {reason}"
    elif report.skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        known = reason.startswith(("n/a", "amqpy-only"))
        outcome = reason if known else f"skipped: {reason}"
    elif report.failed:
        outcome = "fail" if report.when == "call" else f"error ({report.when})"
    elif report.when == "call":
        outcome = "pass"
    if outcome is not None and (
        _results.get(cell) in (None, "pass") or outcome != "pass"
    ):
        _results[cell] = outcome
    if report.when == "call":
        noted = [value for key, value in item.user_properties if key == "raised"]
        if noted:
            _raised[cell] = "; ".join(dict.fromkeys(noted))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _results:
        return
    if raw := os.environ.get("AMQPY_INTEROP_RESULTS"):
        # For interop/make_table.py: [[scenario, client, outcome, raised], ...]
        rows = [
            [s, c, o, _raised.get((s, c), "")] for (s, c), o in sorted(_results.items())
        ]
        Path(raw).write_text(json.dumps(rows, indent=1) + "\n")
    path = os.environ.get("AMQPY_INTEROP_TABLE")
    if not path:
        return
    scenarios = sorted({s for s, _ in _results})
    clients = sorted({c for _, c in _results})
    lines = [
        "| scenario | " + " | ".join(clients) + " |",
        "|---" * (len(clients) + 1) + "|",
    ]
    for scenario in scenarios:
        cells = [_results.get((scenario, c), "-").replace("|", "/") for c in clients]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    Path(path).write_text("\n".join(lines) + "\n")
