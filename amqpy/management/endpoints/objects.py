"""Exchanges, queues, bindings, connections, channels and consumers, as
RabbitMQ's management plugin shows them and changes them.

RabbitMQ's API changes objects by running the AMQP method on an internal
channel as the requesting user, so the answers are the channel's: a
missing object is 404 with the channel's text, a refused permission 401
"Access refused.", any other channel error 400 with its text. Queue get
and exchange publish go through a channel too; their errors keep the
reply code ("404 NOT_FOUND - ..."). Here the same broker calls the AMQP
channels make are called directly (vhost.declare_queue, vhost.route,
queue.enqueue, broker Channel.get ...), with the user's permissions.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime
import decimal
import itertools
import json
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import attrs
import trio
from pamqp import commands
from starlette.responses import Response

from amqpy.broker.access import (
    ADMINISTRATOR,
    MONITORING,
    READ,
    TOPIC,
    WRITE,
    Authorize,
)
from amqpy.broker.channel import Channel
from amqpy.broker.errors import (
    AccessRefusedError,
    AmqpError,
    NotAllowedError,
    NotFoundError,
)
from amqpy.broker.exchange import Exchange
from amqpy.broker.policy import effective_policy
from amqpy.broker.queue import Consumer, Queue, QueueEntry
from amqpy.broker.vhost import PREDECLARED_EXCHANGES, Held, VHost
from amqpy.management.app import (
    ApiError,
    Context,
    Endpoint,
    bad_request,
    created,
    no_content,
    not_found,
)
from amqpy.management.endpoints.metrics import queue_message_stats
from amqpy.model.message import Message
from amqpy.reply_code import ReplyCode
from amqpy.server.channel import ChannelHandler, TxAck, TxPublish
from amqpy.server.connection import ConnectionHandler

if TYPE_CHECKING:
    from amqpy.server.run import BrokerServer

# The exchanges every vhost has from the start ("rmq-internal" made them).
BUILTIN_EXCHANGES = frozenset(
    ["", "amq.rabbitmq.trace", *(name for name, _ in PREDECLARED_EXCHANGES)]
)
DEFAULT_EXCHANGE_ALIAS = "amq.default"  # the nameless exchange, in paths
MAX_QUEUE_NAME_BYTES = 255
ACKMODES = (
    "ack_requeue_true",
    "ack_requeue_false",
    "reject_requeue_true",
    "reject_requeue_false",
)
# How long a publish waits for its persistent copies to reach the disk.
PUBLISH_CONFIRM_TIMEOUT_S = 30.0

# Queue memory estimate: what a queue holds in Python objects. Each message
# it holds (ready or unacked) costs its body and properties bytes plus about
# PER_MESSAGE for its QueueEntry, its Message and the two bytes objects'
# headers; the queue itself (its object, deques and dicts) about PER_QUEUE
# (both measured with tracemalloc). Messages shared by several queues are
# counted in each, as RabbitMQ counts them per queue process.
MEMORY_PER_MESSAGE_BYTES = 170
MEMORY_PER_QUEUE_BYTES = 3300
# Ready messages looked at for the persistent counts and properties bytes; a
# longer queue's figures are extrapolated from its first ones (exact up to
# this length), so a listing never walks a million messages.
PROFILE_SAMPLE = 1000

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 500

# basic properties in RabbitMQ's record order, with their flag bits.
PROPERTY_FLAGS = (
    ("content_type", 0x8000),
    ("content_encoding", 0x4000),
    ("headers", 0x2000),
    ("delivery_mode", 0x1000),
    ("priority", 0x0800),
    ("correlation_id", 0x0400),
    ("reply_to", 0x0200),
    ("expiration", 0x0100),
    ("message_id", 0x0080),
    ("timestamp", 0x0040),
    ("type", 0x0020),
    ("user_id", 0x0010),
    ("app_id", 0x0008),
    ("cluster_id", 0x0004),
)
INTEGER_PROPERTIES = ("delivery_mode", "priority", "timestamp")


# -- RabbitMQ's error answers --------------------------------------------------


def _direct_failure(error: AmqpError) -> ApiError:
    """An error of a method the API ran on its internal channel
    (rabbit_mgmt_util:direct_request): the text without its code."""
    if isinstance(error, NotFoundError):
        return ApiError(404, "not_found", error.text)
    if isinstance(error, AccessRefusedError | NotAllowedError):
        return ApiError(401, "not_authorised", "Access refused.")
    return bad_request(error.text)


def _code_and_text(error: AmqpError) -> str:
    """RabbitMQ's "~p ~s" of a channel's close: "404 NOT_FOUND - ..."."""
    return f"{int(error.reply_code)} {error.reply_text}"


def _channel_failure(error: AmqpError) -> ApiError:
    """A basic.get's channel error (rabbit_mgmt_util:with_channel)."""
    if isinstance(error, NotFoundError):
        return ApiError(404, "not_found", error.reply_text)
    if isinstance(error, AccessRefusedError):
        return ApiError(401, "not_authorised", error.reply_text)
    return bad_request(_code_and_text(error))


def _not_authorised(reason: str) -> ApiError:
    return ApiError(401, "not_authorised", reason)


def _term(*items: object) -> ApiError:
    """A 400 whose reason is an Erlang tuple, which RabbitMQ renders as a
    JSON list (["not_boolean", "yes"])."""
    return ApiError(400, "bad_request", list(items))  # type: ignore[arg-type]


def _access_refused() -> ApiError:
    return _not_authorised("Access refused.")


# -- who may see what ----------------------------------------------------------


def _is_admin(context: Context) -> bool:
    return ADMINISTRATOR in context.user.tags


def _is_monitor(context: Context) -> bool:
    return bool({ADMINISTRATOR, MONITORING} & set(context.user.tags))


def _has_vhost_access(context: Context, name: str) -> bool:
    return context.broker.access.can_access_vhost(context.user.name, name)


def _object_vhosts(context: Context) -> list[VHost]:
    """The vhosts whose queues, exchanges and bindings a user's lists show:
    all for an administrator, else those they have permissions in (as
    rabbit_mgmt_util:filter_vhost; the monitoring tag does not widen it)."""
    admin = _is_admin(context)
    return [
        vhost
        for name, vhost in sorted(context.broker.vhosts.items())
        if admin or _has_vhost_access(context, name)
    ]


def _check_vhost_authorised(context: Context, name: str) -> None:
    """RabbitMQ's is_authorized_vhost: a user other than an administrator
    needs permissions in the vhost the path names (a missing vhost passes,
    to be answered 404 after)."""
    if (
        name in context.broker.vhosts
        and not _is_admin(context)
        and not _has_vhost_access(context, name)
    ):
        raise _not_authorised("User not authorised to access virtual host")


def _path_vhost(context: Context) -> VHost:
    """The vhost of a read: 401 when not authorised, 404 when missing."""
    name = context.param("vhost")
    _check_vhost_authorised(context, name)
    vhost = context.broker.vhosts.get(name)
    if vhost is None:
        raise not_found()
    return vhost


def _write_vhost(context: Context) -> VHost:
    """The vhost of a write (declare, bind): 404 "vhost_not_found" when
    missing (rabbit_mgmt_util:with_vhost_and_props)."""
    name = context.param("vhost")
    _check_vhost_authorised(context, name)
    vhost = context.broker.vhosts.get(name)
    if vhost is None:
        raise ApiError(404, "not_found", "vhost_not_found")
    return vhost


def _channel_vhost(context: Context) -> VHost:
    """The vhost of a get or publish, which RabbitMQ opens a connection to
    as the user: refused (401 "Access refused.") when missing or when the
    user has no permissions there."""
    name = context.param("vhost")
    _check_vhost_authorised(context, name)
    vhost = context.broker.vhosts.get(name)
    if vhost is None or not _has_vhost_access(context, name):
        raise _access_refused()
    return vhost


def _authorizer(context: Context, vhost: VHost) -> Authorize:
    """The user's AMQP permissions in `vhost`, as a channel checks them."""
    access = context.broker.access
    user = context.user.name

    def authorize(permission: str, kind: str, name: str, routing_key: str = "") -> None:
        access.check(user, vhost.name, permission, kind, name, routing_key)

    return authorize


def _exchange_param(context: Context, key: str) -> str:
    """An exchange name from the path; "amq.default" is the default one."""
    name = context.param(key)
    return "" if name == DEFAULT_EXCHANGE_ALIAS else name


async def _apply_durably(
    context: Context, change: Callable[..., object], *args: Any, **kwargs: Any
) -> None:
    """Make a change with the broker's own call (its refusals answered as the
    API answers them), and answer once the definitions file holds it."""
    try:
        change(*args, **kwargs)
    except AmqpError as error:
        raise _direct_failure(error) from error
    await context.durably_saved()


# -- request bodies ------------------------------------------------------------


async def _body(context: Context) -> dict[str, Any]:
    """The request's JSON object, decoded as rabbit_mgmt_util:decode does:
    empty, "null" and JSON literals are {}, a string is refused with
    RabbitMQ's hint, anything else that is not an object is not_json."""
    raw = await context.request.body()
    text = raw.strip()
    if text in (b"", b"null", b"undefined"):
        return {}
    try:
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request("not_json") from error
    if isinstance(value, dict):
        return value
    if value is None or isinstance(value, bool):
        return {}
    if isinstance(value, str):
        raise bad_request(
            "invalid payload: the request body JSON-decoded to a string. "
            "Is the input doubly-JSON-encoded?"
        )
    raise bad_request("not_json")


def _require_keys(body: Mapping[str, Any], keys: Iterable[str]) -> None:
    missing = [key for key in keys if key not in body]
    if missing:
        raise bad_request(
            "[" + ",".join(f"{{key_missing,{key}}}" for key in missing) + "]"
        )


def _flag(body: Mapping[str, Any], key: str) -> bool:
    """A boolean field (JSON true/false or the strings "true"/"false")."""
    value = body.get(key, False)
    if value is True or value == "true":
        return True
    if value is False or value == "false":
        return False
    raise _term("not_boolean", value)


def _string(body: Mapping[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a string, not {json.dumps(value)}")
    return value


def _field_value(value: object) -> Any:
    """A JSON value as an AMQP field value (rabbit_misc:to_amqp_table):
    objects are tables (keys in RabbitMQ's order), lists arrays, null is
    refused."""
    if value is None:
        raise bad_request("null_not_allowed")
    if isinstance(value, dict):
        return _field_table(value)
    if isinstance(value, list):
        return [_field_value(item) for item in value]
    return value


def _field_table(table: Mapping[str, Any]) -> dict[str, Any]:
    # A JSON object is an Erlang map, whose keys come out sorted by bytes.
    return {
        key: _field_value(table[key])
        for key in sorted(table, key=lambda key: key.encode("utf-8"))
    }


def _arguments(body: Mapping[str, Any]) -> dict[str, Any]:
    value = body.get("arguments")
    if value is None or value == []:
        return {}
    if not isinstance(value, dict):
        raise bad_request("arguments must be a JSON object")
    return _field_table(value)


def _parse_int(value: object) -> int:
    """rabbit_misc:parse_int: an integer, a number, or a numeric string."""
    if isinstance(value, bool):
        raise _term("not_integer", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise _term("not_integer", value)


# -- field values as RabbitMQ renders them -------------------------------------


def render_value(value: object) -> Any:
    """An AMQP field value as RabbitMQ's JSON shows it (rabbit_misc:amqp_value)."""
    if isinstance(value, dict):
        return render_table(value)
    if isinstance(value, list):
        return [render_value(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return _utf8_safe(bytes(value))
    if value is None:
        return "undefined"  # void
    if isinstance(value, datetime.datetime):
        return _epoch_seconds(value)
    if isinstance(value, decimal.Decimal):
        return _decimal_float(value)
    return value


def render_table(table: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: render_value(value) for key, value in (table or {}).items()}


def _utf8_safe(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        encoded = base64.b64encode(raw).decode("ascii")
        lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
        return "Not UTF-8, base64 is: " + "\n".join(lines)


def _epoch_seconds(value: datetime.datetime) -> int:
    if value.tzinfo is None:
        return calendar.timegm(value.timetuple())
    return int(value.timestamp())


def _decimal_float(value: decimal.Decimal) -> float:
    """RabbitMQ prints a decimal {Scale, Unscaled} as "Scale.Unscaled" and
    reads that back as a float (so 1.25 shows as 2.125); we show the same."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return float(value)
    unscaled = int("".join(map(str, digits)) or "0")
    try:
        return float(f"{-exponent}.{-unscaled if sign else unscaled}")
    except ValueError:  # a negative decimal: RabbitMQ's own rendering fails
        return float(value)


# -- the binding properties key (rabbit_mgmt_format:pack_binding_props) --------


class _Atom(str):
    """An Erlang atom, for hashing."""


_M32 = 0xFFFFFFFF
_HCONST = 0x9E3779B9


def _hconst(n: int) -> int:
    return (_HCONST * n) & _M32


def _atom_hash(name: str) -> int:
    """The hash value the Erlang VM keeps for an atom (hashpjw)."""
    data = name.encode("utf-8")
    value = 0
    index = 0
    while index < len(data):
        byte = data[index]
        index += 1
        if index < len(data) and byte & 0xFE == 0xC2 and data[index] & 0xC0 == 0x80:
            byte = ((byte << 6) | (data[index] & 0x3F)) & 0xFF
            index += 1
        value = ((value << 4) + byte) & _M32
        high = value & 0xF0000000
        if high:
            value ^= high >> 24
            value ^= high
    return value


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    """Bob Jenkins' mix, on 32-bit words."""
    a = (a - b - c) & _M32
    a ^= c >> 13
    b = (b - c - a) & _M32
    b ^= (a << 8) & _M32
    c = (c - a - b) & _M32
    c ^= b >> 13
    a = (a - b - c) & _M32
    a ^= c >> 12
    b = (b - c - a) & _M32
    b ^= (a << 16) & _M32
    c = (c - a - b) & _M32
    c ^= b >> 5
    a = (a - b - c) & _M32
    a ^= c >> 3
    b = (b - c - a) & _M32
    b ^= (a << 10) & _M32
    c = (c - a - b) & _M32
    c ^= b >> 15
    return a, b, c


def _hash2(first: int, second: int, constant: int, value: int) -> int:
    return _mix((constant + first) & _M32, (constant + second) & _M32, value)[2]


def _block_hash(data: bytes, initial: int) -> int:
    a = b = _HCONST
    c = initial
    full = len(data) - len(data) % 12
    for offset in range(0, full, 12):
        a = (a + int.from_bytes(data[offset : offset + 4], "little")) & _M32
        b = (b + int.from_bytes(data[offset + 4 : offset + 8], "little")) & _M32
        c = (c + int.from_bytes(data[offset + 8 : offset + 12], "little")) & _M32
        a, b, c = _mix(a, b, c)
    tail = data[full:] + bytes(12 - (len(data) - full))
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    # The first byte of c holds the length.
    c = (c + len(data) + (int.from_bytes(tail[8:12], "little") << 8)) & _M32
    return _mix(a, b, c)[2]


_NIL_TAG = 2  # NIL_DEF, mixed in for an empty list that follows other terms


def erlang_phash2(term: object) -> int:
    """erlang:phash2(Term, 1 bsl 32) for the terms an argument table is made
    of: atoms (_Atom), binaries (bytes), integers, floats, tuples and lists."""
    value = 0
    pending: list[object] = [term]
    while pending:
        item = pending.pop()
        if isinstance(item, _Atom):
            atom = _atom_hash(item)
            value = atom if value == 0 else _hash2(atom, 0, _hconst(3), value)
        elif isinstance(item, bytes):
            constant = (_hconst(13) + value) & _M32
            value = _block_hash(item, constant) if item else constant
        elif isinstance(item, bool):
            raise TypeError("booleans are atoms here")
        elif isinstance(item, int):
            value = _hash_integer(item, value)
        elif isinstance(item, float):
            bits = struct.unpack("<Q", struct.pack("<d", item or 0.0))[0]
            value = _hash2(bits >> 32, bits & _M32, _hconst(12), value)
        elif isinstance(item, tuple):
            value = _hash2(len(item), 0, _hconst(9), value)
            pending.extend(reversed(item))
        elif isinstance(item, list):
            value = _hash_list_head(item, value, pending)
        else:
            raise TypeError(f"cannot hash {type(item).__name__}")
    return value


def _hash_integer(number: int, value: int) -> int:
    if -(1 << 27) <= number < (1 << 27):
        if number < 0:
            value = _hash2(-number, 0, _HCONST, value)
        return _hash2(number & _M32, 0, _HCONST, value)
    constant = _hconst(10) if number < 0 else _hconst(11)
    magnitude = abs(number)
    while True:  # 64-bit digits, low 32 bits then high
        digit = magnitude & 0xFFFFFFFFFFFFFFFF
        magnitude >>= 64
        value = _hash2(digit & _M32, digit >> 32, constant, value)
        if not magnitude:
            return value


def _hash_list_head(items: list[object], value: int, pending: list[object]) -> int:
    if not items:
        return 3468870702 if value == 0 else _hash2(_NIL_TAG, 0, _hconst(2), value)
    # Leading bytes (a string) are hashed four at a time.
    index = count = packed = 0
    while index < len(items):
        item = items[index]
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 256:
            break
        packed = ((packed << 8) + item) & _M32
        if count == 3:
            value = _hash2(packed, 0, _hconst(4), value)
            count = packed = 0
        else:
            count += 1
        index += 1
    if count:
        value = _hash2(packed, 0, _hconst(4), value)
    if index == len(items):
        pending.append([])
    else:
        pending.append(items[index + 1 :])
        pending.append(items[index])
    return value


def _typed_field(value: object) -> tuple[_Atom, object]:
    """A field value as the {Type, Value} RabbitMQ keeps. Integers are
    `long`, as RabbitMQ types a JSON or definitions number (a client may
    have sent a smaller type over AMQP; that type is not kept here)."""
    if isinstance(value, bool):
        return _Atom("bool"), _Atom("true" if value else "false")
    if isinstance(value, int):
        return _Atom("long"), value
    if isinstance(value, float):
        return _Atom("double"), value
    if isinstance(value, str):
        return _Atom("longstr"), value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return _Atom("longstr"), bytes(value)
    if isinstance(value, dict):
        return _Atom("table"), _table_term(value)
    if isinstance(value, list):
        return _Atom("array"), [_typed_field(item) for item in value]
    if isinstance(value, datetime.datetime):
        return _Atom("timestamp"), _epoch_seconds(value)
    if isinstance(value, decimal.Decimal):
        sign, digits, exponent = value.as_tuple()
        unscaled = int("".join(map(str, digits)) or "0")
        scale = -exponent if isinstance(exponent, int) else 0
        return _Atom("decimal"), (scale, -unscaled if sign else unscaled)
    return _Atom("void"), _Atom("undefined")


def _table_term(table: Mapping[str, Any]) -> list[tuple[bytes, _Atom, object]]:
    return [(key.encode("utf-8"), *_typed_field(value)) for key, value in table.items()]


def _args_hash(arguments: Mapping[str, Any]) -> str:
    # RabbitMQ keeps binding arguments sorted by key (sort_field_table).
    ordered = sorted(arguments.items(), key=lambda item: item[0].encode("utf-8"))
    digest = erlang_phash2(_table_term(dict(ordered)))
    return base64.urlsafe_b64encode(digest.to_bytes(4, "big")).decode().rstrip("=")


_UNRESERVED = re.compile(rb"[A-Za-z0-9._~-]")


def _quote_plus(text: str) -> str:
    """rabbit_http_util:quote_plus ("~" kept, space as "+")."""
    out = []
    for byte in text.encode("utf-8"):
        char = bytes([byte])
        if _UNRESERVED.fullmatch(char):
            out.append(char.decode())
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _quote_binding(text: str) -> str:
    return _quote_plus(text).replace("~", "%7E")


def properties_key(routing_key: str, arguments: Mapping[str, Any]) -> str:
    """How RabbitMQ names a binding in paths: its routing key, "~" for an
    empty one, and "~" and a hash of its arguments when it has any."""
    if not arguments:
        return "~" if routing_key == "" else _quote_binding(routing_key)
    return _quote_binding(routing_key) + "~" + _quote_binding(_args_hash(arguments))


def _tokenise(text: str) -> list[str]:
    """rabbit_mgmt_format:tokenise: split on "~" (a trailing one adds nothing)."""
    tokens = []
    while text:
        head, tilde, text = text.partition("~")
        tokens.append(head)
        if not tilde:
            break
    return tokens


# -- messages ------------------------------------------------------------------


def _property_flags(raw: bytes) -> int:
    return int.from_bytes(raw[:2], "big") if len(raw) >= 2 else 0


def properties_json(message: Message) -> dict[str, Any] | list[Any]:
    """A message's properties as RabbitMQ's get shows them: only those set,
    in reverse record order, and [] (an empty Erlang list) when none are."""
    flags = _property_flags(message.properties_raw)
    if not flags & 0xFFFC:
        return []
    try:
        properties = message.properties
    except ValueError:
        return []
    shown: dict[str, Any] = {}
    for name, flag in reversed(PROPERTY_FLAGS):
        if not flags & flag:
            continue
        value = getattr(properties, "message_type" if name == "type" else name)
        if name == "headers":
            value = render_table(value if isinstance(value, dict) else {})
        elif name == "timestamp" and isinstance(value, datetime.datetime):
            value = _epoch_seconds(value)
        elif isinstance(value, bytes | bytearray):
            value = _utf8_safe(bytes(value))
        shown[name] = value
    return shown


def _basic_properties(value: object) -> bytes:
    """rabbit_mgmt_format:to_basic_properties: integers where AMQP has
    numbers, strings elsewhere, headers a table; encoded for the wire."""
    if not isinstance(value, dict):
        raise bad_request("properties must be a JSON object")
    fields: dict[str, Any] = {}
    for name, _ in PROPERTY_FLAGS:
        if name not in value:
            continue
        item = value[name]
        if name == "headers":
            if item == []:  # an empty Erlang list: no headers
                continue
            if not isinstance(item, dict):
                raise _term("not_table", name)
            fields[name] = _field_table(item)
        elif name in INTEGER_PROPERTIES:
            if isinstance(item, bool) or not isinstance(item, int):
                raise _term("not_int", name)
            limit = 1 << 64 if name == "timestamp" else 256
            if not 0 <= item < limit:
                raise _term("out_of_range", name)
            fields[name] = (
                datetime.datetime.fromtimestamp(item, datetime.UTC)
                if name == "timestamp"
                else item
            )
        else:
            if not isinstance(item, str):
                raise _term("not_string", name)
            fields["message_type" if name == "type" else name] = item
    try:
        return commands.Basic.Properties(**fields).marshal()
    except (TypeError, ValueError, struct.error) as error:
        raise bad_request(f"invalid properties: {error}") from error


def _payload(payload: str, encoding: object) -> bytes:
    if encoding == "string":
        return payload.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise _term("not_base64", payload) from error
    raise _term("unsupported_encoding", encoding)


# -- queues --------------------------------------------------------------------


@attrs.define
class MessageTally:
    """What some messages of a queue hold: count, bytes, persistent ones."""

    count: int = 0
    body_bytes: int = 0
    properties_bytes: int = 0
    persistent: int = 0
    persistent_bytes: int = 0

    def add(self, entry: QueueEntry) -> None:
        message = entry.message
        self.count += 1
        self.body_bytes += len(message.body)
        self.properties_bytes += len(message.properties_raw)
        if entry.persisted:
            self.persistent += 1
            self.persistent_bytes += len(message.body)


def unacked_by_queue(server: BrokerServer) -> dict[Queue, MessageTally]:
    """Every queue's unacknowledged messages, in one pass over the channels."""
    held: dict[Queue, MessageTally] = {}
    for connection in server.connections:
        for handler in list(connection.channels.values()):
            for unacked in handler.channel.unacked.values():
                queue = unacked.queue
                tally = held.get(queue)
                if tally is None:
                    tally = held[queue] = MessageTally()
                tally.add(unacked.entry)
    return held


def _unacked_of(queue: Queue) -> MessageTally:
    """A queue's unacked messages held by its consumers' channels (a
    basic.get's unacked message on another channel is not seen here)."""
    held = MessageTally()
    for channel in {consumer.channel for consumer in queue.consumers}:
        for unacked in channel.unacked.values():
            if unacked.queue is queue:
                held.add(unacked.entry)
    return held


def _ready_profile(queue: Queue) -> MessageTally:
    """The ready messages' persistent counts and properties bytes, exact up
    to PROFILE_SAMPLE messages, extrapolated from the first ones beyond."""
    sample = MessageTally()
    for entry in itertools.islice(queue.messages, PROFILE_SAMPLE):
        sample.add(entry)
    total = queue.message_count
    if not sample.count or sample.count == total:
        return sample
    scale = total / sample.count
    return MessageTally(
        count=total,
        body_bytes=queue.ready_bytes,
        properties_bytes=round(sample.properties_bytes * scale),
        persistent=round(sample.persistent * scale),
        persistent_bytes=round(sample.persistent_bytes * scale),
    )


def _consumer_has_room(consumer: Consumer) -> bool:
    channel = consumer.channel
    if consumer.no_ack:
        return True
    if consumer.prefetch_count and consumer.unacked >= consumer.prefetch_count:
        return False
    return not (
        channel.global_prefetch_count
        and channel.consumer_unacked >= channel.global_prefetch_count
    )


def _head_timestamp(queue: Queue) -> int | None:
    if not queue.messages:
        return None
    message = queue.messages[0].message
    if not _property_flags(message.properties_raw) & 0x0040:
        return None
    try:
        timestamp = message.properties.timestamp
    except ValueError:
        return None
    return _epoch_seconds(timestamp) if timestamp else None


def _connection_details(connection: ConnectionHandler) -> dict[str, Any]:
    peer_host, peer_port, _, _ = _addresses(connection)
    return {"name": connection.name, "peer_host": peer_host, "peer_port": peer_port}


def _owner_details(queue: Queue) -> dict[str, Any]:
    owner = queue.exclusive_owner
    if isinstance(owner, ConnectionHandler):
        return {"owner_pid_details": _connection_details(owner)}
    return {}


def queue_json(
    queue: Queue,
    unacked: Mapping[Queue, MessageTally] | None = None,
    *,
    node: str = "",
    vhost: VHost | None = None,
    details: bool = False,
) -> dict[str, Any]:
    """A queue as /api/queues shows it. `unacked` is unacked_by_queue() of
    the server (else the consumers' channels are looked at); `details` adds
    what the single-queue GET has (consumer_details ...)."""
    held = (
        unacked.get(queue, MessageTally())
        if unacked is not None
        else _unacked_of(queue)
    )
    ready = _ready_profile(queue)
    ready_count = queue.message_count
    unacked_count = queue.unacked_count
    policy = (
        effective_policy(vhost.policies, queue.name, "queues")
        if vhost is not None
        else None
    )
    consumers = list(queue.consumers)
    if consumers:
        # Instantaneous, not RabbitMQ's time average: 1.0 when the queue
        # could hand a message to a consumer now, 0.0 when all are full.
        utilisation: float | int = (
            1.0 if not ready_count or any(map(_consumer_has_room, consumers)) else 0.0
        )
    else:
        utilisation = 0
    exclusive_consumer = next((c.tag for c in consumers if c.exclusive), None)
    single_active = (
        consumers[0].tag if queue.single_active_consumer and consumers else None
    )
    message_bytes = queue.ready_bytes + held.body_bytes
    memory = (
        MEMORY_PER_QUEUE_BYTES
        + (ready_count + held.count) * MEMORY_PER_MESSAGE_BYTES
        + message_bytes
        + ready.properties_bytes
        + held.properties_bytes
    )
    persistent = (ready.persistent + held.persistent) if queue.durable else 0
    persistent_bytes = (
        (ready.persistent_bytes + held.persistent_bytes) if queue.durable else 0
    )
    document: dict[str, Any] = {
        "arguments": render_table(queue.arguments),
        "auto_delete": queue.auto_delete,
        "consumer_capacity": utilisation,
        "consumer_utilisation": utilisation,
        "consumers": len(consumers),
        "durable": queue.durable,
        "effective_policy_definition": dict(policy.definition) if policy else {},
        "exclusive": queue.exclusive,
        "exclusive_consumer_tag": exclusive_consumer,
        "head_message_timestamp": _head_timestamp(queue),
        "memory": memory,
        "message_bytes": message_bytes,
        "message_bytes_paged_out": 0,
        "message_bytes_persistent": persistent_bytes,
        "message_bytes_ram": message_bytes,
        "message_bytes_ready": queue.ready_bytes,
        "message_bytes_unacknowledged": held.body_bytes,
        **queue_message_stats(queue),
        "messages": ready_count + unacked_count,
        "messages_paged_out": 0,
        "messages_persistent": persistent,
        "messages_ram": ready_count + unacked_count,
        "messages_ready": ready_count,
        "messages_ready_ram": ready_count,
        "messages_unacknowledged": unacked_count,
        "messages_unacknowledged_ram": unacked_count,
        "name": queue.name,
        "node": node,
        "operator_policy": None,
        "policy": policy.name if policy else None,
        "recoverable_slaves": None,
        "single_active_consumer_tag": single_active,
        "state": "running",
        "type": "classic",
        "vhost": queue.vhost_name,
        **_owner_details(queue),
    }
    if details:
        document = {
            "consumer_details": [consumer_json(c, node) for c in consumers],
            **document,
            "deliveries": [],
            "incoming": [],
        }
    return document


def _find_queue(vhost: VHost, name: str) -> Queue:
    queue = vhost.queues.get(name)
    if queue is None:
        raise not_found()
    return queue


def _queue_name(context: Context) -> str:
    name = context.param("name")
    size = len(name.encode("utf-8"))
    if size > MAX_QUEUE_NAME_BYTES:
        raise bad_request(f"queue should be less than 255 bytes, actually was {size}\n")
    return name


async def list_queues(context: Context) -> Any:
    return _queues_reply(context, _object_vhosts(context))


async def list_vhost_queues(context: Context) -> Any:
    return _queues_reply(context, [_path_vhost(context)])


def _queues_reply(context: Context, vhosts: list[VHost]) -> Any:
    unacked = unacked_by_queue(context.server)
    node = context.node_name
    items = [
        queue_json(queue, unacked, node=node, vhost=vhost)
        for vhost in vhosts
        for queue in vhost.queues.values()
    ]
    return reply_list(context, items, ("vhost", "name"), paginate=True)


async def get_queue(context: Context) -> Any:
    vhost = _path_vhost(context)
    queue = _find_queue(vhost, context.param("name"))
    document = queue_json(
        queue,
        unacked_by_queue(context.server),
        node=context.node_name,
        vhost=vhost,
        details=True,
    )
    return reply_item(context, document)


async def put_queue(context: Context) -> Response:
    _check_vhost_authorised(context, context.param("vhost"))
    name = _queue_name(context)
    vhost = _write_vhost(context)
    body = await _body(context)
    durable = _flag(body, "durable")
    auto_delete = _flag(body, "auto_delete")
    arguments = _arguments(body)
    existed = name in vhost.queues
    # No connection owns it: an API queue is never exclusive (RabbitMQ
    # ignores "exclusive" here too).
    await _apply_durably(
        context,
        vhost.declare_queue,
        name,
        owner=None,
        durable=durable,
        auto_delete=auto_delete,
        arguments=arguments,
        authorize=_authorizer(context, vhost),
    )
    return no_content() if existed else created()


async def delete_queue(context: Context) -> Response:
    vhost = _path_vhost(context)
    queue = _find_queue(vhost, context.param("name"))
    query = context.request.query_params
    await _apply_durably(
        context,
        vhost.delete_queue,
        queue.name,
        owner=None,
        if_unused=query.get("if-unused") == "true",
        if_empty=query.get("if-empty") == "true",
        authorize=_authorizer(context, vhost),
    )
    return no_content()


async def purge_queue(context: Context) -> Response:
    vhost = _path_vhost(context)
    queue = _find_queue(vhost, context.param("name"))
    try:
        vhost.purge_queue(queue.name, owner=None, authorize=_authorizer(context, vhost))
    except AmqpError as error:
        raise _direct_failure(error) from error
    return no_content()


class _NoDeliveries:
    """The sink of the API's get channel, which never has consumers."""

    def can_accept(self) -> bool:
        return False

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        raise AssertionError("the API's get channel has no consumers")

    def consumer_cancelled(self, consumer_tag: str) -> None:
        pass


def _got_json(
    entry: QueueEntry, message_count: int, base64_only: bool, truncate: int | None
) -> dict[str, Any]:
    message = entry.message
    body = message.body
    payload = body if truncate is None else body[: max(truncate, 0)]
    text: str | None = None
    if not base64_only:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return {
        "payload_bytes": len(body),
        "redelivered": entry.redelivered,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "message_count": message_count,
        "properties": properties_json(message),
        "payload": text if text is not None else base64.b64encode(payload).decode(),
        "payload_encoding": "string" if text is not None else "base64",
    }


async def get_messages(context: Context) -> Any:
    body = await _body(context)
    _require_keys(body, ("ackmode", "count", "encoding"))
    vhost = _channel_vhost(context)
    ackmode = body["ackmode"]
    if ackmode not in ACKMODES:
        # RabbitMQ answers an unknown ackmode with an empty 500.
        raise bad_request(
            f"Unsupported ackmode {json.dumps(ackmode)}. Please use one of "
            + ", ".join(ACKMODES)
            + "."
        )
    count = _parse_int(body["count"])
    if body["encoding"] not in ("auto", "base64"):
        raise bad_request("Unsupported encoding. Please use auto or base64.")
    truncate = _parse_int(body["truncate"]) if "truncate" in body else None
    name = context.param("name")
    try:
        _authorizer(context, vhost)(READ, "queue", name)
        queue = vhost.get_queue(name, owner=None)
    except AmqpError as error:
        raise _channel_failure(error) from error
    # A channel of its own, as RabbitMQ's: what it holds unacked goes back
    # (redelivered) when it closes, after the answer is made.
    channel = Channel(_NoDeliveries(), owner=None)
    got = []
    try:
        for _ in range(max(count, 0)):
            taken = channel.get(queue, ackmode == "ack_requeue_false")
            if taken is None:
                break
            delivery_tag, entry = taken
            got.append(
                _got_json(
                    entry, queue.message_count, body["encoding"] == "base64", truncate
                )
            )
        if ackmode.startswith("reject_"):
            requeue = ackmode == "reject_requeue_true"
            for delivery_tag in list(channel.unacked):
                channel.reject(delivery_tag, False, requeue)
    finally:
        channel.close()
    return got


async def queue_bindings(context: Context) -> Any:
    vhost = _path_vhost(context)
    name = context.param("name")
    queue = vhost.queues.get(name)
    items = [_implicit_binding(vhost.name, name)]
    if queue is not None:
        items.extend(
            binding
            for binding in _vhost_bindings(vhost, implicit=False)
            if binding["destination_type"] == "queue" and binding["destination"] == name
        )
    return reply_list(context, items, BINDING_SORTS)


# -- exchanges -----------------------------------------------------------------


def exchange_json(
    vhost: VHost, exchange: Exchange, *, details: bool = False
) -> dict[str, Any]:
    """An exchange as /api/exchanges shows it."""
    document: dict[str, Any] = {
        "arguments": render_table(exchange.arguments),
        "auto_delete": exchange.auto_delete,
        "durable": exchange.durable,
        "internal": exchange.internal,
        "name": exchange.name,
        "type": exchange.type_name,
        "vhost": vhost.name,
    }
    if exchange.name in BUILTIN_EXCHANGES:
        document["user_who_performed_action"] = "rmq-internal"
    if exchange.name:
        policy = effective_policy(vhost.policies, exchange.name, "exchanges")
        if policy is not None:
            document["policy"] = policy.name
    if details:
        document["incoming"] = []
        document["outgoing"] = []
    return document


def _find_exchange(vhost: VHost, name: str) -> Exchange:
    exchange = vhost.exchanges.get(name)
    if exchange is None:
        raise not_found()
    return exchange


async def list_exchanges(context: Context) -> Any:
    return _exchanges_reply(context, _object_vhosts(context))


async def list_vhost_exchanges(context: Context) -> Any:
    return _exchanges_reply(context, [_path_vhost(context)])


def _exchanges_reply(context: Context, vhosts: list[VHost]) -> Any:
    items = [
        exchange_json(vhost, exchange)
        for vhost in vhosts
        for exchange in vhost.exchanges.values()
    ]
    return reply_list(context, items, ("vhost", "name"), paginate=True)


async def get_exchange(context: Context) -> Any:
    vhost = _path_vhost(context)
    exchange = _find_exchange(vhost, _exchange_param(context, "name"))
    return reply_item(context, exchange_json(vhost, exchange, details=True))


async def put_exchange(context: Context) -> Response:
    vhost = _write_vhost(context)
    name = _exchange_param(context, "name")
    body = await _body(context)
    type_name = body.get("type", "direct")
    durable = _flag(body, "durable")
    auto_delete = _flag(body, "auto_delete")
    internal = _flag(body, "internal")
    arguments = _arguments(body)
    existed = name in vhost.exchanges
    await _apply_durably(
        context,
        vhost.declare_exchange,
        name,
        type_name if isinstance(type_name, str) else json.dumps(type_name),
        durable=durable,
        auto_delete=auto_delete,
        internal=internal,
        arguments=arguments,
        authorize=_authorizer(context, vhost),
    )
    return no_content() if existed else created()


async def delete_exchange(context: Context) -> Response:
    vhost = _path_vhost(context)
    exchange = _find_exchange(vhost, _exchange_param(context, "name"))
    await _apply_durably(
        context,
        vhost.delete_exchange,
        exchange.name,
        if_unused=context.request.query_params.get("if-unused") == "true",
        authorize=_authorizer(context, vhost),
    )
    return no_content()


async def exchange_source_bindings(context: Context) -> Any:
    return _exchange_bindings(context, "source")


async def exchange_destination_bindings(context: Context) -> Any:
    return _exchange_bindings(context, "destination")


def _exchange_bindings(context: Context, end: str) -> Any:
    name = context.param("vhost")
    _check_vhost_authorised(context, name)
    vhost = context.broker.vhosts.get(name)
    if vhost is None:
        return []  # RabbitMQ lists nothing rather than answer 404 here
    exchange_name = _exchange_param(context, "name")
    items = [
        binding
        for binding in _vhost_bindings(vhost, implicit=end == "source")
        if binding[end] == exchange_name
        and (end == "source" or binding["destination_type"] == "exchange")
    ]
    return reply_list(context, items, BINDING_SORTS)


def _publish_failure(error: AmqpError) -> ApiError:
    """A publish's channel error: RabbitMQ's publish learns of it when the
    channel closes, and answers 400 with the code and text."""
    return bad_request(_code_and_text(error))


def _route(vhost: VHost, exchange: Exchange, message: Message) -> tuple[bool, bool]:
    """Route and enqueue a message as a channel's publish does (CC/BCC keys,
    delayed exchanges, alternate exchanges, persistence into durable
    queues by queue.enqueue). Returns (routed, accepted by every queue)."""
    message, queues = vhost.resolve_publish(exchange, message)
    if isinstance(queues, Held):
        vhost.hold(queues.exchange, message, queues.delay_ms, queues.extra_keys)
        return True, True  # held, never returned (as the plugin)
    accepted = True
    for queue in queues:
        queue.stat_publish += 1  # counted as a channel's publish counts it
        accepted = queue.enqueue(message) and accepted
    return bool(queues), accepted


async def publish(context: Context) -> Any:
    body = await _body(context)
    _require_keys(body, ("routing_key", "properties", "payload", "payload_encoding"))
    payload = body["payload"]
    if not isinstance(payload, str):
        raise bad_request("payload_not_string")
    vhost = _channel_vhost(context)
    properties = _basic_properties(body["properties"])
    data = _payload(payload, body["payload_encoding"])
    routing_key = body["routing_key"]
    if not isinstance(routing_key, str):
        raise bad_request("routing_key must be a string")
    name = _exchange_param(context, "name")
    server = context.server
    store = server.store
    generation_before = store.generation
    try:
        authorize = _authorizer(context, vhost)
        authorize(WRITE, "exchange", name)
        exchange = vhost.publish_target(name)
        if exchange.type_name == "topic":
            authorize(WRITE, TOPIC, name, routing_key)
        message = Message(name, routing_key, properties, data)
        routed, accepted = _route(vhost, exchange, message)
    except AmqpError as error:
        raise _publish_failure(error) from error
    if not accepted:
        # A queue with x-overflow reject-publish refused it: RabbitMQ's
        # publisher gets a nack, and the API says so.
        raise bad_request("rejected Unable to publish message. Check queue limits.")
    generation = store.generation
    if generation != generation_before:
        # Persistent copies went to durable queues: answer once they are on
        # disk, as RabbitMQ answers after its publisher confirm.
        with trio.move_on_after(PUBLISH_CONFIRM_TIMEOUT_S):
            while store.committed_generation < generation and not server.failed:
                await server.wait_store_committed()
        if store.committed_generation < generation:
            raise ApiError(
                500, "internal_server_error", "the message was not written to disk"
            )
    return {"routed": routed}


# -- bindings ------------------------------------------------------------------

BINDING_SORTS = (
    "vhost",
    "source",
    "type",
    "destination",
    "routing_key",
    "properties_key",
)


def binding_json(
    vhost_name: str,
    source: str,
    destination: str,
    destination_type: str,
    routing_key: str,
    arguments: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost_name,
        "destination": destination,
        "destination_type": destination_type,
        "routing_key": routing_key,
        "arguments": render_table(arguments),
        "properties_key": properties_key(routing_key, arguments),
    }


def _implicit_binding(vhost_name: str, queue_name: str) -> dict[str, Any]:
    """The default exchange's binding of every queue, by its name."""
    return binding_json(vhost_name, "", queue_name, "queue", queue_name, {})


def _vhost_bindings(vhost: VHost, *, implicit: bool = True) -> Iterator[dict[str, Any]]:
    if implicit:
        for name in vhost.queues:
            yield _implicit_binding(vhost.name, name)
    for source in list(vhost.exchanges.values()):
        for destination, routing_key, arguments in source.iter_bindings():
            kind = "queue" if isinstance(destination, Queue) else "exchange"
            yield binding_json(
                vhost.name,
                source.name,
                getattr(destination, "name", ""),
                kind,
                routing_key,
                arguments,
            )


async def list_bindings(context: Context) -> Any:
    items = [
        binding
        for vhost in _object_vhosts(context)
        for binding in _vhost_bindings(vhost)
    ]
    return reply_list(context, items, BINDING_SORTS)


async def list_vhost_bindings(context: Context) -> Any:
    items = list(_vhost_bindings(_path_vhost(context)))
    return reply_list(context, items, BINDING_SORTS)


def _destination_type(context: Context) -> str:
    dtype = context.request.path_params["dtype"]
    if dtype not in ("q", "e"):
        raise not_found()
    return "queue" if dtype == "q" else "exchange"


def _pair_bindings(
    vhost: VHost, source: str, destination: str, destination_type: str
) -> list[dict[str, Any]]:
    if source == "" and destination_type == "queue":
        return [_implicit_binding(vhost.name, destination)]
    return [
        binding
        for binding in _vhost_bindings(vhost, implicit=False)
        if binding["source"] == source
        and binding["destination"] == destination
        and binding["destination_type"] == destination_type
    ]


async def pair_bindings(context: Context) -> Any:
    destination_type = _destination_type(context)
    name = context.param("vhost")
    _check_vhost_authorised(context, name)
    vhost = context.broker.vhosts.get(name)
    if vhost is None:
        raise not_found()
    items = _pair_bindings(
        vhost,
        _exchange_param(context, "source"),
        _destination_param(context, destination_type),
        destination_type,
    )
    return reply_list(context, items, BINDING_SORTS)


def _destination_param(context: Context, destination_type: str) -> str:
    if destination_type == "exchange":
        return _exchange_param(context, "destination")
    return context.param("destination")


async def create_binding(context: Context) -> Response:
    destination_type = _destination_type(context)
    vhost = _write_vhost(context)
    body = await _body(context)
    routing_key = _string(body, "routing_key")
    arguments = _arguments(body)
    source = _exchange_param(context, "source")
    destination = _destination_param(context, destination_type)
    authorize = _authorizer(context, vhost)
    if destination_type == "queue":
        await _apply_durably(
            context,
            vhost.bind_queue,
            destination,
            source,
            routing_key,
            arguments,
            owner=None,
            authorize=authorize,
        )
    else:
        await _apply_durably(
            context,
            vhost.bind_exchange,
            destination,
            source,
            routing_key,
            arguments,
            authorize=authorize,
        )
    # Relative to the request's path, as RabbitMQ's Location.
    location = (
        _quote_plus(context.param("destination"))
        + "/"
        + _quote_plus(properties_key(routing_key, arguments))
    )
    return Response(status_code=201, headers={"Location": location})


def _find_binding(context: Context) -> tuple[VHost, dict[str, Any], dict[str, Any]]:
    """The binding the path names by its properties key, with its raw
    arguments; 404 when there is none."""
    destination_type = _destination_type(context)
    name = context.param("vhost")
    _check_vhost_authorised(context, name)
    vhost = context.broker.vhosts.get(name)
    if vhost is None:
        raise not_found()
    source = _exchange_param(context, "source")
    destination = _destination_param(context, destination_type)
    # The segment as the router decoded it: the key inside is quoted once
    # more, and "~" separates it from the arguments' hash.
    tokens = _tokenise(context.request.path_params["props"])
    if len(tokens) not in (1, 2):
        raise not_found()
    routing_key = unquote_plus(tokens[0])
    wanted_hash = unquote_plus(tokens[1]) if len(tokens) == 2 else None
    exchange = vhost.exchanges.get(source)
    if source == "" and destination_type == "queue":
        if (
            wanted_hash is None
            and routing_key == destination
            and destination in vhost.queues
        ):
            return vhost, _implicit_binding(vhost.name, destination), {}
        raise not_found()
    target = (
        vhost.queues.get(destination)
        if destination_type == "queue"
        else vhost.exchanges.get(destination)
    )
    if exchange is None or target is None:
        raise not_found()
    for bound_to, key, arguments in exchange.iter_bindings():
        if bound_to is not target or key != routing_key:
            continue
        if (wanted_hash is None and not arguments) or (
            wanted_hash is not None
            and arguments
            and _args_hash(arguments) == wanted_hash
        ):
            document = binding_json(
                vhost.name, source, destination, destination_type, key, arguments
            )
            return vhost, document, arguments
    raise not_found()


async def get_binding(context: Context) -> Any:
    _, document, _ = _find_binding(context)
    return reply_item(context, document)


async def delete_binding(context: Context) -> Response:
    vhost, document, arguments = _find_binding(context)
    authorize = _authorizer(context, vhost)
    keys = (document["destination"], document["source"], document["routing_key"])
    if document["destination_type"] == "queue":
        await _apply_durably(
            context,
            vhost.unbind_queue,
            *keys,
            arguments,
            owner=None,
            authorize=authorize,
        )
    else:
        await _apply_durably(
            context, vhost.unbind_exchange, *keys, arguments, authorize=authorize
        )
    return no_content()


# -- connections, channels, consumers ------------------------------------------


def _addresses(connection: ConnectionHandler) -> tuple[str, int, str, int]:
    """peer host and port, local host and port, from "peer -> local"."""
    peer, _, local = connection.name.partition(" -> ")
    peer_host, _, peer_port = peer.rpartition(":")
    host, _, port = local.rpartition(":")
    return (
        peer_host.strip("[]"),
        int(peer_port) if peer_port.isdigit() else 0,
        host.strip("[]"),
        int(port) if port.isdigit() else 0,
    )


def _open_connections(context: Context) -> list[ConnectionHandler]:
    """Connections past connection.open (they have a user and a vhost)."""
    return [c for c in list(context.server.connections) if c.opened]


def connection_json(
    connection: ConnectionHandler, node: str, *, single: bool = False
) -> dict[str, Any]:
    """A connection as /api/connections shows it (`single`: as its own GET,
    where RabbitMQ shows the TLS fields of a plain connection as "", not
    null)."""
    peer_host, peer_port, host, port = _addresses(connection)
    unset = "" if single else None
    protocol = connection.protocol
    client_properties = render_table(connection.client_properties)
    tls = connection.tls
    document: dict[str, Any] = {
        "auth_mechanism": connection.auth_mechanism,
        "channel_max": protocol.channel_max,
        "channels": len(connection.channels),
        "client_properties": client_properties,
        "connected_at": connection.connected_at,
        "frame_max": protocol.frame_max,
        "host": host,
        "name": connection.name,
        "node": node,
        "peer_cert_issuer": unset,
        "peer_cert_subject": unset,
        "peer_cert_validity": unset,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "port": port,
        "protocol": "AMQP 0-9-1",
        # Bytes waiting to be written to the socket (RabbitMQ counts sends).
        "send_pend": protocol.pending_output,
        "ssl": tls,
        "ssl_cipher": unset,
        "ssl_hash": unset,
        "ssl_key_exchange": unset,
        "ssl_protocol": unset,
        "state": "running",
        "timeout": protocol.heartbeat,
        "type": "network",
        "user": connection.username,
        "user_who_performed_action": connection.username,
        "vhost": connection.vhost.name,
    }
    provided = connection.client_properties.get("connection_name")
    if isinstance(provided, str | bytes):
        document["user_provided_name"] = render_value(provided)
    if tls and isinstance(connection.stream, trio.SSLStream):
        cipher = connection.stream.cipher()
        document["ssl_protocol"] = connection.stream.version() or ""
        document["ssl_cipher"] = cipher[0] if cipher else ""
    return document


def _channel_name(handler: ChannelHandler) -> str:
    return f"{handler.connection.name} ({handler.channel_id})"


def channel_json(handler: ChannelHandler, node: str) -> dict[str, Any]:
    connection = handler.connection
    channel = handler.channel
    tx = handler.tx or []
    return {
        "acks_uncommitted": sum(
            len(work.taken) for work in tx if isinstance(work, TxAck)
        ),
        "confirm": handler.confirm_mode,
        "connection_details": _connection_details(connection),
        "consumer_count": len(channel.consumers),
        "global_prefetch_count": channel.global_prefetch_count,
        "messages_unacknowledged": len(channel.unacked),
        "messages_uncommitted": sum(1 for work in tx if isinstance(work, TxPublish)),
        "messages_unconfirmed": handler.unconfirmed_count,
        "name": _channel_name(handler),
        "node": node,
        "number": handler.channel_id,
        "pending_raft_commands": 0,
        "prefetch_count": channel.prefetch_count,
        "state": "running",
        "transactional": handler.tx is not None,
        "user": connection.username,
        "user_who_performed_action": connection.username,
        "vhost": connection.vhost.name,
    }


def consumer_json(consumer: Consumer, node: str) -> dict[str, Any]:
    queue = consumer.queue
    sink = consumer.channel.sink
    channel_details: dict[str, Any] = {}
    if isinstance(sink, ChannelHandler):
        peer_host, peer_port, _, _ = _addresses(sink.connection)
        channel_details = {
            "connection_name": sink.connection.name,
            "name": _channel_name(sink),
            "node": node,
            "number": sink.channel_id,
            "peer_host": peer_host,
            "peer_port": peer_port,
            "user": sink.connection.username,
        }
    # With single-active-consumer only the first consumer is fed.
    active = not queue.single_active_consumer or (
        bool(queue.consumers) and queue.consumers[0] is consumer
    )
    return {
        "arguments": render_table(consumer.arguments),
        "ack_required": not consumer.no_ack,
        "active": active,
        "activity_status": "up" if active else "waiting",
        "channel_details": channel_details,
        "consumer_tag": consumer.tag,
        "exclusive": consumer.exclusive,
        "prefetch_count": consumer.prefetch_count,
        "queue": {"name": queue.name, "vhost": queue.vhost_name},
    }


def _visible_connections(
    context: Context, vhost: str | None = None
) -> list[ConnectionHandler]:
    """rabbit_mgmt_util:filter_conn_ch_list: administrators and monitoring
    users see every connection, others their own."""
    monitor = _is_monitor(context)
    return [
        connection
        for connection in _open_connections(context)
        if (monitor or connection.username == context.user.name)
        and (vhost is None or connection.vhost.name == vhost)
    ]


def _find_connection(context: Context, name: str) -> ConnectionHandler | None:
    for connection in _open_connections(context):
        if connection.name == name:
            return connection
    return None


def _authorised_for(context: Context, owner: str | None, *, delete: bool) -> None:
    """RabbitMQ's is_authorized_user: a connection or channel is shown to
    monitoring users and its owner, closed by administrators and its owner."""
    allowed = _is_admin(context) if delete else _is_monitor(context)
    if not allowed and owner != context.user.name:
        raise _not_authorised("User not authorised to access object")


def _connection(context: Context, *, delete: bool = False) -> ConnectionHandler:
    connection = _find_connection(context, context.param("name"))
    _authorised_for(context, connection.username if connection else None, delete=delete)
    if connection is None:
        raise not_found()
    return connection


async def list_connections(context: Context) -> Any:
    node = context.node_name
    items = [connection_json(c, node) for c in _visible_connections(context)]
    return reply_list(context, items, ("vhost", "name"), paginate=True)


async def list_vhost_connections(context: Context) -> Any:
    vhost = _path_vhost(context)
    node = context.node_name
    items = [
        connection_json(c, node) for c in _visible_connections(context, vhost.name)
    ]
    return reply_list(context, items, ("vhost", "name"))


async def get_connection(context: Context) -> Any:
    document = connection_json(_connection(context), context.node_name, single=True)
    return reply_item(context, document)


async def delete_connection(context: Context) -> Response:
    connection = _connection(context, delete=True)
    reason = context.request.headers.get("x-reason") or "Closed via management plugin"
    connection.close(ReplyCode.CONNECTION_FORCED, f"CONNECTION_FORCED - {reason}")
    return no_content()


def _channels_of(connections: Iterable[ConnectionHandler]) -> list[ChannelHandler]:
    return [
        handler
        for connection in connections
        for _, handler in sorted(connection.channels.items())
    ]


async def connection_channels(context: Context) -> Any:
    connection = _connection(context)
    node = context.node_name
    items = [channel_json(handler, node) for handler in _channels_of([connection])]
    return reply_list(context, items, ("vhost", "name"))


async def list_channels(context: Context) -> Any:
    node = context.node_name
    handlers = _channels_of(_visible_connections(context))
    items = [channel_json(handler, node) for handler in handlers]
    return reply_list(context, items, ("vhost", "name"), paginate=True)


async def list_vhost_channels(context: Context) -> Any:
    vhost = _path_vhost(context)
    node = context.node_name
    handlers = _channels_of(_visible_connections(context, vhost.name))
    items = [channel_json(handler, node) for handler in handlers]
    return reply_list(context, items, ("vhost", "name"))


async def get_channel(context: Context) -> Any:
    name = context.param("name")
    connection_name, _, number = name.rpartition(" (")
    connection = _find_connection(context, connection_name)
    handler = None
    if connection is not None and number.endswith(")") and number[:-1].isdigit():
        handler = connection.channels.get(int(number[:-1]))
    _authorised_for(
        context, handler.connection.username if handler else None, delete=False
    )
    if handler is None:
        raise not_found()
    return reply_item(context, channel_json(handler, context.node_name))


def _consumers(context: Context, vhosts: Iterable[VHost]) -> list[dict[str, Any]]:
    node = context.node_name
    monitor = _is_monitor(context)
    items = []
    for vhost in vhosts:
        for queue in vhost.queues.values():
            for consumer in queue.consumers:
                document = consumer_json(consumer, node)
                owner = document["channel_details"].get("user")
                if monitor or owner == context.user.name:
                    items.append(document)
    return items


async def list_consumers(context: Context) -> Any:
    vhosts = [vhost for _, vhost in sorted(context.broker.vhosts.items())]
    return reply_list(context, _consumers(context, vhosts), ())


async def list_vhost_consumers(context: Context) -> Any:
    vhost = context.broker.vhosts.get(context.param("vhost"))
    if vhost is None:
        raise not_found()
    return reply_list(context, _consumers(context, [vhost]), ())


# -- list replies: sort, pagination, columns (rabbit_mgmt_util:reply_list) -----


def _erlang_order(value: object) -> tuple[int, Any]:
    """A sort key following Erlang's term order (numbers < atoms < maps <
    lists < binaries); a missing value sorts as 0, as RabbitMQ's."""
    if isinstance(value, bool) or value is None:
        return 1, str(value).lower()
    if isinstance(value, int | float):
        return 0, value
    if isinstance(value, dict):
        return 2, json.dumps(value, sort_keys=True)
    if isinstance(value, list):
        return 3, [_erlang_order(item) for item in value]
    return 4, str(value).encode("utf-8")


def _dotted(item: Mapping[str, Any], path: str) -> Any:
    value: Any = item
    keys = [key for key in path.split(".") if key]
    for index, key in enumerate(keys):
        last = index == len(keys) - 1
        value = value.get(key, 0 if last else {}) if isinstance(value, dict) else 0
    return value


def _columns(context: Context) -> list[list[str]] | None:
    raw = context.request.query_params.get("columns")
    if raw is None:
        return None
    return [
        [part for part in column.split(".") if part]
        for column in raw.split(",")
        if column
    ]


def _select(value: Any, columns: list[list[str]]) -> Any:
    """rabbit_mgmt_util:extract_column_items: keep the named keys, and
    within a dotted column only its inner keys."""
    if isinstance(value, list):
        return [_select(item, columns) for item in value]
    if not isinstance(value, dict):
        return value
    selected = {}
    for key, item in value.items():
        wanted = [column for column in columns if column and column[0] == key]
        if not wanted:
            continue
        inner = [column[1:] for column in wanted]
        selected[key] = item if any(not c for c in inner) else _select(item, inner)
    return selected


def reply_item(context: Context, document: dict[str, Any]) -> Any:
    columns = _columns(context)
    return document if columns is None else _select(document, columns)


def _int_param(context: Context, name: str) -> int | None:
    raw = context.request.query_params.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as error:
        raise bad_request("Pagination parameters are invalid") from error


def reply_list(
    context: Context,
    items: list[dict[str, Any]],
    default_sorts: tuple[str, ...],
    *,
    paginate: bool = False,
) -> Any:
    """A list answer: sorted (?sort=, ?sort_reverse=), paged (?page=,
    ?page_size=, ?name=, ?use_regex=) where RabbitMQ pages, and cut to
    ?columns=."""
    query = context.request.query_params
    sort = query.get("sort")
    sorts = list(default_sorts) if sort is None else [sort, *default_sorts]
    if sort != "" and sorts:
        items = sorted(
            items, key=lambda item: [_erlang_order(_dotted(item, s)) for s in sorts]
        )
    if query.get("sort_reverse") == "true":
        items.reverse()
    page = _int_param(context, "page") if paginate else None
    columns = _columns(context)
    if page is None:
        return items if columns is None else _select(items, columns)
    size = _int_param(context, "page_size")
    page_size = PAGE_SIZE_DEFAULT if size is None else size
    if page <= 0 or not 0 < page_size <= PAGE_SIZE_MAX:
        raise ApiError(
            400,
            "invalid_pagination_parameters",
            f"Invalid pagination parameters: page number {page}, page size "
            f"{'undefined' if size is None else size}",
        )
    filtered = _filter_by_name(items, query.get("name"), query.get("use_regex"))
    offset = (page - 1) * page_size
    if offset > len(filtered):
        raise ApiError(
            400,
            "page_out_of_range",
            f"Page out of range, page: {page} page size: {page_size}, "
            f"len: {len(filtered)}",
        )
    chosen = filtered[offset : offset + page_size]
    return {
        "filtered_count": len(filtered),
        "item_count": len(chosen),
        "items": chosen if columns is None else _select(chosen, columns),
        "page": page,
        "page_count": (len(filtered) + page_size - 1) // page_size,
        "page_size": page_size,
        "total_count": len(items),
    }


def _filter_by_name(
    items: list[dict[str, Any]], name: str | None, use_regex: str | None
) -> list[dict[str, Any]]:
    if not name:
        return items
    if use_regex == "true":
        try:
            pattern = re.compile(name, re.IGNORECASE)
        except re.error as error:
            raise bad_request(f"invalid regular expression: {error}") from error
        return [item for item in items if pattern.search(str(item.get("name", "")))]
    needle = name.lower()
    return [item for item in items if needle in str(item.get("name", "")).lower()]


ENDPOINTS: list[Endpoint] = [
    Endpoint("/api/exchanges", ("GET",), list_exchanges),
    Endpoint("/api/exchanges/{vhost}", ("GET",), list_vhost_exchanges),
    Endpoint("/api/exchanges/{vhost}/{name}", ("GET",), get_exchange),
    Endpoint("/api/exchanges/{vhost}/{name}", ("PUT",), put_exchange),
    Endpoint("/api/exchanges/{vhost}/{name}", ("DELETE",), delete_exchange),
    Endpoint(
        "/api/exchanges/{vhost}/{name}/bindings/source",
        ("GET",),
        exchange_source_bindings,
    ),
    Endpoint(
        "/api/exchanges/{vhost}/{name}/bindings/destination",
        ("GET",),
        exchange_destination_bindings,
    ),
    Endpoint("/api/exchanges/{vhost}/{name}/publish", ("POST",), publish),
    Endpoint("/api/queues", ("GET",), list_queues),
    Endpoint("/api/queues/{vhost}", ("GET",), list_vhost_queues),
    Endpoint("/api/queues/{vhost}/{name}", ("GET",), get_queue),
    Endpoint("/api/queues/{vhost}/{name}", ("PUT",), put_queue),
    Endpoint("/api/queues/{vhost}/{name}", ("DELETE",), delete_queue),
    Endpoint("/api/queues/{vhost}/{name}/contents", ("DELETE",), purge_queue),
    Endpoint("/api/queues/{vhost}/{name}/get", ("POST",), get_messages),
    Endpoint("/api/queues/{vhost}/{name}/bindings", ("GET",), queue_bindings),
    Endpoint("/api/bindings", ("GET",), list_bindings),
    Endpoint("/api/bindings/{vhost}", ("GET",), list_vhost_bindings),
    Endpoint(
        "/api/bindings/{vhost}/e/{source}/{dtype}/{destination}",
        ("GET",),
        pair_bindings,
    ),
    Endpoint(
        "/api/bindings/{vhost}/e/{source}/{dtype}/{destination}",
        ("POST",),
        create_binding,
    ),
    Endpoint(
        "/api/bindings/{vhost}/e/{source}/{dtype}/{destination}/{props}",
        ("GET",),
        get_binding,
    ),
    Endpoint(
        "/api/bindings/{vhost}/e/{source}/{dtype}/{destination}/{props}",
        ("DELETE",),
        delete_binding,
    ),
    Endpoint("/api/connections", ("GET",), list_connections),
    Endpoint("/api/connections/{name}", ("GET",), get_connection),
    Endpoint("/api/connections/{name}", ("DELETE",), delete_connection),
    Endpoint("/api/connections/{name}/channels", ("GET",), connection_channels),
    Endpoint("/api/vhosts/{vhost}/connections", ("GET",), list_vhost_connections),
    Endpoint("/api/vhosts/{vhost}/channels", ("GET",), list_vhost_channels),
    Endpoint("/api/channels", ("GET",), list_channels),
    Endpoint("/api/channels/{name}", ("GET",), get_channel),
    Endpoint("/api/consumers", ("GET",), list_consumers),
    Endpoint("/api/consumers/{vhost}", ("GET",), list_vhost_consumers),
]
