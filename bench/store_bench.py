"""Store benchmarks (not tests): recovery time, and disk use under steady
persistent publish and ack.

    .venv/bin/python bench/store_bench.py recovery --messages 1000000
    .venv/bin/python bench/store_bench.py steady --messages 1000000
    .venv/bin/python bench/store_bench.py declares --existing 5000 --declares 500

`recovery` writes N persistent 1 KiB messages into a durable queue's log with
the store's own writer (no broker), then starts `amqpy server` on that folder
and times it until it listens (recovery happens before that), and reports its
memory. `steady` starts a broker and runs an aio-pika publisher with confirms
(a window of unconfirmed messages) and an acking consumer through one durable
queue, sampling the size of the data folder every second. `declares` creates
`--existing` durable exchanges, then times `--declares` durable queue declares
one after another (each waits for its declare-ok, which waits for the
definitions to be on disk) while another connection publishes persistent
messages with confirms, one at a time, and reports both latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pamqp import commands

from amqpy.store.definitions import DefinitionsStore
from amqpy.store.message_store import MessageStore

QUEUE = "bench.durable"
BODY = b"x" * 1024
PROPERTIES = commands.Basic.Properties(delivery_mode=2).marshal()


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], int, float]:
    started = time.monotonic()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "amqpy",
            "server",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "info",
            "--no-management",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if match := re.search(r"listening on [\d.]+:(\d+)", line):
            return process, int(match.group(1)), time.monotonic() - started
    raise RuntimeError("broker did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def recovery(count: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="amqpy-bench-") as tmp:
        data_dir = Path(tmp)
        DefinitionsStore(data_dir).save(
            {
                "vhosts": [{"name": "/"}],
                "exchanges": [],
                "queues": [
                    {
                        "name": QUEUE,
                        "vhost": "/",
                        "durable": True,
                        "auto_delete": False,
                        "arguments": {},
                    }
                ],
                "bindings": [],
            }
        )
        store = MessageStore(data_dir, 8 * 1024 * 1024)
        log = store.open_log("bench")
        for seq in range(1, count + 1):
            log.append(seq, "", QUEUE, PROPERTIES, BODY)
            if seq % 10000 == 0:
                store.take_batch()[0].run()
        store.take_batch()[0].run()
        disk = folder_bytes(data_dir)
        # Baseline start time on an empty folder, to subtract interpreter start.
        with tempfile.TemporaryDirectory() as empty:
            process, _, empty_s = start_server(Path(empty))
            process.terminate()
            process.wait(30)
        process, _, start_s = start_server(data_dir)
        memory = rss_mb(process.pid)
        process.terminate()
        process.wait(60)
        return {
            "messages": count,
            "disk_mb": round(disk / 2**20, 1),
            "start_s": round(start_s, 2),
            "empty_start_s": round(empty_s, 2),
            "recovery_s": round(start_s - empty_s, 2),
            "rss_mb": round(memory, 1),
        }


async def steady(count: int, window: int) -> dict[str, object]:
    import aio_pika

    with tempfile.TemporaryDirectory(prefix="amqpy-bench-") as tmp:
        data_dir = Path(tmp)
        process, port, _ = start_server(data_dir)
        url = f"amqp://guest:guest@127.0.0.1:{port}/"
        samples: list[int] = []
        try:
            publisher = await aio_pika.connect(url)
            consumer = await aio_pika.connect(url)
            pub_channel = await publisher.channel(publisher_confirms=True)
            con_channel = await consumer.channel()
            await con_channel.set_qos(prefetch_count=window)
            queue = await con_channel.declare_queue(QUEUE, durable=True)
            received = 0
            done = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal received
                await message.ack()
                received += 1
                if received == count:
                    done.set()

            await queue.consume(on_message)

            async def sampler() -> None:
                while not done.is_set():
                    samples.append(folder_bytes(data_dir))
                    await asyncio.sleep(1)

            sampling = asyncio.create_task(sampler())
            started = time.monotonic()
            pending: set[asyncio.Future[object]] = set()
            for _ in range(count):
                pending.add(
                    asyncio.ensure_future(
                        pub_channel.default_exchange.publish(
                            aio_pika.Message(BODY, delivery_mode=2), routing_key=QUEUE
                        )
                    )
                )
                if len(pending) >= window:
                    _, pending = await asyncio.wait(
                        pending, return_when=asyncio.FIRST_COMPLETED
                    )
            await asyncio.gather(*pending)
            await asyncio.wait_for(done.wait(), 600)
            elapsed = time.monotonic() - started
            await sampling
            await publisher.close()
            await consumer.close()
            # Let the last acks reach the disk and the segments go.
            deadline = time.monotonic() + 10
            while folder_bytes(data_dir / "msgs") > 2 * 8 * 2**20 and (  # noqa: ASYNC110
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.2)
            final = folder_bytes(data_dir)
        finally:
            process.terminate()
            process.wait(30)
        return {
            "messages": count,
            "msgs_per_s": round(count / elapsed),
            "disk_mb_max": round(max(samples) / 2**20, 1),
            "disk_mb_end": round(final / 2**20, 2),
        }


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "p99_ms": round(
            ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] * 1000, 2
        ),
    }


async def declares(existing: int, count: int) -> dict[str, Any]:
    import aio_pika

    with tempfile.TemporaryDirectory(prefix="amqpy-bench-") as folder:
        server, port, _ = start_server(Path(folder) / "data")
        try:
            url = f"amqp://guest:guest@127.0.0.1:{port}/"
            declaring = await aio_pika.connect(url)
            publishing = await aio_pika.connect(url)
            channel = await declaring.channel()
            started = time.perf_counter()
            for number in range(existing):
                await channel.declare_exchange(f"bench.x{number}", durable=True)
            setup_s = time.perf_counter() - started
            confirms = await publishing.channel(publisher_confirms=True)
            target = await confirms.declare_queue("bench.confirms", durable=True)
            declare_times: list[float] = []
            confirm_times: list[float] = []
            done = asyncio.Event()

            async def publish() -> None:
                message = aio_pika.Message(b"x" * 16, delivery_mode=2)
                while not done.is_set():
                    sent = time.perf_counter()
                    await confirms.default_exchange.publish(message, target.name)
                    confirm_times.append(time.perf_counter() - sent)

            publisher = asyncio.create_task(publish())
            for number in range(count):
                sent = time.perf_counter()
                await channel.declare_queue(f"bench.q{number}", durable=True)
                declare_times.append(time.perf_counter() - sent)
            done.set()
            await publisher
            await declaring.close()
            await publishing.close()
        finally:
            server.terminate()
            server.wait()
    return {
        "existing": existing,
        "declares": count,
        "setup_declares_per_s": round(existing / setup_s) if existing else None,
        "declare": _percentiles(declare_times),
        "declares_per_s": round(count / sum(declare_times)),
        "confirm": _percentiles(confirm_times),
        "confirms": len(confirm_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["recovery", "steady", "declares"])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--existing", type=int, default=5000)
    parser.add_argument("--declares", type=int, default=500)
    args = parser.parse_args()
    if args.what == "recovery":
        result = recovery(args.messages)
    elif args.what == "declares":
        result = asyncio.run(declares(args.existing, args.declares))
    else:
        result = asyncio.run(steady(args.messages, args.window))
    print(json.dumps({"case": args.what, **result}))  # noqa: T201


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
