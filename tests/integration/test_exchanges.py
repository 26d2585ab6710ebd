"""Exchanges and routing as pika and aio-pika see them, against RabbitMQ
3.10's observed behaviour (oracle §6, §8 and §16)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from amqpy.server.embedded import EmbeddedBroker

Connect = Callable[..., pika.BlockingConnection]
DEADLINE_S = 5.0

DEFAULT_EXCHANGE_REFUSED = (
    403,
    "ACCESS_REFUSED - operation not permitted on the default exchange",
)


def channel_error(
    call: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[int, str]:
    """The (reply_code, reply_text) of the channel.close `call` provokes."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        call(*args, **kwargs)
    return info.value.reply_code, info.value.reply_text


def connection_error(
    call: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[int, str]:
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        call(*args, **kwargs)
    return info.value.reply_code, info.value.reply_text


def not_found(kind: str, name: str) -> tuple[int, str]:
    return 404, f"NOT_FOUND - no {kind} '{name}' in vhost '/'"


def exchange_exists(connection: pika.BlockingConnection, name: str) -> bool:
    channel = connection.channel()
    try:
        channel.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        assert (error.reply_code, error.reply_text) == not_found("exchange", name)
        return False
    channel.close()
    return True


def private_queue(channel: BlockingChannel) -> str:
    return channel.queue_declare("", exclusive=True).method.queue


def drain(channel: BlockingChannel, queue: str) -> list[tuple[str, bytes]]:
    """Every ready message of `queue` (routing key, body), taken with basic.get."""
    taken = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return taken
        taken.append((method.routing_key, body))


def bodies(channel: BlockingChannel, queue: str) -> list[bytes]:
    return [body for _, body in drain(channel, queue)]


def confirmed(connection: pika.BlockingConnection) -> BlockingChannel:
    """A channel in confirm mode: basic_publish waits for the broker's answer."""
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def run_async(coroutine_function: Callable[[], Any], timeout: float = 10.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coroutine_function()

    return asyncio.run(bounded())


# -- declare ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "arg", "detail"),
    [
        ({}, {"exchange_type": "fanout"}, "type", "'fanout' but current is 'direct'"),
        ({}, {"durable": True}, "durable", "'true' but current is 'false'"),
        ({"auto_delete": True}, {}, "auto_delete", "'false' but current is 'true'"),
        ({}, {"internal": True}, "internal", "'true' but current is 'false'"),
        (
            {},
            {"arguments": {"alternate-exchange": "ae"}},
            "alternate-exchange",
            "the value 'ae' of type 'longstr' but current is none",
        ),
    ],
)
def test_inequivalent_redeclare_closes_the_channel_with_406(
    connect: Connect,
    first: dict[str, Any],
    second: dict[str, Any],
    arg: str,
    detail: str,
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare("ex6", **{"exchange_type": "direct", **first})
    assert channel_error(
        channel.exchange_declare, "ex6", **{"exchange_type": "direct", **second}
    ) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange 'ex6' in "
        f"vhost '/': received {detail}",
    )
    assert not channel.is_open
    assert connection.is_open
    # The exchange is unchanged.
    channel = connection.channel()
    channel.exchange_declare("ex6", **{"exchange_type": "direct", **first})


def test_unknown_arguments_are_not_compared(channel: BlockingChannel) -> None:
    channel.exchange_declare("ex6", "direct", arguments={"x-foo": 1})
    channel.exchange_declare("ex6", "direct", arguments={"x-foo": "changed"})
    channel.exchange_declare("ex6", "direct")
    assert channel.is_open


def test_passive_declare(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare("ex6", "direct")
    ok = channel.exchange_declare("ex6", "fanout", passive=True, durable=True)
    assert isinstance(ok.method, pika.spec.Exchange.DeclareOk)
    assert channel_error(
        channel.exchange_declare, "nosuchex", passive=True
    ) == not_found("exchange", "nosuchex")
    # An unknown type does not matter to a passive declare of a missing name.
    channel = connection.channel()
    assert channel_error(
        channel.exchange_declare, "nosuchex", "x-foo", passive=True
    ) == not_found("exchange", "nosuchex")


def test_reserved_amq_prefix(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    assert channel_error(channel.exchange_declare, "amq.foo", "direct") == (
        403,
        "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
    )
    channel = connection.channel()
    assert channel_error(
        channel.exchange_declare, "amq.foo", passive=True
    ) == not_found("exchange", "amq.foo")
    channel = connection.channel()
    channel.exchange_declare("AMQ.foo", "direct")
    channel.exchange_declare("amq", "direct")
    channel.exchange_declare("amq.direct", "direct", durable=True)
    assert channel_error(channel.exchange_declare, "amq.direct", "direct") == (
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'amq.direct' "
        "in vhost '/': received 'false' but current is 'true'",
    )
    channel = connection.channel()
    assert channel_error(
        channel.exchange_declare, "amq.direct", "topic", durable=True
    ) == (
        406,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'amq.direct' "
        "in vhost '/': received 'topic' but current is 'direct'",
    )


@pytest.mark.parametrize(
    "operation",
    [
        lambda ch: ch.exchange_declare("", "direct"),
        lambda ch: ch.exchange_declare("", passive=True),
        lambda ch: ch.exchange_delete(""),
        lambda ch: ch.queue_bind(private_queue(ch), "", "k"),
        lambda ch: ch.queue_unbind(private_queue(ch), "", "k"),
        lambda ch: ch.exchange_bind("amq.direct", "", "k"),
        lambda ch: ch.exchange_bind("", "amq.direct", "k"),
        lambda ch: ch.exchange_unbind("amq.direct", "", "k"),
    ],
    ids=[
        "declare",
        "passive",
        "delete",
        "queue.bind",
        "queue.unbind",
        "exchange.bind-source",
        "exchange.bind-destination",
        "exchange.unbind",
    ],
)
def test_default_exchange_is_off_limits(
    channel: BlockingChannel, operation: Callable[[BlockingChannel], Any]
) -> None:
    assert channel_error(operation, channel) == DEFAULT_EXCHANGE_REFUSED


def test_amq_default_is_not_an_alias_for_the_default_exchange(
    connect: Connect,
) -> None:
    connection = connect()
    channel = confirmed(connection)
    assert channel_error(channel.basic_publish, "amq.default", "k", b"x") == (
        not_found("exchange", "amq.default")
    )
    channel = connection.channel()
    queue = private_queue(channel)
    assert channel_error(channel.queue_bind, queue, "amq.default", "k") == (
        not_found("exchange", "amq.default")
    )
    channel = connection.channel()
    code, text = channel_error(channel.exchange_declare, "amq.default", "direct")
    assert (code, text) == (
        403,
        "ACCESS_REFUSED - exchange name 'amq.default' contains reserved prefix 'amq.*'",
    )
    channel = connection.channel()
    assert channel_error(channel.exchange_delete, "amq.default") == (
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.default' in vhost '/' "
        "not allowed",
    )


def test_every_vhost_has_the_internal_trace_exchange(connect: Connect) -> None:
    connection = connect()
    channel = confirmed(connection)
    channel.exchange_declare("amq.rabbitmq.trace", passive=True)
    channel.exchange_declare("amq.rabbitmq.trace", "topic", durable=True, internal=True)
    assert channel_error(channel.basic_publish, "amq.rabbitmq.trace", "k", b"x") == (
        403,
        "ACCESS_REFUSED - cannot publish to internal exchange 'amq.rabbitmq.trace' "
        "in vhost '/'",
    )


@pytest.mark.parametrize(
    ("type_name", "text"),
    [
        ("x-foo", "COMMAND_INVALID - unknown exchange type 'x-foo'"),
        ("DIRECT", "COMMAND_INVALID - unknown exchange type 'DIRECT'"),
        ("", "COMMAND_INVALID - invalid exchange type ''"),
    ],
)
def test_unknown_exchange_type_closes_the_connection_with_503(
    connect: Connect, type_name: str, text: str
) -> None:
    connection = connect()
    channel = connection.channel()
    assert connection_error(channel.exchange_declare, "ex", type_name) == (503, text)
    assert connection.is_closed
    assert not exchange_exists(connect(), "ex")


def test_odd_names_are_accepted(channel: BlockingChannel) -> None:
    queue = private_queue(channel)
    for name in ("x" * 255, "a b/c", "ex-é"):
        channel.exchange_declare(name, "fanout")
        channel.exchange_declare(name, passive=True)
        channel.queue_bind(queue, name)
        channel.basic_publish(name, "rk", name.encode())
    assert bodies(channel, queue) == [b"x" * 255, b"a b/c", "ex-é".encode()]


def test_auto_delete_exchange_goes_when_its_last_binding_is_removed(
    connect: Connect,
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare("ad", "direct", auto_delete=True)
    queue = private_queue(channel)
    channel.queue_bind(queue, "ad", "k1")
    channel.queue_bind(queue, "ad", "k2")
    channel.queue_unbind(queue, "ad", "k1")
    assert exchange_exists(connection, "ad")
    channel.queue_unbind(queue, "ad", "k2")
    assert not exchange_exists(connection, "ad")


def test_nowait_declare_mismatch_still_closes_the_channel(
    broker: EmbeddedBroker,
) -> None:
    async def scenario() -> None:
        connection = await aiormq.connect(broker.url)
        try:
            channel = await connection.channel()
            await channel.exchange_declare("ex6", exchange_type="direct")
            await channel.exchange_declare("ex6", exchange_type="fanout", nowait=True)
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as info:
                await channel.queue_declare("", exclusive=True)
            assert info.value.args[0] == (
                "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'ex6' "
                "in vhost '/': received 'fanout' but current is 'direct'"
            )
        finally:
            await connection.close()

    run_async(scenario)


# -- delete ----------------------------------------------------------------------


def test_delete_system_exchange_is_403(connect: Connect) -> None:
    connection = connect()
    for name in ("amq.direct", "amq.foo"):
        channel = connection.channel()
        assert channel_error(channel.exchange_delete, name) == (
            403,
            f"ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' "
            "not allowed",
        )
    assert exchange_exists(connection, "amq.direct")


def test_delete_missing_exchange_is_ok(channel: BlockingChannel) -> None:
    assert isinstance(
        channel.exchange_delete("nosuchex").method, pika.spec.Exchange.DeleteOk
    )
    channel.exchange_delete("nosuchex", if_unused=True)
    assert channel.is_open


def test_delete_if_unused(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    in_use = (406, "PRECONDITION_FAILED - exchange 'ex6' in vhost '/' in use")
    channel.exchange_declare("ex6", "direct")
    queue = private_queue(channel)
    channel.queue_bind(queue, "ex6", "k")
    assert channel_error(channel.exchange_delete, "ex6", if_unused=True) == in_use
    # The source of an exchange-to-exchange binding is in use too ...
    channel = connection.channel()
    channel.queue_unbind(queue, "ex6", "k")
    channel.exchange_declare("dst", "fanout")
    channel.exchange_bind("dst", "ex6", "k")
    assert channel_error(channel.exchange_delete, "ex6", if_unused=True) == in_use
    # ... but its destination is not.
    channel = connection.channel()
    channel.exchange_delete("dst", if_unused=True)
    assert not exchange_exists(connection, "dst")
    channel.exchange_delete("ex6", if_unused=True)
    assert not exchange_exists(connection, "ex6")


def test_deleted_exchange_takes_its_bindings(channel: BlockingChannel) -> None:
    channel.exchange_declare("x", "fanout")
    queue = private_queue(channel)
    channel.queue_bind(queue, "x")
    channel.exchange_delete("x")
    channel.exchange_declare("x", "fanout")
    channel.basic_publish("x", "", b"lost")
    assert bodies(channel, queue) == []


# -- publish ---------------------------------------------------------------------


def test_publish_to_a_missing_exchange_closes_the_channel(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.basic_publish("nosuchex", "k", b"x")
    # basic.publish has no reply: the error arrives as the channel.close.
    deadline = time.monotonic() + DEADLINE_S
    while channel.is_open and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert channel.is_closed
    assert connection.is_open
    channel = confirmed(connection)
    assert channel_error(channel.basic_publish, "nosuchex", "k", b"x") == not_found(
        "exchange", "nosuchex"
    )


def test_publish_to_an_internal_exchange_is_403(connect: Connect) -> None:
    connection = connect()
    channel = confirmed(connection)
    channel.exchange_declare("ex6int", "fanout", internal=True)
    assert channel_error(channel.basic_publish, "ex6int", "k", b"x") == (
        403,
        "ACCESS_REFUSED - cannot publish to internal exchange 'ex6int' in vhost '/'",
    )


def test_internal_exchange_receives_through_an_exchange_binding(
    channel: BlockingChannel,
) -> None:
    channel.exchange_declare("front", "fanout")
    channel.exchange_declare("inner", "fanout", internal=True)
    channel.exchange_bind("inner", "front")
    queue = private_queue(channel)
    channel.queue_bind(queue, "inner")
    channel.basic_publish("front", "k", b"via front")
    assert bodies(channel, queue) == [b"via front"]


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [("", "nosuchq"), ("amq.direct", "unbound"), ("amq.direct", "")],
)
def test_mandatory_unroutable_is_returned_with_312(
    connect: Connect, exchange: str, routing_key: str
) -> None:
    connection = connect()
    channel = connection.channel()
    returned: list[tuple[Any, Any, bytes]] = []
    channel.add_on_return_callback(
        lambda _ch, method, properties, body: returned.append(
            (method, properties, body)
        )
    )
    channel.basic_publish(
        exchange,
        routing_key,
        b"back",
        pika.BasicProperties(headers={"h": "v"}),
        mandatory=True,
    )
    deadline = time.monotonic() + DEADLINE_S
    while not returned and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.05)
    assert len(returned) == 1
    method, properties, body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == (exchange, routing_key)
    assert properties.headers == {"h": "v"}
    assert body == b"back"
    assert channel.is_open


def test_mandatory_unroutable_on_a_confirm_channel_raises_unroutable(
    connect: Connect,
) -> None:
    channel = confirmed(connect())
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        channel.basic_publish("amq.direct", "unbound", b"back", mandatory=True)
    [message] = info.value.messages
    assert (message.method.reply_code, message.method.reply_text) == (312, "NO_ROUTE")
    assert message.method.routing_key == "unbound"
    assert message.body == b"back"
    # Routable and non-mandatory unroutable publishes are simply acked.
    queue = private_queue(channel)
    channel.basic_publish("", queue, b"routed", mandatory=True)
    channel.basic_publish("amq.direct", "unbound", b"dropped")
    assert bodies(channel, queue) == [b"routed"]


def test_immediate_publish_closes_the_connection_with_540(
    broker: EmbeddedBroker,
) -> None:
    async def scenario() -> None:
        connection = await aiormq.connect(broker.url)
        channel = await connection.channel()
        declared = await channel.queue_declare("", exclusive=True)
        with pytest.raises(aiormq.exceptions.ConnectionNotImplemented) as info:
            # The publish itself may see the close; if not, the connection does.
            await channel.basic_publish(
                b"x", routing_key=declared.queue, immediate=True
            )
            await connection.closing
        assert info.value.args[0] == "NOT_IMPLEMENTED - immediate=true"
        assert connection.is_closed

    run_async(scenario)


# -- exchange-to-exchange bindings -----------------------------------------------


@pytest.mark.parametrize(
    ("destination", "source", "reported"),
    [
        ("amq.fanout", "nosuchsrc", "nosuchsrc"),
        ("nosuchdst", "amq.fanout", "nosuchdst"),
        ("nosuchdst", "nosuchsrc", "nosuchsrc"),
    ],
)
def test_exchange_bind_with_a_missing_side_is_404(
    channel: BlockingChannel, destination: str, source: str, reported: str
) -> None:
    assert channel_error(channel.exchange_bind, destination, source, "k") == (
        not_found("exchange", reported)
    )


def test_exchange_unbind_of_nothing_is_ok(channel: BlockingChannel) -> None:
    ok = channel.exchange_unbind("amq.fanout", "amq.direct", "never-bound")
    assert isinstance(ok.method, pika.spec.Exchange.UnbindOk)
    channel.exchange_unbind("amq.fanout", "nosuchsrc", "k")
    assert channel.is_open


def test_fanout_to_topic_chain(channel: BlockingChannel) -> None:
    channel.exchange_declare("fan", "fanout")
    channel.exchange_declare("top", "topic")
    channel.exchange_bind("top", "fan", "ignored-by-fanout")
    stocks = private_queue(channel)
    everything = private_queue(channel)
    channel.queue_bind(stocks, "top", "stock.#")
    channel.queue_bind(everything, "top", "#")
    channel.basic_publish("fan", "stock.nyse", b"1")
    channel.basic_publish("fan", "weather", b"2")
    assert drain(channel, stocks) == [("stock.nyse", b"1")]
    assert drain(channel, everything) == [("stock.nyse", b"1"), ("weather", b"2")]
    channel.exchange_unbind("top", "fan", "ignored-by-fanout")
    channel.basic_publish("fan", "stock.nyse", b"3")
    assert drain(channel, everything) == []


def test_exchange_binding_cycle_delivers_each_message_once(
    channel: BlockingChannel,
) -> None:
    for name in ("a", "b", "c"):
        channel.exchange_declare(name, "fanout")
    channel.exchange_bind("b", "a")
    channel.exchange_bind("c", "b")
    channel.exchange_bind("a", "c")
    queue = private_queue(channel)
    channel.queue_bind(queue, "a")
    channel.queue_bind(queue, "c")
    channel.basic_publish("b", "k", b"once")
    assert bodies(channel, queue) == [b"once"]


# -- alternate exchanges ---------------------------------------------------------


def test_alternate_exchange_gets_what_is_unroutable(channel: BlockingChannel) -> None:
    channel.exchange_declare("ae", "fanout")
    channel.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae"})
    routed = private_queue(channel)
    unrouted = private_queue(channel)
    channel.queue_bind(routed, "main", "known")
    channel.queue_bind(unrouted, "ae")
    channel.basic_publish("main", "known", b"1")
    channel.basic_publish("main", "unknown", b"2")
    assert drain(channel, routed) == [("known", b"1")]
    assert drain(channel, unrouted) == [("unknown", b"2")]


def test_alternate_exchange_chain_and_cycle(channel: BlockingChannel) -> None:
    channel.exchange_declare("z", "fanout")
    channel.exchange_declare("y", "direct", arguments={"alternate-exchange": "z"})
    channel.exchange_declare("x", "direct", arguments={"alternate-exchange": "y"})
    # p and q are each other's alternate.
    channel.exchange_declare("p", "direct", arguments={"alternate-exchange": "q"})
    channel.exchange_declare("q", "direct", arguments={"alternate-exchange": "p"})
    last_resort = private_queue(channel)
    cycled = private_queue(channel)
    channel.queue_bind(last_resort, "z")
    channel.queue_bind(cycled, "q", "q-key")
    channel.basic_publish("x", "anything", b"to z")
    channel.basic_publish("p", "q-key", b"via q")
    channel.basic_publish("p", "nowhere", b"lost")
    assert bodies(channel, last_resort) == [b"to z"]
    assert bodies(channel, cycled) == [b"via q"]


def test_missing_alternate_exchange_is_allowed_and_mandatory_returns(
    connect: Connect,
) -> None:
    channel = confirmed(connect())
    channel.exchange_declare(
        "main", "direct", arguments={"alternate-exchange": "missing-ae"}
    )
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        channel.basic_publish("main", "k", b"x", mandatory=True)
    assert info.value.messages[0].method.reply_code == 312


def test_message_taken_by_an_alternate_exchange_is_not_returned(
    connect: Connect,
) -> None:
    channel = confirmed(connect())
    channel.exchange_declare("ae", "fanout")
    channel.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae"})
    queue = private_queue(channel)
    channel.queue_bind(queue, "ae")
    channel.basic_publish("main", "k", b"x", mandatory=True)  # no UnroutableError
    assert bodies(channel, queue) == [b"x"]


# -- routing by exchange type ----------------------------------------------------


def test_direct_routing(channel: BlockingChannel) -> None:
    channel.exchange_declare("d", "direct")
    q1, q2 = private_queue(channel), private_queue(channel)
    channel.queue_bind(q1, "d", "red")
    channel.queue_bind(q2, "d", "red")
    channel.queue_bind(q2, "d", "green")
    for key in ("red", "green", "blue", "RED"):
        channel.basic_publish("d", key, key.encode())
    assert bodies(channel, q1) == [b"red"]
    assert bodies(channel, q2) == [b"red", b"green"]


def test_fanout_ignores_the_routing_key(channel: BlockingChannel) -> None:
    channel.exchange_declare("f", "fanout")
    q1, q2 = private_queue(channel), private_queue(channel)
    channel.queue_bind(q1, "f", "one")
    channel.queue_bind(q2, "f", "")
    channel.basic_publish("f", "whatever", b"a")
    channel.basic_publish("f", "", b"b")
    assert bodies(channel, q1) == [b"a", b"b"]
    assert bodies(channel, q2) == [b"a", b"b"]


TOPIC_KEYS = [
    "", "a", "a.b", "a.b.c", "b.a", ".", "a.", ".a", "a..b", "a.x.b", "a.b.b",
    "b", "a.x.y.b",
]  # fmt: skip
ALL_KEYS = set(TOPIC_KEYS)
TOPIC_TABLE = {
    "#": ALL_KEYS,
    "*": {"a", "b"},
    "a.*": {"a.b", "a."},
    "a.#": {"a", "a.b", "a.b.c", "a.", "a..b", "a.x.b", "a.b.b", "a.x.y.b"},
    "#.a": {"a", "b.a", ".a"},
    "*.*": {"a.b", "b.a", ".", "a.", ".a"},
    "a.*.#": {"a.b", "a.b.c", "a.", "a..b", "a.x.b", "a.b.b", "a.x.y.b"},
    "#.#": ALL_KEYS,
    "": {""},
    "a..b": {"a..b"},
    "a.*.b": {"a..b", "a.x.b", "a.b.b"},
    "#.*": ALL_KEYS - {""},
    "*.#": ALL_KEYS - {""},
    "a.#.b": {"a.b", "a..b", "a.x.b", "a.b.b", "a.x.y.b"},
    "#.b.#": {"a.b", "a.b.c", "b.a", "a..b", "a.x.b", "a.b.b", "b", "a.x.y.b"},
    "a.b.c": {"a.b.c"},
}


def test_topic_routing_matches_rabbitmq(channel: BlockingChannel) -> None:
    channel.exchange_declare("t16", "topic")
    queues = {}
    for pattern in TOPIC_TABLE:
        queues[pattern] = private_queue(channel)
        channel.queue_bind(queues[pattern], "t16", pattern)
    for key in TOPIC_KEYS:
        channel.basic_publish("t16", key, key.encode())
    matched = {
        pattern: {routing_key for routing_key, _ in drain(channel, queue)}
        for pattern, queue in queues.items()
    }
    assert matched == TOPIC_TABLE


HEADERS_CASES = [
    # (binding arguments, message headers, routed)
    ({"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 0}, True),
    ({"a": 1, "b": "x"}, {"a": 1}, False),
    ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
    ({"x-match": "any", "a": 1, "b": "x"}, {"b": "x"}, True),
    ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "c": "x"}, False),
    ({}, {"anything": "goes"}, True),
    ({}, None, True),
    ({"a": 1}, {"a": "1"}, False),  # type-sensitive
    ({"x-k": "v"}, {"x-k": "other"}, True),  # plain all ignores x- keys
    ({"x-match": "any", "x-k": "v"}, {"x-k": "v"}, False),
    ({"x-match": "all-with-x", "x-k": "v"}, {"x-k": "v"}, True),
    ({"x-match": "all-with-x", "x-k": "v"}, {"x-k": "other"}, False),
    ({"x-match": "any-with-x", "x-k": "v", "a": 1}, {"x-k": "v"}, True),
    ({"x-match": "any-with-x", "x-k": "v", "a": 1}, {"x-k": "w", "a": 2}, False),
]


def test_headers_routing(channel: BlockingChannel) -> None:
    channel.exchange_declare("h", "headers")
    queues = []
    for arguments, _, _ in HEADERS_CASES:
        queue = private_queue(channel)
        channel.queue_bind(queue, "h", "", arguments=arguments)
        queues.append(queue)
    for index, (_, headers, _) in enumerate(HEADERS_CASES):
        properties = pika.BasicProperties(headers=headers)
        channel.basic_publish("h", "", str(index).encode(), properties)
    routed = [
        str(index).encode() in bodies(channel, queue)
        for index, queue in enumerate(queues)
    ]
    assert routed == [expected for _, _, expected in HEADERS_CASES]


@pytest.mark.parametrize(
    ("x_match", "text"),
    [
        (
            "foo",
            'PRECONDITION_FAILED - Invalid x-match field value <<"foo">>; '
            "expected all, any, all-with-x, or any-with-x",
        ),
        (
            1,  # pika sends it as a signed 32-bit int
            "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); "
            "expected longstr",
        ),
    ],
)
def test_headers_binding_with_invalid_x_match_is_406(
    channel: BlockingChannel, x_match: object, text: str
) -> None:
    queue = private_queue(channel)
    assert channel_error(
        channel.queue_bind, queue, "amq.headers", "", {"x-match": x_match}
    ) == (406, text)


# -- aio-pika --------------------------------------------------------------------


def test_aio_pika_exchange_declare_bind_and_route(broker: EmbeddedBroker) -> None:
    async def scenario() -> None:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            channel = await connection.channel()
            # aio-pika's codec (pamqp) only sends names matching
            # [a-zA-Z0-9-_.:@#,/+ ]*, exchange names up to 127 characters.
            fan = await channel.declare_exchange(
                "fan a/b", aio_pika.ExchangeType.FANOUT
            )
            top = await channel.declare_exchange("t" * 127, aio_pika.ExchangeType.TOPIC)
            await top.bind(fan)
            queue = await channel.declare_queue("", exclusive=True)
            await queue.bind(top, "a.*")
            await fan.publish(aio_pika.Message(b"1"), routing_key="a.b")
            await fan.publish(aio_pika.Message(b"2"), routing_key="b.a")
            async with queue.iterator() as messages:
                message = await anext(messages)
                await message.ack()
            assert (message.body, message.exchange, message.routing_key) == (
                b"1",
                "fan a/b",
                "a.b",
            )
            assert await queue.get(fail=False) is None

            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as info:
                await channel.declare_exchange("fan a/b", aio_pika.ExchangeType.DIRECT)
            assert info.value.args[0] == (
                "PRECONDITION_FAILED - inequivalent arg 'type' for exchange "
                "'fan a/b' in vhost '/': received 'direct' but current is 'fanout'"
            )

    run_async(scenario)


def test_aio_pika_sees_missing_exchange_and_default_exchange_errors(
    broker: EmbeddedBroker,
) -> None:
    async def scenario() -> None:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity) as info:
                await channel.declare_exchange("nosuchex", passive=True)
            assert (
                info.value.args[0] == "NOT_FOUND - no exchange 'nosuchex' in vhost '/'"
            )
            channel = await connection.channel()
            underlay = await channel.get_underlay_channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as refused:
                await underlay.exchange_delete("")
            assert refused.value.args[0] == DEFAULT_EXCHANGE_REFUSED[1]

    run_async(scenario)
