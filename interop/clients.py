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
    channel.declare_exchange(name, type, durable=, auto_delete=)
    channel.bind_queue(queue, exchange, routing_key)
    channel.delete_queue(name);  channel.delete_exchange(name)
    channel.publish(exchange, routing_key, body, props=None)
        with confirms=True it returns only once the broker acked the message
        (and raises on a nack)
    channel.qos(prefetch_count)
    channel.consume(queue, auto_ack=False) -> consumer tag
    channel.next_delivery(timeout) -> Delivery | None   (pumps the connection;
        raises the client's connection error once the broker closed it)
    channel.ack(delivery);  channel.get(queue) -> Delivery | None (auto-ack)
    channel.close();  channel.is_open
    adapter.missing() -> why the client cannot run here, or None
    adapter.features: what the client can do beyond the basic interface
        ("confirms", "exclusive", "passive", "arguments", "exchanges", "props")
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
        self, name: str, type: str, *, durable: bool = False, auto_delete: bool = False
    ) -> None:
        self.native.exchange_declare(
            name, type, durable=durable, auto_delete=auto_delete
        )

    def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        self.native.queue_bind(queue, exchange, routing_key)

    def delete_queue(self, name: str) -> None:
        self.native.queue_delete(name)

    def delete_exchange(self, name: str) -> None:
        self.native.exchange_delete(name)

    def publish(
        self, exchange: str, routing_key: str, body: bytes, props: Props | None = None
    ) -> None:
        p = props or Props()
        self.native.basic_publish(
            exchange,
            routing_key,
            body,
            pika.BasicProperties(
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
            ),
        )

    def qos(self, prefetch_count: int) -> None:
        self.native.basic_qos(prefetch_count=prefetch_count)

    def consume(self, queue: str, auto_ack: bool = False) -> str:
        def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            self.deliveries.append(pika_delivery(method, properties, body))

        return self.native.basic_consume(queue, on_message, auto_ack=auto_ack)

    def next_delivery(self, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        while not self.deliveries:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.connection.native.process_data_events(
                time_limit=min(remaining, PUMP_SLICE_S)
            )
        return self.deliveries.popleft()

    def ack(self, delivery: Delivery) -> None:
        self.native.basic_ack(delivery.native)

    def get(self, queue: str) -> Delivery | None:
        method, properties, body = self.native.basic_get(queue, auto_ack=True)
        if method is None:
            return None
        return pika_delivery(method, properties, body)

    def close(self) -> None:
        if self.native.is_open:
            self.native.close()


def pika_delivery(method: Any, properties: Any, body: bytes) -> Delivery:
    return Delivery(
        body=body,
        exchange=method.exchange,
        routing_key=method.routing_key,
        redelivered=method.redelivered,
        props=Props(
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
        ),
        native=method.delivery_tag,
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
        async def open_channel() -> Any:
            channel = self.native.channel(publisher_confirms=self.confirms)
            await channel.initialize()
            return channel

        return AioPikaChannel(self, self.run(open_channel()))

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
        self, name: str, type: str, *, durable: bool = False, auto_delete: bool = False
    ) -> None:
        self.run(
            self.native.declare_exchange(
                name, type, durable=durable, auto_delete=auto_delete
            )
        )

    def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        async def bind() -> None:
            q = await self.native.get_queue(queue, ensure=False)
            await q.bind(exchange, routing_key)

        self.run(bind())

    def delete_queue(self, name: str) -> None:
        self.run(self.native.queue_delete(name))

    def delete_exchange(self, name: str) -> None:
        self.run(self.native.exchange_delete(name))

    def publish(
        self, exchange: str, routing_key: str, body: bytes, props: Props | None = None
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
            await ex.publish(message, routing_key)

        self.run(publish())

    def qos(self, prefetch_count: int) -> None:
        self.run(self.native.set_qos(prefetch_count=prefetch_count))

    def consume(self, queue: str, auto_ack: bool = False) -> str:
        async def consume() -> str:
            if self.deliveries is None:
                self.deliveries = asyncio.Queue()
            deliveries = self.deliveries

            async def on_message(message: Any) -> None:
                deliveries.put_nowait(_aio_delivery(message))

            q = await self.native.get_queue(queue, ensure=False)
            return await q.consume(on_message, no_ack=auto_ack)

        return self.run(consume())

    def next_delivery(self, timeout: float) -> Delivery | None:
        assert self.deliveries is not None, "consume first"
        deliveries, closed = self.deliveries, self.connection.closed

        async def wait() -> Delivery | None:
            got = asyncio.ensure_future(deliveries.get())
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
    Producer and Consumer; channels are py-amqp channels."""

    name = "kombu"
    features = ALL_FEATURES
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

    def close(self) -> None:
        self.native.release()


class KombuChannel:
    def __init__(self, connection: KombuConnection, native: Any) -> None:
        self.connection = connection
        self.native = native
        self.deliveries: collections.deque[Delivery] = collections.deque()
        self.prefetch_count: int | None = None
        self.consumers: list[kombu.Consumer] = []

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
        self, name: str, type: str, *, durable: bool = False, auto_delete: bool = False
    ) -> None:
        kombu.Exchange(
            name, type, channel=self.native, durable=durable, auto_delete=auto_delete
        ).declare()

    def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        self._queue(queue).bind_to(exchange, routing_key)

    def delete_queue(self, name: str) -> None:
        self._queue(name).delete()

    def delete_exchange(self, name: str) -> None:
        kombu.Exchange(name, channel=self.native).delete()

    def publish(
        self, exchange: str, routing_key: str, body: bytes, props: Props | None = None
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
        kombu.Producer(self.native).publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
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

    def qos(self, prefetch_count: int) -> None:
        self.native.basic_qos(0, prefetch_count, False)

    def consume(self, queue: str, auto_ack: bool = False) -> str:
        def on_message(message: Any) -> None:
            self.deliveries.append(_kombu_delivery(message))

        consumer = kombu.Consumer(
            self.native,
            queues=[self._queue(queue)],
            on_message=on_message,
            no_ack=auto_ack,
            auto_declare=False,
        )
        consumer.consume()
        self.consumers.append(consumer)
        # kombu keeps the tag it generated per queue name.
        return consumer._active_tags[queue]

    def next_delivery(self, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        while not self.deliveries:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.connection.drain(min(remaining, PUMP_SLICE_S))
        return self.deliveries.popleft()

    def ack(self, delivery: Delivery) -> None:
        delivery.native.ack()

    def get(self, queue: str) -> Delivery | None:
        message = self._queue(queue).get(no_ack=True)
        return None if message is None else _kombu_delivery(message)

    def close(self) -> None:
        if self.native.is_open:
            self.native.close()


def _kombu_delivery(message: Any) -> Delivery:
    properties = message.properties
    info = message.delivery_info
    return Delivery(
        body=message.body,
        exchange=info.get("exchange", ""),
        routing_key=info.get("routing_key", ""),
        redelivered=bool(info.get("redelivered")),
        props=Props(
            content_type=message.content_type,
            correlation_id=properties.get("correlation_id"),
            reply_to=properties.get("reply_to"),
            message_id=properties.get("message_id"),
            type=properties.get("type"),
            app_id=properties.get("app_id"),
            delivery_mode=properties.get("delivery_mode"),
            priority=properties.get("priority"),
            expiration=properties.get("expiration"),
            headers=dict(message.headers or {}),
        ),
        native=message,
    )
