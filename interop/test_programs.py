"""Real programs on the broker, not only client calls.

- celery: a worker process (`celery -A interop.celery_app worker`) with an
  amqp:// broker URL runs tasks sent by this process and returns the results,
  and a task's exception, through the rpc:// result backend.
- kombu: a producer publishing through Connection.ensure (retry policy, with
  publisher confirms) and a ConsumerMixin consumer keep going when the
  management API closes both of their connections mid-stream.

(The work queue with competing prefetch-1 workers, the RPC pattern with
reply queues and the fanout with a late subscriber run through every client
in test_scenarios.py.)
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from interop.helpers import unavailable
from interop.management import url_as

REPO = Path(__file__).resolve().parent.parent
WORKER_READY_S = 30.0
RESULT_S = 15.0
STOP_S = 10.0

pytestmark = pytest.mark.timeout(90)


def _need(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        unavailable(f"{module} is not installed ({install})")


class CeleryWorker:
    """`celery worker` in a subprocess; waits for its "ready." line."""

    def __init__(self, broker_url: str, task_queue: str, hostname: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "--app",
                "interop.celery_app",
                "worker",
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "INFO",
                "--hostname",
                hostname,
            ],
            cwd=REPO,
            env=dict(
                os.environ,
                INTEROP_BROKER_URL=broker_url,
                INTEROP_CELERY_QUEUE=task_queue,
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_READY_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if re.search(r"@\S+ ready\.", line):
                return
        raise AssertionError(
            f"celery worker not ready within {WORKER_READY_S} s:\n"
            + "\n".join(self.lines[-30:])
        )

    def stop(self) -> None:
        # SIGTERM: celery's warm shutdown (finish the current task, close).
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_S)
        while (line := self._lines.get(timeout=STOP_S)) is not None:
            self.lines.append(line)


@pytest.mark.parametrize("program", ["celery"])
def test_celery_rpc_tasks(program, broker_url, names) -> None:
    _need("celery", "pip install celery: pyproject's test extra")
    from interop.celery_app import create_app

    task_queue = names.queue("tasks")
    # celery declares the task queue's exchange under the queue's name.
    names.exchanges.append(task_queue)
    worker = CeleryWorker(broker_url, task_queue, f"interop-{os.getpid()}@localhost")
    app = create_app(broker_url, task_queue)
    try:
        worker.wait_ready()
        add, fail = app.tasks["interop.add"], app.tasks["interop.fail"]
        assert add.delay(2, 3).get(timeout=RESULT_S) == 5
        results = [add.delay(n, n) for n in range(10)]
        assert [r.get(timeout=RESULT_S) for r in results] == [2 * n for n in range(10)]
        failed = fail.delay("boom")
        with pytest.raises(ValueError, match="boom"):
            failed.get(timeout=RESULT_S)
        assert failed.state == "FAILURE"
    finally:
        # app.close() leaves the result consumer's and the producer pool's
        # connections open.
        app.backend.result_consumer.stop()
        app.pool.force_close_all()
        app.close()
        worker.stop()
    assert worker.process.returncode == 0, "\n".join(worker.lines[-30:])


@pytest.mark.parametrize("program", ["kombu"])
def test_kombu_retry_across_close(program, broker_url, names, management) -> None:
    import kombu
    from kombu.mixins import ConsumerMixin

    user, password = names.user(management, "retry")
    url = "py" + url_as(broker_url, user, password)  # pyamqp://
    name = names.queue("jobs")
    # Through the default exchange: kombu binds no queue to "".
    jobs = kombu.Queue(
        name, exchange=kombu.Exchange(""), routing_key=name, durable=True
    )
    received: list[int] = []
    got_all = threading.Event()
    revived = threading.Event()

    class Worker(ConsumerMixin):
        def __init__(self, connection: kombu.Connection) -> None:
            self.connection = connection

        def get_consumers(self, consumer_class, channel) -> list:
            return [
                consumer_class(
                    queues=[jobs],
                    callbacks=[self.on_message],
                    accept=["json"],
                    prefetch_count=1,
                )
            ]

        def on_message(self, body, message) -> None:
            received.append(body["n"])
            message.ack()
            if set(range(10)) <= set(received):
                got_all.set()

        def on_connection_revived(self) -> None:
            revived.set()

    consumer_connection = kombu.Connection(url, connect_timeout=5)
    worker = Worker(consumer_connection)
    thread = threading.Thread(target=worker.run, daemon=True)
    producer_connection = kombu.Connection(
        url, connect_timeout=5, transport_options={"confirm_publish": True}
    )
    retried: list[BaseException] = []
    try:
        producer = producer_connection.Producer(serializer="json")
        publish = producer_connection.ensure(
            producer,
            producer.publish,
            errback=lambda exc, _interval: retried.append(exc),
            max_retries=5,
            interval_start=0,
            interval_step=0.2,
        )

        def send(n: int) -> None:
            publish({"n": n}, routing_key=jobs.name, declare=[jobs])

        send(0)  # declares the queue before the consumer starts
        thread.start()
        for n in range(1, 5):
            send(n)
        deadline = time.monotonic() + RESULT_S
        while set(received) < set(range(5)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(set(received)) == list(range(5))

        # Close the producer's and the consumer's connections.
        for listed in management.wait_connections(user, 2):
            management.close_connection(listed["name"], "interop: forced close")

        for n in range(5, 10):
            send(n)
        assert got_all.wait(RESULT_S), sorted(set(received))
        assert retried, "the producer never saw its connection closed"
        assert any(type(e).__name__ == "ConnectionForced" for e in retried), retried
        assert revived.wait(RESULT_S), "the consumer never reconnected"
    finally:
        worker.should_stop = True
        if thread.is_alive():
            thread.join(STOP_S)
        producer_connection.release()
        consumer_connection.release()
    assert not thread.is_alive()
