"""Sender-selected distribution (CC and BCC headers) as pika and aio-pika see
it, against RabbitMQ 3.10's observed behaviour (/work/oracle3/results.md,
section 1): extra routing keys, each queue once, BCC removed, errors."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

import aio_pika
import pika
import pytest
from helpers.amqp_client import body_frame, method_frame, open_client, raw_frame
from helpers.queue_features import message_count, poll_get, typed_headers, wait_count
from pamqp import commands
from pika.adapters.blocking_connection import BlockingChannel

from amqpy.server.embedded import EmbeddedBroker

Channel = BlockingChannel


def headers(**values: object) -> pika.BasicProperties:
    return pika.BasicProperties(headers=values)


def test_cc_and_bcc_route_to_each_queue_once_and_bcc_is_removed(
    channel: Channel, names: Callable[[str], str]
) -> None:
    a, b, c, d = names("a"), names("b"), names("c"), names("d")
    for queue in (a, b, c, d):
        channel.queue_declare(queue, exclusive=True)
    channel.basic_publish("", a, b"m", headers(CC=[b, a], BCC=[c, a], other=1))
    for queue in (a, b, c):
        method, properties, body = poll_get(channel, queue)
        assert (method.routing_key, method.exchange, body) == (a, "", b"m")
        assert properties.headers == {"CC": [b, a], "other": 1}
    wait_count(channel, a, 0)  # no second copy anywhere
    assert [message_count(channel, q) for q in (a, b, c, d)] == [0, 0, 0, 0]


def test_bcc_alone_routes_and_leaves_an_empty_headers_table(
    channel: Channel, names: Callable[[str], str]
) -> None:
    exchange, queue = names("x"), names("q")
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    channel.queue_declare(queue, exclusive=True)
    channel.queue_bind(queue, exchange, "kd")
    channel.basic_publish(exchange, "nothing", b"m", headers(BCC=["kd"]))
    method, properties, _ = poll_get(channel, queue)
    assert method.routing_key == "nothing"
    assert properties.headers == {}


def test_cc_keys_match_topic_patterns_and_exchange_bindings(
    channel: Channel, names: Callable[[str], str]
) -> None:
    topic, src, dst = names("t"), names("src"), names("dst")
    qa, qb, qd = names("qa"), names("qb"), names("qd")
    for queue in (qa, qb, qd):
        channel.queue_declare(queue, exclusive=True)
    channel.exchange_declare(topic, "topic", auto_delete=True)
    channel.queue_bind(qa, topic, "a.*")
    channel.queue_bind(qb, topic, "b.#")
    channel.basic_publish(topic, "a.1", b"t", headers(CC=["b.x.y"]))
    assert poll_get(channel, qa)[2] == poll_get(channel, qb)[2] == b"t"
    channel.exchange_declare(src, "direct", auto_delete=True)
    channel.exchange_declare(dst, "direct", auto_delete=True)
    channel.exchange_bind(dst, src, "k2")
    channel.queue_bind(qd, dst, "k2")
    channel.basic_publish(src, "k1", b"e2e", headers(CC=["k2"]))
    method, properties, _ = poll_get(channel, qd)
    assert (method.routing_key, properties.headers) == ("k1", {"CC": ["k2"]})


def test_alternate_exchange_only_when_no_key_routes(
    channel: Channel, names: Callable[[str], str]
) -> None:
    ae, x, routed, alternate = names("ae"), names("x"), names("r"), names("alt")
    channel.queue_declare(routed, exclusive=True)
    channel.queue_declare(alternate, exclusive=True)
    channel.exchange_declare(ae, "fanout", auto_delete=True)
    channel.queue_bind(alternate, ae)
    channel.exchange_declare(
        x, "direct", auto_delete=True, arguments={"alternate-exchange": ae}
    )
    channel.queue_bind(routed, x, "ka")
    channel.basic_publish(x, "zz", b"by-cc", headers(CC=["ka"]))
    channel.basic_publish(x, "zz", b"nowhere", headers(CC=["yy"], BCC=["q"]))
    assert poll_get(channel, routed)[2] == b"by-cc"
    _, properties, body = poll_get(channel, alternate)
    assert (body, properties.headers) == (b"nowhere", {"CC": ["yy"]})
    assert message_count(channel, routed) == message_count(channel, alternate) == 0


def test_mandatory_counts_cc_routes_and_returns_without_bcc(
    channel: Channel, names: Callable[[str], str]
) -> None:
    queue = names("q")
    channel.queue_declare(queue, exclusive=True)
    channel.confirm_delivery()
    channel.basic_publish(
        "", names("none"), b"by-cc", headers(CC=[queue]), mandatory=True
    )
    assert poll_get(channel, queue)[2] == b"by-cc"
    with pytest.raises(pika.exceptions.UnroutableError) as raised:
        channel.basic_publish(
            "",
            names("none"),
            b"lost",
            headers(CC=[names("n2")], BCC=[names("n3")]),
            mandatory=True,
        )
    [returned] = raised.value.messages
    assert returned.method.reply_code == 312
    assert returned.properties.headers == {"CC": [names("n2")]}


def test_only_longstr_items_route_and_names_are_case_sensitive(
    channel: Channel, names: Callable[[str], str]
) -> None:
    a, b = names("a"), names("b")
    channel.queue_declare(a, exclusive=True)
    channel.queue_declare(b, exclusive=True)
    channel.basic_publish("", a, b"mixed", headers(CC=[1, b, True]))
    assert poll_get(channel, b)[1].headers == {"CC": [1, b, True]}
    channel.basic_publish("", a, b"lower", headers(cc=[b]))
    channel.basic_publish("", a, b"empty", headers(CC=[], BCC=[]))
    wait_count(channel, a, 3)
    assert message_count(channel, b) == 0


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"CC": "q"}, 'invalid message: {unacceptable_type_in_header,"CC",longstr}'),
        ({"BCC": 5}, 'invalid message: {unacceptable_type_in_header,"BCC",signedint}'),
    ],
)
def test_a_header_that_is_not_an_array_closes_the_channel(
    channel: Channel, value: dict[str, object], text: str
) -> None:
    channel.basic_publish("", "q", b"x", pika.BasicProperties(headers=value))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
        channel.queue_declare("", exclusive=True)
    assert raised.value.reply_code == 406
    assert raised.value.reply_text == f"PRECONDITION_FAILED - {text}"


def test_aio_pika_publisher_with_cc_and_bcc(
    broker: EmbeddedBroker, names: Callable[[str], str]
) -> None:
    async def scenario() -> list[tuple[bytes, dict[str, object]]]:
        connection = await aio_pika.connect(
            f"amqp://guest:guest@127.0.0.1:{broker.port}/"
        )
        async with connection:
            channel = await connection.channel()
            queues = [
                await channel.declare_queue(names(n), exclusive=True)
                for n in ("a", "b", "c")
            ]
            await channel.default_exchange.publish(
                aio_pika.Message(
                    b"hi", headers={"CC": [names("b")], "BCC": [names("c")]}
                ),
                routing_key=names("a"),
            )
            got = []
            for queue in queues:
                async with queue.iterator() as messages:
                    async for message in messages:
                        await message.ack()
                        got.append((message.body, dict(message.headers)))
                        break
            return got

    got = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert got == [(b"hi", {"CC": [names("b")]})] * 3


def test_removing_bcc_keeps_the_other_headers_order_and_types(
    broker: EmbeddedBroker, names: Callable[[str], str]
) -> None:
    """As RabbitMQ 3.10.8 sends it (recorded): only BCC goes; a double and a
    64-bit integer stay what the publisher sent, in the publisher's order."""
    first, second = names("first"), names("second")
    bcc = b"S" + struct.pack(">I", len(second)) + second.encode()
    table = (
        b"\x01zd"
        + struct.pack(">d", 0.1)
        + b"\x03BCCA"
        + struct.pack(">I", len(bcc))
        + bcc
        + b"\x01al"
        + struct.pack(">q", 5)
    )
    properties = struct.pack(">HI", 0x2000, len(table)) + table
    with open_client(broker.port) as client:
        client.open_channel(1)
        for queue in (first, second):
            client.send_method(1, commands.Queue.Declare(queue=queue))
            client.expect(commands.Queue.DeclareOk, 1)
        client.send(
            method_frame(1, commands.Basic.Publish(routing_key=first))
            + raw_frame(2, 1, struct.pack(">HHQ", 60, 0, 1) + properties)
            + body_frame(1, b"m")
        )
        for queue in (first, second):
            deadline = time.monotonic() + 5
            while True:
                client.send_method(1, commands.Basic.Get(queue=queue, no_ack=True))
                if isinstance(client.read().value, commands.Basic.GetOk):
                    break
                assert time.monotonic() < deadline, f"nothing arrived in {queue}"
                time.sleep(0.01)
            header = client.read().payload
            client.read()  # body
            assert typed_headers(header) == (
                "F",
                [("z", ("d", 0.1)), ("a", ("l", 5))],
            )
