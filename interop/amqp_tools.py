"""The rabbitmq-c command-line programs (Debian's amqp-tools) behind the
suite's interface.

Every call runs one program, which opens a connection of its own: a
"connection" here only holds the URL, and after a channel error the next call
simply works again (as a client that reopens its channel). What the programs
cannot express raises base.NotExpressible: exclusive, auto-delete, passive or
argument-carrying declares, exchanges and bindings, message counts,
confirms, mandatory publishes, reject/nack, transactions, consumer arguments,
a per-channel prefetch, and properties beyond content-type, reply-to,
persistence and string headers; amqp-consume and amqp-get hand over only the
body (see AmqpToolsAdapter.cannot).

consume runs amqp-consume, which runs a command per message and acks the
message when the command exits: the command prints the body (base64, one line)
and, without auto-ack, then waits on a FIFO that ack() writes to, so acking
stays under the scenario's control as with the other clients.
"""

from __future__ import annotations

import base64
import errno
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, ClassVar

from interop.base import (
    OP_TIMEOUT_S,
    BodyOnlyDelivery,
    Delivery,
    NotExpressible,
    Props,
    ReportedChannelError,
    ReportedConnectionError,
    ReportedError,
    Returned,
)

PROGRAMS = (
    "amqp-publish",
    "amqp-consume",
    "amqp-get",
    "amqp-declare-queue",
    "amqp-delete-queue",
)
ERROR = re.compile(r"server (channel|connection) error (\d+), message: (.*)")


class AmqpToolsAdapter:
    name = "amqp-tools"
    # Publishing is still ordered: amqp-publish returns once its connection
    # closed cleanly, so a later call sees the message. But no confirms.
    features = frozenset()
    cannot: ClassVar[dict[str, str]] = {
        "confirms": "amqp-publish does not use publisher confirms",
        "exclusive": "amqp-declare-queue cannot declare an exclusive queue",
        "passive": "amqp-declare-queue cannot declare passively",
        "arguments": "amqp-declare-queue takes no queue arguments",
        "exchanges": "amqp-tools has no program to declare an exchange",
        "props": "amqp-publish sets only content-type, reply-to, persistence "
        "and string headers; amqp-consume/amqp-get give only the body",
        "returns": "amqp-publish does not publish mandatory",
        "reject": "amqp-consume only acks (when its command exits)",
        "nack": "amqp-consume only acks (when its command exits)",
        "tx": "no amqp-tools program uses transactions",
        "one_channel": "each amqp-tools program opens a connection of its "
        "own: a consumer and a publish cannot share a channel",
        "consumer_arguments": "amqp-consume takes no consumer arguments",
        "cancel_notify": "rabbitmq-c does not announce consumer_cancel_notify: "
        "amqp-consume waits on after its queue is deleted",
        "qos_global": "amqp-consume sets only a per-consumer prefetch count",
    }
    reopens_channel_after_error = True
    # Scenario -> what the programs do instead; run as strict xfail.
    known_failures: ClassVar[dict[str, str]] = {
        "error_320_closed_by_management": "amqp-consume does not answer the "
        "broker's connection.close: it waits on until the broker drops the socket "
        "(RabbitMQ: after ~30 s), then exits with 'a socket error occurred'",
    }
    channel_error: ClassVar[tuple[type[BaseException], ...]] = (ReportedChannelError,)
    connection_error: ClassVar[tuple[type[BaseException], ...]] = (
        ReportedConnectionError,
    )
    nack_error: ClassVar[tuple[type[BaseException], ...]] = ()

    @staticmethod
    def missing() -> str | None:
        absent = [p for p in PROGRAMS if shutil.which(p) is None]
        if absent:
            return f"{', '.join(absent)} not installed (apt-get install amqp-tools)"
        return None

    @staticmethod
    def reply_code(exc: BaseException) -> int:
        assert isinstance(exc, ReportedError) and exc.code is not None, exc
        return exc.code

    def connect(self, url: str, confirms: bool = False) -> ToolsConnection:
        return ToolsConnection(url)


def _failure(program: str, returncode: int, stderr: str) -> ReportedError:
    native = f"{program} exit {returncode}"
    if match := ERROR.search(stderr):
        kind, code, text = match.groups()
        cls = ReportedChannelError if kind == "channel" else ReportedConnectionError
        return cls(int(code), text.strip(), native)
    # No reply from the broker (refused socket, the connection dropped...).
    return ReportedConnectionError(None, stderr.strip(), native)


class ToolsConnection:
    def __init__(self, url: str) -> None:
        self.url = url
        self.consumers: list[Consumer] = []
        self.closed = False

    def run(self, program: str, *args: str, stdin: bytes = b"") -> bytes | None:
        """Run one program; its stdout, or None when amqp-get found no message
        (exit 2); raises the error it printed otherwise."""
        result = subprocess.run(
            [program, "--url", self.url, *args],
            input=stdin,
            capture_output=True,
            timeout=OP_TIMEOUT_S,
            check=False,
        )
        if result.returncode == 0:
            return result.stdout
        if program == "amqp-get" and result.returncode == 2:
            return None
        raise _failure(
            program, result.returncode, result.stderr.decode(errors="replace")
        )

    @property
    def is_open(self) -> bool:
        return not self.closed

    def channel(self) -> ToolsChannel:
        return ToolsChannel(self)

    def close(self) -> None:
        self.closed = True
        for consumer in self.consumers:
            consumer.stop()


class ToolsChannel:
    def __init__(self, connection: ToolsConnection) -> None:
        self.connection = connection
        self.prefetch_count: int | None = None
        self.consumer: Consumer | None = None

    @property
    def is_open(self) -> bool:
        return True

    def declare_queue(
        self,
        name: str = "",
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        if exclusive or auto_delete or passive or arguments:
            raise NotExpressible(
                "amqp-declare-queue declares only a name and durable "
                "(no exclusive, auto-delete, passive or arguments)"
            )
        args = ["--queue", name] + (["--durable"] if durable else [])
        out = self.connection.run("amqp-declare-queue", *args)
        assert out is not None
        return out.decode().strip()

    def message_count(self, queue: str) -> int:
        raise NotExpressible("no amqp-tools program reports a queue's message count")

    def declare_exchange(
        self,
        name: str,
        type: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        raise NotExpressible("amqp-tools has no program to declare an exchange")

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        raise NotExpressible("amqp-tools binds only amqp-consume's own queue")

    def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        raise NotExpressible("amqp-tools has no program to bind an exchange")

    def delete_queue(self, name: str) -> None:
        self.connection.run("amqp-delete-queue", "--queue", name)

    def delete_exchange(self, name: str) -> None:
        raise NotExpressible("amqp-tools has no program to delete an exchange")

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: Props | None = None,
        mandatory: bool = False,
    ) -> None:
        if mandatory:
            raise NotExpressible(AmqpToolsAdapter.cannot["returns"])
        p = props or Props()
        unsupported = [
            name
            for name in (
                "correlation_id",
                "message_id",
                "type",
                "app_id",
                "priority",
                "expiration",
            )
            if getattr(p, name) is not None
        ]
        if unsupported:
            raise NotExpressible(f"amqp-publish cannot set {', '.join(unsupported)}")
        args = ["--exchange", exchange, "--routing-key", routing_key]
        if p.content_type is not None:
            args += ["--content-type", p.content_type]
        if p.reply_to is not None:
            args += ["--reply-to", p.reply_to]
        if p.delivery_mode == 2:
            args.append("--persistent")
        for key, value in p.headers.items():
            if not isinstance(value, str):
                raise NotExpressible("amqp-publish sets only string headers")
            args += ["--header", f"{key}: {value}"]
        # The body goes through stdin: any bytes, and empty is allowed.
        self.connection.run("amqp-publish", *args, stdin=body)

    def returned(self) -> list[Returned]:
        raise NotExpressible(AmqpToolsAdapter.cannot["returns"])

    def qos(self, prefetch_count: int, global_: bool = False) -> None:
        if global_:
            raise NotExpressible(AmqpToolsAdapter.cannot["qos_global"])
        # amqp-consume takes the prefetch count on its command line.
        self.prefetch_count = prefetch_count

    def consume(
        self,
        queue: str,
        auto_ack: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        if arguments:
            raise NotExpressible(AmqpToolsAdapter.cannot["consumer_arguments"])
        if self.consumer is not None:
            raise NotExpressible("amqp-consume consumes from one queue")
        self.consumer = Consumer(
            self.connection.url, queue, auto_ack, self.prefetch_count
        )
        self.connection.consumers.append(self.consumer)
        # amqp-consume does not print its consumer tag.
        return ""

    def next_delivery(self, timeout: float) -> Delivery | None:
        assert self.consumer is not None, "consume first"
        return self.consumer.next(timeout)

    def next_cancel(self, timeout: float) -> str | None:
        raise NotExpressible(AmqpToolsAdapter.cannot["cancel_notify"])

    def ack(self, delivery: Delivery) -> None:
        assert self.consumer is not None, "consume first"
        self.consumer.ack(delivery)

    def reject(self, delivery: Delivery, requeue: bool) -> None:
        raise NotExpressible(AmqpToolsAdapter.cannot["reject"])

    def nack(self, delivery: Delivery, requeue: bool, multiple: bool = False) -> None:
        raise NotExpressible(AmqpToolsAdapter.cannot["nack"])

    def tx_select(self) -> None:
        raise NotExpressible(AmqpToolsAdapter.cannot["tx"])

    tx_commit = tx_rollback = tx_select

    def get(self, queue: str) -> Delivery | None:
        out = self.connection.run("amqp-get", "--queue", queue)
        return None if out is None else BodyOnlyDelivery(out, "", "", False, Props())

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()


class Consumer:
    """One amqp-consume process."""

    def __init__(
        self, url: str, queue_name: str, auto_ack: bool, prefetch: int | None
    ) -> None:
        self.auto_ack = auto_ack
        self.tmp = tempfile.TemporaryDirectory(prefix="interop-amqp-consume-")
        self.fifo = os.path.join(self.tmp.name, "ack")
        os.mkfifo(self.fifo)
        # Print the body as one base64 line; without auto-ack, block until
        # ack() writes a line to the FIFO: amqp-consume acks when we exit.
        script = "base64 -w0; echo"
        if not auto_ack:
            script += f"; read -r _ < {shlex.quote(self.fifo)}"
        command = ["amqp-consume", "--url", url, "--queue", queue_name]
        if auto_ack:
            command.append("--no-ack")
        if prefetch is not None:
            command += ["--prefetch-count", str(prefetch)]
        command += ["--", "sh", "-c", script]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.deliveries: queue.Queue[Delivery | BaseException] = queue.Queue()
        self.unacked: list[Delivery] = []
        self.stopping = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None
        for line in self.process.stdout:
            body = base64.b64decode(line.strip())
            self.deliveries.put(BodyOnlyDelivery(body, "", "", False, Props()))
        stderr = self.process.stderr.read().decode(errors="replace")
        returncode = self.process.wait()
        if not self.stopping:
            self.deliveries.put(_failure("amqp-consume", returncode, stderr))

    def next(self, timeout: float) -> Delivery | None:
        try:
            got = self.deliveries.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(got, BaseException):
            self.deliveries.put(got)
            raise got
        if not self.auto_ack:
            self.unacked.append(got)
        return got

    def ack(self, delivery: Delivery) -> None:
        # The command of the oldest message is the one waiting on the FIFO.
        assert self.unacked and self.unacked[0] is delivery, (
            "amqp-consume acks in delivery order"
        )
        self.unacked.pop(0)
        deadline = time.monotonic() + OP_TIMEOUT_S
        while True:
            try:
                # Non-blocking: ENXIO until the command has opened the FIFO.
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        try:
            os.write(fd, b"ack\n")
        finally:
            os.close(fd)

    def stop(self) -> None:
        self.stopping = True
        if self.process.poll() is None:
            # The whole session: amqp-consume and the command it runs.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(OP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(OP_TIMEOUT_S)
        self.tmp.cleanup()
