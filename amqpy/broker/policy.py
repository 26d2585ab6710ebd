"""Policies: settings applied to the queues and exchanges whose names match
a pattern, as RabbitMQ's `set_policy` (the highest-priority matching policy
applies, one at a time). Where a queue argument sets the same thing, the
smaller of two numbers wins (TTLs, lengths) and otherwise the argument wins,
as RabbitMQ's classic queues resolve them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

# Policy key -> queue argument it stands for.
QUEUE_KEYS = {
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
}
# Numbers where both a policy and an argument count: the smaller wins.
SMALLER_WINS = frozenset(
    {"x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes"}
)


@attrs.frozen
class Policy:
    name: str
    vhost: str
    pattern: re.Pattern[str]
    apply_to: str  # "queues", "exchanges" or "all"
    priority: int
    definition: Mapping[str, Any]

    @classmethod
    def from_definition(cls, entry: Mapping[str, Any]) -> Policy:
        """A policy from a definitions entry (RabbitMQ's export shape).

        Raises:
            ValueError: a malformed entry or pattern.
        """
        try:
            apply_to = str(entry.get("apply-to", "all"))
            if apply_to not in ("queues", "exchanges", "all"):
                raise ValueError(f"policy '{entry['name']}': bad apply-to {apply_to!r}")
            definition = entry["definition"]
            if not isinstance(definition, Mapping):
                raise ValueError(
                    f"policy '{entry['name']}': definition is not an object"
                )
            _validate_definition(str(entry["name"]), definition)
            return cls(
                name=str(entry["name"]),
                vhost=str(entry.get("vhost", "/")),
                pattern=re.compile(str(entry["pattern"])),
                apply_to=apply_to,
                priority=int(entry.get("priority", 0)),
                definition=dict(definition),
            )
        except (KeyError, TypeError, re.error) as error:
            raise ValueError(f"malformed policy {entry!r}: {error}") from error

    def applies_to(self, name: str, kind: str) -> bool:
        if self.apply_to != "all" and self.apply_to != kind:
            return False
        return self.pattern.search(name) is not None


def _validate_definition(name: str, definition: Mapping[str, Any]) -> None:
    """Refuse values RabbitMQ's policy validators refuse."""
    for key in ("message-ttl", "max-length", "max-length-bytes", "expires"):
        if key not in definition:
            continue
        value = definition[key]
        lowest = 1 if key == "expires" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ValueError(
                f"policy '{name}': {key} must be an integer of at least {lowest}"
            )
    overflow = definition.get("overflow")
    if overflow is not None and overflow not in (
        "drop-head",
        "reject-publish",
        "reject-publish-dlx",
    ):
        raise ValueError(f"policy '{name}': unknown overflow {overflow!r}")


def effective_policy(policies: Iterable[Policy], name: str, kind: str) -> Policy | None:
    """The matching policy of highest priority (`kind`: queues or exchanges)."""
    best: Policy | None = None
    for policy in policies:
        if policy.applies_to(name, kind) and (
            best is None or policy.priority > best.priority
        ):
            best = policy
    return best


def queue_settings(
    arguments: Mapping[str, Any], policy: Policy | None
) -> dict[str, Any]:
    """The queue arguments in force: the queue's own, merged with its policy."""
    settings = dict(arguments)
    if policy is None:
        return settings
    for key, argument in QUEUE_KEYS.items():
        if key not in policy.definition:
            continue
        value = policy.definition[key]
        current = settings.get(argument)
        if current is None:
            settings[argument] = value
        elif (
            argument in SMALLER_WINS
            and isinstance(value, int)
            and isinstance(current, int)
        ):
            settings[argument] = min(value, current)
    return settings


def alternate_exchange(policy: Policy | None) -> str | None:
    if policy is None:
        return None
    value = policy.definition.get("alternate-exchange")
    return value if isinstance(value, str) else None
