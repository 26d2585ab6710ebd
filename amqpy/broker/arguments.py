"""Helpers for AMQP argument tables: RabbitMQ's type names and equivalence."""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Mapping
from typing import Any


def amqp_type_name(value: object) -> str:
    """The type name RabbitMQ uses for a field value in its error texts."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, bytes | bytearray):
        return "binary"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if value is None:
        return "void"
    return type(value).__name__


def freeze(value: Any) -> Any:
    """A hashable, order-independent form of a field value (for identity)."""
    if isinstance(value, Mapping):
        return tuple(sorted((key, freeze(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, bool):
        return ("bool", value)  # True must not collide with 1
    return value


def format_value(value: object) -> str:
    """A value as RabbitMQ prints it in an inequivalence error."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class InvalidArgumentError(ValueError):
    """An x-argument RabbitMQ would refuse; `detail` is its Erlang-style reason."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"invalid arg '{key}': {detail}")
        self.key = key
        self.detail = detail


def _integer(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(
            key, f'"expected integer, got {amqp_type_name(value)}"'
        )
    return value


def _non_negative(key: str, value: object) -> None:
    if _integer(key, value) < 0:
        raise InvalidArgumentError(key, f"{{value_negative,{value}}}")


def _positive(key: str, value: object) -> None:
    number = _integer(key, value)
    if number == 0:
        raise InvalidArgumentError(key, "{value_zero,0}")
    if number < 0:
        raise InvalidArgumentError(key, f"{{value_negative,{value}}}")


def _text(value: object) -> str | None:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _string(key: str, value: object) -> None:
    if _text(value) is None:
        raise InvalidArgumentError(
            key, f'"expected longstr, got {amqp_type_name(value)}"'
        )


def _one_of(key: str, value: object, allowed: tuple[str, ...], reason: str) -> None:
    if _text(value) not in allowed:
        raise InvalidArgumentError(key, reason)


def validate_queue_arguments(arguments: Mapping[str, Any]) -> None:
    """Refuse the queue arguments RabbitMQ 3.10 refuses, with its reasons.

    Raises:
        InvalidArgumentError: the first invalid argument.
    """
    for key, value in arguments.items():
        if key in ("x-message-ttl", "x-max-length", "x-max-length-bytes"):
            _non_negative(key, value)
        elif key == "x-expires":
            _positive(key, value)
        elif key == "x-max-priority":
            _non_negative(key, value)
            if value > 255:
                raise InvalidArgumentError(key, f"{{max_value_exceeded,{value}}}")
        elif key == "x-dead-letter-exchange":
            _string(key, value)
        elif key == "x-dead-letter-routing-key":
            _string(key, value)
            if "x-dead-letter-exchange" not in arguments:
                raise InvalidArgumentError(key, "routing_key_but_no_dlx_defined")
        elif key == "x-overflow":
            _one_of(
                key,
                value,
                ("drop-head", "reject-publish", "reject-publish-dlx"),
                "invalid_overflow",
            )
        elif key == "x-queue-mode":
            _one_of(key, value, ("default", "lazy"), f"{{invalid_queue_mode,{value}}}")
        elif key == "x-queue-type":
            _one_of(
                key, value, ("classic",), f"\"unsupported queue type '{_text(value)}'\""
            )
        elif key == "x-single-active-consumer" and not isinstance(value, bool):
            raise InvalidArgumentError(
                key, f'"expected bool, got {amqp_type_name(value)}"'
            )


def validate_consumer_arguments(arguments: Mapping[str, Any]) -> None:
    """basic.consume arguments RabbitMQ checks (x-priority must be an integer)."""
    if "x-priority" in arguments:
        _integer("x-priority", arguments["x-priority"])
