"""A virtual host: its exchanges, queues and bindings, and the rules of
declaring, binding, deleting and publishing, with RabbitMQ's errors."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from amqpy.broker.access import (
    CONFIGURE,
    READ,
    TOPIC,
    WRITE,
    Authorize,
    allow_all,
)
from amqpy.broker.arguments import (
    InvalidArgumentError,
    amqp_type_name,
    format_value,
    validate_queue_arguments,
)
from amqpy.broker.channel import generate_name
from amqpy.broker.dead_letter import dead_lettered_message, is_cycle
from amqpy.broker.errors import (
    AccessRefusedError,
    CommandInvalidError,
    InternalError,
    NotFoundError,
    PreconditionFailedError,
    ResourceLockedError,
)
from amqpy.broker.exchange import (
    EXCHANGE_TYPES,
    DefaultExchange,
    DelayedMessageExchange,
    Exchange,
    message_delay_ms,
)
from amqpy.broker.policy import (
    Policy,
    alternate_exchange,
    effective_policy,
    queue_settings,
)
from amqpy.broker.queue import Queue, QueueEntry
from amqpy.broker.stats import Counts
from amqpy.broker.timers import Scheduler
from amqpy.model.message import (
    REPLY_TO_PREFIX,
    Message,
    decode_properties,
    expiration_error_text,
    header_routes,
    join_properties,
    split_properties,
    with_routing_key,
)
from amqpy.model.tables import split_table, table_body
from amqpy.store.definitions import STORE_ID_KEY, DefinitionChange
from amqpy.store.message_store import new_store_id
from amqpy.store.queue_log import QueueLog, StoredMessage

# Told of each durable exchange, queue or binding added or removed; None
# means "more than that changed: save everything" (vhosts, users, policies).
DurableChangeHook = Callable[[DefinitionChange | None], None]

# Queue arguments RabbitMQ compares on redeclare; others are not compared.
EQUIVALENCE_CHECKED_QUEUE_ARGUMENTS = (
    "x-expires",
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-queue-type",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-master-locator",
)

# In a durable delayed exchange's log: when (epoch ms) a held message is due.
DELIVER_AT_HEADER = "x-amqpy-deliver-at"
# ... and its CC/BCC routing keys (BCC is gone from the message by then).
EXTRA_KEYS_HEADER = "x-amqpy-extra-keys"

PREDECLARED_EXCHANGES = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


def _reserved(name: str) -> bool:
    return name.startswith("amq.")


def _flag(value: bool) -> str:
    return "true" if value else "false"


@attrs.frozen
class Held:
    """A publish a delayed exchange is to hold (the caller holds it when it
    delivers, so a transaction's rollback drops it)."""

    exchange: DelayedMessageExchange
    delay_ms: int
    extra_keys: list[str] | None


class VHost:
    def __init__(
        self,
        name: str,
        on_durable_change: DurableChangeHook | None = None,
        open_log: Callable[[str], QueueLog] | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.name = name
        # Clock and timers for TTLs; without one, nothing expires.
        self._scheduler = scheduler
        # Gives a durable queue the log its persistent messages are kept in.
        self._open_log = open_log
        # Called whenever a durable exchange, queue or binding comes or goes,
        # with the change, so the definitions can be saved.
        self._on_durable_change: DurableChangeHook = on_durable_change or (
            lambda change: None
        )
        self.queues: dict[str, Queue] = {}
        self.default_exchange = DefaultExchange(self.queues.get)
        self.exchanges: dict[str, Exchange] = {"": self.default_exchange}
        # exchanges that have bindings to a destination (queue or exchange)
        self._sources: dict[object, set[Exchange]] = {}
        self._exclusive: dict[object, set[Queue]] = {}
        self.policies: list[Policy] = []
        # RabbitMQ's vhost limits ("max-queues", "max-connections").
        self.limits: dict[str, int] = {}
        # Direct reply-to: token -> delivers a reply to that channel's consumer.
        self.reply_consumers: dict[str, Callable[[Message], None]] = {}
        # Message counters of its deleted queues and closed channels.
        self.retired = Counts()
        for exchange_name, type_name in PREDECLARED_EXCHANGES:
            self.exchanges[exchange_name] = EXCHANGE_TYPES[type_name](
                exchange_name, durable=True
            )
        # RabbitMQ declares its firehose exchange in every vhost, internal.
        self.exchanges["amq.rabbitmq.trace"] = EXCHANGE_TYPES["topic"](
            "amq.rabbitmq.trace", durable=True, internal=True
        )

    def _describe(self, kind: str, name: str) -> str:
        return f"{kind} '{name}' in vhost '{self.name}'"

    # -- lookups ---------------------------------------------------------------

    def get_exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise NotFoundError(f"no {self._describe('exchange', name)}")
        return exchange

    def get_queue(self, name: str, owner: object | None) -> Queue:
        """The queue, checked for exclusive access by `owner`."""
        queue = self.queues.get(name)
        if queue is None:
            raise NotFoundError(f"no {self._describe('queue', name)}")
        self._check_exclusive_access(queue, owner)
        return queue

    def _check_exclusive_access(
        self, queue: Queue, owner: object | None, *, locked: bool = False
    ) -> None:
        """405 unless `owner` may use the queue (`locked` forces the error)."""
        if locked or (
            queue.exclusive_owner is not None and queue.exclusive_owner is not owner
        ):
            raise ResourceLockedError(
                "cannot obtain exclusive access to locked "
                f"{self._describe('queue', queue.name)}. It could be originally "
                "declared on another connection or the exclusive property value "
                "does not match that of the original declaration."
            )

    # -- exchanges -------------------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        type_name: str,
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
        authorize: Authorize = allow_all,
    ) -> Exchange:
        arguments = dict(arguments or {})
        default = name == ""
        if passive:
            if default:
                raise AccessRefusedError(
                    "operation not permitted on the default exchange"
                )
            return self.get_exchange(name)
        # RabbitMQ checks the type first, even for the default exchange.
        exchange_type = EXCHANGE_TYPES.get(type_name)
        if exchange_type is None:
            qualifier = "invalid" if type_name == "" else "unknown"
            raise CommandInvalidError(f"{qualifier} exchange type '{type_name}'")
        if default:
            raise AccessRefusedError("operation not permitted on the default exchange")
        authorize(CONFIGURE, "exchange", name)
        existing = self.exchanges.get(name)
        if existing is not None:
            self._check_exchange_equivalence(
                existing, type_name, durable, auto_delete, internal, arguments
            )
            return existing
        if _reserved(name):
            raise AccessRefusedError(
                f"exchange name '{name}' contains reserved prefix 'amq.*'"
            )
        alternate = _text_argument(arguments.get("alternate-exchange"))
        if alternate is not None:
            authorize(READ, "exchange", name)
            authorize(WRITE, "exchange", alternate)
        try:
            exchange = exchange_type(
                name,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments,
            )
        except ValueError as error:
            raise PreconditionFailedError(str(error)) from error
        self.exchanges[name] = exchange
        self._apply_exchange_policy(exchange)
        self._attach_delay_log(exchange)
        if durable:
            self._on_durable_change(
                DefinitionChange("exchanges", exchange_entry(self.name, exchange))
            )
        return exchange

    def _check_exchange_equivalence(
        self,
        exchange: Exchange,
        type_name: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None:
        where = self._describe("exchange", exchange.name)
        if exchange.type_name != type_name:
            raise PreconditionFailedError(
                f"inequivalent arg 'type' for {where}: received '{type_name}' "
                f"but current is '{exchange.type_name}'"
            )
        for arg, received, current in (
            ("durable", durable, exchange.durable),
            ("auto_delete", auto_delete, exchange.auto_delete),
            ("internal", internal, exchange.internal),
        ):
            if received != current:
                raise PreconditionFailedError(
                    f"inequivalent arg '{arg}' for {where}: received "
                    f"'{_flag(received)}' but current is '{_flag(current)}'"
                )
        self._check_arguments(
            where, arguments, exchange.arguments, ("alternate-exchange",)
        )

    def _check_arguments(
        self,
        where: str,
        received: Mapping[str, Any],
        current: Mapping[str, Any],
        checked: tuple[str, ...],
    ) -> None:
        for key in checked:
            new, old = received.get(key), current.get(key)
            if new == old and type(new) is type(old):
                continue
            if new is not None and old is not None:
                detail = f"'{format_value(new)}' but current is '{format_value(old)}'"
            else:
                detail = f"{_describe_value(new)} but current is {_describe_value(old)}"
            raise PreconditionFailedError(
                f"inequivalent arg '{key}' for {where}: received {detail}"
            )

    def delete_exchange(
        self, name: str, *, if_unused: bool = False, authorize: Authorize = allow_all
    ) -> None:
        if name == "":
            raise AccessRefusedError("operation not permitted on the default exchange")
        if _reserved(name):
            raise AccessRefusedError(
                f"deletion of system {self._describe('exchange', name)} not allowed"
            )
        authorize(CONFIGURE, "exchange", name)
        exchange = self.exchanges.get(name)
        if exchange is None:
            return  # RabbitMQ 3.x: deleting a missing exchange succeeds
        if if_unused and exchange.bindings:
            raise PreconditionFailedError(f"{self._describe('exchange', name)} in use")
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange: Exchange) -> None:
        exchange.deleted = True
        del self.exchanges[exchange.name]
        if isinstance(exchange, DelayedMessageExchange):
            # Held messages go with their exchange, as with the plugin.
            for timer in exchange.held.values():
                timer.cancel()
            exchange.held.clear()
            if exchange.log is not None:
                exchange.log.destroy()
        for destination in list(exchange.bindings):
            exchange.remove_destination(destination)
            self._forget_source(destination, exchange)
        self._unbind_destination(exchange)
        if exchange.durable:
            self._on_durable_change(
                DefinitionChange(
                    "exchanges", {"vhost": self.name, "name": exchange.name}, True
                )
            )

    # -- queues ----------------------------------------------------------------

    def declare_queue(
        self,
        name: str,
        *,
        owner: object,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        authorize: Authorize = allow_all,
    ) -> Queue:
        """Declare (or check, when passive) a queue."""
        arguments = dict(arguments or {})
        if passive:
            if name == "":
                raise NotFoundError(f"no {self._describe('queue', name)}")
            queue = self.get_queue(name, owner)
            queue.touch()
            return queue
        # RabbitMQ: Durable = DurableDeclare andalso not ExclusiveDeclare.
        durable = durable and not exclusive
        if name == "":
            name = generate_name("amq.gen-")
        elif _reserved(name):
            raise AccessRefusedError(
                f"queue name '{name}' contains reserved prefix 'amq.*'"
            )
        authorize(CONFIGURE, "queue", name)
        existing = self.queues.get(name)
        if existing is not None:
            self._check_exclusive_access(existing, owner if exclusive else None)
            if exclusive and existing.exclusive_owner is None:
                self._check_exclusive_access(existing, None, locked=True)
            where = self._describe("queue", name)
            for arg, received, current in (
                ("durable", durable, existing.durable),
                ("auto_delete", auto_delete, existing.auto_delete),
            ):
                if received != current:
                    raise PreconditionFailedError(
                        f"inequivalent arg '{arg}' for {where}: received "
                        f"'{_flag(received)}' but current is '{_flag(current)}'"
                    )
            self._check_arguments(
                where,
                arguments,
                existing.arguments,
                EQUIVALENCE_CHECKED_QUEUE_ARGUMENTS,
            )
            existing.touch()  # a redeclare counts as use (x-expires)
            return existing
        max_queues = self.limits.get("max-queues")
        if max_queues is not None and len(self.queues) >= max_queues:
            raise PreconditionFailedError(
                f"cannot declare queue '{name}': queue limit in vhost "
                f"'{self.name}' ({max_queues}) is reached"
            )
        dead_letter_exchange = _text_argument(arguments.get("x-dead-letter-exchange"))
        if dead_letter_exchange is not None:
            authorize(READ, "queue", name)
            authorize(WRITE, "exchange", dead_letter_exchange)
        # RabbitMQ validates the arguments of a new queue only, after the
        # queue limit and the dead-letter permission checks (an existing
        # queue's are compared for equivalence instead).
        try:
            validate_queue_arguments(arguments)
        except InvalidArgumentError as error:
            raise PreconditionFailedError(
                f"invalid arg '{error.key}' for {self._describe('queue', name)}: "
                f"{error.detail}"
            ) from error
        queue = self.new_queue(
            name,
            durable=durable,
            exclusive_owner=owner if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        self.queues[name] = queue
        if exclusive:
            self._exclusive.setdefault(owner, set()).add(queue)
        if durable:
            self.attach_log(queue)
            self._on_durable_change(
                DefinitionChange("queues", queue_entry(self.name, queue))
            )
        return queue

    def destroy(self) -> None:
        """The vhost is deleted: its queues (with their logs and messages),
        delayed exchanges' logs and timers go."""
        for queue in list(self.queues.values()):
            self._remove_queue(queue)
        for exchange in list(self.exchanges.values()):
            self._remove_exchange(exchange)
        self.reply_consumers.clear()

    def delete_queue(
        self,
        name: str,
        *,
        owner: object,
        if_unused: bool = False,
        if_empty: bool = False,
        authorize: Authorize = allow_all,
    ) -> int:
        """Delete a queue; the number of ready messages it held."""
        authorize(CONFIGURE, "queue", name)
        queue = self.queues.get(name)
        if queue is None:
            # RabbitMQ 3.x answers delete-ok for a queue that is not there.
            return 0
        self._check_exclusive_access(queue, owner)
        where = self._describe("queue", name)
        if if_unused and queue.consumers:
            raise PreconditionFailedError(f"{where} in use")
        if if_empty and queue.messages:
            raise PreconditionFailedError(f"{where} not empty")
        count = queue.message_count
        self._remove_queue(queue)
        return count

    def purge_queue(
        self, name: str, *, owner: object, authorize: Authorize = allow_all
    ) -> int:
        authorize(READ, "queue", name)
        return self.get_queue(name, owner).purge()

    def _remove_queue(self, queue: Queue) -> None:
        if queue.deleted:
            return
        queue.deleted = True
        self.queues.pop(queue.name, None)
        self.retired.add_queue(queue)
        if queue.exclusive_owner is not None:
            owned = self._exclusive.get(queue.exclusive_owner)
            if owned is not None:
                owned.discard(queue)
                if not owned:
                    del self._exclusive[queue.exclusive_owner]
        self._unbind_destination(queue)
        queue.stop_timers()
        if queue.log is not None:
            queue.log.destroy()
        if queue.durable:
            self._on_durable_change(
                DefinitionChange(
                    "queues", {"vhost": self.name, "name": queue.name}, True
                )
            )
        consumers = list(queue.consumers)
        queue.consumers.clear()
        queue.messages.clear()
        for consumer in consumers:
            consumer.channel.queue_deleted(consumer)

    def new_queue(
        self,
        name: str,
        *,
        durable: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
        exclusive_owner: object | None = None,
    ) -> Queue:
        queue = Queue(
            name,
            self.name,
            durable=durable,
            exclusive_owner=exclusive_owner,
            auto_delete=auto_delete,
            arguments=arguments,
            on_unused=self._remove_queue,
            scheduler=self._scheduler,
            on_dead_letter=self._dead_letter,
        )
        policy = effective_policy(self.policies, name, "queues")
        if policy is not None:
            queue.configure(queue_settings(arguments, policy))
        return queue

    def set_policies(self, policies: list[Policy]) -> None:
        """Replace the vhost's policies and apply them to what exists."""
        self.policies = policies
        for queue in list(self.queues.values()):
            policy = effective_policy(policies, queue.name, "queues")
            queue.configure(queue_settings(queue.arguments, policy))
        for exchange in self.exchanges.values():
            self._apply_exchange_policy(exchange)

    def _apply_exchange_policy(self, exchange: Exchange) -> None:
        if exchange.name:
            exchange.policy_alternate_exchange = alternate_exchange(
                effective_policy(self.policies, exchange.name, "exchanges")
            )

    def _dead_letter(
        self, queue: Queue, entries: list[QueueEntry], reason: str
    ) -> None:
        """Republish through the queue's dead-letter exchange (RabbitMQ drops
        the message when that exchange does not exist)."""
        exchange = self.exchanges.get(queue.dead_letter_exchange or "")
        if exchange is None or queue.dead_letter_exchange is None:
            return
        for entry in entries:
            try:
                message = dead_lettered_message(
                    entry.message,
                    queue_name=queue.name,
                    reason=reason,
                    exchange_name=exchange.name,
                    routing_key=queue.dead_letter_routing_key,
                )
                extra_keys = None
                if queue.dead_letter_routing_key is None:
                    # Routed by the original key plus its CC/BCC keys.
                    headers = message.headers
                    if headers is not None:
                        extra_keys = header_routes(headers)
                targets = self.route(exchange, message, extra_keys)
            except ValueError:
                continue  # unreadable properties: RabbitMQ could not either
            for target in targets:
                if not is_cycle(target.name, message, reason):
                    target.enqueue(message)

    # -- delayed messages (x-delayed-message) ----------------------------------

    def _attach_delay_log(self, exchange: Exchange) -> None:
        if (
            isinstance(exchange, DelayedMessageExchange)
            and exchange.durable
            and self._open_log is not None
        ):
            if exchange.store_id is None:
                exchange.store_id = new_store_id()
            exchange.log = self._open_log(exchange.store_id)

    def hold(
        self,
        exchange: DelayedMessageExchange,
        message: Message,
        delay_ms: int,
        extra_keys: list[str] | None = None,
    ) -> None:
        """Hold a message for `delay_ms`, then route it through `exchange`
        (by its routing key and its CC/BCC keys, `extra_keys`). On a durable
        exchange it is kept in the exchange's log meanwhile."""
        if self._scheduler is None:
            self._release(exchange, message, None, extra_keys)
            return
        exchange.delay_seq += 1
        seq = exchange.delay_seq
        if exchange.log is not None:
            deliver_at_ms = int(time.time() * 1000) + delay_ms
            properties = decode_properties(message.properties_raw)
            properties.headers = {
                **(properties.headers or {}),
                DELIVER_AT_HEADER: deliver_at_ms,
                **({EXTRA_KEYS_HEADER: list(extra_keys)} if extra_keys else {}),
            }
            exchange.log.append(
                seq,
                message.exchange,
                message.routing_key,
                properties.marshal(),
                message.body,
            )
        exchange.held[seq] = self._scheduler.call_at(
            self._scheduler.now() + delay_ms / 1000,
            lambda: self._release(exchange, message, seq, extra_keys),
        )

    def _release(
        self,
        exchange: DelayedMessageExchange,
        message: Message,
        seq: int | None,
        extra_keys: list[str] | None,
    ) -> None:
        if seq is not None:
            exchange.held.pop(seq, None)
        if not exchange.deleted:
            try:
                queues = self.route(exchange, message, extra_keys)
            except ValueError:
                queues = []
            for queue in queues:
                queue.enqueue(message)
        # Settled only after the queues have it: a crash in between gives a
        # duplicate at worst, never a loss.
        if seq is not None and exchange.log is not None:
            exchange.log.ack(seq)

    def restore_held(
        self, exchange: DelayedMessageExchange, stored: list[StoredMessage]
    ) -> None:
        """Held messages recovered at start: each waits what is left of its delay."""
        now_ms = int(time.time() * 1000)
        for record in stored:
            properties = decode_properties(record.properties_raw)
            headers = dict(properties.headers or {})
            deliver_at = headers.pop(DELIVER_AT_HEADER, now_ms)
            extra = headers.pop(EXTRA_KEYS_HEADER, None)
            extra_keys = (
                [key for key in extra if isinstance(key, str)]
                if isinstance(extra, list)
                else None
            )
            properties.headers = headers or None
            message = Message(
                record.exchange, record.routing_key, properties.marshal(), record.body
            )
            exchange.delay_seq = max(exchange.delay_seq, record.seq)
            remaining = (
                max(int(deliver_at) - now_ms, 0) if isinstance(deliver_at, int) else 0
            )
            if self._scheduler is None:
                continue
            seq = record.seq
            exchange.held[seq] = self._scheduler.call_at(
                self._scheduler.now() + remaining / 1000,
                lambda message=message, seq=seq, keys=extra_keys: self._release(
                    exchange, message, seq, keys
                ),
            )

    def attach_log(self, queue: Queue) -> None:
        if self._open_log is not None and queue.durable:
            if queue.store_id is None:
                queue.store_id = new_store_id()
            queue.log = self._open_log(queue.store_id)

    def owner_closed(self, owner: object) -> None:
        """A connection closed: its exclusive queues go with it."""
        for queue in list(self._exclusive.pop(owner, ())):
            self._remove_queue(queue)

    # -- bindings --------------------------------------------------------------

    def bind_queue(
        self,
        queue_name: str,
        exchange_name: str,
        binding_key: str,
        arguments: Mapping[str, Any] | None,
        *,
        owner: object,
        authorize: Authorize = allow_all,
    ) -> None:
        # RabbitMQ's binding_action: write on the destination, then the
        # default exchange rule, then read on the source.
        authorize(WRITE, "queue", queue_name)
        if exchange_name == "":
            raise AccessRefusedError("operation not permitted on the default exchange")
        authorize(READ, "exchange", exchange_name)
        self._authorize_topic(authorize, exchange_name, binding_key)
        exchange = self.get_exchange(exchange_name)
        queue = self.get_queue(queue_name, owner)
        self._bind(exchange, queue, binding_key, dict(arguments or {}))

    def unbind_queue(
        self,
        queue_name: str,
        exchange_name: str,
        binding_key: str,
        arguments: Mapping[str, Any] | None,
        *,
        owner: object,
        authorize: Authorize = allow_all,
    ) -> None:
        # RabbitMQ's binding_action: write on the destination, then the
        # default exchange rule, then read on the source.
        authorize(WRITE, "queue", queue_name)
        if exchange_name == "":
            raise AccessRefusedError("operation not permitted on the default exchange")
        authorize(READ, "exchange", exchange_name)
        self._authorize_topic(authorize, exchange_name, binding_key)
        # RabbitMQ answers unbind-ok for a missing queue, exchange or binding,
        # and for another connection's exclusive queue.
        queue = self.queues.get(queue_name)
        exchange = self.exchanges.get(exchange_name)
        if queue is not None and exchange is not None:
            self._unbind(exchange, queue, binding_key, dict(arguments or {}))

    def bind_exchange(
        self,
        destination_name: str,
        source_name: str,
        binding_key: str,
        arguments: Mapping[str, Any] | None,
        *,
        authorize: Authorize = allow_all,
    ) -> None:
        authorize(WRITE, "exchange", destination_name)
        if "" in (destination_name, source_name):
            raise AccessRefusedError("operation not permitted on the default exchange")
        authorize(READ, "exchange", source_name)
        self._authorize_topic(authorize, source_name, binding_key)
        source = self.get_exchange(source_name)
        destination = self.get_exchange(destination_name)
        self._bind(source, destination, binding_key, dict(arguments or {}))

    def unbind_exchange(
        self,
        destination_name: str,
        source_name: str,
        binding_key: str,
        arguments: Mapping[str, Any] | None,
        *,
        authorize: Authorize = allow_all,
    ) -> None:
        authorize(WRITE, "exchange", destination_name)
        if "" in (destination_name, source_name):
            raise AccessRefusedError("operation not permitted on the default exchange")
        authorize(READ, "exchange", source_name)
        self._authorize_topic(authorize, source_name, binding_key)
        source = self.exchanges.get(source_name)
        destination = self.exchanges.get(destination_name)
        if source is not None and destination is not None:
            self._unbind(source, destination, binding_key, dict(arguments or {}))

    def _authorize_topic(
        self, authorize: Authorize, exchange_name: str, binding_key: str
    ) -> None:
        """RabbitMQ's read check on a topic exchange's binding key (topic
        permissions), made only when the exchange exists."""
        exchange = self.exchanges.get(exchange_name)
        if exchange is not None and exchange.type_name == "topic":
            authorize(READ, TOPIC, exchange_name, binding_key)

    def _bind(
        self,
        source: Exchange,
        destination: object,
        binding_key: str,
        arguments: dict[str, Any],
    ) -> None:
        try:
            source.validate_binding(binding_key, arguments)
        except ValueError as error:
            raise PreconditionFailedError(str(error)) from error
        if source.add_binding(destination, binding_key, arguments):
            self._sources.setdefault(destination, set()).add(source)
            if _is_durable_binding(source, destination):
                self._on_durable_change(
                    DefinitionChange(
                        "bindings",
                        binding_entry(
                            self.name, source, destination, binding_key, arguments
                        ),
                    )
                )

    def _unbind(
        self,
        source: Exchange,
        destination: object,
        binding_key: str,
        arguments: dict[str, Any],
    ) -> None:
        if not source.remove_binding(destination, binding_key, arguments):
            return
        if _is_durable_binding(source, destination):
            self._on_durable_change(
                DefinitionChange(
                    "bindings",
                    binding_entry(
                        self.name, source, destination, binding_key, arguments
                    ),
                    True,
                )
            )
        if not source.has_binding_to(destination):
            self._forget_source(destination, source)
        self._maybe_auto_delete(source)

    def _forget_source(self, destination: object, source: Exchange) -> None:
        sources = self._sources.get(destination)
        if sources is not None:
            sources.discard(source)
            if not sources:
                del self._sources[destination]

    def _unbind_destination(self, destination: object) -> None:
        for source in self._sources.pop(destination, ()):
            source.remove_destination(destination)
            self._maybe_auto_delete(source)

    def _maybe_auto_delete(self, exchange: Exchange) -> None:
        if exchange.auto_delete and not exchange.bindings and not exchange.deleted:
            self._remove_exchange(exchange)

    # -- publishing ------------------------------------------------------------

    def resolve_publish(
        self, exchange: Exchange, message: Message
    ) -> tuple[Message, list[Queue] | Held]:
        """What a publish of `message` to `exchange` does, before anything is
        enqueued: the message as it will be stored (BCC removed) and the
        queues it routes to (CC/BCC keys included), or Held when a delayed
        exchange is to hold it.

        Raises:
            PreconditionFailedError: an invalid expiration or CC/BCC header,
                or headers a headers exchange cannot read (406).
            InternalError: properties that cannot be decoded at all (541, as
                RabbitMQ closes the connection).
        """
        try:
            message.expiration_ms  # noqa: B018 - reading it validates it
        except ValueError as error:
            try:
                expiration = message.properties.expiration or ""
            except ValueError:
                raise InternalError(str(error)) from error
            raise PreconditionFailedError(
                expiration_error_text(expiration, str(error))
            ) from error
        extra_keys = None
        properties_raw = message.properties_raw
        if properties_raw and properties_raw[0] & 0x20:  # headers flag (0x2000)
            message, extra_keys = sender_selected(message)
            if isinstance(exchange, DelayedMessageExchange):
                try:
                    delay_ms = message_delay_ms(message)
                except ValueError as error:  # unreadable properties, as above
                    raise InternalError(str(error)) from error
                if delay_ms:
                    return message, Held(exchange, delay_ms, extra_keys)
        try:
            return message, self.route(exchange, message, extra_keys)
        except ValueError as error:  # properties a headers exchange could not read
            raise PreconditionFailedError(str(error)) from error

    def publish_target(self, exchange_name: str) -> Exchange:
        """The exchange a basic.publish names, checked for publishing."""
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            raise NotFoundError(f"no {self._describe('exchange', exchange_name)}")
        if exchange.internal:
            raise AccessRefusedError(
                "cannot publish to internal "
                f"{self._describe('exchange', exchange_name)}"
            )
        return exchange

    def route(
        self,
        exchange: Exchange,
        message: Message,
        extra_keys: list[str] | None = None,
    ) -> list[Queue]:
        """Every queue the message reaches, through exchange-to-exchange
        bindings and alternate exchanges, each queue once. `extra_keys` are
        the CC/BCC keys: the message is routed by each of them too. Default
        exchange keys naming a direct reply-to consumer deliver to it at once
        (as rabbit_exchange:route does; they do not count as routed)."""
        if extra_keys:
            return self._route_keys(exchange, message, extra_keys)
        if (
            exchange is self.default_exchange
            and self.reply_consumers
            and message.routing_key.startswith(REPLY_TO_PREFIX)
        ):
            self._deliver_reply(message.routing_key, message)
            return []
        first = exchange.route(message)
        if not exchange.exchange_destinations:
            # The common case: every destination is a queue.
            if first:
                return list(first)  # type: ignore[arg-type]
            if exchange.alternate_exchange is None:
                return []
        # Exchange-to-exchange bindings or an alternate exchange to follow.
        return self._route_keys(exchange, message, [])

    def _deliver_reply(self, routing_key: str, message: Message) -> None:
        deliver = self.reply_consumers.get(routing_key[len(REPLY_TO_PREFIX) :])
        if deliver is not None:
            deliver(message)

    def _route_keys(
        self, exchange: Exchange, message: Message, extra_keys: list[str]
    ) -> list[Queue]:
        """The full walk of route(): through exchange-to-exchange bindings and
        alternate exchanges, by the message's key and every extra key, each
        key once (rabbit_exchange:route with several routing keys)."""
        keys = [message.routing_key]
        for key in extra_keys:
            if key not in keys:
                keys.append(key)
        views = [with_routing_key(message, key) for key in keys]
        queues: dict[Queue, None] = {}
        visited: set[Exchange] = {exchange}
        pending: list[Exchange] = [exchange]
        while pending:
            current = pending.pop()
            destinations: dict[object, None] = {}
            for view in views:
                if current is self.default_exchange and view.routing_key.startswith(
                    REPLY_TO_PREFIX
                ):
                    self._deliver_reply(view.routing_key, message)
                    continue
                destinations.update(dict.fromkeys(current.route(view)))
            if not destinations:
                alternate = self.exchanges.get(current.alternate_exchange or "")
                if (
                    current.alternate_exchange
                    and alternate is not None
                    and alternate not in visited
                ):
                    visited.add(alternate)
                    pending.append(alternate)
                continue
            for destination in destinations:
                if isinstance(destination, Queue):
                    queues[destination] = None
                elif isinstance(destination, Exchange) and destination not in visited:
                    visited.add(destination)
                    pending.append(destination)
        return list(queues)


def sender_selected(message: Message) -> tuple[Message, list[str] | None]:
    """The CC/BCC routing keys, and the message without its BCC header."""
    try:
        headers = message.headers
    except ValueError:
        return message, None  # the routing step reports it
    if not headers or ("CC" not in headers and "BCC" not in headers):
        return message, None
    try:
        extra_keys = header_routes(headers)
    except ValueError as error:
        raise PreconditionFailedError(f"invalid message: {error}") from error
    if "BCC" in headers:
        # Only BCC goes: the other headers keep their order and wire types,
        # as in RabbitMQ.
        parts = split_properties(message.properties_raw)
        parts["headers"] = table_body(
            [
                (key, value)
                for key, value in split_table(parts["headers"])
                if key != "BCC"
            ]
        )
        message = Message(
            message.exchange,
            message.routing_key,
            join_properties(parts),
            message.body,
        )
    return message, extra_keys


def _text_argument(value: object) -> str | None:
    """A string argument (longstr arrives as bytes), else None."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _is_durable_binding(source: Exchange, destination: object) -> bool:
    return source.durable and bool(getattr(destination, "durable", False))


def _describe_value(value: object) -> str:
    if value is None:
        return "none"
    return f"the value '{format_value(value)}' of type '{amqp_type_name(value)}'"


def exchange_entry(vhost_name: str, exchange: Exchange) -> dict[str, Any]:
    """A durable exchange's definitions entry (RabbitMQ's shape)."""
    return {
        "name": exchange.name,
        "vhost": vhost_name,
        "type": exchange.type_name,
        "durable": True,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": exchange.arguments,
        **(
            {STORE_ID_KEY: exchange.store_id}
            if isinstance(exchange, DelayedMessageExchange) and exchange.store_id
            else {}
        ),
    }


def queue_entry(vhost_name: str, queue: Queue) -> dict[str, Any]:
    """A durable queue's definitions entry (RabbitMQ's shape)."""
    return {
        "name": queue.name,
        "vhost": vhost_name,
        "type": "classic",
        "durable": True,
        "auto_delete": queue.auto_delete,
        "arguments": queue.arguments,
        **({STORE_ID_KEY: queue.store_id} if queue.store_id else {}),
    }


def binding_entry(
    vhost_name: str,
    source: Exchange,
    destination: Any,
    binding_key: str,
    arguments: dict[str, Any],
) -> dict[str, Any]:
    """A binding's definitions entry (RabbitMQ's shape)."""
    return {
        "source": source.name,
        "vhost": vhost_name,
        "destination": destination.name,
        "destination_type": "queue" if isinstance(destination, Queue) else "exchange",
        "routing_key": binding_key,
        "arguments": arguments,
    }


def export_definitions(vhost: VHost) -> dict[str, list[dict[str, Any]]]:
    """The vhost's durable exchanges, queues and bindings, in RabbitMQ's
    definitions shape."""
    exchanges = [
        exchange_entry(vhost.name, exchange)
        for exchange in vhost.exchanges.values()
        if exchange.durable and exchange.name and not _reserved(exchange.name)
    ]
    queues = [
        queue_entry(vhost.name, queue)
        for queue in vhost.queues.values()
        if queue.durable
    ]
    bindings = [
        binding_entry(vhost.name, source, destination, binding_key, arguments)
        for source, destination, binding_key, arguments in _iter_bindings(vhost)
        if _is_durable_binding(source, destination)
    ]
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def _iter_bindings(vhost: VHost) -> Iterator[tuple[Exchange, Any, str, dict[str, Any]]]:
    for source in vhost.exchanges.values():
        for destination, binding_key, arguments in source.iter_bindings():
            yield source, destination, binding_key, arguments


def import_definitions(
    vhost: VHost,
    exchanges: list[dict[str, Any]],
    queues: list[dict[str, Any]],
    bindings: list[dict[str, Any]],
) -> None:
    """Recreate definitions (from our store or a RabbitMQ export).

    Raises:
        ValueError: an entry is malformed or names an unknown exchange type.
    """
    try:
        for entry in exchanges:
            name = str(entry["name"])
            if not name or name in vhost.exchanges:
                continue
            exchange_type = EXCHANGE_TYPES.get(str(entry.get("type", "")))
            if exchange_type is None:
                raise ValueError(
                    f"exchange '{name}': unknown type {entry.get('type')!r}"
                )
            exchange = vhost.exchanges[name] = exchange_type(
                name,
                durable=bool(entry.get("durable", True)),
                auto_delete=bool(entry.get("auto_delete", False)),
                internal=bool(entry.get("internal", False)),
                arguments=dict(entry.get("arguments") or {}),
            )
            vhost._apply_exchange_policy(exchange)
            store_id = entry.get(STORE_ID_KEY)
            if isinstance(exchange, DelayedMessageExchange):
                if isinstance(store_id, str) and store_id.isalnum():
                    exchange.store_id = store_id
                vhost._attach_delay_log(exchange)
        for entry in queues:
            name = str(entry["name"])
            if name in vhost.queues:
                continue
            queue = vhost.queues[name] = vhost.new_queue(
                name,
                durable=bool(entry.get("durable", True)),
                auto_delete=bool(entry.get("auto_delete", False)),
                arguments=dict(entry.get("arguments") or {}),
            )
            store_id = entry.get(STORE_ID_KEY)
            if isinstance(store_id, str) and store_id.isalnum():
                queue.store_id = store_id
            vhost.attach_log(queue)
        for entry in bindings:
            source = vhost.exchanges.get(str(entry["source"]))
            name = str(entry["destination"])
            destination: object | None = (
                vhost.queues.get(name)
                if entry.get("destination_type", "queue") == "queue"
                else vhost.exchanges.get(name)
            )
            if source is None or destination is None or source.name == "":
                continue
            vhost._bind(
                source,
                destination,
                str(entry.get("routing_key", "")),
                dict(entry.get("arguments") or {}),
            )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"malformed definitions entry: {error!r}") from error
