"""Routing, through every client that can express it: topic and headers
exchanges, exchange-to-exchange bindings, alternate exchanges, mandatory
publishes the broker returns, sender-selected distribution (CC/BCC) and the
delayed-message exchange (amqpy-only: RabbitMQ has it only as a plugin that
Debian does not ship).

The publishes are confirmed where the client can, so a basic.get right after
sees everything that was routed.
"""

from __future__ import annotations

import time

import pytest

from interop.base import Props, require
from interop.helpers import WAIT_S, expect

pytestmark = pytest.mark.timeout(30)


def _drain(channel, queue: str) -> list[bytes]:
    """The bodies waiting in queue, oldest first (basic.get until empty)."""
    bodies = []
    while (delivery := channel.get(queue)) is not None:
        bodies.append(delivery.body)
    return bodies


def test_topic_exchange_routing(client, broker_url, names) -> None:
    """`*` matches one word, `#` zero or more; a queue whose bindings match
    a message twice gets it once."""
    require(client, "exchanges", "confirms")
    exchange = names.exchange("topic")
    bindings = {
        "star": ["stock.*.nyse", "*.usd.#"],
        "hash": ["stock.#"],
        "all": ["#"],
        "tail": ["#.nyse"],
    }
    queues = {key: names.queue(key) for key in bindings}
    keys = [
        "stock.usd.nyse",  # 0
        "stock.eur.lse",  # 1
        "stock",  # 2
        "stock.usd.nyse.extra",  # 3
        "bond.usd.nyse",  # 4
        "",  # 5
        "nyse",  # 6
        "stock..nyse",  # 7: an empty word matches `*`
    ]
    expected = {
        "star": [0, 3, 4, 7],
        "hash": [0, 1, 2, 3, 7],
        "all": [0, 1, 2, 3, 4, 5, 6, 7],
        "tail": [0, 4, 6, 7],
    }
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        channel.declare_exchange(exchange, "topic")
        for key, patterns in bindings.items():
            channel.declare_queue(queues[key])
            for pattern in patterns:
                channel.bind_queue(queues[key], exchange, pattern)
        for index, routing_key in enumerate(keys):
            channel.publish(exchange, routing_key, b"m%d" % index)
        got = {key: _drain(channel, queue) for key, queue in queues.items()}
        assert got == {
            key: [b"m%d" % i for i in indexes] for key, indexes in expected.items()
        }
    finally:
        connection.close()


def test_headers_exchange(client, broker_url, names) -> None:
    """x-match all needs every bound header, any needs one; the routing key
    does not count; a binding with no headers to match takes everything."""
    require(client, "exchanges", "confirms", "props")
    exchange = names.exchange("headers")
    wanted = {"format": "pdf", "type": "report"}
    bindings = {
        "all": {"x-match": "all", **wanted},
        "any": {"x-match": "any", **wanted},
        "none": {},
    }
    queues = {key: names.queue(key) for key in bindings}
    messages = [
        {"format": "pdf", "type": "report"},  # 0
        {"format": "pdf", "type": "log"},  # 1
        {"format": "zip"},  # 2
        {"format": "pdf", "type": "report", "size": 7},  # 3
        {},  # 4
        {"type": "report", "format": "pdf"},  # 5: order does not matter
    ]
    expected = {
        "all": [0, 3, 5],
        "any": [0, 1, 3, 5],
        "none": [0, 1, 2, 3, 4, 5],
    }
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        channel.declare_exchange(exchange, "headers")
        for key, arguments in bindings.items():
            channel.declare_queue(queues[key])
            channel.bind_queue(queues[key], exchange, "ignored", arguments)
        for index, headers in enumerate(messages):
            channel.publish(
                exchange, f"key-{index}", b"m%d" % index, Props(headers=headers)
            )
        got = {key: _drain(channel, queue) for key, queue in queues.items()}
        assert got == {
            key: [b"m%d" % i for i in indexes] for key, indexes in expected.items()
        }
    finally:
        connection.close()


def test_exchange_to_exchange_binding(client, broker_url, names) -> None:
    """exchange.bind: a direct exchange forwards to a fanout one by routing
    key; a queue reached by two paths gets one copy, naming the exchange the
    message was published to."""
    require(client, "exchanges", "confirms")
    source, destination = names.exchange("source"), names.exchange("destination")
    via_fanout, direct = names.queue("via-fanout"), names.queue("direct")
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        channel.declare_exchange(source, "direct")
        channel.declare_exchange(destination, "fanout")
        channel.bind_exchange(destination, source, "forward")
        channel.declare_queue(via_fanout)
        channel.bind_queue(via_fanout, destination)
        channel.declare_queue(direct)
        channel.bind_queue(direct, source, "direct-only")
        # A second path to the same queue: still one copy.
        channel.bind_queue(via_fanout, source, "forward")

        channel.publish(source, "forward", b"forwarded")
        channel.publish(source, "direct-only", b"not-forwarded")
        channel.publish(source, "nowhere", b"unrouted")
        channel.publish(destination, "any", b"fanout-direct")

        first = channel.get(via_fanout)
        assert (first.body, first.exchange, first.routing_key) == (
            b"forwarded",
            source,
            "forward",
        )
        assert _drain(channel, via_fanout) == [b"fanout-direct"]
        assert _drain(channel, direct) == [b"not-forwarded"]
    finally:
        connection.close()


def test_alternate_exchange(client, broker_url, names) -> None:
    """What the exchange cannot route goes to its alternate-exchange (and a
    mandatory publish it takes is not returned)."""
    require(client, "exchanges", "confirms")
    main, alternate = names.exchange("main"), names.exchange("alternate")
    routed, unrouted = names.queue("routed"), names.queue("unrouted")
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        channel.declare_exchange(alternate, "fanout")
        channel.declare_queue(unrouted)
        channel.bind_queue(unrouted, alternate)
        channel.declare_exchange(
            main, "direct", arguments={"alternate-exchange": alternate}
        )
        channel.declare_queue(routed)
        channel.bind_queue(routed, main, "known")

        channel.publish(main, "known", b"routed")
        channel.publish(main, "unknown", b"alternate")
        returns = "returns" in client.features
        if returns:
            channel.publish(main, "unknown-mandatory", b"alternate-2", mandatory=True)
        assert _drain(channel, routed) == [b"routed"]
        delivery = channel.get(unrouted)
        # The alternate exchange keeps the original exchange and key.
        assert (delivery.body, delivery.exchange, delivery.routing_key) == (
            b"alternate",
            main,
            "unknown",
        )
        if returns:
            assert _drain(channel, unrouted) == [b"alternate-2"]
            assert channel.returned() == []
        assert channel.get(unrouted) is None
    finally:
        connection.close()


def test_mandatory_unroutable_returned(client, broker_url, names) -> None:
    """A mandatory publish that reaches no queue comes back as basic.return
    (312 NO_ROUTE) with its body and properties; a routable one and a
    non-mandatory unroutable one do not."""
    require(client, "confirms", "returns", "exchanges", "props")
    queue, missing = names.queue("routed"), names.queue("missing")
    exchange = names.exchange("unbound")
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        channel.declare_queue(queue)
        channel.declare_exchange(exchange, "direct")
        channel.publish(
            "",
            missing,
            b"lost-1",
            Props(correlation_id="c-1", headers={"x-n": 1}),
            mandatory=True,
        )
        channel.publish("", queue, b"routed", mandatory=True)
        channel.publish("", missing, b"dropped", mandatory=False)
        channel.publish(exchange, "nothing-bound", b"lost-2", mandatory=True)
        # Confirms come after the return of the same message: every return
        # has arrived once the last publish was acked.
        returned = channel.returned()
        assert [
            (r.reply_code, r.reply_text, r.exchange, r.routing_key, r.body)
            for r in returned
        ] == [
            (312, "NO_ROUTE", "", missing, b"lost-1"),
            (312, "NO_ROUTE", exchange, "nothing-bound", b"lost-2"),
        ]
        assert returned[0].props.correlation_id == "c-1"
        assert returned[0].props.headers.get("x-n") == 1
        assert _drain(channel, queue) == [b"routed"]
    finally:
        connection.close()


def test_cc_bcc_sender_selected(client, broker_url, names) -> None:
    """CC and BCC headers add routing keys; every queue gets one copy with
    the original routing key, and BCC is removed from every copy."""
    require(client, "props", "exchanges", "confirms")
    to, cc, bcc = names.queue("to"), names.queue("cc"), names.queue("bcc")
    exchange = names.exchange("direct")
    a, b, c = names.queue("a"), names.queue("b"), names.queue("c")
    connection = client.connect(broker_url, confirms=True)
    try:
        channel = connection.channel()
        for queue in (to, cc, bcc):
            channel.declare_queue(queue)
        channel.declare_exchange(exchange, "direct")
        for queue, key in ((a, "ka"), (b, "kb"), (c, "kc")):
            channel.declare_queue(queue)
            channel.bind_queue(queue, exchange, key)

        channel.publish(
            "",
            to,
            b"memo",
            # `to` again in CC: still one copy.
            Props(headers={"CC": [cc, to], "BCC": [bcc], "x-keep": "yes"}),
        )
        channel.publish(exchange, "ka", b"routed", Props(headers={"BCC": ["kb"]}))

        for queue in (to, cc, bcc):
            delivery = channel.get(queue)
            assert delivery is not None, queue
            assert (delivery.body, delivery.routing_key) == (b"memo", to)
            headers = delivery.props.headers
            assert headers.get("CC") == [cc, to], headers
            assert "BCC" not in headers, headers
            assert headers.get("x-keep") == "yes"
            assert channel.get(queue) is None
        assert [_drain(channel, q) for q in (a, b, c)] == [[b"routed"], [b"routed"], []]
    finally:
        connection.close()


DELAY_MS = 300


@pytest.mark.amqpy_only(
    "x-delayed-message comes from a RabbitMQ plugin Debian does not ship"
)
def test_delayed_message_exchange(client, broker_url, names) -> None:
    """x-delayed-message: a message with an x-delay header (ms) is routed,
    as its x-delayed-type routes, only once the delay has passed."""
    require(client, "exchanges", "props")
    exchange, queue = names.exchange("delayed"), names.queue("delayed")
    connection = client.connect(broker_url, confirms="confirms" in client.features)
    try:
        channel = connection.channel()
        channel.declare_exchange(
            exchange, "x-delayed-message", arguments={"x-delayed-type": "direct"}
        )
        channel.declare_queue(queue)
        channel.bind_queue(queue, exchange, "key")
        channel.consume(queue, auto_ack=True)
        start = time.monotonic()
        channel.publish(exchange, "key", b"later", Props(headers={"x-delay": DELAY_MS}))
        channel.publish(exchange, "other", b"unrouted", Props(headers={"x-delay": 0}))
        channel.publish(exchange, "key", b"now")
        assert expect(channel).body == b"now"
        delivery = expect(channel, WAIT_S + DELAY_MS / 1000)
        waited = time.monotonic() - start
        assert delivery.body == b"later"
        assert delivery.routing_key == "key"
        assert waited >= DELAY_MS / 1000 * 0.9, waited
        assert channel.next_delivery(0.05) is None
    finally:
        connection.close()
