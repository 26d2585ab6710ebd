"""Queues as pika and aio-pika see them, against RabbitMQ 3.10's observed
behaviour (oracle §7 and §11)."""

from __future__ import annotations

import asyncio
import re
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

LOCKED = (
    405,
    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}' in "
    "vhost '/'. It could be originally declared on another connection or the "
    "exclusive property value does not match that of the original declaration.",
)
NO_PREVIOUS_QUEUE = (404, "NOT_FOUND - no previously declared queue")

# Names RabbitMQ accepts and echoes verbatim (oracle §6, §7).
UTF8_NAME = "q-é漢字 😀"
SPACED_NAME = "my queue  x "
LONG_ASCII_NAME = "q" * 255
LONG_UTF8_NAME = "漢" * 85  # 255 bytes


def channel_error(
    call: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[int, str]:
    """The (reply_code, reply_text) of the channel.close `call` provokes."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        call(*args, **kwargs)
    return info.value.reply_code, info.value.reply_text


def locked(name: str) -> tuple[int, str]:
    return LOCKED[0], LOCKED[1].format(name)


def not_found(kind: str, name: str) -> tuple[int, str]:
    return 404, f"NOT_FOUND - no {kind} '{name}' in vhost '/'"


def queue_exists(connection: pika.BlockingConnection, name: str) -> bool:
    channel = connection.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        if (error.reply_code, error.reply_text) == locked(name):
            return True  # another connection's exclusive queue
        assert (error.reply_code, error.reply_text) == not_found("queue", name)
        return False
    channel.close()
    return True


def poll(
    condition: Callable[[], bool],
    connection: pika.BlockingConnection | None = None,
    timeout: float = DEADLINE_S,
) -> bool:
    """Whether `condition` becomes true before the deadline; pumps `connection`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        if connection is not None:
            connection.process_data_events(time_limit=0.02)
        else:
            time.sleep(0.01)
    return True


def counts(channel: BlockingChannel, name: str) -> tuple[int, int]:
    ok = channel.queue_declare(name, passive=True).method
    return ok.message_count, ok.consumer_count


def publish_many(channel: BlockingChannel, queue: str, count: int) -> None:
    for index in range(count):
        channel.basic_publish("", queue, str(index).encode())


def run_async(coroutine_function: Callable[[], Any], timeout: float = 10.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coroutine_function()

    return asyncio.run(bounded())


# -- declare ---------------------------------------------------------------------


def test_server_named_queues(channel: BlockingChannel) -> None:
    first = channel.queue_declare("").method
    second = channel.queue_declare("", exclusive=True).method
    for ok in (first, second):
        assert re.fullmatch(r"amq\.gen-[A-Za-z0-9_-]{22}", ok.queue)
        assert (ok.message_count, ok.consumer_count) == (0, 0)
    assert first.queue != second.queue
    channel.basic_publish("", first.queue, b"to the generated name")
    assert channel.basic_get(first.queue, auto_ack=True)[2] == b"to the generated name"


def test_passive_declare_of_a_missing_queue_is_404(connect: Connect) -> None:
    connection = connect()
    for name in ("nosuchq", "", "amq.foo"):
        channel = connection.channel()
        assert channel_error(channel.queue_declare, name, passive=True) == not_found(
            "queue", name
        )
    assert connection.is_open


@pytest.mark.parametrize(
    ("first", "second", "detail"),
    [
        ({}, {"durable": True}, "'durable' ... received 'true' but current is 'false'"),
        (
            {"auto_delete": True},
            {},
            "'auto_delete' ... received 'false' but current is 'true'",
        ),
        (
            {},
            {"arguments": {"x-message-ttl": 1000}},
            "'x-message-ttl' ... received the value '1000' of type 'signedint' "
            "but current is none",
        ),
        (
            {"arguments": {"x-message-ttl": 1000}},
            {"arguments": {"x-message-ttl": 2000}},
            "'x-message-ttl' ... received '2000' but current is '1000'",
        ),
        (
            {"arguments": {"x-message-ttl": 1000}},
            {},
            "'x-message-ttl' ... received none but current is the value '1000' of "
            "type 'signedint'",
        ),
        (
            {},
            {"arguments": {"x-max-length": 5}},
            "'x-max-length' ... received the value '5' of type 'signedint' but "
            "current is none",
        ),
    ],
)
def test_inequivalent_redeclare_is_406(
    connect: Connect, first: dict[str, Any], second: dict[str, Any], detail: str
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("q7", **first)
    arg, rest = detail.split(" ... ")
    assert channel_error(channel.queue_declare, "q7", **second) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg {arg} for queue 'q7' in vhost "
        f"'/': {rest}",
    )
    # Passive declares ignore every mismatch.
    channel = connection.channel()
    channel.queue_declare("q7", passive=True, **second)
    channel.queue_declare("q7", **first)


INVALID_ARGUMENTS = {
    "ttl-type": ({"x-message-ttl": "abc"}, '"expected integer, got longstr"'),
    "ttl-negative": ({"x-message-ttl": -1}, "{value_negative,-1}"),
    "max-length-negative": ({"x-max-length": -1}, "{value_negative,-1}"),
    "expires-zero": ({"x-expires": 0}, "{value_zero,0}"),
    "max-priority": ({"x-max-priority": 300}, "{max_value_exceeded,300}"),
    "overflow": ({"x-overflow": "foo"}, "invalid_overflow"),
    "queue-type": ({"x-queue-type": "foo"}, "\"unsupported queue type 'foo'\""),
    "dlrk-without-dlx": (
        {"x-dead-letter-routing-key": "rk"},
        "routing_key_but_no_dlx_defined",
    ),
}


@pytest.mark.parametrize(
    ("arguments", "detail"), INVALID_ARGUMENTS.values(), ids=INVALID_ARGUMENTS
)
def test_invalid_queue_arguments_are_406(
    connect: Connect, arguments: dict[str, Any], detail: str
) -> None:
    connection = connect()
    [key] = arguments
    assert channel_error(
        connection.channel().queue_declare, "qbad", arguments=arguments
    ) == (
        406,
        f"PRECONDITION_FAILED - invalid arg '{key}' for queue 'qbad' in vhost '/': "
        f"{detail}",
    )
    assert not queue_exists(connection, "qbad")


def test_unknown_queue_arguments_are_not_compared(channel: BlockingChannel) -> None:
    channel.queue_declare("q7", arguments={"x-foo": "a"})
    channel.queue_declare("q7", arguments={"x-foo": "b"})
    channel.queue_declare("q7")
    assert channel.is_open


def test_exclusive_mismatch_is_405(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("q7")
    assert channel_error(channel.queue_declare, "q7", exclusive=True) == locked("q7")
    channel = connection.channel()
    channel.queue_declare("qx", exclusive=True)
    assert channel_error(channel.queue_declare, "qx") == locked("qx")


@pytest.mark.parametrize("name", ["amq.foo", "amq.gen-foo"])
def test_reserved_queue_names_are_403(channel: BlockingChannel, name: str) -> None:
    assert channel_error(channel.queue_declare, name) == (
        403,
        f"ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'",
    )


def test_declare_ok_counts_ready_messages_and_consumers(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("q")
    publish_many(channel, "q", 3)
    assert counts(channel, "q") == (3, 0)
    assert channel.queue_declare("q").method.message_count == 3

    consumer = connection.channel()
    consumer.basic_consume("q", lambda *_: None)  # takes all three, unacked
    assert poll(lambda: counts(channel, "q") == (0, 1))

    channel.queue_declare("q2")
    publish_many(channel, "q2", 4)
    limited = connection.channel()
    limited.basic_qos(prefetch_count=1)
    limited.basic_consume("q2", lambda *_: None)
    assert poll(lambda: counts(channel, "q2") == (3, 1))
    ok = channel.queue_declare("q2").method
    assert (ok.message_count, ok.consumer_count) == (3, 1)


# -- exclusive queues ------------------------------------------------------------


LOCKED_OPERATIONS = {
    "declare": lambda ch: ch.queue_declare("qx"),
    "declare-exclusive": lambda ch: ch.queue_declare("qx", exclusive=True),
    "passive": lambda ch: ch.queue_declare("qx", passive=True),
    "consume": lambda ch: ch.basic_consume("qx", lambda *_: None),
    "bind": lambda ch: ch.queue_bind("qx", "amq.direct", "k"),
    "purge": lambda ch: ch.queue_purge("qx"),
    "delete": lambda ch: ch.queue_delete("qx"),
    "get": lambda ch: ch.basic_get("qx"),
}


@pytest.mark.parametrize("operation", LOCKED_OPERATIONS.values(), ids=LOCKED_OPERATIONS)
def test_exclusive_queue_is_locked_to_other_connections(
    connect: Connect, operation: Callable[[BlockingChannel], Any]
) -> None:
    owner = connect().channel()
    owner.queue_declare("qx", exclusive=True)
    other = connect().channel()
    assert channel_error(operation, other) == locked("qx")
    assert owner.queue_declare("qx", passive=True).method.queue == "qx"


def test_other_connections_may_unbind_from_and_publish_to_an_exclusive_queue(
    connect: Connect,
) -> None:
    owner_connection = connect()
    owner = owner_connection.channel()
    owner.queue_declare("qx", exclusive=True)
    owner.queue_bind("qx", "amq.direct", "k")
    other = connect().channel()
    other.queue_unbind("qx", "amq.direct", "not-bound")
    other.basic_publish("", "qx", b"from elsewhere")
    other.basic_publish("amq.direct", "k", b"via amq.direct")
    # Other channels of the owning connection may use it.
    sibling = owner_connection.channel()
    assert poll(lambda: counts(sibling, "qx")[0] == 2)
    assert sibling.basic_get("qx", auto_ack=True)[2] == b"from elsewhere"
    assert sibling.basic_get("qx", auto_ack=True)[2] == b"via amq.direct"
    assert sibling.queue_purge("qx").method.message_count == 0


def test_exclusive_queue_goes_with_its_connection(connect: Connect) -> None:
    owner_connection = connect()
    owner = owner_connection.channel()
    owner.queue_declare("qx", exclusive=True)
    owner.queue_bind("qx", "amq.fanout")
    observer = connect()
    assert channel_error(observer.channel().queue_declare, "qx") == locked("qx")
    owner_connection.close()
    assert poll(lambda: not queue_exists(observer, "qx"))
    # Its bindings went too: a new queue of that name gets nothing from them.
    channel = observer.channel()
    channel.queue_declare("qx")
    channel.basic_publish("amq.fanout", "", b"x")
    assert counts(channel, "qx") == (0, 0)


# -- auto-delete -----------------------------------------------------------------


def test_auto_delete_queue_goes_after_its_last_consumer_cancels(
    connect: Connect,
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("qa", auto_delete=True)
    channel.queue_bind("qa", "amq.fanout")
    first = channel.basic_consume("qa", lambda *_: None)
    other_channel = connection.channel()
    second = other_channel.basic_consume("qa", lambda *_: None)
    channel.basic_cancel(first)
    assert counts(channel, "qa") == (0, 1)
    other_channel.basic_cancel(second)
    assert poll(lambda: not queue_exists(connection, "qa"))
    # The binding went with it.
    channel.queue_declare("qa")
    channel.basic_publish("amq.fanout", "", b"x")
    assert counts(channel, "qa") == (0, 0)


def test_auto_delete_queue_goes_when_its_consumers_channel_closes(
    connect: Connect,
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("qa", auto_delete=True)
    channel.basic_consume("qa", lambda *_: None)
    channel.close()
    assert poll(lambda: not queue_exists(connection, "qa"))


def test_never_consumed_auto_delete_queue_stays(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("qa", auto_delete=True)
    channel.basic_publish("", "qa", b"x")
    assert channel.basic_get("qa", auto_ack=True)[2] == b"x"
    assert queue_exists(connection, "qa")
    assert connect().channel().queue_declare("qa", passive=True).method.queue == "qa"


# -- delete and purge ------------------------------------------------------------


def test_delete_if_unused_and_if_empty(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("qd")
    connection.channel().basic_consume("qd", lambda *_: None)
    assert channel_error(channel.queue_delete, "qd", if_unused=True) == (
        406,
        "PRECONDITION_FAILED - queue 'qd' in vhost '/' in use",
    )
    channel = connection.channel()
    channel.queue_declare("qe")
    publish_many(channel, "qe", 2)
    assert channel_error(channel.queue_delete, "qe", if_empty=True) == (
        406,
        "PRECONDITION_FAILED - queue 'qe' in vhost '/' not empty",
    )
    assert queue_exists(connection, "qd")
    assert queue_exists(connection, "qe")


def test_delete_reports_the_ready_messages_it_removed(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("q")
    publish_many(channel, "q", 5)
    assert channel.basic_get("q")[0] is not None  # one unacked: not counted
    assert channel.queue_delete("q").method.message_count == 4
    assert not queue_exists(connection, "q")


def test_delete_missing_queue_is_ok_with_count_0(channel: BlockingChannel) -> None:
    assert channel.queue_delete("nosuchq").method.message_count == 0
    assert channel.queue_delete("nosuchq", if_unused=True).method.message_count == 0
    assert channel.queue_delete("nosuchq", if_empty=True).method.message_count == 0


def test_purge(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("q")
    publish_many(channel, "q", 3)
    assert channel.queue_purge("q").method.message_count == 3
    assert counts(channel, "q") == (0, 0)
    assert channel.queue_purge("q").method.message_count == 0
    assert channel_error(channel.queue_purge, "nosuchq") == not_found(
        "queue", "nosuchq"
    )


# -- bind / unbind ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("queue", "exchange", "expected"),
    [
        ("nosuchq", "amq.direct", not_found("queue", "nosuchq")),
        ("q", "nosuchex", not_found("exchange", "nosuchex")),
        ("nosuchq", "nosuchex", not_found("exchange", "nosuchex")),
    ],
)
def test_bind_with_something_missing_is_404(
    channel: BlockingChannel, queue: str, exchange: str, expected: tuple[int, str]
) -> None:
    channel.queue_declare("q")
    assert channel_error(channel.queue_bind, queue, exchange, "k") == expected


def test_unbind_of_anything_missing_is_ok(channel: BlockingChannel) -> None:
    channel.queue_declare("q")
    for queue, exchange in (
        ("q", "amq.direct"),
        ("nosuchq", "amq.direct"),
        ("q", "nosuchex"),
    ):
        ok = channel.queue_unbind(queue, exchange, "never-bound")
        assert isinstance(ok.method, pika.spec.Queue.UnbindOk)


def test_bind_and_unbind_change_routing(channel: BlockingChannel) -> None:
    channel.queue_declare("q")
    channel.queue_bind("q", "amq.direct", "k")
    channel.basic_publish("amq.direct", "k", b"bound")
    channel.queue_unbind("q", "amq.direct", "k")
    channel.basic_publish("amq.direct", "k", b"unbound")
    assert counts(channel, "q") == (1, 0)
    assert channel.basic_get("q", auto_ack=True)[2] == b"bound"


# -- the empty-name shortcut -----------------------------------------------------


SHORTCUT_OPERATIONS = {
    "bind": lambda ch: ch.queue_bind("", "amq.direct", "k"),
    "purge": lambda ch: ch.queue_purge(""),
    "delete": lambda ch: ch.queue_delete(""),
    "consume": lambda ch: ch.basic_consume("", lambda *_: None),
    "get": lambda ch: ch.basic_get(""),
}


@pytest.mark.parametrize(
    "operation", SHORTCUT_OPERATIONS.values(), ids=SHORTCUT_OPERATIONS
)
def test_empty_queue_name_without_an_earlier_declare_is_404(
    connect: Connect, operation: Callable[[BlockingChannel], Any]
) -> None:
    connection = connect()
    connection.channel().queue_declare("declared-on-another-channel")
    assert channel_error(operation, connection.channel()) == NO_PREVIOUS_QUEUE


def test_empty_queue_name_means_the_last_declared_queue(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("first")
    name = channel.queue_declare("").method.queue
    # queue.bind with an empty queue and key binds that queue by its name.
    channel.queue_bind("", "amq.direct", "")
    channel.basic_publish("amq.direct", name, b"1")
    channel.basic_publish("", name, b"2")
    channel.basic_publish("", name, b"3")
    method, _, body = channel.basic_get("", auto_ack=True)
    assert (body, method.message_count) == (b"1", 2)
    assert channel.queue_purge("").method.message_count == 2
    delivered: list[bytes] = []
    tag = channel.basic_consume("", lambda _ch, _m, _p, body: delivered.append(body))
    channel.basic_publish("", name, b"4")
    assert poll(lambda: delivered == [b"4"], connection)
    channel.basic_cancel(tag)
    assert channel.queue_delete("").method.message_count == 0
    assert not queue_exists(connection, name)
    assert queue_exists(connection, "first")


# -- queue.delete cancels consumers ----------------------------------------------


def test_queue_delete_cancels_a_consumer_on_another_channel(connect: Connect) -> None:
    connection = connect()
    consumer = connection.channel()
    consumer.queue_declare("q11")
    cancelled: list[str] = []
    consumer.add_on_cancel_callback(
        lambda frame: cancelled.append(frame.method.consumer_tag)
    )
    consumer.basic_consume("q11", lambda *_: None, consumer_tag="c11")
    deleter = connection.channel()
    assert deleter.queue_delete("q11").method.message_count == 0
    # The cancel precedes delete-ok on the wire, so it is already here.
    connection.process_data_events(time_limit=0)
    assert cancelled == ["c11"]
    assert consumer.is_open
    assert consumer.consumer_tags == []


def test_queue_delete_cancels_a_consumer_on_another_connection(
    connect: Connect,
) -> None:
    consumer_connection = connect()
    consumer = consumer_connection.channel()
    consumer.queue_declare("q11")
    cancelled: list[str] = []
    consumer.add_on_cancel_callback(
        lambda frame: cancelled.append(frame.method.consumer_tag)
    )
    consumer.basic_consume("q11", lambda *_: None, consumer_tag="c11")
    connect().channel().queue_delete("q11")
    # A round trip on the consumer's connection, started after delete-ok:
    # the cancel was queued for it before delete-ok was sent.
    consumer.queue_declare("", exclusive=True)
    consumer_connection.process_data_events(time_limit=0)
    assert cancelled == ["c11"]
    assert consumer.is_open


def test_no_cancel_for_a_client_without_consumer_cancel_notify(
    connect: Connect,
) -> None:
    capabilities = {
        "authentication_failure_close": True,
        "basic.nack": True,
        "connection.blocked": True,
        "publisher_confirms": True,
    }
    consumer_connection = connect(client_properties={"capabilities": capabilities})
    consumer = consumer_connection.channel()
    consumer.queue_declare("q11")
    cancelled: list[str] = []
    consumer.add_on_cancel_callback(
        lambda frame: cancelled.append(frame.method.consumer_tag)
    )
    consumer.basic_consume("q11", lambda *_: None, consumer_tag="c11")
    connect().channel().queue_delete("q11")
    consumer.queue_declare("", exclusive=True)  # would come after any cancel
    consumer_connection.process_data_events(time_limit=0)
    assert cancelled == []
    assert not queue_exists(consumer_connection, "q11")


def test_aio_pika_consumer_is_cancelled_when_its_queue_is_deleted(
    broker: EmbeddedBroker,
) -> None:
    async def scenario() -> None:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("q11")
            cancelled = asyncio.Event()
            tags: list[str] = []

            def on_cancel(frame: aiormq.spec.Basic.Cancel) -> None:
                tags.append(frame.consumer_tag)
                cancelled.set()

            underlay = await channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(on_cancel)

            async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                pass

            tag = await queue.consume(ignore, consumer_tag="c11")
            other = await connection.channel()
            await other.queue_delete("q11")
            await asyncio.wait_for(cancelled.wait(), DEADLINE_S)
            assert tags == [tag] == ["c11"]
            assert not channel.is_closed

    run_async(scenario)


# -- names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [UTF8_NAME, SPACED_NAME, LONG_ASCII_NAME, LONG_UTF8_NAME],
    ids=["utf8", "spaces", "255-ascii", "255-bytes-utf8"],
)
def test_pika_queue_and_exchange_names_round_trip(connect: Connect, name: str) -> None:
    connection = connect()
    channel = connection.channel()
    assert channel.queue_declare(name).method.queue == name
    exchange = name  # the same odd name for an exchange
    channel.exchange_declare(exchange, "direct")
    channel.queue_bind(name, exchange, name)
    channel.basic_publish(exchange, name, b"via exchange")
    channel.basic_publish("", name, b"via default")
    method, _, body = channel.basic_get(name, auto_ack=True)
    assert (method.exchange, method.routing_key, body) == (
        exchange,
        name,
        b"via exchange",
    )
    deliveries: list[tuple[str, str, str, bytes]] = []
    channel.basic_consume(
        name,
        lambda _ch, m, _p, body: deliveries.append(
            (m.consumer_tag, m.exchange, m.routing_key, body)
        ),
        auto_ack=True,
        consumer_tag=name,
    )
    assert poll(lambda: len(deliveries) == 1, connection)
    assert deliveries == [(name, "", name, b"via default")]
    assert channel.queue_declare(name, passive=True).method.queue == name
    assert channel.queue_delete(name).method.message_count == 0


def test_long_names_in_error_texts_are_cut_as_rabbitmq_cuts_them(
    connect: Connect,
) -> None:
    # RabbitMQ caps a reply text at 255 bytes: 252 bytes, then "...".
    connection = connect()
    channel = connection.channel()
    code, text = channel_error(channel.queue_declare, LONG_ASCII_NAME, passive=True)
    assert code == 404
    assert text == f"NOT_FOUND - no queue '{LONG_ASCII_NAME}"[:252] + "..."
    channel = connection.channel()
    code, text = channel_error(channel.queue_declare, LONG_UTF8_NAME, passive=True)
    assert code == 404
    assert text.startswith("NOT_FOUND - no queue '漢漢")
    assert text.endswith("...")
    assert len(text.encode()) <= 255
    assert connection.is_open


def test_aio_pika_names_round_trip(connect: Connect, broker: EmbeddedBroker) -> None:
    # aio-pika's codec (pamqp) only sends names matching [a-zA-Z0-9-_.:@#,/+ ]*,
    # so UTF-8 names are set up with pika; aio-pika still receives them.
    setup = connect().channel()
    setup.exchange_declare("ex-é", "fanout")
    setup.queue_declare("aio q")
    setup.queue_bind("aio q", "ex-é")

    async def scenario() -> None:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            channel = await connection.channel()
            for name in (SPACED_NAME, LONG_ASCII_NAME):
                queue = await channel.declare_queue(name)
                assert queue.name == name
                await channel.default_exchange.publish(
                    aio_pika.Message(b"x"), routing_key=name
                )
                async with queue.iterator() as messages:
                    message = await anext(messages)
                    await message.ack()
                assert (message.exchange, message.routing_key) == ("", name)
                assert message.consumer_tag is not None
                await queue.delete()

            queue = await channel.declare_queue("aio q", passive=True)
            async with queue.iterator() as messages:
                setup.basic_publish("ex-é", UTF8_NAME, b"utf8")
                message = await anext(messages)
                await message.ack()
            assert (message.exchange, message.routing_key, message.body) == (
                "ex-é",
                UTF8_NAME,
                b"utf8",
            )

    run_async(scenario)


def test_aio_pika_queue_errors(broker: EmbeddedBroker) -> None:
    async def scenario() -> None:
        connection = await aio_pika.connect(broker.url)
        async with connection:
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity) as missing:
                await channel.declare_queue("nosuchq", passive=True)
            assert (
                missing.value.args[0] == "NOT_FOUND - no queue 'nosuchq' in vhost '/'"
            )
            channel = await connection.channel()
            await channel.declare_queue("q7")
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as failed:
                await channel.declare_queue("q7", durable=True)
            assert failed.value.args[0] == (
                "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q7' in "
                "vhost '/': received 'true' but current is 'false'"
            )
            channel = await connection.channel()
            queue = await channel.declare_queue("", exclusive=True)
            assert queue.name.startswith("amq.gen-")
            other = await aio_pika.connect(broker.url)
            async with other:
                other_channel = await other.channel()
                with pytest.raises(aiormq.exceptions.ChannelLockedResource) as info:
                    await other_channel.declare_queue(queue.name, passive=True)
                assert info.value.args[0] == locked(queue.name)[1]

    run_async(scenario)
