"""Access and administration endpoints: vhosts, users, permissions, limits,
policies, definitions, health checks and nodes, in the shape of RabbitMQ's
management plugin (paths, field names, status codes, error bodies).

Who may do what follows RabbitMQ: writes to vhosts, users, permissions and
limits, and reading users, permissions and definitions, need the
administrator tag; policies need policymaker (with access to the vhost) or
administrator; monitoring users read everything else; management users see
only the vhosts they have permissions in.

Every write is validated whole before anything changes, and answered only
once the definitions file has it (so a 2xx survives a restart).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import resource
import time
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.responses import JSONResponse, Response

from amqpy import __version__
from amqpy.broker.access import (
    ADMINISTRATOR,
    CONFIGURE,
    HASHES,
    POLICYMAKER,
    READ,
    SHA256,
    USER_LIMITS,
    VHOST_LIMITS,
    WRITE,
    User,
    compile_permission,
    parse_limits,
    parse_tags,
)
from amqpy.broker.arguments import InvalidArgumentError, validate_queue_arguments
from amqpy.broker.broker import Broker
from amqpy.broker.errors import AccessRefusedError, AmqpError
from amqpy.broker.policy import Policy
from amqpy.broker.queue import Queue
from amqpy.broker.vhost import VHost
from amqpy.management.app import (
    ApiError,
    Context,
    Endpoint,
    Level,
    bad_request,
    created,
    no_content,
    not_found,
)
from amqpy.model.message import Message
from amqpy.server.run import resident_memory_bytes
from amqpy.store.definitions import FORMAT_KEY, STORE_ID_KEY, json_value

RABBITMQ_VERSION = "3.10.8"
ALIVENESS_QUEUE = "aliveness-test"
FULL_PERMISSIONS = (".*", ".*", ".*")
# Policy keys RabbitMQ 3.10 accepts. amqpy applies those in
# amqpy.broker.policy and keeps the others (mirroring, quorum and stream
# settings) so that RabbitMQ's definitions import unchanged.
RECOGNISED_POLICY_KEYS = frozenset(
    {
        "message-ttl",
        "expires",
        "max-length",
        "max-length-bytes",
        "overflow",
        "dead-letter-exchange",
        "dead-letter-routing-key",
        "alternate-exchange",
        "queue-mode",
        "queue-version",
        "queue-master-locator",
        "queue-leader-locator",
        "ha-mode",
        "ha-params",
        "ha-sync-mode",
        "ha-sync-batch-size",
        "ha-promote-on-shutdown",
        "ha-promote-on-failure",
        "delivery-limit",
        "dead-letter-strategy",
        "max-in-memory-length",
        "max-in-memory-bytes",
        "max-age",
        "stream-max-segment-size-bytes",
        "initial-cluster-size",
    }
)
STRING_POLICY_KEYS = {
    "dead-letter-exchange": "dead letter exchange name",
    "dead-letter-routing-key": "dead letter routing key",
    "alternate-exchange": "alternate exchange name",
}
# Definitions sections, in the order RabbitMQ exports them.
DEFINITIONS_SECTIONS = (
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
)
VHOST_SECTIONS = ("parameters", "policies", "queues", "exchanges", "bindings")
# What identifies an entry of a kept section: an import replaces the entry
# with the same identity and keeps the others, as RabbitMQ's does.
KEPT_IDENTITY = {
    "policies": ("vhost", "name"),
    "parameters": ("vhost", "component", "name"),
    "global_parameters": ("name",),
    "topic_permissions": ("user", "vhost", "exchange"),
}
_IMPORTED_AT = time.monotonic()


# -- helpers ----------------------------------------------------------------------


def key_missing(body: Mapping[str, Any], keys: Iterable[str]) -> None:
    """RabbitMQ's answer to a body without required keys."""
    missing = [key for key in keys if key not in body]
    if missing:
        raise bad_request(
            "[" + ",".join(f"{{key_missing,{key}}}" for key in missing) + "]"
        )


def term_error(*items: str) -> ApiError:
    """A 400 whose reason is, as RabbitMQ's, a list ([what, which]), not text."""
    return ApiError(400, "bad_request", list(items))  # type: ignore[arg-type]


def validation_failed(reason: str) -> ApiError:
    return bad_request(f"Validation failed\n\n{reason}\n")


def vhost_not_found() -> ApiError:
    return ApiError(404, "not_found", "vhost_not_found")


def not_authorised(reason: str) -> ApiError:
    return ApiError(401, "not_authorised", reason)


def require_vhost_access(context: Context, name: str) -> VHost:
    """The vhost (404 when missing) that the user may see: administrators
    and monitoring users see all, others those they have permissions in."""
    vhost = context.broker.vhosts.get(name)
    if vhost is None:
        raise not_found()
    if not context.can_see_vhost(name):
        raise not_authorised("User not authorised to access virtual host")
    return vhost


def string_field(body: Mapping[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a string, not {value!r}")
    return value


def tags_field(body: Mapping[str, Any]) -> tuple[str, ...]:
    try:
        return parse_tags(body.get("tags"))
    except ValueError as error:
        raise bad_request(str(error)) from error


# -- vhosts -----------------------------------------------------------------------


def vhost_object(context: Context, vhost: VHost) -> dict[str, Any]:
    metadata = context.broker.vhost_metadata(vhost.name)
    description = metadata.get("description") or ""
    try:
        tags = list(parse_tags(metadata.get("tags")))
    except ValueError:
        tags = []
    ready = sum(queue.message_count for queue in vhost.queues.values())
    unacked = sum(queue.unacked_count for queue in vhost.queues.values())
    return {
        "name": vhost.name,
        "description": description,
        "tags": tags,
        "default_queue_type": "undefined",
        "metadata": {"description": description, "tags": tags},
        "tracing": False,
        "cluster_state": {context.node_name: "running"},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    }


async def list_vhosts(context: Context) -> list[dict[str, Any]]:
    vhosts = sorted(
        context.visible_vhosts(monitoring=True), key=lambda vhost: vhost.name
    )
    return [vhost_object(context, vhost) for vhost in vhosts]


async def get_vhost(context: Context) -> dict[str, Any]:
    context.require(Level.ADMINISTRATOR)  # as RabbitMQ, even for one's own
    vhost = context.broker.vhosts.get(context.param("vhost"))
    if vhost is None:
        raise not_found()
    return vhost_object(context, vhost)


async def put_vhost(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    name = context.param("vhost")
    body = await context.json_body()
    description = string_field(body, "description")
    tags = tags_field(body)
    broker: Broker = context.broker
    if name in broker.vhosts:
        broker.set_vhost_metadata(name, description, tags)
        await context.durably_saved()
        return no_content()
    broker.add_vhost(name, description=description, tags=tags)
    # RabbitMQ gives the user who created a vhost full permissions on it.
    broker.set_permissions(context.user.name, name, *FULL_PERMISSIONS)
    await context.durably_saved()
    return created()


async def delete_vhost(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    if not context.server.delete_vhost(context.param("vhost")):
        raise not_found()
    await context.durably_saved()
    return no_content()


async def vhost_permissions(context: Context) -> list[dict[str, str]]:
    context.require(Level.ADMINISTRATOR)
    name = context.param("vhost")
    if name not in context.broker.vhosts:
        raise not_found()
    permissions = [
        permission.definition()
        for (_, vhost), permission in context.broker.access.permissions.items()
        if vhost == name
    ]
    return [
        {"vhost": item["vhost"], "user": item["user"], **item}
        for item in sorted(permissions, key=lambda item: item["user"])
    ]


# -- users ------------------------------------------------------------------------


def users_sorted(users: Iterable[User]) -> list[dict[str, Any]]:
    return [user.definition() for user in sorted(users, key=lambda user: user.name)]


async def list_users(context: Context) -> list[dict[str, Any]]:
    context.require(Level.ADMINISTRATOR)
    return users_sorted(context.broker.access.users.values())


async def users_without_permissions(context: Context) -> list[dict[str, Any]]:
    context.require(Level.ADMINISTRATOR)
    access = context.broker.access
    with_permissions = {user for user, _ in access.permissions}
    return users_sorted(
        user for name, user in access.users.items() if name not in with_permissions
    )


def known_user(context: Context, name: str) -> User:
    user = context.broker.access.users.get(name)
    if user is None:
        raise not_found()
    return user


async def get_user(context: Context) -> dict[str, Any]:
    context.require(Level.ADMINISTRATOR)
    return known_user(context, context.param("name")).definition()


def check_password_hash(value: object) -> str:
    if not isinstance(value, str):
        raise bad_request(f"password_hash must be a string, not {value!r}")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise term_error("not_base64", value) from error
    return value


async def put_user(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    name = context.param("name")
    body = await context.json_body()
    if "tags" not in body:
        raise bad_request("tags_not_present")
    tags = tags_field(body)
    password = body.get("password")
    password_hash = body.get("password_hash")
    if password is not None and password_hash is not None:
        raise bad_request("both_password_and_password_hash_are_provided")
    algorithm = SHA256  # RabbitMQ hashes a given password with its default
    if password is not None:
        if not isinstance(password, str):
            raise bad_request("password must be a string")
    elif password_hash is not None:
        password_hash = check_password_hash(password_hash)
        algorithm = string_field(body, "hashing_algorithm", SHA256) or SHA256
        if algorithm not in HASHES:
            raise bad_request(f"unknown hashing_algorithm '{algorithm}'")
    else:
        # Neither: a user who cannot log in with a password, new or not.
        password_hash = ""
    broker: Broker = context.broker
    existing = broker.access.users.get(name)
    limits: Any = existing.limits if existing is not None else {}
    if "limits" in body:
        limits = body["limits"]
    try:
        limits = parse_limits(limits, USER_LIMITS)
    except ValueError as error:
        raise bad_request(str(error)) from error
    broker.put_user(
        name,
        password=password,
        password_hash=password_hash,
        hashing_algorithm=algorithm,
        tags=tags,
        limits=limits,
    )
    await context.durably_saved()
    return created() if existing is None else no_content()


async def delete_user(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    if not context.server.delete_user(context.param("name")):
        raise not_found()
    await context.durably_saved()
    return no_content()


async def bulk_delete_users(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    body = await context.json_body()
    key_missing(body, ("users",))
    names = body["users"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad_request("users must be a list of user names")
    users = context.broker.access.users
    for name in names:
        # All or nothing (RabbitMQ deletes up to the first unknown name).
        if name not in users:
            raise term_error("no_such_user", name)
    for name in names:
        context.server.delete_user(name)
    await context.durably_saved()
    return no_content()


async def user_permissions(context: Context) -> list[dict[str, str]]:
    context.require(Level.ADMINISTRATOR)
    name = known_user(context, context.param("name")).name
    permissions = [
        permission.definition()
        for (user, _), permission in context.broker.access.permissions.items()
        if user == name
    ]
    return sorted(permissions, key=lambda item: item["vhost"])


# -- permissions ------------------------------------------------------------------


async def list_permissions(context: Context) -> list[dict[str, str]]:
    context.require(Level.ADMINISTRATOR)
    permissions = context.broker.access.export_permissions()
    return sorted(permissions, key=lambda item: (item["vhost"], item["user"]))


async def get_permission(context: Context) -> dict[str, str]:
    context.require(Level.ADMINISTRATOR)
    key = (context.param("user"), context.param("vhost"))
    permission = context.broker.access.permissions.get(key)
    if permission is None:
        raise not_found()
    return permission.definition()


def invalid_regexp(pattern: str, error: ValueError) -> ApiError:
    # RabbitMQ's reason is ["invalid_regexp", Pattern, {Why, Where}] with
    # Erlang strings; the same list, readable.
    cause = error.__cause__
    detail = str(cause) if cause is not None else str(error)
    return term_error("invalid_regexp", pattern, detail)


def check_permission_patterns(values: Iterable[object]) -> list[str]:
    patterns = []
    for value in values:
        if not isinstance(value, str):
            raise bad_request(f"permission patterns must be strings, not {value!r}")
        try:
            compile_permission(value)
        except ValueError as error:
            raise invalid_regexp(value, error) from error
        patterns.append(value)
    return patterns


async def put_permission(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    user, vhost = context.param("user"), context.param("vhost")
    body = await context.json_body()
    key_missing(body, (CONFIGURE, WRITE, READ))
    configure, write, read = check_permission_patterns(
        body[key] for key in (CONFIGURE, WRITE, READ)
    )
    broker: Broker = context.broker
    if user not in broker.access.users or vhost not in broker.vhosts:
        raise bad_request("vhost_or_user_not_found")
    existed = (user, vhost) in broker.access.permissions
    broker.set_permissions(user, vhost, configure, write, read)
    await context.durably_saved()
    return no_content() if existed else created()


async def delete_permission(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    if not context.broker.clear_permissions(
        context.param("user"), context.param("vhost")
    ):
        raise not_found()
    await context.durably_saved()
    return no_content()


# -- topic permissions -------------------------------------------------------------


def _topic_permissions(
    context: Context, *, user: str | None = None, vhost: str | None = None
) -> list[dict[str, str]]:
    entries = [
        topic.definition()
        for (user_name, vhost_name, _), topic in (
            context.broker.access.topic_permissions.items()
        )
        if user in (None, user_name) and vhost in (None, vhost_name)
    ]
    return sorted(
        entries, key=lambda item: (item["vhost"], item["user"], item["exchange"])
    )


async def list_topic_permissions(context: Context) -> list[dict[str, str]]:
    context.require(Level.ADMINISTRATOR)
    return _topic_permissions(context)


async def vhost_topic_permissions(context: Context) -> list[dict[str, str]]:
    context.require(Level.ADMINISTRATOR)
    return _topic_permissions(context, vhost=context.vhost().name)


async def user_topic_permissions(context: Context) -> list[dict[str, str]]:
    context.require(Level.ADMINISTRATOR)
    name = context.param("name")
    if name not in context.broker.access.users:
        raise not_found()
    return _topic_permissions(context, user=name)


async def get_topic_permissions(context: Context) -> list[dict[str, str]]:
    context.require(Level.ADMINISTRATOR)
    entries = _topic_permissions(
        context, user=context.param("user"), vhost=context.param("vhost")
    )
    if not entries:
        raise not_found()
    return entries


async def put_topic_permission(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    user, vhost = context.param("user"), context.param("vhost")
    body = await context.json_body()
    key_missing(body, ("exchange", WRITE, READ))
    exchange = body["exchange"]
    if not isinstance(exchange, str):
        raise bad_request(f"exchange must be a string, not {exchange!r}")
    write, read = check_permission_patterns(body[key] for key in (WRITE, READ))
    broker: Broker = context.broker
    if user not in broker.access.users or vhost not in broker.vhosts:
        raise bad_request("vhost_or_user_not_found")
    existed = (user, vhost, exchange) in broker.access.topic_permissions
    broker.set_topic_permissions(user, vhost, exchange, write, read)
    await context.durably_saved()
    return no_content() if existed else created()


async def delete_topic_permissions(context: Context) -> Response:
    """All the user's topic permissions in the vhost, or ?exchange= one's."""
    context.require(Level.ADMINISTRATOR)
    exchange = context.request.query_params.get("exchange")
    if not context.broker.clear_topic_permissions(
        context.param("user"), context.param("vhost"), exchange
    ):
        raise not_found()
    await context.durably_saved()
    return no_content()


# -- limits -----------------------------------------------------------------------


def limit_value(body: Mapping[str, Any], name: str, known: tuple[str, ...]) -> int:
    key_missing(body, ("value",))
    value = body["value"]
    if name not in known:
        raise validation_failed(
            f"Unrecognised limit '{name}' (known: {', '.join(known)})"
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise validation_failed(
            f"{name} should be a number, actually was {json_text(value)}"
        )
    return value


def json_text(value: object) -> str:
    return json.dumps(value)


async def list_vhost_limits(context: Context) -> list[dict[str, Any]]:
    limits = context.broker.vhost_limits
    return [
        {"vhost": vhost.name, "value": dict(limits[vhost.name])}
        for vhost in sorted(context.visible_vhosts(), key=lambda vhost: vhost.name)
        if limits.get(vhost.name)
    ]


async def get_vhost_limits(context: Context) -> list[dict[str, Any]]:
    vhost = context.vhost()
    limits = context.broker.vhost_limits.get(vhost.name)
    return [{"vhost": vhost.name, "value": dict(limits)}] if limits else []


async def put_vhost_limit(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    vhost, name = context.param("vhost"), context.param("name")
    broker: Broker = context.broker
    if vhost not in broker.vhosts:
        raise vhost_not_found()
    body = await context.json_body()
    value = limit_value(body, name, VHOST_LIMITS)
    # A negative value means "no limit", as in RabbitMQ.
    broker.set_vhost_limits(vhost, {**broker.vhost_limits[vhost], name: value})
    await context.durably_saved()
    return no_content()


async def delete_vhost_limit(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    vhost, name = context.param("vhost"), context.param("name")
    broker: Broker = context.broker
    if vhost not in broker.vhosts:
        raise not_found()
    current = broker.vhost_limits[vhost]
    if name in current:  # an absent limit is no error (RabbitMQ: 204)
        broker.set_vhost_limits(
            vhost, {key: value for key, value in current.items() if key != name}
        )
        await context.durably_saved()
    return no_content()


def user_limits_object(user: User) -> dict[str, Any]:
    return {"user": user.name, "value": dict(user.limits)}


async def list_user_limits(context: Context) -> list[dict[str, Any]]:
    users = context.broker.access.users
    if context.level < Level.ADMINISTRATOR:
        # Others see only their own limits.
        users = {context.user.name: context.user}
    return [
        user_limits_object(user)
        for user in sorted(users.values(), key=lambda user: user.name)
        if user.limits
    ]


async def get_user_limits(context: Context) -> list[dict[str, Any]]:
    name = context.param("user")
    if name != context.user.name:  # one's own limits, or an administrator
        context.require(Level.ADMINISTRATOR)
    user = known_user(context, name)
    return [user_limits_object(user)] if user.limits else []


async def put_user_limit(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    user, name = context.param("user"), context.param("name")
    body = await context.json_body()
    value = limit_value(body, name, USER_LIMITS)
    broker: Broker = context.broker
    existing = broker.access.users.get(user)
    if existing is None:
        raise term_error("no_such_user", user)
    broker.set_user_limits(user, {**existing.limits, name: value})
    await context.durably_saved()
    return no_content()


async def delete_user_limit(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    user = known_user(context, context.param("user"))
    name = context.param("name")
    if name in user.limits:
        context.broker.set_user_limits(
            user.name,
            {key: value for key, value in user.limits.items() if key != name},
        )
        await context.durably_saved()
    return no_content()


# -- policies ---------------------------------------------------------------------


def policy_entry(vhost: str, name: object, body: Mapping[str, Any]) -> dict[str, Any]:
    """A policy in the definitions entry shape, validated as RabbitMQ does.

    Raises:
        ApiError: 400 with RabbitMQ's reason.
    """
    key_missing(body, ("pattern", "definition"))
    pattern, definition = body["pattern"], body["definition"]
    apply_to = body.get("apply-to", "all")
    priority = body.get("priority", 0)
    if not isinstance(name, str) or not name:
        raise bad_request(f"policy name must be a non-empty string, not {name!r}")
    if not isinstance(pattern, str):
        raise validation_failed(f"pattern should be a string but was {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as error:
        raise validation_failed(
            f"pattern should be regular expression but is invalid: {error}"
        ) from error
    if apply_to not in ("queues", "exchanges", "all"):
        raise validation_failed(
            f"apply-to '{apply_to}' unrecognised; "
            "should be 'queues', 'exchanges' or 'all'"
        )
    if isinstance(priority, bool) or not isinstance(priority, int | float):
        raise validation_failed(
            f"priority should be a number, actually was {json_text(priority)}"
        )
    if not isinstance(definition, dict):
        raise validation_failed("definition should be an object")
    if not definition:
        raise validation_failed("no policy provided")
    unknown = sorted(set(definition) - RECOGNISED_POLICY_KEYS)
    if unknown:
        raise validation_failed(
            f"[{', '.join(unknown)}] are not recognised policy settings"
        )
    for key, label in STRING_POLICY_KEYS.items():
        value = definition.get(key)
        if key in definition and not isinstance(value, str):
            raise validation_failed(f"{json_text(value)} is not a valid {label}")
    entry = {
        "vhost": vhost,
        "name": name,
        "pattern": pattern,
        "apply-to": apply_to,
        "definition": definition,
        "priority": priority,
    }
    try:
        Policy.from_definition(entry)
    except ValueError as error:
        raise validation_failed(str(error)) from error
    return entry


def policies_of(broker: Broker, vhosts: Iterable[str]) -> list[dict[str, Any]]:
    names = set(vhosts)
    entries = [
        entry
        for entry in broker.kept_definitions.get("policies", [])
        if entry.get("vhost", "/") in names
    ]
    # RabbitMQ lists policies by priority.
    return sorted(entries, key=lambda entry: entry.get("priority", 0))


def may_write_policies(context: Context, vhost: str) -> None:
    tags = context.user.tags
    if ADMINISTRATOR in tags:
        return
    if POLICYMAKER in tags and context.broker.access.can_access_vhost(
        context.user.name, vhost
    ):
        return
    raise not_authorised("User not authorised to access object")


async def list_policies(context: Context) -> list[dict[str, Any]]:
    vhosts = [vhost.name for vhost in context.visible_vhosts()]
    return policies_of(context.broker, vhosts)


async def vhost_policies(context: Context) -> list[dict[str, Any]]:
    vhost = require_vhost_access(context, context.param("vhost"))
    return policies_of(context.broker, [vhost.name])


async def get_policy(context: Context) -> dict[str, Any]:
    vhost = require_vhost_access(context, context.param("vhost"))
    name = context.param("name")
    for entry in policies_of(context.broker, [vhost.name]):
        if entry.get("name") == name:
            return entry
    raise not_found()


async def put_policy(context: Context) -> Response:
    vhost, name = context.param("vhost"), context.param("name")
    may_write_policies(context, vhost)
    if vhost not in context.broker.vhosts:
        raise vhost_not_found()
    body = await context.json_body()
    entry = policy_entry(vhost, name, body)
    is_new = context.broker.set_policy(entry)
    await context.durably_saved()
    return created() if is_new else no_content()


async def delete_policy(context: Context) -> Response:
    vhost, name = context.param("vhost"), context.param("name")
    may_write_policies(context, vhost)
    if not context.broker.delete_policy(vhost, name):
        raise not_found()
    await context.durably_saved()
    return no_content()


# -- definitions ------------------------------------------------------------------


def object_definitions(vhost: VHost) -> dict[str, list[dict[str, Any]]]:
    """A vhost's exchanges, queues and bindings as RabbitMQ's API exports
    them: the transient ones too (the definitions file keeps only the
    durable), but no exclusive queue, nor the default and amq.* exchanges."""
    exchanges = [
        {
            "name": exchange.name,
            "vhost": vhost.name,
            "type": exchange.type_name,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "internal": exchange.internal,
            "arguments": exchange.arguments,
        }
        for exchange in vhost.exchanges.values()
        if exchange.name and not exchange.name.startswith("amq.")
    ]
    queues = [
        {
            "name": queue.name,
            "vhost": vhost.name,
            "durable": queue.durable,
            "auto_delete": queue.auto_delete,
            "arguments": queue.arguments,
        }
        for queue in vhost.queues.values()
        if not queue.exclusive
    ]
    bindings = [
        {
            "source": source.name,
            "vhost": vhost.name,
            "destination": getattr(destination, "name", ""),
            "destination_type": "queue"
            if isinstance(destination, Queue)
            else "exchange",
            "routing_key": binding_key,
            "arguments": arguments,
        }
        for source in vhost.exchanges.values()
        for destination, binding_key, arguments in source.iter_bindings()
        if not (isinstance(destination, Queue) and destination.exclusive)
    ]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def exported_definitions(broker: Broker) -> dict[str, Any]:
    """The broker's definitions as RabbitMQ's GET /api/definitions has them,
    without amqpy's own keys."""
    definitions = broker.export_definitions()
    for key in ("exchanges", "queues", "bindings"):
        definitions[key] = []
    for vhost in broker.vhosts.values():
        for key, entries in object_definitions(vhost).items():
            definitions[key].extend(entries)
    document: dict[str, Any] = {
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "amqpy",
        "product_version": __version__,
    }
    for key in DEFINITIONS_SECTIONS:
        document[key] = list(definitions.get(key, []))
    return json_value(document)


def download(context: Context, document: dict[str, Any]) -> Response:
    response = JSONResponse(document)
    filename = context.request.query_params.get("download")
    if filename:
        # The management UI's "Download broker definitions".
        safe = re.sub(r"[^\w.@+-]", "_", filename)
        response.headers["content-disposition"] = f'attachment; filename="{safe}"'
    return response


async def get_definitions(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    return download(context, exported_definitions(context.broker))


async def get_vhost_definitions(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    name = context.param("vhost")
    if name not in context.broker.vhosts:
        raise not_found()
    everything = exported_definitions(context.broker)
    document: dict[str, Any] = {"rabbit_version": RABBITMQ_VERSION}
    for key in VHOST_SECTIONS:
        document[key] = [
            {field: value for field, value in entry.items() if field != "vhost"}
            for entry in everything[key]
            if entry.get("vhost", "/") == name
        ]
    return download(context, document)


def check_definitions(broker: Broker, body: Mapping[str, Any]) -> dict[str, Any]:
    """The import document, checked whole: the sections, names that must
    exist (in the broker or the document), values RabbitMQ refuses, then a
    dry run into an empty broker. Nothing is changed.

    Raises:
        ApiError: 400 with the first problem found.
    """
    document: dict[str, Any] = {}
    for key in DEFINITIONS_SECTIONS:
        entries = body.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(
            isinstance(entry, dict) for entry in entries
        ):
            raise bad_request(f"'{key}' must be a list of objects")
        if key in ("queues", "exchanges"):
            # A store folder is amqpy's own business, never an import's.
            entries = [
                {
                    field: value
                    for field, value in entry.items()
                    if field != STORE_ID_KEY
                }
                for entry in entries
            ]
        document[key] = entries
    vhosts = set(broker.vhosts)
    for entry in document.get("vhosts", []):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request(f"vhost name must be a non-empty string: {entry!r}")
        vhosts.add(name)
    users = set(broker.access.users)
    for entry in document.get("users", []):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request(f"user name must be a non-empty string: {entry!r}")
        if entry.get("password_hash"):
            check_password_hash(entry["password_hash"])
        algorithm = entry.get("hashing_algorithm") or SHA256
        if algorithm not in HASHES:
            raise bad_request(f"unknown hashing_algorithm '{algorithm}'")
        users.add(name)
    referenced: set[str] = set()
    for key in (
        "permissions",
        "topic_permissions",
        "parameters",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ):
        for entry in document.get(key, []):
            vhost = entry.get("vhost", "/")
            if not isinstance(vhost, str) or vhost not in vhosts:
                raise term_error("no_such_vhost", str(vhost))
            referenced.add(vhost)
            if key in ("permissions", "topic_permissions"):
                user = entry.get("user")
                if not isinstance(user, str) or user not in users:
                    raise term_error("no_such_user", str(user))
    for entry in document.get("permissions", []):
        key_missing(entry, (CONFIGURE, WRITE, READ))
        check_permission_patterns(entry[key] for key in (CONFIGURE, WRITE, READ))
    for entry in document.get("topic_permissions", []):
        key_missing(entry, ("exchange", WRITE, READ))
        check_permission_patterns(entry[key] for key in (WRITE, READ))
    for entry in document.get("policies", []):
        policy_entry(entry.get("vhost", "/"), entry.get("name"), entry)
    for entry in document.get("queues", []):
        arguments = entry.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise bad_request(f"queue arguments must be an object: {entry!r}")
        try:
            validate_queue_arguments(arguments)
        except InvalidArgumentError as error:
            raise bad_request(
                f"invalid arg '{error.key}' for queue '{entry.get('name')}' in "
                f"vhost '{entry.get('vhost', '/')}': {error.detail}"
            ) from error
    # Whatever else the import would refuse, it refuses here, in a broker of
    # its own (the document's vhosts and those it refers to).
    scratch = Broker()
    names = {entry["name"] for entry in document.get("vhosts", [])}
    try:
        scratch.import_definitions(
            {
                **document,
                "vhosts": [
                    *document.get("vhosts", []),
                    *({"name": name} for name in sorted(referenced - names)),
                ],
            }
        )
    except (ValueError, TypeError, KeyError, AttributeError, AmqpError) as error:
        raise bad_request(str(error)) from error
    return document


def merged_kept(broker: Broker, document: dict[str, Any]) -> dict[str, Any]:
    """The document with its kept sections (policies, parameters...) merged
    into the broker's: the import adds and replaces entries, never drops."""
    merged = dict(document)
    for key, identity in KEPT_IDENTITY.items():
        if key not in document:
            continue

        def ident(
            entry: Mapping[str, Any], identity: tuple[str, ...] = identity
        ) -> Any:
            return tuple(
                entry.get(field, "/" if field == "vhost" else None)
                for field in identity
            )

        incoming = {ident(entry): entry for entry in document[key]}
        merged[key] = [
            *(
                entry
                for entry in broker.kept_definitions.get(key, [])
                if ident(entry) not in incoming
            ),
            *incoming.values(),
        ]
    return merged


async def import_definitions(context: Context, body: Mapping[str, Any]) -> Response:
    broker: Broker = context.broker
    document = check_definitions(broker, body)
    try:
        broker.import_definitions(merged_kept(broker, document))
    except ValueError as error:  # checked above; a bug if it happens
        raise bad_request(str(error)) from error
    await context.durably_saved()
    return no_content()


async def post_definitions(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    body = await context.json_body(error="failed_to_parse_json")
    body.pop(FORMAT_KEY, None)
    return await import_definitions(context, body)


async def post_vhost_definitions(context: Context) -> Response:
    context.require(Level.ADMINISTRATOR)
    name = context.param("vhost")
    if name not in context.broker.vhosts:
        raise not_found()
    body = await context.json_body(error="failed_to_parse_json")
    document: dict[str, Any] = {}
    for key in VHOST_SECTIONS:
        entries = body.get(key)
        if isinstance(entries, list):
            # Every entry is the path's vhost's, whatever it says.
            entries = [
                {**entry, "vhost": name} if isinstance(entry, dict) else entry
                for entry in entries
            ]
        if entries is not None:
            document[key] = entries
    return await import_definitions(context, document)


# -- health, aliveness, nodes -------------------------------------------------------


def alarms_check(context: Context, reason: str) -> Response:
    alarms = sorted(context.server.alarms)
    if not alarms:
        return JSONResponse({"status": "ok"})
    node = context.node_name
    return JSONResponse(
        {
            "status": "failed",
            "reason": reason,
            "alarms": [{"node": node, "resource": alarm} for alarm in alarms],
        },
        status_code=503,
    )


async def health_alarms(context: Context) -> Response:
    return alarms_check(context, "There are alarms in effect in the cluster")


async def health_local_alarms(context: Context) -> Response:
    return alarms_check(context, "There are alarms in effect on the node")


class _AlivenessOwner:
    """The owner the aliveness test declares its queue as (none exclusive)."""


ALIVENESS_OWNER = _AlivenessOwner()
EMPTY_PROPERTIES = b"\x00\x00"  # a properties flags word with nothing set


async def aliveness_test(context: Context) -> dict[str, Any] | Response:
    vhost = context.broker.vhosts.get(context.param("vhost"))
    if vhost is None:
        raise not_found()
    access = context.broker.access
    user = context.user.name
    if not access.can_access_vhost(user, vhost.name):
        raise not_authorised("User not authorised to access virtual host")

    def authorize(permission: str, kind: str, name: str, routing_key: str = "") -> None:
        access.check(user, vhost.name, permission, kind, name, routing_key)

    # RabbitMQ's test: declare the queue, publish to it through the default
    # exchange, get the message back, all with the user's permissions.
    # Every permission is checked before the message goes in, so a refusal
    # leaves no message behind.
    try:
        queue = vhost.declare_queue(
            ALIVENESS_QUEUE, owner=ALIVENESS_OWNER, authorize=authorize
        )
        authorize(WRITE, "exchange", "")
        authorize(READ, "queue", ALIVENESS_QUEUE)
    except AccessRefusedError as error:
        raise not_authorised(error.reply_text) from error
    message = Message("", ALIVENESS_QUEUE, EMPTY_PROPERTIES, b"test_message")
    for target in vhost.route(vhost.default_exchange, message):
        target.enqueue(message)
    entry = queue.take()
    if entry is None:
        return JSONResponse(
            {"status": "failed", "reason": "the test message did not arrive"},
            status_code=503,
        )
    if entry.persisted:
        queue.settle(entry)
    return {"status": "ok"}


async def extensions(context: Context) -> list[Any]:
    return []  # no management UI extensions


def require_monitoring(context: Context) -> None:
    if context.level < Level.MONITORING:
        raise not_authorised("Not monitor user")


def _read_proc(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as file:
            return file.read()
    except OSError:
        return None


def uptime_ms() -> int:
    """The process's age (RabbitMQ's node uptime is its Erlang VM's)."""
    stat, uptime = _read_proc("/proc/self/stat"), _read_proc("/proc/uptime")
    if stat is not None and uptime is not None:
        try:
            # Field 22, counted after the parenthesised command name.
            started_ticks = int(stat.rsplit(")", 1)[1].split()[19])
            since_boot = float(uptime.split()[0])
            age = since_boot - started_ticks / os.sysconf("SC_CLK_TCK")
            return max(0, int(age * 1000))
        except (IndexError, ValueError):
            pass
    return int((time.monotonic() - _IMPORTED_AT) * 1000)


def open_file_count() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def node_object(context: Context) -> dict[str, Any]:
    server = context.server
    try:
        usage = os.statvfs(server.config.store.data_dir)
        disk_free = usage.f_bavail * usage.f_frsize
    except OSError:
        disk_free = 0
    fd_total = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    node: dict[str, Any] = {
        "name": context.node_name,
        "type": "disc",
        "running": True,
        "os_pid": str(os.getpid()),
        "partitions": [],
        "rates_mode": "basic",
        "processors": os.cpu_count() or 1,
        "uptime": uptime_ms(),
        "mem_alarm": "memory" in server.alarms,
        "disk_free": disk_free,
        "disk_free_limit": server.disk_free_limit_bytes,
        "disk_free_alarm": "disk" in server.alarms,
        "fd_total": fd_total,
        "sockets_used": len(server.connections),
        "sockets_total": fd_total,
    }
    # Where unknown (not Linux), left out as RabbitMQ leaves out what it
    # has not measured yet.
    mem_used = resident_memory_bytes()
    if mem_used is not None:
        node["mem_used"] = mem_used
    fd_used = open_file_count()
    if fd_used is not None:
        node["fd_used"] = fd_used
    return node


async def list_nodes(context: Context) -> list[dict[str, Any]]:
    require_monitoring(context)
    return [node_object(context)]


async def get_node(context: Context) -> dict[str, Any]:
    require_monitoring(context)
    if context.param("node") != context.node_name:
        raise not_found()
    return node_object(context)


# Specific paths before the patterns they would also match.
ENDPOINTS: list[Endpoint] = [
    Endpoint("/api/vhosts", ("GET",), list_vhosts),
    Endpoint("/api/vhosts/{vhost}/permissions", ("GET",), vhost_permissions),
    Endpoint("/api/vhosts/{vhost}", ("GET",), get_vhost),
    Endpoint("/api/vhosts/{vhost}", ("PUT",), put_vhost),
    Endpoint("/api/vhosts/{vhost}", ("DELETE",), delete_vhost),
    Endpoint("/api/users", ("GET",), list_users),
    Endpoint("/api/users/without-permissions", ("GET",), users_without_permissions),
    Endpoint("/api/users/bulk-delete", ("POST",), bulk_delete_users),
    Endpoint("/api/users/{name}/permissions", ("GET",), user_permissions),
    Endpoint("/api/users/{name}", ("GET",), get_user),
    Endpoint("/api/users/{name}", ("PUT",), put_user),
    Endpoint("/api/users/{name}", ("DELETE",), delete_user),
    Endpoint("/api/topic-permissions", ("GET",), list_topic_permissions),
    Endpoint("/api/topic-permissions/{vhost}/{user}", ("GET",), get_topic_permissions),
    Endpoint("/api/topic-permissions/{vhost}/{user}", ("PUT",), put_topic_permission),
    Endpoint(
        "/api/topic-permissions/{vhost}/{user}", ("DELETE",), delete_topic_permissions
    ),
    Endpoint(
        "/api/vhosts/{vhost}/topic-permissions", ("GET",), vhost_topic_permissions
    ),
    Endpoint("/api/users/{name}/topic-permissions", ("GET",), user_topic_permissions),
    Endpoint("/api/permissions", ("GET",), list_permissions),
    Endpoint("/api/permissions/{vhost}/{user}", ("GET",), get_permission),
    Endpoint("/api/permissions/{vhost}/{user}", ("PUT",), put_permission),
    Endpoint("/api/permissions/{vhost}/{user}", ("DELETE",), delete_permission),
    Endpoint("/api/vhost-limits", ("GET",), list_vhost_limits),
    Endpoint("/api/vhost-limits/{vhost}", ("GET",), get_vhost_limits),
    Endpoint("/api/vhost-limits/{vhost}/{name}", ("PUT",), put_vhost_limit),
    Endpoint("/api/vhost-limits/{vhost}/{name}", ("DELETE",), delete_vhost_limit),
    Endpoint("/api/user-limits", ("GET",), list_user_limits),
    Endpoint("/api/user-limits/{user}", ("GET",), get_user_limits),
    Endpoint("/api/user-limits/{user}/{name}", ("PUT",), put_user_limit),
    Endpoint("/api/user-limits/{user}/{name}", ("DELETE",), delete_user_limit),
    Endpoint("/api/policies", ("GET",), list_policies),
    Endpoint("/api/policies/{vhost}", ("GET",), vhost_policies),
    Endpoint("/api/policies/{vhost}/{name}", ("GET",), get_policy),
    Endpoint("/api/policies/{vhost}/{name}", ("PUT",), put_policy),
    Endpoint("/api/policies/{vhost}/{name}", ("DELETE",), delete_policy),
    Endpoint("/api/definitions", ("GET",), get_definitions),
    Endpoint("/api/definitions", ("POST",), post_definitions),
    Endpoint("/api/definitions/{vhost}", ("GET",), get_vhost_definitions),
    Endpoint("/api/definitions/{vhost}", ("POST",), post_vhost_definitions),
    Endpoint("/api/health/checks/alarms", ("GET",), health_alarms),
    Endpoint("/api/health/checks/local-alarms", ("GET",), health_local_alarms),
    Endpoint("/api/aliveness-test/{vhost}", ("GET",), aliveness_test),
    Endpoint("/api/extensions", ("GET",), extensions),
    Endpoint("/api/nodes", ("GET",), list_nodes),
    Endpoint("/api/nodes/{node}", ("GET",), get_node),
]
