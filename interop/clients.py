"""One small synchronous adapter per stock AMQP 0-9-1 client.

The scenarios (interop/test_*.py) are written once against this interface and
run through every adapter. Nothing here imports amqpy: the adapters talk to
whatever broker URL they are given. This module holds pika (blocking),
aio-pika and kombu; pika's async adapter, node amqplib and the amqp-tools
command-line programs have their own modules; interop/adapters.py lists them.

Interface (every method blocks for a bounded time; a step the client cannot
express raises base.NotExpressible):

    adapter.connect(url, confirms=False) -> connection
    connection.channel() -> channel;  connection.close();  connection.is_open
    channel.declare_queue(name="", durable=, exclusive=, auto_delete=, passive=,
        arguments=None) -> the queue's name (server-named when name is "")
    channel.message_count(queue)                  (passive declare)
    channel.declare_exchange(name, type, durable=, auto_delete=, arguments=None)
    channel.bind_queue(queue, exchange, routing_key, arguments=None)
    channel.bind_exchange(destination, source, routing_key, arguments=None)
    channel.delete_queue(name);  channel.delete_exchange(name)
    channel.publish(exchange, routing_key, body, props=None, mandatory=False)
        with confirms=True it returns only once the broker acked the message
        (and raises on a nack)
    channel.returned() -> [Returned]: the messages the broker returned
        (basic.return) so far, oldest first, and forgets them; complete for
        what was published with confirms=True
    channel.qos(prefetch_count, global_=False)
    channel.consume(queue, auto_ack=False, arguments=None) -> consumer tag
    channel.next_delivery(timeout) -> Delivery | None   (pumps the connection;
        raises the client's connection error once the broker closed it)
    channel.next_cancel(timeout) -> the consumer tag of a basic.cancel the
        broker sent (a deleted queue), or None       (pumps the connection)
    channel.ack(delivery);  channel.get(queue) -> Delivery | None (auto-ack)
    channel.reject(delivery, requeue);  channel.nack(delivery, requeue,
        multiple=False)
    channel.tx_select();  channel.tx_commit();  channel.tx_rollback()
    channel.close();  channel.is_open
    adapter.missing() -> why the client cannot run here, or None
    adapter.features: what the client can do beyond the basic interface
        (base.ALL_FEATURES); adapter.cannot[feature]: why it cannot
    adapter.reopens_channel_after_error: whether the client reopens a channel
        the broker closed (py-amqp does)
    adapter.channel_error / adapter.connection_error: the exception type(s) a
        channel.close / connection.close from the broker (or a refused login)
        raises;  adapter.reply_code(exc) -> its AMQP reply code
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from typing import Any, ClassVar

import aio_pika
import aio_pika.exceptions
import aiormq.channel
import aiormq.exceptions
import amqp.exceptions
import kombu
import pika
import pika.exceptions

from interop.base import (
    ALL_FEATURES,
    OP_TIMEOUT_S,
    PUMP_SLICE_S,
    BodyOnlyDelivery,
    Delivery,
    NotExpressible,
    Props,
    Returned,
)

__all__ = ["BodyOnlyDelivery", "Delivery", "NotExpressible", "Props"]


# --------------------------------------------------------------------- pika


class PikaAdapter:
    name = "pika"
    features = ALL_FEATURES
    reopens_channel_after_error = False
    channel_error: ClassVar[tuple[type[BaseException], ...]] = (
        pika.exceptions.ChannelClosedByBroker,
    )
    connection_error: ClassVar[tuple[type[BaseException], ...]] = (
        pika.exceptions.AMQPConnectionError,
    )
    nack_error: ClassVar[tuple[type[BaseException], ...]] = (pika.exceptions.NackError,)

    @staticmethod
    def missing() -> str | None:
        return None

    @staticmethod
    def reply_code(exc: BaseException) -> int:
        return pika_reply_code(exc)

    def connect(self, url: str, confirms: bool = False) -> PikaConnection:
        return PikaConnection(url, confirms)


def pika_reply_code(exc: BaseException) -> int:
    """The reply code in pika's exceptions: ChannelClosedByBroker and
    ConnectionClosedByBroker carry it; a refused login is a
    ProbableAuthenticationError wrapping the broker's ConnectionClosedByBroker."""
    if isinstance(
        exc,
        pika.exceptions.ChannelClosedByBroker
        | pika.exceptions.ConnectionClosedByBroker,
    ):
        return exc.reply_code
    for arg in exc.args:
        if isinstance(arg, BaseException):
            return pika_reply_code(arg)
        # ProbableAuthenticationError / ProbableAccessDeniedError keep the
        # broker's close only as text: 'ConnectionClosedByBroker: (403) "..."'.
        if isinstance(arg, str) and (match := re.search(r"\((\d{3})\)", arg)):
            return int(match.group(1))
    raise AssertionError(f"no reply code in {exc!r}")


class PikaConnection:
    def __init__(self, url: str, confirms: bool) -> None:
        params = pika.URLParameters(url)
        params.connection_attempts = 1
        params.socket_timeout = OP_TIMEOUT_S
        params.stack_timeout = OP_TIMEOUT_S
        params.blocked_connection_timeout = OP_TIMEOUT_S
        self.native = pika.BlockingConnection(params)
        self.confirms = confirms

    @property
    def is_open(self) -> bool:
        return self.native.is_open

    def channel(self) -> PikaChannel:
        channel = self.native.channel()
        if self.confirms:
            channel.confirm_delivery()
        return PikaChannel(self, channel)

    def close(self) -> None:
        if self.native.is_open:
            self.native.close()


class PikaChannel:
    def __init__(self, connection: PikaConnection, native: Any) -> None:
        self.connection = connection
        self.native = native
        self.deliveries: collections.deque[Delivery] = collections.deque()
        self.returns: list[Returned] = []
        self.cancelled: collections.deque[str] = collections.deque()
        native.add_on_cancel_callback(
            lambda frame: self.cancelled.append(frame.method.consumer_tag)
        )

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
        ok = self.native.queue_declare(
            name,
            passive=passive,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        return ok.method.queue

    def message_count(self, queue: str) -> int:
        return self.native.queue_declare(queue, passive=True).method.message_count

    def declare_exchange(
        self,
        name: str,
        type: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.native.exchange_declare(
            name, type, durable=durable, auto_delete=auto_delete, arguments=arguments
        )

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.native.queue_bind(queue, exchange, routing_key, arguments=arguments)

    def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.native.exchange_bind(destination, source, routing_key, arguments)

    def delete_queue(self, name: str) -> None:
        self.native.queue_delete(name)

    def delete_exchange(self, name: str) -> None:
        self.native.exchange_delete(name)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: Props | None = None,
        mandatory: bool = False,
    ) -> None:
        try:
            self.native.basic_publish(
                exchange,
                routing_key,
                body,
                pika_properties(props or Props()),
                mandatory=mandatory,
            )
        except pika.exceptions.UnroutableError as exc:
            # pika's blocking channel in confirm mode raises for a returned
            # message once the broker acked it.
            self.returns.extend(
                pika_returned(m.method, m.properties, m.body) for m in exc.messages
            )

    def returned(self) -> list[Returned]:
        returns, self.returns = self.returns, []
        return returns

    def qos(self, prefetch_count: int, global_: bool = False) -> None:
        self.native.basic_qos(prefetch_count=prefetch_count, global_qos=global_)

    def consume(
        self,
        queue: str,
        auto_ack: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            self.deliveries.append(pika_delivery(method, properties, body))

        return self.native.basic_consume(
            queue, on_message, auto_ack=auto_ack, arguments=arguments
        )

    def _pump(self, ready: collections.deque[Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.connection.native.process_data_events(
                time_limit=min(remaining, PUMP_SLICE_S)
            )
        return ready.popleft()

    def next_delivery(self, timeout: float) -> Delivery | None:
        return self._pump(self.deliveries, timeout)

    def next_cancel(self, timeout: float) -> str | None:
        return self._pump(self.cancelled, timeout)

    def ack(self, delivery: Delivery) -> None:
        self.native.basic_ack(delivery.native)

    def reject(self, delivery: Delivery, requeue: bool) -> None:
        self.native.basic_reject(delivery.native, requeue=requeue)

    def nack(self, delivery: Delivery, requeue: bool, multiple: bool = False) -> None:
        self.native.basic_nack(delivery.native, multiple=multiple, requeue=requeue)

    def tx_select(self) -> None:
        self.native.tx_select()

    def tx_commit(self) -> None:
        self.native.tx_commit()

    def tx_rollback(self) -> None:
        self.native.tx_rollback()

    def get(self, queue: str) -> Delivery | None:
        method, properties, body = self.native.basic_get(queue, auto_ack=True)
        if method is None:
            return None
        return pika_delivery(method, properties, body)

    def close(self) -> None:
        if self.native.is_open:
            self.native.close()


def pika_properties(p: Props) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=p.content_type,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        message_id=p.message_id,
        type=p.type,
        app_id=p.app_id,
        delivery_mode=p.delivery_mode,
        priority=p.priority,
        expiration=p.expiration,
        headers=p.headers or None,
    )


def pika_props(properties: Any) -> Props:
    return Props(
        content_type=properties.content_type,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        message_id=properties.message_id,
        type=properties.type,
        app_id=properties.app_id,
        delivery_mode=properties.delivery_mode,
        priority=properties.priority,
        expiration=properties.expiration,
        headers=dict(properties.headers or {}),
    )


def pika_delivery(method: Any, properties: Any, body: bytes) -> Delivery:
    return Delivery(
        body=body,
        exchange=method.exchange,
        routing_key=method.routing_key,
        redelivered=method.redelivered,
        props=pika_props(properties),
        native=method.delivery_tag,
    )


def pika_returned(method: Any, properties: Any, body: bytes) -> Returned:
    return Returned(
        reply_code=method.reply_code,
        reply_text=method.reply_text,
        exchange=method.exchange,
        routing_key=method.routing_key,
        body=body,
        props=pika_props(properties),
    )


# ----------------------------------------------------------------- aio-pika

_AIORMQ_CODES = {cls: code for code, cls in aiormq.channel.EXCEPTION_MAPPING.items()}


class AioPikaAdapter:
    """aio-pika driven from synchronous code: each connection owns an
    asyncio.Runner (one event loop) and every call is `runner.run(...)` bounded
    by asyncio.wait_for. Between calls the loop is idle; the broker's frames
    wait in the socket until the next call."""

    name = "aio-pika"
    features = ALL_FEATURES
    reopens_channel_after_error = False
    channel_error: ClassVar[tuple[type[BaseException], ...]] = (
        aiormq.exceptions.ChannelClosed,
    )
    connection_error: ClassVar[tuple[type[BaseException], ...]] = (
        aiormq.exceptions.AMQPConnectionError,
        # A vhost refused at connection.open: aiormq expected open-ok and
        # raises this, without the broker's reply code or text.
        aiormq.exceptions.InvalidFrameError,
        ConnectionError,
    )
    nack_error: ClassVar[tuple[type[BaseException], ...]] = (
        aio_pika.exceptions.DeliveryError,
    )

    @staticmethod
    def missing() -> str | None:
        return None

    @staticmethod
    def reply_code(exc: BaseException) -> int:
        if exc.args and isinstance(exc.args[0], int):
            return exc.args[0]
        for arg in exc.args:
            # A refused login: ProbableAuthenticationError wraps the
            # broker's close method (or its text).
            code = getattr(arg, "reply_code", None)
            if isinstance(code, int):
                return code
        for cls in type(exc).__mro__:
            if cls in _AIORMQ_CODES:
                return _AIORMQ_CODES[cls]
        raise AssertionError(f"no reply code in {exc!r}")

    def connect(self, url: str, confirms: bool = False) -> AioPikaConnection:
        return AioPikaConnection(url, confirms)


class AioPikaConnection:
    def __init__(self, url: str, confirms: bool) -> None:
        self.runner = asyncio.Runner()
        self.confirms = confirms
        # Set (with the broker's reason) when the connection closes.
        self.closed_error: BaseException | None = None
        try:
            self.closed = self.runner.run(self._event())
            self.native = self.run(aio_pika.connect(url, timeout=OP_TIMEOUT_S))
        except BaseException:
            self.runner.close()
            raise
        self.native.close_callbacks.add(self._on_close)

    @staticmethod
    async def _event() -> asyncio.Event:
        return asyncio.Event()

    def _on_close(self, _sender: Any, exc: BaseException | None) -> None:
        self.closed_error = exc
        self.closed.set()

    def run(self, coro: Any, timeout: float = OP_TIMEOUT_S) -> Any:
        return self.runner.run(asyncio.wait_for(coro, timeout))

    @property
    def is_open(self) -> bool:
        return not (self.closed.is_set() or self.native.is_closed)

    def channel(self) -> AioPikaChannel:
        async def open_channel() -> AioPikaChannel:
            native = self.native.channel(publisher_confirms=self.confirms)
            await native.initialize()
            channel = AioPikaChannel(self, native)
            # aio-pika's return_callbacks get the message without the reply
            # code, and it has no hook for the broker's basic.cancel: both
            # are on its aiormq channel.
            underlay = await native.get_underlay_channel()
            underlay.on_return_callbacks.add(channel.on_return)
            cancel_callbacks = getattr(underlay, "on_consumer_cancel_callbacks", None)
            if cancel_callbacks is not None:  # absent from older aiormq
                cancel_callbacks.add(channel.on_cancel)
                channel.cancelled = asyncio.Queue()
            return channel

        return self.run(open_channel())

    def close(self) -> None:
        try:
            if not self.native.is_closed:
                self.run(self.native.close())
        finally:
            self.runner.close()


class AioPikaChannel:
    def __init__(self, connection: AioPikaConnection, native: Any) -> None:
        self.connection = connection
        self.native = native
        self.run = connection.run
        self.deliveries: asyncio.Queue[Delivery] | None = None
        self.cancelled: asyncio.Queue[str] | None = None
        self.returns: list[Returned] = []
        self.transaction: Any = None

    def on_return(self, message: Any) -> None:
        frame = message.delivery
        self.returns.append(
            Returned(
                reply_code=frame.reply_code,
                reply_text=frame.reply_text,
                exchange=frame.exchange,
                routing_key=frame.routing_key,
                body=message.body,
                props=_aio_delivery(
                    aio_pika.IncomingMessage(message, no_ack=True)
                ).props,
            )
        )

    def on_cancel(self, frame: Any) -> None:
        assert self.cancelled is not None
        self.cancelled.put_nowait(frame.consumer_tag)

    @property
    def is_open(self) -> bool:
        return not self.native.is_closed

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
        queue = self.run(
            self.native.declare_queue(
                name or None,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                passive=passive,
                arguments=arguments,
            )
        )
        return queue.name

    def message_count(self, queue: str) -> int:
        q = self.run(self.native.declare_queue(queue, passive=True))
        return q.declaration_result.message_count

    def declare_exchange(
        self,
        name: str,
        type: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.run(
            self.native.declare_exchange(
                name,
                type,
                durable=durable,
                auto_delete=auto_delete,
                arguments=arguments,
            )
        )

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        async def bind() -> None:
            q = await self.native.get_queue(queue, ensure=False)
            await q.bind(exchange, routing_key, arguments=arguments)

        self.run(bind())

    def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        async def bind() -> None:
            dest = await self.native.get_exchange(destination, ensure=False)
            await dest.bind(source, routing_key, arguments=arguments)

        self.run(bind())

    def delete_queue(self, name: str) -> None:
        self.run(self.native.queue_delete(name))

    def delete_exchange(self, name: str) -> None:
        self.run(self.native.exchange_delete(name))

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: Props | None = None,
        mandatory: bool = False,
    ) -> None:
        p = props or Props()
        message = aio_pika.Message(
            body,
            content_type=p.content_type,
            correlation_id=p.correlation_id,
            reply_to=p.reply_to,
            message_id=p.message_id,
            type=p.type,
            app_id=p.app_id,
            delivery_mode=p.delivery_mode,
            priority=p.priority,
            expiration=int(p.expiration) / 1000 if p.expiration else None,
            headers=p.headers or None,
        )

        async def publish() -> None:
            if exchange:
                ex = await self.native.get_exchange(exchange, ensure=False)
            else:
                ex = self.native.default_exchange
            await ex.publish(message, routing_key, mandatory=mandatory)

        self.run(publish())

    def returned(self) -> list[Returned]:
        returns, self.returns = self.returns, []
        return returns

    def qos(self, prefetch_count: int, global_: bool = False) -> None:
        self.run(self.native.set_qos(prefetch_count=prefetch_count, global_=global_))

    def consume(
        self,
        queue: str,
        auto_ack: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        async def consume() -> str:
            if self.deliveries is None:
                self.deliveries = asyncio.Queue()
            deliveries = self.deliveries

            async def on_message(message: Any) -> None:
                deliveries.put_nowait(_aio_delivery(message))

            q = await self.native.get_queue(queue, ensure=False)
            return await q.consume(on_message, no_ack=auto_ack, arguments=arguments)

        return self.run(consume())

    def next_delivery(self, timeout: float) -> Delivery | None:
        assert self.deliveries is not None, "consume first"
        return self._wait(self.deliveries, timeout)

    def next_cancel(self, timeout: float) -> str | None:
        if self.cancelled is None:
            raise NotExpressible(
                "this aiormq has no hook for the broker's basic.cancel "
                "(on_consumer_cancel_callbacks)"
            )
        return self._wait(self.cancelled, timeout)

    def _wait(self, ready: asyncio.Queue[Any], timeout: float) -> Any:
        closed = self.connection.closed

        async def wait() -> Any:
            got = asyncio.ensure_future(ready.get())
            ended = asyncio.ensure_future(closed.wait())
            done, pending = await asyncio.wait(
                {got, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if got in done:
                return got.result()
            if ended in done and self.connection.closed_error is not None:
                raise self.connection.closed_error
            return None

        return self.run(wait(), timeout=timeout + OP_TIMEOUT_S)

    def ack(self, delivery: Delivery) -> None:
        self.run(delivery.native.ack())

    def reject(self, delivery: Delivery, requeue: bool) -> None:
        self.run(delivery.native.reject(requeue=requeue))

    def nack(self, delivery: Delivery, requeue: bool, multiple: bool = False) -> None:
        self.run(delivery.native.nack(multiple=multiple, requeue=requeue))

    def tx_select(self) -> None:
        # aio-pika refuses a transaction on a channel with publisher confirms.
        self.transaction = self.native.transaction()
        self.run(self.transaction.select())

    def tx_commit(self) -> None:
        self.run(self.transaction.commit())

    def tx_rollback(self) -> None:
        self.run(self.transaction.rollback())

    def get(self, queue: str) -> Delivery | None:
        async def get() -> Any:
            q = await self.native.get_queue(queue, ensure=False)
            return await q.get(no_ack=True, fail=False)

        message = self.run(get())
        return None if message is None else _aio_delivery(message)

    def close(self) -> None:
        if not self.native.is_closed:
            self.run(self.native.close())


def _aio_delivery(message: Any) -> Delivery:
    return Delivery(
        body=message.body,
        exchange=message.exchange or "",
        routing_key=message.routing_key or "",
        redelivered=bool(message.redelivered),
        props=Props(
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            message_id=message.message_id,
            type=message.type,
            app_id=message.app_id,
            delivery_mode=int(message.delivery_mode) if message.delivery_mode else None,
            priority=message.priority,
            expiration=_aio_expiration(message),
            headers=dict(message.headers or {}),
        ),
        native=message,
    )


def _aio_expiration(message: Any) -> str | None:
    # aio-pika turns the expiration property into seconds; back to the wire's
    # milliseconds text.
    seconds = message.expiration
    return None if seconds is None else str(round(seconds * 1000))


# -------------------------------------------------------------------- kombu


class KombuAdapter:
    """kombu on its py-amqp transport, through kombu's Queue, Exchange,
    Producer and Consumer; channels are py-amqp channels (transactions are
    theirs: kombu has none of its own)."""

    name = "kombu"
    features = ALL_FEATURES - {"nack"}
    cannot: ClassVar[dict[str, str]] = {
        "nack": "py-amqp has no basic.nack: kombu's Message.reject and "
        "Message.requeue send basic.reject",
    }
    # py-amqp answers a broker's channel.close with close-ok and then reopens
    # the same channel object (Channel._do_revive) before raising.
    reopens_channel_after_error = True
    channel_error: ClassVar[tuple[type[BaseException], ...]] = (
        amqp.exceptions.ChannelError,
    )
    # py-amqp counts 403 among channel errors, also when it refuses a login.
    connection_error: ClassVar[tuple[type[BaseException], ...]] = (
        amqp.exceptions.ConnectionError,
        amqp.exceptions.AccessRefused,
    )
    nack_error: ClassVar[tuple[type[BaseException], ...]] = (
        amqp.exceptions.MessageNacked,
    )

    @staticmethod
    def missing() -> str | None:
        return None

    @staticmethod
    def reply_code(exc: BaseException) -> int:
        assert isinstance(exc, amqp.exceptions.AMQPError)
        return exc.reply_code

    def connect(self, url: str, confirms: bool = False) -> KombuConnection:
        return KombuConnection(url, confirms)


class KombuConnection:
    def __init__(self, url: str, confirms: bool) -> None:
        if url.startswith("amqp://"):
            url = "pyamqp://" + url.removeprefix("amqp://")
        self.native = kombu.Connection(
            url,
            connect_timeout=OP_TIMEOUT_S,
            transport_options={
                "confirm_publish": confirms,
                "read_timeout": OP_TIMEOUT_S,
                "write_timeout": OP_TIMEOUT_S,
            },
        )
        self.native.connect()
        # Consumer tags the broker cancelled (basic.cancel), oldest first.
        self.cancelled: list[str] = []

    @property
    def is_open(self) -> bool:
        return bool(self.native.connected)

    def channel(self) -> KombuChannel:
        return KombuChannel(self, self.native.channel())

    def drain(self, timeout: float) -> None:
        try:
            self.native.drain_events(timeout=timeout)
        except TimeoutError:
            pass
        except amqp.exceptions.ConsumerCancelled as exc:
            # What py-amqp (and so kombu's Consumer, which registers no
            # on_cancel) raises for the broker's basic.cancel.
            self.cancelled.append(exc.reply_text)

    def close(self) -> None:
        self.native.release()


class KombuChannel:
    def __init__(self, connection: KombuConnection, native: Any) -> None:
        self.connection = connection
        self.native = native
        self.deliveries: collections.deque[Delivery] = collections.deque()
        self.prefetch_count: int | None = None
        self.consumers: list[kombu.Consumer] = []
        self.tags: set[str] = set()
        self.returns: list[Returned] = []

    @property
    def is_open(self) -> bool:
        return bool(self.native.is_open)

    def _queue(self, name: str, **kwargs: Any) -> kombu.Queue:
        return kombu.Queue(name, channel=self.native, no_declare=True, **kwargs)

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
        queue = self._queue(
            name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            queue_arguments=arguments,
        )
        queue.queue_declare(passive=passive)
        return queue.name

    def message_count(self, queue: str) -> int:
        return self._queue(queue).queue_declare(passive=True).message_count

    def declare_exchange(
        self,
        name: str,
        type: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        kombu.Exchange(
            name,
            type,
            channel=self.native,
            durable=durable,
            auto_delete=auto_delete,
            arguments=arguments,
        ).declare()

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._queue(queue).bind_to(exchange, routing_key, arguments=arguments)

    def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        kombu.Exchange(destination, channel=self.native).bind_to(
            source, routing_key, arguments=arguments
        )

    def delete_queue(self, name: str) -> None:
        self._queue(name).delete()

    def delete_exchange(self, name: str) -> None:
        kombu.Exchange(name, channel=self.native).delete()

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: Props | None = None,
        mandatory: bool = False,
    ) -> None:
        p = props or Props()
        extra = {
            key: value
            for key, value in (
                ("message_id", p.message_id),
                ("type", p.type),
                ("app_id", p.app_id),
            )
            if value is not None
        }
        kombu.Producer(self.native, on_return=self._on_return).publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            mandatory=mandatory,
            content_type=p.content_type or "application/octet-stream",
            content_encoding="binary",
            headers=p.headers or None,
            correlation_id=p.correlation_id,
            reply_to=p.reply_to,
            delivery_mode=p.delivery_mode,
            priority=p.priority or 0,
            expiration=int(p.expiration) / 1000 if p.expiration else None,
            serializer=None,
            **extra,
        )

    def _on_return(
        self, exc: Any, exchange: str, routing_key: str, message: Any
    ) -> None:
        self.returns.append(
            Returned(
                reply_code=exc.reply_code,
                reply_text=exc.reply_text,
                exchange=exchange,
                routing_key=routing_key,
                body=message.body,
                props=_kombu_props(message.properties),
            )
        )

    def returned(self) -> list[Returned]:
        returns, self.returns = self.returns, []
        return returns

    def qos(self, prefetch_count: int, global_: bool = False) -> None:
        self.native.basic_qos(0, prefetch_count, global_)

    def consume(
        self,
        queue: str,
        auto_ack: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        def on_message(message: Any) -> None:
            self.deliveries.append(_kombu_delivery(message))

        consumer = kombu.Consumer(
            self.native,
            queues=[self._queue(queue, consumer_arguments=arguments)],
            on_message=on_message,
            no_ack=auto_ack,
            auto_declare=False,
        )
        consumer.consume()
        self.consumers.append(consumer)
        # kombu keeps the tag it generated per queue name.
        tag = consumer._active_tags[queue]
        self.tags.add(tag)
        return tag

    def next_delivery(self, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        while not self.deliveries:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.connection.drain(min(remaining, PUMP_SLICE_S))
        return self.deliveries.popleft()

    def next_cancel(self, timeout: float) -> str | None:
        cancelled = self.connection.cancelled
        deadline = time.monotonic() + timeout
        while True:
            for tag in cancelled:
                if tag in self.tags:
                    cancelled.remove(tag)
                    return tag
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.connection.drain(min(remaining, PUMP_SLICE_S))

    def ack(self, delivery: Delivery) -> None:
        delivery.native.ack()

    def reject(self, delivery: Delivery, requeue: bool) -> None:
        delivery.native.reject(requeue=requeue)

    def nack(self, delivery: Delivery, requeue: bool, multiple: bool = False) -> None:
        raise NotExpressible(KombuAdapter.cannot["nack"])

    def tx_select(self) -> None:
        self.native.tx_select()

    def tx_commit(self) -> None:
        self.native.tx_commit()

    def tx_rollback(self) -> None:
        self.native.tx_rollback()

    def get(self, queue: str) -> Delivery | None:
        message = self._queue(queue).get(no_ack=True)
        return None if message is None else _kombu_delivery(message)

    def close(self) -> None:
        if self.native.is_open:
            self.native.close()


def _kombu_props(properties: dict[str, Any]) -> Props:
    """Props from py-amqp's property dict (kombu's Message.properties, less
    the content type and headers kombu keeps apart)."""
    return Props(
        content_type=properties.get("content_type"),
        correlation_id=properties.get("correlation_id"),
        reply_to=properties.get("reply_to"),
        message_id=properties.get("message_id"),
        type=properties.get("type"),
        app_id=properties.get("app_id"),
        delivery_mode=properties.get("delivery_mode"),
        priority=properties.get("priority"),
        expiration=properties.get("expiration"),
        headers=dict(properties.get("application_headers") or {}),
    )


def _kombu_delivery(message: Any) -> Delivery:
    info = message.delivery_info
    props = _kombu_props(message.properties)
    props.content_type = message.content_type
    props.headers = dict(message.headers or {})
    return Delivery(
        body=message.body,
        exchange=info.get("exchange", ""),
        routing_key=info.get("routing_key", ""),
        redelivered=bool(info.get("redelivered")),
        props=props,
        native=message,
    )
