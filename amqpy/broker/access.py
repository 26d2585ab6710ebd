"""Users, password hashes, tags and per-vhost permissions, as RabbitMQ's
internal auth backend keeps them.

Password hashes are RabbitMQ's: base64 of a 4-byte salt followed by
H(salt + UTF-8 password), so a user exported from RabbitMQ logs in here
with the same password and the other way round. Permissions are three
regular expressions per user and vhost (configure, write, read), matched
against a resource's name exactly where RabbitMQ matches them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
import secrets
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import attrs

from amqpy.broker.errors import AccessRefusedError

SHA256 = "rabbit_password_hashing_sha256"
SHA512 = "rabbit_password_hashing_sha512"
MD5 = "rabbit_password_hashing_md5"
HASHES = {SHA256: hashlib.sha256, SHA512: hashlib.sha512, MD5: hashlib.md5}
SALT_BYTES = 4

# The tags that mean something to the management API (others are kept).
ADMINISTRATOR = "administrator"
MONITORING = "monitoring"
POLICYMAKER = "policymaker"
MANAGEMENT = "management"
MANAGEMENT_TAGS = frozenset({ADMINISTRATOR, MONITORING, POLICYMAKER, MANAGEMENT})

CONFIGURE = "configure"
WRITE = "write"
READ = "read"

# The kind of a topic check: `name` is a topic exchange's, and the routing
# key is matched against the user's topic permission for it.
TOPIC = "topic"


class Authorize(Protocol):
    """authorize(permission, kind, name[, routing_key]): raises
    AccessRefusedError when the user may not."""

    def __call__(
        self, permission: str, kind: str, name: str, routing_key: str = ""
    ) -> None: ...


def allow_all(permission: str, kind: str, name: str, routing_key: str = "") -> None:
    """The authorizer of the broker's own operations (definitions, tests)."""


# Limits RabbitMQ knows per user and per vhost.
USER_LIMITS = ("max-connections", "max-channels")
VHOST_LIMITS = ("max-connections", "max-queues")


def hash_password(password: str, algorithm: str = SHA256) -> str:
    """A new salted hash in RabbitMQ's format."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = HASHES[algorithm](salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def password_matches(password_hash: str, algorithm: str, password: str) -> bool:
    hasher = HASHES.get(algorithm)
    if hasher is None or not password_hash:
        return False  # no hash: the user cannot log in with a password
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return False
    salt, expected = raw[:SALT_BYTES], raw[SALT_BYTES:]
    return hmac.compare_digest(hasher(salt + password.encode()).digest(), expected)


def parse_tags(value: object) -> tuple[str, ...]:
    """Tags as RabbitMQ accepts them: a list, or one comma-separated string.

    Raises:
        ValueError: neither.
    """
    if isinstance(value, str):
        items: Iterable[object] = value.split(",")
    elif isinstance(value, list | tuple):
        items = value
    elif value is None:
        return ()
    else:
        raise ValueError(f"tags must be a list or a string, not {value!r}")
    return tuple(str(item).strip() for item in items if str(item).strip())


def parse_limits(value: object, known: tuple[str, ...]) -> dict[str, int]:
    """A limits object: known names to integers (negative means no limit).

    Raises:
        ValueError: an unknown name or a value that is not an integer.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"limits must be an object, not {value!r}")
    limits: dict[str, int] = {}
    for name, limit in value.items():
        if name not in known:
            raise ValueError(f"unknown limit '{name}' (known: {', '.join(known)})")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ValueError(f"limit '{name}' must be an integer, not {limit!r}")
        if limit >= 0:
            limits[str(name)] = limit
    return limits


@attrs.define(eq=False)
class User:
    name: str
    password_hash: str
    hashing_algorithm: str = SHA256
    tags: tuple[str, ...] = ()
    limits: dict[str, int] = attrs.Factory(dict)

    def check_password(self, password: str) -> bool:
        return password_matches(self.password_hash, self.hashing_algorithm, password)

    @property
    def is_administrator(self) -> bool:
        return ADMINISTRATOR in self.tags

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "password_hash": self.password_hash,
            "hashing_algorithm": self.hashing_algorithm,
            "tags": list(self.tags),
            "limits": dict(self.limits),
        }


def compile_permission(pattern: str) -> re.Pattern[str]:
    """RabbitMQ reads "" as "^$" (only the empty name), not as "anything".

    Raises:
        ValueError: not a valid regular expression.
    """
    try:
        return re.compile(pattern or "^$")
    except re.error as error:
        raise ValueError(f"invalid regular expression '{pattern}': {error}") from error


@attrs.define(eq=False)
class Permission:
    user: str
    vhost: str
    configure: str
    write: str
    read: str
    _compiled: dict[str, re.Pattern[str]] = attrs.field(
        init=False, factory=dict, repr=False
    )

    def __attrs_post_init__(self) -> None:
        # Validated here so a bad regex never reaches the map.
        for kind in (CONFIGURE, WRITE, READ):
            self._compiled[kind] = compile_permission(getattr(self, kind))

    def allows(self, kind: str, name: str) -> bool:
        # RabbitMQ matches with re:run, which finds the pattern anywhere in
        # the name unless it is anchored: `search`, not `match`.
        return self._compiled[kind].search(name) is not None

    def definition(self) -> dict[str, str]:
        return {
            "user": self.user,
            "vhost": self.vhost,
            "configure": self.configure,
            "write": self.write,
            "read": self.read,
        }


@attrs.define(eq=False)
class TopicPermission:
    """RabbitMQ's topic permission: regexes on routing keys, for one topic
    exchange; "{username}" and "{vhost}" in them stand for the user's."""

    user: str
    vhost: str
    exchange: str
    write: str
    read: str
    _compiled: dict[str, re.Pattern[str]] = attrs.field(
        init=False, factory=dict, repr=False
    )

    def __attrs_post_init__(self) -> None:
        for kind in (WRITE, READ):
            pattern = getattr(self, kind)
            pattern = pattern.replace("{username}", re.escape(self.user))
            pattern = pattern.replace("{vhost}", re.escape(self.vhost))
            self._compiled[kind] = compile_permission(pattern)

    def allows(self, kind: str, routing_key: str) -> bool:
        return self._compiled[kind].search(routing_key) is not None

    def definition(self) -> dict[str, str]:
        return {
            "user": self.user,
            "vhost": self.vhost,
            "exchange": self.exchange,
            "write": self.write,
            "read": self.read,
        }


class PermissionCache(dict[tuple[str, str, str], None]):
    """A channel's passed checks (permission, kind, name), oldest first.

    RabbitMQ keeps the last 12 per channel and drops them when the channel
    has been idle for about a second, so a revoked permission stops working
    soon. Here AccessControl empties every cache when permissions change:
    a revocation is seen by the next check, on open channels too.
    """


class AccessControl:
    """Users and their permissions; the broker's internal auth backend."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.permissions: dict[tuple[str, str], Permission] = {}  # (user, vhost)
        # (user, vhost, exchange); a topic exchange without an entry for the
        # user is open to them, as in RabbitMQ.
        self.topic_permissions: dict[tuple[str, str, str], TopicPermission] = {}
        # Weak: a closed channel's cache goes with it.
        self._caches: weakref.WeakValueDictionary[int, PermissionCache] = (
            weakref.WeakValueDictionary()
        )
        self._cache_ids = itertools.count()

    def new_cache(self) -> PermissionCache:
        """An empty cache for a channel, emptied on permission changes."""
        cache = PermissionCache()
        self._caches[next(self._cache_ids)] = cache
        return cache

    def _forget_cached_checks(self) -> None:
        for cache in list(self._caches.values()):
            cache.clear()

    # -- users -------------------------------------------------------------------

    def put_user(
        self,
        name: str,
        *,
        password: str | None = None,
        password_hash: str | None = None,
        hashing_algorithm: str = SHA256,
        tags: tuple[str, ...] = (),
        limits: Mapping[str, int] | None = None,
    ) -> User:
        """Create or replace a user. With neither password nor hash the user
        cannot log in with a password (RabbitMQ's passwordless user).

        Raises:
            ValueError: an empty name or an unknown hashing algorithm.
        """
        if not name:
            raise ValueError("user name must not be empty")
        if hashing_algorithm not in HASHES:
            raise ValueError(f"unknown hashing algorithm '{hashing_algorithm}'")
        if password is not None:
            password_hash = hash_password(password, hashing_algorithm)
        user = User(
            name,
            password_hash or "",
            hashing_algorithm,
            tags,
            dict(limits or {}),
        )
        self.users[name] = user
        return user

    def delete_user(self, name: str) -> bool:
        if self.users.pop(name, None) is None:
            return False
        for key in [key for key in self.permissions if key[0] == name]:
            del self.permissions[key]
        for topic_key in [key for key in self.topic_permissions if key[0] == name]:
            del self.topic_permissions[topic_key]
        self._forget_cached_checks()
        return True

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        if user is None or not user.check_password(password):
            return None
        return user

    # -- permissions ---------------------------------------------------------------

    def set_permissions(
        self, user: str, vhost: str, configure: str, write: str, read: str
    ) -> Permission:
        """Raises:
        ValueError: an invalid regular expression.
        """
        permission = Permission(user, vhost, configure, write, read)
        self.permissions[(user, vhost)] = permission
        self._forget_cached_checks()
        return permission

    def clear_permissions(self, user: str, vhost: str) -> bool:
        self._forget_cached_checks()
        return self.permissions.pop((user, vhost), None) is not None

    def forget_vhost(self, vhost: str) -> None:
        for key in [key for key in self.permissions if key[1] == vhost]:
            del self.permissions[key]
        for topic_key in [key for key in self.topic_permissions if key[1] == vhost]:
            del self.topic_permissions[topic_key]
        self._forget_cached_checks()

    def set_topic_permissions(
        self, user: str, vhost: str, exchange: str, write: str, read: str
    ) -> TopicPermission:
        """Raises:
        ValueError: an invalid regular expression.
        """
        permission = TopicPermission(user, vhost, exchange, write, read)
        self.topic_permissions[(user, vhost, exchange)] = permission
        return permission

    def clear_topic_permissions(
        self, user: str, vhost: str, exchange: str | None = None
    ) -> bool:
        """Drop the user's topic permissions in `vhost` (for one exchange, or
        all); False when there were none."""
        keys = [
            key
            for key in self.topic_permissions
            if key[:2] == (user, vhost) and exchange in (None, key[2])
        ]
        for key in keys:
            del self.topic_permissions[key]
        return bool(keys)

    def can_access_vhost(self, user: str, vhost: str) -> bool:
        return (user, vhost) in self.permissions

    def check(
        self,
        user: str,
        vhost: str,
        kind: str,
        resource: str,
        name: str,
        routing_key: str = "",
    ) -> None:
        """RabbitMQ's check_resource_access: `kind` (configure, write, read)
        on `resource` (exchange, queue) `name` in `vhost`; for the resource
        TOPIC, check_topic_access: `routing_key` on the topic exchange `name`.

        Raises:
            AccessRefusedError: the user's permission does not match.
        """
        if resource == TOPIC:
            topic = self.topic_permissions.get((user, vhost, name))
            if topic is not None and not topic.allows(kind, routing_key):
                raise AccessRefusedError(
                    f"access to topic '{routing_key}' in exchange '{name}' in "
                    f"vhost '{vhost}' refused for user '{user}'"
                )
            return
        permission = self.permissions.get((user, vhost))
        # The default exchange is matched (and named) as "amq.default".
        if not name and resource == "exchange":
            name = "amq.default"
        if permission is None or not permission.allows(kind, name):
            raise AccessRefusedError(
                f"access to {resource} '{name}' in vhost '{vhost}' "
                f"refused for user '{user}'"
            )

    # -- definitions ---------------------------------------------------------------

    def export_users(self) -> list[dict[str, Any]]:
        return [user.definition() for user in self.users.values()]

    def export_permissions(self) -> list[dict[str, str]]:
        return [permission.definition() for permission in self.permissions.values()]

    def export_topic_permissions(self) -> list[dict[str, str]]:
        return [topic.definition() for topic in self.topic_permissions.values()]

    def import_topic_permissions(self, entries: list[Any]) -> None:
        """Raises:
        ValueError: a malformed entry or regular expression.
        """
        for entry in entries:
            try:
                fields = [
                    entry[key] for key in ("user", "vhost", "exchange", "write", "read")
                ]
            except (KeyError, TypeError) as error:
                raise ValueError(
                    f"malformed topic permission definition: {entry!r}"
                ) from error
            if not all(isinstance(value, str) for value in fields):
                raise ValueError(f"malformed topic permission definition: {entry!r}")
            self.set_topic_permissions(*fields)

    def import_users(self, entries: list[Any]) -> None:
        """Users from definitions entries (RabbitMQ 3.x exports included).

        Raises:
            ValueError: a malformed entry.
        """
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise ValueError(f"malformed user definition: {entry!r}")
            password_hash = entry.get("password_hash", "")
            if not isinstance(password_hash, str):
                raise ValueError(f"malformed password_hash for user '{entry['name']}'")
            self.put_user(
                entry["name"],
                password_hash=password_hash,
                hashing_algorithm=entry.get("hashing_algorithm") or SHA256,
                tags=parse_tags(entry.get("tags")),
                limits=parse_limits(entry.get("limits"), USER_LIMITS),
            )

    def import_permissions(self, entries: list[Any]) -> None:
        """Raises:
        ValueError: a malformed entry or regular expression.
        """
        for entry in entries:
            try:
                fields = [
                    entry[key]
                    for key in ("user", "vhost", "configure", "write", "read")
                ]
            except (KeyError, TypeError) as error:
                raise ValueError(
                    f"malformed permission definition: {entry!r}"
                ) from error
            if not all(isinstance(value, str) for value in fields):
                raise ValueError(f"malformed permission definition: {entry!r}")
            self.set_permissions(*fields)
