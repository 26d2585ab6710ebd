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
