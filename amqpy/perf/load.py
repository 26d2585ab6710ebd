"""What `amqpy perf` sends and how it checks what comes back.

Every body starts with a 16-byte stamp (big-endian):

    u32 CRC-32 of the next 12 bytes
    u32 producer key: run tag (u16, random per run) << 16 | producer number
    u32 sequence number of the message for its producer (from 0)
    u32 send time: time.monotonic_ns() // 1000, modulo 2**32

and goes on with a fixed pattern up to the body size, which the consumer
compares byte for byte: the CRC covers the stamp, the comparison the rest,
so any changed byte shows. CLOCK_MONOTONIC is the same for every process of
the machine, so producer and consumer processes read one clock; latencies
are differences modulo 2**32 microseconds (fine below 71 minutes).

A consumer checks each message: its size, the stamp and the pattern
(`corrupt`), the run tag (`foreign`: left in the queue by an earlier run),
the order per producer (`out_of_order`: a sequence number lower than one
this consumer already had from that producer) and duplicates (a bit per
sequence number and producer, per queue, shared by the queue's consumers).
What is missing is known at the end, from what the producers sent.
"""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from array import array
from collections.abc import Callable
from typing import Final

from pamqp import commands

from amqpy.perf.client import Channel
from amqpy.protocol import frames

STAMP: Final = struct.Struct(">IIII")
_STAMP_REST: Final = struct.Struct(">III")
STAMP_SIZE: Final = STAMP.size
SEQUENCE_LIMIT: Final = 1 << 32
_MASK32: Final = 0xFFFFFFFF
# The pattern after the stamp: a prime length, so a shifted body cannot match.
_PATTERN: Final = bytes((i * 37 + 11) & 0xFF for i in range(251))
# A publish template holds up to this many messages, in up to this many bytes.
_BATCH: Final = 256
_BATCH_BYTES: Final = 1 << 20
# Latency samples kept per recorder; past it every other one is dropped and
# the stride doubles, so a long run keeps an even sample of all of it.
LATENCY_SAMPLES_MAX: Final = 1 << 20


def filler(size: int) -> bytes:
    """The body after the stamp, for a body of `size` bytes."""
    length = size - STAMP_SIZE
    return (_PATTERN * (length // len(_PATTERN) + 1))[:length]


class LatencyRecorder:
    """Microsecond samples, evenly strided past LATENCY_SAMPLES_MAX."""

    __slots__ = ("_countdown", "samples", "stride")

    def __init__(self) -> None:
        self.samples = array("I")
        self.stride = 1
        self._countdown = 1

    def add(self, microseconds: int) -> None:
        self._countdown -= 1
        if not self._countdown:
            self._countdown = self.keep(microseconds)

    def keep(self, microseconds: int) -> int:
        """Keep this sample; how many to skip until the next (the stride)."""
        samples = self.samples
        samples.append(microseconds)
        if len(samples) >= LATENCY_SAMPLES_MAX:
            self.samples = samples[::2]
            self.stride *= 2
        return self.stride

    def add_ns(self, nanoseconds: int) -> None:
        self.add(nanoseconds // 1000)


class QueueLedger:
    """What the consumers of one queue received, across them: a bit per
    sequence number and producer."""

    __slots__ = ("consumers", "expected", "name", "seen")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: dict[int, bytearray] = {}
        self.consumers: list[Consumer] = []
        self.expected: int | None = None

    @property
    def unique(self) -> int:
        """Messages received, duplicates not counted."""
        return sum(consumer.fresh for consumer in self.consumers)

    @property
    def duplicates(self) -> int:
        return sum(consumer.duplicates for consumer in self.consumers)


class Consumer:
    """Checks each delivery of one consumer (a `Sink` for its channel).

    The state of the producer of the last message (its bitmap, the last
    sequence number) is kept at hand: runs of messages from one producer are
    the common case, and a dictionary look-up per message is not free.
    """

    __slots__ = (
        "_countdown",
        "_crc32",
        "_filler",
        "_key",
        "_last",
        "_last_sequence",
        "_seen",
        "_unpack",
        "channel",
        "connection",
        "corrupt",
        "duplicates",
        "first_ns",
        "foreign",
        "fresh",
        "last_ns",
        "latency",
        "ledger",
        "number",
        "out_of_order",
        "received",
        "redelivered",
        "run_tag",
        "size",
    )

    def __init__(
        self,
        number: int,
        channel: Channel,
        ledger: QueueLedger,
        size: int,
        run_tag: int | None,
    ) -> None:
        self.number = number
        self.channel = channel
        self.connection = channel.connection
        self.ledger = ledger
        ledger.consumers.append(self)
        self.size = size
        # None: take any run's messages (a run without producers).
        self.run_tag = run_tag
        self.received = 0
        self.fresh = 0
        self.duplicates = 0
        self.corrupt = 0
        self.foreign = 0
        self.out_of_order = 0
        self.redelivered = 0
        self.first_ns = 0
        self.last_ns = 0
        self.latency = LatencyRecorder()
        self._countdown = 1
        self._last: dict[int, int] = {}
        self._key = -1
        self._seen = bytearray()
        self._last_sequence = -1
        self._filler = filler(size)
        self._unpack = STAMP.unpack_from
        self._crc32 = zlib.crc32

    def deliver(self, data: bytes | bytearray, offset: int, length: int) -> None:
        now_ns = self.connection.now_ns
        if not self.received:
            self.first_ns = now_ns
        self.last_ns = now_ns
        self.received += 1
        if length != self.size:
            self.corrupt += 1
            return
        crc, key, sequence, sent_us = self._unpack(data, offset)
        if self._crc32(data[offset + 4 : offset + STAMP_SIZE]) != crc or (
            self._filler and data[offset + STAMP_SIZE : offset + length] != self._filler
        ):
            self.corrupt += 1
            return
        if key != self._key and not self._switch(key):
            self.foreign += 1
            return
        seen = self._seen
        index = sequence >> 3
        if index >= len(seen):
            # In place: the queue's other consumers hold the same bytearray.
            seen.extend(bytes(max(index + 1, 2 * len(seen)) - len(seen)))
        bit = 1 << (sequence & 7)
        if seen[index] & bit:
            self.duplicates += 1
        else:
            seen[index] |= bit
            self.fresh += 1
        if sequence > self._last_sequence:
            self._last_sequence = sequence
        else:
            self.out_of_order += 1
        self._countdown -= 1
        if not self._countdown:
            self._countdown = self.latency.keep((now_ns // 1000 - sent_us) & _MASK32)
        if self.channel.redelivered:
            self.redelivered += 1

    def _switch(self, key: int) -> bool:
        """Make `key`'s producer the one at hand; False for another run's."""
        if self.run_tag is not None and key >> 16 != self.run_tag:
            return False
        self._last[self._key] = self._last_sequence
        self._key = key
        self._last_sequence = self._last.get(key, -1)
        seen = self.ledger.seen.get(key)
        if seen is None:
            seen = self.ledger.seen[key] = bytearray(1024)
        self._seen = seen
        return True


class Publisher:
    """One producer's channel: pre-encoded batches of publishes where only
    the stamps change, written whole."""

    def __init__(
        self,
        channel: Channel,
        number: int,
        run_tag: int,
        *,
        exchange: str,
        routing_key: str,
        size: int,
        persistent: bool,
        mandatory: bool,
    ) -> None:
        self.channel = channel
        self.connection = channel.connection
        self.key = run_tag << 16 | number
        self.number = number
        self.sent = 0
        self.confirm_latency = LatencyRecorder()
        channel.on_confirm_latency = self.confirm_latency.add_ns
        publish = frames.encode_raw_method(
            channel.id,
            b"".join(
                (
                    struct.pack(">HHH", 60, 40, 0),
                    frames.shortstr(exchange),
                    frames.shortstr(routing_key),
                    b"\x01" if mandatory else b"\x00",
                )
            ),
        )
        properties = frames.encode_properties(
            commands.Basic.Properties(delivery_mode=2 if persistent else 1)
        )
        body = bytes(STAMP_SIZE) + filler(size)
        content = frames.encode_content(
            channel.id, properties, body, self.connection.frame_max
        )
        # The stamp opens the first body frame, after its 7 header bytes.
        header_frame = 7 + 12 + len(properties) + 1
        stamp_at = len(publish) + header_frame + 7
        message = publish + content
        self.wire_bytes_per_message = len(message)
        batch = max(1, min(_BATCH, _BATCH_BYTES // len(message)))
        self._template = bytearray(message * batch)
        self._stamps = [i * len(message) + stamp_at for i in range(batch)]
        self._ends = [(i + 1) * len(message) for i in range(batch)]
        self.batch = batch

    def write(self, count: int, now_ns: int) -> None:
        """Stamp and write the next `count` (<= batch) messages."""
        template = self._template
        stamps = self._stamps
        key = self.key
        sequence = self.sent
        sent_us = (now_ns // 1000) & _MASK32
        pack_rest = _STAMP_REST.pack
        pack_into = STAMP.pack_into
        crc32 = zlib.crc32
        for i in range(count):
            pack_into(
                template,
                stamps[i],
                crc32(pack_rest(key, sequence + i, sent_us)),
                key,
                sequence + i,
                sent_us,
            )
        channel = self.channel
        if channel.error is not None:
            # The broker closed the channel (a missing exchange, say).
            raise channel.error
        if channel.confirm_mode:
            channel.confirm_times.append((channel.published + count, now_ns))
        # A copy: the template changes under the transport's buffer otherwise.
        self.connection.write(bytes(memoryview(template)[: self._ends[count - 1]]))
        self.sent += count
        channel.published += count

    async def run(
        self,
        *,
        count: int | None,
        deadline_ns: int | None,
        rate: float,
        window: int,
        stopping: Callable[[], bool],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Publish until `count` messages, the deadline or `stopping()`;
        at most `rate` a second (0: as fast as the broker takes them) and,
        with confirms, at most `window` unconfirmed."""
        channel = self.channel
        connection = self.connection
        started_ns = time.monotonic_ns()
        sleep = asyncio.sleep
        # Sequence numbers are 32 bits.
        limit = SEQUENCE_LIMIT if count is None else min(count, SEQUENCE_LIMIT)
        while self.sent < limit:
            if stopping():
                return
            now_ns = time.monotonic_ns()
            if deadline_ns is not None and now_ns >= deadline_ns:
                return
            left_s = 3600.0 if deadline_ns is None else (deadline_ns - now_ns) / 1e9
            todo = min(self.batch, limit - self.sent)
            if rate:
                due = int((now_ns - started_ns) * rate / 1e9) + 1 - self.sent
                if due <= 0:
                    # Timers have millisecond resolution: shorter sleeps would
                    # spin and take the CPU from the broker we measure.
                    next_ns = started_ns + self.sent / rate * 1e9
                    await sleep(min(left_s, max(0.001, (next_ns - now_ns) / 1e9)))
                    continue
                todo = min(todo, due)
            if window:
                room = window - channel.unconfirmed
                if room <= 0:
                    await channel.wait_confirms(window - 1, within=left_s)
                    continue
                todo = min(todo, room)
            if connection.must_wait:
                await connection.wait_writable(within=left_s)
                continue
            self.write(todo, now_ns)
            if progress is not None:
                progress(self.sent)
            # Let the replies (confirms, flow control) in between batches.
            await sleep(0)
