"""What each client raises for the broker's errors, and that it goes on.

Channel errors (404, 403, 405, 406) close the channel: the client raises its
channel error with the reply code, the connection stays open, a new channel
and a new connection work. Connection errors (a refused login, no access to
the vhost, a connection closed through the management API) raise the
client's connection error; a new connection works. The table lists the
exception each client raised (make_table.py).
"""

from __future__ import annotations

import re

import pytest

from interop.base import Props, require
from interop.clients import PikaAdapter
from interop.helpers import go_on, poll_get
from interop.management import url_as

pytestmark = pytest.mark.timeout(30)

# A client that reads its socket sees the broker's connection.close within
# milliseconds; this bounds the wait for one that does not.
CLOSE_SEEN_S = 3.0


def test_error_404_passive_declare(client, broker_url, names, raised) -> None:
    require(client, "passive")
    missing = names.queue("missing")
    connection = client.connect(broker_url)
    try:
        channel = connection.channel()
        with pytest.raises(client.channel_error) as info:
            channel.declare_queue(missing, passive=True)
        raised(info.value)
        assert client.reply_code(info.value) == 404
        go_on(client, broker_url, connection, channel, names.queue("after404"))
    finally:
        connection.close()


def test_error_404_get_missing_queue(client, broker_url, names, raised) -> None:
    missing = names.queue("missing")
    connection = client.connect(broker_url)
    try:
        channel = connection.channel()
        with pytest.raises(client.channel_error) as info:
            channel.get(missing)
        raised(info.value)
        assert client.reply_code(info.value) == 404
        assert "NOT_FOUND" in str(info.value)
        go_on(client, broker_url, connection, channel, names.queue("after404"))
    finally:
        connection.close()


def test_error_404_publish_missing_exchange(client, broker_url, names, raised) -> None:
    missing = names.exchange("missing")
    queue = names.queue("after404")
    connection = client.connect(broker_url)
    try:
        channel = connection.channel()
        # basic.publish has no reply: the channel.close comes back while the
        # client waits for its next synchronous reply (or the program ends).
        with pytest.raises(client.channel_error) as info:
            channel.publish(missing, "key", b"lost")
            channel.declare_queue(queue)
        raised(info.value)
        assert client.reply_code(info.value) == 404
        assert "NOT_FOUND" in str(info.value)
        go_on(client, broker_url, connection, channel, queue)
    finally:
        connection.close()


def test_error_403_login_refused(client, broker_url, names, raised) -> None:
    bad = url_as(broker_url, "guest", "not-the-password")
    with pytest.raises(client.connection_error) as info:
        connection = client.connect(bad)
        # The amqp-tools connect only when a program runs.
        connection.channel().declare_queue(names.queue("never"))
    raised(info.value)
    assert "ACCESS_REFUSED" in str(info.value).replace("-", "_")
    connection = client.connect(broker_url)
    try:
        channel = connection.channel()
        queue = channel.declare_queue(names.queue("after403"))
        assert channel.get(queue) is None
    finally:
        connection.close()


def test_error_530_vhost_access_refused(
    client, broker_url, names, management, raised
) -> None:
    """A user without permissions on the vhost: connection.open is refused
    with 530 NOT_ALLOWED (some clients keep only "got connection.close");
    once permitted, the same user connects."""
    user, password = names.user(management, "novhost")
    management.clear_permissions(user)
    url = url_as(broker_url, user, password)
    with pytest.raises(client.connection_error) as info:
        connection = client.connect(url)
        connection.channel().declare_queue(names.queue("never"))
    raised(info.value)
    management.set_permissions(user)
    connection = client.connect(url)
    try:
        channel = connection.channel()
        queue = channel.declare_queue(names.queue("after530"))
        assert channel.get(queue) is None
    finally:
        connection.close()


def test_error_403_no_permission(client, broker_url, names, management, raised) -> None:
    allowed = names.queue("allowed")
    user, password = names.user(
        management, "limited", configure=f"^{re.escape(allowed)}$"
    )
    connection = client.connect(url_as(broker_url, user, password))
    try:
        channel = connection.channel()
        with pytest.raises(client.channel_error) as info:
            channel.declare_queue(names.queue("denied"))
        raised(info.value)
        assert client.reply_code(info.value) == 403
        assert "ACCESS_REFUSED" in str(info.value)
        # go_on's fresh connection is the suite's own user.
        go_on(client, broker_url, connection, channel, allowed)
    finally:
        connection.close()


def test_error_405_exclusive_queue(client, broker_url, names, raised) -> None:
    # The owner is always pika: the case is what the other client raises.
    owner = PikaAdapter().connect(broker_url)
    connection = client.connect(broker_url)
    try:
        locked = owner.channel().declare_queue(names.queue("locked"), exclusive=True)
        channel = connection.channel()
        with pytest.raises(client.channel_error) as info:
            channel.get(locked)
        raised(info.value)
        assert client.reply_code(info.value) == 405
        assert "RESOURCE_LOCKED" in str(info.value)
        go_on(client, broker_url, connection, channel, names.queue("after405"))
    finally:
        connection.close()
        owner.close()


def test_error_406_redeclare(client, broker_url, names, raised) -> None:
    queue = names.queue("transient")
    connection = client.connect(broker_url)
    try:
        channel = connection.channel()
        channel.declare_queue(queue, durable=False)
        with pytest.raises(client.channel_error) as info:
            channel.declare_queue(queue, durable=True)
        raised(info.value)
        assert client.reply_code(info.value) == 406
        assert "PRECONDITION_FAILED" in str(info.value)
        go_on(client, broker_url, connection, channel, names.queue("after406"))
    finally:
        connection.close()


def test_error_320_closed_by_management(
    client, broker_url, names, management, raised
) -> None:
    """DELETE /api/connections/NAME closes the connection with 320
    CONNECTION_FORCED; a consumer waiting for messages sees it, and the
    program connects again and goes on."""
    user, password = names.user(management, "closed")
    url = url_as(broker_url, user, password)
    queue = names.queue("work")
    connection = client.connect(url)
    try:
        channel = connection.channel()
        channel.declare_queue(queue)
        channel.consume(queue, auto_ack=True)
        [listed] = management.wait_connections(user, 1)
        management.close_connection(listed["name"], "interop says goodbye")
        with pytest.raises(client.connection_error) as info:
            # The waiting consumer learns of the close; a client that only
            # notices on its next call raises there.
            if channel.next_delivery(CLOSE_SEEN_S) is None:
                channel.get(queue)
        raised(info.value)
        assert client.reply_code(info.value) == 320
        assert "CONNECTION_FORCED" in str(info.value)
        assert not connection.is_open
    finally:
        connection.close()
    management.wait_connections(user, 0)
    again = client.connect(url)
    try:
        channel = again.channel()
        channel.publish("", queue, b"after-close", Props())
        delivery = poll_get(channel, queue)
        assert delivery is not None and delivery.body == b"after-close"
    finally:
        again.close()
