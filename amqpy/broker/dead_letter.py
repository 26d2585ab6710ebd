"""Dead-lettering as RabbitMQ 3.10 does it: the x-death header, the
x-first-death-* headers, routing keys, and cycle detection."""

from __future__ import annotations

import datetime
from typing import Any

from amqpy.model.message import Message, decode_properties

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

    Raises:
        ValueError: the message's properties cannot be decoded.
    """
    # A fresh decode: the message's cached properties are shared by every
    # queue it went to and must not change.
    properties = decode_properties(message.properties_raw)
    headers: dict[str, Any] = dict(properties.headers or {})
    routing_keys: list[Any] = [message.routing_key]
    for extra in ("CC", "BCC"):
        value = headers.get(extra)
        if isinstance(value, list):
            routing_keys.extend(_text(key) for key in value)
    headers.pop("BCC", None)
    new_death: dict[str, Any] = {
        "count": 1,
        "reason": reason,
        "queue": queue_name,
        "time": (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0),
        "exchange": message.exchange,
        "routing-keys": routing_keys,
    }
    if properties.expiration is not None:
        new_death["original-expiration"] = properties.expiration
    existing = headers.get("x-death")
    if "x-death" not in headers:
        # The first death also sets (overwrites) the x-first-death-* headers.
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue_name
        headers["x-first-death-exchange"] = message.exchange
        headers["x-death"] = [new_death]
    elif isinstance(existing, list):
        grouped = _group_by_queue_and_reason(
            [dict(death) for death in existing if isinstance(death, dict)]
        )
        first = new_death
        others = []
        for death in grouped:
            if first is new_death and _death_key(death) == (queue_name, reason):
                count = death.get("count")
                if isinstance(count, bool) or not isinstance(count, int):
                    count = 0
                first = {**death, "count": count + 1}
            else:
                others.append(death)
        headers["x-death"] = [first, *others]
    else:
        # Not an array (a client re-published it as text, say): RabbitMQ
        # starts the header again and leaves the x-first-death-* ones alone.
        headers["x-death"] = [new_death]
    if routing_key is not None:
        # RabbitMQ drops CC once the dead-letter routing key replaces the keys.
        headers.pop("CC", None)
    # The per-message TTL is spent: it would expire the copy at once.
    properties.expiration = None
    properties.headers = headers
    return Message(
        exchange_name,
        routing_key if routing_key is not None else message.routing_key,
        properties.marshal(),
        message.body,
    )


def _death_key(death: dict[str, Any]) -> tuple[object, object]:
    return _text(death.get("queue")), _text(death.get("reason"))


def _group_by_queue_and_reason(deaths: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """rabbit_dead_letter:group_by_queue_and_reason/1: one entry per (queue,
    reason), the first one seen, counted when it has no count. With two or
    more entries RabbitMQ's fold leaves the result in reverse order."""
    if len(deaths) <= 1:
        return deaths
    seen: set[tuple[object, object]] = set()
    grouped: list[dict[str, Any]] = []
    for death in deaths:
        key = _death_key(death)
        if key in seen:
            continue
        seen.add(key)
        if "count" not in death:
            same = sum(1 for other in deaths if _death_key(other) == key)
            death = {"count": same, **death}
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
