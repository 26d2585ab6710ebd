"""The broker root: virtual hosts and users."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from amqpy.broker.exchange import DelayedMessageExchange
from amqpy.broker.policy import Policy
from amqpy.broker.timers import Scheduler
from amqpy.broker.vhost import VHost, export_definitions, import_definitions
from amqpy.store.queue_log import QueueLog


@attrs.frozen
class User:
    name: str
    password: str
    tags: tuple[str, ...] = ()


# RabbitMQ definitions sections that are kept verbatim, not applied.
KEPT_SECTIONS = (
    "users",
    "permissions",
    "topic_permissions",
    "policies",
    "parameters",
    "global_parameters",
)


class Broker:
    def __init__(
        self,
        on_durable_change: Callable[[], None] | None = None,
        open_log: Callable[[str], QueueLog] | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.vhosts: dict[str, VHost] = {}
        self._open_log = open_log
        self._scheduler = scheduler
        # Definitions sections amqpy keeps but does not apply yet (users,
        # permissions, policies, parameters), so they survive an import and
        # export round trip.
        self.kept_definitions: dict[str, list[Any]] = {}
        self._vhost_entries: dict[str, dict[str, Any]] = {}  # limits, metadata
        self.users: dict[str, User] = {}
        # Called when anything that belongs in the definitions file changes.
        self._on_durable_change = on_durable_change or (lambda: None)

    def add_vhost(self, name: str) -> VHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VHost(
                name, self._on_durable_change, self._open_log, self._scheduler
            )
            self._on_durable_change()
        return vhost

    def export_definitions(self) -> dict[str, Any]:
        """Durable state in RabbitMQ's definitions shape."""
        definitions: dict[str, Any] = {
            "vhosts": [
                self._vhost_entries.get(name)
                or {
                    "name": name,
                    "limits": [],
                    "metadata": {"description": "", "tags": []},
                }
                for name in self.vhosts
            ],
            "exchanges": [],
            "queues": [],
            "bindings": [],
        }
        for vhost in self.vhosts.values():
            for key, entries in export_definitions(vhost).items():
                definitions[key].extend(entries)
        for key, entries in self.kept_definitions.items():
            definitions[key] = list(entries)
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
        self._on_durable_change()

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
                    self.kept_definitions[key] = list(entries)
                    self._on_durable_change()
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed definitions: {error!r}") from error
        for name in names:
            self.add_vhost(name)
        if "policies" in self.kept_definitions:
            self.apply_policies(self.kept_definitions["policies"])
        for name, vhost in self.vhosts.items():
            import_definitions(
                vhost,
                of_vhost("exchanges", name),
                of_vhost("queues", name),
                of_vhost("bindings", name),
            )

    def add_user(self, name: str, password: str, tags: tuple[str, ...] = ()) -> User:
        user = self.users[name] = User(name, password, tags)
        return user

    def authenticate(self, username: str, password: str) -> User | None:
        user = self.users.get(username)
        if user is None:
            return None
        if not hmac.compare_digest(user.password.encode(), password.encode()):
            return None
        return user
