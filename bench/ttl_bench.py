"""TTL benchmark (not a test): a queue of N messages with a queue TTL expires
them on time, in batches, without stalling other queues.

    .venv/bin/python bench/ttl_bench.py --messages 1000000 --ttl-ms 3000

Loads N 16-byte messages into a queue with x-message-ttl (in the broker's
thread, to skip the publishing time), then, while they expire, runs a pika
round trip (publish + basic.get) on another queue every 10 ms and reports the
time until the TTL queue is empty and the round-trip latencies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pika

from amqpy.model.message import Message
from amqpy.server.embedded import EmbeddedBroker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--ttl-ms", type=int, default=3000)
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.queue_declare("ttl", arguments={"x-message-ttl": args.ttl_ms})
        channel.queue_declare("ping")

        def load() -> float:
            queue = broker.server.broker.vhosts["/"].queues["ttl"]
            for _ in range(args.messages):
                queue.enqueue(Message("", "ttl", b"\x00\x00", b"x" * 16))
            return time.monotonic()

        started = time.monotonic()
        loaded = broker.call(load)
        load_s = loaded - started
        deadline = started + args.ttl_ms / 1000  # the first message's expiry
        latencies = []
        while True:
            sent = time.monotonic()
            channel.basic_publish("", "ping", b"p")
            method, _, _ = channel.basic_get("ping", auto_ack=True)
            latencies.append((time.monotonic() - sent) * 1000)
            assert method is not None
            count = channel.queue_declare("ttl", passive=True).method.message_count
            if count == 0:
                emptied = time.monotonic()
                break
            assert time.monotonic() < deadline + 120, "messages did not expire"
            time.sleep(0.01)
        connection.close()
    result = {
        "messages": args.messages,
        "ttl_ms": args.ttl_ms,
        "load_s": round(load_s, 2),
        "empty_after_last_expiry_s": round(emptied - (loaded + args.ttl_ms / 1000), 2),
        "round_trips": len(latencies),
        "rtt_ms_p50": round(statistics.median(latencies), 2),
        "rtt_ms_p99": round(sorted(latencies)[int(len(latencies) * 0.99) - 1], 2),
        "rtt_ms_max": round(max(latencies), 2),
    }
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
