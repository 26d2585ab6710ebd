"""Node-wide bounds a hostile client meets: the connection limit, and a
log that password guessing cannot flood."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pika
import pytest
from helpers.management import Api, path

from amqpy.server.embedded import EmbeddedBroker


def test_node_connection_limit_refuses_at_open(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(limits={"max_connections": 2})
    parameters = pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
    first = pika.BlockingConnection(parameters)
    second = pika.BlockingConnection(parameters)
    # pika reports a close at connection.open as a probable vhost denial.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
        pika.BlockingConnection(parameters)
    assert "(530) 'NOT_ALLOWED - connection refused: node connection limit (2) is " in (
        str(refused.value)
    )
    # A slot frees when a connection closes.
    first.close()
    third = pika.BlockingConnection(parameters)
    third.close()
    second.close()


def test_failed_logins_are_logged_with_the_peer_but_not_without_end(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bad = pika.ConnectionParameters(
        "127.0.0.1",
        broker.port,
        credentials=pika.PlainCredentials("guest", "wrong"),
        socket_timeout=5,
        connection_attempts=1,
    )
    with caplog.at_level(logging.WARNING, "amqpy.server.connection"):
        for _ in range(30):
            with pytest.raises(pika.exceptions.ProbableAuthenticationError):
                pika.BlockingConnection(bad)
    failures = [
        record.getMessage()
        for record in caplog.records
        if "failed to authenticate" in record.getMessage()
    ]
    assert failures, "no failed login was logged"
    assert all("127.0.0.1:" in line and "'guest'" in line for line in failures)
    assert "wrong" not in " ".join(failures)  # no secret in a log line
    assert len(failures) < 30


def test_a_client_that_never_answers_a_close_is_dropped_after_the_close_timeout(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    """A close the broker starts from outside the connection (the API, a
    vhost or user deletion) is bounded by listener.close_timeout_s too."""
    broker = make_broker(
        management={"enabled": True}, listener={"close_timeout_s": 0.5}
    )
    api = Api(broker.management_url)
    silent = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", broker.port, socket_timeout=5)
    )  # never read from again
    [name] = [connection["name"] for connection in api.get("/api/connections").json()]
    started = time.monotonic()
    assert api.delete(path("connections", name)).status_code == 204
    while api.get("/api/connections").json():
        assert time.monotonic() - started < 5, "the silent connection stayed"
        time.sleep(0.05)
    assert time.monotonic() - started >= 0.4
    api.close()
    del silent
