"""Dead-lettering as RabbitMQ 3.10 does it: the x-death header, the
x-first-death-* headers, routing keys, and cycle detection."""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from amqpy.model.message import (
    Message,
    join_properties,
    split_properties,
)
from amqpy.model.tables import (
    array_value,
    decode_value,
    long_value,
    longstr_value,
    split_array_value,
    split_table,
    table_body,
    table_value,
    timestamp_value,
)

REJECTED = "rejected"
EXPIRED = "expired"
MAXLEN = "maxlen"


def _text(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def dead_lettered_message(
    message: Message,
    *,
    queue_name: str,
    reason: str,
    exchange_name: str,
    routing_key: str | None,
    now: datetime.datetime | None = None,
) -> Message:
    """The copy of `message` that goes to the dead-letter exchange.

    The headers are rewritten as RabbitMQ 3.10 does: sorted by key, the
    publisher's values kept with their wire types, x-death entries made
    with RabbitMQ's types (count a signed 64-bit long: Java clients cast it
    to Long), a first death's entry in creation order and any other new or
    changed entry sorted (checked against RabbitMQ 3.10.8).

    Raises:
        ValueError: the message's properties cannot be decoded.
    """
    # The message's cached decode, only read: the copy is built from the
    # encoded values.
    decoded: dict[str, Any] = message.headers or {}
    parts = split_properties(message.properties_raw)
    headers = dict(split_table(parts["headers"])) if "headers" in parts else {}
    routing_keys: list[Any] = [message.routing_key]
    for extra in ("CC", "BCC"):
        value = decoded.get(extra)
        if isinstance(value, list):
            routing_keys.extend(_text(key) for key in value)
    headers.pop("BCC", None)
    when = now or datetime.datetime.now(datetime.UTC)
    new_death = [
        ("count", long_value(1)),
        ("reason", longstr_value(reason)),
        ("queue", longstr_value(queue_name)),
        ("time", timestamp_value(int(when.timestamp()))),
        ("exchange", longstr_value(message.exchange)),
        (
            "routing-keys",
            array_value([longstr_value(str(key)) for key in routing_keys]),
        ),
    ]
    expiration = parts.get("expiration")
    if expiration is not None:
        new_death.append(("original-expiration", longstr_value(expiration[1:])))
    existing = headers.get("x-death")
    if existing is None:
        # The first death also sets (overwrites) the x-first-death-* headers.
        headers["x-first-death-reason"] = longstr_value(reason)
        headers["x-first-death-queue"] = longstr_value(queue_name)
        headers["x-first-death-exchange"] = longstr_value(message.exchange)
        headers["x-death"] = array_value([table_value(new_death)])
    elif existing[:1] == b"A":
        deaths = [
            _Death(decode_value(item), item)
            for item in split_array_value(existing)
            if item[:1] == b"F"
        ]
        first: bytes | None = None
        others = []
        for death in _group_by_queue_and_reason(deaths):
            if first is None and _death_key(death.fields) == (queue_name, reason):
                count = death.fields.get("count")
                if isinstance(count, bool) or not isinstance(count, int):
                    count = 0
                first = _with_count(death.encoded, count + 1)
            elif death.count is not None:
                others.append(_with_count(death.encoded, death.count))
            else:
                others.append(death.encoded)
        if first is None:
            first = table_value(sorted(new_death))
        headers["x-death"] = array_value([first, *others])
    else:
        # Not an array (a client re-published it as text, say): RabbitMQ
        # starts the header again and leaves the x-first-death-* ones alone.
        headers["x-death"] = array_value([table_value(new_death)])
    if routing_key is not None:
        # RabbitMQ drops CC once the dead-letter routing key replaces the keys.
        headers.pop("CC", None)
    parts["headers"] = table_body(sorted(headers.items()))
    # The per-message TTL is spent: it would expire the copy at once.
    parts.pop("expiration", None)
    return Message(
        exchange_name,
        routing_key if routing_key is not None else message.routing_key,
        join_properties(parts),
        message.body,
    )


@attrs.define
class _Death:
    """An x-death entry: decoded (to read) and encoded (to keep its types)."""

    fields: dict[str, Any]
    encoded: bytes
    count: int | None = None  # a count to give it (it had none)


def _with_count(encoded: bytes, count: int) -> bytes:
    """The entry with its count set: RabbitMQ sorts an entry it changes."""
    fields = dict(split_table(encoded[1:]))
    fields["count"] = long_value(count)
    return table_value(sorted(fields.items()))


def _death_key(death: dict[str, Any]) -> tuple[object, object]:
    return _text(death.get("queue")), _text(death.get("reason"))


def _group_by_queue_and_reason(deaths: list[_Death]) -> list[_Death]:
    """rabbit_dead_letter:group_by_queue_and_reason/1: one entry per (queue,
    reason), the first one seen, counted when it has no count. With two or
    more entries RabbitMQ's fold leaves the result in reverse order."""
    if len(deaths) <= 1:
        return deaths
    seen: set[tuple[object, object]] = set()
    grouped: list[_Death] = []
    for death in deaths:
        key = _death_key(death.fields)
        if key in seen:
            continue
        seen.add(key)
        if "count" not in death.fields:
            same = sum(1 for other in deaths if _death_key(other.fields) == key)
            death = _Death({"count": same, **death.fields}, death.encoded, same)
        grouped.insert(0, death)
    return grouped


def is_cycle(queue_name: str, message: Message, reason: str) -> bool:
    """Would dead-lettering into `queue_name` loop with no rejection anywhere?
    (rabbit_dead_letter:detect_cycles: such messages are dropped.)"""
    if reason == REJECTED:
        return False
    headers = message.headers or {}
    deaths = [
        death for death in headers.get("x-death") or [] if isinstance(death, dict)
    ]
    for index, death in enumerate(deaths):
        if _text(death.get("queue")) == queue_name:
            return all(
                _text(item.get("reason")) != REJECTED for item in deaths[: index + 1]
            )
    return False
