"""`amqpy perf`: load for an AMQP 0-9-1 broker, in the spirit of RabbitMQ's
PerfTest, that checks every message it gets back.

Producers publish stamped messages (amqpy/perf/load.py) for a time (-z) or a
count (-C), consumers receive them and check count, order, integrity and
duplicates, and a summary gives the rates, latency percentiles and what the
check found; `--json` gives the same as one JSON object. Exit status: 0 when
every message checked out, 1 when not (or the broker could not be reached),
2 for bad arguments.

This module only defines the arguments, so `amqpy`'s other commands start
without loading the client (amqpy/perf/run.py does the work).
"""

from __future__ import annotations

import argparse

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_SIZE = 16
DEFAULT_DRAIN_TIMEOUT_S = 10.0

DESCRIPTION = """\
Load for an AMQP 0-9-1 broker (RabbitMQ's PerfTest in spirit), checking every
message it receives: count, per-producer order, integrity and duplicates.
Without -u, each consumer gets its own server-named queue bound to amq.direct,
so every consumer receives every message; with -u the consumers share that
queue. Runs until -z seconds or -C messages per producer (without either,
until Ctrl-C), then the consumers receive what is left and a summary follows.
Exit status 0 when every message checked out, 1 when not, 2 on bad arguments.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser: argparse.ArgumentParser = commands.add_parser(
        "perf",
        help="generate load and measure a broker (as PerfTest), checking messages",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        dest="amqp_url",
        default=DEFAULT_URL,
        metavar="URL",
        # argparse formats help with %: the URL's %2F needs escaping.
        help=f"broker to load (default {DEFAULT_URL.replace('%', '%%')})",
    )
    counts = parser.add_argument_group("producers and consumers")
    counts.add_argument(
        "-x", "--producers", type=int, default=1, help="producers (default 1)"
    )
    counts.add_argument(
        "-y", "--consumers", type=int, default=1, help="consumers (default 1)"
    )
    messages = parser.add_argument_group("messages")
    messages.add_argument(
        "-s",
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help=f"body size in bytes, at least 16 (default {DEFAULT_SIZE})",
    )
    messages.add_argument(
        "-r",
        "--rate",
        type=float,
        default=0.0,
        help="messages a second per producer (default: as fast as possible)",
    )
    messages.add_argument(
        "-f",
        "--flag",
        action="append",
        choices=("persistent", "mandatory"),
        metavar="FLAG",
        default=[],
        help="persistent: delivery mode 2 (and durable queues where perf "
        "declares them); mandatory: unroutable messages come back. Repeatable",
    )
    messages.add_argument(
        "-c",
        "--confirm",
        type=int,
        default=0,
        metavar="WINDOW",
        help="publisher confirms, at most WINDOW unconfirmed per producer",
    )
    length = parser.add_argument_group("how long")
    length.add_argument(
        "-z", "--time", type=float, dest="seconds", help="run for this many seconds"
    )
    length.add_argument(
        "-C",
        "--pmessages",
        type=int,
        dest="count",
        help="messages each producer publishes",
    )
    length.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        metavar="SECONDS",
        help="once publishing ends, how long consumers wait without a message "
        f"before the missing ones count as lost (default {DEFAULT_DRAIN_TIMEOUT_S:g})",
    )
    routing = parser.add_argument_group("routing")
    routing.add_argument(
        "-u", "--queue", help="queue the consumers share (declared if missing)"
    )
    routing.add_argument(
        "-e",
        "--exchange",
        help='exchange to publish to (default: "" with -u, else amq.direct)',
    )
    routing.add_argument(
        "-t",
        "--type",
        dest="exchange_type",
        choices=("direct", "fanout", "topic", "headers"),
        default="direct",
        help="type of the exchange if perf has to declare it (default direct)",
    )
    routing.add_argument(
        "-k",
        "--routing-key",
        help="routing key (default: the queue's name with -u, else one per run)",
    )
    consuming = parser.add_argument_group("consuming")
    consuming.add_argument(
        "-a",
        "--autoack",
        action="store_true",
        help="consume without acknowledgements (no-ack)",
    )
    consuming.add_argument(
        "-q",
        "--qos",
        type=int,
        dest="prefetch",
        default=0,
        metavar="PREFETCH",
        help="prefetch count per consumer (default 0: unlimited)",
    )
    consuming.add_argument(
        "-A",
        "--multi-ack",
        type=int,
        default=1,
        metavar="N",
        help="one multiple ack every N messages (default 1: ack each)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json", action="store_true", help="the result as one JSON object"
    )
    output.add_argument(
        "-Q",
        "--quiet",
        action="store_true",
        help="no progress line every second (on stderr)",
    )
    output.add_argument(
        "--single-process",
        action="store_true",
        help="run producers in this process too (by default they get a "
        "process of their own when there are consumers and more than one CPU)",
    )


def main(args: argparse.Namespace) -> int:
    """`amqpy perf`: its exit status."""
    from amqpy.perf import run

    return run.main(args)
