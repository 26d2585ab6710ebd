import pika
import pytest


def test_publish_get_consume_roundtrip(channel) -> None:
    queue = channel.queue_declare("", exclusive=True).method.queue
    assert queue.startswith("amq.gen-")
    channel.basic_publish("", queue, b"hello", pika.BasicProperties(headers={"k": 1}))
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"hello"
    assert properties.headers == {"k": 1}
    assert method.message_count == 0


def test_passive_declare_of_missing_queue_is_404(channel) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
        channel.queue_declare("no-such-queue", passive=True)
    assert error.value.reply_code == 404
    assert error.value.reply_text == "NOT_FOUND - no queue 'no-such-queue' in vhost '/'"
