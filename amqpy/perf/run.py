"""Running `amqpy perf`: settings, the run itself, and its result.

The consumers and the checks run in this process; the producers, when there
are consumers too and more than one CPU, in a second one (one Python process
does either side faster than a broker, both at once not always). The two
processes share CLOCK_MONOTONIC for latencies and a counter per producer for
the progress line, and talk over a pipe: the child connects its producers
and says "ready", we say "go" once the consumers are listening, it says
"done" with its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, MutableSequence, Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

import attrs
from pamqp import commands
from pamqp import frame as pamqp_frame

from amqpy.perf import report
from amqpy.perf.client import AmqpUrl, Channel, Connection, PerfError
from amqpy.perf.load import (
    SEQUENCE_LIMIT,
    STAMP_SIZE,
    Consumer,
    Publisher,
    QueueLedger,
)

# Spawning the producers' process and letting it connect.
_CHILD_READY_S = 60.0
_CHILD_EXIT_S = 10.0
_DRAIN_POLL_S = 0.02


class UsageError(Exception):
    """Arguments that make no run: exit status 2."""


@attrs.frozen
class Settings:
    url: AmqpUrl
    producers: int
    consumers: int
    size: int
    rate: float
    seconds: float | None
    count: int | None
    confirm: int
    persistent: bool
    mandatory: bool
    autoack: bool
    prefetch: int
    multi_ack: int
    queue: str | None
    exchange: str
    exchange_type: str
    routing_key: str
    drain_timeout: float
    single_process: bool
    run_id: str
    run_tag: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Raises UsageError with what is wrong."""
        try:
            url = AmqpUrl.parse(args.amqp_url)
        except ValueError as error:
            raise UsageError(f"--url: {error}") from None
        _check(0 <= args.producers <= 0xFFFF, "-x/--producers must be 0 to 65535")
        _check(0 <= args.consumers <= 0xFFFF, "-y/--consumers must be 0 to 65535")
        _check(
            args.producers or args.consumers,
            "no producers and no consumers (-x 0 -y 0): nothing to do",
        )
        _check(
            args.size >= STAMP_SIZE,
            f"-s/--size must be at least {STAMP_SIZE} bytes (the stamp each "
            "message carries)",
        )
        _check(args.rate >= 0, "-r/--rate must not be negative")
        _check(args.confirm >= 0, "-c/--confirm must not be negative")
        _check(args.seconds is None or args.seconds > 0, "-z/--time must be positive")
        _check(
            args.count is None or 0 < args.count <= SEQUENCE_LIMIT,
            f"-C/--pmessages must be 1 to {SEQUENCE_LIMIT}",
        )
        _check(
            args.count is None or args.producers,
            "-C/--pmessages counts what each producer sends: with -x 0 use -z",
        )
        _check(args.drain_timeout > 0, "--drain-timeout must be positive")
        _check(0 <= args.prefetch <= 0xFFFF, "-q/--qos must be 0 to 65535")
        _check(args.multi_ack >= 1, "-A/--multi-ack must be at least 1")
        _check(
            args.multi_ack == 1 or not args.autoack,
            "-A/--multi-ack needs acknowledgements: drop -a/--autoack",
        )
        _check(
            not args.prefetch or args.multi_ack <= args.prefetch,
            "-A/--multi-ack must not exceed -q/--qos: the consumer would wait "
            "for messages the broker holds back until it acks",
        )
        run_id = f"{random.getrandbits(32):08x}"
        queue = args.queue
        _check(queue != "", "-u/--queue must not be empty")
        if queue is not None:
            exchange = args.exchange if args.exchange is not None else ""
            routing_key = args.routing_key if args.routing_key is not None else queue
            _check(
                exchange or routing_key == queue,
                "with the default exchange the routing key is the queue's name: "
                "drop -k, or give -e to bind the queue with it",
            )
        else:
            exchange = args.exchange if args.exchange is not None else "amq.direct"
            _check(
                exchange != "",
                "the default exchange reaches only named queues: give -u too",
            )
            _check(
                args.producers or args.routing_key is not None,
                "with -x 0 give -u (the queue to consume from) or -k",
            )
            routing_key = (
                args.routing_key
                if args.routing_key is not None
                else f"amqpy-perf.{run_id}"
            )
        _check(len(routing_key.encode()) <= 255, "-k is longer than 255 bytes")
        _check_names(queue, exchange)
        return cls(
            url=url,
            producers=args.producers,
            consumers=args.consumers,
            size=args.size,
            rate=args.rate,
            seconds=args.seconds,
            count=args.count,
            confirm=args.confirm,
            persistent="persistent" in args.flag,
            mandatory="mandatory" in args.flag,
            autoack=args.autoack,
            prefetch=args.prefetch,
            multi_ack=args.multi_ack,
            queue=queue,
            exchange=exchange,
            exchange_type=args.exchange_type,
            routing_key=routing_key,
            drain_timeout=args.drain_timeout,
            single_process=args.single_process,
            run_id=run_id,
            run_tag=random.randrange(1, 0x10000),
        )

    @property
    def split(self) -> bool:
        """Producers in a process of their own."""
        return (
            bool(self.producers and self.consumers)
            and not self.single_process
            and (os.cpu_count() or 1) > 1
        )

    def shown(self) -> dict[str, Any]:
        """The settings as the JSON result shows them."""
        return {
            "url": self.url.shown(),
            "producers": self.producers,
            "consumers": self.consumers,
            "size": self.size,
            "rate": self.rate or None,
            "seconds": self.seconds,
            "count": self.count,
            "confirm": self.confirm or None,
            "persistent": self.persistent,
            "mandatory": self.mandatory,
            "autoack": self.autoack,
            "prefetch": self.prefetch,
            "multi_ack": self.multi_ack,
            "queue": self.queue,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "processes": 2 if self.split else 1,
        }


def _check(condition: object, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _check_names(queue: str | None, exchange: str) -> None:
    """Names pamqp (which encodes our declares) can send: it is stricter
    than brokers are."""
    allowed = "letters, digits, space and -_.:@#,/+"
    try:
        pamqp_frame.marshal(commands.Exchange.Declare(exchange=exchange), 1)
    except ValueError:
        raise UsageError(
            f"-e: amqpy perf takes exchange names of {allowed}, up to 127 characters"
        ) from None
    if queue is not None:
        try:
            pamqp_frame.marshal(commands.Queue.Declare(queue=queue), 1)
        except ValueError:
            raise UsageError(
                f"-u: amqpy perf takes queue names of {allowed}, up to 255 characters"
            ) from None


def main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_args(args)
    except UsageError as error:
        sys.stderr.write(f"amqpy perf: error: {error}\n")
        return 2
    try:
        result = _run_loop(_perform(settings, quiet=args.quiet))
    except PerfError as error:
        sys.stderr.write(f"amqpy perf: {error}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("amqpy perf: interrupted\n")
        return 130
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(report.table(result))
    return 0 if result["ok"] else 1


def _run_loop(coroutine: Any) -> Any:
    """Run on uvloop when it is installed (a faster loop is a faster client)."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


# --- the run -------------------------------------------------------------------


class Stop:
    """Ctrl-C (or SIGTERM) once: wind down and report; twice: abort."""

    def __init__(self) -> None:
        self.requested = False
        self.event = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        self._signals: list[tuple[int, Any]] = []
        self._task: asyncio.Task[Any] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for number in (signal.SIGINT, signal.SIGTERM):
            before = signal.getsignal(number)
            # Only the main thread may have signal handlers.
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(number, self._on_signal)
                self._signals.append((number, before))

    def uninstall(self) -> None:
        """Back to the handlers from before (the loop would leave defaults)."""
        loop = asyncio.get_running_loop()
        for number, before in self._signals:
            loop.remove_signal_handler(number)
            signal.signal(number, before)
        self._signals.clear()

    def _on_signal(self) -> None:
        if self.requested and self._task is not None:
            self._task.cancel()
            return
        self.request()

    def request(self) -> None:
        if self.requested:
            return
        self.requested = True
        self.event.set()
        for listener in self._listeners:
            listener()

    def listen(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def __call__(self) -> bool:
        return self.requested

    async def sleep(self, seconds: float) -> None:
        """Sleep, or less if a stop comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)


async def _perform(settings: Settings, *, quiet: bool) -> dict[str, Any]:
    stop = Stop()
    stop.install()
    try:
        try:
            return await _Run(settings, stop, quiet=quiet).perform()
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
    finally:
        stop.uninstall()


class _Run:
    def __init__(self, settings: Settings, stop: Stop, *, quiet: bool) -> None:
        self.settings = settings
        self.stop = stop
        self.quiet = quiet
        self.connections: list[Connection] = []
        self.consumers: list[Consumer] = []
        self.ledgers: list[QueueLedger] = []
        self.counters: MutableSequence[int] = [0] * settings.producers
        self.producers: ProducerGroup | None = None
        self.child: _Child | None = None
        self.depth_before: int | None = None
        # CPU seconds the producers' process used while it ran.
        self.child_cpu_s = 0.0
        self.setup_channel: Channel | None = None
        # A run without producers: when the consumers stopped listening.
        self.listened_until_ns: int | None = None

    async def perform(self) -> dict[str, Any]:
        settings = self.settings
        try:
            await self._declare()
            if settings.split:
                # Started once the broker is known to answer; it connects
                # while our consumers do.
                self.child = _Child(settings)
                self.counters = self.child.counters
            await self._start_consumers()
            if self.child is not None:
                await self.child.ready()
            elif settings.producers:
                self.producers = ProducerGroup(settings, self.counters)
                self.stop.listen(self.producers.interrupt)
                await self.producers.open()
            # A moment for every side to be in its loop before the clock runs.
            start_ns = time.monotonic_ns() + 20_000_000
            deadline_ns = (
                start_ns + int(settings.seconds * 1e9)
                if settings.seconds is not None
                else None
            )
            progress = None
            if not self.quiet:
                progress = asyncio.create_task(self._progress(start_ns))
            try:
                cpu_start = time.process_time()
                producer_stats = await self._produce(start_ns, deadline_ns)
                await self._drain(producer_stats)
                cpu_s = time.process_time() - cpu_start + self.child_cpu_s
                wall_ns = time.monotonic_ns() - start_ns
            finally:
                if progress is not None:
                    progress.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await progress
            for consumer in self.consumers:
                # What arrives from now on is not counted (nor acked: it goes
                # back to its queue when we close).
                consumer.channel.sink = None
                consumer.channel.flush_acks()
            depth_after = await self._depth(producer_stats)
            result = self._result(start_ns, producer_stats, depth_after)
            result["client_cpu"] = {
                "seconds": round(cpu_s, 3),
                "percent": round(cpu_s / (wall_ns / 1e9) * 100, 1),
                "processes": 2 if self.child is not None else 1,
            }
            return result
        finally:
            await self._close()

    # --- setting up ---------------------------------------------------------------

    async def _open(self, role: str) -> tuple[Connection, Channel]:
        connection = await Connection.open(
            self.settings.url, name=f"amqpy perf {self.settings.run_id} {role}"
        )
        self.connections.append(connection)
        return connection, await connection.channel()

    async def _declare(self) -> None:
        """The exchange and the shared queue, if they are missing."""
        settings = self.settings
        connection, channel = await self._open("setup")
        if settings.exchange:
            try:
                await channel.call(
                    commands.Exchange.Declare(exchange=settings.exchange, passive=True),
                    commands.Exchange.DeclareOk,
                )
            except PerfError:
                channel = await _reopen(connection, channel)
                await channel.call(
                    commands.Exchange.Declare(
                        exchange=settings.exchange,
                        exchange_type=settings.exchange_type,
                        durable=settings.persistent,
                    ),
                    commands.Exchange.DeclareOk,
                )
        if settings.queue is not None:
            try:
                ok = await channel.call(
                    commands.Queue.Declare(queue=settings.queue, passive=True),
                    commands.Queue.DeclareOk,
                )
            except PerfError:
                channel = await _reopen(connection, channel)
                ok = await channel.call(
                    commands.Queue.Declare(
                        queue=settings.queue, durable=settings.persistent
                    ),
                    commands.Queue.DeclareOk,
                )
            self.depth_before = ok.message_count
            if settings.exchange:
                await channel.call(
                    commands.Queue.Bind(
                        queue=settings.queue,
                        exchange=settings.exchange,
                        routing_key=settings.routing_key,
                    ),
                    commands.Queue.BindOk,
                )
            self.ledgers.append(QueueLedger(settings.queue))
        self.setup_channel = channel

    async def _start_consumers(self) -> None:
        settings = self.settings
        run_tag = settings.run_tag if settings.producers else None

        async def start(number: int) -> None:
            _, channel = await self._open(f"consumer {number}")
            if settings.prefetch:
                await channel.qos(settings.prefetch)
            if settings.queue is not None:
                ledger = self.ledgers[0]
            else:
                ok = await channel.call(
                    commands.Queue.Declare(
                        queue="", exclusive=True, durable=settings.persistent
                    ),
                    commands.Queue.DeclareOk,
                )
                await channel.call(
                    commands.Queue.Bind(
                        queue=ok.queue,
                        exchange=settings.exchange,
                        routing_key=settings.routing_key,
                    ),
                    commands.Queue.BindOk,
                )
                ledger = QueueLedger(ok.queue)
                self.ledgers.append(ledger)
            consumer = Consumer(number, channel, ledger, settings.size, run_tag)
            self.consumers.append(consumer)
            await channel.consume(
                ledger.name,
                consumer,
                no_ack=settings.autoack,
                ack_every=settings.multi_ack,
            )

        await asyncio.gather(*(start(n) for n in range(settings.consumers)))
        self.consumers.sort(key=lambda consumer: consumer.number)

    # --- running -------------------------------------------------------------------

    async def _produce(
        self, start_ns: int, deadline_ns: int | None
    ) -> list[dict[str, Any]]:
        if self.child is not None:
            stats, self.child_cpu_s = await self.child.run(
                start_ns, deadline_ns, self.stop
            )
            return stats
        if self.producers is not None:
            return await self.producers.run(start_ns, deadline_ns, self.stop)
        # Consumers only: they take what comes until the time is up.
        await _sleep_until(start_ns)
        if deadline_ns is None:
            await self.stop.event.wait()
        else:
            await self.stop.sleep((deadline_ns - time.monotonic_ns()) / 1e9)
        self.listened_until_ns = time.monotonic_ns()
        return []

    async def _drain(self, producer_stats: list[dict[str, Any]]) -> None:
        """Let the consumers receive what was routed to them, while it keeps
        coming (a stop does not cut this short: a second Ctrl-C does)."""
        if not self.consumers or not producer_stats:
            return
        if any(p["error"] for p in producer_stats):
            # What reached the broker before a producer failed is not
            # known: nothing to wait for, the run failed anyway.
            return
        routed = _routed(producer_stats)
        for ledger in self.ledgers:
            ledger.expected = routed
        last_count = -1
        last_change = time.monotonic()
        while True:
            if all(ledger.unique >= routed for ledger in self.ledgers):
                return
            if all(c.channel.error for c in self.consumers):
                return
            count = sum(consumer.received for consumer in self.consumers)
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            elif now - last_change > self.settings.drain_timeout:
                return
            await asyncio.sleep(_DRAIN_POLL_S)

    async def _progress(self, start_ns: int) -> None:
        """A line a second on stderr: rates over the last second."""
        tick = 0
        sent_before = received_before = 0
        while True:
            tick += 1
            await _sleep_until(start_ns + tick * 1_000_000_000)
            sent = sum(self.counters)
            received = sum(consumer.received for consumer in self.consumers)
            parts = [f"time {tick:>5} s"]
            if self.settings.producers:
                parts.append(f"sent {sent - sent_before:>9,} msg/s")
            if self.settings.consumers:
                parts.append(f"received {received - received_before:>9,} msg/s")
            sys.stderr.write("  ".join(parts) + "\n")
            sent_before, received_before = sent, received

    async def _depth(self, producer_stats: list[dict[str, Any]]) -> int | None:
        """The shared queue's message count after a run without consumers.

        A broker may count a message a little after it confirmed the
        publish (RabbitMQ's queues are processes of their own): ask until
        the count has them all or stops moving for --drain-timeout.
        """
        settings = self.settings
        channel = self.setup_channel
        if settings.queue is None or settings.consumers or channel is None:
            return None
        if self.depth_before is None:
            return None
        routed = _routed(producer_stats)
        count = -1
        last_change = time.monotonic()
        while True:
            try:
                ok = await channel.call(
                    commands.Queue.Declare(queue=settings.queue, passive=True),
                    commands.Queue.DeclareOk,
                    within=settings.drain_timeout,
                )
            except (PerfError, TimeoutError):
                return None
            now = time.monotonic()
            if ok.message_count != count:
                count, last_change = ok.message_count, now
            if count - self.depth_before >= routed:
                return count
            if now - last_change > settings.drain_timeout:
                return count
            await asyncio.sleep(_DRAIN_POLL_S)

    async def _close(self) -> None:
        if self.child is not None:
            await self.child.close()
        if self.producers is not None:
            await self.producers.close()
        await asyncio.gather(
            *(connection.close() for connection in self.connections),
            return_exceptions=True,
        )

    # --- the result ---------------------------------------------------------------

    def _result(
        self,
        start_ns: int,
        producer_stats: list[dict[str, Any]],
        depth_after: int | None,
    ) -> dict[str, Any]:
        settings = self.settings
        errors: list[str] = []
        size = settings.size
        sent = sum(p["sent"] for p in producer_stats)
        returned = sum(p["returned"] for p in producer_stats)
        producers_failed = False
        for p in producer_stats:
            if p["error"]:
                producers_failed = True
                errors.append(f"producer {p['number']}: {p['error']}")
        result: dict[str, Any] = {
            "ok": False,
            "errors": errors,
            "settings": settings.shown(),
            "elapsed_s": None,
            "sent": None,
            "confirmed": None,
            "received": None,
            "latency_ms": {"consumer": None, "confirm": None},
            "producers": [
                {
                    key: p[key]
                    for key in ("number", "sent", "confirmed", "nacked", "returned")
                }
                for p in producer_stats
            ],
            "consumers": [],
            "queues": [],
        }
        # Messages waiting in a queue arrive as soon as a consumer starts,
        # before the clock does: then it counts from the first of them.
        firsts = [c.first_ns for c in self.consumers if c.received]
        start_ns = min([start_ns, *firsts])
        ends = [start_ns]
        if self.listened_until_ns is not None:
            ends.append(self.listened_until_ns)
        if producer_stats:
            done = max(p["done_ns"] for p in producer_stats)
            ends.append(done)
            result["sent"] = _rate(sent, size, done - start_ns)
            result["sent"]["returned"] = returned
            result["sent"]["wire_bytes_per_message"] = producer_stats[0]["wire_bytes"]
        if settings.confirm and producer_stats:
            confirmed = sum(p["confirmed"] for p in producer_stats)
            nacked = sum(p["nacked"] for p in producer_stats)
            result["confirmed"] = {"messages": confirmed, "nacked": nacked}
            if nacked:
                errors.append(f"the broker nacked {nacked:,} publishes")
            if confirmed + nacked < sent:
                errors.append(
                    f"{sent - confirmed - nacked:,} of {sent:,} publishes never "
                    "confirmed"
                )
            result["latency_ms"]["confirm"] = _percentiles(
                [us for p in producer_stats for us in p["confirm_latency"]]
            )
        if self.consumers:
            received = sum(c.received for c in self.consumers)
            last_ns = max(c.last_ns for c in self.consumers)
            if received:
                ends.append(last_ns)
            result["received"] = _rate(received, size, last_ns - start_ns)
            totals = {
                "corrupt": sum(c.corrupt for c in self.consumers),
                "foreign": sum(c.foreign for c in self.consumers),
                "out_of_order": sum(c.out_of_order for c in self.consumers),
                "duplicates": sum(ledger.duplicates for ledger in self.ledgers),
                "redelivered": sum(c.redelivered for c in self.consumers),
                "missing": None,
                "expected": None,
            }
            result["received"].update(totals)
            for consumer in self.consumers:
                result["consumers"].append(
                    {
                        "number": consumer.number,
                        "queue": consumer.ledger.name,
                        "received": consumer.received,
                        "corrupt": consumer.corrupt,
                        "foreign": consumer.foreign,
                        "out_of_order": consumer.out_of_order,
                        "redelivered": consumer.redelivered,
                    }
                )
                if consumer.channel.error is not None:
                    errors.append(
                        f"consumer {consumer.number}: {consumer.channel.error}"
                    )
                if consumer.corrupt:
                    errors.append(
                        f"consumer {consumer.number}: {consumer.corrupt:,} corrupt "
                        "messages (size, checksum or content wrong)"
                    )
                if consumer.foreign:
                    errors.append(
                        f"consumer {consumer.number}: {consumer.foreign:,} messages "
                        "from another run (left in the queue?)"
                    )
                if consumer.out_of_order:
                    errors.append(
                        f"consumer {consumer.number}: {consumer.out_of_order:,} "
                        "messages out of order"
                    )
            checked = bool(producer_stats) and not producers_failed
            missing_total = 0
            for ledger in self.ledgers:
                missing = (
                    max(0, ledger.expected - ledger.unique)
                    if checked and ledger.expected is not None
                    else None
                )
                result["queues"].append(
                    {
                        "name": ledger.name,
                        "expected": ledger.expected if checked else None,
                        "received": ledger.unique,
                        "missing": missing,
                        "duplicates": ledger.duplicates,
                        "gained": None,
                    }
                )
                if missing:
                    missing_total += missing
                    errors.append(
                        f"queue {ledger.name}: {missing:,} of {ledger.expected:,} "
                        "messages missing"
                    )
                if ledger.duplicates:
                    errors.append(
                        f"queue {ledger.name}: {ledger.duplicates:,} duplicates"
                    )
            if checked:
                result["received"]["missing"] = missing_total
                result["received"]["expected"] = sum(
                    ledger.expected or 0 for ledger in self.ledgers
                )
            result["latency_ms"]["consumer"] = _percentiles(
                [us for c in self.consumers for us in c.latency.samples]
            )
        if depth_after is not None and self.depth_before is not None:
            gained = depth_after - self.depth_before
            result["queues"].append(
                {
                    "name": settings.queue,
                    "expected": _routed(producer_stats),
                    "received": None,
                    "missing": None,
                    "duplicates": None,
                    # Without consumers: how many more messages it holds.
                    "gained": gained,
                }
            )
            if not producers_failed and gained != _routed(producer_stats):
                errors.append(
                    f"queue {settings.queue} gained {gained:,} messages, "
                    f"{_routed(producer_stats):,} were published to it (is something "
                    "else using it?)"
                )
        result["elapsed_s"] = round((max(ends) - start_ns) / 1e9, 3)
        result["stopped"] = self.stop()
        result["ok"] = not errors
        return result


def _routed(producer_stats: list[dict[str, Any]]) -> int:
    """Messages the broker took for a queue: not returned as unroutable,
    not nacked (those count as errors of their own)."""
    return sum(p["sent"] - p["returned"] - p["nacked"] for p in producer_stats)


async def _reopen(connection: Connection, channel: Channel) -> Channel:
    """A new channel after the broker closed `channel` (a passive declare
    of something missing)."""
    connection.channels.pop(channel.id, None)
    return await connection.channel()


async def _sleep_until(when_ns: int) -> None:
    delay = (when_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def _rate(messages: int, size: int, elapsed_ns: int) -> dict[str, Any]:
    seconds = elapsed_ns / 1e9
    rate = messages / seconds if seconds > 0 and messages else 0.0
    return {
        "messages": messages,
        "msg_per_s": round(rate),
        "mb_per_s": round(rate * size / 1e6, 3),
    }


def _percentiles(samples: Sequence[int]) -> dict[str, Any] | None:
    """Microsecond samples as milliseconds: min, p50 ... p99.9, max."""
    if not samples:
        return None
    ordered = sorted(samples)
    last = len(ordered) - 1

    def at(percent: float) -> float:
        return round(ordered[round(percent / 100 * last)] / 1000, 3)

    return {
        "min": at(0),
        "p50": at(50),
        "p75": at(75),
        "p95": at(95),
        "p99": at(99),
        "p99.9": at(99.9),
        "max": at(100),
        "samples": len(ordered),
    }


# --- producers -----------------------------------------------------------------


class ProducerGroup:
    """The producers of a run, each on its own connection."""

    def __init__(self, settings: Settings, counters: MutableSequence[int]) -> None:
        self.settings = settings
        self.counters = counters
        self.publishers: list[Publisher] = []

    async def open(self) -> None:
        settings = self.settings

        async def open_one(number: int) -> Publisher:
            connection = await Connection.open(
                settings.url, name=f"amqpy perf {settings.run_id} producer {number}"
            )
            channel = await connection.channel()
            if settings.confirm:
                await channel.confirm_select()
            return Publisher(
                channel,
                number,
                settings.run_tag,
                exchange=settings.exchange,
                routing_key=settings.routing_key,
                size=settings.size,
                persistent=settings.persistent,
                mandatory=settings.mandatory,
            )

        results = await asyncio.gather(
            *(open_one(n) for n in range(settings.producers)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Publisher):
                self.publishers.append(result)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def interrupt(self) -> None:
        for publisher in self.publishers:
            publisher.channel.interrupt()
            publisher.connection.interrupt()

    async def run(
        self, start_ns: int, deadline_ns: int | None, stopping: Callable[[], bool]
    ) -> list[dict[str, Any]]:
        await _sleep_until(start_ns)
        return list(
            await asyncio.gather(
                *(self._run_one(p, deadline_ns, stopping) for p in self.publishers)
            )
        )

    async def _run_one(
        self,
        publisher: Publisher,
        deadline_ns: int | None,
        stopping: Callable[[], bool],
    ) -> dict[str, Any]:
        settings = self.settings
        channel = publisher.channel
        counters = self.counters
        number = publisher.number
        error = None

        def progress(sent: int) -> None:
            counters[number] = sent

        try:
            await publisher.run(
                count=settings.count,
                deadline_ns=deadline_ns,
                rate=settings.rate,
                window=settings.confirm,
                stopping=stopping,
                progress=progress,
            )
            if settings.confirm:
                await _settle_confirms(channel, settings.drain_timeout)
            else:
                await channel.sync(within=settings.drain_timeout + 60)
        except PerfError as failure:
            error = str(failure)
        except TimeoutError:
            error = "no answer from the broker"
        return {
            "number": number,
            "sent": publisher.sent,
            "confirmed": channel.confirmed,
            "nacked": channel.nacked,
            "returned": channel.returned,
            "done_ns": time.monotonic_ns(),
            "error": error,
            "confirm_latency": publisher.confirm_latency.samples,
            "wire_bytes": publisher.wire_bytes_per_message,
        }

    async def close(self) -> None:
        await asyncio.gather(
            *(p.connection.close() for p in self.publishers), return_exceptions=True
        )


async def _settle_confirms(channel: Channel, idle_timeout: float) -> None:
    """Wait for the outstanding confirms while they keep coming."""
    while channel.unconfirmed:
        before = channel.confirmed + channel.nacked
        began = time.monotonic()
        # Ends early when a stop interrupts it: then wait on.
        await channel.wait_confirms(0, within=idle_timeout)
        stalled = time.monotonic() - began >= idle_timeout
        if stalled and channel.confirmed + channel.nacked == before:
            return


# --- the producers' process ---------------------------------------------------


class _Inbox:
    """Messages from the other process, as an asyncio queue. A thread does
    the blocking reads: a pipe registered with the loop would be made
    non-blocking, and then a large send could go out half-written."""

    def __init__(self, pipe: Pipe) -> None:
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def read() -> None:
            while True:
                try:
                    message = pipe.recv()
                except (EOFError, OSError):
                    message = ("gone",)
                try:
                    loop.call_soon_threadsafe(self.queue.put_nowait, message)
                except RuntimeError:  # the loop is closed
                    return
                if message[0] == "gone":
                    return

        threading.Thread(target=read, daemon=True, name="amqpy-perf-inbox").start()

    async def get(self, within: float | None = None) -> tuple[Any, ...]:
        return await asyncio.wait_for(self.queue.get(), within)


class _Child:
    """The producers' process, seen from the consumers' side."""

    def __init__(self, settings: Settings) -> None:
        context = multiprocessing.get_context("spawn")
        self.counters: MutableSequence[int] = context.RawArray("q", settings.producers)
        self.pipe, child_end = context.Pipe()
        self.process = context.Process(
            target=_producer_process,
            args=(settings, child_end, self.counters),
            name="amqpy perf producers",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.inbox = _Inbox(self.pipe)

    async def _expect(self, kind: str, within: float | None) -> tuple[Any, ...]:
        try:
            message = await self.inbox.get(within)
        except TimeoutError:
            raise PerfError(f"the producers' process did not say {kind!r}") from None
        if message[0] == "error":
            raise PerfError(message[1])
        if message[0] != kind:
            raise PerfError(
                "the producers' process ended unexpectedly "
                f"(exit code {self.process.exitcode})"
            )
        return message

    async def ready(self) -> None:
        await self._expect("ready", _CHILD_READY_S)

    async def run(
        self, start_ns: int, deadline_ns: int | None, stop: Stop
    ) -> tuple[list[dict[str, Any]], float]:
        """The producers' figures, and the CPU seconds their process used."""
        self.pipe.send(("go", start_ns, deadline_ns))
        stop.listen(self._stop)
        if stop():
            self._stop()
        _, stats, cpu_s = await self._expect("done", None)
        return list(stats), float(cpu_s)

    def _stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.pipe.send(("stop",))

    async def close(self) -> None:
        self._stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.process.join, _CHILD_EXIT_S)
        if self.process.is_alive():
            self.process.terminate()
            await loop.run_in_executor(None, self.process.join, _CHILD_EXIT_S)
        self.pipe.close()


def _producer_process(
    settings: Settings, pipe: Pipe, counters: MutableSequence[int]
) -> None:
    """Entry point of the producers' process."""
    # Ctrl-C reaches the whole process group: the parent decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _run_loop(_producer_main(settings, pipe, counters))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        with contextlib.suppress(OSError, ValueError):
            pipe.send(("error", f"producers' process failed: {error!r}"))
    finally:
        pipe.close()


async def _producer_main(
    settings: Settings, pipe: Pipe, counters: MutableSequence[int]
) -> None:
    inbox = _Inbox(pipe)
    group = ProducerGroup(settings, counters)
    stopped = False

    def stopping() -> bool:
        return stopped

    try:
        try:
            await group.open()
        except PerfError as error:
            pipe.send(("error", str(error)))
            return
        pipe.send(("ready",))
        message = await inbox.get()
        if message[0] != "go":
            return
        _, start_ns, deadline_ns = message
        cpu_start = time.process_time()
        run = asyncio.create_task(group.run(start_ns, deadline_ns, stopping))

        async def watch() -> None:
            nonlocal stopped
            await inbox.get()  # "stop", or "gone" when the parent went away
            stopped = True
            group.interrupt()

        watcher = asyncio.create_task(watch())
        try:
            stats = await run
        finally:
            watcher.cancel()
        pipe.send(("done", stats, time.process_time() - cpu_start))
    finally:
        await group.close()
