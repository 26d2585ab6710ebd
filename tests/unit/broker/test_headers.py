"""Headers matching against RabbitMQ 3.x's rabbit_exchange_type_headers."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest

from amqpy.broker.exchanges.headers import headers_match, validate_x_match

# (binding arguments, message headers, expected)
MATCH_CASES: list[tuple[dict[str, object], dict[str, object] | None, bool]] = [
    # all (the default)
    ({"a": "1"}, {"a": "1"}, True),
    ({"a": "1"}, {"a": "1", "b": "2"}, True),
    ({"a": "1", "b": "2"}, {"a": "1"}, False),
    ({"a": "1", "b": "2"}, {"a": "1", "b": "2"}, True),
    ({"a": "1", "b": "2"}, {"a": "1", "b": "3"}, False),
    ({"x-match": "all", "a": "1", "b": "2"}, {"a": "1", "b": "2"}, True),
    ({"x-match": "all", "a": "1", "b": "2"}, {"b": "2"}, False),
    ({"a": "1"}, {}, False),
    ({"a": "1"}, None, False),
    # all with nothing to compare matches everything
    ({}, None, True),
    ({}, {"a": "1"}, True),
    ({"x-match": "all"}, None, True),
    ({"x-match": "all", "x-foo": "bar"}, None, True),
    ({"x-foo": "bar"}, {"x-foo": "other"}, True),
    # any
    ({"x-match": "any", "a": "1", "b": "2"}, {"a": "1"}, True),
    ({"x-match": "any", "a": "1", "b": "2"}, {"b": "2"}, True),
    ({"x-match": "any", "a": "1", "b": "2"}, {"a": "2", "b": "1"}, False),
    ({"x-match": "any", "a": "1", "b": "2"}, {"c": "1"}, False),
    ({"x-match": "any", "a": "1"}, None, False),
    # any with nothing to compare matches nothing
    ({"x-match": "any"}, {"a": "1"}, False),
    ({"x-match": "any"}, None, False),
    ({"x-match": "any", "x-foo": "bar"}, {"x-foo": "bar"}, False),
    # x- arguments are ignored by all and any
    ({"x-foo": "bar", "a": "1"}, {"a": "1"}, True),
    ({"x-match": "any", "x-foo": "bar", "a": "1"}, {"x-foo": "bar"}, False),
    # ... but not when only the case differs
    ({"X-Foo": "bar"}, {}, False),
    ({"X-Foo": "bar"}, {"X-Foo": "bar"}, True),
    # ... and they count under the -with-x modes
    ({"x-match": "all-with-x", "x-foo": "bar"}, {"x-foo": "bar"}, True),
    ({"x-match": "all-with-x", "x-foo": "bar"}, {}, False),
    ({"x-match": "all-with-x", "x-foo": "bar", "a": "1"}, {"a": "1"}, False),
    ({"x-match": "all-with-x", "x-foo": "bar", "a": "1"}, {"x-foo": "bar"}, False),
    (
        {"x-match": "all-with-x", "x-foo": "bar", "a": "1"},
        {"x-foo": "bar", "a": "1"},
        True,
    ),
    ({"x-match": "any-with-x", "x-foo": "bar", "a": "1"}, {"x-foo": "bar"}, True),
    ({"x-match": "any-with-x", "x-foo": "bar", "a": "1"}, {"a": "1"}, True),
    ({"x-match": "any-with-x", "x-foo": "bar"}, {"x-foo": "baz"}, False),
    # x-match itself is never compared, even under -with-x
    ({"x-match": "all-with-x"}, None, True),
    ({"x-match": "all-with-x"}, {"x-match": "something"}, True),
    ({"x-match": "any-with-x"}, {"x-match": "any-with-x"}, False),
    # a void argument asks only for presence
    ({"a": None}, {"a": "anything"}, True),
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {"a": 0}, True),
    ({"a": None}, {"b": "1"}, False),
    ({"a": None}, None, False),
    ({"x-match": "any", "a": None, "b": "2"}, {"a": 1}, True),
    ({"x-match": "any", "a": None}, {}, False),
    ({"x-match": "all-with-x", "x-a": None}, {"x-a": False}, True),
    # a void header equals only a void argument (i.e. presence)
    ({"a": "1"}, {"a": None}, False),
    ({"a": ""}, {"a": None}, False),
    ({"a": {}}, {"a": None}, False),
    # an x-match RabbitMQ would refuse matches as all
    ({"x-match": "ALL", "a": "1"}, {"a": "1"}, True),
    ({"x-match": "Any", "a": "1", "b": "2"}, {"a": "1"}, False),
    ({"x-match": 1, "a": "1", "b": "2"}, {"a": "1"}, False),
    ({"x-match": bytearray(b"any"), "a": "1", "b": "2"}, {"a": "1"}, False),
    # pamqp decodes a long string that is not UTF-8 as bytes: still a longstr
    ({"x-match": b"any", "a": "1", "b": "2"}, {"a": "1"}, True),
]


@pytest.mark.parametrize(("arguments", "headers", "expected"), MATCH_CASES)
def test_headers_match(
    arguments: dict[str, object], headers: dict[str, object] | None, expected: bool
) -> None:
    assert headers_match(arguments, headers) is expected


def _ts(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


# (binding argument value, header value, equal?) as Erlang's == decides it on
# the values RabbitMQ decodes.
VALUE_CASES: list[tuple[object, object, bool]] = [
    ("abc", "abc", True),
    ("abc", "abd", False),
    ("abc", "ABC", False),
    ("", "", True),
    ("café", "café", True),
    # long strings and byte arrays are both binaries
    ("abc", b"abc", True),
    ("abc", bytearray(b"abc"), True),
    (bytearray(b"abc"), "abc", True),
    (b"\xff", bytearray(b"\xff"), True),
    ("é", "é".encode(), True),
    ("é", "é".encode("latin-1"), False),
    # integers of any width and floats are numbers
    (1, 1, True),
    (1, 2, False),
    (1, 1.0, True),
    (2**40, 2**40, True),
    (-5, -5.0, True),
    (0.5, 0.5, True),
    # a number is never a string
    (1, "1", False),
    ("1", 1, False),
    (1, b"1", False),
    # bools are atoms: never numbers
    (True, True, True),
    (False, False, True),
    (True, False, False),
    (True, 1, False),
    (1, True, False),
    (False, 0, False),
    (0, False, False),
    (True, "true", False),
    # a timestamp is its seconds
    (_ts(1_700_000_000), _ts(1_700_000_000), True),
    (_ts(1_700_000_000), 1_700_000_000, True),
    (1_700_000_000, _ts(1_700_000_000), True),
    (_ts(1_700_000_000), 1_700_000_001, False),
    # decimals compare by scale and digits
    (Decimal("1.0"), Decimal("1.0"), True),
    (Decimal("1.0"), Decimal("1.00"), False),
    (Decimal("1"), 1, False),
    (Decimal("1.5"), 1.5, False),
    (Decimal("1.5"), "1.5", False),
    # tables and arrays: ordered, type tags included
    ({}, {}, True),
    ([], [], True),
    ({}, [], True),
    ([], {}, True),
    ({"k": 1}, [], False),
    ({"k": 1}, {"k": 1}, True),
    ({"k": 1}, {"k": 2}, False),
    ({"k": 1}, {"j": 1}, False),
    ({"k": 1}, {"k": 1, "j": 2}, False),
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}, False),
    ({"k": 1}, {"k": 1.0}, False),
    ({"k": True}, {"k": 1}, False),
    ({"k": "v"}, {"k": b"v"}, True),
    ({"k": "v"}, {"k": bytearray(b"v")}, False),
    ({"k": {"n": [1, "x"]}}, {"k": {"n": [1, "x"]}}, True),
    ({"k": {"n": [1, "x"]}}, {"k": {"n": [1, "y"]}}, False),
    ([1, "a"], [1, "a"], True),
    ([1, "a"], ["a", 1], False),
    ([1], [1, 1], False),
    ([1], [1.0], False),
    ([1.0], [1.0], True),
    ([True], [1], False),
    (["a"], [b"a"], True),
    (["a"], [bytearray(b"a")], False),
    ([_ts(5)], [5], False),
    ([_ts(5)], [_ts(5)], True),
    ([Decimal("1.0")], [Decimal("1.0")], True),
    ([None], [None], True),
    ([None], [0], False),
    ([[]], [{}], False),
    ([1], (1,), True),
    ([], "", False),
    ({}, 0, False),
]


@pytest.mark.parametrize(("argument", "header", "expected"), VALUE_CASES)
@pytest.mark.parametrize("mode", ["all", "any", "all-with-x", "any-with-x"])
def test_value_comparison(
    mode: str, argument: object, header: object, expected: bool
) -> None:
    assert headers_match({"x-match": mode, "k": argument}, {"k": header}) is expected
    # RabbitMQ's == is symmetric
    assert headers_match({"x-match": mode, "k": header}, {"k": argument}) is expected


def test_many_arguments_all_must_match() -> None:
    arguments: dict[str, object] = {f"k{n}": n for n in range(50)}
    headers: dict[str, object] = {f"k{n}": n for n in range(100)}
    assert headers_match(arguments, headers)
    headers["k49"] = "49"
    assert not headers_match(arguments, headers)
    assert headers_match({**arguments, "x-match": "any"}, headers)


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"a": "1"},
        {"x-match": "all"},
        {"x-match": "any"},
        {"x-match": "all-with-x"},
        {"x-match": "any-with-x", "x-foo": 1},
        {"x-match": b"any"},  # a long string that pamqp left as bytes
    ],
)
def test_validate_accepts(arguments: dict[str, object]) -> None:
    validate_x_match(arguments)


X_MATCH_VALUE = "; expected all, any, all-with-x, or any-with-x"
X_MATCH_TYPE = "); expected longstr"


@pytest.mark.parametrize(
    ("x_match", "message"),
    [
        ("foo", 'Invalid x-match field value <<"foo">>' + X_MATCH_VALUE),
        ("ALL", 'Invalid x-match field value <<"ALL">>' + X_MATCH_VALUE),
        ("all ", 'Invalid x-match field value <<"all ">>' + X_MATCH_VALUE),
        ("", "Invalid x-match field value <<>>" + X_MATCH_VALUE),
        ('a"b\\c', r'Invalid x-match field value <<"a\"b\\c">>' + X_MATCH_VALUE),
        ("a\nb", r'Invalid x-match field value <<"a\nb">>' + X_MATCH_VALUE),
        ("\x01", "Invalid x-match field value <<1>>" + X_MATCH_VALUE),
        ("café", 'Invalid x-match field value <<"café"/utf8>>' + X_MATCH_VALUE),
        (
            "日本",
            "Invalid x-match field value <<230,151,165,230,156,172>>" + X_MATCH_VALUE,
        ),
        (b"\xe9t\xe9", 'Invalid x-match field value <<"été">>' + X_MATCH_VALUE),
        (b"\xff\x01", "Invalid x-match field value <<255,1>>" + X_MATCH_VALUE),
        (1, "Invalid x-match field type signedint (value 1" + X_MATCH_TYPE),
        (2**40, f"Invalid x-match field type long (value {2**40}" + X_MATCH_TYPE),
        (True, "Invalid x-match field type bool (value true" + X_MATCH_TYPE),
        (1.5, "Invalid x-match field type double (value 1.5" + X_MATCH_TYPE),
        (None, "Invalid x-match field type void (value undefined" + X_MATCH_TYPE),
        (
            bytearray(b"all"),
            'Invalid x-match field type binary (value <<"all">>' + X_MATCH_TYPE,
        ),
        (
            Decimal("1.50"),
            "Invalid x-match field type decimal (value {2,150}" + X_MATCH_TYPE,
        ),
        (
            _ts(1_700_000_000),
            "Invalid x-match field type timestamp (value 1700000000" + X_MATCH_TYPE,
        ),
        (
            {"a": "b"},
            'Invalid x-match field type table (value [{<<"a">>,longstr,<<"b">>}]'
            + X_MATCH_TYPE,
        ),
        (
            ["all"],
            'Invalid x-match field type array (value [{longstr,<<"all">>}]'
            + X_MATCH_TYPE,
        ),
    ],
)
def test_validate_refuses(x_match: object, message: str) -> None:
    with pytest.raises(ValueError, match=r"^Invalid x-match") as info:
        validate_x_match({"x-match": x_match, "a": "1"})
    assert str(info.value) == message
