"""`python -m amqpy server` as a subprocess, for tests of the command and of
restarts (graceful and kill -9)."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 10.0


class Server:
    """`python -m amqpy server ...` with its stderr read line by line."""

    def __init__(self, *args: str) -> None:
        if "--management-port" not in args and "--no-management" not in args:
            args = (*args, "--management-port", "0")  # never 15672 in tests
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqpy", "server", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(
        self, pattern: str, timeout: float = START_TIMEOUT_S
    ) -> re.Match[str]:
        """The first log line (from the start) that matches `pattern`."""
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(
                    f"amqpy exited ({self.process.wait()}) without logging "
                    f"{pattern!r}:\n" + "\n".join(self.lines)
                )
            self.lines.append(line)
            if match := regex.search(line):
                return match
        raise AssertionError(
            f"no log line {pattern!r} within {timeout} s:\n" + "\n".join(self.lines)
        )

    def wait_listening(self, bind: str = "127.0.0.1") -> int:
        match = self.wait_for_line(rf"run: listening on {re.escape(bind)}:(\d+)$")
        self.port = int(match.group(1))
        return self.port

    def wait_management(self) -> str:
        """The management API's base URL, once it listens."""
        match = self.wait_for_line(r"management API listening on ([\d.]+:\d+)$")
        return f"http://{match.group(1)}"

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(EXIT_TIMEOUT_S)
        # The reader ends at the pipe's end; closing under it would raise there.
        self._reader.join(EXIT_TIMEOUT_S)
        if self.process.stderr is not None:
            self.process.stderr.close()
