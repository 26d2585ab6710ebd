"""Socket-level fuzzer (issue 8): hostile clients against a running broker
while a well-behaved one keeps working.

    /work/venv/bin/python bench/fuzz_socket.py --seconds 60 --seed 1

It starts an EmbeddedBroker (short handshake and close timeouts, so sockets
that stall end quickly) and then, for the time or number of inputs asked:

- a well-behaved pika client, on a vhost of its own, publishes persistent
  messages with publisher confirms and consumes them with manual acks the
  whole time; it must get every message, in order, with no error;
- WORKERS threads each open raw sockets one after another and send an input:
  a valid client session (handshake, channel open, declares, binds,
  publishes, consume, acks, get, tx, close) mutated at the frame level (drop,
  repeat, swap, move frames; a method replaced by one with fuzzed arguments;
  random methods, content and heartbeats inserted; channel, type, size or
  frame-end changed) and at the byte level (bits flipped, bytes replaced,
  inserted, deleted, the stream cut), sent at once, in chunks or a few bytes
  at a time; or garbage; or a prefix and then a half-close or a reset; or
  nothing at all; or a handshake at slowloris speed.

Every byte the broker sends back must parse as frames; after its
connection.close nothing but close-ok may follow. A socket the broker leaves
waiting (a frame cut short is a valid reason) gets a terminator: frame_max
zero bytes, which no frame can absorb (a frame must end with 0xCE), so the
broker must answer 501 or close. Every input must end with a close frame or
the socket closed. Afterwards the broker's log must have no crash line, its
connections must drain, and it must accept a new client.

Prints the inputs tried, how they ended (close frames by reply code), the
crashes found and what the well-behaved client saw; exits 1 on any failure.
tests/integration/test_fuzz_socket.py runs the same for a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import re
import selectors
import socket
import statistics
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pika
from pamqp import base as pamqp_base
from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from amqpy.server.embedded import EmbeddedBroker

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_MAX = 131072
# Overrides for the broker under test: sockets that stall end quickly.
BROKER_OVERRIDES: dict[str, Any] = {
    "listener": {"handshake_timeout_s": 2.0, "close_timeout_s": 0.5},
}
CALM_VHOST = "calm"
CALM_QUEUE = "calm"
# After the plan is sent: quiet this long means the broker waits for more.
IDLE_S = 0.08
# Then the terminator; the broker must answer within this.
ANSWER_TIMEOUT_S = 5.0
# After our close-ok (or half-close), the socket must close within this.
CLOSE_WAIT_S = 4.0
SOCKET_TIMEOUT_S = 5.0

METHOD_CLASSES = sorted(commands.INDEX_MAPPING.values(), key=lambda cls: cls.index)
SHARED_NAMES = ["fz-a", "fz-b"]
REPLY_TO = "amq.rabbitmq.reply-to"
NAMES = [
    "",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "amq.match",
    "amq.default",
    "amq.gen-fuzz",
    "amq.rabbitmq.reply-to",
    "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxAAAAAAAAAAA.AAAAAAAAAAE=",
    "direct",
    "fanout",
    "topic",
    "headers",
    "x-delayed-message",
    "#",
    "*.a.#",
    "/",
    CALM_VHOST,  # the well-behaved client's vhost: reached only by a mutation
    "guest",
    "PLAIN",
    "AMQPLAIN",
    "EXTERNAL",
]
# Arguments the broker gives meaning to, with values it accepts and some it
# must refuse.
GOOD_ARGUMENTS: dict[str, list[Any]] = {
    "x-message-ttl": [0, 1000, -1, "100", 2**40],
    "x-expires": [1, 1000, 0, -5],
    "x-max-length": [0, 1, 10, -1],
    "x-max-length-bytes": [0, 100],
    "x-overflow": ["drop-head", "reject-publish", "reject-publish-dlx", "nope"],
    "x-dead-letter-exchange": ["", "amq.fanout", "fz-dlx", "missing"],
    "x-dead-letter-routing-key": ["fz", ""],
    "x-max-priority": [10, 255, 256, -1, 0],
    "x-queue-mode": ["lazy", "default", "eager"],
    "x-queue-type": ["classic", "quorum", "stream", "bogus"],
    "x-single-active-consumer": [True, False, 1],
    "x-priority": [5, -5, 2**40],
    "x-match": ["all", "any", "all-with-x", "any-with-x", "bogus"],
    "x-delayed-type": ["direct", "topic", "headers", "fanout", "bogus"],
    "x-delay": [100, -1, 2**62, "10"],
    "alternate-exchange": ["amq.fanout", "missing", ""],
    "x-cancel-on-ha-failover": [True],
    "x-stream-offset": ["first", 0],
    "x-consumer-timeout": [1, 1000],
    "CC": [["fz-a", "fz-b"], "fz-a", [1]],
    "BCC": [["fz-a"], []],
}


# -- wire helpers ----------------------------------------------------------


def frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return (
        struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes((end,))
    )


def method(channel: int, value: pamqp_base.Frame) -> bytes:
    return pamqp_frame.marshal(value, channel)


def content(channel: int, body: bytes, **properties: Any) -> list[bytes]:
    """A content header and the body in up to two frames."""
    frames = [
        pamqp_frame.marshal(
            pamqp_header.ContentHeader(
                0, len(body), commands.Basic.Properties(**properties)
            ),
            channel,
        )
    ]
    middle = len(body) // 2
    frames += [
        pamqp_frame.marshal(pamqp_body.ContentBody(part), channel)
        for part in (body[:middle], body[middle:])
        if part
    ]
    return frames


def shortstr(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw[:255]


def longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def encode_value(value: Any) -> bytes:
    """A field value, tagged as RabbitMQ's clients tag them."""
    if isinstance(value, bool):
        return b"t" + bytes((value,))
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + struct.pack(">i", value)
        return b"l" + struct.pack(">q", max(-(2**63), min(value, 2**63 - 1)))
    if isinstance(value, str):
        return b"S" + longstr(value.encode())
    if isinstance(value, list):
        return b"A" + longstr(b"".join(encode_value(item) for item in value))
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    raise TypeError(value)


def encode_table(table: dict[str, Any]) -> bytes:
    return longstr(
        b"".join(
            shortstr(key.encode()) + encode_value(value) for key, value in table.items()
        )
    )


# -- inputs ----------------------------------------------------------------


@attrs.define
class Input:
    """What one fuzz socket does: send `plan` (bytes, then a pause), then
    `end`: "terminate" (the zero terminator if the broker still waits),
    "shutdown" (half-close, the broker must close), "reset" (RST), or
    "wait" (send nothing more: the broker's handshake timeout must end it)."""

    kind: str
    plan: list[tuple[bytes, float]]
    end: str = "terminate"
    # After a close frame, wait for the socket to close (the rest of the
    # inputs hang up at once: waiting out close timeouts is slow).
    see_it_close: bool = True


class Mutator:
    """Builds inputs from one seeded random generator."""

    def __init__(self, rng: random.Random, frame_max: int = FRAME_MAX) -> None:
        self.rng = rng
        self.frame_max = frame_max

    # -- values ------------------------------------------------------------------

    def name(self, own: list[str]) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return rng.choice(own + SHARED_NAMES).encode()
        if roll < 0.75:
            return rng.choice(NAMES).encode()
        if roll < 0.85:
            return rng.randbytes(rng.randrange(12))  # maybe not UTF-8
        if roll < 0.95:
            return "".join(
                chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12))
            ).encode()
        return b"n" * 255

    def value(self, depth: int = 0) -> bytes:
        rng = self.rng
        kind = rng.randrange(18 if depth < 3 else 16)
        if kind == 0:
            return b"t" + bytes((rng.randrange(2),))
        if kind == 1:
            return b"b" + struct.pack(">b", rng.randrange(-128, 128))
        if kind == 2:
            return b"B" + bytes((rng.randrange(256),))
        if kind == 3:
            return b"s" + struct.pack(">h", rng.randrange(-(2**15), 2**15))
        if kind == 4:
            return b"u" + struct.pack(">H", rng.randrange(2**16))
        if kind == 5:
            return b"I" + struct.pack(">i", rng.choice([0, 1, -1, 2**31 - 1, -(2**31)]))
        if kind == 6:
            return b"i" + struct.pack(">I", rng.randrange(2**32))
        if kind == 7:
            return b"l" + struct.pack(
                ">q",
                rng.choice(
                    [0, -1, 2**63 - 1, -(2**63), rng.randrange(-(2**63), 2**63)]
                ),
            )
        if kind == 8:
            return b"f" + struct.pack(
                ">f", rng.choice([0.0, -1.5, float("nan"), float("inf")])
            )
        if kind == 9:
            return b"d" + struct.pack(
                ">d", rng.choice([0.0, 1e300, float("nan"), -float("inf")])
            )
        if kind == 10:
            return b"D" + struct.pack(">BI", rng.randrange(256), rng.randrange(2**32))
        if kind == 11:
            return b"S" + longstr(self.name([]))
        if kind == 12:
            return b"T" + struct.pack(
                ">Q", rng.choice([0, 2**32, 2**63, 2**64 - 1, rng.randrange(2**64)])
            )
        if kind == 13:
            return b"x" + longstr(rng.randbytes(rng.randrange(8)))
        if kind == 14:
            return rng.choice([b"V", b"\x00"])
        if kind == 15:
            return rng.randbytes(rng.randrange(1, 6))  # unknown tag or cut short
        if kind == 16:
            return b"A" + longstr(
                b"".join(self.value(depth + 1) for _ in range(rng.randrange(4)))
            )
        return b"F" + self.random_table(depth + 1)

    def random_table(self, depth: int = 0) -> bytes:
        rng = self.rng
        entries = []
        for _ in range(rng.randrange(4)):
            key = (
                rng.choice(list(GOOD_ARGUMENTS)).encode()
                if rng.random() < 0.5
                else self.name([])
            )
            entries.append(shortstr(key) + self.value(depth))
        return longstr(b"".join(entries))

    def table(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.55:  # arguments the broker acts on
            keys = rng.sample(list(GOOD_ARGUMENTS), rng.randrange(1, 4))
            entries = []
            for key in keys:
                value = (
                    encode_value(rng.choice(GOOD_ARGUMENTS[key]))
                    if rng.random() < 0.6
                    else self.value()
                )
                entries.append(shortstr(key.encode()) + value)
            return longstr(b"".join(entries))
        if roll < 0.8:
            return self.random_table()
        if roll < 0.9:  # a length that lies
            return struct.pack(
                ">I", rng.choice([1, 100, 2**31, 2**32 - 1])
            ) + rng.randbytes(rng.randrange(8))
        if roll < 0.97:
            return longstr(b"")
        return self.big_table()

    def big_table(self) -> bytes:
        """Nearly a frame of tiny values (a decoder that copies the rest of
        the buffer per value takes seconds over it)."""
        size = self.frame_max - 200
        if self.rng.random() < 0.5:
            return longstr(shortstr(b"k") + b"A" + longstr(b"V" * (size - 7)))
        entries = b"".join(shortstr(b"%x" % i) + b"V" for i in range(size // 7))
        return longstr(entries)

    def properties(self, own: list[str]) -> bytes:
        """Content properties as on the wire: any flags, values the broker
        acts on (expiration, reply-to, CC/BCC, x-delay, delivery mode) and
        values it must refuse; sometimes cut short or with bytes left over."""
        rng = self.rng
        flags = 0
        values = []
        for name in commands.Basic.Properties.__slots__:
            if rng.random() < 0.7:
                continue
            flags |= commands.Basic.Properties.flags[name]
            values.append(self.property_value(name, own))
        raw = struct.pack(">H", flags) + b"".join(values)
        roll = rng.random()
        if roll < 0.05:
            raw = raw[: rng.randrange(len(raw) + 1)]
        elif roll < 0.1:
            raw += rng.randbytes(rng.randrange(1, 6))
        return raw

    def property_value(self, name: str, own: list[str]) -> bytes:
        rng = self.rng
        if name in ("delivery_mode", "priority"):
            return bytes((rng.choice([0, 1, 2, 3, 9, 10, 255]),))
        if name == "expiration":
            choices = ["0", "100", "-1", "1.5", "abc", "", "315360000001", "9" * 30]
            return shortstr(rng.choice(choices).encode())
        if name == "reply_to":
            choices = [REPLY_TO, REPLY_TO + ".abc", *own]
            return shortstr(rng.choice(choices).encode())
        if name == "headers":
            if rng.random() < 0.5:
                return self.table()
            headers: dict[str, Any] = {}
            for key in rng.sample(["CC", "BCC", "x-delay", "a", "x-match"], 2):
                headers[key] = rng.choice(GOOD_ARGUMENTS.get(key, [1, "b"]))
            return encode_table(headers)
        if name == "timestamp":
            return self.field("timestamp", own)
        if name == "cluster_id":
            return shortstr(rng.choice([b"", b"x"]))
        return shortstr(self.name(own))

    def publish(
        self, channel: int, exchange: str, routing_key: str, own: list[str]
    ) -> list[bytes]:
        """basic.publish with fuzzed properties and a body in 0-2 frames."""
        rng = self.rng
        body = rng.randbytes(rng.choice([0, 1, 10]))
        frames = [
            method(
                channel,
                commands.Basic.Publish(exchange=exchange, routing_key=routing_key),
            ),
            frame(
                2, channel, struct.pack(">HHQ", 60, 0, len(body)) + self.properties(own)
            ),
        ]
        if body:
            frames.append(frame(3, channel, body))
        return frames

    def field(self, kind: str, own: list[str]) -> bytes:
        rng = self.rng
        if kind == "octet":
            return bytes((rng.randrange(256),))
        if kind == "short":
            return struct.pack(
                ">H", rng.choice([0, 1, 2, 3, 200, 406, 65535, rng.randrange(2**16)])
            )
        if kind == "long":
            return struct.pack(
                ">I",
                rng.choice(
                    [
                        0,
                        1,
                        5,
                        4096,
                        FRAME_MAX,
                        2**31 - 1,
                        2**32 - 1,
                        rng.randrange(2**32),
                    ]
                ),
            )
        if kind in ("longlong", "timestamp"):
            return struct.pack(
                ">Q", rng.choice([0, 1, 2, 3, 2**63, 2**64 - 1, rng.randrange(2**64)])
            )
        if kind == "shortstr":
            return shortstr(self.name(own))
        if kind == "longstr":
            return longstr(
                rng.choice([b"\x00guest\x00guest", rng.randbytes(rng.randrange(16))])
            )
        if kind == "table":
            return self.table()
        raise ValueError(kind)

    def method_payload(self, method_class: Any, own: list[str]) -> bytes:
        """A method of pamqp's set with every argument fuzzed by its type."""
        rng = self.rng
        parts = [struct.pack(">I", method_class.index)]
        bits = count = 0
        for name in method_class.__slots__:
            kind = method_class.amqp_type(name)
            if kind == "bit":
                bits |= rng.randrange(2) << count
                count += 1
                if count == 8:
                    parts.append(bytes((bits,)))
                    bits = count = 0
                continue
            if count:
                parts.append(bytes((bits,)))
                bits = count = 0
            parts.append(self.field(kind, own))
        if count:
            parts.append(bytes((bits,)))
        return b"".join(parts)

    def random_frame(self, own: list[str]) -> bytes:
        rng = self.rng
        channel = rng.choice([0, 1, 1, 1, 2, 3, 65535, rng.randrange(2**16)])
        roll = rng.random()
        if roll < 0.5:
            return frame(
                1, channel, self.method_payload(rng.choice(METHOD_CLASSES), own)
            )
        if roll < 0.6:  # a content header, maybe with a huge or lying size
            size = rng.choice([0, 1, 5, 2**20, 2**27 + 1, 2**64 - 1])
            flags = rng.choice(
                [b"\x00\x00", b"\x90\x00", b"\x20\x00", rng.randbytes(2)]
            )
            props = rng.randbytes(rng.randrange(12)) if rng.random() < 0.5 else b""
            if flags == b"\x20\x00" and rng.random() < 0.5:  # a headers table
                props = self.table()
            class_id = rng.choice([60, 60, 10, 0])
            return frame(
                2, channel, struct.pack(">HHQ", class_id, 0, size) + flags + props
            )
        if roll < 0.7:
            return frame(3, channel, rng.randbytes(rng.randrange(40)))
        if roll < 0.78:
            return frame(8, channel, rng.choice([b"", b"", b"x"]))
        if roll < 0.86:  # access.request, the obsolete class pamqp lacks
            return frame(
                1, channel, b"\x00\x1e\x00\x0a" + shortstr(self.name(own)) + b"\x00"
            )
        if roll < 0.95:
            end = rng.choice([0xCE, 0xCE, 0, 0xCF])
            return frame(
                rng.randrange(256), channel, rng.randbytes(rng.randrange(24)), end
            )
        # A frame header announcing more than frame_max.
        return struct.pack(
            ">BHI", rng.choice([1, 2, 3]), channel, rng.randrange(FRAME_MAX + 1, 2**32)
        )

    # -- the valid session ---------------------------------------------------------

    def session(self, tag: str) -> tuple[list[bytes], list[str]]:
        """A complete, valid client session, frame by frame, and its names."""
        rng = self.rng
        queue = rng.choice([f"fz-q-{tag}", *SHARED_NAMES])
        exchange = f"fz-x-{tag}" if rng.random() < 0.7 else "fz-x"
        headers = f"fz-h-{tag}"
        delayed = f"fz-d-{tag}"
        own = [queue, exchange, headers, delayed, f"fz-c-{tag}"]
        capabilities = {
            "publisher_confirms": True,
            "basic.nack": True,
            "consumer_cancel_notify": True,
            "connection.blocked": True,
            "authentication_failure_close": rng.random() < 0.5,
        }
        body = rng.randbytes(rng.choice([0, 1, 10, 300]))
        # Bounded queues that expire: a long run must not hoard messages.
        queue_arguments = {"x-max-length": 50, "x-expires": 20000}
        frames = [
            PROTOCOL_HEADER,
            method(
                0,
                commands.Connection.StartOk(
                    client_properties={"product": "fuzz", "capabilities": capabilities},
                    mechanism="PLAIN",
                    response="\x00guest\x00guest",
                    locale="en_US",
                ),
            ),
            method(
                0,
                commands.Connection.TuneOk(
                    channel_max=2047, frame_max=FRAME_MAX, heartbeat=0
                ),
            ),
            method(0, commands.Connection.Open(virtual_host="/")),
            method(1, commands.Channel.Open()),
            method(1, commands.Confirm.Select()),
            method(1, commands.Basic.Qos(prefetch_count=10)),
            method(
                1,
                commands.Exchange.Declare(
                    exchange=exchange, exchange_type="direct", auto_delete=True
                ),
            ),
            method(
                1,
                commands.Exchange.Declare(
                    exchange=headers, exchange_type="headers", auto_delete=True
                ),
            ),
            method(1, commands.Queue.Declare(queue=queue, arguments=queue_arguments)),
            method(
                1, commands.Queue.Bind(queue=queue, exchange=exchange, routing_key="rk")
            ),
            method(
                1,
                commands.Queue.Bind(
                    queue=queue, exchange=headers, arguments={"x-match": "any", "a": 1}
                ),
            ),
            method(1, commands.Basic.Publish(exchange=exchange, routing_key="rk")),
            *content(1, body, delivery_mode=2, headers={"a": 1}, expiration="60000"),
            method(1, commands.Basic.Publish(exchange=headers, mandatory=True)),
            *content(1, body, headers={"a": 1}, priority=1),
            method(
                1,
                commands.Basic.Publish(exchange="", routing_key=queue, mandatory=True),
            ),
            *content(
                1, body, content_type="text/plain", correlation_id="c", reply_to="r"
            ),
            method(
                1,
                commands.Exchange.Declare(
                    exchange=delayed,
                    exchange_type="x-delayed-message",
                    durable=rng.random() < 0.5,
                    auto_delete=True,
                    arguments={"x-delayed-type": "direct"},
                ),
            ),
            method(
                1, commands.Queue.Bind(queue=queue, exchange=delayed, routing_key="rk")
            ),
            method(1, commands.Basic.Publish(exchange=delayed, routing_key="rk")),
            *content(1, body, headers={"x-delay": 5, "CC": [queue]}, delivery_mode=2),
            method(1, commands.Basic.Consume(queue=queue, consumer_tag=f"fz-c-{tag}")),
            method(1, commands.Basic.Ack(delivery_tag=1)),
            method(1, commands.Basic.Get(queue=queue)),
            method(
                1, commands.Basic.Nack(delivery_tag=2, multiple=True, requeue=False)
            ),
            method(2, commands.Channel.Open()),
            method(2, commands.Tx.Select()),
            method(2, commands.Basic.Publish(exchange="", routing_key=queue)),
            *content(2, body),
            method(2, commands.Tx.Commit()),
            method(2, commands.Basic.Recover(requeue=True)),
            method(1, commands.Basic.Cancel(consumer_tag=f"fz-c-{tag}")),
            method(1, commands.Queue.Purge(queue=queue)),
            method(
                1,
                commands.Queue.Unbind(queue=queue, exchange=exchange, routing_key="rk"),
            ),
            method(1, commands.Exchange.Delete(exchange=headers)),
            method(1, commands.Exchange.Delete(exchange=delayed)),
            method(
                2,
                commands.Channel.Close(
                    reply_code=200, reply_text="bye", class_id=0, method_id=0
                ),
            ),
            method(
                1,
                commands.Channel.Close(
                    reply_code=200, reply_text="bye", class_id=0, method_id=0
                ),
            ),
            method(
                0,
                commands.Connection.Close(
                    reply_code=200, reply_text="bye", class_id=0, method_id=0
                ),
            ),
        ]
        return frames, own

    # -- mutations ------------------------------------------------------------------

    def mutate_frames(self, frames: list[bytes], own: list[str]) -> list[bytes]:
        rng = self.rng
        frames = list(frames)
        operations = [
            "arguments",
            "arguments",
            "arguments",
            "arguments",
            "insert",
            "insert",
            "insert",
            "drop",
            "repeat",
            "swap",
            "move",
            "channel",
            "type",
            "size",
            "end",
            "heartbeat",
            "big",
            "publish",
            "publish",
            "publish",
        ]
        for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5])):
            operation = rng.choice(operations)
            index = rng.randrange(1, len(frames))  # the header stays first
            current = frames[index]
            if operation == "arguments" and current[0] == 1 and len(current) >= 11:
                # The same method, every argument fuzzed.
                channel = struct.unpack_from(">H", current, 1)[0]
                method_class = commands.INDEX_MAPPING.get(
                    struct.unpack_from(">I", current, 7)[0]
                )
                if method_class is not None:
                    frames[index] = frame(
                        1, channel, self.method_payload(method_class, own)
                    )
            elif operation == "insert":
                frames.insert(index, self.random_frame(own))
            elif operation == "drop" and len(frames) > 2:
                del frames[index]
            elif operation == "repeat":
                frames.insert(index, current)
            elif operation == "swap" and index + 1 < len(frames):
                frames[index], frames[index + 1] = frames[index + 1], frames[index]
            elif operation == "move":
                frames.insert(rng.randrange(1, len(frames)), frames.pop(index))
            elif operation == "channel" and len(current) >= 8:
                channel = rng.choice([0, 1, 2, 3, 4, 65535])
                frames[index] = current[:1] + struct.pack(">H", channel) + current[3:]
            elif operation == "type" and len(current) >= 8:
                frames[index] = (
                    bytes((rng.choice([1, 2, 3, 8, 0, 4, 206]),)) + current[1:]
                )
            elif operation == "size" and len(current) >= 8:
                size = struct.unpack_from(">I", current, 3)[0]
                size = max(
                    0, rng.choice([size - 1, size + 1, size + 100, 0, 2**32 - 1])
                )
                frames[index] = (
                    current[:3] + struct.pack(">I", min(size, 2**32 - 1)) + current[7:]
                )
            elif operation == "end" and len(current) >= 8:
                frames[index] = current[:-1] + bytes((rng.randrange(256),))
            elif operation == "publish":
                # Fuzzed properties through any exchange the session knows.
                exchange = rng.choice([*own[1:4], "", "amq.headers", "amq.direct"])
                routing_key = rng.choice(["rk", own[0], ""])
                frames[index:index] = self.publish(1, exchange, routing_key, own)
            elif operation == "heartbeat":
                frames.insert(index, frame(8, rng.choice([0, 0, 1, 2, 9]), b""))
            elif operation == "big":
                # A declare, bind or publish carrying a table of tiny values.
                method_class = rng.choice(
                    [
                        commands.Queue.Declare,
                        commands.Exchange.Declare,
                        commands.Queue.Bind,
                        commands.Basic.Consume,
                    ]
                )
                payload = self._with_table(method_class, self.big_table(), own)
                frames.insert(index, frame(1, 1, payload))
        return frames

    def _with_table(self, method_class: Any, table: bytes, own: list[str]) -> bytes:
        """`method_class` with plausible arguments and `table` as its table."""
        parts = [struct.pack(">I", method_class.index)]
        bits = count = 0
        for name in method_class.__slots__:
            kind = method_class.amqp_type(name)
            if kind == "bit":
                count += 1
                continue
            if count:
                parts.append(bytes((bits,)))
                bits = count = 0
            if kind == "table":
                parts.append(table)
            elif kind == "shortstr":
                parts.append(shortstr(self.rng.choice(own).encode()))
            else:
                parts.append(self.field(kind, own))
        if count:
            parts.append(bytes((bits,)))
        return b"".join(parts)

    def mutate_bytes(self, data: bytes) -> bytes:
        rng = self.rng
        data = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 4])):
            if not data:
                break
            operation = rng.choice(["flip", "set", "insert", "delete", "cut", "splice"])
            position = rng.randrange(len(data))
            if operation == "flip":
                data[position] ^= 1 << rng.randrange(8)
            elif operation == "set":
                data[position] = rng.choice([0, 1, 0xCE, 0xFF, rng.randrange(256)])
            elif operation == "insert":
                data[position:position] = rng.randbytes(rng.randrange(1, 9))
            elif operation == "delete":
                del data[position : position + rng.randrange(1, 9)]
            elif operation == "cut":
                del data[max(position, 8) :]
            else:
                start = rng.randrange(len(data))
                data[position:position] = data[start : start + rng.randrange(1, 64)]
        return bytes(data)

    # -- inputs ----------------------------------------------------------------

    def chunked(self, data: bytes) -> list[tuple[bytes, float]]:
        """How to send: at once, in random chunks, or a few bytes at a time
        with pauses (slow, within about a second)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.6 or not data:
            return [(data, 0.0)]
        if roll < 0.9:
            plan = []
            position = 0
            while position < len(data):
                size = rng.choice([1, 2, 7, 8, 100, 4096])
                plan.append((data[position : position + size], 0.0))
                position += size
            return plan
        step = max(1, len(data) // 40)
        return [
            (data[start : start + step], 0.02) for start in range(0, len(data), step)
        ]

    def make_input(self, tag: str) -> Input:
        rng = self.rng
        roll = rng.random()
        if roll < 0.01:  # connect and say nothing, or half a header
            return Input(
                "silent", [(PROTOCOL_HEADER[: rng.choice([0, 3])], 0.0)], "wait"
            )
        if roll < 0.02:  # a handshake at slowloris speed, past the timeout
            frames, _ = self.session(tag)
            data = b"".join(frames[:4])
            return Input(
                "slowloris", [(data[i : i + 1], 0.06) for i in range(len(data))], "wait"
            )
        if roll < 0.07:  # garbage, after a good header or not
            prefix = PROTOCOL_HEADER if rng.random() < 0.7 else b""
            return Input(
                "garbage", self.chunked(prefix + rng.randbytes(rng.randrange(1, 200)))
            )
        frames, own = self.session(tag)
        if roll < 0.12:  # a valid prefix, then a half-close or a reset
            data = b"".join(frames)[: rng.randrange(1, len(b"".join(frames)))]
            return Input(
                "partial", self.chunked(data), rng.choice(["shutdown", "reset"])
            )
        if roll < 0.2:  # a valid handshake and channel, then random frames
            data = b"".join(
                frames[:5]
                + [self.random_frame(own) for _ in range(rng.randrange(1, 12))]
            )
            return Input("random frames", self.chunked(data), see_it_close=False)
        if roll < 0.22:
            return Input("valid session", self.chunked(b"".join(frames)))
        mutated = b"".join(self.mutate_frames(frames, own))
        kind = "mutated frames"
        if rng.random() < 0.3:
            mutated = self.mutate_bytes(mutated)
            kind = "mutated bytes"
        return Input(kind, self.chunked(mutated), see_it_close=rng.random() < 0.25)


# -- what the broker sends -------------------------------------------------


class ServerOutput:
    """Parses the broker's bytes as they come and notes what matters."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.started = False
        self.header_reply = False  # it answered a bad header with its own
        self.close_code: int | None = None  # its connection.close
        self.close_ok = False  # its close-ok to our close
        self.channel_closes: list[int] = []
        self.problems: list[str] = []
        self.frames = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if not self.started and len(self._buffer) < 8:
            return
        if not self.started and self._buffer[:4] == b"AMQP":
            self.header_reply = True
            if bytes(self._buffer[:8]) != PROTOCOL_HEADER:
                self.problems.append(
                    f"wrong protocol header sent: {bytes(self._buffer[:8])!r}"
                )
            del self._buffer[:8]
            if self._buffer:
                self.problems.append("bytes after the protocol header reply")
            return
        self.started = True
        while len(self._buffer) >= 8:
            frame_type, channel, size = struct.unpack_from(">BHI", self._buffer)
            if size > FRAME_MAX:
                self.problems.append(f"frame of {size} bytes, above frame_max")
                self._buffer.clear()
                return
            if len(self._buffer) < size + 8:
                return
            raw = bytes(self._buffer[: size + 8])
            del self._buffer[: size + 8]
            self._frame(frame_type, channel, raw)

    def _frame(self, frame_type: int, channel: int, raw: bytes) -> None:
        self.frames += 1
        if self.close_code is not None and not (
            frame_type == 1 and raw[7:11] == b"\x00\x0a\x00\x33"  # connection.close-ok
        ):
            self.problems.append(f"frame after connection.close: {raw[:16]!r}")
        if raw[7:11] == b"\x00\x1e\x00\x0b":  # access.request-ok
            return
        if frame_type == 2:
            # A content header: its properties are the publisher's, passed
            # through as sent (whatever they are); the rest is ours.
            if len(raw) < 22 or raw[7:11] != b"\x00\x3c\x00\x00" or not channel:
                self.problems.append(f"bad content header {raw[:32]!r}")
            return
        if frame_type == 3:
            if not channel:
                self.problems.append("content body on channel 0")
            return
        try:
            _, _, value = pamqp_frame.unmarshal(raw)
        except Exception as error:  # noqa: BLE001 - any failure is a finding
            self.problems.append(f"unparseable frame {raw[:32]!r}: {error!r}")
            return
        if isinstance(value, commands.Connection.Close):
            self.close_code = value.reply_code
        elif isinstance(value, commands.Connection.CloseOk):
            self.close_ok = True
        elif isinstance(value, commands.Channel.Close):
            self.channel_closes.append(value.reply_code)


@attrs.define
class Result:
    kind: str
    outcome: str
    channel_closes: list[int]
    problems: list[str]


CLOSE_OK = method(0, commands.Connection.CloseOk())
TERMINATOR = bytes(FRAME_MAX + 16)


class Exchange:
    """One fuzz socket: sends the plan while reading, answers the broker's
    close with close-ok, and sees the socket to its end."""

    def __init__(self, port: int, given: Input) -> None:
        self.input = given
        self.output = ServerOutput()
        self.eof = False
        self.problems: list[str] = []
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S
        )
        self.port = self.sock.getsockname()[1]  # the broker logs it
        self.sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self._replied = False

    def run(self) -> Result:
        try:
            return self._run()
        finally:
            self.selector.close()
            self.sock.close()

    def _run(self) -> Result:
        given = self.input
        for data, pause in given.plan:
            if self._finished():
                break
            self._send(data)
            self._read_for(pause)
        if given.end == "reset" and not self._finished():
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            return self._result(None)
        if given.end == "wait":
            # Only the broker's timeouts can end this one.
            self._read_until(lambda: self.eof, ANSWER_TIMEOUT_S)
            return self._result("unclosed" if not self.eof else None)
        self._read_quiet()
        if not self._finished():
            if given.end == "shutdown":
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)
                self._read_until(lambda: self.eof, CLOSE_WAIT_S)
                return self._result(
                    "unclosed after half-close" if not self.eof else None
                )
            self._send(TERMINATOR)
            self._read_until(self._finished, ANSWER_TIMEOUT_S)
            if not self._finished():
                return self._result("unclosed after the terminator")
        if given.see_it_close:
            # The broker closes once it has our close-ok, or after its close
            # timeout when our stream is out of step.
            self._read_until(lambda: self.eof, CLOSE_WAIT_S)
            if not self.eof:
                return self._result("socket left open after close")
        return self._result(None)

    def _result(self, problem: str | None) -> Result:
        output = self.output
        problems = self.problems + output.problems
        if problem is not None:
            problems.append(problem)
        if output.header_reply:
            outcome = "protocol header returned"
        elif output.close_code is not None:
            outcome = f"connection.close {output.close_code}"
        elif output.close_ok:
            outcome = "clean close"
        elif self.input.end == "reset" and not self.eof:
            outcome = "reset by us"
        elif self.eof:
            outcome = "socket closed, no close frame"
        else:
            outcome = "unclosed"
        return Result(self.input.kind, outcome, list(output.channel_closes), problems)

    def _finished(self) -> bool:
        output = self.output
        return (
            self.eof
            or output.close_code is not None
            or output.close_ok
            or output.header_reply
        )

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while view and not self.eof and time.monotonic() < deadline:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                self._read_for(0.01)  # the broker may be waiting for us to read
                continue
            except OSError:
                self.eof = True  # reset or broken pipe: the broker closed
                return
            view = view[sent:]
            self._read_for(0)
        if view and not self.eof:
            self.problems.append("broker stopped reading for 5 s")

    def _receive(self) -> bool:
        """Read what is there; False when nothing was."""
        try:
            data = self.sock.recv(262144)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.output.feed(data)
        if self.output.close_code is not None and not self._replied:
            # What a client does: close-ok (which the broker can only read if
            # our stream is still in step).
            self._replied = True
            with contextlib.suppress(OSError):
                self.sock.send(CLOSE_OK)
        return True

    def _read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.eof:
            remaining = deadline - time.monotonic()
            if not self.selector.select(max(remaining, 0)):
                if remaining <= 0:
                    return
                continue
            self._receive()

    def _read_until(self, done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done() and not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.selector.select(min(remaining, 0.1)):
                self._receive()

    def _read_quiet(self) -> None:
        """Read until the broker has been quiet for IDLE_S (or is done)."""
        while not self._finished():
            if not self.selector.select(IDLE_S):
                return
            self._receive()


# -- the well-behaved client -----------------------------------------------


class CalmClient(threading.Thread):
    """Publishes with confirms and consumes, on its own vhost, until stopped;
    checks every message arrives once, in order."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(name="calm-client", daemon=True)
        self.port = port
        self.stop = stop
        self.ready = threading.Event()
        self.published = 0
        self.received = 0
        self.errors: list[str] = []
        self.out_of_order: list[tuple[int, int]] = []
        self.latencies: list[float] = []
        self._sent_at: dict[int, float] = {}

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:  # noqa: BLE001 - reported, the run fails
            self.errors.append(repr(error))
        finally:
            self.ready.set()

    def _run(self) -> None:
        parameters = pika.ConnectionParameters(
            "127.0.0.1",
            self.port,
            CALM_VHOST,
            pika.PlainCredentials("guest", "guest"),
            blocked_connection_timeout=30,
            socket_timeout=10,
        )
        connection = pika.BlockingConnection(parameters)
        publisher = connection.channel()
        publisher.confirm_delivery()
        publisher.queue_declare(CALM_QUEUE, durable=True)
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=50)
        consumer.basic_consume(CALM_QUEUE, self._on_message)
        self.ready.set()
        properties = pika.BasicProperties(delivery_mode=2)
        while not self.stop.is_set():
            number = self.published
            self._sent_at[number] = time.monotonic()
            # Raises on a nack or a return: a lost message fails the run.
            publisher.basic_publish(
                "", CALM_QUEUE, str(number).encode(), properties, mandatory=True
            )
            self.published += 1
            connection.process_data_events(time_limit=0)
            # About 100 a second: steady, and light on a 2-core CI machine.
            self.stop.wait(0.01)
        deadline = time.monotonic() + 15
        while self.received < self.published and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
        connection.close()

    def _on_message(
        self, channel: Any, deliver: Any, _properties: Any, body: bytes
    ) -> None:
        number = int(body)
        if number != self.received or deliver.redelivered:
            self.out_of_order.append((self.received, number))
        self.latencies.append(
            time.monotonic() - self._sent_at.pop(number, time.monotonic())
        )
        self.received += 1
        channel.basic_ack(deliver.delivery_tag)


# -- the broker's log ------------------------------------------------------


class LogWatch(logging.Handler):
    """Collects the broker's crash lines: any error with a traceback, any
    "crashed" line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.crashes: list[str] = []
        self.warnings = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "crashed" in message or record.exc_info or record.levelno >= logging.ERROR:
            text = message
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.crashes.append(text)
        else:
            self.warnings += 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[LogWatch]:
        logger = logging.getLogger("amqpy")
        level = logger.level
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)  # or the records are never made
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)


# -- a run ------------------------------------------------------------------


@attrs.define
class Report:
    seconds: float = 0.0
    inputs: int = 0
    kinds: Counter[str] = attrs.Factory(Counter)
    outcomes: Counter[str] = attrs.Factory(Counter)
    channel_closes: Counter[int] = attrs.Factory(Counter)
    problems: list[str] = attrs.Factory(list)
    crashes: list[str] = attrs.Factory(list)
    calm_published: int = 0
    calm_received: int = 0
    calm_errors: list[str] = attrs.Factory(list)
    calm_out_of_order: list[tuple[int, int]] = attrs.Factory(list)
    calm_latencies: list[float] = attrs.Factory(list)
    after: list[str] = attrs.Factory(list)  # checks of the broker afterwards
    # A crash's traceback -> the bytes of the input that caused it.
    reproducers: dict[str, bytes] = attrs.Factory(dict)
    objects: str = ""  # what the fuzz sessions left declared

    @property
    def failures(self) -> list[str]:
        failures = [f"crash: {crash}" for crash in self.crashes]
        failures += self.problems
        failures += [f"well-behaved client: {error}" for error in self.calm_errors]
        if self.calm_out_of_order:
            failures.append(
                f"well-behaved client: out of order {self.calm_out_of_order[:5]}"
            )
        if self.calm_received != self.calm_published or not self.calm_published:
            failures.append(
                f"well-behaved client: {self.calm_published} published, "
                f"{self.calm_received} received"
            )
        return failures + self.after

    def summary(self) -> str:
        latencies = sorted(self.calm_latencies) or [0.0]
        lines = [
            f"inputs tried: {self.inputs} in {self.seconds:.1f} s "
            f"({self.inputs / max(self.seconds, 0.001):.0f}/s)",
            "inputs by kind: " + _counts(self.kinds),
            "ended by: " + _counts(self.outcomes),
            "channel.close by reply code: " + _counts(self.channel_closes),
            f"crashes found: {len(self.crashes)}",
            f"well-behaved client: {self.calm_published} published with confirms, "
            f"{self.calm_received} received in order; latency p50 "
            f"{statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms, "
            f"max {latencies[-1] * 1000:.0f} ms",
            f"left on the broker: {self.objects}",
        ]
        failures = self.failures
        lines.append(f"failures: {len(failures)}")
        lines += [f"  - {failure.splitlines()[0][:300]}" for failure in failures[:20]]
        for crash, reproducer in list(self.reproducers.items())[:3]:
            lines += ["", crash, f"input that crashed it: {reproducer!r}"]
        return "\n".join(lines)


def _counts(counter: Counter[Any]) -> str:
    return (
        ", ".join(f"{key}: {count}" for key, count in counter.most_common()) or "none"
    )


def prepare(broker: EmbeddedBroker) -> None:
    """The well-behaved client's vhost, out of the fuzz sessions' way."""

    def setup() -> None:
        access = broker.server.broker
        access.add_vhost(CALM_VHOST)
        access.set_permissions("guest", CALM_VHOST, ".*", ".*", ".*")

    broker.call(setup)


def fuzz(
    broker: EmbeddedBroker,
    *,
    seconds: float,
    max_inputs: int,
    seed: int,
    workers: int = 8,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the fuzzer against `broker` (made with BROKER_OVERRIDES)."""
    report = Report()
    watch = LogWatch()
    lock = threading.Lock()
    stop = threading.Event()
    prepare(broker)
    with watch.installed():
        calm = CalmClient(broker.port, stop)
        calm.start()
        calm.ready.wait(30)
        started = time.monotonic()
        deadline = started + seconds
        counter = iter(range(max_inputs))
        sent_by_port: dict[int, bytes] = {}

        def work(worker: int) -> None:
            mutator = Mutator(random.Random(f"{seed}-{worker}"))
            while time.monotonic() < deadline:
                with lock:
                    number = next(counter, None)
                if number is None:
                    return
                given = mutator.make_input(f"{worker}-{number}")
                try:
                    exchange = Exchange(broker.port, given)
                    with lock:
                        sent_by_port[exchange.port] = b"".join(
                            data for data, _ in given.plan
                        )
                    result = exchange.run()
                except OSError as error:
                    result = Result(
                        given.kind, "connect failed", [], [f"connect failed: {error!r}"]
                    )
                with lock:
                    report.inputs += 1
                    report.kinds[result.kind] += 1
                    report.outcomes[result.outcome] += 1
                    report.channel_closes.update(result.channel_closes)
                    report.problems += [
                        f"{result.kind}: {problem}" for problem in result.problems
                    ]
                    if progress is not None and report.inputs % 500 == 0:
                        progress(
                            f"{report.inputs} inputs, {len(watch.crashes)} crashes"
                        )

        threads = [
            threading.Thread(
                target=work, args=(worker,), name=f"fuzz-{worker}", daemon=True
            )
            for worker in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report.seconds = time.monotonic() - started
        stop.set()
        calm.join(60)
        report.calm_published = calm.published
        report.calm_received = calm.received
        report.calm_errors = calm.errors + (
            ["did not finish"] if calm.is_alive() else []
        )
        report.calm_out_of_order = calm.out_of_order
        report.calm_latencies = calm.latencies
        report.after = check_broker_after(broker)
        report.objects = broker.call(
            lambda: "{} queues, {} exchanges".format(
                sum(
                    len(vhost.queues) for vhost in broker.server.broker.vhosts.values()
                ),
                sum(
                    len(vhost.exchanges)
                    for vhost in broker.server.broker.vhosts.values()
                ),
            )
        )
        report.crashes = list(watch.crashes)
        for crash in report.crashes:
            found = re.search(r"connection 127\.0\.0\.1:(\d+) ->", crash)
            if found and int(found[1]) in sent_by_port:
                report.reproducers[crash] = sent_by_port[int(found[1])]
    return report


def check_broker_after(broker: EmbeddedBroker) -> list[str]:
    """Every connection drained, and a new client served."""
    failures = []
    deadline = time.monotonic() + 10
    left = broker.call(lambda: len(broker.server.connections))
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = broker.call(lambda: len(broker.server.connections))
    if left:
        failures.append(f"{left} connections still open on the broker after the run")
    try:
        connection = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=10)
        )
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"after")
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            got = channel.basic_get(queue, auto_ack=True)[2]
        connection.close()
        if got != b"after":
            failures.append("a new client's message did not come back")
    except Exception as error:  # noqa: BLE001 - the finding itself
        failures.append(f"a new client was not served: {error!r}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--max-inputs", type=int, default=10**9)
    args = parser.parse_args()
    # The watch reads the broker's records; thousands of warnings about
    # broken clients are the point, not news.
    logging.getLogger("amqpy").propagate = False
    with EmbeddedBroker(**BROKER_OVERRIDES) as broker:
        report = fuzz(
            broker,
            seconds=args.seconds,
            max_inputs=args.max_inputs,
            seed=args.seed,
            workers=args.workers,
            progress=lambda line: print(line, file=sys.stderr, flush=True),  # noqa: T201
        )
    print(report.summary())  # noqa: T201
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
