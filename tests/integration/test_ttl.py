"""Message TTL (x-message-ttl, the expiration property) and queue TTL
(x-expires) as pika and aio-pika see them, against RabbitMQ 3.10's observed
behaviour (/work/oracle2/results.md, sections 5 and 6).

Waits poll with a deadline; RabbitMQ answers a passive queue.declare ahead
of publishes it has not enqueued yet (its queue process gives `stat`
priority), so counts are awaited, never read once right after publishing.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

import aio_pika
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


def expiring(milliseconds: str) -> pika.BasicProperties:
    return pika.BasicProperties(expiration=milliseconds)


def settle(channel: Channel, seconds: float) -> None:
    """Let `seconds` pass while pika handles what arrives."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        channel.connection.process_data_events(0.005)


def expired_death(queue: str, **more: Any) -> dict[str, Any]:
    return {
        "count": 1,
        "reason": "expired",
        "queue": queue,
        "exchange": "",
        "routing-keys": [queue],
        **more,
    }


# -- the expiration property -----------------------------------------------------------

WRAP_20 = "\n" + " " * 44
INVALID_EXPIRATIONS = [
    ("abc", "no_integer"),
    ("-1", "{value_negative,-1}"),
    ("", "no_integer"),
    ("1.5", '{leftover_string,".5"}'),
    (" 1", "no_integer"),
    ("1 ", '{leftover_string," "}'),
    ("0x10", '{leftover_string,"x10"}'),
    ("1e3", '{leftover_string,"e3"}'),
    ("--1", "no_integer"),
    ("+", "no_integer"),
    ("\u0663", "no_integer"),  # an Arabic-Indic digit: not an Erlang integer
    ("1_000", '{leftover_string,"_000"}'),
    ("1\x01", "{leftover_string,[1]}"),
    ("1\u20ac", "{leftover_string,[226,130,172]}"),
    ("1\x7f", "{leftover_string,[127]}"),
    ('1"\\', '{leftover_string,"\\"\\\\"}'),
    ("1\t", '{leftover_string,"\\t"}'),
    ("315360000001", "{value_too_large,315360000001}"),
    # Erlang's ~p breaks a tuple that would reach column 79.
    ("99999999999999999999", "{value_too_large," + WRAP_20 + "99999999999999999999}"),
    ("-9999999999999999999", "{value_negative," + WRAP_20 + "-9999999999999999999}"),
    ("1" + "a" * 17, '{leftover_string,"' + "a" * 17 + '"}'),
    ("12" + "a" * 17, "{leftover_string,\n" + " " * 43 + '"' + "a" * 17 + '"}'),
    ("1" + "\u00e9" * 9, "{leftover_string,\n" + " " * 43 + '"' + "\u00e9" * 9 + '"}'),
]


@pytest.mark.parametrize(("expiration", "reason"), INVALID_EXPIRATIONS)
def test_an_invalid_expiration_closes_the_channel(
    connect: Connect, names: Callable[[str], str], expiration: str, reason: str
) -> None:
    connection = connect()
    channel = connection.channel()
    queue = names("q")
    channel.queue_declare(queue)
    publisher = connection.channel()
    publisher.basic_publish("", queue, b"x", expiring(expiration))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        publisher.queue_declare(queue, passive=True)
    assert (info.value.reply_code, info.value.reply_text) == (
        406,
        f"PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}",
    )
    assert message_count(channel, queue) == 0


@pytest.mark.parametrize(
    ("expiration", "stays"),
    [("+1000", True), ("007", True), ("-0", False), ("315360000000", True)],
)
def test_expirations_erlang_reads_as_integers_are_accepted(
    channel: Channel, names: Callable[[str], str], expiration: str, stays: bool
) -> None:
    queue = names("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"x", expiring(expiration))
    if stays:
        wait_count(channel, queue, 1)
    else:
        channel.basic_publish("", queue, b"barrier")
        wait_count(channel, queue, 1)
        assert drain(channel, queue) == [b"barrier"]


def test_the_expiration_is_checked_before_routing_but_after_the_exchange(
    connect: Connect, names: Callable[[str], str]
) -> None:
    connection = connect()
    unroutable = connection.channel()
    unroutable.basic_publish("", names("nowhere"), b"x", expiring("abc"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        unroutable.queue_declare(names("probe"))
    assert info.value.reply_code == 406
    missing = connection.channel()
    missing.basic_publish(names("no-exchange"), "k", b"x", expiring("abc"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        missing.queue_declare(names("probe"))
    assert (info.value.reply_code, info.value.reply_text) == (
        404,
        f"NOT_FOUND - no exchange '{names('no-exchange')}' in vhost '/'",
    )
    confirming = connection.channel()
    confirming.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        confirming.basic_publish("", names("nowhere"), b"x", expiring("-1"))
    assert info.value.reply_text == (
        "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}"
    )


def test_an_invalid_expiration_in_a_transaction_fails_at_the_publish(
    connect: Connect, names: Callable[[str], str]
) -> None:
    connection = connect()
    channel = connection.channel()
    queue = names("q")
    channel.queue_declare(queue)
    tx = connection.channel()
    tx.tx_select()
    tx.basic_publish("", queue, b"valid")
    tx.basic_publish("", queue, b"invalid", expiring("abc"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        tx.tx_commit()
    assert info.value.reply_text == (
        "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
    )
    assert message_count(channel, queue) == 0  # the transaction never ran


# -- expiration "0" and x-message-ttl 0 ------------------------------------------------


def test_expiration_zero_without_a_consumer_expires_at_once(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    since = time.time()
    channel.basic_publish("", src, b"zero", expiring("0"))
    _, properties, body = poll_get(channel, dlq)
    assert body == b"zero"
    assert check_death_times(properties.headers, since)["x-death"] == [
        expired_death(src, **{"original-expiration": "0"})
    ]
    assert message_count(channel, src) == 0


def test_expiration_zero_reaches_a_waiting_consumer(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    received: list[tuple[Any, Any, bytes]] = []
    channel.basic_consume(src, lambda _c, *args: received.append(args))
    channel.basic_publish("", src, b"now", expiring("0"))
    wait_until(channel, lambda: bool(received))
    method, properties, body = received[0]
    assert (body, properties.expiration, method.redelivered) == (b"now", "0", False)
    channel.basic_ack(method.delivery_tag)
    assert message_count(channel, dlq) == 0


def test_expiration_zero_expires_when_the_consumer_has_no_room(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    channel.basic_qos(prefetch_count=1)
    received: list[bytes] = []
    channel.basic_consume(src, lambda _c, _m, _p, body: received.append(body))
    channel.basic_publish("", src, b"first")
    channel.basic_publish("", src, b"blocked", expiring("0"))
    _, _, body = poll_get(channel, dlq)
    assert body == b"blocked"
    wait_until(channel, lambda: bool(received))
    assert received == [b"first"]
    assert message_count(channel, src) == 0


def test_queue_ttl_zero_delivers_to_a_consumer_or_drops(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue, arguments={"x-message-ttl": 0})
    channel.basic_publish("", queue, b"dropped")
    received: list[tuple[Any, bytes]] = []
    channel.basic_consume(
        queue, lambda _c, _m, props, body: received.append((props, body)), auto_ack=True
    )
    channel.basic_publish("", queue, b"delivered")
    wait_until(channel, lambda: bool(received))
    properties, body = received[0]
    assert body == b"delivered"
    assert properties.expiration is None  # the queue's TTL is not written in


# -- expiry at the head only -----------------------------------------------------------


def test_a_short_ttl_waits_behind_a_long_one(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"long", expiring("5000"))
    channel.basic_publish("", queue, b"short", expiring("10"))
    channel.basic_publish("", queue, b"none")
    wait_count(channel, queue, 3)
    settle(channel, 0.05)
    assert message_count(channel, queue) == 3  # "short" expired, uncounted
    method, _, body = channel.basic_get(queue, auto_ack=True)
    # Taking the head drops the expired message behind it at once.
    assert (body, method.message_count) == (b"long", 1)
    assert message_count(channel, queue) == 1
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.message_count) == (b"none", 0)


def test_a_consumer_never_gets_an_expired_message(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"long", expiring("5000"))
    channel.basic_publish("", queue, b"short", expiring("10"))
    channel.basic_publish("", queue, b"none")
    wait_count(channel, queue, 3)
    settle(channel, 0.05)
    received: list[bytes] = []
    channel.basic_consume(
        queue, lambda _c, _m, _p, body: received.append(body), auto_ack=True
    )
    wait_until(channel, lambda: len(received) == 2)
    settle(channel, 0.02)
    assert received == [b"long", b"none"]


def test_get_ok_and_purge_counts_after_expiry(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"a")
    channel.basic_publish("", queue, b"b", expiring("10"))
    channel.basic_publish("", queue, b"c", expiring("10"))
    channel.basic_publish("", queue, b"d")
    wait_count(channel, queue, 4)
    settle(channel, 0.05)
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert (body, method.message_count) == (b"a", 1)
    assert message_count(channel, queue) == 1
    # Purge and delete count what is there, expired or not, behind a live head.
    channel.basic_publish("", queue, b"e", expiring("5000"))
    channel.basic_publish("", queue, b"f", expiring("10"))
    wait_count(channel, queue, 3)
    settle(channel, 0.05)
    assert channel.queue_purge(queue).method.message_count == 3
    channel.basic_publish("", queue, b"g", expiring("5000"))
    channel.basic_publish("", queue, b"h", expiring("10"))
    wait_count(channel, queue, 2)
    settle(channel, 0.05)
    assert channel.queue_delete(queue).method.message_count == 2


def test_queue_message_ttl_empties_the_queue(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue, arguments={"x-message-ttl": 100})
    for index in range(5):
        channel.basic_publish("", queue, b"%d" % index)
    wait_count(channel, queue, 5)
    wait_count(channel, queue, 0, timeout=2)
    assert channel.basic_get(queue)[0] is None


@pytest.mark.parametrize(
    ("queue_ttl", "expiration"), [(20, "5000"), (5000, "20")], ids=["queue", "message"]
)
def test_the_lower_ttl_wins(
    channel: Channel, names: Callable[[str], str], queue_ttl: int, expiration: str
) -> None:
    queue = names("q")
    channel.queue_declare(queue, arguments={"x-message-ttl": queue_ttl})
    channel.basic_publish("", queue, b"m", expiring(expiration))
    assert wait_count(channel, queue, 0, timeout=2) < 2


# -- requeued messages keep their expiry -----------------------------------------------


def test_a_message_requeued_after_its_ttl_expires_instead(
    connect: Connect, names: Callable[[str], str]
) -> None:
    connection = connect()
    channel = connection.channel()
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    since = time.time()
    channel.basic_publish("", src, b"rejected", expiring("30"))
    channel.basic_publish("", src, b"after", expiring("100000"))
    method, _, _ = poll_get(channel, src, auto_ack=False)
    settle(channel, 0.06)
    channel.basic_reject(method.delivery_tag, requeue=True)
    _, properties, body = poll_get(channel, dlq)
    assert body == b"rejected"
    assert check_death_times(properties.headers, since)["x-death"] == [
        expired_death(src, **{"original-expiration": "30"})
    ]
    # The same when the channel closes with the message unacked.
    other = connection.channel()
    other.basic_publish("", src, b"closed", expiring("30"))
    wait_count(channel, src, 2)
    assert channel.basic_get(src, auto_ack=True)[2] == b"after"
    poll_get(other, src, auto_ack=False)
    settle(channel, 0.06)
    other.close()
    _, _, body = poll_get(channel, dlq)
    assert body == b"closed"
    assert message_count(channel, src) == 0


def test_a_requeued_message_expires_at_its_original_time(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue)
    published = time.monotonic()
    channel.basic_publish("", queue, b"m", expiring("150"))
    method, _, _ = poll_get(channel, queue, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=True)
    wait_count(channel, queue, 1)
    wait_count(channel, queue, 0, timeout=2)
    assert 0.1 <= time.monotonic() - published < 1.5


def test_an_unacked_message_does_not_expire_until_requeued(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue, arguments={"x-message-ttl": 20})
    channel.basic_publish("", queue, b"held")
    method, properties, body = poll_get(channel, queue, auto_ack=False)
    assert (body, properties.expiration) == (b"held", None)
    settle(channel, 0.05)
    channel.basic_ack(method.delivery_tag)  # still unacked, so still ackable
    channel.basic_publish("", queue, b"requeued")
    method, _, _ = poll_get(channel, queue, auto_ack=False)
    settle(channel, 0.05)
    channel.basic_reject(method.delivery_tag, requeue=True)
    channel.basic_publish("", queue, b"barrier", expiring("5000"))
    wait_count(channel, queue, 1)
    assert drain(channel, queue) == [b"barrier"]


def test_aio_pika_expiration_dead_letters(
    broker: EmbeddedBroker, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")

    async def scenario() -> aio_pika.abc.AbstractIncomingMessage:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            channel = await connection.channel()
            dead = await channel.declare_queue(dlq)
            await channel.declare_queue(src, arguments=dead_letter_to(dlq))
            await channel.default_exchange.publish(
                aio_pika.Message(
                    b"aio", expiration=datetime.timedelta(milliseconds=20)
                ),
                routing_key=src,
            )
            async with dead.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    return message
        raise AssertionError("no message")

    since = time.time()
    message = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert (message.body, message.routing_key, message.expiration) == (
        b"aio",
        dlq,
        None,
    )
    headers = check_death_times(dict(message.headers), since)
    assert headers["x-death"] == [expired_death(src, **{"original-expiration": "20"})]


# -- queue TTL (x-expires) -------------------------------------------------------------


class QueueProbe:
    """Whether a queue exists, without touching it: a mandatory publish in
    confirm mode comes back unroutable once the queue is gone (publishing
    does not count as using a queue)."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.channel = connection.channel()
        self.channel.confirm_delivery()

    def exists(self, queue: str) -> bool:
        try:
            self.channel.basic_publish("", queue, b"probe", mandatory=True)
        except pika.exceptions.UnroutableError:
            return False
        return True

    def gone_after(self, queue: str, start: float, timeout: float = 3.0) -> float:
        wait_until(self.channel, lambda: not self.exists(queue), timeout)
        return time.monotonic() - start


def test_an_unused_queue_is_deleted_after_x_expires_even_while_published_to(
    connect: Connect, names: Callable[[str], str]
) -> None:
    connection = connect()
    channel = connection.channel()
    probe = QueueProbe(connection)
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    start = time.monotonic()
    channel.queue_declare(src, arguments=dead_letter_to(dlq, **{"x-expires": 100}))
    channel.basic_publish("", src, b"lost")
    assert 0.09 <= probe.gone_after(src, start) < 1.0
    # Its messages go with it, never dead-lettered.
    assert message_count(channel, dlq) == 0
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(src, passive=True)
    assert (info.value.reply_code, info.value.reply_text) == (
        404,
        f"NOT_FOUND - no queue '{src}' in vhost '/'",
    )


@pytest.mark.parametrize("use", ["passive-declare", "redeclare", "basic-get"])
def test_using_a_queue_restarts_its_x_expires(
    connect: Connect, names: Callable[[str], str], use: str
) -> None:
    connection = connect()
    channel = connection.channel()
    probe = QueueProbe(connection)
    queue = names("q")
    arguments = {"x-expires": 150}
    start = time.monotonic()
    channel.queue_declare(queue, arguments=arguments)
    settle(channel, 0.1)
    if use == "passive-declare":
        channel.queue_declare(queue, passive=True)
    elif use == "redeclare":
        channel.queue_declare(queue, arguments=arguments)
    else:
        channel.basic_get(queue)
    assert 0.24 <= probe.gone_after(queue, start) < 1.5


def test_a_consumer_keeps_the_queue_and_leaving_restarts_x_expires(
    connect: Connect, names: Callable[[str], str]
) -> None:
    connection = connect()
    channel = connection.channel()
    probe = QueueProbe(connection)
    first, second = names("cancelled"), names("closed")
    for queue in (first, second):
        channel.queue_declare(queue, arguments={"x-expires": 80})
    tag = channel.basic_consume(first, lambda *args: None, auto_ack=True)
    consumer_channel = connection.channel()
    consumer_channel.basic_consume(second, lambda *args: None, auto_ack=True)
    settle(channel, 0.2)
    assert probe.exists(first) and probe.exists(second)
    start = time.monotonic()
    channel.basic_cancel(tag)
    consumer_channel.close()
    assert 0.07 <= probe.gone_after(first, start) < 1.0
    assert 0.07 <= probe.gone_after(second, start) < 1.0


def test_a_message_with_a_ttl_behind_one_without_expires_once_at_the_head(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"forever")
    channel.basic_publish("", queue, b"short", expiring("30"))
    wait_count(channel, queue, 2)
    channel.basic_qos(prefetch_count=1)
    received: list[bytes] = []
    channel.basic_consume(queue, lambda _c, _m, _p, body: received.append(body))
    wait_until(channel, lambda: bool(received))
    # The consumer has no room for "short", which expires at the head.
    wait_count(channel, queue, 0, timeout=2)
    assert received == [b"forever"]
