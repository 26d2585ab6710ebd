"""Interop suite: stock clients against any AMQP 0-9-1 broker.

    python -m pytest interop                        # starts amqpy itself
    AMQPY_INTEROP_URL=amqp://guest:guest@127.0.0.1:5672/%2F python -m pytest interop
    python -m pytest interop --broker-url amqp://...

AMQPY_INTEROP_TABLE=path writes a Markdown table (scenario x client ->
pass/fail/n/a) of the run; AMQPY_INTEROP_RESULTS=path the same as JSON
(used by interop/make_table.py). This suite never imports amqpy.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The pytest settings use --import-mode=importlib and put only tests/ on
# sys.path: make `import interop.clients` work from the repository root.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from interop.clients import ADAPTERS  # noqa: E402

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)\s*$")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker-url",
        default=None,
        help="AMQP URL of the broker under test (else $AMQPY_INTEROP_URL, "
        "else a fresh `python -m amqpy server` subprocess)",
    )


class AmqpyProcess:
    """`python -m amqpy server --port 0` on 127.0.0.1 with a throw-away data dir."""

    def __init__(self) -> None:
        self.data_dir = tempfile.TemporaryDirectory(prefix="amqpy-interop-")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "amqpy",
                "server",
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                self.data_dir.name,
                "--management-port",
                "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_port(self) -> int:
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
            if match := LISTENING.search(line):
                return int(match.group(1))
        self.stop()
        raise RuntimeError(
            f"amqpy did not log 'listening on' within {START_TIMEOUT_S} s:\n"
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
        self.data_dir.cleanup()


@pytest.fixture(scope="session")
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = request.config.getoption("--broker-url") or os.environ.get(
        "AMQPY_INTEROP_URL"
    )
    if url:
        yield url
        return
    server = AmqpyProcess()
    try:
        port = server.wait_port()
        yield f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    finally:
        server.stop()


@pytest.fixture(params=sorted(ADAPTERS))
def client(request: pytest.FixtureRequest):
    return ADAPTERS[request.param]


@pytest.fixture
def names(request: pytest.FixtureRequest, client) -> Iterator[Names]:
    """Unique queue/exchange names for one test; deletes what it handed out."""
    made = Names(request.node.nodeid)
    yield made
    made.cleanup(client, request.getfixturevalue("broker_url"))


class Names:
    def __init__(self, nodeid: str) -> None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", ".", nodeid.split("::", 1)[-1])
        self.prefix = f"interop.{stem}.{os.getpid()}.{time.monotonic_ns() % 10**9}"
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, suffix: str) -> str:
        name = f"{self.prefix}.q.{suffix}"
        self.queues.append(name)
        return name

    def exchange(self, suffix: str) -> str:
        name = f"{self.prefix}.x.{suffix}"
        self.exchanges.append(name)
        return name

    def cleanup(self, client, url: str) -> None:
        if not (self.queues or self.exchanges):
            return
        connection = client.connect(url)
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


# ------------------------------------------------------------ results table

_results: dict[tuple[str, str], str] = {}


def _cell(item: pytest.Item) -> tuple[str, str] | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "client" not in callspec.params:
        return None
    scenario = item.originalname.removeprefix("test_")
    return scenario, callspec.params["client"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    cell = _cell(item)
    if cell is None:
        return report
    outcome = None
    if report.skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        outcome = reason if reason.startswith("n/a") else f"skipped: {reason}"
    elif report.failed:
        outcome = "fail" if report.when == "call" else f"error ({report.when})"
    elif report.when == "call":
        outcome = "pass"
    if outcome is not None and (
        _results.get(cell) in (None, "pass") or outcome != "pass"
    ):
        _results[cell] = outcome
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _results:
        return
    if raw := os.environ.get("AMQPY_INTEROP_RESULTS"):
        # For interop/make_table.py: [[scenario, client, outcome], ...]
        rows = [[s, c, o] for (s, c), o in sorted(_results.items())]
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
