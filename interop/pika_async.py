"""pika's asynchronous adapter (SelectConnection) behind the suite's interface.

The connection's IOLoop runs in a thread of its own. Each call is handed to
that thread (IOLoop.add_callback_threadsafe, pika's one thread-safe entry) and
waits, bounded, on a concurrent.futures.Future that pika's callbacks resolve.
A channel or connection the broker closes fails the calls still waiting with
pika's own exception (ChannelClosedByBroker, ConnectionClosedByBroker).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ClassVar

import pika
import pika.exceptions
import pika.spec

from interop.base import (
    ALL_FEATURES,
    OP_TIMEOUT_S,
    Delivery,
    Props,
    PublishNacked,
    Returned,
)
from interop.clients import (
    pika_delivery,
    pika_properties,
    pika_reply_code,
    pika_returned,
)


class PikaAsyncAdapter:
    name = "pika-async"
    features = ALL_FEATURES
    reopens_channel_after_error = False
    channel_error: ClassVar[tuple[type[BaseException], ...]] = (
        pika.exceptions.ChannelClosedByBroker,
    )
    connection_error: ClassVar[tuple[type[BaseException], ...]] = (
        pika.exceptions.AMQPConnectionError,
    )
    # pika's async adapter only passes the Basic.Nack to a callback.
    nack_error: ClassVar[tuple[type[BaseException], ...]] = (PublishNacked,)

    @staticmethod
    def missing() -> str | None:
        return None

    @staticmethod
    def reply_code(exc: BaseException) -> int:
        return pika_reply_code(exc)

    def connect(self, url: str, confirms: bool = False) -> PikaAsyncConnection:
        return PikaAsyncConnection(url, confirms)


class PikaAsyncConnection:
    def __init__(self, url: str, confirms: bool) -> None:
        params = pika.URLParameters(url)
        params.connection_attempts = 1
        params.socket_timeout = OP_TIMEOUT_S
        params.stack_timeout = OP_TIMEOUT_S
        self.confirms = confirms
        self.channels: list[PikaAsyncChannel] = []
        self.opened: Future[None] = Future()
        # Resolves with the reason (an exception object) once closed.
        self.closed: Future[BaseException] = Future()
        self.native = pika.SelectConnection(
            params,
            on_open_callback=lambda _c: self.opened.set_result(None),
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_close,
        )
        self.thread = threading.Thread(
            target=self.native.ioloop.start, name="pika-async-ioloop", daemon=True
        )
        self.thread.start()
        try:
            self.opened.result(OP_TIMEOUT_S)
        except BaseException:
            self._stop_loop()
            raise

    def _on_open_error(self, _connection: Any, error: Any) -> None:
        if not isinstance(error, BaseException):
            error = pika.exceptions.AMQPConnectionError(error)
        self.opened.set_exception(error)
        self.native.ioloop.stop()

    def _on_close(self, _connection: Any, reason: BaseException) -> None:
        for channel in self.channels:
            channel.fail(reason)
            # A consumer waiting in next_delivery learns of the close too.
            channel.deliveries.put(reason)
        if not self.closed.done():
            self.closed.set_result(reason)
        self.native.ioloop.stop()

    def _stop_loop(self) -> None:
        self.native.ioloop.add_callback_threadsafe(self.native.ioloop.stop)
        self.thread.join(OP_TIMEOUT_S)

    def call(
        self,
        start: Callable[[Future[Any]], None],
        pending: set[Future[Any]],
        timeout: float = OP_TIMEOUT_S,
    ) -> Any:
        """Run start(future) on the IOLoop thread; wait for the future."""
        if self.closed.done():
            raise self.closed.result()
        future: Future[Any] = Future()
        pending.add(future)
        future.add_done_callback(pending.discard)

        def run() -> None:
            try:
                start(future)
            except BaseException as exc:  # noqa: BLE001 (handed to the caller)
                if not future.done():
                    future.set_exception(exc)

        self.native.ioloop.add_callback_threadsafe(run)
        return future.result(timeout)

    @property
    def is_open(self) -> bool:
        return not self.closed.done() and self.native.is_open

    def channel(self) -> PikaAsyncChannel:
        channel = PikaAsyncChannel(self)
        self.channels.append(channel)
        return channel

    def close(self) -> None:
        if not self.closed.done():
            self.native.ioloop.add_callback_threadsafe(self._close_if_open)
            self.closed.result(OP_TIMEOUT_S)
        self.thread.join(OP_TIMEOUT_S)

    def _close_if_open(self) -> None:
        if self.native.is_open:
            self.native.close()


class PikaAsyncChannel:
    def __init__(self, connection: PikaAsyncConnection) -> None:
        self.connection = connection
        self.pending: set[Future[Any]] = set()
        # Deliveries, or the exception that closed the connection.
        self.deliveries: queue.Queue[Delivery | BaseException] = queue.Queue()
        self.getting: Future[Delivery | None] | None = None
        self.closing: Future[None] | None = None
        self.published = 0
        self.unconfirmed: dict[int, Future[None]] = {}
        # What the application's on-close callback was given.
        self.closed_reason: BaseException | None = None
        self.returns: list[Returned] = []
        self.cancelled: queue.Queue[str] = queue.Queue()

        def open_channel(future: Future[Any]) -> None:
            def on_open(channel: Any) -> None:
                channel.add_on_close_callback(self._on_close)
                channel.add_on_return_callback(
                    lambda _ch, method, properties, body: self.returns.append(
                        pika_returned(method, properties, body)
                    )
                )
                channel.add_on_cancel_callback(
                    lambda frame: self.cancelled.put(frame.method.consumer_tag)
                )
                channel.add_callback(
                    self._on_get_empty, [pika.spec.Basic.GetEmpty], one_shot=False
                )
                if connection.confirms:
                    channel.confirm_delivery(
                        self._on_confirm, lambda _frame: future.set_result(channel)
                    )
                else:
                    future.set_result(channel)

            connection.native.channel(on_open_callback=on_open)

        self.native = connection.call(open_channel, self.pending)

    # ------------------------------------------------ IOLoop-thread callbacks

    def fail(self, reason: BaseException) -> None:
        for future in list(self.pending):
            if not future.done():
                future.set_exception(reason)

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        self.closed_reason = reason
        if self.closing is not None and not self.closing.done():
            self.closing.set_result(None)
        self.fail(reason)

    def _on_get_empty(self, _frame: Any) -> None:
        if self.getting is not None and not self.getting.done():
            self.getting.set_result(None)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = [
            tag
            for tag in self.unconfirmed
            if tag == method.delivery_tag
            or (method.multiple and tag < method.delivery_tag)
        ]
        for tag in tags:
            future = self.unconfirmed.pop(tag)
            if isinstance(method, pika.spec.Basic.Ack):
                future.set_result(None)
            else:
                future.set_exception(PublishNacked(f"Basic.Nack for message {tag}"))

    # ------------------------------------------------------------- interface

    def _rpc(self, start: Callable[[Future[Any]], None]) -> Any:
        try:
            return self.connection.call(start, self.pending)
        except pika.exceptions.ChannelWrongStateError:
            # The broker's channel.close arrived before this call ran: an
            # asynchronous program learns why from its on-close callback.
            if self.closed_reason is not None:
                raise self.closed_reason from None
            raise

    @property
    def is_open(self) -> bool:
        return self.native.is_open

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
        return self._rpc(
            lambda f: self.native.queue_declare(
                name,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
                callback=lambda frame: f.set_result(frame.method.queue),
            )
        )

    def message_count(self, queue: str) -> int:
        return self._rpc(
            lambda f: self.native.queue_declare(
                queue,
                passive=True,
                callback=lambda frame: f.set_result(frame.method.message_count),
            )
        )

    def declare_exchange(
        self,
        name: str,
        type: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._rpc(
            lambda f: self.native.exchange_declare(
                name,
                type,
                durable=durable,
                auto_delete=auto_delete,
                arguments=arguments,
                callback=lambda _frame: f.set_result(None),
            )
        )

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._rpc(
            lambda f: self.native.queue_bind(
                queue,
                exchange,
                routing_key,
                arguments=arguments,
                callback=lambda _frame: f.set_result(None),
            )
        )

    def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._rpc(
            lambda f: self.native.exchange_bind(
                destination,
                source,
                routing_key,
                arguments=arguments,
                callback=lambda _frame: f.set_result(None),
            )
        )

    def delete_queue(self, name: str) -> None:
        self._rpc(
            lambda f: self.native.queue_delete(
                name, callback=lambda _frame: f.set_result(None)
            )
        )

    def delete_exchange(self, name: str) -> None:
        self._rpc(
            lambda f: self.native.exchange_delete(
                name, callback=lambda _frame: f.set_result(None)
            )
        )

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: Props | None = None,
        mandatory: bool = False,
    ) -> None:
        properties = pika_properties(props or Props())

        def start(future: Future[None]) -> None:
            self.native.basic_publish(
                exchange, routing_key, body, properties, mandatory=mandatory
            )
            if self.connection.confirms:
                # Confirms number the channel's publishes from 1.
                self.published += 1
                self.unconfirmed[self.published] = future
            else:
                future.set_result(None)

        self._rpc(start)

    def returned(self) -> list[Returned]:
        # Filled on the IOLoop thread; a confirmed publish's return came
        # before its ack, so it is here once publish() returned.
        returns, self.returns = self.returns, []
        return returns

    def qos(self, prefetch_count: int, global_: bool = False) -> None:
        self._rpc(
            lambda f: self.native.basic_qos(
                prefetch_count=prefetch_count,
                global_qos=global_,
                callback=lambda _frame: f.set_result(None),
            )
        )

    def consume(
        self,
        queue: str,
        auto_ack: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            self.deliveries.put(pika_delivery(method, properties, body))

        return self._rpc(
            lambda f: self.native.basic_consume(
                queue,
                on_message,
                auto_ack=auto_ack,
                arguments=arguments,
                callback=lambda frame: f.set_result(frame.method.consumer_tag),
            )
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
        def start(future: Future[None]) -> None:
            self.native.basic_ack(delivery.native)
            future.set_result(None)

        self._rpc(start)

    def reject(self, delivery: Delivery, requeue: bool) -> None:
        def start(future: Future[None]) -> None:
            self.native.basic_reject(delivery.native, requeue=requeue)
            future.set_result(None)

        self._rpc(start)

    def nack(self, delivery: Delivery, requeue: bool, multiple: bool = False) -> None:
        def start(future: Future[None]) -> None:
            self.native.basic_nack(delivery.native, multiple=multiple, requeue=requeue)
            future.set_result(None)

        self._rpc(start)

    def tx_select(self) -> None:
        self._rpc(
            lambda f: self.native.tx_select(callback=lambda _frame: f.set_result(None))
        )

    def tx_commit(self) -> None:
        self._rpc(
            lambda f: self.native.tx_commit(callback=lambda _frame: f.set_result(None))
        )

    def tx_rollback(self) -> None:
        self._rpc(
            lambda f: self.native.tx_rollback(
                callback=lambda _frame: f.set_result(None)
            )
        )

    def get(self, queue: str) -> Delivery | None:
        def start(future: Future[Delivery | None]) -> None:
            self.getting = future
            self.native.basic_get(
                queue,
                lambda _ch, method, properties, body: future.set_result(
                    pika_delivery(method, properties, body)
                ),
                auto_ack=True,
            )

        return self._rpc(start)

    def close(self) -> None:
        if not self.native.is_open or self.connection.closed.done():
            return

        def start(future: Future[None]) -> None:
            self.closing = future
            self.native.close()

        self._rpc(start)
