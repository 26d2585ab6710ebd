"""Durable definitions survive a restart of the broker process, graceful or
kill -9; non-durable and exclusive ones do not. The data folder is checked at
start: a second broker, a corrupt or newer definitions file, stop it."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import pytest
from helpers.server_process import Server

DEFINITIONS = "definitions.json"


def connect(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", port, socket_timeout=5, connection_attempts=1
        )
    )


def declare_everything(port: int) -> None:
    connection = connect(port)
    channel = connection.channel()
    channel.exchange_declare("d.topic", "topic", durable=True)
    channel.exchange_declare("d.ae", "fanout", durable=True)
    channel.exchange_declare(
        "d.direct", "direct", durable=True, arguments={"alternate-exchange": "d.ae"}
    )
    channel.exchange_declare("t.fanout", "fanout", durable=False)
    channel.queue_declare("d.q", durable=True, arguments={"x-max-length": 10})
    channel.queue_declare("t.q", durable=False)
    channel.queue_bind("d.q", "d.topic", "a.#")
    channel.queue_bind("d.q", "amq.direct", "k")
    channel.queue_bind("t.q", "d.topic", "b.*")
    channel.exchange_bind("d.topic", "d.direct", "a.x")
    # Exclusive queues are never durable, even when declared durable.
    channel.queue_declare("x.q", durable=True, exclusive=True)
    connection.close()


def exists(channel_of: pika.BlockingConnection, kind: str, name: str) -> bool:
    channel = channel_of.channel()
    try:
        if kind == "queue":
            channel.queue_declare(name, passive=True)
        else:
            channel.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404
        return False
    channel.close()
    return True


def check_recovered(port: int) -> None:
    connection = connect(port)
    assert exists(connection, "exchange", "d.topic")
    assert exists(connection, "exchange", "d.direct")
    assert not exists(connection, "exchange", "t.fanout")
    assert exists(connection, "queue", "d.q")
    assert not exists(connection, "queue", "t.q")
    assert not exists(connection, "queue", "x.q")
    channel = connection.channel()
    # Arguments come back: a redeclare without them is refused.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        channel.queue_declare("d.q", durable=True)
    assert error.value.reply_code == 406
    channel = connection.channel()
    channel.confirm_delivery()
    # Bindings come back: through d.topic, amq.direct, and d.direct -> d.topic.
    for exchange, key in (("d.topic", "a.b"), ("amq.direct", "k"), ("d.direct", "a.x")):
        channel.basic_publish(exchange, key, exchange.encode(), mandatory=True)
    bodies = []
    for _ in range(3):
        method, _, body = channel.basic_get("d.q", auto_ack=True)
        assert method is not None
        bodies.append(body)
    assert sorted(bodies) == [b"amq.direct", b"d.direct", b"d.topic"]
    connection.close()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_durable_definitions_survive_restart(
    start: Callable[..., Server], how: str
) -> None:
    server = start()
    declare_everything(server.port)
    if how == "SIGTERM":
        server.process.send_signal(signal.SIGTERM)
        assert server.wait_exit() == 0
    else:
        # declare-ok is sent only once the definitions are on disk, so a
        # kill right after the last reply loses nothing.
        server.process.send_signal(signal.SIGKILL)
        server.wait_exit()
    restarted = start()
    restarted.wait_for_line(r"recovered 3 exchanges, 1 queues, 3 bindings")
    check_recovered(restarted.port)


def test_deleted_durable_queue_stays_deleted(start: Callable[..., Server]) -> None:
    server = start()
    connection = connect(server.port)
    channel = connection.channel()
    channel.queue_declare("gone", durable=True)
    channel.queue_delete("gone")
    connection.close()
    server.process.send_signal(signal.SIGKILL)
    server.wait_exit()
    restarted = start()
    assert not exists(connect(restarted.port), "queue", "gone")


def test_second_broker_on_same_data_dir_is_refused(
    start: Callable[..., Server], tmp_path: Path
) -> None:
    start()
    second = Server("--port", "0", "--data-dir", str(tmp_path / "data"))
    try:
        assert second.wait_exit() != 0
        assert any("in use by another amqpy process" in line for line in second.lines)
    finally:
        second.kill()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not valid JSON"),
        (b'{"vhosts": []}', "is not an amqpy definitions file"),
        (
            json.dumps({"amqpy_definitions_format": 99}).encode(),
            "has format version 99",
        ),
    ],
    ids=["corrupt", "foreign", "newer"],
)
def test_bad_definitions_file_stops_the_broker_untouched(
    tmp_path: Path, content: bytes, message: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / DEFINITIONS).write_bytes(content)
    server = Server("--port", "0", "--data-dir", str(data_dir))
    try:
        assert server.wait_exit() != 0
        assert any(message in line for line in server.lines), server.lines
    finally:
        server.kill()
    assert (data_dir / DEFINITIONS).read_bytes() == content


def test_unwritable_data_dir_stops_the_broker(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    server = Server("--port", "0", "--data-dir", str(blocker / "data"))
    try:
        assert server.wait_exit() != 0
        assert any("cannot create data dir" in line for line in server.lines)
    finally:
        server.kill()
