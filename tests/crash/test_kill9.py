"""kill -9 at random moments while a publisher with confirms and a consumer
work a durable queue. After every restart, each confirmed message that was
not certainly acked is there exactly once, in order; nothing that was never
published, or was certainly acked, is. Damaged segment tails are cut and
everything before the damage survives.

The kill moments come from AMQPY_CRASH_SEED (printed; set it to replay)."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pika
import pika.exceptions
import pytest
from helpers.server_process import Server

from amqpy.store.message_store import find_queue_dir
from amqpy.store.queue_log import FILE_HEADER, FORMAT_VERSION, RECORD_HEAD

pytestmark = pytest.mark.crash

SEED = int(os.environ.get("AMQPY_CRASH_SEED", "20221110"))
QUEUE = "crash.q"
PERSISTENT = pika.BasicProperties(delivery_mode=2, headers={"app": "crash-test"})
# Small segments, so that the kills also land in rollovers and deletions.
CONFIG = "[store]\nsegment_max_bytes = 4096\n"
Channel = pika.adapters.blocking_connection.BlockingChannel


@pytest.fixture(scope="module", autouse=True)
def announce_seed() -> None:
    print(f"AMQPY_CRASH_SEED={SEED}")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def start(tmp_path: Path, data_dir: Path) -> Iterator[Callable[[], Server]]:
    config = tmp_path / "amqpy.toml"
    config.write_text(CONFIG)
    servers: list[Server] = []

    def start_server() -> Server:
        server = Server(
            "--port", "0", "--data-dir", str(data_dir), "--config", str(config)
        )
        servers.append(server)
        server.wait_listening()
        return server

    yield start_server
    for server in servers:
        server.kill()


def connect(port: int) -> Channel:
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            port,
            socket_timeout=5,
            blocked_connection_timeout=5,
            connection_attempts=1,
        )
    )
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(QUEUE, durable=True)
    return channel


def body_of(seq: int) -> bytes:
    """The sequence number, then a length that varies (records straddle
    segment boundaries), derived from seq alone so any body can be checked."""
    return f"{seq:08d}|".encode() + bytes([65 + seq % 26]) * (seq * 37 % 600)


def seq_of(body: bytes) -> int:
    return int(body[:8])


def drain(channel: Channel, queue: str = QUEUE) -> list[tuple[bool, bytes]]:
    """(redelivered, body) of every ready message, left unacked."""
    got = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            return got
        assert properties.delivery_mode == 2
        assert properties.headers == {"app": "crash-test"}
        got.append((method.redelivered, body))


@attrs.define
class Ledger:
    """What the client knows, and what it cannot know, about the queue."""

    published: set[int] = attrs.Factory(set)  # sent, confirmed or not
    confirmed: set[int] = attrs.Factory(set)
    # An ack is on disk once a later publish on the same channel is
    # confirmed (the broker writes in order); until then it may be lost.
    acked: set[int] = attrs.Factory(set)
    acked_unsure: set[int] = attrs.Factory(set)
    next_seq: int = 0

    def check(self, channel: Channel, where: str) -> None:
        """Everything left in the queue after a restart; then acks it all."""
        got = drain(channel)
        seqs = [seq_of(body) for _, body in got]
        context = f"{where} (AMQPY_CRASH_SEED={SEED})"
        for redelivered, body in got:
            assert body == body_of(seq_of(body)), context
            assert redelivered, context  # recovered: may have been delivered
        assert len(seqs) == len(set(seqs)), f"duplicates {context}: {seqs}"
        assert seqs == sorted(seqs), f"out of order {context}: {seqs}"
        assert not set(seqs) - self.published, f"never published {context}"
        assert not set(seqs) & self.acked, f"acked, came back {context}"
        missing = self.confirmed - self.acked - self.acked_unsure - set(seqs)
        assert not missing, f"confirmed, lost {context}: {sorted(missing)}"
        if got:
            channel.basic_ack(0, multiple=True)
            self.acked_unsure.update(seqs)

    def work(self, channel: Channel, rng: random.Random, killed: threading.Event):
        """Publish (each confirmed before the next) and consume, until the
        broker dies under us."""
        last_consumed = -1
        while not killed.is_set():
            seq = self.next_seq
            self.next_seq += 1
            self.published.add(seq)
            channel.basic_publish("", QUEUE, body_of(seq), PERSISTENT)
            self.confirmed.add(seq)
            self.acked |= self.acked_unsure
            self.acked_unsure.clear()
            if rng.random() < 0.7:
                method, _, body = channel.basic_get(QUEUE, auto_ack=False)
                if method is not None:
                    consumed = seq_of(body)
                    assert body == body_of(consumed)
                    assert consumed > last_consumed, "out of order"
                    last_consumed = consumed
                    channel.basic_ack(method.delivery_tag)
                    self.acked_unsure.add(consumed)


def test_kill9_at_random_moments_loses_no_confirmed_message(
    start: Callable[[], Server],
) -> None:
    kills = random.Random(SEED)
    work = random.Random(SEED + 1)
    ledger = Ledger()
    deadline = time.monotonic() + 35
    for round_number in range(5):
        server = start()
        channel = connect(server.port)
        ledger.check(channel, f"after kill {round_number}")

        killed = threading.Event()

        def kill(server: Server = server, killed: threading.Event = killed) -> None:
            server.process.send_signal(signal.SIGKILL)
            killed.set()

        killer = threading.Timer(kills.uniform(0.1, 1.0), kill)
        killer.start()
        try:
            ledger.work(channel, work, killed)
        except (pika.exceptions.StreamLostError, ConnectionError):
            # The socket died under us. Anything else (a channel or
            # connection closed by the broker) is a bug, kill or not.
            if not killed.wait(2.0):
                raise
        finally:
            killer.cancel()
        assert server.wait_exit() == -signal.SIGKILL
        assert time.monotonic() < deadline, "too slow to bound the test"
        print(
            f"round {round_number}: {len(ledger.confirmed)} confirmed, "
            f"{len(ledger.acked)} acked, {len(ledger.acked_unsure)} acks unsure"
        )

    assert len(ledger.confirmed) > 50  # the rounds did real work
    server = start()
    channel = connect(server.port)
    ledger.check(channel, "after the last kill")
    # A clean stop keeps the acks too: nothing comes back.
    stop(server, channel)
    server = start()
    assert drain(connect(server.port)) == []


def record_ends(segment: bytes) -> list[int]:
    """Where each record of a segment ends (docs/storage-format.md)."""
    ends, offset = [], FILE_HEADER.size
    while offset < len(segment):
        size, _ = RECORD_HEAD.unpack_from(segment, offset)
        offset += RECORD_HEAD.size + size
        ends.append(offset)
    assert offset == len(segment)
    return ends


@pytest.mark.parametrize("case", range(3))
def test_a_damaged_segment_tail_is_cut_and_what_precedes_it_kept(
    start: Callable[[], Server], data_dir: Path, case: int
) -> None:
    rng = random.Random(f"{SEED}-{case}")
    server = start()
    channel = connect(server.port)
    count = 60
    for seq in range(count):
        channel.basic_publish("", QUEUE, body_of(seq), PERSISTENT)  # confirmed
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit()

    queue_dir = find_queue_dir(data_dir, "/", QUEUE)
    segments = sorted(queue_dir.glob("msgs.*"))
    assert len(segments) >= 3
    newest = segments[-1]
    segment = newest.read_bytes()
    ends = record_ends(segment)
    # Cut anywhere past the header, then flip bytes just before the cut.
    cut = rng.randrange(FILE_HEADER.size + 1, len(segment))
    region = range(max(FILE_HEADER.size, cut - 8), cut)
    flips = rng.sample(region, min(3, len(region)))
    damaged = bytearray(segment[:cut])
    for offset in flips:
        damaged[offset] ^= rng.randrange(1, 256)
    newest.write_bytes(damaged)
    intact = sum(1 for end in ends if end <= min(flips))
    expected = list(range(count - len(ends) + intact))
    context = f"cut at {cut}, flips {flips} (AMQPY_CRASH_SEED={SEED})"

    server = start()
    server.wait_for_line(re.escape(newest.name) + r".*cutting the tail off")
    server.wait_for_line(rf"recovered {len(expected)} persistent messages")
    channel = connect(server.port)
    got = drain(channel)
    assert [body for _, body in got] == [body_of(seq) for seq in expected], context
    assert all(redelivered for redelivered, _ in got)

    # The log goes on: a message written after the repair survives a kill.
    channel.basic_publish("", QUEUE, body_of(1000), PERSISTENT)
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit()
    server = start()
    got = drain(connect(server.port))
    assert [body for _, body in got] == [
        *(body_of(seq) for seq in expected),
        body_of(1000),
    ], context


def stop(server: Server, channel: Channel) -> None:
    channel.connection.close()
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_a_deleted_queue_whose_folder_outlived_a_crash_comes_back_empty(
    start: Callable[[], Server], data_dir: Path, tmp_path: Path
) -> None:
    server = start()
    channel = connect(server.port)
    for seq in range(3):
        channel.basic_publish("", QUEUE, body_of(seq), PERSISTENT)
    stop(server, channel)
    shutil.copytree(data_dir / "msgs", tmp_path / "msgs-before-delete")

    server = start()
    channel = connect(server.port)
    channel.queue_delete(QUEUE)
    stop(server, channel)
    # A kill -9 after the delete was saved, before the folder was removed.
    shutil.rmtree(data_dir / "msgs")
    shutil.copytree(tmp_path / "msgs-before-delete", data_dir / "msgs")

    server = start()
    channel = connect(server.port)  # declares the queue again
    assert channel.queue_declare(QUEUE, passive=True).method.message_count == 0
    channel.basic_publish("", QUEUE, body_of(10), PERSISTENT)
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit()

    server = start()
    assert [body for _, body in drain(connect(server.port))] == [body_of(10)]


def test_a_newer_log_file_stops_the_broker_before_anything_is_repaired(
    start: Callable[[], Server], data_dir: Path
) -> None:
    server = start()
    channel = connect(server.port)
    for name in ("first", "second"):
        channel.queue_declare(name, durable=True)
        channel.basic_publish("", name, body_of(1), PERSISTENT)
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit()
    # The first queue has a torn tail (recovery would cut it); the second
    # queue's segment is from a newer amqpy.
    torn = find_queue_dir(data_dir, "/", "first") / "msgs.0000000001"
    with open(torn, "ab") as file:
        file.write(b"\x00\x00\x01")
    newer = find_queue_dir(data_dir, "/", "second") / "msgs.0000000001"
    newer.write_bytes(
        FILE_HEADER.pack(b"AMQPYMSG", FORMAT_VERSION + 1)
        + newer.read_bytes()[FILE_HEADER.size :]
    )
    before = {path: path.read_bytes() for path in (data_dir / "msgs").rglob("*.*")}

    refused = Server("--port", "0", "--data-dir", str(data_dir))
    try:
        refused.wait_for_line(
            rf"amqpy: .*{re.escape(str(newer))} has format version "
            rf"{FORMAT_VERSION + 1}"
        )
        assert refused.wait_exit() != 0
    finally:
        refused.kill()
    after = {path: path.read_bytes() for path in (data_dir / "msgs").rglob("*.*")}
    assert after == before
