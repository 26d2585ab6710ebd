"""Dead-lettering as RabbitMQ 3.10 does it: the x-death header, the
x-first-death-* headers, routing keys, and cycle detection."""

from __future__ import annotations

import datetime
from typing import Any

from amqpy.model.message import Message

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
    properties = message.properties
    headers: dict[str, Any] = dict(properties.headers or {})
    routing_keys: list[Any] = [message.routing_key]
    for extra in ("CC", "BCC"):
        value = headers.get(extra)
        if isinstance(value, list):
            routing_keys.extend(_text(key) for key in value)
    headers.pop("BCC", None)
    deaths = [
        dict(death) for death in headers.get("x-death") or [] if isinstance(death, dict)
    ]
    for index, death in enumerate(deaths):
        if (
            _text(death.get("queue")) == queue_name
            and _text(death.get("reason")) == reason
        ):
            death["count"] = int(death.get("count", 0) or 0) + 1
            deaths.insert(0, deaths.pop(index))
            break
    else:
        death = {
            "count": 1,
            "reason": reason,
            "queue": queue_name,
            "time": (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0),
            "exchange": message.exchange,
            "routing-keys": routing_keys,
        }
        if properties.expiration is not None:
            death["original-expiration"] = properties.expiration
        deaths.insert(0, death)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", queue_name)
    headers.setdefault("x-first-death-exchange", message.exchange)
    # The per-message TTL is spent: it would expire the copy at once.
    properties.expiration = None
    properties.headers = headers
    return Message(
        exchange_name,
        routing_key if routing_key is not None else message.routing_key,
        properties.marshal(),
        message.body,
    )


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
