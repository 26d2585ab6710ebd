"""Helpers for the dead-letter, TTL and length-limit tests: unique names,
bounded waits on a pika BlockingConnection, x-death time checks and a typed
reader for raw header tables (to see the wire types pika's decoding hides).

Every wait polls with a deadline; the broker may do the work asynchronously
(RabbitMQ does), so nothing assumes it is done when a request returns.
"""

from __future__ import annotations

import datetime
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel

DEADLINE_S = 5.0


def unique_names() -> Callable[[str], str]:
    """names("src") -> "src-1a2b3c4d": the suffix is shared by one test, so
    queues of a test never meet another test's (or an earlier run's)."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{suffix}"


def message_count(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def wait_until(
    channel: BlockingChannel, condition: Callable[[], bool], timeout: float = DEADLINE_S
) -> float:
    """Poll `condition` (letting pika run) until true; seconds it took."""
    start = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - start
        assert elapsed < timeout, "condition not met in time"
        channel.connection.process_data_events(0.002)
    return time.monotonic() - start


def wait_count(
    channel: BlockingChannel, queue: str, count: int, timeout: float = DEADLINE_S
) -> float:
    """Wait until passive queue.declare reports `count` ready messages."""
    return wait_until(channel, lambda: message_count(channel, queue) == count, timeout)


def poll_get(
    channel: BlockingChannel,
    queue: str,
    *,
    auto_ack: bool = True,
    timeout: float = DEADLINE_S,
) -> tuple[Any, Any, bytes]:
    """basic.get until a message arrives (dead-lettering may lag the reject)."""
    got: list[tuple[Any, Any, bytes]] = []

    def arrived() -> bool:
        method, properties, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            return False
        got.append((method, properties, body))
        return True

    wait_until(channel, arrived, timeout)
    return got[0]


def drain(channel: BlockingChannel, queue: str) -> list[bytes]:
    """Every ready message's body, taken with basic.get (auto-ack)."""
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def check_death_times(
    headers: dict[str, Any], since: float, *, untimed: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Assert every x-death 'time' is a UTC timestamp (whole seconds) taken
    since `since` (time.time()), and return the headers without them. The
    entries at `untimed` (a client's own, say) have no time."""
    until = time.time()
    deaths = []
    for index, death in enumerate(headers["x-death"]):
        death = dict(death)
        if index in untimed:
            assert "time" not in death
            deaths.append(death)
            continue
        stamp = death.pop("time")
        assert isinstance(stamp, datetime.datetime), stamp
        assert stamp.utcoffset() == datetime.timedelta(0)
        assert stamp.microsecond == 0
        assert int(since) <= stamp.timestamp() <= until, (stamp, since, until)
        deaths.append(death)
    return {**headers, "x-death": deaths}


# -- raw header tables with their type letters ---------------------------------


def _typed_value(raw: bytes, offset: int) -> tuple[tuple[str, Any], int]:
    kind = chr(raw[offset])
    offset += 1
    fixed = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I"}
    fixed |= {"l": ">q", "L": ">q", "T": ">Q", "f": ">f", "d": ">d", "t": ">B"}
    if kind in fixed:
        (value,) = struct.unpack_from(fixed[kind], raw, offset)
        return (kind, value), offset + struct.calcsize(fixed[kind])
    if kind in "Sx":
        (length,) = struct.unpack_from(">I", raw, offset)
        offset += 4
        return (kind, raw[offset : offset + length]), offset + length
    if kind == "A":
        (length,) = struct.unpack_from(">I", raw, offset)
        offset += 4
        end = offset + length
        items = []
        while offset < end:
            item, offset = _typed_value(raw, offset)
            items.append(item)
        return ("A", items), offset
    if kind == "F":
        return typed_table(raw, offset)
    if kind == "V":
        return ("V", None), offset
    raise ValueError(f"field type {kind!r}")


def typed_table(raw: bytes, offset: int = 0) -> tuple[tuple[str, Any], int]:
    """("F", [(key, (type letter, value)), ...]) in wire order, and the end."""
    (length,) = struct.unpack_from(">I", raw, offset)
    offset += 4
    end = offset + length
    fields = []
    while offset < end:
        size = raw[offset]
        key = raw[offset + 1 : offset + 1 + size].decode()
        offset += 1 + size
        value, offset = _typed_value(raw, offset)
        fields.append((key, value))
    return ("F", fields), offset


def typed_headers(content_header_payload: bytes) -> tuple[str, Any] | None:
    """The headers table of a content header frame's payload, typed."""
    properties = content_header_payload[12:]  # class, weight, body size
    (flags,) = struct.unpack_from(">H", properties, 0)
    offset = 2
    if flags & 0x8000:  # content-type
        offset += 1 + properties[offset]
    if flags & 0x4000:  # content-encoding
        offset += 1 + properties[offset]
    if not flags & 0x2000:
        return None
    return typed_table(properties, offset)[0]


def dead_letter_to(queue: str, **more: Any) -> dict[str, Any]:
    """Queue arguments that dead-letter to `queue` through the default exchange."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue, **more}
