"""Soak benchmark (not a test): minutes of steady publish/consume with
confirms at a fixed rate, the broker's memory sampled all along.

    .venv/bin/python bench/soak.py                     # 5 minutes
    .venv/bin/python bench/soak.py --minutes 30 --rate 2000 --pairs 8
    .venv/bin/python bench/soak.py --transient --size 16384

It starts `python -m amqpy server --port 0 --no-management` on a throw-away
data folder (or takes --url, with --broker-pid for its memory), then runs
`--pairs` publisher/consumer pairs, each on its own durable queue: the
publisher (confirm mode) publishes persistent messages at its share of
`--rate` on a fixed schedule, the consumer (prefetch `--prefetch`) acks each
one. Every message carries its sequence number and send time. Every
`--interval` seconds a row is printed: elapsed time, broker RSS (from
/proc/PID/status), publish-to-delivery and publish-to-confirm latency
percentiles over that interval, and the running counts published, confirmed
and consumed. At the end publishing stops, everything outstanding must be
confirmed and consumed, and each queue's sequence numbers must have arrived
exactly once. The last lines say whether memory stayed flat (the RSS slope
after the first minute) and list loss, duplicates and nacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pamqp import commands

# The lean client and broker process live beside us in load.py.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (
    Client,
    Confirms,
    broker_process,
    connect,
    raise_file_limit,
    rss_kb,
)

HEAD = struct.Struct(">HIq")  # pair, sequence number, send time (ns)
TICK_S = 0.005  # how often a publisher looks at its schedule
WARM_UP_S = 60.0  # left out of the memory slope (caches, first segments)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for an interval without samples."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return round(sorted_values[index], 2)


def cell(value: float | None, width: int, decimals: int = 2) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{decimals}f}"


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    count = len(points)
    mean_t = sum(t for t, _ in points) / count
    mean_v = sum(v for _, v in points) / count
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if not spread:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


@dataclass
class Pair:
    """One publisher and one consumer on queue soak.<number>."""

    number: int
    rate: float
    publisher: Client | None = None
    consumer: Client | None = None
    confirms: Confirms = field(default_factory=Confirms)
    sent_at: dict[int, int] = field(default_factory=dict)  # seq -> ns
    published: int = 0
    seen: bytearray = field(default_factory=bytearray)  # times each seq arrived
    consumed: int = 0
    duplicates: int = 0
    unexpected: int = 0

    @property
    def queue(self) -> str:
        return f"soak.{self.number}"


@dataclass
class Interval:
    """Latencies (ms) gathered since the last row."""

    delivery: list[float] = field(default_factory=list)
    confirm: list[float] = field(default_factory=list)


@dataclass
class Soak:
    pairs: list[Pair]
    size: int
    persistent: bool
    interval: Interval = field(default_factory=Interval)
    errors: list[str] = field(default_factory=list)
    # Set once publishing has stopped and every published message arrived.
    stopped: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def check_drained(self) -> None:
        if self.stopped and self.consumed >= self.published:
            self.drained.set()

    @property
    def published(self) -> int:
        return sum(pair.published for pair in self.pairs)

    @property
    def confirmed(self) -> int:
        return sum(pair.confirms.acked for pair in self.pairs)

    @property
    def nacked(self) -> int:
        return sum(pair.confirms.nacked for pair in self.pairs)

    @property
    def consumed(self) -> int:
        return sum(pair.consumed for pair in self.pairs)

    def on_delivery(
        self, client: Client, deliver: commands.Basic.Deliver, body: bytes
    ) -> None:
        now = time.monotonic_ns()
        client.ack(deliver.delivery_tag)
        number, seq, sent = HEAD.unpack_from(body)
        if number >= len(self.pairs) or len(body) != self.size:
            self.pairs[0].unexpected += 1
            return
        pair = self.pairs[number]
        if seq >= len(pair.seen):
            pair.seen.extend(bytes(max(seq + 1 - len(pair.seen), 65536)))
        if pair.seen[seq]:
            pair.duplicates += 1
        pair.seen[seq] = min(pair.seen[seq] + 1, 255)
        pair.consumed += 1
        self.interval.delivery.append((now - sent) / 1e6)
        self.check_drained()

    def confirm_handler(self, pair: Pair) -> Any:
        def on_confirm(_client: Client, tag: int, multiple: bool, ack: bool) -> None:
            now = time.monotonic_ns()
            for seq in pair.confirms.confirm(tag, multiple, ack):
                sent = pair.sent_at.pop(seq, None)
                if sent is not None:
                    self.interval.confirm.append((now - sent) / 1e6)

        return on_confirm


async def publish_steadily(soak: Soak, pair: Pair, stop: asyncio.Event) -> None:
    """Publish on a fixed schedule: message n goes at start + n / rate."""
    assert pair.publisher is not None
    publisher = pair.publisher
    padding = b"s" * (soak.size - HEAD.size)
    properties = commands.Basic.Properties(delivery_mode=2 if soak.persistent else 1)
    started = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - started) * pair.rate) - pair.published
        for _ in range(due):
            now = time.monotonic_ns()
            body = HEAD.pack(pair.number, pair.published, now) + padding
            seq = publisher.publish(pair.queue, body, properties=properties)
            pair.confirms.published(seq)
            pair.sent_at[seq] = now
            pair.published += 1
        await publisher.drain()
        await asyncio.sleep(TICK_S)


async def run_soak(
    host: str,
    port: int,
    *,
    seconds: float,
    rate: float,
    pairs: int,
    size: int,
    prefetch: int,
    persistent: bool,
    every_s: float,
    broker_pid: int | None,
    user: str,
    password: str,
    vhost: str,
) -> dict[str, Any]:
    soak = Soak(
        [Pair(number, rate / pairs) for number in range(pairs)], size, persistent
    )
    credentials = {"user": user, "password": password, "vhost": vhost}
    for pair in soak.pairs:
        pair.consumer = await connect(
            host, port, confirms=False, on_delivery=soak.on_delivery, **credentials
        )
        await pair.consumer.declare(pair.queue, durable=persistent)
        await pair.consumer.consume(pair.queue, prefetch=prefetch)
        pair.publisher = await connect(
            host, port, on_confirm=soak.confirm_handler(pair), **credentials
        )
    print(  # noqa: T201
        f"{'time':>6} {'rss MB':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'conf p50':>8} {'conf p99':>8} {'published':>10} {'confirmed':>10} "
        f"{'consumed':>10}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    stop = asyncio.Event()
    started = time.monotonic()
    publishers = [
        asyncio.create_task(publish_steadily(soak, pair, stop)) for pair in soak.pairs
    ]

    def sample() -> None:
        interval, soak.interval = soak.interval, Interval()
        delivery = sorted(interval.delivery)
        confirm = sorted(interval.confirm)
        row = {
            "t_s": round(time.monotonic() - started, 1),
            "rss_mb": (
                round(rss_kb(broker_pid) / 1024, 1) if broker_pid is not None else None
            ),
            "p50_ms": percentile(delivery, 0.5),
            "p99_ms": percentile(delivery, 0.99),
            "max_ms": percentile(delivery, 1.0),
            "confirm_p50_ms": percentile(confirm, 0.5),
            "confirm_p99_ms": percentile(confirm, 0.99),
            "published": soak.published,
            "confirmed": soak.confirmed,
            "consumed": soak.consumed,
        }
        rows.append(row)
        print(  # noqa: T201
            f"{row['t_s']:>6.0f} {cell(row['rss_mb'], 7, 1)} {cell(row['p50_ms'], 7)} "
            f"{cell(row['p99_ms'], 7)} {cell(row['max_ms'], 7)} "
            f"{cell(row['confirm_p50_ms'], 8)} {cell(row['confirm_p99_ms'], 8)} "
            f"{row['published']:>10} {row['confirmed']:>10} {row['consumed']:>10}",
            flush=True,
        )

    try:
        next_row = started + every_s
        while (now := time.monotonic()) < started + seconds:
            await asyncio.sleep(max(0.0, min(next_row, started + seconds) - now))
            for task in publishers:
                if task.done():
                    task.result()  # a publisher that failed ends the run
            if time.monotonic() >= next_row:
                sample()
                next_row += every_s
    finally:
        stop.set()
        for outcome in await asyncio.gather(*publishers, return_exceptions=True):
            if isinstance(outcome, BaseException):
                soak.errors.append(repr(outcome))
    duration = time.monotonic() - started

    # Drain: everything outstanding confirmed and consumed (bounded).
    drain_started = time.monotonic()
    try:
        async with asyncio.timeout(120):
            await asyncio.gather(*(pair.confirms.settled.wait() for pair in soak.pairs))
            soak.stopped = True
            soak.check_drained()
            await soak.drained.wait()
    except TimeoutError:
        soak.errors.append("drain timed out")
    drain_s = time.monotonic() - drain_started
    sample()
    for pair in soak.pairs:
        for client in (pair.publisher, pair.consumer):
            if client is not None:
                if client.error is not None:
                    soak.errors.append(f"{pair.queue}: {client.error}")
                await client.close()

    missing = sum(
        sum(
            1
            for seq in range(pair.published)
            if seq >= len(pair.seen) or not pair.seen[seq]
        )
        for pair in soak.pairs
    )
    memory = [(row["t_s"], row["rss_mb"]) for row in rows if row["rss_mb"] is not None]
    settled = [(t, mb) for t, mb in memory if t >= min(WARM_UP_S, seconds / 5)]
    all_delivery = [row["p99_ms"] for row in rows if row["p99_ms"] is not None]
    summary = {
        "duration_s": round(duration, 1),
        "rate_per_s": rate,
        "pairs": pairs,
        "size": size,
        "persistent": persistent,
        "published": soak.published,
        "confirmed": soak.confirmed,
        "nacked": soak.nacked,
        "consumed": soak.consumed,
        "missing": missing,
        "duplicates": sum(pair.duplicates for pair in soak.pairs),
        "unexpected": sum(pair.unexpected for pair in soak.pairs),
        "drain_s": round(drain_s, 2),
        "rss_first_mb": memory[0][1] if memory else None,
        "rss_last_mb": memory[-1][1] if memory else None,
        "rss_max_mb": max(mb for _, mb in memory) if memory else None,
        "rss_slope_mb_per_min_after_warm_up": round(slope_per_minute(settled), 3),
        "worst_interval_p99_ms": max(all_delivery) if all_delivery else None,
        "errors": soak.errors,
    }
    print(  # noqa: T201
        f"{duration:.0f} s at {rate:g} msg/s ({pairs} pairs, {size} B, "
        f"{'persistent' if persistent else 'transient'}): published "
        f"{summary['published']}, confirmed {summary['confirmed']}, nacked "
        f"{summary['nacked']}, consumed {summary['consumed']}; missing "
        f"{missing}, duplicates {summary['duplicates']}, unexpected "
        f"{summary['unexpected']}; drained in {drain_s:.2f} s",
        flush=True,
    )
    print(  # noqa: T201
        f"broker RSS first {summary['rss_first_mb']} MB, last "
        f"{summary['rss_last_mb']} MB, max {summary['rss_max_mb']} MB; slope after "
        f"warm-up {summary['rss_slope_mb_per_min_after_warm_up']} MB/min; worst "
        f"interval p99 {summary['worst_interval_p99_ms']} ms; errors "
        f"{soak.errors or 'none'}",
        flush=True,
    )
    return {"summary": summary, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages/s, total")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--prefetch", type=int, default=200)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds per row")
    parser.add_argument("--transient", action="store_true", help="transient messages")
    parser.add_argument(
        "--url", help="an already running broker instead of starting one"
    )
    parser.add_argument("--broker-pid", type=int, help="with --url: its pid, for RSS")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary")
    args = parser.parse_args()
    if args.size < HEAD.size:
        parser.error(f"--size must be at least {HEAD.size}")
    raise_file_limit()
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    def run(host: str, port: int, pid: int | None, url: Any = None) -> dict[str, Any]:
        return asyncio.run(
            run_soak(
                host,
                port,
                seconds=args.minutes * 60,
                rate=args.rate,
                pairs=args.pairs,
                size=args.size,
                prefetch=args.prefetch,
                persistent=not args.transient,
                every_s=args.interval,
                broker_pid=pid,
                user=unquote(url.username or "guest") if url else "guest",
                password=unquote(url.password or "guest") if url else "guest",
                vhost=unquote(url.path[1:]) if url and len(url.path) > 1 else "/",
            )
        )

    if args.url:
        url = urlparse(args.url)
        result = run(
            url.hostname or "127.0.0.1", url.port or 5672, args.broker_pid, url
        )
    else:
        with broker_process() as broker:
            result = run("127.0.0.1", broker.port, broker.pid)
            for line in broker.problems[:10]:
                print(f"broker: {line}", flush=True)  # noqa: T201
    if args.json:
        print(json.dumps(result["summary"]))  # noqa: T201


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
