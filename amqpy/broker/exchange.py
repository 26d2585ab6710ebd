"""Exchanges and their routing indexes.

A binding is identified as RabbitMQ identifies it: source, destination,
binding key and arguments. Each exchange type keeps an index from which
`route` finds destinations without scanning every binding (the headers
exchange excepted, which must look at each binding's arguments, as in
RabbitMQ).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from amqpy.broker.arguments import freeze
from amqpy.broker.exchanges.headers import headers_match, validate_x_match
from amqpy.broker.exchanges.topic import TopicIndex
from amqpy.model.message import Message
from amqpy.store.queue_log import QueueLog


class Exchange:
    """An exchange of some type; destinations are queues or other exchanges."""

    type_name = ""

    def __init__(
        self,
        name: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments: dict[str, Any] = dict(arguments or {})
        # destination -> (binding key, frozen arguments) -> arguments
        self.bindings: dict[object, dict[tuple[str, Any], dict[str, Any]]] = {}
        self.deleted = False
        self.policy_alternate_exchange: str | None = None
        # How many destinations are exchanges (routing must follow them).
        self.exchange_destinations = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def alternate_exchange(self) -> str | None:
        """The argument's alternate exchange, else its policy's."""
        value = self.arguments.get("alternate-exchange")
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode("utf-8", "replace")
        return value if isinstance(value, str) else self.policy_alternate_exchange

    def validate_binding(self, binding_key: str, arguments: Mapping[str, Any]) -> None:
        """Raise ValueError (with RabbitMQ's text) for a binding this type refuses."""

    def add_binding(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> bool:
        """Add a binding; False when it already existed."""
        of_destination = self.bindings.get(destination)
        if of_destination is None:
            of_destination = self.bindings[destination] = {}
            if isinstance(destination, Exchange):
                self.exchange_destinations += 1
        key = (binding_key, freeze(arguments))
        if key in of_destination:
            return False
        of_destination[key] = dict(arguments)
        self._index_add(destination, binding_key, arguments)
        return True

    def remove_binding(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> bool:
        of_destination = self.bindings.get(destination)
        if not of_destination:
            return False
        removed = of_destination.pop((binding_key, freeze(arguments)), None)
        if removed is None:
            return False
        if not of_destination:
            self._forget_destination(destination)
        self._index_remove(destination, binding_key, arguments)
        return True

    def remove_destination(self, destination: object) -> int:
        """Drop every binding to `destination`; returns how many were dropped."""
        of_destination = self.bindings.get(destination)
        if not of_destination:
            return 0
        self._forget_destination(destination)
        for (binding_key, _), arguments in of_destination.items():
            self._index_remove(destination, binding_key, arguments)
        return len(of_destination)

    def _forget_destination(self, destination: object) -> None:
        del self.bindings[destination]
        if isinstance(destination, Exchange):
            self.exchange_destinations -= 1

    def has_binding_to(self, destination: object) -> bool:
        return destination in self.bindings

    def iter_bindings(self) -> Iterator[tuple[object, str, dict[str, Any]]]:
        for destination, of_destination in self.bindings.items():
            for (binding_key, _), arguments in of_destination.items():
                yield destination, binding_key, arguments

    def route(self, message: Message) -> Collection[object]:
        raise NotImplementedError

    def _index_add(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        raise NotImplementedError

    def _index_remove(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        raise NotImplementedError


def _count_up(counts: dict[object, int], destination: object) -> None:
    counts[destination] = counts.get(destination, 0) + 1


def _count_down(counts: dict[object, int], destination: object) -> None:
    left = counts[destination] - 1
    if left:
        counts[destination] = left
    else:
        del counts[destination]


class DirectExchange(Exchange):
    type_name = "direct"

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        # binding key -> destination -> number of bindings (they differ by args)
        self._index: dict[str, dict[object, int]] = {}

    def route(self, message: Message) -> Collection[object]:
        if not self._index:
            return ()
        matched = self._index.get(message.routing_key)
        return matched.keys() if matched is not None else ()

    def _index_add(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        _count_up(self._index.setdefault(binding_key, {}), destination)

    def _index_remove(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        counts = self._index[binding_key]
        _count_down(counts, destination)
        if not counts:
            del self._index[binding_key]


class DefaultExchange(DirectExchange):
    """The nameless exchange: every queue is bound to it by its own name."""

    def __init__(self, lookup_queue: Callable[[str], object | None]) -> None:
        super().__init__("", durable=True)
        self._lookup_queue = lookup_queue

    def route(self, message: Message) -> Collection[object]:
        queue = self._lookup_queue(message.routing_key)
        return (queue,) if queue is not None else ()


class FanoutExchange(Exchange):
    type_name = "fanout"

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._destinations: dict[object, int] = {}

    def route(self, message: Message) -> Collection[object]:
        return self._destinations.keys()

    def _index_add(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        _count_up(self._destinations, destination)

    def _index_remove(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        _count_down(self._destinations, destination)


class TopicExchange(Exchange):
    type_name = "topic"

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._trie: TopicIndex[object] = TopicIndex()
        self._counts: dict[tuple[str, object], int] = {}

    def route(self, message: Message) -> Collection[object]:
        return self._trie.match(message.routing_key)

    def _index_add(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        key = (binding_key, destination)
        count = self._counts.get(key, 0)
        if not count:
            self._trie.add(binding_key, destination)
        self._counts[key] = count + 1

    def _index_remove(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        key = (binding_key, destination)
        count = self._counts[key] - 1
        if count:
            self._counts[key] = count
        else:
            del self._counts[key]
            self._trie.remove(binding_key, destination)


class HeadersExchange(Exchange):
    type_name = "headers"

    def validate_binding(self, binding_key: str, arguments: Mapping[str, Any]) -> None:
        validate_x_match(arguments)

    def route(self, message: Message) -> Collection[object]:
        if not self.bindings:
            return ()
        headers = message.headers
        return {
            destination
            for destination, of_destination in self.bindings.items()
            if any(
                headers_match(arguments, headers)
                for arguments in of_destination.values()
            )
        }

    def _index_add(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        pass  # headers routing scans the bindings themselves

    def _index_remove(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        pass


ROUTING_TYPES: dict[str, type[Exchange]] = {
    cls.type_name: cls
    for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange)
}


class DelayedMessageExchange(Exchange):
    """The delayed-message plugin's exchange type: a message with an
    `x-delay` header (milliseconds) is held that long, then routed as the
    `x-delayed-type` exchange routes it. Holding is the vhost's business;
    this class routes (through an inner exchange of the delayed type)."""

    type_name = "x-delayed-message"

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        delayed_type = self.arguments.get("x-delayed-type")
        if isinstance(delayed_type, bytes | bytearray):
            delayed_type = bytes(delayed_type).decode("utf-8", "replace")
        inner_type = (
            ROUTING_TYPES.get(delayed_type) if isinstance(delayed_type, str) else None
        )
        if inner_type is None:
            raise ValueError(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type"
            )
        self._inner = inner_type(name)
        # Held messages: the timers that will route them, by log sequence.
        self.held: dict[int, Any] = {}
        self.log: QueueLog | None = None
        self.store_id: str | None = None
        self.delay_seq = 0  # sequence numbers of held messages in the log

    def validate_binding(self, binding_key: str, arguments: Mapping[str, Any]) -> None:
        self._inner.validate_binding(binding_key, arguments)

    def route(self, message: Message) -> Collection[object]:
        return self._inner.route(message)

    def _index_add(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        self._inner._index_add(destination, binding_key, arguments)

    def _index_remove(
        self, destination: object, binding_key: str, arguments: Mapping[str, Any]
    ) -> None:
        self._inner._index_remove(destination, binding_key, arguments)


def message_delay_ms(message: Message) -> int:
    """The x-delay header in milliseconds (0 when absent, not an integer, or
    negative: such messages are routed at once, as the plugin does)."""
    headers = message.headers
    delay = headers.get("x-delay") if headers else None
    if isinstance(delay, bool) or not isinstance(delay, int):
        return 0
    return max(delay, 0)


EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    **ROUTING_TYPES,
    DelayedMessageExchange.type_name: DelayedMessageExchange,
}
