"""The broker root: virtual hosts and users."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from amqpy.broker.access import (
    SHA256,
    USER_LIMITS,
    VHOST_LIMITS,
    AccessControl,
    User,
    parse_limits,
)
from amqpy.broker.exchange import DelayedMessageExchange
from amqpy.broker.policy import Policy
from amqpy.broker.timers import Scheduler
from amqpy.broker.vhost import (
    DurableChangeHook,
    VHost,
    export_definitions,
    import_definitions,
)
from amqpy.store.queue_log import QueueLog

# The runtime-parameter component RabbitMQ keeps vhost limits in.
VHOST_LIMITS_COMPONENT = "vhost-limits"

# RabbitMQ definitions sections that are kept verbatim, not applied.
KEPT_SECTIONS = (
    "policies",
    "parameters",
    "global_parameters",
)


class Broker:
    def __init__(
        self,
        on_durable_change: DurableChangeHook | None = None,
        open_log: Callable[[str], QueueLog] | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.vhosts: dict[str, VHost] = {}
        self._open_log = open_log
        self._scheduler = scheduler
        # Definitions sections amqpy keeps but does not apply (topic
        # permissions, parameters), or keeps as given besides applying them
        # (policies), so they survive an import and export round trip.
        self.kept_definitions: dict[str, list[Any]] = {}
        self._vhost_entries: dict[str, dict[str, Any]] = {}  # limits, metadata
        self.access = AccessControl()
        self.vhost_limits: dict[str, dict[str, int]] = {}
        # Called when anything that belongs in the definitions file changes.
        self._on_durable_change: DurableChangeHook = on_durable_change or (
            lambda change: None
        )

    def add_vhost(
        self, name: str, *, description: str = "", tags: tuple[str, ...] = ()
    ) -> VHost:
        """The vhost, created if missing (an existing one keeps its objects;
        a description or tags given replace the old ones)."""
        if not name:
            raise ValueError("vhost name must not be empty")
        vhost = self.vhosts.get(name)
        entry = self._vhost_entries.setdefault(
            name,
            {"name": name, "limits": [], "metadata": {"description": "", "tags": []}},
        )
        if description or tags:
            entry["metadata"] = {"description": description, "tags": list(tags)}
            self._on_durable_change(None)
        if vhost is None:
            vhost = self.vhosts[name] = VHost(
                name, self._on_durable_change, self._open_log, self._scheduler
            )
            vhost.limits = self.vhost_limits.setdefault(name, {})
            self._on_durable_change(None)
        return vhost

    def vhost_metadata(self, name: str) -> dict[str, Any]:
        metadata = self._vhost_entries.get(name, {}).get("metadata")
        return dict(metadata) if isinstance(metadata, dict) else {}

    def delete_vhost(self, name: str) -> bool:
        """Drop a vhost with everything in it (its queues' messages too) and
        the permissions for it. The caller closes its connections first."""
        vhost = self.vhosts.pop(name, None)
        if vhost is None:
            return False
        vhost.destroy()
        self._vhost_entries.pop(name, None)
        self.vhost_limits.pop(name, None)
        self.access.forget_vhost(name)
        policies = self.kept_definitions.get("policies")
        if policies:
            self.kept_definitions["policies"] = [
                entry for entry in policies if entry.get("vhost", "/") != name
            ]
        self._on_durable_change(None)
        return True

    def set_vhost_limits(self, name: str, limits: Mapping[str, Any]) -> None:
        """Replace a vhost's limits (RabbitMQ's set_vhost_limits).

        Raises:
            KeyError: no such vhost.
            ValueError: an unknown limit or a value that is not an integer.
        """
        current = self.vhost_limits[name] if name in self.vhosts else None
        if current is None:
            raise KeyError(name)
        parsed = parse_limits(limits, VHOST_LIMITS)
        current.clear()
        current.update(parsed)  # the vhost holds the same dict
        self._on_durable_change(None)

    # -- users and permissions ----------------------------------------------------

    def put_user(
        self,
        name: str,
        *,
        password: str | None = None,
        password_hash: str | None = None,
        hashing_algorithm: str | None = None,
        tags: tuple[str, ...] = (),
        limits: Mapping[str, Any] | None = None,
    ) -> User:
        """Create or replace a user.

        Raises:
            ValueError: an empty name, unknown algorithm or bad limits.
        """
        existing = self.access.users.get(name)
        user = self.access.put_user(
            name,
            password=password,
            password_hash=password_hash,
            hashing_algorithm=hashing_algorithm
            or (existing.hashing_algorithm if existing else SHA256),
            tags=tags,
            limits=parse_limits(limits, USER_LIMITS)
            if limits is not None
            else (existing.limits if existing else None),
        )
        self._on_durable_change(None)
        return user

    def delete_user(self, name: str) -> bool:
        deleted = self.access.delete_user(name)
        if deleted:
            self._on_durable_change(None)
        return deleted

    def set_permissions(
        self, user: str, vhost: str, configure: str, write: str, read: str
    ) -> None:
        """Raises:
        KeyError: no such user or vhost.
        ValueError: an invalid regular expression.
        """
        if user not in self.access.users:
            raise KeyError(f"no user '{user}'")
        if vhost not in self.vhosts:
            raise KeyError(f"no vhost '{vhost}'")
        self.access.set_permissions(user, vhost, configure, write, read)
        self._on_durable_change(None)

    def clear_permissions(self, user: str, vhost: str) -> bool:
        cleared = self.access.clear_permissions(user, vhost)
        if cleared:
            self._on_durable_change(None)
        return cleared

    def set_topic_permissions(
        self, user: str, vhost: str, exchange: str, write: str, read: str
    ) -> None:
        """Raises:
        KeyError: no such user or vhost.
        ValueError: an invalid regular expression.
        """
        if user not in self.access.users:
            raise KeyError(f"no user '{user}'")
        if vhost not in self.vhosts:
            raise KeyError(f"no vhost '{vhost}'")
        self.access.set_topic_permissions(user, vhost, exchange, write, read)
        self._on_durable_change(None)

    def clear_topic_permissions(
        self, user: str, vhost: str, exchange: str | None = None
    ) -> bool:
        cleared = self.access.clear_topic_permissions(user, vhost, exchange)
        if cleared:
            self._on_durable_change(None)
        return cleared

    def authenticate(self, username: str, password: str) -> User | None:
        return self.access.authenticate(username, password)

    def seed_defaults(
        self,
        user: str,
        password: str,
        vhost: str,
        tags: tuple[str, ...],
        permissions: tuple[str, str, str],
    ) -> None:
        """What a fresh RabbitMQ node creates: the default vhost, and the
        default user with full permissions on it."""
        self.add_vhost(vhost, description="Default virtual host")
        if user:
            self.put_user(user, password=password, tags=tags)
            self.set_permissions(user, vhost, *permissions)

    def export_definitions(self) -> dict[str, Any]:
        """Durable state in RabbitMQ's definitions shape."""
        definitions: dict[str, Any] = {
            "users": self.access.export_users(),
            "vhosts": [self._vhost_entries[name] for name in self.vhosts],
            "permissions": self.access.export_permissions(),
            "topic_permissions": self.access.export_topic_permissions(),
            "exchanges": [],
            "queues": [],
            "bindings": [],
        }
        for vhost in self.vhosts.values():
            for key, entries in export_definitions(vhost).items():
                definitions[key].extend(entries)
        for key, entries in self.kept_definitions.items():
            definitions[key] = list(entries)
        limits = [
            {
                "vhost": name,
                "component": VHOST_LIMITS_COMPONENT,
                "name": "limits",
                "value": dict(values),
            }
            for name, values in self.vhost_limits.items()
            if values and name in self.vhosts
        ]
        if limits:
            definitions["parameters"] = [
                *definitions.get("parameters", []),
                *limits,
            ]
        return definitions

    def apply_policies(self, entries: list[Any]) -> None:
        """Policies from definitions entries, applied per vhost (kept for export).

        Raises:
            ValueError: a malformed policy.
        """
        policies = [Policy.from_definition(entry) for entry in entries]
        self.kept_definitions["policies"] = list(entries)
        for name, vhost in self.vhosts.items():
            vhost.set_policies([policy for policy in policies if policy.vhost == name])
        self._on_durable_change(None)

    def set_policy(self, entry: Mapping[str, Any]) -> bool:
        """Add or replace one policy (RabbitMQ's set_policy), kept in the
        definitions entry shape; True when it is new.

        Raises:
            KeyError: no such vhost.
            ValueError: a malformed policy.
        """
        policy = Policy.from_definition(entry)
        if policy.vhost not in self.vhosts:
            raise KeyError(policy.vhost)
        entries = self.kept_definitions.get("policies", [])
        others = [item for item in entries if not _same_policy(item, policy)]
        self.apply_policies([*others, dict(entry)])
        return len(others) == len(entries)

    def delete_policy(self, vhost: str, name: str) -> bool:
        entries = self.kept_definitions.get("policies", [])
        others = [
            item
            for item in entries
            if not (item.get("vhost", "/") == vhost and item.get("name") == name)
        ]
        if len(others) == len(entries):
            return False
        self.apply_policies(others)
        return True

    def set_vhost_metadata(
        self, name: str, description: str, tags: tuple[str, ...]
    ) -> None:
        """Replace a vhost's description and tags (empty ones included, as a
        PUT of an existing vhost does in RabbitMQ).

        Raises:
            KeyError: no such vhost.
        """
        if name not in self.vhosts:
            raise KeyError(name)
        entry = self._vhost_entries.setdefault(name, {"name": name, "limits": []})
        entry["metadata"] = {"description": description, "tags": list(tags)}
        self._on_durable_change(None)

    def set_user_limits(self, name: str, limits: Mapping[str, Any]) -> None:
        """Replace a user's limits (RabbitMQ's set_user_limits).

        Raises:
            KeyError: no such user.
            ValueError: an unknown limit or a value that is not an integer.
        """
        user = self.access.users[name]
        user.limits = parse_limits(limits, USER_LIMITS)
        self._on_durable_change(None)

    def recover_messages(self) -> int:
        """Load every durable queue's unacked persistent messages.

        Raises:
            LogFormatError: a log file of an unknown format or newer version.
            OSError: a log cannot be read or repaired.
        """
        count = 0
        for vhost in self.vhosts.values():
            for queue in vhost.queues.values():
                if queue.log is not None:
                    messages = queue.log.recover()
                    queue.restore(messages)
                    count += len(messages)
            for exchange in vhost.exchanges.values():
                if (
                    isinstance(exchange, DelayedMessageExchange)
                    and exchange.log is not None
                ):
                    held = exchange.log.recover()
                    vhost.restore_held(exchange, held)
                    count += len(held)
        return count

    def import_definitions(self, definitions: Mapping[str, Any]) -> None:
        """Recreate vhosts, exchanges, queues and bindings.

        Raises:
            ValueError: malformed definitions.
        """

        def of_vhost(key: str, name: str) -> list[dict[str, Any]]:
            entries = definitions.get(key) or []
            if not isinstance(entries, list) or not all(
                isinstance(entry, dict) for entry in entries
            ):
                raise ValueError(
                    f"malformed definitions: '{key}' is not a list of objects"
                )
            return [entry for entry in entries if entry.get("vhost", "/") == name]

        limits: list[tuple[str, Any]] = []
        try:
            vhost_entries = definitions.get("vhosts") or []
            names = [str(entry["name"]) for entry in vhost_entries]
            for entry in vhost_entries:
                self._vhost_entries[str(entry["name"])] = dict(entry)
            for key in KEPT_SECTIONS:
                entries = definitions.get(key)
                if entries:
                    if not isinstance(entries, list):
                        raise TypeError(f"'{key}' is not a list")
                    if key == "parameters":
                        # Vhost limits are applied, not kept verbatim.
                        limits = [
                            (str(entry.get("vhost", "/")), entry.get("value"))
                            for entry in entries
                            if entry.get("component") == VHOST_LIMITS_COMPONENT
                        ]
                        entries = [
                            entry
                            for entry in entries
                            if entry.get("component") != VHOST_LIMITS_COMPONENT
                        ]
                    self.kept_definitions[key] = list(entries)
                    self._on_durable_change(None)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed definitions: {error!r}") from error
        for name in names:
            self.add_vhost(name)
        for name, value in limits:
            if name in self.vhosts:
                self.set_vhost_limits(name, value or {})
        for key, load in (
            ("users", self.access.import_users),
            ("permissions", self.access.import_permissions),
            ("topic_permissions", self.access.import_topic_permissions),
        ):
            entries = definitions.get(key)
            if entries:
                if not isinstance(entries, list):
                    raise ValueError(f"malformed definitions: '{key}' is not a list")
                load(entries)
                self._on_durable_change(None)
        if "policies" in self.kept_definitions:
            self.apply_policies(self.kept_definitions["policies"])
        for name, vhost in self.vhosts.items():
            import_definitions(
                vhost,
                of_vhost("exchanges", name),
                of_vhost("queues", name),
                of_vhost("bindings", name),
            )


def _same_policy(entry: Mapping[str, Any], policy: Policy) -> bool:
    return entry.get("vhost", "/") == policy.vhost and entry.get("name") == policy.name
