"""Users, permissions and limits over AMQP, with RabbitMQ 3.10's exact closes.

The expected codes and texts are the ones a RabbitMQ 3.10.8 node answered
(recorded in the oracle transcript of issue 5). A permission failure closes
the channel with 403 and leaves the connection usable; vhost access and the
connection and channel limits close the connection with 530; deleting a
vhost or a user closes its connections with 320.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.exceptions
import attrs
import pika
import pika.exceptions
import pytest
from helpers.amqp_client import AmqpClient
from pamqp import commands
from pika.adapters.blocking_connection import BlockingChannel

from amqpy.broker.broker import Broker
from amqpy.server.embedded import EmbeddedBroker

WAIT_S = 5.0
ALL = (".*", ".*", ".*")
NONE = ("^$", "^$", "^$")
LOGIN_REFUSED = (
    "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
    "For details see the broker logfile."
)
DEFAULT_EXCHANGE = "ACCESS_REFUSED - operation not permitted on the default exchange"
GENERATED = r"amq\.gen-[\w-]{22}"


def refused(kind: str, name: str, user: str = "bob", vhost: str = "/") -> str:
    return (
        f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '{vhost}' "
        f"refused for user '{user}'"
    )


def on_broker(broker: EmbeddedBroker, change: Callable[[Broker], object]) -> Any:
    """Run `change` on the broker's model, in its thread."""
    return broker.call(lambda: change(broker.server.broker))


def add_user(
    broker: EmbeddedBroker,
    name: str,
    permissions: tuple[str, str, str] | None = ALL,
    vhost: str = "/",
    **options: Any,
) -> None:
    """A user whose password is their name, with `permissions` on `vhost`."""
    on_broker(broker, lambda model: model.put_user(name, password=name, **options))
    if permissions is not None:
        set_permissions(broker, name, permissions, vhost)


def set_permissions(
    broker: EmbeddedBroker,
    user: str,
    permissions: tuple[str, str, str],
    vhost: str = "/",
) -> None:
    on_broker(broker, lambda model: model.set_permissions(user, vhost, *permissions))


def parameters(
    broker: EmbeddedBroker, user: str, vhost: str = "/", password: str | None = None
) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        "127.0.0.1",
        broker.port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, user if password is None else password),
        socket_timeout=WAIT_S,
        blocked_connection_timeout=WAIT_S,
        connection_attempts=1,
    )


@pytest.fixture
def login(
    broker: EmbeddedBroker,
) -> Iterator[Callable[..., pika.BlockingConnection]]:
    """pika connections as a given user (password = name), closed after."""
    opened: list[pika.BlockingConnection] = []

    def open_as(
        user: str, vhost: str = "/", password: str | None = None
    ) -> pika.BlockingConnection:
        connection = pika.BlockingConnection(parameters(broker, user, vhost, password))
        opened.append(connection)
        return connection

    yield open_as
    for connection in opened:
        if connection.is_open:
            connection.close()


def open_refusal(
    broker: EmbeddedBroker, user: str, vhost: str = "/", password: str | None = None
) -> tuple[int, str, int, int]:
    """The connection.close the broker answers a handshake with."""
    with AmqpClient.connect(broker.port) as client:
        frame = client.handshake(
            username=user,
            password=user if password is None else password,
            vhost=vhost,
        )
        assert isinstance(frame.value, commands.Connection.Close), frame
        close = frame.value
        return close.reply_code, close.reply_text, close.class_id, close.method_id


def assert_connection_closed(
    connection: pika.BlockingConnection, code: int, text: str
) -> None:
    """The broker closes `connection` with code and text, within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as error:
        while time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.05)
    assert (error.value.reply_code, error.value.reply_text) == (code, text)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def publish(channel: BlockingChannel, exchange: str, routing_key: str = "q") -> None:
    """A confirmed publish: a refusal surfaces here, not at the next call."""
    channel.confirm_delivery()
    channel.basic_publish(exchange, routing_key, b"x")


def rabbitmq_hash(password: str, algorithm: Callable[[bytes], Any]) -> str:
    """base64(salt + H(salt + UTF-8 password)), as RabbitMQ computes it."""
    salt = os.urandom(4)
    return base64.b64encode(
        salt + algorithm(salt + password.encode("utf-8")).digest()
    ).decode("ascii")


# -- the per-operation matrix ----------------------------------------------------


Operation = Callable[[BlockingChannel], object]


@attrs.frozen
class Case:
    """bob with `permissions` on / does `operation` on a fresh channel, and
    gets `close` (code, text or regex), or nothing when None."""

    label: str
    permissions: tuple[str, str, str]
    operation: Operation
    close: tuple[int, str | re.Pattern[str]] | None = None


def x_declare(
    name: str, *, alternate: str | None = None, type_name: str = "direct"
) -> Operation:
    arguments = None if alternate is None else {"alternate-exchange": alternate}
    return lambda channel: channel.exchange_declare(
        name, type_name, arguments=arguments
    )


def x_passive(name: str) -> Operation:
    return lambda channel: channel.exchange_declare(name, passive=True)


def x_delete(name: str) -> Operation:
    return lambda channel: channel.exchange_delete(name)


def x_bind(destination: str, source: str) -> Operation:
    return lambda channel: channel.exchange_bind(destination, source)


def x_unbind(destination: str, source: str) -> Operation:
    return lambda channel: channel.exchange_unbind(destination, source)


def q_declare(name: str, *, dlx: str | None = None, **arguments: Any) -> Operation:
    if dlx is not None:
        arguments["x-dead-letter-exchange"] = dlx
    return lambda channel: channel.queue_declare(name, arguments=arguments or None)


def q_passive(name: str) -> Operation:
    return lambda channel: channel.queue_declare(name, passive=True)


def q_delete(name: str) -> Operation:
    return lambda channel: channel.queue_delete(name)


def q_purge(name: str) -> Operation:
    return lambda channel: channel.queue_purge(name)


def q_bind(queue: str, exchange: str) -> Operation:
    return lambda channel: channel.queue_bind(queue, exchange)


def q_unbind(queue: str, exchange: str) -> Operation:
    return lambda channel: channel.queue_unbind(queue, exchange)


def pub(exchange: str) -> Operation:
    return lambda channel: publish(channel, exchange)


def get(queue: str) -> Operation:
    return lambda channel: channel.basic_get(queue)


def consume(queue: str) -> Operation:
    return lambda channel: channel.basic_consume(queue, print)


def expect_generated_name(channel: BlockingChannel) -> None:
    name = channel.queue_declare("").method.queue
    assert re.fullmatch(GENERATED, name), name


def x_refused(name: str) -> tuple[int, str]:
    return 403, refused("exchange", name)


def q_refused(name: str) -> tuple[int, str]:
    return 403, refused("queue", name)


def not_found(kind: str, name: str) -> tuple[int, str]:
    return 404, f"NOT_FOUND - no {kind} '{name}' in vhost '/'"


GENERATED_REFUSED = (
    403,
    re.compile(
        re.escape("ACCESS_REFUSED - access to queue '")
        + GENERATED
        + re.escape("' in vhost '/' refused for user 'bob'")
    ),
)
DEFAULT_REFUSED = (403, DEFAULT_EXCHANGE)
CONF_ONLY = (".*", "^$", "^$")
NO_CONF = ("^$", ".*", ".*")
NO_WRITE = (".*", "^$", ".*")
NO_READ = (".*", ".*", "^$")
EMPTY = ("", "", "")
DEFAULT_ONLY = ("^$", "^amq\\.default$", "^$")
READ_Q = ("^$", "^$", "^q$")

CASES = [
    # exchange.declare: the default exchange rule, configure, the reserved
    # prefix; with an alternate exchange also read on the exchange, then
    # write on the alternate (which need not exist).
    Case("x.declare no conf", NO_CONF, x_declare("bx1"), x_refused("bx1")),
    Case("x.declare existing no conf", NO_CONF, x_declare("ex"), x_refused("ex")),
    Case(
        "x.declare inequivalent no conf",
        NONE,
        x_declare("ex", type_name="topic"),
        x_refused("ex"),
    ),
    Case("x.declare passive no perms", NONE, x_passive("ex")),
    Case(
        "x.declare passive missing",
        NONE,
        x_passive("nope"),
        not_found("exchange", "nope"),
    ),
    Case(
        "x.declare AE conf only",
        CONF_ONLY,
        x_declare("bx2", alternate="ae"),
        x_refused("bx2"),
    ),
    Case(
        "x.declare AE no read",
        NO_READ,
        x_declare("bx3", alternate="ae"),
        x_refused("bx3"),
    ),
    Case(
        "x.declare AE no write",
        NO_WRITE,
        x_declare("bx4", alternate="ae"),
        x_refused("ae"),
    ),
    Case(
        "x.declare AE exact perms",
        (".*", "^ae$", "^bx5$"),
        x_declare("bx5", alternate="ae"),
    ),
    Case(
        "x.declare AE swapped perms",
        (".*", "^bx6$", "^ae$"),
        x_declare("bx6", alternate="ae"),
        x_refused("bx6"),
    ),
    Case(
        "x.declare AE missing no write",
        NO_WRITE,
        x_declare("bx7", alternate="nope"),
        x_refused("nope"),
    ),
    Case("x.declare default", NONE, x_declare(""), DEFAULT_REFUSED),
    Case("x.declare amq. no conf", NONE, x_declare("amq.foo"), x_refused("amq.foo")),
    Case(
        "x.declare amq. with conf",
        ALL,
        x_declare("amq.foo"),
        (
            403,
            "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
        ),
    ),
    # exchange.delete: configure, before existence.
    Case("x.delete no conf", NO_CONF, x_delete("exd"), x_refused("exd")),
    Case("x.delete missing no conf", NO_CONF, x_delete("nope"), x_refused("nope")),
    Case("x.delete missing with conf", ALL, x_delete("nope")),
    Case("x.delete default", NONE, x_delete(""), DEFAULT_REFUSED),
    Case(
        "x.delete system",
        ALL,
        x_delete("amq.direct"),
        (
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' "
            "not allowed",
        ),
    ),
    # exchange.bind/unbind: write on the destination, then read on the
    # source, both before existence.
    Case("x.bind no write", NO_WRITE, x_bind("ex", "ex2"), x_refused("ex")),
    Case("x.bind no read", NO_READ, x_bind("ex", "ex2"), x_refused("ex2")),
    Case("x.bind none", NONE, x_bind("ex", "ex2"), x_refused("ex")),
    Case("x.bind exact perms", ("^$", "^ex$", "^ex2$"), x_bind("ex", "ex2")),
    Case(
        "x.bind swapped perms",
        ("^$", "^ex2$", "^ex$"),
        x_bind("ex", "ex2"),
        x_refused("ex"),
    ),
    Case("x.bind missing source no perms", NONE, x_bind("ex", "nope"), x_refused("ex")),
    Case(
        "x.bind missing source",
        ALL,
        x_bind("ex", "nope"),
        not_found("exchange", "nope"),
    ),
    Case("x.unbind no write", NO_WRITE, x_unbind("ex", "ex2"), x_refused("ex")),
    Case("x.unbind no read", NO_READ, x_unbind("ex", "ex2"), x_refused("ex2")),
    Case("x.unbind none", NONE, x_unbind("ex", "ex2"), x_refused("ex")),
    # queue.declare: the reserved prefix, then configure (on the generated
    # name for a server-named queue); for a new queue with a dead-letter
    # exchange also read on the queue, then write on the DLX ("" is checked
    # as amq.default), and only then the arguments.
    Case("q.declare no conf", NO_CONF, q_declare("bq1"), q_refused("bq1")),
    Case("q.declare server-named no conf", NO_CONF, q_declare(""), GENERATED_REFUSED),
    Case(
        "q.declare server-named empty conf",
        ("", ".*", ".*"),
        q_declare(""),
        GENERATED_REFUSED,
    ),
    Case(
        "q.declare server-named amq.gen conf",
        ("^amq\\.gen", "^$", "^$"),
        expect_generated_name,
    ),
    Case("q.declare passive no perms", NONE, q_passive("q")),
    Case(
        "q.declare passive missing", NONE, q_passive("nope"), not_found("queue", "nope")
    ),
    Case("q.declare existing no conf", NO_CONF, q_declare("q"), q_refused("q")),
    Case(
        "q.declare inequivalent no conf",
        NONE,
        q_declare("q", **{"x-max-length": 1}),
        q_refused("q"),
    ),
    Case(
        "q.declare DLX conf only",
        CONF_ONLY,
        q_declare("bq2", dlx="dlx"),
        q_refused("bq2"),
    ),
    Case(
        "q.declare DLX no read", NO_READ, q_declare("bq3", dlx="dlx"), q_refused("bq3")
    ),
    Case(
        "q.declare DLX no write",
        NO_WRITE,
        q_declare("bq4", dlx="dlx"),
        x_refused("dlx"),
    ),
    Case(
        "q.declare DLX exact perms",
        (".*", "^dlx$", "^bq5$"),
        q_declare("bq5", dlx="dlx"),
    ),
    Case(
        "q.declare DLX swapped perms",
        (".*", "^bq6$", "^dlx$"),
        q_declare("bq6", dlx="dlx"),
        q_refused("bq6"),
    ),
    Case(
        "q.declare DLX default",
        NO_WRITE,
        q_declare("bq7", dlx=""),
        x_refused("amq.default"),
    ),
    Case(
        "q.declare DLX missing",
        NO_WRITE,
        q_declare("bq8", dlx="nope"),
        x_refused("nope"),
    ),
    Case(
        "q.declare DLX server-named",
        (".*", "^dlx$", "^$"),
        q_declare("", dlx="dlx"),
        GENERATED_REFUSED,
    ),
    Case(
        "q.declare DLX no write, invalid argument",
        NO_WRITE,
        q_declare("bq10", dlx="dlx", **{"x-max-length": -1}),
        x_refused("dlx"),
    ),
    Case(
        "q.declare existing, invalid argument",
        ALL,
        q_declare("q", **{"x-max-length": -1}),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in "
            "vhost '/': received the value '-1' of type 'signedint' but current is "
            "none",
        ),
    ),
    Case(
        "q.declare DL routing key without DLX",
        CONF_ONLY,
        q_declare("bq9", **{"x-dead-letter-routing-key": "k"}),
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue "
            "'bq9' in vhost '/': routing_key_but_no_dlx_defined",
        ),
    ),
    Case(
        "q.declare amq. no perms",
        NONE,
        q_declare("amq.foo"),
        (403, "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'"),
    ),
    # queue.delete: configure, before existence; queue.purge: read only.
    Case("q.delete no conf", NO_CONF, q_delete("qd"), q_refused("qd")),
    Case("q.delete missing no conf", NO_CONF, q_delete("nope"), q_refused("nope")),
    Case("q.delete missing", ALL, q_delete("nope")),
    Case("q.purge no read", NO_READ, q_purge("qp"), q_refused("qp")),
    Case("q.purge read only", ("^$", "^$", ".*"), q_purge("qp")),
    Case("q.purge missing no read", NO_READ, q_purge("nope"), q_refused("nope")),
    # queue.bind/unbind: write on the queue, the default exchange rule, then
    # read on the exchange.
    Case("q.bind no write", NO_WRITE, q_bind("q", "ex"), q_refused("q")),
    Case("q.bind no read", NO_READ, q_bind("q", "ex"), x_refused("ex")),
    Case("q.bind none", NONE, q_bind("q", "ex"), q_refused("q")),
    Case("q.bind exact perms", ("^$", "^q$", "^ex$"), q_bind("q", "ex")),
    Case(
        "q.bind swapped perms", ("^$", "^ex$", "^q$"), q_bind("q", "ex"), q_refused("q")
    ),
    Case(
        "q.bind default no read", ("^$", ".*", "^$"), q_bind("q", ""), DEFAULT_REFUSED
    ),
    Case("q.bind default all", ALL, q_bind("q", ""), DEFAULT_REFUSED),
    Case("q.bind missing queue none", NONE, q_bind("nope", "ex"), q_refused("nope")),
    Case("q.unbind no write", NO_WRITE, q_unbind("q2", "ex"), q_refused("q2")),
    Case("q.unbind no read", NO_READ, q_unbind("q2", "ex"), x_refused("ex")),
    Case("q.unbind none", NONE, q_unbind("q2", "ex"), q_refused("q2")),
    # basic.publish: write on the exchange, before existence; the default
    # exchange is matched and named as amq.default.
    Case("publish no write", NO_WRITE, pub("ex"), x_refused("ex")),
    Case("publish default no write", NO_WRITE, pub(""), x_refused("amq.default")),
    Case(
        "publish default empty write",
        (".*", "", ".*"),
        pub(""),
        x_refused("amq.default"),
    ),
    Case("publish default amq.default write", DEFAULT_ONLY, pub("")),
    Case("publish ex amq.default write", DEFAULT_ONLY, pub("ex"), x_refused("ex")),
    Case("publish missing no write", NO_WRITE, pub("nope"), x_refused("nope")),
    Case("publish missing", ALL, pub("nope"), not_found("exchange", "nope")),
    Case(
        "publish amq.default by name",
        ALL,
        pub("amq.default"),
        not_found("exchange", "amq.default"),
    ),
    Case("publish amq.direct", ("^$", "^amq\\.", "^$"), pub("amq.direct")),
    Case("publish default all", ALL, pub("")),
    # basic.get and basic.consume: read on the queue, before existence.
    Case("get no read", NO_READ, get("q"), q_refused("q")),
    Case("get read q only", READ_Q, get("q")),
    Case("get missing no read", NO_READ, get("nope"), q_refused("nope")),
    Case("consume no read", NO_READ, consume("q"), q_refused("q")),
    Case("consume read q only", READ_Q, consume("q")),
    Case("consume missing no read", NO_READ, consume("nope"), q_refused("nope")),
    # Regexes: "" is "^$"; unanchored patterns match anywhere in the name.
    Case("regex empty", ("", ".*", ".*"), q_declare("bqe1"), q_refused("bqe1")),
    Case("regex .*", ALL, q_declare("bqe2")),
    Case("regex ^$", NO_CONF, q_declare("bqe3"), q_refused("bqe3")),
    Case("regex unanchored", ("bqe", ".*", ".*"), q_declare("xbqe4x")),
    Case("all empty: passive declares", EMPTY, q_passive("q")),
    Case("all empty: publish default", EMPTY, pub(""), x_refused("amq.default")),
]


@pytest.fixture(scope="module")
def shared() -> Iterator[EmbeddedBroker]:
    """One broker for the matrix, with the oracle's objects made by guest."""
    with EmbeddedBroker() as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        for name in ("ex", "ex2", "dlx", "ae", "exd"):
            channel.exchange_declare(name, "direct")
        for name in ("q", "q2", "qd", "qp"):
            channel.queue_declare(name)
        channel.queue_bind("q2", "ex")
        channel.exchange_bind("ex", "ex2")
        connection.close()
        add_user(broker, "bob", None)
        yield broker


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_permission_matrix(shared: EmbeddedBroker, case: Case) -> None:
    set_permissions(shared, "bob", case.permissions)
    connection = pika.BlockingConnection(parameters(shared, "bob"))
    try:
        channel = connection.channel()
        if case.close is None:
            case.operation(channel)
            return
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            case.operation(channel)
        code, text = case.close
        assert error.value.reply_code == code
        if isinstance(text, re.Pattern):
            assert text.fullmatch(error.value.reply_text), error.value.reply_text
        else:
            assert error.value.reply_text == text
        # Only the channel was closed: the connection serves a new one.
        assert connection.is_open
        connection.channel().queue_declare("q", passive=True)
    finally:
        connection.close()


def test_refusals_change_nothing(shared: EmbeddedBroker) -> None:
    """What a refused user tried to make, delete or unbind is as it was."""
    set_permissions(shared, "bob", NONE)
    connection = pika.BlockingConnection(parameters(shared, "bob"))
    try:
        for operation in (
            x_declare("never_x"),
            q_declare("never_q"),
            q_delete("qd"),
            x_delete("exd"),
            q_unbind("q2", "ex"),
        ):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                operation(connection.channel())
    finally:
        connection.close()

    def state(model: Broker) -> tuple[set[str], set[str], bool]:
        vhost = model.vhosts["/"]
        bound = any(
            getattr(destination, "name", None) == "q2"
            for destination in vhost.exchanges["ex"].bindings
        )
        return set(vhost.exchanges), set(vhost.queues), bound

    exchanges, queues, bound = on_broker(shared, state)
    assert "never_x" not in exchanges and "exd" in exchanges
    assert "never_q" not in queues and "qd" in queues
    assert bound


# -- permission changes on live connections --------------------------------------


def test_revoked_permission_is_seen_by_a_new_channel(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    """RabbitMQ caches a channel's last 12 passed checks and drops them after
    about a second idle, so an open channel may use a revoked permission a
    little longer; a new channel is always checked afresh. amqpy empties the
    caches when permissions change, so the open channel sees it too."""
    add_user(broker, "bob")
    connection = login("bob")
    first = connection.channel()
    publish(first, "amq.direct")
    first.queue_declare("cq")

    set_permissions(broker, "bob", NONE)
    second = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        publish(second, "amq.direct")
    assert (error.value.reply_code, error.value.reply_text) == (
        403,
        refused("exchange", "amq.direct"),
    )
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        first.queue_declare("cq")
    assert error.value.reply_text == refused("queue", "cq")
    assert connection.is_open

    # Granted again: a new channel may.
    set_permissions(broker, "bob", ALL)
    publish(connection.channel(), "amq.direct")


def test_cleared_permissions_keep_the_connection_open(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    add_user(broker, "erin")
    connection = login("erin")
    connection.channel().queue_declare("eq1")
    on_broker(broker, lambda model: model.clear_permissions("erin", "/"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        connection.channel().queue_declare("eq3")
    assert (error.value.reply_code, error.value.reply_text) == (
        403,
        refused("queue", "eq3", "erin"),
    )
    assert connection.is_open
    # ...but a new connection is refused the vhost.
    assert open_refusal(broker, "erin") == (
        530,
        "NOT_ALLOWED - access to vhost '/' refused for user 'erin'",
        10,
        40,
    )


# -- vhost access at connection.open ---------------------------------------------


def test_vhost_access_is_checked_at_open(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    on_broker(broker, lambda model: model.add_vhost("v2"))
    add_user(broker, "carol", ALL, vhost="v2")  # permissions elsewhere only
    add_user(broker, "dave", None)  # no permissions anywhere
    for user in ("carol", "dave"):
        assert open_refusal(broker, user) == (
            530,
            f"NOT_ALLOWED - access to vhost '/' refused for user '{user}'",
            10,
            40,
        )
    login("carol", "v2").channel().queue_declare("carols")
    for user in ("guest", "carol"):
        assert open_refusal(broker, user, "nov")[:2] == (
            530,
            "NOT_ALLOWED - vhost nov not found",
        )
    for user, password in (("carol", "wrong"), ("nobody", "nobody")):
        assert open_refusal(broker, user, "v2", password)[:2] == (403, LOGIN_REFUSED)

    # pika reports the refusal as a probable access denial.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as error:
        login("dave")
    assert "NOT_ALLOWED - access to vhost '/' refused for user 'dave'" in str(
        error.value
    )

    # An entry with all-empty regexes is enough to connect.
    set_permissions(broker, "dave", EMPTY)
    channel = login("dave").channel()
    channel.exchange_declare("amq.direct", passive=True)


# -- limits ----------------------------------------------------------------------


def test_vhost_connection_limit(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    on_broker(broker, lambda model: model.add_vhost("lim"))
    add_user(broker, "bob")
    set_permissions(broker, "bob", ALL, "lim")
    set_permissions(broker, "guest", ALL, "lim")
    add_user(broker, "nope", None)
    on_broker(
        broker, lambda model: model.set_vhost_limits("lim", {"max-connections": 1})
    )
    first = login("bob", "lim")
    for user in ("bob", "guest", "nope"):
        # The limit comes before the permission check.
        assert open_refusal(broker, user, "lim") == (
            530,
            f"NOT_ALLOWED - access to vhost 'lim' refused for user '{user}': "
            "connection limit (1) is reached",
            10,
            40,
        )
    login("bob").channel()  # other vhosts are not limited
    first.close()
    # The slot is free once the broker has seen the close.
    wait_until(
        lambda: on_broker(broker, lambda _: broker.server.vhost_connections["lim"]) == 0
    )
    login("bob", "lim").channel()

    on_broker(broker, lambda model: model.set_vhost_limits("/", {"max-connections": 0}))
    assert open_refusal(broker, "guest")[1] == (
        "NOT_ALLOWED - access to vhost '/' refused for user 'guest': "
        "connection limit (0) is reached"
    )


def test_vhost_queue_limit(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    on_broker(broker, lambda model: model.add_vhost("lim"))
    add_user(broker, "bob", ALL, vhost="lim")
    on_broker(broker, lambda model: model.set_vhost_limits("lim", {"max-queues": 1}))
    connection = login("bob", "lim")
    channel = connection.channel()
    channel.queue_declare("lq1")
    channel.queue_declare("lq1")  # an existing queue may be redeclared
    channel.queue_declare("lq1", passive=True)

    def limit_text(name: str) -> str:
        return (
            f"PRECONDITION_FAILED - cannot declare queue '{name}': "
            "queue limit in vhost 'lim' (1) is reached"
        )

    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        channel.queue_declare("lq2")
    assert (error.value.reply_code, error.value.reply_text) == (406, limit_text("lq2"))
    for exclusive in (False, True):
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            connection.channel().queue_declare("", exclusive=exclusive)
        # The text names the generated name.
        pattern = re.escape(limit_text("@")).replace("@", GENERATED)
        assert re.fullmatch(pattern, error.value.reply_text), error.value.reply_text
    # The limit comes after the permission check, before argument checks.
    set_permissions(broker, "bob", NO_CONF, "lim")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        connection.channel().queue_declare("zz")
    assert error.value.reply_text == refused("queue", "zz", vhost="lim")
    set_permissions(broker, "bob", ALL, "lim")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        connection.channel().queue_declare("lq3", arguments={"x-max-length": -1})
    assert error.value.reply_text == limit_text("lq3")
    assert on_broker(broker, lambda model: set(model.vhosts["lim"].queues)) == {"lq1"}


def test_user_connection_limit(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    on_broker(broker, lambda model: model.add_vhost("lim"))
    add_user(broker, "bob", limits={"max-connections": 1})
    set_permissions(broker, "bob", ALL, "lim")
    login("bob").channel()
    text = (
        "NOT_ALLOWED - connection refused for user 'bob': "
        "user connection limit (1) is reached"
    )
    # Counted across vhosts.
    for vhost in ("/", "lim"):
        assert open_refusal(broker, "bob", vhost) == (530, text, 10, 40)
    login("guest").channel()  # other users are not limited

    on_broker(
        broker,
        lambda model: model.put_user(
            "bob", password="bob", limits={"max-connections": 0}
        ),
    )
    on_broker(
        broker, lambda model: model.set_vhost_limits("lim", {"max-connections": 0})
    )
    # Both limits reached: the vhost's text wins.
    assert open_refusal(broker, "bob", "lim")[1] == (
        "NOT_ALLOWED - access to vhost 'lim' refused for user 'bob': "
        "connection limit (0) is reached"
    )
    assert open_refusal(broker, "bob")[1] == (
        "NOT_ALLOWED - connection refused for user 'bob': "
        "user connection limit (0) is reached"
    )


def test_user_channel_limit(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    add_user(broker, "bob", limits={"max-channels": 1})
    first = login("bob")
    first.channel()
    text = (
        "NOT_ALLOWED - number of channels opened for user 'bob' has reached "
        "the maximum allowed user limit of (1)"
    )
    # The whole connection is closed, and the limit spans connections.
    second = login("bob")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as error:
        second.channel()
    assert (error.value.reply_code, error.value.reply_text) == (530, text)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as error:
        first.channel()
    assert (error.value.reply_code, error.value.reply_text) == (530, text)

    # The limit is not announced as channel_max in connection.tune.
    on_broker(
        broker,
        lambda model: model.put_user("bob", password="bob", limits={"max-channels": 0}),
    )
    with AmqpClient.connect(broker.port) as client:
        client.open(username="bob", password="bob")
        assert client.tune.channel_max == 2047
        client.send_method(1, commands.Channel.Open())
        assert client.expect_connection_close() == (
            530,
            text.replace("(1)", "(0)"),
            0,
            0,
        )


# -- deleting a vhost or a user with live connections ----------------------------


def test_delete_vhost_closes_its_connections(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    on_broker(broker, lambda model: model.add_vhost("dv"))
    add_user(broker, "bob", ALL, vhost="dv")
    doomed = login("bob", "dv")
    doomed.channel().queue_declare("dq")
    consuming = doomed.channel()
    consuming.basic_consume("dq", print)
    bystander = login("guest")
    bystander_channel = bystander.channel()

    assert broker.call(lambda: broker.server.delete_vhost("dv"))
    assert_connection_closed(doomed, 320, "CONNECTION_FORCED - vhost 'dv' is deleted")
    bystander_channel.queue_declare("still_here")
    assert on_broker(broker, lambda model: "dv" in model.vhosts) is False
    assert (
        on_broker(broker, lambda model: model.access.can_access_vhost("bob", "dv"))
        is False
    )
    assert open_refusal(broker, "bob", "dv")[1] == "NOT_ALLOWED - vhost dv not found"


def test_delete_user_closes_their_connections(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    add_user(broker, "erin")
    doomed = [login("erin"), login("erin")]
    doomed[0].channel().queue_declare("eq")
    bystander = login("guest").channel()
    text = "CONNECTION_FORCED - user 'erin' is deleted"
    with AmqpClient.connect(broker.port) as raw:
        raw.open(username="erin", password="erin")
        raw.open_channel(1)

        assert broker.call(lambda: broker.server.delete_user("erin"))
        assert raw.expect_connection_close() == (320, text, 0, 0)
    for connection in doomed:
        assert_connection_closed(connection, 320, text)
    bystander.queue_declare("eq", passive=True)
    assert open_refusal(broker, "erin")[:2] == (403, LOGIN_REFUSED)


# -- password hashes made elsewhere ----------------------------------------------


def test_imported_rabbitmq_hashes_log_in(
    broker: EmbeddedBroker, login: Callable[..., pika.BlockingConnection]
) -> None:
    users = [
        # Exported by RabbitMQ 3.10.8 for guest/guest, under another name.
        {
            "name": "exported",
            "password_hash": "VYx4afZ31gm2Dxxt+1XrKQLSat0bOfkf/fzzt0LbhFSN7ZCX",
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        },
        {
            "name": "frank",
            "password_hash": rabbitmq_hash("frankpw", hashlib.sha256),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
            "limits": {},
        },
        {
            "name": "gina",
            "password_hash": rabbitmq_hash("pässwörd", hashlib.sha256),
            "tags": "",
        },
        {"name": "hank", "password_hash": rabbitmq_hash("hankpw", hashlib.sha256)},
        {
            "name": "sam",
            "password_hash": rabbitmq_hash("sampw", hashlib.sha512),
            "hashing_algorithm": "rabbit_password_hashing_sha512",
        },
        {
            "name": "mo",
            "password_hash": rabbitmq_hash("mopw", hashlib.md5),
            "hashing_algorithm": "rabbit_password_hashing_md5",
        },
        {"name": "ivy", "password_hash": ""},
    ]
    passwords = {
        "exported": "guest",
        "frank": "frankpw",
        "gina": "pässwörd",
        "hank": "hankpw",
        "sam": "sampw",
        "mo": "mopw",
    }
    permissions = [
        {"user": name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
        for name in [*passwords, "ivy"]
    ]
    on_broker(
        broker,
        lambda model: model.import_definitions(
            {"users": users, "permissions": permissions}
        ),
    )
    for name, password in passwords.items():
        channel = login(name, password=password).channel()
        channel.queue_declare(f"{name}_q")
        assert open_refusal(broker, name, password=password + "x")[:2] == (
            403,
            LOGIN_REFUSED,
        )
    for password in ("", "x"):
        assert open_refusal(broker, "ivy", password=password)[:2] == (
            403,
            LOGIN_REFUSED,
        )


# -- persistence -----------------------------------------------------------------


def test_users_permissions_and_limits_survive_a_restart(
    make_broker: Callable[..., EmbeddedBroker], tmp_path: Path
) -> None:
    store = {"data_dir": str(tmp_path / "data")}
    first = make_broker(store=store)
    on_broker(first, lambda model: model.add_vhost("lim"))
    add_user(first, "bob", ("^bob", ".*", ".*"), limits={"max-channels": 1})
    add_user(first, "carol", ALL, vhost="lim", tags=("monitoring",))
    on_broker(first, lambda model: model.set_vhost_limits("lim", {"max-queues": 1}))
    on_broker(first, lambda model: model.delete_user("guest"))
    first.stop()

    second = make_broker(store=store)
    bob = pika.BlockingConnection(parameters(second, "bob"))
    try:
        channel = bob.channel()
        channel.queue_declare("bob_q")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            channel.queue_declare("other_q")
        assert error.value.reply_text == refused("queue", "other_q")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            bob.channel()
            bob.channel()
        assert closed.value.reply_code == 530
    finally:
        if bob.is_open:
            bob.close()
    carol = pika.BlockingConnection(parameters(second, "carol", "lim"))
    try:
        channel = carol.channel()
        channel.queue_declare("c1")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
            channel.queue_declare("c2")
        assert error.value.reply_code == 406
    finally:
        carol.close()
    assert open_refusal(second, "carol")[:2] == (
        530,
        "NOT_ALLOWED - access to vhost '/' refused for user 'carol'",
    )
    assert open_refusal(second, "guest")[:2] == (403, LOGIN_REFUSED)
    user = on_broker(second, lambda model: model.access.users["carol"].definition())
    assert user["tags"] == ["monitoring"]


# -- aio-pika --------------------------------------------------------------------


def test_aio_pika_default_exchange_is_amq_default(broker: EmbeddedBroker) -> None:
    add_user(broker, "bob", ("^$", "^amq\\.default$", "^$"))
    url = f"amqp://bob:bob@127.0.0.1:{broker.port}/"

    async def main() -> None:
        connection = await aio_pika.connect(url, timeout=WAIT_S)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(aio_pika.Message(b"x"), "q")
            direct = await channel.get_exchange("amq.direct")  # passive
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as error:
                await direct.publish(aio_pika.Message(b"x"), "q")
            assert error.value.args == (refused("exchange", "amq.direct"),)
            # The connection still serves channels.
            again = await connection.channel()
            await again.default_exchange.publish(aio_pika.Message(b"y"), "q")

    asyncio.run(asyncio.wait_for(main(), timeout=20))


def test_aio_pika_sees_vhost_refusal(broker: EmbeddedBroker) -> None:
    add_user(broker, "dave", None)
    url = f"amqp://dave:dave@127.0.0.1:{broker.port}/"

    async def main() -> None:
        # aiormq does not expect a close in answer to connection.open; with
        # RabbitMQ it fails the same way.
        with pytest.raises(aiormq.exceptions.InvalidFrameError) as error:
            await aio_pika.connect(url, timeout=WAIT_S)
        assert "got <Connection.Close" in str(error.value)
        set_permissions(broker, "dave", EMPTY)
        connection = await aio_pika.connect(url, timeout=WAIT_S)
        async with connection:
            channel = await connection.channel()
            await channel.get_exchange("amq.direct")  # passive: no permission

    asyncio.run(asyncio.wait_for(main(), timeout=20))
