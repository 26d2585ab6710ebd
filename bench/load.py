"""Load benchmark (not a test): as many connections as the file limit allows,
each with a channel and consumers, then one message through every one of them.

    .venv/bin/python bench/load.py                       # limit-sized run
    .venv/bin/python bench/load.py --connections 5000 --rounds 2
    .venv/bin/python bench/load.py --url amqp://guest:guest@127.0.0.1:5672/ \\
        --broker-pid 1234

It raises its own open-file limit to the hard limit (the broker it starts
inherits it), starts `python -m amqpy server --port 0 --no-management` on a
throw-away data folder unless given --url, and with a lean raw asyncio client
(pamqp frames, uvloop when installed) opens N connections, each with a
channel in confirm mode, an exclusive queue of its own and a consumer on it
and on one shared queue. Every connection then publishes `--messages` to its
neighbour's queue and as many to the shared queue; every message must be
confirmed and delivered exactly once. With `--rounds 2` everything is closed
and opened again, which shows whether the broker's memory returns to where it
was (no per-connection leak).

Reported: connections held, errors, open rate, broker RSS (from
/proc/PID/status) before, with all connections open and after closing, RSS
per connection, time to confirm and deliver everything, loss and duplicates.
The CI-sized version is tests/integration/test_load_bounds.py, which runs
`run_load` from here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse

from pamqp import base as pamqp_base
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_HEAD = struct.Struct(">BHI")
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"
CAPABILITIES = {
    "publisher_confirms": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "authentication_failure_close": True,
}
# File descriptors kept free for everything that is not a client socket.
FD_HEADROOM = 200


# -- the lean client -----------------------------------------------------------


class ClientError(Exception):
    """The broker closed the connection or a channel, or went away."""


DeliveryCallback = Callable[["Client", commands.Basic.Deliver, bytes], None]
ConfirmCallback = Callable[["Client", int, bool, bool], None]


class Client(asyncio.Protocol):
    """One AMQP connection on one channel (1): synchronous requests one at a
    time, deliveries and confirms to callbacks. Heartbeats are turned off
    (tune-ok 0) so idle connections need no timer."""

    def __init__(
        self,
        on_delivery: DeliveryCallback | None = None,
        on_confirm: ConfirmCallback | None = None,
    ) -> None:
        self.on_delivery = on_delivery
        self.on_confirm = on_confirm
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.frame_max = 131072
        self.error: str | None = None
        self.blocked = False
        self.publish_seq = 0  # the last publish's sequence number (confirms)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reply: asyncio.Future[Any] | None = None
        self._start: asyncio.Future[Any] | None = None
        self._reply_type: type[Any] = object
        self._content: tuple[commands.Basic.Deliver, int, list[bytes]] | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        # connection.start may arrive before open() looks for it.
        self._start = self._expect(commands.Connection.Start)
        self.transport.write(PROTOCOL_HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None and self._reply is not None:
            self.error = f"connection lost: {exc or 'closed by the broker'}"
        self._fail(self.error or "connection closed")
        self._writable.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= 8:
            frame_type, channel, length = FRAME_HEAD.unpack_from(buffer, offset)
            end = offset + 7 + length
            if end >= size:
                break
            payload = bytes(buffer[offset + 7 : end])
            if buffer[end] != 0xCE:
                self._protocol_failure("bad frame end")
                return
            self._on_frame(frame_type, channel, payload, buffer, offset, end + 1)
            offset = end + 1
        del buffer[:offset]

    # -- frames in ---------------------------------------------------------------

    def _on_frame(
        self,
        frame_type: int,
        channel: int,
        payload: bytes,
        buffer: bytearray,
        start: int,
        end: int,
    ) -> None:
        if frame_type == FRAME_BODY:
            if self._content is None:
                self._protocol_failure("body frame without a delivery")
                return
            deliver, remaining, parts = self._content
            parts.append(payload)
            remaining -= len(payload)
            if remaining > 0:
                self._content = (deliver, remaining, parts)
            else:
                self._content = None
                self._delivered(deliver, b"".join(parts))
            return
        if frame_type == FRAME_HEADER:
            if self._content is None:
                self._protocol_failure("content header without a delivery")
                return
            (body_size,) = struct.unpack_from(">Q", payload, 4)
            deliver = self._content[0]
            if body_size == 0:
                self._content = None
                self._delivered(deliver, b"")
            else:
                self._content = (deliver, body_size, [])
            return
        if frame_type == FRAME_HEARTBEAT:
            return
        _, _, method = pamqp_frame.unmarshal(bytes(buffer[start:end]))
        self._on_method(channel, method)

    def _delivered(self, deliver: commands.Basic.Deliver, body: bytes) -> None:
        if self.on_delivery is not None:
            self.on_delivery(self, deliver, body)

    def _on_method(self, channel: int, method: Any) -> None:
        if isinstance(method, commands.Basic.Deliver):
            self._content = (method, -1, [])
        elif isinstance(method, commands.Basic.Ack | commands.Basic.Nack):
            if self.on_confirm is not None:
                self.on_confirm(
                    self,
                    method.delivery_tag,
                    method.multiple,
                    isinstance(method, commands.Basic.Ack),
                )
        elif isinstance(method, commands.Connection.Close):
            self.error = f"connection closed: {method.reply_code} {method.reply_text}"
            self.send(0, commands.Connection.CloseOk())
            self._fail(self.error)
            if self.transport is not None:
                self.transport.close()
        elif isinstance(method, commands.Channel.Close):
            self.error = f"channel closed: {method.reply_code} {method.reply_text}"
            self.send(channel, commands.Channel.CloseOk())
            self._fail(self.error)
        elif isinstance(method, commands.Connection.Blocked):
            self.blocked = True
        elif isinstance(method, commands.Connection.Unblocked):
            self.blocked = False
        elif self._reply is not None and isinstance(method, self._reply_type):
            reply, self._reply = self._reply, None
            if not reply.done():
                reply.set_result(method)
        else:
            self._protocol_failure(f"unexpected {method.name}")

    def _protocol_failure(self, text: str) -> None:
        self.error = text
        self._fail(text)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, text: str) -> None:
        reply, self._reply = self._reply, None
        if reply is not None and not reply.done():
            reply.set_exception(ClientError(text))

    def _expect(self, reply_type: type[Any]) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self._reply, self._reply_type = future, reply_type
        return future

    # -- frames out --------------------------------------------------------------

    def send(self, channel: int, method: pamqp_base.Frame) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(pamqp_frame.marshal(method, channel))

    async def call(
        self, channel: int, method: pamqp_base.Frame, reply_type: type[Any]
    ) -> Any:
        if self.error is not None:
            raise ClientError(self.error)
        reply = self._expect(reply_type)
        self.send(channel, method)
        return await reply

    async def open(
        self,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        confirms: bool = True,
    ) -> None:
        """The handshake (the header went out on connect), then channel 1."""
        assert self._start is not None, "not connected"
        await self._start
        tune = self._expect(commands.Connection.Tune)
        self.send(
            0,
            commands.Connection.StartOk(
                client_properties={
                    "product": "amqpy-bench",
                    "capabilities": CAPABILITIES,
                },
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
                locale="en_US",
            ),
        )
        tuned: commands.Connection.Tune = await tune
        self.frame_max = tuned.frame_max or self.frame_max
        self.send(
            0,
            commands.Connection.TuneOk(
                channel_max=tuned.channel_max, frame_max=self.frame_max, heartbeat=0
            ),
        )
        await self.call(
            0, commands.Connection.Open(virtual_host=vhost), commands.Connection.OpenOk
        )
        await self.call(1, commands.Channel.Open(), commands.Channel.OpenOk)
        if confirms:
            await self.call(1, commands.Confirm.Select(), commands.Confirm.SelectOk)

    async def declare(
        self,
        queue: str,
        *,
        exclusive: bool = False,
        durable: bool = False,
        **arguments: Any,
    ) -> None:
        await self.call(
            1,
            commands.Queue.Declare(
                queue=queue, exclusive=exclusive, durable=durable, arguments=arguments
            ),
            commands.Queue.DeclareOk,
        )

    async def consume(
        self, queue: str, *, no_ack: bool = False, prefetch: int = 0
    ) -> None:
        if prefetch:
            await self.call(
                1, commands.Basic.Qos(prefetch_count=prefetch), commands.Basic.QosOk
            )
        await self.call(
            1,
            commands.Basic.Consume(queue=queue, no_ack=no_ack),
            commands.Basic.ConsumeOk,
        )

    def publish(
        self,
        routing_key: str,
        body: bytes,
        exchange: str = "",
        properties: commands.Basic.Properties | None = None,
    ) -> int:
        """Publish on channel 1; returns its confirm sequence number."""
        parts = [
            pamqp_frame.marshal(
                commands.Basic.Publish(exchange=exchange, routing_key=routing_key), 1
            ),
            pamqp_frame.marshal(
                pamqp_header.ContentHeader(0, len(body), properties), 1
            ),
        ]
        chunk = self.frame_max - 8
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            parts.append(FRAME_HEAD.pack(FRAME_BODY, 1, len(piece)) + piece + FRAME_END)
        assert self.transport is not None
        self.transport.write(b"".join(parts))
        self.publish_seq += 1
        return self.publish_seq

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.send(1, commands.Basic.Ack(delivery_tag=delivery_tag, multiple=multiple))

    async def drain(self) -> None:
        """Wait while the kernel's send buffer (and asyncio's) are full."""
        await self._writable.wait()
        if self.error is not None:
            raise ClientError(self.error)

    async def close(self, limit_s: float = 10.0) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            async with asyncio.timeout(limit_s):
                await self.call(
                    0,
                    commands.Connection.Close(
                        reply_code=200, reply_text="bye", class_id=0, method_id=0
                    ),
                    commands.Connection.CloseOk,
                )
        except (ClientError, TimeoutError):
            pass
        self.transport.close()


async def connect(
    host: str,
    port: int,
    *,
    user: str = "guest",
    password: str = "guest",
    vhost: str = "/",
    confirms: bool = True,
    on_delivery: DeliveryCallback | None = None,
    on_confirm: ConfirmCallback | None = None,
) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: Client(on_delivery, on_confirm), host, port
    )
    try:
        await client.open(user, password, vhost, confirms)
    except BaseException:
        if client.transport is not None:
            client.transport.abort()
        raise
    return client


class Confirms:
    """Unconfirmed publishes of one client, settled by (multiple) acks."""

    def __init__(self) -> None:
        self.pending: set[int] = set()
        self.acked = 0
        self.nacked = 0
        self.settled = asyncio.Event()
        self.settled.set()
        self._progress = asyncio.Event()

    def published(self, seq: int) -> None:
        self.pending.add(seq)
        self.settled.clear()

    def confirm(self, tag: int, multiple: bool, ack: bool) -> list[int]:
        if multiple:
            done = [seq for seq in self.pending if seq <= tag]
        else:
            done = [tag] if tag in self.pending else []
        self.pending.difference_update(done)
        if ack:
            self.acked += len(done)
        else:
            self.nacked += len(done)
        if not self.pending:
            self.settled.set()
        if done:
            self._progress.set()
        return done

    async def wait_below(self, count: int) -> None:
        """Until fewer than `count` publishes are unconfirmed (a window)."""
        while len(self.pending) >= count:
            self._progress.clear()
            await self._progress.wait()


# -- the broker under load ---------------------------------------------------------


def raise_file_limit() -> int:
    """Soft open-file limit up to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return hard if soft == resource.RLIM_INFINITY else soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def rss_kb(pid: int) -> int:
    """Resident memory of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class BrokerProcess:
    """`python -m amqpy server --port 0 --no-management` on its own data
    folder; its log is read (and counted) so the pipe never fills."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "amqpy",
                "server",
                "--port",
                "0",
                "--no-management",
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid
        self.port = 0
        self.problems: list[str] = []  # warning and error lines, for the report
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if not self.port and (
                match := re.search(r"listening on [\d.]+:(\d+)", line)
            ):
                self.port = int(match.group(1))
                self._listening.set()
            elif len(self.problems) < 1000 and (
                " WARNING " in line or " ERROR " in line or "Traceback" in line
            ):
                self.problems.append(line.rstrip())
        self._listening.set()

    def wait_listening(self, timeout: float = 30.0) -> int:
        if not self._listening.wait(timeout) or not self.port:
            raise RuntimeError(f"broker did not start: {self.problems}")
        return self.port

    def stop(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)


@contextlib.contextmanager
def broker_process(*extra: str) -> Iterator[BrokerProcess]:
    with tempfile.TemporaryDirectory(prefix="amqpy-load-") as tmp:
        broker = BrokerProcess(Path(tmp), *extra)
        try:
            broker.wait_listening()
            yield broker
        finally:
            broker.stop()


@dataclass
class RoundResult:
    held: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    open_s: float = 0.0
    open_per_s: float = 0.0
    rss_held_kb: int | None = None
    published: int = 0
    confirmed: int = 0
    nacked: int = 0
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    unexpected: int = 0
    deliver_s: float = 0.0
    close_s: float = 0.0
    rss_closed_kb: int | None = None


@dataclass
class LoadResult:
    requested: int
    messages_per_connection: int
    shared_queue: bool
    rss_start_kb: int | None
    rounds: list[RoundResult]

    @property
    def rss_per_connection_kb(self) -> float | None:
        first = self.rounds[0]
        if self.rss_start_kb is None or first.rss_held_kb is None or not first.held:
            return None
        return (first.rss_held_kb - self.rss_start_kb) / first.held


async def run_round(
    host: str,
    port: int,
    connections: int,
    messages: int,
    *,
    shared: bool,
    concurrency: int,
    broker_pid: int | None,
    phase_limit_s: float,
    user: str = "guest",
    password: str = "guest",
    vhost: str = "/",
) -> RoundResult:
    """Open, load and close `connections` clients once."""
    result = RoundResult()
    errors: collections.Counter[str] = collections.Counter()
    received: collections.Counter[bytes] = collections.Counter()
    confirms: dict[Client, Confirms] = {}
    expected: set[bytes] = set()
    everything = asyncio.Event()

    def on_delivery(
        client: Client, deliver: commands.Basic.Deliver, body: bytes
    ) -> None:
        client.ack(deliver.delivery_tag)
        received[body] += 1
        if len(received) >= len(expected) and expected and expected <= received.keys():
            everything.set()

    def on_confirm(client: Client, tag: int, multiple: bool, ack: bool) -> None:
        confirms[client].confirm(tag, multiple, ack)

    gate = asyncio.Semaphore(concurrency)  # no SYN storm past the backlog
    clients: list[Client | None] = [None] * connections

    async def open_one(number: int) -> None:
        async with gate:
            client: Client | None = None
            try:
                client = await connect(
                    host,
                    port,
                    user=user,
                    password=password,
                    vhost=vhost,
                    on_delivery=on_delivery,
                    on_confirm=on_confirm,
                )
                confirms[client] = Confirms()
                await client.declare(f"load.{number}", exclusive=True)
                await client.consume(f"load.{number}")
                if shared:
                    await client.consume("load.shared")
            except BaseException as error:
                # Half-set-up connections are dropped, also when the phase
                # times out (cancelled).
                if client is not None and client.transport is not None:
                    client.transport.abort()
                if not isinstance(error, OSError | ClientError | TimeoutError):
                    raise
                errors[_error_kind(error)] += 1
                return
            clients[number] = client

    started = time.monotonic()
    try:
        async with asyncio.timeout(phase_limit_s):
            await asyncio.gather(*(open_one(number) for number in range(connections)))
    except TimeoutError:
        errors["open phase timed out"] += 1
    result.open_s = time.monotonic() - started
    held = [client for client in clients if client is not None and client.error is None]
    result.held = len(held)
    result.open_per_s = result.held / result.open_s if result.open_s else 0.0
    if broker_pid is not None:
        result.rss_held_kb = rss_kb(broker_pid)

    # One round of traffic: each client to its neighbour's queue (so every
    # message crosses connections) and to the shared queue.
    started = time.monotonic()
    names = {id(client): index for index, client in enumerate(clients) if client}
    for position, client in enumerate(held):
        neighbour = names[id(held[(position + 1) % len(held)])]
        for index in range(messages):
            targets = [f"load.{neighbour}"] + (["load.shared"] if shared else [])
            for queue in targets:
                body = f"{names[id(client)]}>{queue}#{index}".encode()
                expected.add(body)
                confirms[client].published(client.publish(queue, body))
        result.published += len(targets) * messages
    if not expected:
        everything.set()
    try:
        async with asyncio.timeout(phase_limit_s):
            await asyncio.gather(*(confirms[c].settled.wait() for c in held))
            await everything.wait()
    except TimeoutError:
        errors["delivery timed out"] += 1
    result.deliver_s = time.monotonic() - started
    result.confirmed = sum(confirms[c].acked for c in held)
    result.nacked = sum(confirms[c].nacked for c in held)
    result.delivered = sum(received.values())
    result.missing = len(expected - received.keys())
    result.duplicates = sum(count - 1 for count in received.values() if count > 1)
    result.unexpected = len(received.keys() - expected)
    for client in held:
        if client.error is not None:
            errors[_error_kind(ClientError(client.error))] += 1

    started = time.monotonic()
    closing = asyncio.Semaphore(concurrency)

    async def close_one(client: Client) -> None:
        async with closing:
            await client.close()

    await asyncio.gather(*(close_one(c) for c in clients if c is not None))
    result.close_s = time.monotonic() - started
    if broker_pid is not None:
        result.rss_closed_kb = rss_kb(broker_pid)
    result.errors = dict(errors)
    return result


def _error_kind(error: BaseException) -> str:
    """An error without the parts that differ per connection (ports)."""
    return re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "ADDR", f"{type(error).__name__}: {error}")


async def run_load(
    host: str,
    port: int,
    connections: int,
    messages: int = 1,
    *,
    shared: bool = True,
    rounds: int = 1,
    concurrency: int = 200,
    broker_pid: int | None = None,
    phase_limit_s: float = 300.0,
    user: str = "guest",
    password: str = "guest",
    vhost: str = "/",
    progress: Callable[[int, RoundResult], None] | None = None,
) -> LoadResult:
    """The whole run; the shared queue is declared (and left) first.
    `progress(number, round)` is told of each round as it ends."""
    if shared:
        setup = await connect(host, port, user=user, password=password, vhost=vhost)
        await setup.declare("load.shared")
        await setup.close()
    rss_start = rss_kb(broker_pid) if broker_pid is not None else None
    result = LoadResult(connections, messages, shared, rss_start, [])
    for number in range(1, rounds + 1):
        one = await run_round(
            host,
            port,
            connections,
            messages,
            shared=shared,
            concurrency=concurrency,
            broker_pid=broker_pid,
            phase_limit_s=phase_limit_s,
            user=user,
            password=password,
            vhost=vhost,
        )
        result.rounds.append(one)
        if progress is not None:
            progress(number, one)
    return result


# -- the command ---------------------------------------------------------------------


def round_row(one: RoundResult) -> dict[str, Any]:
    row = asdict(one)
    row["rss_held_mb"] = _mb(row.pop("rss_held_kb"))
    row["rss_closed_mb"] = _mb(row.pop("rss_closed_kb"))
    for key in ("open_s", "open_per_s", "deliver_s", "close_s"):
        row[key] = round(row[key], 2)
    return row


def print_round(number: int, one: RoundResult) -> None:
    row = round_row(one)
    print(  # noqa: T201
        f"round {number}: held {one.held} connections (errors "
        f"{one.errors or 'none'}) in {one.open_s:.1f} s ({one.open_per_s:.0f}/s); "
        f"broker RSS {row['rss_held_mb']} MB held, {row['rss_closed_mb']} MB after "
        f"close; published {one.published}, confirmed {one.confirmed}, nacked "
        f"{one.nacked}, delivered {one.delivered} in {one.deliver_s:.2f} s; "
        f"missing {one.missing}, duplicates {one.duplicates}, unexpected "
        f"{one.unexpected}; closed in {one.close_s:.1f} s",
        flush=True,
    )


def report(result: LoadResult, problems: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "connections_requested": result.requested,
        "messages_per_connection_and_queue": result.messages_per_connection,
        "shared_queue": result.shared_queue,
        "rss_start_mb": _mb(result.rss_start_kb),
        "rss_per_connection_kb": (
            round(result.rss_per_connection_kb, 1)
            if result.rss_per_connection_kb is not None
            else None
        ),
        "rounds": [round_row(one) for one in result.rounds],
        "broker_warnings": len(problems),
    }
    print(  # noqa: T201
        f"broker RSS at start {summary['rss_start_mb']} MB, "
        f"{summary['rss_per_connection_kb']} KB per connection held in round 1",
        flush=True,
    )
    for line in problems[:10]:
        print(f"broker: {line}", flush=True)  # noqa: T201
    return summary


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--connections",
        type=int,
        default=0,
        help="connections to open (default: as many as the file limit allows)",
    )
    parser.add_argument(
        "--messages", type=int, default=1, help="per connection and queue"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--concurrency", type=int, default=200, help="handshakes at once"
    )
    parser.add_argument("--no-shared", action="store_true", help="own queues only")
    parser.add_argument(
        "--url", help="an already running broker instead of starting one"
    )
    parser.add_argument("--broker-pid", type=int, help="with --url: its pid, for RSS")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="per phase, seconds"
    )
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary")
    args = parser.parse_args()

    limit = raise_file_limit()
    # The broker started here inherits the limit: both sides need one
    # descriptor per connection.
    connections = args.connections or limit - FD_HEADROOM
    if connections > limit - FD_HEADROOM:
        parser.error(f"--connections above the open-file limit ({limit}) less headroom")
    print(f"open-file limit {limit}; opening {connections} connections", flush=True)  # noqa: T201
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    def run(
        host: str, port: int, pid: int | None, user: str, password: str, vhost: str
    ) -> LoadResult:
        return asyncio.run(
            run_load(
                host,
                port,
                connections,
                args.messages,
                shared=not args.no_shared,
                rounds=args.rounds,
                concurrency=args.concurrency,
                broker_pid=pid,
                phase_limit_s=args.timeout,
                user=user,
                password=password,
                vhost=vhost,
                progress=print_round,
            )
        )

    problems: list[str] = []
    if args.url:
        url = urlparse(args.url)
        vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
        result = run(
            url.hostname or "127.0.0.1",
            url.port or 5672,
            args.broker_pid,
            unquote(url.username or "guest"),
            unquote(url.password or "guest"),
            vhost,
        )
    else:
        with broker_process() as broker:
            result = run("127.0.0.1", broker.port, broker.pid, "guest", "guest", "/")
            problems = broker.problems
    summary = report(result, problems)
    if args.json:
        print(json.dumps(summary))  # noqa: T201


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
