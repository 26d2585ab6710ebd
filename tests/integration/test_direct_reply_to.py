"""Direct reply-to (amq.rabbitmq.reply-to) as pika and aio-pika see it,
against RabbitMQ 3.10's observed behaviour (/work/oracle3/results.md,
section 2): the rewritten reply_to, replies delivered without a queue, the
pseudo-queue's declare-ok, and RabbitMQ's errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import pika
import pytest
from helpers.queue_features import poll_get, wait_until
from pika.adapters.blocking_connection import BlockingChannel

from amqpy.server.embedded import EmbeddedBroker

Channel = BlockingChannel
REPLY_TO = "amq.rabbitmq.reply-to"


def closed_by_broker(channel: Channel, action: Callable[[], Any]) -> tuple[int, str]:
    """Run `action` (then a round trip) and return the channel.close."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
        action()
        channel.queue_declare("", exclusive=True)
    return raised.value.reply_code, raised.value.reply_text


def request_reply_to(channel: Channel, requests: Channel, queue: str) -> str:
    """Publish a request with reply_to=amq.rabbitmq.reply-to and return the
    reply_to the responder sees."""
    channel.basic_publish(
        "", queue, b"req", pika.BasicProperties(reply_to=REPLY_TO, correlation_id="c1")
    )
    _, properties, _ = poll_get(requests, queue)
    return str(properties.reply_to)


def test_round_trip_through_the_default_exchange(
    connect: Callable[..., pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    requester = connect().channel()
    responder = connect().channel()
    queue = names("rpc")
    responder.queue_declare(queue, exclusive=True)
    replies: list[tuple[Any, Any, bytes]] = []
    tag = requester.basic_consume(
        REPLY_TO, lambda _c, m, p, b: replies.append((m, p, b)), auto_ack=True
    )
    reply_to = request_reply_to(requester, responder, queue)
    assert reply_to.startswith(REPLY_TO + ".")
    assert len(reply_to) > len(REPLY_TO) + 16
    responder.basic_publish(
        "",
        reply_to,
        b"resp",
        pika.BasicProperties(correlation_id="c1", headers={"CC": ["x"], "BCC": ["y"]}),
    )
    wait_until(requester, lambda: bool(replies))
    method, properties, body = replies[0]
    assert (method.consumer_tag, method.delivery_tag, method.redelivered) == (
        tag,
        1,
        False,
    )
    assert (method.exchange, method.routing_key, body) == ("", reply_to, b"resp")
    assert (properties.correlation_id, properties.headers) == ("c1", {"CC": ["x"]})
    # The name can be declared (passive or not) while its consumer lives.
    ok = responder.queue_declare(reply_to, passive=True).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (reply_to, 0, 1)


def test_replies_share_the_channel_delivery_tag_without_using_it_up(
    connect: Callable[..., pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    requester = connect().channel()
    responder = connect().channel()
    queue = names("rpc")
    responder.queue_declare(queue, exclusive=True)
    tags: list[int] = []
    requester.basic_consume(
        REPLY_TO, lambda _c, m, _p, _b: tags.append(m.delivery_tag), auto_ack=True
    )
    reply_to = request_reply_to(requester, responder, queue)
    own = requester.queue_declare("", exclusive=True).method.queue
    requester.basic_publish("", own, b"a")
    assert poll_get(requester, own, auto_ack=False)[0].delivery_tag == 1
    for _ in range(2):
        responder.basic_publish("", reply_to, b"r")
    wait_until(requester, lambda: len(tags) == 2)
    assert tags == [2, 2]  # as RabbitMQ 3.10: the next tag, not consumed
    requester.basic_publish("", own, b"b")
    assert poll_get(requester, own, auto_ack=False)[0].delivery_tag == 2


def test_mandatory_replies_are_returned_even_when_delivered(
    connect: Callable[..., pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    requester = connect().channel()
    responder = connect().channel()
    queue = names("rpc")
    responder.queue_declare(queue, exclusive=True)
    bodies: list[bytes] = []
    tag = requester.basic_consume(
        REPLY_TO, lambda _c, _m, _p, b: bodies.append(b), auto_ack=True
    )
    reply_to = request_reply_to(requester, responder, queue)
    responder.confirm_delivery()
    for routing_key in (reply_to, REPLY_TO + ".bogus", REPLY_TO):
        with pytest.raises(pika.exceptions.UnroutableError) as raised:
            responder.basic_publish("", routing_key, b"m", mandatory=True)
        assert [r.method.reply_code for r in raised.value.messages] == [312]
        assert raised.value.messages[0].method.reply_text == "NO_ROUTE"
    wait_until(requester, lambda: bodies == [b"m"])
    # Once the consumer is cancelled the name is dead: nothing arrives.
    requester.basic_cancel(tag)
    with pytest.raises(pika.exceptions.UnroutableError):
        responder.basic_publish("", reply_to, b"late", mandatory=True)
    code, text = closed_by_broker(
        responder, lambda: responder.queue_declare(reply_to, passive=True)
    )
    assert (code, text) == (404, f"NOT_FOUND - no queue '{reply_to}' in vhost '/'")
    assert bodies == [b"m"]


def test_a_closed_channel_frees_its_name_and_a_new_consumer_gets_a_new_one(
    connect: Callable[..., pika.BlockingConnection], names: Callable[[str], str]
) -> None:
    connection = connect()
    responder = connect().channel()
    queue = names("rpc")
    responder.queue_declare(queue, exclusive=True)
    first = connection.channel()
    first.basic_consume(REPLY_TO, lambda *_: None, auto_ack=True)
    old = request_reply_to(first, responder, queue)
    first.close()
    second = connection.channel()
    got: list[bytes] = []
    second.basic_consume(REPLY_TO, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
    new = request_reply_to(second, responder, queue)
    assert new != old
    responder.basic_publish("", old, b"old")
    responder.basic_publish("", new, b"new")
    wait_until(second, lambda: bool(got))
    second.connection.process_data_events(0.05)
    assert got == [b"new"]


def test_pseudo_queue_declare_and_errors(
    connect: Callable[..., pika.BlockingConnection],
) -> None:
    connection = connect()
    channel = connection.channel()
    for passive in (True, False):
        ok = channel.queue_declare(REPLY_TO, passive=passive).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (REPLY_TO, 0, 1)
    cases: list[tuple[Callable[[Channel], Any], tuple[int, str]]] = [
        (
            lambda ch: ch.basic_consume(REPLY_TO, lambda *_: None, auto_ack=False),
            (406, "PRECONDITION_FAILED - reply consumer cannot acknowledge"),
        ),
        (
            lambda ch: ch.basic_publish(
                "", "q", b"x", pika.BasicProperties(reply_to=REPLY_TO)
            ),
            (406, "PRECONDITION_FAILED - fast reply consumer does not exist"),
        ),
        (
            lambda ch: [
                ch.basic_consume(REPLY_TO, lambda *_: None, auto_ack=True)
                for _ in range(2)
            ],
            (406, "PRECONDITION_FAILED - reply consumer already set"),
        ),
        (
            lambda ch: ch.basic_get(REPLY_TO),
            (404, f"NOT_FOUND - no queue '{REPLY_TO}' in vhost '/'"),
        ),
        (
            lambda ch: ch.basic_consume(
                REPLY_TO + ".x", lambda *_: None, auto_ack=True
            ),
            (404, f"NOT_FOUND - no queue '{REPLY_TO}.x' in vhost '/'"),
        ),
        (
            lambda ch: ch.queue_declare(REPLY_TO + ".bogus", passive=True),
            (404, f"NOT_FOUND - no queue '{REPLY_TO}.bogus' in vhost '/'"),
        ),
    ]
    for action, expected in cases:
        channel = connection.channel()
        assert closed_by_broker(channel, lambda a=action, c=channel: a(c)) == expected
    # reply_to belongs to the channel that consumes: not its neighbour.
    consuming, other = connection.channel(), connection.channel()
    consuming.basic_consume(REPLY_TO, lambda *_: None, auto_ack=True)
    assert closed_by_broker(
        other,
        lambda: other.basic_publish(
            "", "q", b"x", pika.BasicProperties(reply_to=REPLY_TO)
        ),
    ) == (406, "PRECONDITION_FAILED - fast reply consumer does not exist")


def test_other_reply_to_values_pass_through(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue, exclusive=True)
    channel.basic_publish(
        "", queue, b"x", pika.BasicProperties(reply_to=REPLY_TO + ".foo")
    )
    assert poll_get(channel, queue)[1].reply_to == REPLY_TO + ".foo"


def test_aio_pika_requester_and_responder(
    broker: EmbeddedBroker, names: Callable[[str], str]
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{broker.port}/"
    queue_name = names("rpc")

    async def scenario() -> tuple[bytes, str | None, str]:
        async with await aio_pika.connect(url) as server_connection:
            server = await server_connection.channel()
            requests = await server.declare_queue(queue_name, exclusive=True)

            async def respond(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with message.process():
                    await server.default_exchange.publish(
                        aio_pika.Message(
                            message.body.upper(),
                            correlation_id=message.correlation_id,
                        ),
                        routing_key=str(message.reply_to),
                    )

            await requests.consume(respond)
            async with await aio_pika.connect(url) as client_connection:
                client = await client_connection.channel()
                replies = await client.get_queue(REPLY_TO, ensure=True)
                answer: asyncio.Future[aio_pika.abc.AbstractIncomingMessage] = (
                    asyncio.get_running_loop().create_future()
                )

                async def on_reply(
                    message: aio_pika.abc.AbstractIncomingMessage,
                ) -> None:
                    answer.set_result(message)

                await replies.consume(on_reply, no_ack=True)
                await client.default_exchange.publish(
                    aio_pika.Message(b"ping", reply_to=REPLY_TO, correlation_id="42"),
                    routing_key=queue_name,
                )
                reply = await answer
                return reply.body, reply.correlation_id, str(reply.routing_key)

    body, correlation_id, routing_key = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert (body, correlation_id) == (b"PING", "42")
    assert routing_key.startswith(REPLY_TO + ".")


def test_aio_pika_consume_with_ack_is_refused(broker: EmbeddedBroker) -> None:
    async def ignore(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
        pass

    async def scenario() -> str:
        url = f"amqp://guest:guest@127.0.0.1:{broker.port}/"
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel()
            replies = await channel.get_queue(REPLY_TO, ensure=False)
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed) as raised:
                await replies.consume(ignore, no_ack=False)
            return str(raised.value.args[0])

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == (
        "PRECONDITION_FAILED - reply consumer cannot acknowledge"
    )
