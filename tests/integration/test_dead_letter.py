"""Dead-letter exchanges as pika and aio-pika see them, against RabbitMQ
3.10's observed behaviour (/work/oracle2/results.md, sections 1 to 4): the
x-death and x-first-death-* headers, the exchange and routing key of the
copy, which properties survive, counts and the order of x-death entries
across repeated dead-lettering, and the cycles RabbitMQ drops.

Only the x-death 'time' values are not compared exactly: they must be UTC
timestamps in whole seconds taken during the test.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import struct
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import pika
import pytest
from helpers.amqp_client import body_frame, method_frame, open_client, raw_frame
from helpers.queue_features import (
    check_death_times,
    dead_letter_to,
    drain,
    message_count,
    poll_get,
    typed_headers,
    wait_count,
)
from pamqp import commands
from pika.adapters.blocking_connection import BlockingChannel

from amqpy.server.embedded import EmbeddedBroker

Channel = BlockingChannel


def reject_head(channel: Channel, queue: str, *, nack: bool = False) -> Any:
    """basic.get the head of `queue` and reject it without requeue."""
    method, properties, _ = poll_get(channel, queue, auto_ack=False)
    if nack:
        channel.basic_nack(method.delivery_tag, requeue=False)
    else:
        channel.basic_reject(method.delivery_tag, requeue=False)
    return properties


def death(queue: str, reason: str, count: int = 1, **more: Any) -> dict[str, Any]:
    """An x-death entry as RabbitMQ writes it for a message published to the
    default exchange with the queue's name as routing key."""
    return {
        "count": count,
        "reason": reason,
        "queue": queue,
        "exchange": "",
        "routing-keys": [queue],
        **more,
    }


def settle(channel: Channel, seconds: float = 0.05) -> None:
    """Give an asynchronous broker time to do what it would (for checks that
    something did *not* happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        channel.connection.process_data_events(0.01)


def first_death(queue: str, reason: str, exchange: str = "") -> dict[str, str]:
    return {
        "x-first-death-exchange": exchange,
        "x-first-death-queue": queue,
        "x-first-death-reason": reason,
    }


# -- what a dead-lettered copy looks like -----------------------------------------


def test_reject_dead_letters_a_copy_with_every_property_but_expiration(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq, dlx = names("src"), names("dlq"), names("dlx")
    channel.exchange_declare(dlx, "direct")
    channel.queue_declare(src, arguments={"x-dead-letter-exchange": dlx})
    channel.queue_declare(dlq)
    channel.queue_bind(dlq, dlx, src)  # no dead-letter key: the original one
    sent = pika.BasicProperties(
        content_type="text/plain",
        content_encoding="utf-8",
        headers={"h1": "v1", "n": 5},
        delivery_mode=2,
        priority=3,
        correlation_id="cid",
        reply_to="rt",
        expiration="60000",
        message_id="mid",
        timestamp=1700000000,
        type="ty",
        user_id="guest",
        app_id="app",
    )
    channel.basic_publish("", src, b"one", sent)
    since = time.time()
    reject_head(channel, src)

    method, properties, body = poll_get(channel, dlq)
    assert (method.exchange, method.routing_key, method.redelivered, body) == (
        dlx,
        src,
        False,
        b"one",
    )
    assert check_death_times(properties.headers, since) == {
        "h1": "v1",
        "n": 5,
        "x-death": [death(src, "rejected", **{"original-expiration": "60000"})],
        **first_death(src, "rejected"),
    }
    kept = {key: value for key, value in vars(sent).items() if key != "headers"}
    received = dict(vars(properties))
    received.pop("headers")
    assert received == {**kept, "expiration": None}


def test_nack_multiple_dead_letters_each_in_order_with_the_dead_letter_key(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    for index in range(3):
        channel.basic_publish("", src, b"m%d" % index)
    received: list[Any] = []
    channel.basic_consume(src, lambda *args: received.append(args[1]))
    while len(received) < 3:
        channel.connection.process_data_events(0.01)
    since = time.time()
    channel.basic_nack(received[2].delivery_tag, multiple=True, requeue=False)

    for index in range(3):
        method, properties, body = poll_get(channel, dlq)
        assert (method.exchange, method.routing_key, body) == ("", dlq, b"m%d" % index)
        assert method.message_count == 2 - index
        assert check_death_times(properties.headers, since) == {
            "x-death": [death(src, "rejected")],
            **first_death(src, "rejected"),
        }


def test_headers_table_comes_back_sorted_by_key(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    headers = {"zz": 1, "aa": "x", "x-zz": True, "B": 2}
    channel.basic_publish("", src, b"ord", pika.BasicProperties(headers=headers))
    assert list(reject_head(channel, src).headers) == ["zz", "aa", "x-zz", "B"]
    _, properties, _ = poll_get(channel, dlq)
    assert list(properties.headers) == [
        "B",
        "aa",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-zz",
        "zz",
    ]
    assert properties.headers["zz"] == 1
    assert properties.headers["x-zz"] is True


def test_a_topic_dead_letter_exchange_with_a_key_drops_the_cc_header(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq, dlx, source = names("src"), names("dlq"), names("dlx"), names("x")
    channel.exchange_declare(dlx, "topic")
    channel.exchange_declare(source, "topic")
    channel.queue_declare(dlq)
    channel.queue_bind(dlq, dlx, "new.#")
    channel.queue_declare(
        src,
        arguments={
            "x-dead-letter-exchange": dlx,
            "x-dead-letter-routing-key": "new.key",
        },
    )
    channel.queue_bind(src, source, "orig.#")
    channel.basic_publish(
        source,
        "orig.key",
        b"t",
        pika.BasicProperties(headers={"CC": ["other"], "keep": "me"}),
    )
    since = time.time()
    reject_head(channel, src, nack=True)

    method, properties, _ = poll_get(channel, dlq)
    assert (method.exchange, method.routing_key) == (dlx, "new.key")
    # x-death still lists the CC keys as routing keys; the CC header is gone.
    assert check_death_times(properties.headers, since) == {
        "keep": "me",
        "x-death": [
            {
                "count": 1,
                "reason": "rejected",
                "queue": src,
                "exchange": source,
                "routing-keys": ["orig.key", "other"],
            }
        ],
        **first_death(src, "rejected", source),
    }


def test_without_a_dead_letter_key_the_cc_header_stays(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.exchange_declare(names("dlx"), "fanout")
    channel.queue_declare(dlq)
    channel.queue_bind(dlq, names("dlx"))
    channel.queue_declare(src, arguments={"x-dead-letter-exchange": names("dlx")})
    channel.basic_publish("", src, b"cc", pika.BasicProperties(headers={"CC": ["k"]}))
    since = time.time()
    reject_head(channel, src)
    method, properties, _ = poll_get(channel, dlq)
    assert (method.exchange, method.routing_key) == (names("dlx"), src)
    assert check_death_times(properties.headers, since) == {
        "CC": ["k"],
        "x-death": [death(src, "rejected", **{"routing-keys": [src, "k"]})],
        **first_death(src, "rejected"),
    }


def test_cc_and_bcc_route_the_dead_lettered_copy(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, by_cc, by_key, dlx = names("src"), names("by-cc"), names("by-k"), names("dlx")
    channel.exchange_declare(dlx, "direct")
    channel.queue_declare(by_cc)
    channel.queue_bind(by_cc, dlx, "cc1")
    channel.queue_declare(by_key)
    channel.queue_bind(by_key, dlx, "k")
    channel.queue_declare(src, arguments={"x-dead-letter-exchange": dlx})
    channel.exchange_declare(names("x"), "direct")
    channel.queue_bind(src, names("x"), "k")
    channel.queue_bind(src, names("x"), "bcc1")
    channel.basic_publish(
        names("x"),
        "k",
        b"m",
        pika.BasicProperties(headers={"CC": ["cc1"], "BCC": ["bcc1"]}),
    )
    # Routed once (by k and again by BCC); BCC is stripped at publish.
    assert reject_head(channel, src).headers == {"CC": ["cc1"]}
    _, properties, _ = poll_get(channel, by_cc)
    assert properties.headers["x-death"][0]["routing-keys"] == ["k", "cc1"]
    assert message_count(channel, by_key) == 1


def test_copy_of_a_redelivered_message_is_not_redelivered(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    channel.basic_publish("", src, b"again")
    method, _, _ = poll_get(channel, src, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=True)
    method, _, _ = poll_get(channel, src, auto_ack=False)
    assert method.redelivered
    channel.basic_reject(method.delivery_tag, requeue=False)
    method, _, body = poll_get(channel, dlq)
    assert (method.redelivered, body) == (False, b"again")


def test_internal_dead_letter_exchange_and_its_alternate_exchange(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, caught, dlx, alternate = names("src"), names("ae-q"), names("dlx"), names("ae")
    channel.exchange_declare(alternate, "fanout")
    channel.queue_declare(caught)
    channel.queue_bind(caught, alternate)
    channel.exchange_declare(
        dlx, "direct", internal=True, arguments={"alternate-exchange": alternate}
    )
    channel.queue_declare(src, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish("", src, b"ae")
    since = time.time()
    reject_head(channel, src)
    method, properties, _ = poll_get(channel, caught)
    assert (method.exchange, method.routing_key) == (dlx, src)
    assert check_death_times(properties.headers, since)["x-death"] == [
        death(src, "rejected")
    ]


# -- when messages are (not) dead-lettered -------------------------------------------


def test_requeue_close_purge_and_delete_do_not_dead_letter(
    connect: Callable[..., pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    connection = connect()
    channel = connection.channel()
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    channel.basic_publish("", src, b"m")
    method, _, _ = poll_get(channel, src, auto_ack=False)
    channel.basic_reject(method.delivery_tag, requeue=True)
    other = connection.channel()
    poll_get(other, src, auto_ack=False)
    other.close()  # the unacked message is requeued
    wait_count(channel, src, 1)
    assert channel.queue_purge(src).method.message_count == 1
    channel.basic_publish("", src, b"deleted")
    assert channel.queue_delete(src).method.message_count == 1
    assert message_count(channel, dlq) == 0


def test_a_missing_dead_letter_exchange_drops_the_message(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src = names("src")
    channel.queue_declare(src, arguments={"x-dead-letter-exchange": names("none")})
    channel.basic_publish("", src, b"x")
    reject_head(channel, src)
    assert message_count(channel, src) == 0


def test_dead_lettering_into_a_full_reject_publish_queue_drops_the_copy(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, full = names("src"), names("full")
    channel.queue_declare(
        full, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    channel.queue_declare(src, arguments=dead_letter_to(full))
    channel.basic_publish("", full, b"fill")
    channel.basic_publish("", src, b"x")
    reject_head(channel, src)
    settle(channel)
    assert drain(channel, full) == [b"fill"]


def test_expired_messages_are_dead_lettered_with_their_original_expiration(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq, **{"x-message-ttl": 30}))
    since = time.time()
    channel.basic_publish("", src, b"queue-ttl")
    channel.basic_publish("", src, b"short", pika.BasicProperties(expiration="10"))
    channel.basic_publish("", src, b"long", pika.BasicProperties(expiration="100000"))
    wait_count(channel, dlq, 3)
    expected = [
        (b"queue-ttl", {}),
        (b"short", {"original-expiration": "10"}),
        (b"long", {"original-expiration": "100000"}),
    ]
    for body, extra in expected:
        method, properties, got = poll_get(channel, dlq)
        assert (method.routing_key, got, properties.expiration) == (dlq, body, None)
        assert check_death_times(properties.headers, since) == {
            "x-death": [death(src, "expired", **extra)],
            **first_death(src, "expired"),
        }


def test_max_length_drop_head_dead_letters_the_oldest_first(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq, **{"x-max-length": 2}))
    since = time.time()
    for index in range(5):
        channel.basic_publish("", src, b"d%d" % index)
    wait_count(channel, dlq, 3)
    for index in range(3):
        _, properties, body = poll_get(channel, dlq)
        assert body == b"d%d" % index
        assert check_death_times(properties.headers, since) == {
            "x-death": [death(src, "maxlen")],
            **first_death(src, "maxlen"),
        }
    assert drain(channel, src) == [b"d3", b"d4"]


# -- repeated dead-lettering: counts and the order of the entries --------------------


def test_a_reject_then_expire_loop_counts_each_queue_and_reason(
    channel: Channel, names: Callable[[str], str]
) -> None:
    ra, rb = names("ra"), names("rb")
    channel.queue_declare(ra, arguments=dead_letter_to(rb))
    channel.queue_declare(rb, arguments=dead_letter_to(ra, **{"x-message-ttl": 20}))
    since = time.time()
    channel.basic_publish("", ra, b"loop", pika.BasicProperties(expiration="100000"))
    rounds = [reject_head(channel, ra).headers for _ in range(3)]
    assert rounds[0] is None
    first_in_ra = death(ra, "rejected", **{"original-expiration": "100000"})
    # The entry for the latest death comes first; counts go up in place.
    assert check_death_times(rounds[1], since) == {
        "x-death": [death(rb, "expired"), first_in_ra],
        **first_death(ra, "rejected"),
    }
    assert check_death_times(rounds[2], since) == {
        "x-death": [death(rb, "expired", 2), {**first_in_ra, "count": 2}],
        **first_death(ra, "rejected"),
    }


def test_four_rejections_in_a_row_reverse_the_older_entries(
    channel: Channel, names: Callable[[str], str]
) -> None:
    """RabbitMQ regroups the entries by (queue, reason) once there are two or
    more, and its fold leaves them reversed (the newest is put first)."""
    hops = [names(f"h{index}") for index in range(1, 6)]
    for queue, target in itertools.pairwise(hops):
        channel.queue_declare(queue, arguments=dead_letter_to(target))
    channel.queue_declare(hops[-1])
    channel.basic_publish("", hops[0], b"hop")
    seen = []
    for queue in hops[:-1]:
        headers = reject_head(channel, queue).headers or {}
        seen.append([entry["queue"] for entry in headers.get("x-death", [])])
    _, properties, _ = poll_get(channel, hops[-1])
    h1, h2, h3, h4 = hops[:4]
    assert seen == [[], [h1], [h2, h1], [h3, h1, h2]]
    assert [entry["queue"] for entry in properties.headers["x-death"]] == [
        h4,
        h2,
        h1,
        h3,
    ]
    assert properties.headers["x-first-death-queue"] == h1


def test_a_ring_of_rejections_counts_every_lap(
    channel: Channel, names: Callable[[str], str]
) -> None:
    g1, g2, g3 = names("g1"), names("g2"), names("g3")
    channel.queue_declare(g1, arguments=dead_letter_to(g2))
    channel.queue_declare(g2, arguments=dead_letter_to(g3))
    channel.queue_declare(g3, arguments=dead_letter_to(g1))
    channel.basic_publish("", g1, b"ring")
    seen = []
    for queue in [g1, g2, g3, g1, g2, g3, g1]:
        headers = reject_head(channel, queue).headers or {}
        seen.append([(e["queue"], e["count"]) for e in headers.get("x-death", [])])
    _, properties, _ = poll_get(channel, g2, auto_ack=True)
    assert seen == [
        [],
        [(g1, 1)],
        [(g2, 1), (g1, 1)],
        [(g3, 1), (g1, 1), (g2, 1)],
        [(g1, 2), (g2, 1), (g3, 1)],
        [(g2, 2), (g3, 1), (g1, 2)],
        [(g3, 2), (g1, 2), (g2, 2)],
    ]
    assert [(e["queue"], e["count"]) for e in properties.headers["x-death"]] == [
        (g1, 3),
        (g2, 2),
        (g3, 2),
    ]


# -- cycles --------------------------------------------------------------------------


def test_a_queue_that_dead_letters_expired_messages_to_itself_drops_them(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("self")
    channel.queue_declare(
        queue, arguments={"x-dead-letter-exchange": "", "x-message-ttl": 10}
    )
    channel.basic_publish("", queue, b"self")
    wait_count(channel, queue, 0)
    # The copy would come straight back (a cycle): it is dropped.
    settle(channel)
    assert message_count(channel, queue) == 0


def test_an_expiry_cycle_through_two_queues_is_dropped(
    channel: Channel, names: Callable[[str], str]
) -> None:
    ca, cb = names("ca"), names("cb")
    channel.queue_declare(ca, arguments=dead_letter_to(cb, **{"x-message-ttl": 10}))
    channel.queue_declare(cb, arguments=dead_letter_to(ca, **{"x-message-ttl": 10}))
    channel.basic_publish("", ca, b"cycle")
    settle(channel, 0.15)
    assert (message_count(channel, ca), message_count(channel, cb)) == (0, 0)


def test_a_max_length_queue_dead_lettering_to_itself_drops_the_copy(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("self")
    channel.queue_declare(
        queue, arguments={"x-dead-letter-exchange": "", "x-max-length": 1}
    )
    channel.basic_publish("", queue, b"m1")
    channel.basic_publish("", queue, b"m2")
    wait_count(channel, queue, 1)
    assert drain(channel, queue) == [b"m2"]


def test_rejection_is_never_a_cycle(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("self")
    channel.queue_declare(queue, arguments={"x-dead-letter-exchange": ""})
    channel.basic_publish("", queue, b"rj")
    since = time.time()
    counts = []
    for _ in range(3):
        headers = reject_head(channel, queue).headers or {}
        counts.append([entry["count"] for entry in headers.get("x-death", [])])
    assert counts == [[], [1], [2]]
    _, properties, _ = poll_get(channel, queue)
    assert check_death_times(properties.headers, since) == {
        "x-death": [death(queue, "rejected", 3)],
        **first_death(queue, "rejected"),
    }


def test_a_loop_with_a_rejection_in_it_is_not_a_cycle(
    channel: Channel, names: Callable[[str], str]
) -> None:
    xa, xb = names("xa"), names("xb")
    channel.queue_declare(xa, arguments=dead_letter_to(xb))
    channel.queue_declare(xb, arguments=dead_letter_to(xa, **{"x-message-ttl": 10}))
    channel.basic_publish("", xa, b"mixed")
    since = time.time()
    reject_head(channel, xa)
    _, properties, _ = poll_get(channel, xa)  # back from xb after expiring
    assert check_death_times(properties.headers, since) == {
        "x-death": [death(xb, "expired"), death(xa, "rejected")],
        **first_death(xa, "rejected"),
    }


# -- x-death headers a client sent ---------------------------------------------------


def test_a_client_x_death_entry_for_the_same_queue_and_reason_is_counted_on(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    old = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    client_death = {
        "queue": src,
        "reason": "rejected",
        "count": 7,
        "exchange": "zz",
        "routing-keys": ["a"],
        "time": old,
    }
    headers = {"x-first-death-reason": "client", "x-death": [client_death]}
    channel.basic_publish("", src, b"pre", pika.BasicProperties(headers=headers))
    reject_head(channel, src)
    _, properties, _ = poll_get(channel, dlq)
    # No x-first-death-* is added once there is an x-death header.
    assert properties.headers == {
        "x-death": [{**client_death, "count": 8}],
        "x-first-death-reason": "client",
    }


@pytest.mark.parametrize(
    ("client_headers", "expected_extra"),
    [
        # x-first-death-* without x-death: overwritten by the first death.
        (
            {"x-first-death-queue": "old", "x-first-death-reason": "old"},
            "first-death",
        ),
        # x-death that is not an array: reset, x-first-death-* left alone.
        (
            {"x-death": "garbage", "x-first-death-queue": "old"},
            {"x-first-death-queue": "old"},
        ),
        # An empty array is an x-death header: no x-first-death-*.
        ({"x-death": []}, {}),
    ],
    ids=["first-death-without-x-death", "x-death-not-an-array", "x-death-empty"],
)
def test_client_headers_around_the_first_death(
    channel: Channel,
    names: Callable[[str], str],
    client_headers: dict[str, Any],
    expected_extra: Any,
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    channel.basic_publish("", src, b"m", pika.BasicProperties(headers=client_headers))
    since = time.time()
    reject_head(channel, src)
    _, properties, _ = poll_get(channel, dlq)
    if expected_extra == "first-death":
        expected_extra = first_death(src, "rejected")
    assert check_death_times(properties.headers, since) == {
        "x-death": [death(src, "rejected")],
        **expected_extra,
    }


def test_client_x_death_entries_are_grouped_by_queue_and_reason(
    channel: Channel, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    channel.queue_declare(dlq)
    channel.queue_declare(src, arguments=dead_letter_to(dlq))
    deaths = [
        {"queue": "a", "reason": "rejected"},
        {"queue": "a", "reason": "rejected", "count": 3},
        {"queue": "zq", "reason": "expired"},
    ]
    matching = [{**entry, "queue": src} for entry in deaths[:2]] + deaths[2:]
    since = time.time()
    for client_deaths in (matching, deaths):
        headers = {"x-death": client_deaths}
        channel.basic_publish("", src, b"m", pika.BasicProperties(headers=headers))
        reject_head(channel, src)
    _, first, _ = poll_get(channel, dlq)
    _, second, _ = poll_get(channel, dlq)
    # Matching (src, rejected): the first of the two, counted as 2, plus one.
    assert first.headers == {
        "x-death": [
            {"count": 3, "queue": src, "reason": "rejected"},
            {"count": 1, "queue": "zq", "reason": "expired"},
        ]
    }
    # No match: a new entry first, then the groups in reverse order.
    assert check_death_times(second.headers, since, untimed=(1, 2)) == {
        "x-death": [
            death(src, "rejected"),
            {"count": 1, "queue": "zq", "reason": "expired"},
            {"count": 2, "queue": "a", "reason": "rejected"},
        ]
    }


# -- aio-pika, and the bytes on the wire ---------------------------------------------


def test_aio_pika_reads_the_x_death_of_an_expired_message(
    broker: EmbeddedBroker, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")

    async def scenario() -> aio_pika.abc.AbstractIncomingMessage:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            channel = await connection.channel()
            dead = await channel.declare_queue(dlq)
            await channel.declare_queue(
                src, arguments=dead_letter_to(dlq, **{"x-message-ttl": 10})
            )
            await channel.default_exchange.publish(
                aio_pika.Message(b"aio", headers={"app": "aio"}), routing_key=src
            )
            async with dead.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    return message
        raise AssertionError("no message")

    since = time.time()
    message = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert (message.exchange, message.routing_key, message.body) == ("", dlq, b"aio")
    assert message.expiration is None
    assert check_death_times(dict(message.headers), since) == {
        "app": "aio",
        "x-death": [death(src, "expired")],
        **first_death(src, "expired"),
    }


def test_x_death_field_order_and_types_on_the_wire(
    broker: EmbeddedBroker, names: Callable[[str], str]
) -> None:
    src, dlq = names("src"), names("dlq")
    with open_client(broker.port) as client:
        client.open_channel(1)
        for queue, arguments in ((dlq, {}), (src, dead_letter_to(dlq))):
            client.send_method(
                1, commands.Queue.Declare(queue=queue, arguments=arguments)
            )
            client.expect(commands.Queue.DeclareOk, 1)
        # A hand-made content header: expiration "9000" and headers with a
        # double and a 64-bit integer (types pamqp would not pick).
        table = b"\x01dd" + struct.pack(">d", 0.1) + b"\x01ll" + struct.pack(">q", 5)
        flags_and_values = (
            struct.pack(">H", 0x2100)
            + struct.pack(">I", len(table))
            + table
            + b"\x049000"
        )
        client.send(
            method_frame(1, commands.Basic.Publish(routing_key=src))
            + raw_frame(2, 1, struct.pack(">HHQ", 60, 0, 1) + flags_and_values)
            + body_frame(1, b"w")
        )
        client.send_method(1, commands.Basic.Get(queue=src))
        get_ok = client.expect(commands.Basic.GetOk, 1)
        client.read()  # content header
        client.read()  # body
        client.send_method(
            1, commands.Basic.Reject(delivery_tag=get_ok.delivery_tag, requeue=False)
        )
        for _ in range(100):
            client.send_method(1, commands.Basic.Get(queue=dlq, no_ack=True))
            frame = client.read()
            if isinstance(frame.value, commands.Basic.GetOk):
                break
            time.sleep(0.01)
        header = client.read()
        client.read()  # body
    _, fields = typed_headers(header.payload) or ("", [])
    _, deaths = dict(fields)["x-death"]
    entry = deaths[0][1]
    assert [(key, value[0]) for key, value in entry] == [
        ("count", "l"),
        ("reason", "S"),
        ("queue", "S"),
        ("time", "T"),
        ("exchange", "S"),
        ("routing-keys", "A"),
        ("original-expiration", "S"),
    ]
    assert dict(fields)["d"] == ("d", 0.1)
    assert dict(fields)["l"] == ("l", 5)


def test_x_death_entries_on_later_deaths_keep_rabbitmq_wire_shape(
    broker: EmbeddedBroker, names: Callable[[str], str]
) -> None:
    """What RabbitMQ 3.10.8 sends (recorded with this scenario): a new entry
    in an existing x-death is sorted by key, older entries are passed on as
    they were, an entry whose count goes up is sorted, and the publisher's
    own headers keep their types through every death."""
    src, src2, dlq = names("src"), names("src2"), names("dlq")
    table = (
        b"\x01dd"
        + struct.pack(">d", 0.1)
        + b"\x01ll"
        + struct.pack(">q", 5)
        + b"\x01bb\x07"
        + b"\x02CCA"
        + struct.pack(">I", 9)
        + b"S"
        + struct.pack(">I", 4)
        + b"none"
    )
    properties = struct.pack(">HI", 0x2100, len(table)) + table + b"\x049000"

    with open_client(broker.port) as client:
        client.open_channel(1)
        for queue, arguments in (
            (dlq, {}),
            (src, dead_letter_to(src2)),
            (src2, dead_letter_to(dlq)),
        ):
            client.send_method(
                1, commands.Queue.Declare(queue=queue, arguments=arguments)
            )
            client.expect(commands.Queue.DeclareOk, 1)

        def publish(queue: str, raw_properties: bytes) -> None:
            client.send(
                method_frame(1, commands.Basic.Publish(routing_key=queue))
                + raw_frame(2, 1, struct.pack(">HHQ", 60, 0, 1) + raw_properties)
                + body_frame(1, b"w")
            )

        def get(queue: str, *, reject: bool) -> bytes:
            deadline = time.monotonic() + 5
            while True:
                client.send_method(
                    1, commands.Basic.Get(queue=queue, no_ack=not reject)
                )
                frame = client.read()
                if isinstance(frame.value, commands.Basic.GetOk):
                    break
                assert time.monotonic() < deadline, f"nothing arrived in {queue}"
                time.sleep(0.01)
            header = client.read().payload
            client.read()  # body
            if reject:
                client.send_method(
                    1,
                    commands.Basic.Reject(
                        delivery_tag=frame.value.delivery_tag, requeue=False
                    ),
                )
            return header

        publish(src, properties)
        get(src, reject=True)
        get(src2, reject=True)
        twice = get(dlq, reject=False)
        publish(src, twice[12:])  # the dead-lettered headers, as a client resends
        get(src, reject=True)
        again = get(src2, reject=False)

    def shape(header: bytes) -> list[tuple[str, Any]]:
        """Keys and types, values where they are not times."""
        _, fields = typed_headers(header) or ("", [])

        def strip(value: tuple[str, Any]) -> Any:
            kind, inner = value
            if kind == "T":
                return "T"
            if kind == "F":
                return [(key, strip(item)) for key, item in inner]
            if kind == "A":
                return [strip(item) for item in inner]
            return (kind, inner)

        return [(key, strip(value)) for key, value in fields]

    publisher_headers = [("b", ("b", 7)), ("d", ("d", 0.1)), ("l", ("l", 5))]
    first_death = [
        ("count", ("l", 1)),
        ("reason", ("S", b"rejected")),
        ("queue", ("S", src.encode())),
        ("time", "T"),
        ("exchange", ("S", b"")),
        ("routing-keys", [("S", src.encode()), ("S", b"none")]),
        ("original-expiration", ("S", b"9000")),
    ]
    src2_death = [
        ("count", ("l", 1)),
        ("exchange", ("S", b"")),
        ("queue", ("S", src2.encode())),
        ("reason", ("S", b"rejected")),
        ("routing-keys", [("S", src2.encode())]),
        ("time", "T"),
    ]
    first_headers = [
        ("x-first-death-exchange", ("S", b"")),
        ("x-first-death-queue", ("S", src.encode())),
        ("x-first-death-reason", ("S", b"rejected")),
    ]
    assert shape(twice) == [
        *publisher_headers,
        ("x-death", [src2_death, first_death]),
        *first_headers,
    ]
    src_counted_twice = sorted([("count", ("l", 2)), *first_death[1:]])
    assert shape(again) == [
        *publisher_headers,
        ("x-death", [src_counted_twice, src2_death]),
        *first_headers,
    ]
