"""Headers-exchange matching, as RabbitMQ 3.x's ``rabbit_exchange_type_headers``.

- ``x-match`` is ``all`` (the default), ``any``, ``all-with-x`` or
  ``any-with-x``. A binding that has some other x-match is refused by
  `validate_x_match`; should one exist anyway, it matches as ``all``.
- The ``x-match`` argument never takes part in matching. Other arguments whose
  key starts with ``x-`` take part only under the ``-with-x`` modes.
- An argument whose value is void (``None``) matches when the header is
  present, whatever its value.
- ``all`` with no arguments left to compare matches every message; ``any``
  with none matches no message.

Values compare as Erlang's ``==`` compares RabbitMQ's decoded values, whose
type tags RabbitMQ drops at the top level:

- integers of any width and floats are numbers (``1 == 1.0``), and a timestamp
  is its number of seconds;
- a bool equals only a bool (Erlang's ``true`` is an atom, never ``1``);
- a long string and a byte array are both binaries (``"abc" == b"abc"``);
- a decimal equals only a decimal with the same scale and digits
  (``1.0 != 1.00``);
- a table or an array equals one of the same kind, compared in wire order with
  each element's type tag included (so ``[1] != [1.0]``); an empty table
  equals an empty array (both are ``[]`` in Erlang).

Python values are taken as pamqp decodes a field table: ``str`` is a long
string, ``bytes`` a long string that is not UTF-8, ``bytearray`` a byte array.
pamqp erases integer and float widths, so inside tables and arrays any two
ints (or any two floats) are taken to have the same type tag.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Mapping
from typing import Final

__all__ = ["headers_match", "validate_x_match"]

X_MATCH_MODES: Final = frozenset({"all", "any", "all-with-x", "any-with-x"})

_MISSING: Final = object()
_EMPTY: Final[Mapping[str, object]] = {}

# Pairs of values of one of these exact types compare with plain ==.
_PLAIN_TYPES: Final = frozenset({str, int, float, bool, bytes})

# Kinds of value for Erlang's `==` on untagged values.
_BOOL: Final = 0
_NUMBER: Final = 1
_BINARY: Final = 2
_DECIMAL: Final = 3
_TABLE: Final = 4
_ARRAY: Final = 5
_VOID: Final = 6
_OTHER: Final = 7


def headers_match(
    binding_arguments: Mapping[str, object],
    message_headers: Mapping[str, object] | None,
) -> bool:
    """Whether a message with `message_headers` matches a headers binding.

    Args:
        binding_arguments: the binding's arguments, x-match included.
        message_headers: the message's headers property (None when absent).

    Returns:
        True when the binding routes the message, as RabbitMQ decides it.
    """
    mode = binding_arguments.get("x-match")
    if type(mode) is not str:
        mode = _longstr_text(mode)
    if mode == "any":
        match_any, with_x = True, False
    elif mode == "any-with-x":
        match_any, with_x = True, True
    elif mode == "all-with-x":
        match_any, with_x = False, True
    else:
        match_any, with_x = False, False
    headers = _EMPTY if message_headers is None else message_headers
    for key, expected in binding_arguments.items():
        if key.startswith("x-") and (not with_x or key == "x-match"):
            continue
        actual = headers.get(key, _MISSING)
        if actual is _MISSING:
            matched = False
        elif expected is None:
            matched = True
        else:
            expected_type = type(expected)
            if expected_type is type(actual) and expected_type in _PLAIN_TYPES:
                matched = expected == actual
            else:
                matched = _loose_equal(expected, actual)
        # any: the first match decides; all: the first mismatch decides.
        if matched is match_any:
            return match_any
    return not match_any


def validate_x_match(binding_arguments: Mapping[str, object]) -> None:
    """Refuse a headers binding whose x-match RabbitMQ refuses.

    Args:
        binding_arguments: the arguments of a queue.bind or exchange.bind.

    Raises:
        ValueError: x-match is not a long string, or not one of the four modes.
            The text is RabbitMQ's; it is sent with 406 PRECONDITION_FAILED.
    """
    value = binding_arguments.get("x-match", _MISSING)
    if value is _MISSING:
        return
    if isinstance(value, str | bytes):
        if _longstr_text(value) in X_MATCH_MODES:
            return
        raise ValueError(
            f"Invalid x-match field value {erlang_repr(value)}; "
            "expected all, any, all-with-x, or any-with-x"
        )
    raise ValueError(
        f"Invalid x-match field type {erlang_type_name(value)} "
        f"(value {erlang_repr(value)}); expected longstr"
    )


def _longstr_text(value: object) -> object:
    """A bytes long string as text, so b"any" reads as "any"; others unchanged."""
    if type(value) is bytes:
        return value.decode("latin-1")
    return value


def _kind(value: object) -> int:
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int | float | datetime.datetime):
        return _NUMBER
    if isinstance(value, str | bytes | bytearray | memoryview):
        return _BINARY
    if isinstance(value, decimal.Decimal):
        return _DECIMAL
    if isinstance(value, Mapping):
        return _TABLE
    if isinstance(value, list | tuple):
        return _ARRAY
    if value is None:
        return _VOID
    return _OTHER


def _as_number(value: object) -> float | int:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.timestamp()
    assert isinstance(value, int | float)
    return value


def _as_bytes(value: str | bytes | bytearray | memoryview) -> bytes | bytearray:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, memoryview):
        return value.tobytes()
    return value


def _loose_equal(left: object, right: object) -> bool:
    """Erlang's == on two decoded field values, their type tags dropped."""
    kind = _kind(left)
    if kind != _kind(right):
        # A table and an array are both Erlang lists, so [] == [].
        return _is_empty_list(left) and _is_empty_list(right)
    if kind == _NUMBER:
        return _as_number(left) == _as_number(right)
    if isinstance(left, str | bytes | bytearray | memoryview):
        assert isinstance(right, str | bytes | bytearray | memoryview)
        return _as_bytes(left) == _as_bytes(right)
    if isinstance(left, decimal.Decimal):
        assert isinstance(right, decimal.Decimal)
        return left.as_tuple() == right.as_tuple()
    if isinstance(left, Mapping):
        assert isinstance(right, Mapping)
        return len(left) == len(right) and all(
            left_key == right_key and _tagged_equal(left_value, right_value)
            for (left_key, left_value), (right_key, right_value) in zip(
                left.items(), right.items(), strict=True
            )
        )
    if isinstance(left, list | tuple):
        assert isinstance(right, list | tuple)
        return len(left) == len(right) and all(map(_tagged_equal, left, right))
    # bools, voids, and anything a decoder would not produce
    return left == right


def _is_empty_list(value: object) -> bool:
    return isinstance(value, Mapping | list | tuple) and not value


def _tagged_equal(left: object, right: object) -> bool:
    """Erlang's == on two values nested in a table or array, tags included."""
    return erlang_type_name(left, nested=True) == erlang_type_name(
        right, nested=True
    ) and _loose_equal(left, right)


def erlang_type_name(value: object, *, nested: bool = False) -> str:
    """The type tag RabbitMQ's decoder gives a field value, as best known.

    pamqp erases integer widths: an int is named ``signedint`` when it fits in
    32 bits and ``long`` otherwise (what pika sends); a float is ``double``.
    With `nested`, all ints share one name, as do all floats.
    """
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if nested:
            return "int"
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str | bytes):
        return "longstr"
    if isinstance(value, bytearray | memoryview):
        return "binary"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    if value is None:
        return "void"
    return type(value).__name__


def erlang_repr(value: object) -> str:
    """A decoded field value printed as Erlang's ``~tp`` prints RabbitMQ's."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _erlang_float(value)
    if isinstance(value, str | bytes | bytearray | memoryview):
        return _erlang_binary(bytes(_as_bytes(value)))
    if isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        if isinstance(exponent, int) and exponent > 0:
            unscaled *= 10**exponent
            exponent = 0
        scale = -exponent if isinstance(exponent, int) else 0
        return f"{{{scale},{unscaled}}}"
    if isinstance(value, datetime.datetime):
        return str(int(_as_number(value)))
    if isinstance(value, Mapping):
        fields = ",".join(
            f"{{{erlang_repr(str(key))},{erlang_type_name(item)},{erlang_repr(item)}}}"
            for key, item in value.items()
        )
        return f"[{fields}]"
    if isinstance(value, list | tuple):
        items = ",".join(
            f"{{{erlang_type_name(item)},{erlang_repr(item)}}}" for item in value
        )
        return f"[{items}]"
    if value is None:
        return "undefined"
    return repr(value)


def _erlang_float(value: float) -> str:
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa and mantissa.lstrip("-").isdigit():
        mantissa += ".0"
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


# Characters ~tp prints inside a string, and how it escapes some of them.
_ESCAPES: Final = {
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\b": "\\b",
    "\f": "\\f",
    "\x1b": "\\e",
    '"': '\\"',
    "\\": "\\\\",
}


def _printable(char: str) -> bool:
    # Erlang's default printable range is latin1 (the VM's +pc flag).
    code = ord(char)
    return 0x20 <= code <= 0x7E or 0xA0 <= code <= 0xFF or char in _ESCAPES


def _erlang_binary(data: bytes) -> str:
    """A binary as io_lib_pretty prints it with the ``t`` modifier."""
    suffix = ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Not UTF-8: printed as a latin1 string if every byte is printable.
        text = data.decode("latin-1")
    else:
        # "/utf8" marks a string with some character of more than one byte.
        if len(text) != len(data):
            suffix = "/utf8"
    if not data or not all(map(_printable, text)):
        return "<<" + ",".join(map(str, data)) + ">>"
    escaped = "".join(_ESCAPES.get(char, char) for char in text)
    return f'<<"{escaped}"{suffix}>>'
