"""node amqplib behind the suite's interface.

Each connection is one `node interop/node/driver.js` process speaking JSON
lines: a request per call, a reply per request, and events (deliveries, a
channel or the connection closed). amqplib's errors come back as data and are
raised here as base.ReportedChannelError / ReportedConnectionError with
amqplib's reply code and class name.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import subprocess
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

from interop.base import (
    ALL_FEATURES,
    OP_TIMEOUT_S,
    Delivery,
    NotExpressible,
    Props,
    ReportedChannelError,
    ReportedConnectionError,
    ReportedError,
    ReportedNack,
    Returned,
)

NODE_DIR = Path(__file__).resolve().parent / "node"
DRIVER = NODE_DIR / "driver.js"


class AmqplibAdapter:
    name = "amqplib"
    features = ALL_FEATURES - {"tx"}
    cannot: ClassVar[dict[str, str]] = {
        "tx": "amqplib has no transactions (tx.select/commit/rollback)",
    }
    reopens_channel_after_error = False
    channel_error: ClassVar[tuple[type[BaseException], ...]] = (ReportedChannelError,)
    connection_error: ClassVar[tuple[type[BaseException], ...]] = (
        ReportedConnectionError,
    )
    nack_error: ClassVar[tuple[type[BaseException], ...]] = (ReportedNack,)

    @staticmethod
    def missing() -> str | None:
        if shutil.which("node") is None:
            return "node is not installed (Debian: apt-get install nodejs)"
        if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
            return "amqplib is not installed: npm ci --prefix interop/node"
        return None

    @staticmethod
    def reply_code(exc: BaseException) -> int:
        assert isinstance(exc, ReportedError), exc
        if exc.code is not None:
            return exc.code
        # A refused login has no .code, only the text: "Handshake terminated
        # by server: 403 (ACCESS-REFUSED) with message ...".
        match = re.search(r"(\d{3}) \([A-Z_-]+\)", exc.text)
        assert match is not None, f"no reply code in {exc!r}"
        return int(match.group(1))

    def connect(self, url: str, confirms: bool = False) -> AmqplibConnection:
        return AmqplibConnection(url, confirms)


class AmqplibConnection:
    def __init__(self, url: str, confirms: bool) -> None:
        self.process = subprocess.Popen(
            ["node", str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=NODE_DIR,
            env=dict(os.environ, NODE_PATH=str(NODE_DIR / "node_modules")),
        )
        self.lock = threading.Lock()
        self.next_id = 0
        self.waiting: dict[int, Future[Any]] = {}
        self.channels: dict[int, AmqplibChannel] = {}
        self.closed_error: ReportedConnectionError | None = None
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        try:
            self.request("connect", url=url, confirms=confirms)
        except BaseException:
            self._end()
            raise

    # ----------------------------------------------------------- the process

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            if "id" in message:
                future = self.waiting.pop(message["id"], None)
                if future is None:
                    continue
                if "error" in message:
                    future.set_exception(self._error(message["error"]))
                else:
                    future.set_result(message["result"])
            else:
                self._event(message)
        # The process ended: nothing more will answer.
        gone = ReportedConnectionError(
            None, "amqplib driver exited: " + "".join(self.stderr)[-500:], "exited"
        )
        for future in list(self.waiting.values()):
            if not future.done():
                future.set_exception(gone)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def _error(self, info: dict[str, Any]) -> ReportedError:
        """amqplib's error as an exception: a channel error when the broker
        closed a channel, a connection error when the connection is gone."""
        code, text, native = info["code"], info["message"], info["class"]
        if text == "message nacked":
            return ReportedNack(code, text, native)
        if self.closed_error is not None or "Connection closed" in text:
            return ReportedConnectionError(code, text, native)
        if (code is not None and code < 500) or "Channel closed" in text:
            return ReportedChannelError(code, text, native)
        return ReportedConnectionError(code, text, native)

    def _event(self, message: dict[str, Any]) -> None:
        kind = message["event"]
        if kind == "delivery":
            channel = self.channels.get(message["channel"])
            if channel is not None:
                channel.deliveries.put(_delivery(message))
        elif kind == "returned":
            channel = self.channels.get(message["channel"])
            if channel is not None:
                delivery = _delivery(message)
                channel.returns.append(
                    Returned(
                        reply_code=message["reply_code"],
                        reply_text=message["reply_text"],
                        exchange=delivery.exchange,
                        routing_key=delivery.routing_key,
                        body=delivery.body,
                        props=delivery.props,
                    )
                )
        elif kind == "cancelled":
            channel = self.channels.get(message["channel"])
            if channel is not None:
                channel.cancelled.put(message["tag"])
        elif kind == "channel_closed":
            channel = self.channels.get(message["channel"])
            if channel is not None:
                channel.closed = True
                error = message["error"]
                if error is not None and error["code"] is not None:
                    channel.closed_by = ReportedChannelError(
                        error["code"], error["message"], error["class"]
                    )
        elif kind == "connection_closed":
            error = message["error"] or {
                "code": None,
                "message": "connection closed",
                "class": "Error",
            }
            self.closed_error = ReportedConnectionError(
                error["code"], error["message"], error["class"]
            )
            for channel in self.channels.values():
                channel.closed = True
                channel.deliveries.put(self.closed_error)

    def request(self, op: str, timeout: float = OP_TIMEOUT_S, **args: Any) -> Any:
        future: Future[Any] = Future()
        with self.lock:
            self.next_id += 1
            ident = self.next_id
            self.waiting[ident] = future
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(json.dumps({"id": ident, "op": op, **args}))
                self.process.stdin.write("\n")
                self.process.stdin.flush()
            except OSError as exc:
                self.waiting.pop(ident, None)
                raise ReportedConnectionError(None, str(exc), "exited") from exc
        return future.result(timeout)

    def _end(self) -> None:
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(OP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(OP_TIMEOUT_S)

    # ------------------------------------------------------------- interface

    @property
    def is_open(self) -> bool:
        return self.closed_error is None and self.process.poll() is None

    def channel(self) -> AmqplibChannel:
        if self.closed_error is not None:
            raise self.closed_error
        ident = self.request("channel")
        channel = AmqplibChannel(self, ident)
        self.channels[ident] = channel
        return channel

    def close(self) -> None:
        try:
            if self.is_open:
                self.request("close")
        finally:
            self._end()


class AmqplibChannel:
    def __init__(self, connection: AmqplibConnection, ident: int) -> None:
        self.connection = connection
        self.ident = ident
        self.closed = False
        # The broker's channel.close, once amqplib reported it.
        self.closed_by: ReportedChannelError | None = None
        self.deliveries: queue.Queue[Delivery | BaseException] = queue.Queue()
        # Filled by the reader thread: a confirmed publish's return is read
        # before the reply to its publish request.
        self.returns: list[Returned] = []
        self.cancelled: queue.Queue[str] = queue.Queue()

    def _call(self, op: str, **args: Any) -> Any:
        try:
            return self.connection.request(op, channel=self.ident, **args)
        except ReportedChannelError as exc:
            # A call made after the broker's channel.close reached amqplib
            # fails with a bare "Channel closed": the broker's reason came
            # first, as the channel's 'error' event (as an application
            # learns it from its error listener).
            if exc.code is None and self.closed_by is not None:
                raise self.closed_by from exc
            raise

    @property
    def is_open(self) -> bool:
        return not self.closed

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
        ok = self._call(
            "declare_queue",
            name=name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            passive=passive,
            arguments=arguments,
        )
        return ok["queue"]

    def message_count(self, queue: str) -> int:
        return self._call("declare_queue", name=queue, passive=True)["message_count"]

    def declare_exchange(
        self,
        name: str,
        type: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._call(
            "declare_exchange",
            name=name,
            type=type,
            durable=durable,
            auto_delete=auto_delete,
            arguments=arguments,
        )

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._call(
            "bind_queue",
            queue=queue,
            exchange=exchange,
            routing_key=routing_key,
            arguments=arguments,
        )

    def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._call(
            "bind_exchange",
            destination=destination,
            source=source,
            routing_key=routing_key,
            arguments=arguments,
        )

    def delete_queue(self, name: str) -> None:
        self._call("delete_queue", name=name)

    def delete_exchange(self, name: str) -> None:
        self._call("delete_exchange", name=name)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: Props | None = None,
        mandatory: bool = False,
    ) -> None:
        p = props or Props()
        self._call(
            "publish",
            exchange=exchange,
            routing_key=routing_key,
            mandatory=mandatory,
            body=base64.b64encode(body).decode(),
            props={
                "content_type": p.content_type,
                "correlation_id": p.correlation_id,
                "reply_to": p.reply_to,
                "message_id": p.message_id,
                "type": p.type,
                "app_id": p.app_id,
                "delivery_mode": p.delivery_mode,
                "priority": p.priority,
                "expiration": p.expiration,
                "headers": p.headers,
            },
        )

    def returned(self) -> list[Returned]:
        returns, self.returns = self.returns, []
        return returns

    def qos(self, prefetch_count: int, global_: bool = False) -> None:
        self._call("qos", prefetch_count=prefetch_count, **{"global": global_})

    def consume(
        self,
        queue: str,
        auto_ack: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        return self._call(
            "consume", queue=queue, auto_ack=auto_ack, arguments=arguments
        )

    def next_cancel(self, timeout: float) -> str | None:
        try:
            return self.cancelled.get(timeout=timeout)
        except queue.Empty:
            return None

    def next_delivery(self, timeout: float) -> Delivery | None:
        try:
            got = self.deliveries.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(got, BaseException):
            self.deliveries.put(got)
            raise got
        return got

    def ack(self, delivery: Delivery) -> None:
        self._call("ack", tag=delivery.native)

    def reject(self, delivery: Delivery, requeue: bool) -> None:
        self._call("reject", tag=delivery.native, requeue=requeue)

    def nack(self, delivery: Delivery, requeue: bool, multiple: bool = False) -> None:
        self._call("nack", tag=delivery.native, requeue=requeue, multiple=multiple)

    def tx_select(self) -> None:
        raise NotExpressible(AmqplibAdapter.cannot["tx"])

    tx_commit = tx_rollback = tx_select

    def get(self, queue: str) -> Delivery | None:
        got = self._call("get", queue=queue)
        return None if got is None else _delivery(got)

    def close(self) -> None:
        if not self.closed and self.connection.is_open:
            self.closed = True
            self._call("close_channel")


def _delivery(message: dict[str, Any]) -> Delivery:
    props = message["props"]
    return Delivery(
        body=base64.b64decode(message["body"]),
        exchange=message["exchange"],
        routing_key=message["routing_key"],
        redelivered=message["redelivered"],
        props=Props(
            content_type=props["content_type"],
            correlation_id=props["correlation_id"],
            reply_to=props["reply_to"],
            message_id=props["message_id"],
            type=props["type"],
            app_id=props["app_id"],
            delivery_mode=props["delivery_mode"],
            priority=props["priority"],
            expiration=props["expiration"],
            headers=props["headers"],
        ),
        native=message["tag"],
    )
