"""Queue length limits (x-max-length, x-max-length-bytes) and x-overflow
(drop-head, reject-publish, reject-publish-dlx) as pika and aio-pika see
them, against RabbitMQ 3.10's observed behaviour (/work/oracle2/results.md,
section 7): what is dropped or dead-lettered and in which order, the
publisher-confirm nacks, mandatory, transactions, and what counts toward the
limit (ready messages only, body bytes only).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import pika
import pika.exceptions
import pytest
from helpers.queue_features import (
    check_death_times,
    dead_letter_to,
    drain,
    message_count,
    poll_get,
    wait_count,
    wait_until,
)
from pika.adapters.blocking_connection import BlockingChannel

from amqpy.server.embedded import EmbeddedBroker

Channel = BlockingChannel
Connect = Callable[..., pika.BlockingConnection]


REJECT_PUBLISH = {"x-overflow": "reject-publish"}


def confirmed(channel: Channel, queue: str, body: bytes, **options: Any) -> str:
    """Publish on a confirm-mode channel: "ack", "nack" or "returned"."""
    try:
        channel.basic_publish("", queue, body, **options)
    except pika.exceptions.NackError:
        return "nack"
    except pika.exceptions.UnroutableError:
        return "returned"
    return "ack"


@pytest.fixture
def confirming(connect: Connect) -> Channel:
    channel = connect().channel()
    channel.confirm_delivery()
    return channel


def settle(channel: Channel, seconds: float = 0.05) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        channel.connection.process_data_events(0.005)


# -- drop-head -------------------------------------------------------------------------


def test_max_length_drops_from_the_head(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue, arguments={"x-max-length": 2})
    for index in range(5):
        channel.basic_publish("", queue, b"m%d" % index)
    wait_count(channel, queue, 2)
    assert drain(channel, queue) == [b"m3", b"m4"]


def test_max_length_bytes_counts_bodies_and_dead_letters_what_it_drops(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue, dlq = names("q"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(
        queue, arguments=dead_letter_to(dlq, **{"x-max-length-bytes": 10})
    )
    since = time.time()
    for body in (b"aaaa", b"bbbb", b"cc", b"d"):
        channel.basic_publish("", queue, body)
    wait_count(channel, dlq, 1)
    assert drain(channel, queue) == [b"bbbb", b"cc", b"d"]
    _, properties, body = poll_get(channel, dlq)
    assert body == b"aaaa"
    assert check_death_times(properties.headers, since) == {
        "x-death": [
            {
                "count": 1,
                "reason": "maxlen",
                "queue": queue,
                "exchange": "",
                "routing-keys": [queue],
            }
        ],
        "x-first-death-exchange": "",
        "x-first-death-queue": queue,
        "x-first-death-reason": "maxlen",
    }
    # A body over the limit on its own is dropped at once.
    channel.basic_publish("", queue, b"x" * 20)
    assert poll_get(channel, dlq)[2] == b"x" * 20
    assert message_count(channel, queue) == 0
    # Empty bodies weigh nothing; exactly the limit fits.
    for body in (b"", b"", b"0123456789"):
        channel.basic_publish("", queue, body)
    wait_count(channel, queue, 3)
    assert drain(channel, queue) == [b"", b"", b"0123456789"]
    assert message_count(channel, dlq) == 0


def test_both_limits_apply(channel: Channel, names: Callable[[str], str]) -> None:
    queue = names("q")
    channel.queue_declare(queue, arguments={"x-max-length": 2, "x-max-length-bytes": 5})
    for body in (b"aa", b"bb", b"cc"):
        channel.basic_publish("", queue, body)
    wait_count(channel, queue, 2)
    assert drain(channel, queue) == [b"bb", b"cc"]
    for body in (b"aaa", b"bbb"):
        channel.basic_publish("", queue, body)
    wait_count(channel, queue, 1)
    assert drain(channel, queue) == [b"bbb"]


def test_max_length_zero_drops_everything_a_consumer_does_not_take(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue, dlq = names("q"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(queue, arguments=dead_letter_to(dlq, **{"x-max-length": 0}))
    channel.basic_publish("", queue, b"dropped")
    assert poll_get(channel, dlq)[2] == b"dropped"
    received: list[bytes] = []
    channel.basic_consume(
        queue, lambda _c, _m, _p, body: received.append(body), auto_ack=True
    )
    channel.basic_publish("", queue, b"taken")
    wait_until(channel, lambda: bool(received))
    assert received == [b"taken"]
    assert message_count(channel, dlq) == 0


def test_requeue_over_the_limit_drops_the_head(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue, dlq = names("q"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(queue, arguments=dead_letter_to(dlq, **{"x-max-length": 2}))
    channel.basic_publish("", queue, b"a")
    channel.basic_publish("", queue, b"b")
    first, _, _ = poll_get(channel, queue, auto_ack=False)
    second, _, _ = poll_get(channel, queue, auto_ack=False)
    channel.basic_publish("", queue, b"c")
    channel.basic_publish("", queue, b"d")
    wait_count(channel, queue, 2)  # unacked messages do not count
    channel.basic_reject(second.delivery_tag, requeue=True)
    _, properties, body = poll_get(channel, dlq)
    assert body == b"b"
    assert properties.headers["x-death"][0]["reason"] == "maxlen"
    assert drain(channel, queue) == [b"c", b"d"]
    channel.basic_reject(first.delivery_tag, requeue=False)


# -- reject-publish --------------------------------------------------------------------


def test_reject_publish_nacks_and_never_returns(
    channel: Channel, confirming: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue, arguments={"x-max-length": 2, **REJECT_PUBLISH})
    outcomes = [confirmed(confirming, queue, b"r%d" % i) for i in range(3)]
    assert outcomes == ["ack", "ack", "nack"]
    # mandatory: the message was routed, so no basic.return, only the nack.
    assert confirmed(confirming, queue, b"mandatory", mandatory=True) == "nack"
    # Without confirms the publisher is told nothing.
    channel.basic_publish("", queue, b"silent")
    settle(channel)
    assert drain(channel, queue) == [b"r0", b"r1"]


def test_reject_publish_nack_frame(
    broker: EmbeddedBroker, names: Callable[[str], str]
) -> None:
    queue = names("q")

    async def scenario() -> Any:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(
                queue, arguments={"x-max-length": 0, **REJECT_PUBLISH}
            )
            with pytest.raises(aiormq.exceptions.DeliveryError) as info:
                await channel.default_exchange.publish(
                    aio_pika.Message(b"refused"), routing_key=queue, mandatory=True
                )
            return info.value.frame

    frame = asyncio.run(asyncio.wait_for(scenario(), 5))
    # As RabbitMQ sends it: requeue is the method's default (true), and one
    # nack with nothing older unconfirmed says multiple=true.
    assert isinstance(frame, aiormq.spec.Basic.Nack)
    assert (frame.delivery_tag, frame.multiple, frame.requeue) == (1, True, True)


def test_reject_publish_to_two_queues_nacks_but_the_other_queue_keeps_it(
    channel: Channel, confirming: Channel, names: Callable[[str], str]
) -> None:
    full, other, fanout = names("full"), names("other"), names("fanout")
    channel.exchange_declare(fanout, "fanout")
    channel.queue_declare(full, arguments={"x-max-length": 1, **REJECT_PUBLISH})
    channel.queue_declare(other)
    channel.queue_bind(full, fanout)
    channel.queue_bind(other, fanout)
    outcomes = []
    for body in (b"f0", b"f1"):
        try:
            confirming.basic_publish(fanout, "", body)
            outcomes.append("ack")
        except pika.exceptions.NackError:
            outcomes.append("nack")
    assert outcomes == ["ack", "nack"]
    assert drain(channel, full) == [b"f0"]
    assert drain(channel, other) == [b"f0", b"f1"]


def test_reject_publish_dlx_nacks_and_dead_letters(
    channel: Channel, confirming: Channel, names: Callable[[str], str]
) -> None:
    queue, dlq, plain = names("q"), names("dlq"), names("plain")
    channel.queue_declare(dlq)
    overflow = {"x-max-length": 1, "x-overflow": "reject-publish-dlx"}
    channel.queue_declare(queue, arguments=dead_letter_to(dlq, **overflow))
    channel.queue_declare(plain, arguments=overflow)
    since = time.time()
    expiring = pika.BasicProperties(expiration="60000")
    outcomes = [
        confirmed(confirming, queue, b"x%d" % i, properties=expiring) for i in range(3)
    ]
    assert outcomes == ["ack", "nack", "nack"]
    for body in (b"x1", b"x2"):
        method, properties, got = poll_get(channel, dlq)
        assert (method.routing_key, got, properties.expiration) == (dlq, body, None)
        assert check_death_times(properties.headers, since) == {
            "x-death": [
                {
                    "count": 1,
                    "reason": "maxlen",
                    "queue": queue,
                    "exchange": "",
                    "routing-keys": [queue],
                    "original-expiration": "60000",
                }
            ],
            "x-first-death-exchange": "",
            "x-first-death-queue": queue,
            "x-first-death-reason": "maxlen",
        }
    assert drain(channel, queue) == [b"x0"]
    # Without a dead-letter exchange it is plain reject-publish.
    assert [confirmed(confirming, plain, b"p%d" % i) for i in range(2)] == [
        "ack",
        "nack",
    ]


def test_the_limit_counts_ready_messages_only(
    channel: Channel, confirming: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue, arguments={"x-max-length": 2, **REJECT_PUBLISH})
    assert [confirmed(confirming, queue, body) for body in (b"a", b"b")] == [
        "ack",
        "ack",
    ]
    poll_get(channel, queue, auto_ack=False)
    last, _, _ = poll_get(channel, queue, auto_ack=False)
    assert [confirmed(confirming, queue, body) for body in (b"c", b"d", b"e")] == [
        "ack",
        "ack",
        "nack",
    ]
    # Requeued messages go back even over the limit (nothing is dropped)...
    channel.basic_nack(last.delivery_tag, multiple=True, requeue=True)
    wait_count(channel, queue, 4)
    # ...and the queue refuses publishes until it is under it again.
    assert confirmed(confirming, queue, b"f") == "nack"
    assert drain(channel, queue) == [b"a", b"b", b"c", b"d"]


def test_max_length_zero_reject_publish_refuses_even_with_a_consumer(
    channel: Channel, confirming: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue, arguments={"x-max-length": 0, **REJECT_PUBLISH})
    received: list[bytes] = []
    channel.basic_consume(
        queue, lambda _c, _m, _p, body: received.append(body), auto_ack=True
    )
    assert confirmed(confirming, queue, b"refused") == "nack"
    settle(channel)
    assert received == []


def test_max_length_bytes_reject_publish_boundary(
    confirming: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    confirming.queue_declare(
        queue, arguments={"x-max-length-bytes": 10, **REJECT_PUBLISH}
    )
    outcomes = [
        confirmed(confirming, queue, body)
        for body in (b"aaaa", b"bbbb", b"cc", b"d", b"")
    ]
    assert outcomes == ["ack", "ack", "ack", "nack", "ack"]


def test_a_refused_publish_fails_the_transaction_after_doing_the_rest(
    connect: Connect, names: Callable[[str], str]
) -> None:
    connection = connect()
    channel = connection.channel()
    full, other = names("full"), names("other")
    channel.queue_declare(full, arguments={"x-max-length": 1, **REJECT_PUBLISH})
    channel.queue_declare(other)
    channel.basic_publish("", other, b"to-ack")
    channel.basic_publish("", full, b"fill")
    wait_count(channel, other, 1)
    tx = connection.channel()
    tx.tx_select()
    method, _, _ = poll_get(tx, other, auto_ack=False)
    tx.basic_ack(method.delivery_tag)
    tx.basic_publish("", full, b"refused")
    tx.basic_publish("", other, b"published")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        tx.tx_commit()
    assert (info.value.reply_code, info.value.reply_text) == (
        406,
        "PRECONDITION_FAILED - partial tx completion",
    )
    # The ack and the other publish happened; the refused one did not.
    assert drain(channel, full) == [b"fill"]
    assert drain(channel, other) == [b"published"]
