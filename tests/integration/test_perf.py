"""`amqpy perf` as a user runs it: short runs against a broker, what the
summary and the JSON say, and that the check fails when the broker loses,
mangles or keeps old messages."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from amqpy.cli import main
from amqpy.server.embedded import EmbeddedBroker


@pytest.fixture
def url(broker: EmbeddedBroker) -> str:
    return f"amqp://guest:guest@127.0.0.1:{broker.port}/%2F"


Perf = Callable[..., tuple[int, str, str]]


@pytest.fixture
def perf(url: str, capsys: pytest.CaptureFixture[str]) -> Perf:
    """Run `amqpy perf --url URL -Q ARGS`: (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["perf", "--url", url, "-Q", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def perf_json(perf: Perf, *args: str) -> dict[str, Any]:
    code, out, err = perf("--json", *args)
    result: dict[str, Any] = json.loads(out)
    assert code == (0 if result["ok"] else 1), err
    return result


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_counts_every_message_and_prints_a_summary(perf: Perf) -> None:
    code, out, err = perf("-C", "3000")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("amqpy perf: 1 producer, 1 consumer, 16 B, acks")
    sent = next(line for line in lines if line.startswith("sent "))
    received = next(line for line in lines if line.startswith("received "))
    assert sent.split()[1] == received.split()[1] == "3,000"
    assert any(line.startswith("consumer ") for line in lines)  # latency row
    assert lines[-1] == (
        "checked: all 3,000 messages arrived, intact, in order, no duplicates"
    )


def test_json_result(perf: Perf, url: str) -> None:
    result = perf_json(perf, "-C", "2000", "-s", "300", "-q", "50", "-A", "10")
    assert result["ok"] is True
    assert result["errors"] == []
    settings = result["settings"]
    assert settings["url"] == url.replace("guest:guest@", "guest@")
    assert {k: settings[k] for k in ("size", "prefetch", "multi_ack", "count")} == {
        "size": 300,
        "prefetch": 50,
        "multi_ack": 10,
        "count": 2000,
    }
    assert settings["exchange"] == "amq.direct"
    assert settings["routing_key"].startswith("amqpy-perf.")
    assert result["sent"]["messages"] == 2000
    assert result["sent"]["msg_per_s"] > 0
    received = result["received"]
    assert {k: received[k] for k in ("messages", "expected", "missing")} == {
        "messages": 2000,
        "expected": 2000,
        "missing": 0,
    }
    for problem in ("corrupt", "foreign", "out_of_order", "duplicates"):
        assert received[problem] == 0
    latency = result["latency_ms"]["consumer"]
    assert list(latency) == [
        "min",
        "p50",
        "p75",
        "p95",
        "p99",
        "p99.9",
        "max",
        "samples",
    ]
    assert latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]
    assert latency["samples"] == 2000
    assert result["latency_ms"]["confirm"] is None
    assert result["confirmed"] is None
    assert result["consumers"] == [
        {
            "number": 0,
            "queue": result["queues"][0]["name"],
            "received": 2000,
            "corrupt": 0,
            "foreign": 0,
            "out_of_order": 0,
            "redelivered": 0,
        }
    ]
    assert result["client_cpu"]["seconds"] > 0


def test_confirms_and_persistence(
    perf: Perf, broker: EmbeddedBroker, channel: Any
) -> None:
    result = perf_json(
        perf, "-u", "perf.durable", "-f", "persistent", "-c", "100", "-C", "1500"
    )
    assert result["confirmed"] == {"messages": 1500, "nacked": 0}
    assert result["latency_ms"]["confirm"]["samples"] > 0
    assert result["received"]["missing"] == 0
    # perf declared the queue durable, and every message was acked.
    queue = broker.call(lambda: broker.server.broker.vhosts["/"].queues["perf.durable"])
    assert queue.durable
    assert channel.queue_declare("perf.durable", passive=True).method.message_count == 0
    # Without consumers the messages stay, persistent.
    result = perf_json(
        perf, "-u", "perf.durable", "-f", "persistent", "-c", "10", "-y", "0", "-C", "5"
    )
    assert result["queues"][0]["gained"] == 5
    _, properties, body = channel.basic_get("perf.durable", auto_ack=True)
    assert properties.delivery_mode == 2
    assert len(body) == 16


def test_several_producers_and_consumers(perf: Perf) -> None:
    # Without -u every consumer has its own queue, and gets every message.
    result = perf_json(perf, "-x", "3", "-y", "2", "-C", "700", "-a")
    assert result["sent"]["messages"] == 2100
    assert [c["received"] for c in result["consumers"]] == [2100, 2100]
    assert len({q["name"] for q in result["queues"]}) == 2
    assert result["received"]["expected"] == 4200
    # With -u they share one queue; each sees every producer's messages in order.
    result = perf_json(
        perf, "-x", "2", "-y", "3", "-C", "900", "-u", "perf.shared", "-q", "10"
    )
    assert result["queues"][0]["received"] == 1800
    assert sum(c["received"] for c in result["consumers"]) == 1800
    assert result["received"]["out_of_order"] == 0
    assert [p["sent"] for p in result["producers"]] == [900, 900]


def test_one_process_and_a_rate_limit(perf: Perf) -> None:
    result = perf_json(perf, "--single-process", "-r", "1000", "-C", "200")
    assert result["settings"]["processes"] == 1
    assert result["received"]["messages"] == 200
    # 200 messages at 1000 a second take at least 0.2 s.
    assert result["elapsed_s"] >= 0.19
    assert result["sent"]["msg_per_s"] <= 1100


def test_bodies_larger_than_a_frame(perf: Perf) -> None:
    # 300 kB bodies travel in three body frames each (frame_max 128 KiB).
    result = perf_json(perf, "--single-process", "-s", "300000", "-C", "20")
    assert result["received"]["messages"] == 20
    assert result["received"]["corrupt"] == 0
    assert result["received"]["mb_per_s"] > 0


def test_an_exchange_perf_declares(perf: Perf, channel: Any) -> None:
    result = perf_json(
        perf, "-e", "perf.fanout", "-t", "fanout", "-y", "3", "-C", "300"
    )
    assert [c["received"] for c in result["consumers"]] == [300, 300, 300]
    channel.exchange_declare("perf.fanout", "fanout", passive=True)


def test_a_refused_publish_fails_the_run(perf: Perf, channel: Any) -> None:
    channel.exchange_declare("perf.internal", "fanout", internal=True)
    result = perf_json(perf, "-e", "perf.internal", "-C", "100")
    assert result["ok"] is False
    assert result["errors"] == [
        "producer 0: the broker closed a channel: 403 ACCESS_REFUSED - cannot "
        "publish to internal exchange 'perf.internal' in vhost '/'"
    ]
    # What the consumers missed is not counted against the broker then.
    assert result["received"]["missing"] is None


def test_messages_left_by_an_earlier_run_fail_the_check(perf: Perf) -> None:
    perf_json(perf, "-u", "perf.left", "-y", "0", "-C", "40")
    result = perf_json(perf, "-u", "perf.left", "-C", "100")
    assert result["ok"] is False
    assert result["received"]["foreign"] == 40
    assert result["errors"] == [
        "consumer 0: 40 messages from another run (left in the queue?)"
    ]
    code, out, _ = perf("-u", "perf.left", "-C", "10")
    assert code == 0  # the queue was emptied by the run before
    assert "checked: all 10 messages" in out


def test_consumers_only_take_what_another_run_left(perf: Perf) -> None:
    perf_json(perf, "-u", "perf.later", "-y", "0", "-x", "2", "-C", "300")
    result = perf_json(perf, "-u", "perf.later", "-x", "0", "-y", "2", "-z", "0.3")
    assert result["ok"] is True
    assert result["sent"] is None
    assert result["received"]["messages"] == 600
    assert result["received"]["out_of_order"] == 0
    # Nothing to count against without producers.
    assert result["received"]["expected"] is None
    assert result["elapsed_s"] >= 0.3


def test_mangled_messages_fail_the_check(perf: Perf, channel: Any) -> None:
    channel.queue_declare("perf.mangled")
    channel.basic_publish("", "perf.mangled", b"x" * 16)  # not perf's stamp
    channel.basic_publish("", "perf.mangled", b"short")
    code, out, _ = perf("-u", "perf.mangled", "-C", "50")
    assert code == 1
    assert out.splitlines()[-2:] == [
        "FAILED",
        "  consumer 0: 2 corrupt messages (size, checksum or content wrong)",
    ]


def test_lost_messages_fail_the_check(perf: Perf, channel: Any) -> None:
    # The queue keeps only 10: a broker that drops messages posts no figure.
    channel.queue_declare("perf.short", arguments={"x-max-length": 10})
    result = perf_json(
        perf, "-u", "perf.short", "-y", "0", "-C", "100", "--drain-timeout", "0.2"
    )
    assert result["ok"] is False
    assert result["errors"] == [
        "queue perf.short gained 10 messages, 100 were published to it "
        "(is something else using it?)"
    ]


def test_nacked_publishes_fail_the_check(perf: Perf, channel: Any) -> None:
    channel.queue_declare(
        "perf.full", arguments={"x-max-length": 5, "x-overflow": "reject-publish"}
    )
    result = perf_json(perf, "-u", "perf.full", "-y", "0", "-c", "4", "-C", "20")
    assert result["confirmed"] == {"messages": 5, "nacked": 15}
    assert result["queues"][0]["gained"] == 5
    assert result["errors"] == ["the broker nacked 15 publishes"]


def test_messages_taken_by_another_consumer_count_as_missing(
    perf: Perf, channel: Any
) -> None:
    # Another client consumes from the shared queue: the broker hands it
    # every other message, which perf's consumer then misses.
    channel.queue_declare("perf.stolen")
    channel.basic_consume("perf.stolen", lambda *_: None, auto_ack=True)
    result = perf_json(perf, "-u", "perf.stolen", "-C", "100", "--drain-timeout", "0.3")
    assert result["ok"] is False
    missing = result["queues"][0]["missing"]
    assert 0 < missing < 100
    assert result["received"]["messages"] == 100 - missing
    assert result["errors"] == [f"queue perf.stolen: {missing} of 100 messages missing"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "8"], "-s/--size must be at least 16 bytes"),
        (["-x", "0", "-y", "0"], "no producers and no consumers"),
        (["-q", "5", "-A", "10"], "-A/--multi-ack must not exceed -q/--qos"),
        (["-a", "-A", "10"], "-A/--multi-ack needs acknowledgements"),
        (["-x", "0", "-C", "10", "-u", "q"], "-C/--pmessages counts what each"),
        (["-z", "0"], "-z/--time must be positive"),
        (["-u", "q", "-k", "other"], "with the default exchange the routing key"),
        (["-e", ""], "the default exchange reaches only named queues"),
        (["-u", "a|b"], "-u: amqpy perf takes queue names of letters"),
        (["--url", "http://localhost/"], "--url: not an amqp:// URL"),
        (["--url", "amqp://host:99999/"], "--url: bad port"),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["perf", *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith(f"amqpy perf: error: {message}")
    assert err.count("\n") == 1


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["perf", "-x", "many"])
    assert usage.value.code == 2
    assert (
        "argument -x/--producers: invalid int value: 'many'" in capsys.readouterr().err
    )


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["perf", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: amqpy perf ")
    assert "amqp://guest:guest@127.0.0.1:5672/%2F)" in out


def test_unreachable_broker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    code = main(["perf", "--url", f"amqp://127.0.0.1:{port}/", "-C", "10"])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert (
        err == f"amqpy perf: cannot connect to 127.0.0.1:{port}: Connection refused\n"
    )


def test_refused_login_is_one_line(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["perf", "--url", f"amqp://guest:nope@127.0.0.1:{broker.port}/"])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith(
        "amqpy perf: the broker closed the connection: 403 ACCESS_REFUSED"
    )
    assert err.count("\n") == 1


def test_ctrl_c_ends_an_open_ended_run_with_a_summary(url: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "amqpy", "perf", "--url", url, "-r", "2000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        # The first progress line: the run is under way.
        assert process.stderr.readline().startswith("time     1 s  sent ")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    assert out.splitlines()[-1].startswith("checked: all ")
