'use strict';
// One AMQP connection through node amqplib, driven over JSON lines by
// interop/amqplib_client.py.
//
// stdin:  {"id": N, "op": "connect" | "channel" | ..., ...arguments}
// stdout: {"id": N, "result": ...} or {"id": N, "error": {...}} per request,
//         and events without an id: delivery, returned (basic.return),
//         cancelled (the broker's basic.cancel), channel_closed,
//         connection_closed.
// Bodies travel as base64. The process exits when stdin closes.

const amqp = require('amqplib');
const readline = require('readline');

let connection = null;
let confirms = false;
const channels = new Map(); // id -> {channel, unacked: Map(tag -> message)}
let nextChannel = 1;

function send(message) {
  process.stdout.write(JSON.stringify(message) + '\n');
}

function describe(error) {
  if (!(error instanceof Error) && error && error.fields) {
    // basic.get rejects with the broker's channel.close frame itself.
    return {
      class: 'channel.close frame',
      code: error.fields.replyCode,
      message: error.fields.replyText,
    };
  }
  return {
    class: error.constructor ? error.constructor.name : 'Error',
    code: typeof error.code === 'number' ? error.code : null,
    message: String(error.message),
  };
}

// The unacked message with this tag, forgotten (with every older one when
// multiple) as the broker forgets it.
function settled(found, tag, multiple) {
  const msg = found.unacked.get(tag);
  for (const other of [...found.unacked.keys()]) {
    if (other === tag || (multiple && other < tag)) found.unacked.delete(other);
  }
  return msg;
}

function entry(id) {
  const found = channels.get(id);
  if (!found) throw new Error(`no channel ${id}`);
  return found;
}

function properties(props) {
  const options = {};
  for (const [from, to] of [
    ['content_type', 'contentType'],
    ['correlation_id', 'correlationId'],
    ['reply_to', 'replyTo'],
    ['message_id', 'messageId'],
    ['type', 'type'],
    ['app_id', 'appId'],
    ['delivery_mode', 'deliveryMode'],
    ['priority', 'priority'],
    ['expiration', 'expiration'],
  ]) {
    if (props[from] !== null && props[from] !== undefined) options[to] = props[from];
  }
  if (props.headers && Object.keys(props.headers).length) options.headers = props.headers;
  return options;
}

function message(id, msg) {
  const p = msg.properties;
  return {
    channel: id,
    tag: msg.fields.deliveryTag ?? null,
    body: msg.content.toString('base64'),
    exchange: msg.fields.exchange,
    routing_key: msg.fields.routingKey,
    redelivered: Boolean(msg.fields.redelivered),
    reply_code: msg.fields.replyCode ?? null,
    reply_text: msg.fields.replyText ?? null,
    props: {
      content_type: p.contentType ?? null,
      correlation_id: p.correlationId ?? null,
      reply_to: p.replyTo ?? null,
      message_id: p.messageId ?? null,
      type: p.type ?? null,
      app_id: p.appId ?? null,
      delivery_mode: p.deliveryMode ?? null,
      priority: p.priority ?? null,
      expiration: p.expiration ?? null,
      headers: p.headers ?? {},
    },
  };
}

const ops = {
  async connect(args) {
    confirms = Boolean(args.confirms);
    connection = await amqp.connect(args.url, {
      clientProperties: { connection_name: args.connection_name || 'interop-amqplib' },
    });
    // A server-initiated close emits 'error' then 'close'; both are reported
    // through 'close' so the Python side sees one event.
    connection.on('error', () => {});
    connection.on('close', (error) => {
      send({ event: 'connection_closed', error: error ? describe(error) : null });
    });
    return null;
  },
  async channel() {
    const channel = confirms
      ? await connection.createConfirmChannel()
      : await connection.createChannel();
    const id = nextChannel++;
    channels.set(id, { channel, unacked: new Map() });
    channel.on('error', (error) => {
      send({ event: 'channel_closed', channel: id, error: describe(error) });
    });
    channel.on('close', () => send({ event: 'channel_closed', channel: id, error: null }));
    channel.on('return', (msg) => send({ event: 'returned', ...message(id, msg) }));
    return id;
  },
  async declare_queue(args) {
    const channel = entry(args.channel).channel;
    const ok = args.passive
      ? await channel.checkQueue(args.name)
      : await channel.assertQueue(args.name, {
          durable: args.durable,
          exclusive: args.exclusive,
          autoDelete: args.auto_delete,
          arguments: args.arguments || undefined,
        });
    return { queue: ok.queue, message_count: ok.messageCount };
  },
  async declare_exchange(args) {
    await entry(args.channel).channel.assertExchange(args.name, args.type, {
      durable: args.durable,
      autoDelete: args.auto_delete,
      arguments: args.arguments || undefined,
    });
    return null;
  },
  async bind_queue(args) {
    await entry(args.channel).channel.bindQueue(
      args.queue,
      args.exchange,
      args.routing_key,
      args.arguments || undefined,
    );
    return null;
  },
  async bind_exchange(args) {
    await entry(args.channel).channel.bindExchange(
      args.destination,
      args.source,
      args.routing_key,
      args.arguments || undefined,
    );
    return null;
  },
  async delete_queue(args) {
    const ok = await entry(args.channel).channel.deleteQueue(args.name);
    return ok.messageCount;
  },
  async delete_exchange(args) {
    await entry(args.channel).channel.deleteExchange(args.name);
    return null;
  },
  async publish(args) {
    const channel = entry(args.channel).channel;
    const body = Buffer.from(args.body, 'base64');
    const options = properties(args.props);
    if (args.mandatory) options.mandatory = true;
    if (!confirms) {
      channel.publish(args.exchange, args.routing_key, body, options);
      return null;
    }
    await new Promise((resolve, reject) => {
      channel.publish(args.exchange, args.routing_key, body, options, (error) =>
        error ? reject(error) : resolve(),
      );
    });
    return null;
  },
  async qos(args) {
    await entry(args.channel).channel.prefetch(args.prefetch_count, Boolean(args.global));
    return null;
  },
  async consume(args) {
    const found = entry(args.channel);
    let tag = null;
    const ok = await found.channel.consume(
      args.queue,
      (msg) => {
        if (msg === null) {
          // amqplib calls the consumer with null for the broker's basic.cancel.
          send({ event: 'cancelled', channel: args.channel, tag });
          return;
        }
        if (!args.auto_ack) found.unacked.set(msg.fields.deliveryTag, msg);
        send({ event: 'delivery', ...message(args.channel, msg) });
      },
      { noAck: args.auto_ack, arguments: args.arguments || undefined },
    );
    tag = ok.consumerTag;
    return ok.consumerTag;
  },
  async ack(args) {
    const found = entry(args.channel);
    found.channel.ack(settled(found, args.tag, false));
    return null;
  },
  async reject(args) {
    const found = entry(args.channel);
    found.channel.reject(settled(found, args.tag, false), args.requeue);
    return null;
  },
  async nack(args) {
    const found = entry(args.channel);
    found.channel.nack(settled(found, args.tag, args.multiple), args.multiple, args.requeue);
    return null;
  },
  async get(args) {
    const msg = await entry(args.channel).channel.get(args.queue, { noAck: true });
    return msg === false ? null : message(args.channel, msg);
  },
  async close_channel(args) {
    const found = entry(args.channel);
    channels.delete(args.channel);
    await found.channel.close();
    return null;
  },
  async close() {
    await connection.close();
    return null;
  },
};

const input = readline.createInterface({ input: process.stdin });
input.on('line', async (line) => {
  const request = JSON.parse(line);
  try {
    const result = await ops[request.op](request);
    send({ id: request.id, result });
  } catch (error) {
    send({ id: request.id, error: describe(error) });
  }
});
input.on('close', () => process.exit(0));
