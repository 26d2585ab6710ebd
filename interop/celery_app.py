"""The celery application of the celery scenario (interop/test_programs.py).

The worker runs it as `celery -A interop.celery_app worker`, configured by
the environment: INTEROP_BROKER_URL (an amqp:// URL) and INTEROP_CELERY_QUEUE.
Results travel back through the rpc:// backend (a reply queue per client).
"""

from __future__ import annotations

import os

from celery import Celery


def create_app(broker_url: str, queue: str) -> Celery:
    app = Celery("interop", broker=broker_url, backend="rpc://")
    app.conf.update(
        task_default_queue=queue,
        # Acked after the task ran. The prefetch stays celery's default (4 per
        # process): with prefetch 1 the solo pool idles ~10 s between tasks
        # (its event loop is not woken after the ack), on RabbitMQ as on amqpy.
        task_acks_late=True,
        # No remote control or events: no pidbox/event exchanges to leave
        # behind on the broker under test.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
    )

    @app.task(name="interop.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="interop.fail", shared=False)
    def fail(text: str) -> None:
        raise ValueError(text)

    return app


app = create_app(
    os.environ.get("INTEROP_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("INTEROP_CELERY_QUEUE", "interop-celery"),
)
