"""Persistent messages in durable queues survive a restart of the broker
process, graceful or kill -9, with their properties and order; transient ones
do not; confirms come only once the message is on disk."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from helpers.server_process import Server

from amqpy.server.embedded import EmbeddedBroker
from amqpy.store.message_store import find_queue_dir

PERSISTENT = pika.BasicProperties(delivery_mode=2, headers={"h": 1}, priority=3)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


def connect(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", port, socket_timeout=5, connection_attempts=1
        )
    )


def stop(server: Server, how: str) -> None:
    server.process.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    code = server.wait_exit()
    if how == "SIGTERM":
        assert code == 0


def drain(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str):
    got = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            return got
        got.append((method, properties, body))


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_confirmed_persistent_messages_survive_restart(
    start: Callable[[], Server], how: str
) -> None:
    server = start()
    connection = connect(server.port)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("durable", durable=True)
    channel.queue_declare("transient-queue", durable=False)
    for index in range(200):
        properties = PERSISTENT if index % 2 == 0 else TRANSIENT
        channel.basic_publish("", "durable", f"m{index}".encode(), properties)
        channel.basic_publish("", "transient-queue", b"x", PERSISTENT)
    stop(server, how)

    restarted = start()
    restarted.wait_for_line(r"recovered 100 persistent messages")
    channel = connect(restarted.port).channel()
    got = drain(channel, "durable")
    assert [body for _, _, body in got] == [f"m{i}".encode() for i in range(0, 200, 2)]
    for method, properties, _ in got:
        assert method.redelivered is True
        assert properties.delivery_mode == 2
        assert properties.headers == {"h": 1}
        assert properties.priority == 3


def test_acked_messages_stay_gone_and_unacked_come_back(
    start: Callable[[], Server],
) -> None:
    server = start()
    connection = connect(server.port)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("q", durable=True)
    for index in range(10):
        channel.basic_publish("", "q", str(index).encode(), PERSISTENT)
    got = drain(channel, "q")
    # Ack 0-4 and 7 (of 0-9); leave the rest unacked when the broker dies.
    channel.basic_ack(got[4][0].delivery_tag, multiple=True)
    channel.basic_ack(got[7][0].delivery_tag)
    # A round trip after the acks; the acks are written before any later
    # confirm, so publish one more confirmed message as the barrier.
    channel.basic_publish("", "q", b"last", PERSISTENT)
    stop(server, "SIGKILL")

    restarted = start()
    channel = connect(restarted.port).channel()
    bodies = [body for _, _, body in drain(channel, "q")]
    assert bodies == [b"5", b"6", b"8", b"9", b"last"]


def test_purged_and_deleted_queues_do_not_come_back(
    start: Callable[[], Server],
) -> None:
    server = start()
    channel = connect(server.port).channel()
    channel.confirm_delivery()
    for name in ("purged", "deleted"):
        channel.queue_declare(name, durable=True)
        channel.basic_publish("", name, b"x", PERSISTENT)
    channel.queue_purge("purged")
    channel.queue_delete("deleted")
    channel.queue_declare("barrier", durable=True)
    channel.basic_publish("", "barrier", b"x", PERSISTENT)
    stop(server, "SIGKILL")

    restarted = start()
    channel = connect(restarted.port).channel()
    assert channel.queue_declare("purged", passive=True).method.message_count == 0
    assert channel.queue_declare("barrier", passive=True).method.message_count == 1
    channel.queue_declare("deleted", durable=True)
    assert channel.queue_declare("deleted", passive=True).method.message_count == 0


def test_no_ack_consumed_messages_are_gone_after_restart(
    start: Callable[[], Server],
) -> None:
    server = start()
    channel = connect(server.port).channel()
    channel.confirm_delivery()
    channel.queue_declare("q", durable=True)
    for index in range(5):
        channel.basic_publish("", "q", str(index).encode(), PERSISTENT)
    for _ in range(3):
        method, _, _ = channel.basic_get("q", auto_ack=True)
        assert method is not None
    channel.basic_publish("", "q", b"5", PERSISTENT)
    stop(server, "SIGKILL")

    restarted = start()
    channel = connect(restarted.port).channel()
    assert [body for _, _, body in drain(channel, "q")] == [b"3", b"4", b"5"]


def test_committed_transaction_survives_kill(start: Callable[[], Server]) -> None:
    server = start()
    channel = connect(server.port).channel()
    channel.queue_declare("q", durable=True)
    channel.tx_select()
    for index in range(3):
        channel.basic_publish("", "q", str(index).encode(), PERSISTENT)
    channel.tx_commit()  # commit-ok only once the messages are on disk
    channel.basic_publish("", "q", b"uncommitted", PERSISTENT)
    stop(server, "SIGKILL")

    restarted = start()
    channel = connect(restarted.port).channel()
    assert [body for _, _, body in drain(channel, "q")] == [b"0", b"1", b"2"]


def segment_usage(folder: Path) -> tuple[int, int]:
    """Message segments in a queue's folder, and the bytes of all its files."""
    segments, size = 0, 0
    for path in folder.glob("*.*"):
        try:
            size += path.stat().st_size
        except FileNotFoundError:
            continue  # deleted by the committer meanwhile
        segments += path.name.startswith("msgs.")
    return segments, size


def test_disk_use_stays_bounded_under_steady_publish_and_ack(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    segment = 65536
    broker = make_broker(store={"segment_max_bytes": segment})
    channel = connect(broker.port).channel()
    channel.queue_declare("q", durable=True)
    # declare-ok comes once the definitions (with the queue's folder) are saved.
    folder = find_queue_dir(Path(broker.config.store.data_dir), "/", "q")
    channel.basic_qos(prefetch_count=1000)
    deliveries = channel.consume("q", inactivity_timeout=10)
    padding = bytes(1016)
    total, batch = 20_000, 500
    worst = 0
    for start in range(0, total, batch):
        for seq in range(start, start + batch):
            channel.basic_publish("", "q", b"%08d" % seq + padding, PERSISTENT)
        for seq in range(start, start + batch):
            method, _, body = next(deliveries)
            assert method is not None, "no delivery within 10 s"
            assert body == b"%08d" % seq + padding
        channel.basic_ack(method.delivery_tag, multiple=True)
        worst = max(worst, segment_usage(folder)[1])

    # 20 MiB went through; at most a batch (0.5 MiB) was ever outstanding.
    print(f"most bytes on disk: {worst}")
    assert worst <= 24 * segment, worst
    # Once the committer has caught up, only the segment being written is left.
    deadline = time.monotonic() + 10
    while (usage := segment_usage(folder))[0] > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert usage[0] <= 1, usage
    assert usage[1] <= 2 * segment, usage
    channel.connection.close()


def test_deleted_queue_messages_never_come_back_in_its_successor(
    start: Callable[[], Server],
) -> None:
    server = start()
    channel = connect(server.port).channel()
    channel.confirm_delivery()
    channel.queue_declare("q", durable=True)
    channel.basic_publish("", "q", b"old", PERSISTENT)
    channel.queue_delete("q")
    channel.queue_declare("q", durable=True)  # a new folder, whatever the timing
    stop(server, "SIGKILL")

    restarted = start()
    channel = connect(restarted.port).channel()
    assert channel.queue_declare("q", passive=True).method.message_count == 0


def test_aio_pika_confirmed_messages_survive_kill(start: Callable[[], Server]) -> None:
    import asyncio

    import aio_pika

    server = start()
    url = f"amqp://guest:guest@127.0.0.1:{server.port}/"

    async def publish() -> None:
        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue("aq", durable=True)
        for index in range(50):
            await channel.default_exchange.publish(
                aio_pika.Message(
                    str(index).encode(),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers={"n": index},
                ),
                routing_key="aq",
            )
        # Every publish above returned only after its confirm.
        await connection.close()

    asyncio.run(asyncio.wait_for(publish(), 30))
    stop(server, "SIGKILL")
    restarted = start()

    async def consume() -> list[tuple[bytes, object, bool]]:
        connection = await aio_pika.connect(
            f"amqp://guest:guest@127.0.0.1:{restarted.port}/"
        )
        channel = await connection.channel()
        queue = await channel.declare_queue("aq", durable=True)
        got = []
        while (message := await queue.get(fail=False)) is not None:
            got.append((message.body, message.headers.get("n"), message.redelivered))
            await message.ack()
        await connection.close()
        return got

    got = asyncio.run(asyncio.wait_for(consume(), 30))
    assert got == [(str(i).encode(), i, True) for i in range(50)]
