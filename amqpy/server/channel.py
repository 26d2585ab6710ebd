"""One AMQP channel of a connection: turns methods into broker calls and
broker results into frames. Also the broker's `DeliverySink` for the
channel's consumers."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from pamqp import base as pamqp_base
from pamqp import commands

from amqpy.broker.access import READ, TOPIC, WRITE
from amqpy.broker.channel import Channel, Unacked, generate_name
from amqpy.broker.errors import (
    FeatureNotImplementedError,
    NotAllowedError,
    NotFoundError,
    PreconditionFailedError,
)
from amqpy.broker.exchange import Exchange
from amqpy.broker.queue import Queue
from amqpy.broker.vhost import Held
from amqpy.model.message import (
    REPLY_TO_PREFIX,
    REPLY_TO_QUEUE,
    Message,
    decode_properties,
)
from amqpy.protocol import frames
from amqpy.protocol.events import ContentReceived
from amqpy.reply_code import ReplyCode

if TYPE_CHECKING:
    from amqpy.broker.vhost import VHost
    from amqpy.server.connection import ConnectionHandler

Handler = Callable[["ChannelHandler", Any], None]

# Permission checks a channel remembers (RabbitMQ's channel keeps 12).
PERMISSION_CACHE_SIZE = 12


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


@attrs.frozen
class TxPublish:
    """A publish in a transaction: routed when published (as RabbitMQ does),
    enqueued at commit."""

    message: Message
    queues: list[Queue] | Held
    content: ContentReceived


@attrs.frozen
class TxAck:
    """Acks (requeue None), or nacks/rejects, taken at once, settled at commit."""

    taken: list[Unacked]
    requeue: bool | None


class ChannelHandler:
    """Methods of one channel; `on_<class>_<method>` per AMQP method."""

    def __init__(self, connection: ConnectionHandler, channel_id: int) -> None:
        self.connection = connection
        self.channel_id = channel_id
        self.vhost: VHost = connection.vhost
        self.channel = Channel(self, owner=connection)
        self.channel.defer_kick = connection.defer_kick
        # Per consumer tag: the exchange and routing key of its last delivery
        # and the fixed bytes of its basic.deliver frame for that route
        # (frames.deliver_template), reused while the route stays the same.
        self._deliver_templates: dict[str, tuple[str, str, tuple[bytes, bytes]]] = {}
        self.confirm_mode = False
        self.next_publish_seq_no = 1
        # Confirms (publish seq_nos) and tx.commit-oks waiting for the store
        # generation they need on disk, in order.
        self._pending_replies: deque[tuple[int | pamqp_base.Frame, int]] = deque()
        # The open transaction's publishes and acks, once tx.select was seen.
        self.tx: list[TxPublish | TxAck] | None = None
        self.last_queue_name: str | None = None
        # Direct reply-to: the consumer tag and the token of this channel's
        # consumer of amq.rabbitmq.reply-to (RabbitMQ's reply_consumer).
        self.reply_consumer: tuple[str, str] | None = None
        # Permission checks that passed, as RabbitMQ's channel caches them;
        # emptied when permissions change, so a revocation is seen at once.
        self._permitted = connection.server.broker.access.new_cache()
        # Message counters (amqpy.broker.stats.CHANNEL_COUNTERS).
        self.stat_publish = 0
        self.stat_publish_refused = 0
        self.stat_tx_publish = 0
        self.stat_confirm = 0
        self.stat_return_unroutable = 0
        self.stat_drop_unroutable = 0
        connection.broker_stats.channels_opened += 1

    @property
    def stat_publish_confirm(self) -> int:
        """Publishes in confirm or tx mode (RabbitMQ's received_confirm)."""
        return self.next_publish_seq_no - 1 + self.stat_tx_publish

    @property
    def unconfirmed_count(self) -> int:
        """Publishes whose confirm waits for the disk (messages_unconfirmed)."""
        return sum(1 for reply, _ in self._pending_replies if isinstance(reply, int))

    # -- DeliverySink ----------------------------------------------------------

    def can_accept(self) -> bool:
        return self.connection.can_accept_deliveries()

    def deliver(
        self,
        consumer_tag: str,
        delivery_tag: int,
        redelivered: bool,
        message: Message,
    ) -> None:
        connection = self.connection
        cached = self._deliver_templates.get(consumer_tag)
        if (
            cached is None
            or cached[1] != message.routing_key
            or cached[0] != message.exchange
        ):
            cached = self._new_deliver_template(consumer_tag, message)
        connection.send_raw(
            frames.encode_delivery_from(
                cached[2],
                self.channel_id,
                delivery_tag,
                redelivered,
                message.properties_raw,
                message.body,
                connection.frame_max,
            )
        )

    def _new_deliver_template(
        self, consumer_tag: str, message: Message
    ) -> tuple[str, str, tuple[bytes, bytes]]:
        templates = self._deliver_templates
        if len(templates) > 1000:
            templates.clear()  # bounded: consumers come and go
        exchange, routing_key = message.exchange, message.routing_key
        cached = templates[consumer_tag] = (
            exchange,
            routing_key,
            frames.deliver_template(
                self.channel_id,
                frames.shortstr(consumer_tag),
                frames.shortstr(exchange) + frames.shortstr(routing_key),
            ),
        )
        return cached

    def deliver_reply(self, message: Message) -> None:
        """A direct reply-to response: straight to the reply consumer, no
        queue, no ack (rabbit_channel's deliver_reply)."""
        if self.reply_consumer is None:
            return
        # RabbitMQ 3.10 sends the channel's next delivery tag without using
        # it up: the next delivery or basic.get repeats it (no ack needed).
        delivery_tag = self.channel.next_delivery_tag
        self.deliver(self.reply_consumer[0], delivery_tag, False, message)

    def _drop_reply_consumer(self) -> None:
        if self.reply_consumer is not None:
            self.vhost.reply_consumers.pop(self.reply_consumer[1], None)
            self.reply_consumer = None

    def consumer_cancelled(self, consumer_tag: str) -> None:
        if self.connection.client_capability("consumer_cancel_notify"):
            self.send(commands.Basic.Cancel(consumer_tag=consumer_tag, nowait=True))

    # -- plumbing --------------------------------------------------------------

    def send(self, method: pamqp_base.Frame) -> None:
        self.connection.send_method(self.channel_id, method)

    def handle_method(self, method: pamqp_base.Frame) -> None:
        handler = HANDLERS.get(type(method))
        if handler is None:
            raise FeatureNotImplementedError(
                f"{method.name.lower()} is not supported by amqpy"
            )
        handler(self, method)

    def close(self) -> None:
        """The channel is gone (either side closed it, or the connection)."""
        if self.tx:
            # An uncommitted transaction's acks never happened.
            self.channel.restore(
                [
                    item
                    for work in self.tx
                    if isinstance(work, TxAck)
                    for item in work.taken
                ]
            )
            self.tx = None
        self._drop_reply_consumer()
        if not self.channel.closed:
            # Its counts live on in the vhost's (amqpy.broker.stats).
            self.vhost.retired.add_channel(self)
            self.connection.broker_stats.channels_closed += 1
        self.channel.close()
        self._pending_replies.clear()
        self.connection.server.awaiting_confirms.discard(self)

    def authorize(
        self, permission: str, kind: str, name: str, routing_key: str = ""
    ) -> None:
        """Raises AccessRefusedError unless the user may do `permission`
        (configure, write, read) on the `kind` (exchange, queue) `name`, or,
        for TOPIC, with `routing_key` on the topic exchange `name`."""
        if kind == TOPIC:  # not cached: the key varies
            self.connection.server.broker.access.check(
                self.connection.username,
                self.vhost.name,
                permission,
                kind,
                name,
                routing_key,
            )
            return
        key = (permission, kind, name)
        if key in self._permitted:
            return
        self.connection.server.broker.access.check(
            self.connection.username, self.vhost.name, permission, kind, name
        )
        if len(self._permitted) >= PERMISSION_CACHE_SIZE:
            del self._permitted[next(iter(self._permitted))]
        self._permitted[key] = None

    def _queue_name(self, name: str) -> str:
        """RabbitMQ's shortcut: an empty queue name is the last one declared."""
        if name:
            return name
        if self.last_queue_name is None:
            raise NotFoundError("no previously declared queue")
        return self.last_queue_name

    # -- channel ---------------------------------------------------------------

    def on_channel_flow(self, method: commands.Channel.Flow) -> None:
        if not method.active:
            raise FeatureNotImplementedError("active=false")
        self.send(commands.Channel.FlowOk(active=True))

    def on_channel_flow_ok(self, method: commands.Channel.FlowOk) -> None:
        pass  # we never send channel.flow

    # -- exchange --------------------------------------------------------------

    def on_exchange_declare(self, method: commands.Exchange.Declare) -> None:
        self.vhost.declare_exchange(
            method.exchange,
            method.exchange_type,
            passive=method.passive,
            durable=method.durable,
            auto_delete=method.auto_delete,
            internal=method.internal,
            arguments=method.arguments,
            authorize=self.authorize,
        )
        if not method.nowait:
            self.send(commands.Exchange.DeclareOk())

    def on_exchange_delete(self, method: commands.Exchange.Delete) -> None:
        self.vhost.delete_exchange(
            method.exchange, if_unused=method.if_unused, authorize=self.authorize
        )
        if not method.nowait:
            self.send(commands.Exchange.DeleteOk())

    def on_exchange_bind(self, method: commands.Exchange.Bind) -> None:
        self.vhost.bind_exchange(
            method.destination,
            method.source,
            method.routing_key,
            method.arguments,
            authorize=self.authorize,
        )
        if not method.nowait:
            self.send(commands.Exchange.BindOk())

    def on_exchange_unbind(self, method: commands.Exchange.Unbind) -> None:
        self.vhost.unbind_exchange(
            method.destination,
            method.source,
            method.routing_key,
            method.arguments,
            authorize=self.authorize,
        )
        if not method.nowait:
            self.send(commands.Exchange.UnbindOk())

    # -- queue -----------------------------------------------------------------

    def on_queue_declare(self, method: commands.Queue.Declare) -> None:
        if method.queue.startswith(REPLY_TO_QUEUE) and self._declare_reply_queue(
            method
        ):
            return
        queue = self.vhost.declare_queue(
            method.queue,
            owner=self.connection,
            passive=method.passive,
            durable=method.durable,
            exclusive=method.exclusive,
            auto_delete=method.auto_delete,
            arguments=method.arguments,
            authorize=self.authorize,
        )
        self.last_queue_name = queue.name
        if not method.nowait:
            self.connection.send_raw(
                frames.encode_queue_declare_ok(
                    self.channel_id,
                    queue.name,
                    queue.message_count,
                    queue.consumer_count,
                )
            )

    def _declare_reply_queue(self, method: commands.Queue.Declare) -> bool:
        """RabbitMQ answers declare-ok (0 messages, 1 consumer) for the
        direct reply-to pseudo-queue, and for a reply-to name whose consumer
        is alive (passive or not), 404 for another reply-to name. False: not
        such a declare."""
        name = method.queue
        if name != REPLY_TO_QUEUE:
            if not name.startswith(REPLY_TO_PREFIX):
                return False
            if name[len(REPLY_TO_PREFIX) :] not in self.vhost.reply_consumers:
                raise NotFoundError(f"no queue '{name}' in vhost '{self.vhost.name}'")
        if not method.nowait:
            self.connection.send_raw(
                frames.encode_queue_declare_ok(self.channel_id, name, 0, 1)
            )
        return True

    def on_queue_bind(self, method: commands.Queue.Bind) -> None:
        queue_name = self._queue_name(method.queue)
        routing_key = method.routing_key
        if not method.queue and not routing_key:
            routing_key = queue_name  # the same shortcut, for the key
        self.vhost.bind_queue(
            queue_name,
            method.exchange,
            routing_key,
            method.arguments,
            owner=self.connection,
            authorize=self.authorize,
        )
        if not method.nowait:
            self.send(commands.Queue.BindOk())

    def on_queue_unbind(self, method: commands.Queue.Unbind) -> None:
        queue_name = self._queue_name(method.queue)
        routing_key = method.routing_key
        if not method.queue and not routing_key:
            routing_key = queue_name
        self.vhost.unbind_queue(
            queue_name,
            method.exchange,
            routing_key,
            method.arguments,
            owner=self.connection,
            authorize=self.authorize,
        )
        self.send(commands.Queue.UnbindOk())

    def on_queue_purge(self, method: commands.Queue.Purge) -> None:
        count = self.vhost.purge_queue(
            self._queue_name(method.queue),
            owner=self.connection,
            authorize=self.authorize,
        )
        if not method.nowait:
            self.send(commands.Queue.PurgeOk(message_count=count))

    def on_queue_delete(self, method: commands.Queue.Delete) -> None:
        count = self.vhost.delete_queue(
            self._queue_name(method.queue),
            owner=self.connection,
            if_unused=method.if_unused,
            if_empty=method.if_empty,
            authorize=self.authorize,
        )
        if not method.nowait:
            self.send(commands.Queue.DeleteOk(message_count=count))

    # -- basic -----------------------------------------------------------------

    def on_basic_qos(self, method: commands.Basic.Qos) -> None:
        if method.prefetch_size:
            raise FeatureNotImplementedError(
                f"prefetch_size!=0 ({method.prefetch_size})"
            )
        self.send(commands.Basic.QosOk())
        self.channel.qos(method.prefetch_count, method.global_)

    def on_basic_consume(self, method: commands.Basic.Consume) -> None:
        if method.queue == REPLY_TO_QUEUE:
            self._consume_replies(method)
            return
        queue_name = self._queue_name(method.queue)
        self.authorize(READ, "queue", queue_name)
        queue = self.vhost.get_queue(queue_name, owner=self.connection)
        consumer = self.channel.consume(
            queue,
            method.consumer_tag,
            no_ack=method.no_ack,
            exclusive=method.exclusive,
            arguments=method.arguments,
        )
        if not method.nowait:
            self.send(commands.Basic.ConsumeOk(consumer_tag=consumer.tag))
        self.channel.start(consumer)

    def _consume_replies(self, method: commands.Basic.Consume) -> None:
        """basic.consume of amq.rabbitmq.reply-to, as rabbit_channel does it."""
        if method.consumer_tag and method.consumer_tag in self.channel.consumers:
            raise NotAllowedError(
                f"attempt to reuse consumer tag '{method.consumer_tag}'"
            )
        if not method.no_ack:
            raise PreconditionFailedError("reply consumer cannot acknowledge")
        if self.reply_consumer is not None:
            raise PreconditionFailedError("reply consumer already set")
        tag = method.consumer_tag or generate_name("amq.ctag-")
        token = secrets.token_urlsafe(24)
        self.reply_consumer = (tag, token)
        self.vhost.reply_consumers[token] = self.deliver_reply
        if not method.nowait:
            self.send(commands.Basic.ConsumeOk(consumer_tag=tag))

    def on_basic_cancel(self, method: commands.Basic.Cancel) -> None:
        if (
            self.reply_consumer is not None
            and method.consumer_tag == self.reply_consumer[0]
        ):
            self._drop_reply_consumer()
            if not method.nowait:
                self.send(commands.Basic.CancelOk(consumer_tag=method.consumer_tag))
            return
        # Send cancel-ok first: cancelling may delete an auto-delete queue,
        # and the client must not see that queue's effects before the ok.
        if not method.nowait:
            self.send(commands.Basic.CancelOk(consumer_tag=method.consumer_tag))
        self.channel.cancel(method.consumer_tag)

    def on_basic_get(self, method: commands.Basic.Get) -> None:
        queue_name = self._queue_name(method.queue)
        self.authorize(READ, "queue", queue_name)
        queue = self.vhost.get_queue(queue_name, owner=self.connection)
        got = self.channel.get(queue, method.no_ack)
        if got is None:
            self.send(commands.Basic.GetEmpty())
            return
        delivery_tag, entry = got
        message = entry.message
        self.connection.send_raw(
            frames.encode_get_ok(
                self.channel_id,
                delivery_tag,
                entry.redelivered,
                message.exchange,
                message.routing_key,
                queue.message_count,
            )
            + frames.encode_content(
                self.channel_id,
                message.properties_raw,
                message.body,
                self.connection.frame_max,
            )
        )

    def on_basic_ack(self, method: commands.Basic.Ack) -> None:
        if self.tx is not None:
            self.tx.append(
                TxAck(self.channel.take(method.delivery_tag, method.multiple), None)
            )
            return
        self.channel.ack(method.delivery_tag, method.multiple)

    def on_basic_nack(self, method: commands.Basic.Nack) -> None:
        if self.tx is not None:
            taken = self.channel.take(method.delivery_tag, method.multiple)
            self.tx.append(TxAck(taken, method.requeue))
            return
        self.channel.reject(method.delivery_tag, method.multiple, method.requeue)

    def on_basic_reject(self, method: commands.Basic.Reject) -> None:
        if self.tx is not None:
            taken = self.channel.take(method.delivery_tag, False)
            self.tx.append(TxAck(taken, method.requeue))
            return
        self.channel.reject(method.delivery_tag, False, method.requeue)

    def on_basic_recover(self, method: commands.Basic.Recover) -> None:
        if not method.requeue:
            # RabbitMQ does not implement redelivery to the original consumer.
            raise FeatureNotImplementedError("requeue=false")
        self.send(commands.Basic.RecoverOk())
        self.channel.recover()

    def on_basic_recover_async(self, method: commands.Basic.RecoverAsync) -> None:
        if not method.requeue:
            raise FeatureNotImplementedError("requeue=false")
        self.channel.recover()

    def on_confirm_select(self, method: commands.Confirm.Select) -> None:
        if self.tx is not None:
            raise PreconditionFailedError("cannot switch from tx to confirm mode")
        self.confirm_mode = True
        if not method.nowait:
            self.send(commands.Confirm.SelectOk())

    # -- tx ----------------------------------------------------------------------

    def on_tx_select(self, method: commands.Tx.Select) -> None:
        if self.confirm_mode:
            raise PreconditionFailedError("cannot switch from confirm to tx mode")
        if self.tx is None:
            self.tx = []
        self.send(commands.Tx.SelectOk())

    def on_tx_commit(self, method: commands.Tx.Commit) -> None:
        """Publishes first, then acks, as RabbitMQ commits; commit-ok once the
        persistent messages among them are on disk."""
        if self.tx is None:
            raise PreconditionFailedError("channel is not transactional")
        work, self.tx = self.tx, []
        store = self.connection.server.store
        generation_before = store.generation
        accepted = True
        for item in work:
            if isinstance(item, TxPublish):
                delivered = self._deliver(item.message, item.queues, item.content)
                accepted = delivered and accepted
        for item in work:
            if isinstance(item, TxAck):
                self.channel.settle(item.taken, item.requeue)
        if not accepted:
            # A queue refused a publish (x-overflow reject-publish): RabbitMQ
            # does the rest of the transaction, then fails the commit.
            raise PreconditionFailedError("partial tx completion")
        generation = store.generation
        self._reply_when_durable(
            commands.Tx.CommitOk(), generation if generation != generation_before else 0
        )

    def on_tx_rollback(self, method: commands.Tx.Rollback) -> None:
        if self.tx is None:
            raise PreconditionFailedError("channel is not transactional")
        work, self.tx = self.tx, []
        # Acked messages become unacked again; nothing is requeued.
        self.channel.restore(
            [
                unacked
                for item in work
                if isinstance(item, TxAck)
                for unacked in item.taken
            ]
        )
        self.send(commands.Tx.RollbackOk())

    def on_publish(self, content: ContentReceived) -> None:
        """A complete basic.publish: route it, and confirm it if asked."""
        if content.immediate:
            raise FeatureNotImplementedError("immediate=true")
        # Counted before any check, as RabbitMQ's messages_received.
        self.stat_publish += 1
        if (WRITE, "exchange", content.exchange) not in self._permitted:
            self.authorize(WRITE, "exchange", content.exchange)
        exchange = self.vhost.publish_target(content.exchange)
        if (
            exchange.type_name == "topic"
            and self.connection.server.broker.access.topic_permissions
        ):
            self.authorize(WRITE, TOPIC, exchange.name, content.routing_key)
        if self.tx is not None:
            message, queues = self._resolve(exchange, content)
            self.tx.append(TxPublish(message, queues, content))
            self.stat_tx_publish += 1
            return
        if not self.confirm_mode:
            self._route(exchange, content)
            return
        seq_no = self.next_publish_seq_no
        self.next_publish_seq_no = seq_no + 1
        store = self.connection.server.store
        generation_before = store.generation
        if not self._route(exchange, content):
            # A queue with x-overflow reject-publish refused it.
            # RabbitMQ's nack has requeue=true (the method's default) and
            # multiple=true when nothing older is unconfirmed (send_nacks).
            self._reply_when_durable(
                commands.Basic.Nack(
                    delivery_tag=seq_no, multiple=not self._pending_replies
                ),
                0,
            )
            return
        generation = store.generation
        self._reply_when_durable(
            seq_no, generation if generation != generation_before else 0
        )

    def _route(self, exchange: Exchange, content: ContentReceived) -> bool:
        """Route and enqueue; False when a queue refused it (reject-publish)."""
        message, queues = self._resolve(exchange, content)
        return self._deliver(message, queues, content)

    def _resolve(
        self, exchange: Exchange, content: ContentReceived
    ) -> tuple[Message, list[Queue] | Held]:
        """The message and the queues it routes to (it may be refused: 406);
        Held when a delayed exchange is to hold it."""
        properties_raw = content.properties_raw
        if properties_raw and properties_raw[0] & 0x02:  # reply-to flag (0x0200)
            properties_raw = self._fast_reply_to(properties_raw)
        message = Message(
            content.exchange, content.routing_key, properties_raw, content.body
        )
        return self.vhost.resolve_publish(exchange, message)

    def _fast_reply_to(self, properties_raw: bytes) -> bytes:
        """reply_to=amq.rabbitmq.reply-to becomes this channel's reply-to
        name (rabbit_channel:maybe_set_fast_reply_to)."""
        try:
            properties = decode_properties(properties_raw)
        except ValueError:
            return properties_raw  # refused later, as any unreadable header
        if properties.reply_to != REPLY_TO_QUEUE:
            return properties_raw
        if self.reply_consumer is None:
            raise PreconditionFailedError("fast reply consumer does not exist")
        properties.reply_to = REPLY_TO_PREFIX + self.reply_consumer[1]
        return properties.marshal()

    def _deliver(
        self, message: Message, queues: list[Queue] | Held, content: ContentReceived
    ) -> bool:
        if isinstance(queues, Held):
            # Held, then routed; never returned as unroutable (as the plugin).
            self.vhost.hold(
                queues.exchange, message, queues.delay_ms, queues.extra_keys
            )
            return True
        accepted = True
        if queues:
            for queue in queues:
                if not queue.deleted:  # deleted since a transaction routed it
                    queue.stat_publish += 1
                    accepted = queue.enqueue(message) and accepted
        elif content.mandatory:
            self.stat_return_unroutable += 1
            self.connection.send_raw(
                frames.encode_return(
                    self.channel_id,
                    ReplyCode.NO_ROUTE,
                    "NO_ROUTE",
                    content.exchange,
                    content.routing_key,
                )
                + frames.encode_content(
                    self.channel_id,
                    message.properties_raw,
                    message.body,
                    self.connection.frame_max,
                )
            )
        else:
            self.stat_drop_unroutable += 1
        return accepted

    def _reply_when_durable(
        self, reply: int | pamqp_base.Frame, generation: int
    ) -> None:
        """Send a confirm (a publish seq_no) or a reply (tx.commit-ok) now, or
        once the store has the writes up to `generation` on disk. They leave in
        order, so a later one never overtakes an earlier one."""
        server = self.connection.server
        if not self._pending_replies and (
            generation <= server.store.committed_generation
        ):
            self._send_durable_reply(reply, 1)
            return
        self._pending_replies.append((reply, generation))
        server.awaiting_confirms.add(self)

    def _send_durable_reply(self, reply: int | pamqp_base.Frame, count: int) -> None:
        if isinstance(reply, int):
            self.stat_confirm += count
            self.send(commands.Basic.Ack(delivery_tag=reply, multiple=count > 1))
        else:
            self.send(reply)

    def release_confirms(self, committed_generation: int) -> bool:
        """After a group commit: send what is now durable, consecutive confirms
        as one multiple ack. Returns True while replies are still pending."""
        pending = self._pending_replies
        last_seq_no = 0
        count = 0
        while pending and pending[0][1] <= committed_generation:
            reply = pending.popleft()[0]
            if isinstance(reply, int):
                last_seq_no = reply
                count += 1
                continue
            if last_seq_no:
                self._send_durable_reply(last_seq_no, count)
                last_seq_no, count = 0, 0
            self._send_durable_reply(reply, 1)
        if last_seq_no:
            self._send_durable_reply(last_seq_no, count)
        return bool(pending)


HANDLERS: dict[type[pamqp_base.Frame], Handler] = {
    commands.Channel.Flow: ChannelHandler.on_channel_flow,
    commands.Channel.FlowOk: ChannelHandler.on_channel_flow_ok,
    commands.Exchange.Declare: ChannelHandler.on_exchange_declare,
    commands.Exchange.Delete: ChannelHandler.on_exchange_delete,
    commands.Exchange.Bind: ChannelHandler.on_exchange_bind,
    commands.Exchange.Unbind: ChannelHandler.on_exchange_unbind,
    commands.Queue.Declare: ChannelHandler.on_queue_declare,
    commands.Queue.Bind: ChannelHandler.on_queue_bind,
    commands.Queue.Unbind: ChannelHandler.on_queue_unbind,
    commands.Queue.Purge: ChannelHandler.on_queue_purge,
    commands.Queue.Delete: ChannelHandler.on_queue_delete,
    commands.Basic.Qos: ChannelHandler.on_basic_qos,
    commands.Basic.Consume: ChannelHandler.on_basic_consume,
    commands.Basic.Cancel: ChannelHandler.on_basic_cancel,
    commands.Basic.Get: ChannelHandler.on_basic_get,
    commands.Basic.Ack: ChannelHandler.on_basic_ack,
    commands.Basic.Nack: ChannelHandler.on_basic_nack,
    commands.Basic.Reject: ChannelHandler.on_basic_reject,
    commands.Basic.Recover: ChannelHandler.on_basic_recover,
    commands.Basic.RecoverAsync: ChannelHandler.on_basic_recover_async,
    commands.Confirm.Select: ChannelHandler.on_confirm_select,
    commands.Tx.Select: ChannelHandler.on_tx_select,
    commands.Tx.Commit: ChannelHandler.on_tx_commit,
    commands.Tx.Rollback: ChannelHandler.on_tx_rollback,
}
