"""The broker model without sockets: a VHost's exchanges, queues, bindings and
routing, with RabbitMQ 3.10's rules and error texts (oracle §6, §7, §11)."""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import commands, header

from amqpy.broker.channel import Channel
from amqpy.broker.errors import (
    AccessRefusedError,
    AmqpError,
    CommandInvalidError,
    NotFoundError,
    PreconditionFailedError,
    ResourceLockedError,
)
from amqpy.broker.queue import Queue
from amqpy.broker.vhost import VHost
from amqpy.model.message import Message

LOCKED = (
    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}' in "
    "vhost '/'. It could be originally declared on another connection or the "
    "exclusive property value does not match that of the original declaration."
)


class FakeSink:
    """A DeliverySink that records what the broker hands to a channel."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, int, bool, Message]] = []
        self.cancelled: list[str] = []

    def can_accept(self) -> bool:
        return True

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        self.deliveries.append((consumer_tag, delivery_tag, redelivered, message))

    def consumer_cancelled(self, consumer_tag: str) -> None:
        self.cancelled.append(consumer_tag)


def message(
    routing_key: str = "", exchange: str = "", headers: dict[str, Any] | None = None
) -> Message:
    properties_raw = b"\x00\x00"
    if headers is not None:
        properties = commands.Basic.Properties(headers=headers)
        # A content header is class, weight and body size (12 bytes), then
        # the property flags and values the Message keeps.
        properties_raw = header.ContentHeader(0, 0, properties).marshal()[12:]
    return Message(exchange, routing_key, properties_raw, b"body")


def names(queues: list[Queue]) -> list[str]:
    return sorted(queue.name for queue in queues)


def publish(vhost: VHost, exchange: str, routing_key: str = "", **kw: Any) -> list[str]:
    """Route like basic.publish does and enqueue; the names of the queues hit."""
    target = vhost.publish_target(exchange)
    msg = message(routing_key, exchange, **kw)
    queues = vhost.route(target, msg)
    for queue in queues:
        queue.enqueue(msg)
    return [queue.name for queue in queues]


def assert_error(info: pytest.ExceptionInfo[AmqpError], code: int, text: str) -> None:
    assert (info.value.reply_code, info.value.reply_text) == (code, text)


@pytest.fixture
def vhost() -> VHost:
    return VHost("/")


OWNER = object()
OTHER = object()


def declare_queue(vhost: VHost, name: str, **kw: Any) -> Queue:
    kw.setdefault("owner", OWNER)
    return vhost.declare_queue(name, **kw)


# -- exchanges: declare ----------------------------------------------------------


def test_predeclared_exchanges_exist_with_their_types(vhost: VHost) -> None:
    types = {
        name: vhost.get_exchange(name).type_name
        for name in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers")
    }
    assert types == {
        "amq.direct": "direct",
        "amq.fanout": "fanout",
        "amq.topic": "topic",
        "amq.headers": "headers",
    }
    assert vhost.get_exchange("amq.match").type_name == "headers"
    assert vhost.get_exchange("amq.direct").durable
    trace = vhost.get_exchange("amq.rabbitmq.trace")
    assert (trace.type_name, trace.durable, trace.internal) == ("topic", True, True)


def test_redeclare_with_same_properties_returns_the_same_exchange(
    vhost: VHost,
) -> None:
    first = vhost.declare_exchange("ex6", "direct", durable=True)
    again = vhost.declare_exchange("ex6", "direct", durable=True)
    assert again is first
    assert vhost.get_exchange("ex6") is first


@pytest.mark.parametrize(
    ("first", "second", "text"),
    [
        (
            {"type_name": "direct"},
            {"type_name": "fanout"},
            "inequivalent arg 'type' for exchange 'ex6' in vhost '/': "
            "received 'fanout' but current is 'direct'",
        ),
        (
            {"type_name": "direct"},
            {"type_name": "direct", "durable": True},
            "inequivalent arg 'durable' for exchange 'ex6' in vhost '/': "
            "received 'true' but current is 'false'",
        ),
        (
            {"type_name": "direct", "auto_delete": True},
            {"type_name": "direct"},
            "inequivalent arg 'auto_delete' for exchange 'ex6' in vhost '/': "
            "received 'false' but current is 'true'",
        ),
        (
            {"type_name": "direct"},
            {"type_name": "direct", "internal": True},
            "inequivalent arg 'internal' for exchange 'ex6' in vhost '/': "
            "received 'true' but current is 'false'",
        ),
        (
            {"type_name": "direct"},
            {"type_name": "direct", "arguments": {"alternate-exchange": "ae"}},
            "inequivalent arg 'alternate-exchange' for exchange 'ex6' in vhost "
            "'/': received the value 'ae' of type 'longstr' but current is none",
        ),
    ],
)
def test_inequivalent_exchange_redeclare_is_406(
    vhost: VHost, first: dict[str, Any], second: dict[str, Any], text: str
) -> None:
    vhost.declare_exchange("ex6", **first)
    with pytest.raises(PreconditionFailedError) as info:
        vhost.declare_exchange("ex6", **second)
    assert_error(info, 406, f"PRECONDITION_FAILED - {text}")
    assert not info.value.is_hard


def test_unknown_exchange_arguments_are_not_compared(vhost: VHost) -> None:
    vhost.declare_exchange("ex6", "direct", arguments={"x-foo": 1})
    vhost.declare_exchange("ex6", "direct", arguments={"x-foo": 2})
    vhost.declare_exchange("ex6", "direct")
    vhost.declare_exchange("ex6", "direct", arguments={"x-bar": "y"})


def test_passive_declare_ignores_mismatches_and_404s_when_missing(
    vhost: VHost,
) -> None:
    existing = vhost.declare_exchange("ex6", "direct")
    found = vhost.declare_exchange("ex6", "fanout", passive=True, durable=True)
    assert found is existing
    with pytest.raises(NotFoundError) as info:
        vhost.declare_exchange("nosuchex", "direct", passive=True)
    assert_error(info, 404, "NOT_FOUND - no exchange 'nosuchex' in vhost '/'")
    with pytest.raises(NotFoundError):
        vhost.declare_exchange("nosuchex", "x-foo", passive=True)


def test_reserved_amq_prefix(vhost: VHost) -> None:
    with pytest.raises(AccessRefusedError) as info:
        vhost.declare_exchange("amq.foo", "direct")
    assert_error(
        info,
        403,
        "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
    )
    with pytest.raises(NotFoundError):
        vhost.declare_exchange("amq.foo", "direct", passive=True)
    # Only the lower-case "amq." prefix is reserved.
    vhost.declare_exchange("AMQ.foo", "direct")
    vhost.declare_exchange("amq", "direct")
    # Redeclaring a predeclared exchange with its own properties is fine ...
    assert vhost.declare_exchange("amq.direct", "direct", durable=True)
    # ... other properties are inequivalent.
    with pytest.raises(PreconditionFailedError) as info:
        vhost.declare_exchange("amq.direct", "direct")
    assert info.value.text.startswith("inequivalent arg 'durable' for exchange")
    with pytest.raises(PreconditionFailedError) as info:
        vhost.declare_exchange("amq.direct", "topic", durable=True)
    assert info.value.text.startswith("inequivalent arg 'type' for exchange")


def test_default_exchange_refuses_every_operation(vhost: VHost) -> None:
    text = "ACCESS_REFUSED - operation not permitted on the default exchange"
    declare_queue(vhost, "q")
    vhost.declare_exchange("x", "direct")
    operations = [
        lambda: vhost.declare_exchange("", "direct"),
        lambda: vhost.declare_exchange("", "direct", passive=True),
        lambda: vhost.delete_exchange(""),
        lambda: vhost.bind_queue("q", "", "q", None, owner=OWNER),
        lambda: vhost.unbind_queue("q", "", "q", None, owner=OWNER),
        lambda: vhost.bind_exchange("x", "", "k", None),
        lambda: vhost.bind_exchange("", "x", "k", None),
        lambda: vhost.unbind_exchange("x", "", "k", None),
    ]
    for operation in operations:
        with pytest.raises(AccessRefusedError) as info:
            operation()
        assert_error(info, 403, text)
    assert "" in vhost.exchanges


@pytest.mark.parametrize(
    ("type_name", "text"),
    [
        ("x-foo", "COMMAND_INVALID - unknown exchange type 'x-foo'"),
        ("DIRECT", "COMMAND_INVALID - unknown exchange type 'DIRECT'"),
        ("", "COMMAND_INVALID - invalid exchange type ''"),
    ],
)
def test_unknown_exchange_type_is_a_connection_error(
    vhost: VHost, type_name: str, text: str
) -> None:
    with pytest.raises(CommandInvalidError) as info:
        vhost.declare_exchange("ex", type_name)
    assert_error(info, 503, text)
    assert info.value.is_hard
    assert "ex" not in vhost.exchanges


def test_exchange_type_is_checked_before_the_default_exchange_name(
    vhost: VHost,
) -> None:
    # rabbit_channel checks the type first (a connection error), then the name.
    with pytest.raises(CommandInvalidError) as info:
        vhost.declare_exchange("", "x-foo")
    assert_error(info, 503, "COMMAND_INVALID - unknown exchange type 'x-foo'")
    with pytest.raises(AccessRefusedError):
        vhost.declare_exchange("", "x-foo", passive=True)


def test_amq_default_is_not_an_alias(vhost: VHost) -> None:
    with pytest.raises(NotFoundError) as info:
        vhost.publish_target("amq.default")
    assert_error(info, 404, "NOT_FOUND - no exchange 'amq.default' in vhost '/'")
    with pytest.raises(AccessRefusedError) as info:
        vhost.declare_exchange("amq.default", "direct")
    assert "reserved prefix" in info.value.text
    with pytest.raises(AccessRefusedError) as info:
        vhost.delete_exchange("amq.default")
    assert info.value.text == (
        "deletion of system exchange 'amq.default' in vhost '/' not allowed"
    )


# -- exchanges: delete -----------------------------------------------------------


def test_delete_system_exchange_is_403_even_when_missing(vhost: VHost) -> None:
    for name in ("amq.direct", "amq.foo"):
        with pytest.raises(AccessRefusedError) as info:
            vhost.delete_exchange(name)
        assert_error(
            info,
            403,
            f"ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' "
            "not allowed",
        )
    assert "amq.direct" in vhost.exchanges


def test_delete_missing_exchange_succeeds(vhost: VHost) -> None:
    vhost.delete_exchange("nosuchex")
    vhost.delete_exchange("nosuchex", if_unused=True)


def test_delete_if_unused_refuses_a_source_with_queue_bindings(vhost: VHost) -> None:
    vhost.declare_exchange("ex6", "direct")
    declare_queue(vhost, "q")
    vhost.bind_queue("q", "ex6", "k", None, owner=OWNER)
    with pytest.raises(PreconditionFailedError) as info:
        vhost.delete_exchange("ex6", if_unused=True)
    assert_error(info, 406, "PRECONDITION_FAILED - exchange 'ex6' in vhost '/' in use")
    assert "ex6" in vhost.exchanges
    vhost.unbind_queue("q", "ex6", "k", None, owner=OWNER)
    vhost.delete_exchange("ex6", if_unused=True)
    assert "ex6" not in vhost.exchanges


def test_delete_if_unused_counts_only_bindings_where_it_is_the_source(
    vhost: VHost,
) -> None:
    vhost.declare_exchange("src", "fanout")
    vhost.declare_exchange("dst", "fanout")
    vhost.bind_exchange("dst", "src", "", None)
    with pytest.raises(PreconditionFailedError):
        vhost.delete_exchange("src", if_unused=True)
    vhost.delete_exchange("dst", if_unused=True)  # only a destination: unused
    assert "dst" not in vhost.exchanges
    assert not vhost.get_exchange("src").bindings


def test_deleting_an_exchange_removes_its_bindings(vhost: VHost) -> None:
    vhost.declare_exchange("x", "fanout")
    declare_queue(vhost, "q")
    vhost.bind_queue("q", "x", "", None, owner=OWNER)
    vhost.delete_exchange("x")
    vhost.declare_exchange("x", "fanout")
    assert publish(vhost, "x") == []


# -- queues ----------------------------------------------------------------------


def test_server_named_queue(vhost: VHost) -> None:
    first = declare_queue(vhost, "")
    second = declare_queue(vhost, "")
    for queue in (first, second):
        assert queue.name.startswith("amq.gen-")
        suffix = queue.name.removeprefix("amq.gen-")
        assert len(suffix) == 22
        assert set(suffix) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )
    assert first.name != second.name
    assert vhost.queues[first.name] is first


def test_passive_queue_declare(vhost: VHost) -> None:
    queue = declare_queue(vhost, "q7", durable=True)
    assert declare_queue(vhost, "q7", passive=True, auto_delete=True) is queue
    for name in ("nosuchq", "", "amq.foo"):
        with pytest.raises(NotFoundError) as info:
            declare_queue(vhost, name, passive=True)
        assert_error(info, 404, f"NOT_FOUND - no queue '{name}' in vhost '/'")


@pytest.mark.parametrize(
    ("first", "second", "detail"),
    [
        (
            {},
            {"durable": True},
            "inequivalent arg 'durable' for queue 'q7' in vhost '/': "
            "received 'true' but current is 'false'",
        ),
        (
            {"auto_delete": True},
            {},
            "inequivalent arg 'auto_delete' for queue 'q7' in vhost '/': "
            "received 'false' but current is 'true'",
        ),
        (
            {},
            {"arguments": {"x-message-ttl": 1000}},
            "inequivalent arg 'x-message-ttl' for queue 'q7' in vhost '/': "
            "received the value '1000' of type 'signedint' but current is none",
        ),
        (
            {"arguments": {"x-message-ttl": 1000}},
            {"arguments": {"x-message-ttl": 2000}},
            "inequivalent arg 'x-message-ttl' for queue 'q7' in vhost '/': "
            "received '2000' but current is '1000'",
        ),
        (
            {"arguments": {"x-message-ttl": 1000}},
            {},
            "inequivalent arg 'x-message-ttl' for queue 'q7' in vhost '/': "
            "received none but current is the value '1000' of type 'signedint'",
        ),
        (
            {},
            {"arguments": {"x-max-length": 5}},
            "inequivalent arg 'x-max-length' for queue 'q7' in vhost '/': "
            "received the value '5' of type 'signedint' but current is none",
        ),
    ],
)
def test_inequivalent_queue_redeclare_is_406(
    vhost: VHost, first: dict[str, Any], second: dict[str, Any], detail: str
) -> None:
    declare_queue(vhost, "q7", **first)
    with pytest.raises(PreconditionFailedError) as info:
        declare_queue(vhost, "q7", **second)
    assert_error(info, 406, f"PRECONDITION_FAILED - {detail}")


def test_unknown_queue_arguments_are_not_compared(vhost: VHost) -> None:
    queue = declare_queue(vhost, "q7", arguments={"x-foo": "a"})
    assert declare_queue(vhost, "q7", arguments={"x-foo": "b"}) is queue
    assert declare_queue(vhost, "q7") is queue


def test_exclusive_mismatch_is_405(vhost: VHost) -> None:
    declare_queue(vhost, "q7")
    with pytest.raises(ResourceLockedError) as info:
        declare_queue(vhost, "q7", exclusive=True)
    assert_error(info, 405, LOCKED.format("q7"))
    declare_queue(vhost, "qx", exclusive=True)
    with pytest.raises(ResourceLockedError):
        declare_queue(vhost, "qx")  # same owner, but not exclusive this time
    assert declare_queue(vhost, "qx", exclusive=True).exclusive


def test_exclusive_queues_are_never_durable(vhost: VHost) -> None:
    # RabbitMQ: Durable = DurableDeclare andalso not ExclusiveDeclare.
    queue = declare_queue(vhost, "qx", exclusive=True, durable=True)
    assert not queue.durable
    assert declare_queue(vhost, "qx", exclusive=True) is queue


@pytest.mark.parametrize("name", ["amq.foo", "amq.gen-foo"])
def test_reserved_queue_names_are_403(vhost: VHost, name: str) -> None:
    with pytest.raises(AccessRefusedError) as info:
        declare_queue(vhost, name)
    assert_error(
        info,
        403,
        f"ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'",
    )


def test_exclusive_queue_is_locked_to_other_owners(vhost: VHost) -> None:
    queue = declare_queue(vhost, "qx", exclusive=True)
    vhost.declare_exchange("x", "direct")
    locked = [
        lambda: vhost.declare_queue("qx", owner=OTHER),
        lambda: vhost.declare_queue("qx", owner=OTHER, exclusive=True),
        lambda: vhost.declare_queue("qx", owner=OTHER, passive=True),
        lambda: vhost.get_queue("qx", OTHER),
        lambda: vhost.bind_queue("qx", "x", "k", None, owner=OTHER),
        lambda: vhost.purge_queue("qx", owner=OTHER),
        lambda: vhost.delete_queue("qx", owner=OTHER),
    ]
    for operation in locked:
        with pytest.raises(ResourceLockedError) as info:
            operation()
        assert_error(info, 405, LOCKED.format("qx"))
    # Unbinding and publishing are not locked.
    vhost.unbind_queue("qx", "x", "k", None, owner=OTHER)
    vhost.bind_queue("qx", "x", "k", None, owner=OWNER)
    assert publish(vhost, "x", "k") == ["qx"]
    assert queue.message_count == 1
    # The owner may use it.
    assert vhost.get_queue("qx", OWNER) is queue
    assert vhost.purge_queue("qx", owner=OWNER) == 1


def test_owner_closed_removes_its_exclusive_queues_and_their_bindings(
    vhost: VHost,
) -> None:
    declare_queue(vhost, "mine", exclusive=True)
    declare_queue(vhost, "also-mine", exclusive=True)
    vhost.declare_queue("theirs", owner=OTHER, exclusive=True)
    declare_queue(vhost, "shared")
    vhost.declare_exchange("x", "fanout")
    vhost.declare_exchange("ad", "fanout", auto_delete=True)
    vhost.bind_queue("mine", "x", "", None, owner=OWNER)
    vhost.bind_queue("also-mine", "ad", "", None, owner=OWNER)
    vhost.owner_closed(OWNER)
    assert set(vhost.queues) == {"theirs", "shared"}
    assert publish(vhost, "x") == []
    assert "ad" not in vhost.exchanges  # its only binding went with the queue
    vhost.owner_closed(OWNER)  # nothing left to do: no error
    vhost.owner_closed(OTHER)
    assert set(vhost.queues) == {"shared"}


def test_delete_queue_rules_and_counts(vhost: VHost) -> None:
    sink = FakeSink()
    channel = Channel(sink, OWNER)
    queue = declare_queue(vhost, "qd")
    for _ in range(3):
        publish(vhost, "", "qd")
    with pytest.raises(PreconditionFailedError) as info:
        vhost.delete_queue("qd", owner=OWNER, if_empty=True)
    assert_error(info, 406, "PRECONDITION_FAILED - queue 'qd' in vhost '/' not empty")
    channel.start(channel.consume(queue, "c", no_ack=False, exclusive=False))
    with pytest.raises(PreconditionFailedError) as info:
        vhost.delete_queue("qd", owner=OWNER, if_unused=True)
    assert_error(info, 406, "PRECONDITION_FAILED - queue 'qd' in vhost '/' in use")
    # All three are now unacked: the queue counts as empty, and the count is 0.
    assert len(sink.deliveries) == 3
    assert vhost.delete_queue("qd", owner=OWNER, if_empty=True) == 0
    assert "qd" not in vhost.queues
    assert queue.deleted


def test_delete_queue_returns_the_ready_count(vhost: VHost) -> None:
    declare_queue(vhost, "q")
    for _ in range(4):
        publish(vhost, "", "q")
    assert vhost.delete_queue("q", owner=OWNER) == 4
    assert vhost.delete_queue("q", owner=OWNER) == 0  # missing: delete-ok, 0
    assert vhost.delete_queue("nosuchq", owner=OWNER, if_unused=True) == 0
    assert vhost.delete_queue("nosuchq", owner=OWNER, if_empty=True) == 0


def test_purge(vhost: VHost) -> None:
    queue = declare_queue(vhost, "q")
    for _ in range(5):
        publish(vhost, "", "q")
    assert vhost.purge_queue("q", owner=OWNER) == 5
    assert queue.message_count == 0
    assert vhost.purge_queue("q", owner=OWNER) == 0
    with pytest.raises(NotFoundError) as info:
        vhost.purge_queue("nosuchq", owner=OWNER)
    assert_error(info, 404, "NOT_FOUND - no queue 'nosuchq' in vhost '/'")


def test_declare_counts_ready_messages_and_consumers(vhost: VHost) -> None:
    queue = declare_queue(vhost, "q")
    for _ in range(4):
        publish(vhost, "", "q")
    again = declare_queue(vhost, "q")
    assert (again.message_count, again.consumer_count) == (4, 0)
    channel = Channel(FakeSink(), OWNER)
    channel.qos(1, False)
    channel.start(channel.consume(queue, "c", no_ack=False, exclusive=False))
    again = declare_queue(vhost, "q")
    assert (again.message_count, again.consumer_count) == (3, 1)


def test_deleting_a_queue_cancels_its_consumers(vhost: VHost) -> None:
    queue = declare_queue(vhost, "q11")
    sink = FakeSink()
    channel = Channel(sink, OTHER)
    channel.start(channel.consume(queue, "c11", no_ack=False, exclusive=False))
    assert vhost.delete_queue("q11", owner=OWNER) == 0
    assert sink.cancelled == ["c11"]
    assert "c11" not in channel.consumers
    channel.close()  # closing later must not touch the deleted queue
    assert "q11" not in vhost.queues


def test_auto_delete_queue_goes_with_its_last_consumer(vhost: VHost) -> None:
    queue = declare_queue(vhost, "qa", auto_delete=True)
    vhost.declare_exchange("x", "fanout")
    vhost.bind_queue("qa", "x", "", None, owner=OWNER)
    channel = Channel(FakeSink(), OWNER)
    channel.start(channel.consume(queue, "c1", no_ack=True, exclusive=False))
    channel.start(channel.consume(queue, "c2", no_ack=True, exclusive=False))
    assert channel.cancel("c1")
    assert "qa" in vhost.queues
    assert channel.cancel("c2")
    assert "qa" not in vhost.queues
    assert queue.deleted
    assert publish(vhost, "x") == []
    with pytest.raises(NotFoundError):
        declare_queue(vhost, "qa", passive=True)


def test_auto_delete_queue_goes_when_the_consumers_channel_closes(
    vhost: VHost,
) -> None:
    queue = declare_queue(vhost, "qa", auto_delete=True)
    channel = Channel(FakeSink(), OWNER)
    channel.start(channel.consume(queue, "c", no_ack=False, exclusive=False))
    channel.close()
    assert "qa" not in vhost.queues


def test_never_consumed_auto_delete_queue_stays(vhost: VHost) -> None:
    queue = declare_queue(vhost, "qa", auto_delete=True)
    publish(vhost, "", "qa")
    channel = Channel(FakeSink(), OWNER)
    assert channel.get(queue, no_ack=True) is not None
    channel.close()
    assert vhost.queues["qa"] is queue


# -- bindings and routing --------------------------------------------------------


def test_bind_missing_queue_or_exchange_is_404(vhost: VHost) -> None:
    vhost.declare_exchange("x", "direct")
    declare_queue(vhost, "q")
    cases = [
        ("nosuchq", "x", "NOT_FOUND - no queue 'nosuchq' in vhost '/'"),
        ("q", "nosuchex", "NOT_FOUND - no exchange 'nosuchex' in vhost '/'"),
        ("nosuchq", "nosuchex", "NOT_FOUND - no exchange 'nosuchex' in vhost '/'"),
    ]
    for queue_name, exchange_name, text in cases:
        with pytest.raises(NotFoundError) as info:
            vhost.bind_queue(queue_name, exchange_name, "k", None, owner=OWNER)
        assert_error(info, 404, text)


def test_unbind_of_anything_missing_succeeds(vhost: VHost) -> None:
    vhost.declare_exchange("x", "direct")
    declare_queue(vhost, "q")
    vhost.unbind_queue("q", "x", "not-bound", None, owner=OWNER)
    vhost.unbind_queue("nosuchq", "x", "k", None, owner=OWNER)
    vhost.unbind_queue("q", "nosuchex", "k", None, owner=OWNER)
    vhost.unbind_exchange("x", "nosuchsrc", "k", None)
    vhost.unbind_exchange("nosuchdst", "x", "k", None)
    vhost.unbind_exchange("x", "amq.direct", "not-bound", None)


def test_bind_exchange_missing_source_or_destination_is_404(vhost: VHost) -> None:
    vhost.declare_exchange("x", "direct")
    cases = [
        ("x", "nosuchsrc", "nosuchsrc"),
        ("nosuchdst", "x", "nosuchdst"),
        ("nosuchdst", "nosuchsrc", "nosuchsrc"),
    ]
    for destination, source, reported in cases:
        with pytest.raises(NotFoundError) as info:
            vhost.bind_exchange(destination, source, "k", None)
        assert_error(info, 404, f"NOT_FOUND - no exchange '{reported}' in vhost '/'")


def test_direct_routing_and_duplicate_bindings(vhost: VHost) -> None:
    vhost.declare_exchange("x", "direct")
    declare_queue(vhost, "q1")
    declare_queue(vhost, "q2")
    vhost.bind_queue("q1", "x", "k", None, owner=OWNER)
    vhost.bind_queue("q1", "x", "k", None, owner=OWNER)  # the same binding again
    vhost.bind_queue("q1", "x", "k", {"x-any": 1}, owner=OWNER)  # differs by args
    vhost.bind_queue("q2", "x", "k", None, owner=OWNER)
    vhost.bind_queue("q2", "x", "other", None, owner=OWNER)
    assert sorted(publish(vhost, "x", "k")) == ["q1", "q2"]
    assert publish(vhost, "x", "other") == ["q2"]
    assert publish(vhost, "x", "none") == []
    # One unbind removes the duplicate; the binding with arguments remains.
    vhost.unbind_queue("q1", "x", "k", None, owner=OWNER)
    assert sorted(publish(vhost, "x", "k")) == ["q1", "q2"]
    vhost.unbind_queue("q1", "x", "k", {"x-any": 1}, owner=OWNER)
    assert publish(vhost, "x", "k") == ["q2"]
    assert vhost.queues["q1"].message_count == 2


def test_default_exchange_routes_by_queue_name(vhost: VHost) -> None:
    declare_queue(vhost, "q")
    assert publish(vhost, "", "q") == ["q"]
    assert publish(vhost, "", "nosuchq") == []


def test_publish_target_checks(vhost: VHost) -> None:
    vhost.declare_exchange("ex6int", "fanout", internal=True)
    with pytest.raises(AccessRefusedError) as info:
        vhost.publish_target("ex6int")
    assert_error(
        info,
        403,
        "ACCESS_REFUSED - cannot publish to internal exchange 'ex6int' in vhost '/'",
    )
    with pytest.raises(NotFoundError) as info:
        vhost.publish_target("nosuchex")
    assert_error(info, 404, "NOT_FOUND - no exchange 'nosuchex' in vhost '/'")


def test_internal_exchange_is_reachable_through_an_e2e_binding(
    vhost: VHost,
) -> None:
    vhost.declare_exchange("front", "fanout")
    vhost.declare_exchange("inner", "fanout", internal=True)
    declare_queue(vhost, "q")
    vhost.bind_exchange("inner", "front", "", None)
    vhost.bind_queue("q", "inner", "", None, owner=OWNER)
    assert publish(vhost, "front") == ["q"]


def test_fanout_to_topic_chain(vhost: VHost) -> None:
    vhost.declare_exchange("fan", "fanout")
    vhost.declare_exchange("top", "topic")
    declare_queue(vhost, "stocks")
    declare_queue(vhost, "all")
    vhost.bind_exchange("top", "fan", "ignored", None)
    vhost.bind_queue("stocks", "top", "stock.#", None, owner=OWNER)
    vhost.bind_queue("all", "top", "#", None, owner=OWNER)
    assert sorted(publish(vhost, "fan", "stock.nyse.ibm")) == ["all", "stocks"]
    assert publish(vhost, "fan", "weather") == ["all"]
    vhost.unbind_exchange("top", "fan", "ignored", None)
    assert publish(vhost, "fan", "weather") == []


def test_e2e_routing_reaches_each_queue_once(vhost: VHost) -> None:
    # A diamond: a -> b -> q and a -> c -> q, plus a direct binding a -> q.
    for name in ("a", "b", "c"):
        vhost.declare_exchange(name, "fanout")
    queue = declare_queue(vhost, "q")
    vhost.bind_exchange("b", "a", "", None)
    vhost.bind_exchange("c", "a", "", None)
    vhost.bind_queue("q", "b", "", None, owner=OWNER)
    vhost.bind_queue("q", "c", "", None, owner=OWNER)
    vhost.bind_queue("q", "a", "", None, owner=OWNER)
    assert publish(vhost, "a") == ["q"]
    assert queue.message_count == 1


def test_e2e_cycles_terminate_and_count_each_queue_once(vhost: VHost) -> None:
    for name in ("a", "b", "c"):
        vhost.declare_exchange(name, "fanout")
    declare_queue(vhost, "qa")
    declare_queue(vhost, "qc")
    vhost.bind_exchange("b", "a", "", None)
    vhost.bind_exchange("c", "b", "", None)
    vhost.bind_exchange("a", "c", "", None)  # a -> b -> c -> a
    vhost.bind_exchange("a", "a", "", None)  # and a -> a
    vhost.bind_queue("qa", "a", "", None, owner=OWNER)
    vhost.bind_queue("qc", "c", "", None, owner=OWNER)
    for start in ("a", "b", "c"):
        assert sorted(publish(vhost, start)) == ["qa", "qc"]
    assert vhost.queues["qa"].message_count == 3
    assert vhost.queues["qc"].message_count == 3


def test_e2e_binding_to_an_exchange_that_routes_nowhere(vhost: VHost) -> None:
    vhost.declare_exchange("a", "fanout")
    vhost.declare_exchange("b", "direct")
    vhost.bind_exchange("b", "a", "", None)
    assert publish(vhost, "a", "k") == []


def test_deleting_a_destination_exchange_removes_the_e2e_binding(
    vhost: VHost,
) -> None:
    vhost.declare_exchange("a", "fanout")
    vhost.declare_exchange("b", "fanout")
    declare_queue(vhost, "q")
    vhost.bind_exchange("b", "a", "", None)
    vhost.bind_queue("q", "b", "", None, owner=OWNER)
    vhost.delete_exchange("b")
    vhost.declare_exchange("b", "fanout")
    vhost.bind_queue("q", "b", "", None, owner=OWNER)
    assert publish(vhost, "a") == []
    assert not vhost.get_exchange("a").bindings


def test_headers_exchange_in_an_e2e_chain(vhost: VHost) -> None:
    vhost.declare_exchange("fan", "fanout")
    vhost.declare_exchange("hdr", "headers")
    declare_queue(vhost, "red")
    vhost.bind_exchange("hdr", "fan", "", None)
    vhost.bind_queue("red", "hdr", "", {"colour": "red"}, owner=OWNER)
    assert publish(vhost, "fan", headers={"colour": "red"}) == ["red"]
    assert publish(vhost, "fan", headers={"colour": "blue"}) == []
    assert publish(vhost, "fan") == []


def test_headers_binding_with_invalid_x_match_is_406(vhost: VHost) -> None:
    declare_queue(vhost, "q")
    with pytest.raises(PreconditionFailedError) as info:
        vhost.bind_queue("q", "amq.headers", "", {"x-match": "foo"}, owner=OWNER)
    assert_error(
        info,
        406,
        'PRECONDITION_FAILED - Invalid x-match field value <<"foo">>; '
        "expected all, any, all-with-x, or any-with-x",
    )
    assert not vhost.get_exchange("amq.headers").bindings


# -- alternate exchanges ---------------------------------------------------------


def test_alternate_exchange_takes_what_the_exchange_cannot_route(
    vhost: VHost,
) -> None:
    vhost.declare_exchange("ae", "fanout")
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "ae"})
    declare_queue(vhost, "routed")
    declare_queue(vhost, "unrouted")
    vhost.bind_queue("routed", "x", "k", None, owner=OWNER)
    vhost.bind_queue("unrouted", "ae", "", None, owner=OWNER)
    assert publish(vhost, "x", "k") == ["routed"]
    assert publish(vhost, "x", "other") == ["unrouted"]


def test_missing_alternate_exchange_routes_nowhere(vhost: VHost) -> None:
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "gone"})
    assert publish(vhost, "x", "k") == []
    # Created later, it is used from then on.
    vhost.declare_exchange("gone", "fanout")
    declare_queue(vhost, "q")
    vhost.bind_queue("q", "gone", "", None, owner=OWNER)
    assert publish(vhost, "x", "k") == ["q"]


def test_alternate_exchange_chain(vhost: VHost) -> None:
    vhost.declare_exchange("z", "fanout")
    vhost.declare_exchange("y", "direct", arguments={"alternate-exchange": "z"})
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "y"})
    declare_queue(vhost, "qy")
    declare_queue(vhost, "qz")
    vhost.bind_queue("qy", "y", "for-y", None, owner=OWNER)
    vhost.bind_queue("qz", "z", "", None, owner=OWNER)
    assert publish(vhost, "x", "for-y") == ["qy"]
    assert publish(vhost, "x", "other") == ["qz"]


def test_alternate_exchange_cycle_terminates(vhost: VHost) -> None:
    vhost.declare_exchange("x", "direct", arguments={"alternate-exchange": "y"})
    vhost.declare_exchange("y", "direct", arguments={"alternate-exchange": "x"})
    vhost.declare_exchange("self", "direct", arguments={"alternate-exchange": "self"})
    declare_queue(vhost, "q")
    vhost.bind_queue("q", "y", "k", None, owner=OWNER)
    assert publish(vhost, "x", "other") == []
    assert publish(vhost, "self", "k") == []
    assert publish(vhost, "x", "k") == ["q"]  # through y, the alternate


def test_alternate_exchange_is_not_used_when_an_e2e_destination_matched(
    vhost: VHost,
) -> None:
    # RabbitMQ consults the alternate only when the exchange itself matched
    # no destination; an exchange destination that routes nowhere counts.
    vhost.declare_exchange("ae", "fanout")
    vhost.declare_exchange("x", "fanout", arguments={"alternate-exchange": "ae"})
    vhost.declare_exchange("dead-end", "direct")
    declare_queue(vhost, "q")
    vhost.bind_queue("q", "ae", "", None, owner=OWNER)
    vhost.bind_exchange("dead-end", "x", "", None)
    assert publish(vhost, "x", "k") == []


def test_alternate_exchange_of_an_e2e_destination(vhost: VHost) -> None:
    vhost.declare_exchange("ae", "fanout")
    vhost.declare_exchange("a", "fanout")
    vhost.declare_exchange("b", "direct", arguments={"alternate-exchange": "ae"})
    declare_queue(vhost, "q")
    vhost.bind_exchange("b", "a", "", None)
    vhost.bind_queue("q", "ae", "", None, owner=OWNER)
    assert publish(vhost, "a", "k") == ["q"]


# -- auto-delete exchanges -------------------------------------------------------


def test_auto_delete_exchange_goes_with_its_last_binding(vhost: VHost) -> None:
    vhost.declare_exchange("ad", "direct", auto_delete=True)
    declare_queue(vhost, "q")
    vhost.bind_queue("q", "ad", "k1", None, owner=OWNER)
    vhost.bind_queue("q", "ad", "k2", None, owner=OWNER)
    vhost.unbind_queue("q", "ad", "k1", None, owner=OWNER)
    assert "ad" in vhost.exchanges
    vhost.unbind_queue("q", "ad", "k2", None, owner=OWNER)
    assert "ad" not in vhost.exchanges
    with pytest.raises(NotFoundError):
        vhost.declare_exchange("ad", "direct", passive=True)


def test_unbound_auto_delete_exchange_stays(vhost: VHost) -> None:
    vhost.declare_exchange("ad", "direct", auto_delete=True)
    vhost.unbind_queue("q", "ad", "k", None, owner=OWNER)  # nothing to remove
    assert "ad" in vhost.exchanges


def test_auto_delete_exchange_goes_when_its_queue_is_deleted(vhost: VHost) -> None:
    vhost.declare_exchange("ad", "fanout", auto_delete=True)
    declare_queue(vhost, "q")
    vhost.bind_queue("q", "ad", "", None, owner=OWNER)
    vhost.delete_queue("q", owner=OWNER)
    assert "ad" not in vhost.exchanges


def test_auto_delete_cascades_through_e2e_bindings(vhost: VHost) -> None:
    # top -> mid -> q, both auto-delete: removing q's binding empties mid,
    # whose deletion removes top's only binding.
    vhost.declare_exchange("top", "fanout", auto_delete=True)
    vhost.declare_exchange("mid", "fanout", auto_delete=True)
    declare_queue(vhost, "q")
    vhost.bind_exchange("mid", "top", "", None)
    vhost.bind_queue("q", "mid", "", None, owner=OWNER)
    vhost.unbind_queue("q", "mid", "", None, owner=OWNER)
    assert "mid" not in vhost.exchanges
    assert "top" not in vhost.exchanges


def test_auto_delete_exchange_that_is_only_a_destination_stays(
    vhost: VHost,
) -> None:
    vhost.declare_exchange("src", "fanout")
    vhost.declare_exchange("ad", "fanout", auto_delete=True)
    vhost.bind_exchange("ad", "src", "", None)
    vhost.unbind_exchange("ad", "src", "", None)
    assert "ad" in vhost.exchanges
    vhost.bind_exchange("src", "ad", "", None)
    vhost.unbind_exchange("src", "ad", "", None)
    assert "ad" not in vhost.exchanges


def test_delivery_to_a_consumer_through_e2e(vhost: VHost) -> None:
    vhost.declare_exchange("fan", "fanout")
    vhost.declare_exchange("top", "topic")
    queue = declare_queue(vhost, "q")
    vhost.bind_exchange("top", "fan", "", None)
    vhost.bind_queue("q", "top", "a.*", None, owner=OWNER)
    sink = FakeSink()
    channel = Channel(sink, OWNER)
    channel.start(channel.consume(queue, "ctag", no_ack=False, exclusive=False))
    publish(vhost, "fan", "a.b")
    publish(vhost, "fan", "b.a")
    assert [
        (tag, dtag, redelivered) for tag, dtag, redelivered, _ in sink.deliveries
    ] == [("ctag", 1, False)]
    delivered = sink.deliveries[0][3]
    assert (delivered.exchange, delivered.routing_key) == ("fan", "a.b")
