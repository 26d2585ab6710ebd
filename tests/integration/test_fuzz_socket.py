"""The socket-level fuzzer (issue 8) for a few seconds, and the bugs it found.

bench/fuzz_socket.py sends mutated and random sessions from raw sockets at a
running broker while a well-behaved pika client publishes with confirms and
consumes; here it runs for CI's budget (AMQPY_FUZZ_SEED picks the seed, 8 by
default), the bench script runs it for longer. The regression tests below
replay, frame by frame, what it found.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pika
import pytest
from helpers.amqp_client import AmqpClient, method_frame, raw_frame
from pamqp import commands

from amqpy.server.embedded import EmbeddedBroker

FUZZ_SEED = int(os.environ.get("AMQPY_FUZZ_SEED", "8"))


def load_fuzzer() -> ModuleType:
    """bench/fuzz_socket.py, the fuzzer itself (a script, not a package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "fuzz_socket.py"
    spec = importlib.util.spec_from_file_location("amqpy_bench_fuzz_socket", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzzer = load_fuzzer()


@pytest.fixture
def broker(make_broker: Callable[..., EmbeddedBroker]) -> EmbeddedBroker:
    """A broker with the fuzzer's short handshake and close timeouts."""
    return make_broker(**fuzzer.BROKER_OVERRIDES)


def crashes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if "crashed" in record.getMessage() or record.levelno >= logging.ERROR
    ]


def test_the_session_the_fuzzer_mutates_is_valid(broker: EmbeddedBroker) -> None:
    # Mutations start from a session the broker accepts from end to end.
    for seed in range(5):
        frames, _ = fuzzer.Mutator(random.Random(seed)).session(f"base-{seed}")
        given = fuzzer.Input("valid session", [(b"".join(frames), 0.0)])
        result = fuzzer.Exchange(broker.port, given).run()
        assert (result.outcome, result.channel_closes, result.problems) == (
            "clean close",
            [],
            [],
        )


def test_hostile_sockets_neither_crash_the_broker_nor_disturb_a_good_client(
    broker: EmbeddedBroker,
) -> None:
    # Four sockets at a time for 6 s: CI runs this beside other tests on two
    # cores; bench/fuzz_socket.py runs it harder and longer.
    report = fuzzer.fuzz(
        broker, seconds=6, max_inputs=100_000, seed=FUZZ_SEED, workers=4
    )
    print(report.summary())  # the figures, with -s or -rA
    assert report.failures == []
    assert report.inputs >= 50
    # Every input ended with a close frame or a closed socket (or our reset).
    assert sum(report.outcomes.values()) == report.inputs
    assert report.outcomes["unclosed"] == 0
    # The well-behaved client was served the whole time.
    assert report.calm_published >= 100


# -- what the fuzzer found ---------------------------------------------------------


def publish_with_raw_properties(
    client: AmqpClient, exchange: str, properties: bytes
) -> None:
    client.send(
        method_frame(1, commands.Basic.Publish(exchange=exchange, routing_key="q"))
        + raw_frame(2, 1, struct.pack(">HHQ", 60, 0, 1) + properties)
        + raw_frame(3, 1, b"x")
    )


@pytest.mark.parametrize(
    "properties",
    [
        b"\x01\x00",  # the expiration flag, and no expiration
        b"\x81\x00\x05ab",  # content-type cut short, and the expiration flag
    ],
    ids=["expiration missing", "content type cut short"],
)
def test_unreadable_properties_close_the_connection_not_crash_it(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture, properties: bytes
) -> None:
    # Reading the expiration of properties that cannot be decoded raised out
    # of the connection. RabbitMQ answers 541 (its text is just
    # "INTERNAL_ERROR").
    with AmqpClient.connect(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        publish_with_raw_properties(client, "", properties)
        code, text, _, _ = client.expect_connection_close()
        assert code == 541
        assert text.startswith("INTERNAL_ERROR - malformed content header properties")
        client.wait_closed()
    assert crashes(caplog) == []


def test_unreadable_headers_to_a_delayed_exchange_close_the_connection(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # The x-delay header of unreadable properties was read unguarded.
    with AmqpClient.connect(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        client.send_method(
            1,
            commands.Exchange.Declare(
                exchange="delayed",
                exchange_type="x-delayed-message",
                arguments={"x-delayed-type": "direct"},
            ),
        )
        client.expect(commands.Exchange.DeclareOk, 1)
        # The headers flag, a table whose length runs past the frame.
        publish_with_raw_properties(
            client, "delayed", b"\x20\x00" + struct.pack(">I", 50) + b"\x01a"
        )
        code, _, _, _ = client.expect_connection_close()
        assert code == 541
        client.wait_closed()
    assert crashes(caplog) == []


def test_a_frame_of_tiny_table_values_does_not_stall_other_clients(
    broker: EmbeddedBroker,
) -> None:
    # pamqp decoded such a table in quadratic time: 8 s of the broker's only
    # thread for one 128 KB queue.declare, every other client waiting.
    table = b"\x01kA" + struct.pack(">I", 130_000) + b"V" * 130_000
    payload = (
        struct.pack(">HH", 50, 10)
        + b"\x00\x00\x01q\x00"
        + struct.pack(">I", len(table))
        + table
    )
    other = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.port)
    ).channel()
    with AmqpClient.connect(broker.port) as client:
        client.handshake()
        client.open_channel(1)
        started = time.monotonic()
        for _ in range(4):
            client.send(raw_frame(1, 1, payload))
        other.queue_declare("", exclusive=True)  # served meanwhile
        # Unknown arguments are ignored: four declare-oks.
        for _ in range(4):
            client.expect(commands.Queue.DeclareOk, 1)
        assert time.monotonic() - started < 2.0
    other.connection.close()
