"""A broker in a background thread, for test suites and scripts.

    with EmbeddedBroker() as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))

It listens on a free loopback port with its own data folder unless told
otherwise, and stops (closing its clients with 320) when the block ends.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import trio

from amqpy.config import Config
from amqpy.server.run import BrokerServer, run_broker

T = TypeVar("T")

START_TIMEOUT_S = 30.0


class EmbeddedBroker:
    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        """`overrides` are config sections: listener={"port": 0}, limits={...}."""
        config = config or Config()
        listener = {"port": 0, **overrides.pop("listener", {})}
        # The management API only when asked for (management={"enabled":
        # True}), then on a free port unless told one.
        management = {"enabled": False, "port": 0, **overrides.pop("management", {})}
        self._data_dir: tempfile.TemporaryDirectory[str] | None = None
        store = overrides.pop("store", {})
        if "data_dir" not in store:
            self._data_dir = tempfile.TemporaryDirectory(prefix="amqpy-")
            store = {**store, "data_dir": self._data_dir.name}
        self.config = config.with_overrides(
            listener=listener, store=store, management=management, **overrides
        )
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._server: BrokerServer | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "broker not started"
        return self._server.port

    @property
    def url(self) -> str:
        auth = self.config.auth
        return f"amqp://{auth.default_user}:{auth.default_pass}@127.0.0.1:{self.port}/"

    @property
    def management_url(self) -> str:
        """The management API's base URL (http://127.0.0.1:PORT)."""
        assert self._server is not None, "broker not started"
        assert self._server.management_port, "management API not enabled"
        return f"http://127.0.0.1:{self._server.management_port}"

    @property
    def server(self) -> BrokerServer:
        assert self._server is not None, "broker not started"
        return self._server

    def start(self) -> EmbeddedBroker:
        self._thread = threading.Thread(
            target=self._thread_main, name="amqpy-embedded", daemon=True
        )
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise TimeoutError("embedded broker did not start")
        if self._error is not None:
            raise RuntimeError("embedded broker failed to start") from self._error
        return self

    def _thread_main(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._server = await nursery.start(run_broker, self.config)
                self._started.set()

        try:
            trio.run(main)
        except BaseException as error:  # noqa: BLE001 - reported to start()/stop()
            self._error = error
            self._started.set()

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` in the broker's thread (to look at its state)."""
        assert self._token is not None, "broker not started"
        return trio.from_thread.run_sync(function, trio_token=self._token)

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        if self._server is not None and self._thread.is_alive():
            try:
                self.call(self._server.request_shutdown)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("embedded broker did not stop")
        self._thread = None
        if self._data_dir is not None:
            self._data_dir.cleanup()
        if self._error is not None:
            raise RuntimeError("embedded broker crashed") from self._error

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
