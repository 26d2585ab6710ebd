"""Load: many clients publishing and consuming at once lose nothing and get
every message exactly once; a consumer that stops reading holds up nobody and
does not make the broker buffer without bound."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import pika
from helpers.amqp_client import AmqpClient
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import header as pamqp_header

from amqpy.server.connection import ConnectionHandler
from amqpy.server.embedded import EmbeddedBroker

CONNECTIONS = 200
PER_QUEUE = 10  # each client publishes this many to its own and to the shared queue
LOAD_TIMEOUT_S = 20.0


def load_body(client: int, queue: str, index: int) -> bytes:
    """Distinct bodies of varied sizes, so the checksum means something."""
    head = f"{client}:{queue}:{index}:".encode()
    return head + hashlib.sha256(head).digest() * (1 + (client * 7 + index) % 40)


def digest(bodies: list[bytes]) -> str:
    total = hashlib.sha256()
    for body in sorted(bodies):
        total.update(hashlib.sha256(body).digest())
    return total.hexdigest()


async def run_load(url: str) -> tuple[list[bytes], list[bytes]]:
    """Every client consumes its own queue and the shared one while it
    publishes to both; returns (published, received) bodies."""
    published: list[bytes] = []
    received: list[bytes] = []
    expected = CONNECTIONS * PER_QUEUE * 2
    all_received = asyncio.Event()
    connections: list[aio_pika.abc.AbstractConnection] = []
    connecting = asyncio.Semaphore(50)  # no need for a SYN storm

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        received.append(message.body)
        await message.ack()
        if len(received) >= expected:
            all_received.set()

    async def client(number: int) -> None:
        async with connecting:
            connection = await aio_pika.connect(url)
        connections.append(connection)
        channel = await connection.channel()  # publisher confirms are on
        await channel.set_qos(prefetch_count=10)
        own = await channel.declare_queue(f"own.{number}", exclusive=True)
        shared = await channel.declare_queue("shared")
        await own.consume(on_message)
        await shared.consume(on_message)
        bodies = [
            load_body(number, queue, index)
            for index in range(PER_QUEUE)
            for queue in (own.name, "shared")
        ]
        published.extend(bodies)
        confirmations = await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(body),
                    routing_key=body.split(b":")[1].decode(),
                )
                for body in bodies
            )
        )
        assert all(isinstance(c, aiormq.spec.Basic.Ack) for c in confirmations)

    try:
        async with asyncio.timeout(LOAD_TIMEOUT_S):
            await asyncio.gather(*(client(number) for number in range(CONNECTIONS)))
            await all_received.wait()
    finally:
        await asyncio.gather(
            *(connection.close() for connection in connections),
            return_exceptions=True,
        )
    return published, received


def test_many_connections_publish_and_consume_exactly_once(
    broker: EmbeddedBroker,
) -> None:
    started = time.monotonic()
    published, received = asyncio.run(run_load(broker.url))
    assert len(published) == CONNECTIONS * PER_QUEUE * 2
    assert len(received) == len(published)
    duplicates = [body for body, count in Counter(received).items() if count > 1]
    assert duplicates == []
    assert set(received) == set(published)
    assert digest(received) == digest(published)
    assert sum(map(len, received)) == sum(map(len, published))
    assert time.monotonic() - started < LOAD_TIMEOUT_S

    # Nothing is left behind: every message was acked, every own queue went
    # with its connection.
    def state() -> tuple[int, int, list[str]]:
        vhost = broker.server.broker.vhosts["/"]
        shared = vhost.queues["shared"]
        return shared.message_count, shared.unacked_count, sorted(vhost.queues)

    deadline = time.monotonic() + 5
    while broker.call(state) != (0, 0, ["shared"]):
        assert time.monotonic() < deadline, broker.call(state)
        time.sleep(0.02)


# -- a consumer that never reads -----------------------------------------------

HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
BIG = 16 * 1024
SLOW_MESSAGES = 600  # ~10 MB: more than the kernel's socket buffers can hide


def find_handler(broker: EmbeddedBroker, client_port: int) -> ConnectionHandler:
    prefix = f"127.0.0.1:{client_port} "

    def lookup() -> ConnectionHandler:
        (handler,) = [c for c in broker.server.connections if c.name.startswith(prefix)]
        return handler

    return broker.call(lookup)


def test_slow_consumer_does_not_stall_publisher(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(
        limits={
            "outbox_high_water_bytes": HIGH_WATER,
            "outbox_low_water_bytes": LOW_WATER,
        }
    )
    # The slow consumer: a tiny receive window, consumes without acks (so no
    # prefetch limit applies), then reads nothing.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", broker.port))
    slow = AmqpClient(sock).open()
    try:
        slow.open_channel(1)
        slow.send_method(1, commands.Queue.Declare(queue="slow"))
        slow.expect(commands.Queue.DeclareOk, 1)
        slow.send_method(1, commands.Basic.Consume(queue="slow", no_ack=True))
        slow.expect(commands.Basic.ConsumeOk, 1)
        handler = find_handler(broker, sock.getsockname()[1])

        run_publisher_and_fast_pair(broker, handler)

        # Once it reads again, the slow consumer gets everything, in order.
        deadline = time.monotonic() + 20
        for index in range(SLOW_MESSAGES):
            frame = slow.read(timeout=max(deadline - time.monotonic(), 0.1))
            assert isinstance(frame.value, commands.Basic.Deliver), frame
            header = slow.expect(pamqp_header.ContentHeader, 1)
            body = b""
            while len(body) < header.body_size:
                body += slow.expect(pamqp_body.ContentBody, 1).value
            assert body[:8] == b"%08d" % index
    finally:
        slow.close()


def run_publisher_and_fast_pair(broker: EmbeddedBroker, handler: Any) -> None:
    parameters = pika.ConnectionParameters("127.0.0.1", broker.port)
    publisher = pika.BlockingConnection(parameters)
    consumer = pika.BlockingConnection(parameters)
    try:
        publishing = publisher.channel()
        publishing.confirm_delivery()
        publishing.queue_declare("fast")
        fast: list[bytes] = []
        consumer.channel().basic_consume(
            "fast", lambda _ch, _m, _p, body: fast.append(body), auto_ack=True
        )
        big = b"x" * (BIG - 8)
        most_pending = 0
        started = time.monotonic()
        for index in range(SLOW_MESSAGES):
            # Both publishes are confirmed: the publisher is never held up.
            publishing.basic_publish("", "slow", b"%08d" % index + big)
            publishing.basic_publish("", "fast", b"%d" % index)
            if index % 20 == 0:
                consumer.process_data_events(time_limit=0)
                most_pending = max(
                    most_pending, broker.call(lambda: handler.protocol.pending_output)
                )
        publish_time = time.monotonic() - started
        deadline = time.monotonic() + 10
        while len(fast) < SLOW_MESSAGES:
            assert time.monotonic() < deadline, f"fast consumer got {len(fast)}"
            consumer.process_data_events(time_limit=0.02)
        assert fast == [b"%d" % index for index in range(SLOW_MESSAGES)]
        assert publish_time < 15

        def slow_state() -> tuple[int, int]:
            queue = broker.server.broker.vhosts["/"].queues["slow"]
            return queue.message_count, handler.protocol.pending_output

        waiting, pending = broker.call(slow_state)
        # The broker stopped taking messages for the slow consumer: they wait
        # in the queue instead of piling up in its outbound buffer.
        assert waiting > 0
        one_delivery = BIG + 200
        assert max(most_pending, pending) <= HIGH_WATER + one_delivery
    finally:
        for connection in (publisher, consumer):
            if connection.is_open:
                connection.close()


def test_consumer_full_of_unacked_does_not_block_its_queue_for_others(
    broker: EmbeddedBroker,
) -> None:
    """A consumer that takes its prefetch's worth and never acks leaves the
    rest of the queue to the other consumer."""
    parameters = pika.ConnectionParameters("127.0.0.1", broker.port)
    hoarder = pika.BlockingConnection(parameters)
    worker = pika.BlockingConnection(parameters)
    try:
        hoarding = hoarder.channel()
        hoarding.basic_qos(prefetch_count=5)
        hoarding.queue_declare("work")
        hoarded: list[bytes] = []
        hoarding.basic_consume("work", lambda _c, _m, _p, body: hoarded.append(body))
        done: list[bytes] = []

        def work(channel: Any, method: Any, _p: Any, body: bytes) -> None:
            done.append(body)
            channel.basic_ack(method.delivery_tag)

        worker.channel().basic_consume("work", work)
        publishing = worker.channel()
        for index in range(200):
            publishing.basic_publish("", "work", b"%d" % index)
        deadline = time.monotonic() + 10
        while len(done) + len(hoarded) < 200:
            assert time.monotonic() < deadline, (len(done), len(hoarded))
            worker.process_data_events(time_limit=0.01)
            hoarder.process_data_events(time_limit=0)
        assert (len(hoarded), len(done)) == (5, 195)
        assert sorted(done + hoarded) == sorted(b"%d" % i for i in range(200))
    finally:
        for connection in (hoarder, worker):
            if connection.is_open:
                connection.close()
