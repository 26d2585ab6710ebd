"""Transactions (tx.select / commit / rollback) as RabbitMQ runs them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest

Connect = Callable[..., pika.BlockingConnection]


def ready(channel: Any, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def test_publishes_wait_for_commit_and_rollback_discards(channel: Any) -> None:
    channel.queue_declare("q")
    channel.tx_select()
    channel.basic_publish("", "q", b"rolled back")
    assert ready(channel, "q") == 0
    channel.tx_rollback()
    channel.basic_publish("", "q", b"one")
    channel.basic_publish("", "q", b"two")
    assert ready(channel, "q") == 0
    channel.tx_commit()
    assert ready(channel, "q") == 2
    assert channel.basic_get("q", auto_ack=True)[2] == b"one"
    assert channel.basic_get("q", auto_ack=True)[2] == b"two"


def test_acks_wait_for_commit_and_rollback_keeps_them_unacked(
    connect: Connect,
) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("q")
    for body in (b"a", b"b"):
        channel.basic_publish("", "q", body)
    channel.tx_select()
    first = channel.basic_get("q")[0]
    second = channel.basic_get("q")[0]
    channel.basic_ack(first.delivery_tag)
    channel.basic_reject(second.delivery_tag, requeue=False)
    channel.tx_rollback()
    # Still unacked after the rollback: the same tags can be acked now.
    channel.basic_ack(second.delivery_tag)
    channel.tx_commit()
    channel.close()
    # "a" was never acked (rolled back), so closing the channel requeued it.
    channel = connection.channel()
    method, _, body = channel.basic_get("q", auto_ack=True)
    assert (body, method.redelivered) == (b"a", True)
    assert ready(channel, "q") == 0


def test_uncommitted_acks_are_undone_when_the_channel_closes(connect: Connect) -> None:
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("q")
    channel.basic_publish("", "q", b"a")
    channel.tx_select()
    method = channel.basic_get("q")[0]
    channel.basic_ack(method.delivery_tag)
    channel.close()
    assert ready(connection.channel(), "q") == 1


def test_mandatory_return_comes_at_commit(channel: Any) -> None:
    returned: list[bytes] = []
    channel.add_on_return_callback(lambda _ch, _m, _p, body: returned.append(body))
    channel.tx_select()
    channel.basic_publish("", "no-such-queue", b"lost", mandatory=True)
    channel.tx_commit()
    channel.connection.process_data_events(time_limit=0)
    assert returned == [b"lost"]


def test_unknown_tag_in_tx_is_refused_at_once(channel: Any) -> None:
    channel.tx_select()
    channel.basic_ack(7)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        channel.tx_commit()
    assert (error.value.reply_code, error.value.reply_text) == (
        406,
        "PRECONDITION_FAILED - unknown delivery tag 7",
    )


@pytest.mark.parametrize(
    ("first", "second", "text"),
    [
        ("confirm", "tx", "cannot switch from confirm to tx mode"),
        ("tx", "confirm", "cannot switch from tx to confirm mode"),
    ],
)
def test_tx_and_confirm_modes_exclude_each_other(
    channel: Any, first: str, second: str, text: str
) -> None:
    select = {"confirm": channel.confirm_delivery, "tx": channel.tx_select}
    select[first]()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        select[second]()
    assert (error.value.reply_code, error.value.reply_text) == (
        406,
        f"PRECONDITION_FAILED - {text}",
    )


@pytest.mark.parametrize("verb", ["commit", "rollback"])
def test_commit_or_rollback_without_select_is_406(channel: Any, verb: str) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        getattr(channel, f"tx_{verb}")()
    assert (error.value.reply_code, error.value.reply_text) == (
        406,
        "PRECONDITION_FAILED - channel is not transactional",
    )


def test_tx_select_twice_is_fine(channel: Any) -> None:
    channel.tx_select()
    channel.tx_select()
    channel.tx_commit()
    assert channel.is_open
