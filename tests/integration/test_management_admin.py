"""The management API's access and administration endpoints, against a real
broker over HTTP, with pika checking that what the API set is what AMQP
clients meet: vhosts, users, permissions, limits, policies, definitions,
health checks and nodes, in RabbitMQ's shapes and with its access rules."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest
from helpers.management import Api, path
from helpers.server_process import Server

from amqpy.server.embedded import EmbeddedBroker

DEADLINE_S = 5.0
# b64(salt + sha256(salt + "hashpw")), as RabbitMQ 3.10 exported it.
RABBITMQ_HASH = "8IzTkN0QjS1X/Y8v3n5grAREizKiq5Rp0fzukWI0wAwK4uvK"
RABBITMQ_HASH_PASSWORD = "hashpw"
ALL = {"configure": ".*", "write": ".*", "read": ".*"}
NOT_ADMINISTRATOR = {"error": "not_authorised", "reason": "Not administrator user"}


@pytest.fixture
def broker(managed_broker: EmbeddedBroker) -> EmbeddedBroker:
    return managed_broker


Connect = Callable[..., pika.BlockingConnection]


def as_user(user: str, password: str, vhost: str = "/") -> dict[str, Any]:
    """pika connection parameters for `user` in `vhost`."""
    return {
        "credentials": pika.PlainCredentials(user, password),
        "virtual_host": vhost,
    }


def add_user(api: Api, name: str, tags: str = "", vhost: str | None = None) -> None:
    """A user whose password is its name, with full permissions in `vhost`."""
    assert api.put(path("users", name), {"password": name, "tags": tags}).is_success
    if vhost is not None:
        assert api.put(path("permissions", vhost, name), ALL).is_success


def wait_closed(connection: pika.BlockingConnection) -> BaseException:
    """The error the broker closed `connection` with."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            connection.process_data_events(time_limit=0.05)
        except pika.exceptions.ConnectionClosedByBroker as error:
            return error
    raise AssertionError("the broker did not close the connection")


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def ready_count(channel: Any, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def normalized(definitions: dict[str, Any]) -> dict[str, Any]:
    """Definitions with each list in a fixed order, for comparing."""
    return {
        key: sorted(value, key=lambda item: json.dumps(item, sort_keys=True))
        if isinstance(value, list)
        else value
        for key, value in definitions.items()
    }


# -- vhosts, users, permissions --------------------------------------------------------


def test_vhost_user_and_permissions_made_with_the_api_let_pika_in(
    api: Api, connect: Connect
) -> None:
    created = api.put(path("vhosts", "shop"), {"description": "d", "tags": "a,b"})
    assert created.status_code == 201
    assert created.content == b""
    assert api.put(path("vhosts", "shop"), {"description": "d2"}).status_code == 204
    vhost = api.get(path("vhosts", "shop")).json()
    assert vhost["name"] == "shop"
    assert vhost["description"] == "d2"
    assert vhost["tags"] == []  # a PUT replaces the metadata, as RabbitMQ
    assert vhost["metadata"] == {"description": "d2", "tags": []}
    assert vhost["messages"] == 0
    # The administrator who created it may use it (RabbitMQ grants that).
    assert api.get(path("vhosts", "shop", "permissions")).json() == [
        {"vhost": "shop", "user": "guest", **ALL}
    ]

    clerk = {"password": "pw", "tags": ""}
    assert api.put(path("users", "clerk"), clerk).status_code == 201
    user = api.get(path("users", "clerk")).json()
    assert user["tags"] == []
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert api.put(path("permissions", "shop", "clerk"), ALL).status_code == 201
    assert api.put(path("permissions", "shop", "clerk"), ALL).status_code == 204
    assert api.get(path("permissions", "shop", "clerk")).json() == {
        "user": "clerk",
        "vhost": "shop",
        **ALL,
    }
    assert api.get(path("users", "clerk", "permissions")).json() == [
        {"user": "clerk", "vhost": "shop", **ALL}
    ]
    assert [v["name"] for v in api.get("/api/vhosts").json()] == ["/", "shop"]

    channel = connect(**as_user("clerk", "pw", "shop")).channel()
    channel.queue_declare("orders")
    channel.basic_publish("", "orders", b"one")
    _, _, body = channel.basic_get("orders", auto_ack=True)
    assert body == b"one"
    assert api.get(path("vhosts", "shop")).json()["messages"] == 0


def test_a_permission_set_with_the_api_is_enforced_over_amqp(
    api: Api, connect: Connect
) -> None:
    add_user(api, "reader")
    reading_only = {"configure": "", "write": "", "read": ".*"}
    assert api.put(path("permissions", "/", "reader"), reading_only).status_code == 201
    connect().channel().queue_declare("feed")

    channel = connect(**as_user("reader", "reader")).channel()
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.basic_publish("", "feed", b"x")
    assert refused.value.reply_code == 403
    assert refused.value.reply_text == (
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' "
        "refused for user 'reader'"
    )

    # Granted write: the same user publishes on a new channel.
    assert api.put(path("permissions", "/", "reader"), ALL).status_code == 204
    channel = connect(**as_user("reader", "reader")).channel()
    channel.confirm_delivery()
    channel.basic_publish("", "feed", b"x")

    # Without permissions the vhost is closed to the user.
    assert api.delete(path("permissions", "/", "reader")).status_code == 204
    assert api.delete(path("permissions", "/", "reader")).status_code == 404
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        connect(**as_user("reader", "reader"))


def test_deleting_a_vhost_closes_its_connections_and_drops_its_queues(
    api: Api, connect: Connect
) -> None:
    assert api.put(path("vhosts", "doomed")).status_code == 201
    doomed = connect(virtual_host="doomed")
    doomed.channel().queue_declare("kept", durable=True)
    bystander = connect()

    assert api.delete(path("vhosts", "doomed")).status_code == 204
    error = wait_closed(doomed)
    assert error.args == (320, "CONNECTION_FORCED - vhost 'doomed' is deleted")
    assert bystander.is_open
    assert api.get(path("vhosts", "doomed")).status_code == 404
    assert api.delete(path("vhosts", "doomed")).json() == {
        "error": "Object Not Found",
        "reason": "Not Found",
    }
    # A new vhost of the same name starts empty.
    assert api.put(path("vhosts", "doomed")).status_code == 201
    channel = connect(virtual_host="doomed").channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as missing:
        channel.queue_declare("kept", passive=True)
    assert missing.value.reply_code == 404


def test_users_as_rabbitmq_puts_them(api: Api, connect: Connect) -> None:
    # A password hash from RabbitMQ: its password logs in here.
    body = {"password_hash": RABBITMQ_HASH, "tags": ["monitoring"]}
    assert api.put(path("users", "imported"), body).status_code == 201
    visitor = api.as_user("imported", RABBITMQ_HASH_PASSWORD)
    assert visitor.get("/api/whoami").json() == {
        "name": "imported",
        "tags": ["monitoring"],
    }

    # Neither password nor hash: the user exists but cannot log in, and a
    # user so replaced loses the password it had (RabbitMQ does the same).
    assert api.put(path("users", "nopw"), {"tags": "management"}).status_code == 201
    assert api.get(path("users", "nopw")).json()["password_hash"] == ""
    with_password = {"password": "p", "tags": "management"}
    assert api.put(path("users", "nopw"), with_password).status_code == 204
    assert api.as_user("nopw", "p").get("/api/whoami").status_code == 200
    assert api.put(path("users", "nopw"), {"tags": "management"}).status_code == 204
    assert api.as_user("nopw", "p").get("/api/whoami").json() == {
        "error": "not_authorized",
        "reason": "Login failed",
    }

    # Tags as a list or a comma-separated string; limits kept.
    body = {
        "password": "x",
        "tags": "management, policymaker",
        "limits": {"max-channels": 3},
    }
    assert api.put(path("users", "tagged"), body).status_code == 201
    tagged = api.get(path("users", "tagged")).json()
    assert tagged["tags"] == ["management", "policymaker"]
    assert tagged["limits"] == {"max-channels": 3}
    names = [user["name"] for user in api.get("/api/users/without-permissions").json()]
    assert names == ["imported", "nopw", "tagged"]

    # Deleting a user closes their connections.
    add_user(api, "leaving", vhost="/")
    connection = connect(**as_user("leaving", "leaving"))
    assert api.delete(path("users", "leaving")).status_code == 204
    assert wait_closed(connection).args[0] == 320
    assert api.delete(path("users", "leaving")).status_code == 404

    bulk = api.post("/api/users/bulk-delete", {"users": ["imported", "nopw"]})
    assert bulk.status_code == 204
    assert [user["name"] for user in api.get("/api/users").json()] == [
        "guest",
        "tagged",
    ]


def test_limits_set_with_the_api(api: Api, connect: Connect) -> None:
    assert api.get("/api/vhost-limits").json() == []
    limit = api.put(path("vhost-limits", "/", "max-queues"), {"value": 1})
    assert limit.status_code == 204
    assert api.get(path("vhost-limits", "/")).json() == [
        {"vhost": "/", "value": {"max-queues": 1}}
    ]
    channel = connect().channel()
    channel.queue_declare("first")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        channel.queue_declare("second")
    assert refused.value.reply_code == 406
    assert api.delete(path("vhost-limits", "/", "max-queues")).status_code == 204
    assert api.get("/api/vhost-limits").json() == []
    connect().channel().queue_declare("second")

    add_user(api, "chatty", vhost="/")
    limit = api.put(path("user-limits", "chatty", "max-channels"), {"value": 1})
    assert limit.status_code == 204
    assert api.get("/api/user-limits").json() == [
        {"user": "chatty", "value": {"max-channels": 1}}
    ]
    connection = connect(**as_user("chatty", "chatty"))
    connection.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        connection.channel()
    assert api.delete(path("user-limits", "chatty", "max-channels")).status_code == 204
    assert api.get(path("user-limits", "chatty")).json() == []


# -- policies --------------------------------------------------------------------------


def test_policies_set_with_the_api_apply_to_queues(api: Api, connect: Connect) -> None:
    channel = connect().channel()
    channel.queue_declare("short.q")
    for body in (b"1", b"2", b"3", b"4", b"5"):
        channel.basic_publish("", "short.q", body)
    assert ready_count(channel, "short.q") == 5

    policy = {
        "pattern": r"^short\.",
        "definition": {"max-length": 2},
        "apply-to": "queues",
    }
    assert api.put(path("policies", "/", "short"), policy).status_code == 201
    # Applied at once: the queue keeps its newest two.
    assert ready_count(channel, "short.q") == 2
    assert channel.basic_get("short.q", auto_ack=True)[2] == b"4"
    assert api.get(path("policies", "/", "short")).json() == {
        "vhost": "/",
        "name": "short",
        "pattern": r"^short\.",
        "apply-to": "queues",
        "definition": {"max-length": 2},
        "priority": 0,
    }

    ttl = {"pattern": r"^ttl\.", "definition": {"message-ttl": 50}, "priority": 1}
    assert api.put(path("policies", "/", "ttl"), ttl).status_code == 201
    channel.queue_declare("ttl.q")
    channel.basic_publish("", "ttl.q", b"fleeting")
    wait_for(lambda: ready_count(channel, "ttl.q") == 0, "the message to expire")
    names = [entry["name"] for entry in api.get("/api/policies").json()]
    assert names == ["short", "ttl"]

    # Replaced and then deleted: the queue is unbounded again.
    policy["definition"] = {"max-length": 3}
    assert api.put(path("policies", "/", "short"), policy).status_code == 204
    assert api.delete(path("policies", "/", "short")).status_code == 204
    assert api.delete(path("policies", "/", "short")).status_code == 404
    for body in (b"6", b"7", b"8", b"9"):
        channel.basic_publish("", "short.q", body)
    assert ready_count(channel, "short.q") == 5


# -- definitions -----------------------------------------------------------------------


def test_definitions_export_imports_into_another_broker(
    api: Api,
    connect: Connect,
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    assert api.put(path("vhosts", "rt"), {"description": "trip"}).status_code == 201
    add_user(api, "rtuser", tags="management", vhost="rt")
    policy = {"pattern": "^rt", "definition": {"max-length": 7}}
    assert api.put(path("policies", "rt", "cap"), policy).status_code == 201
    limit = api.put(path("vhost-limits", "rt", "max-connections"), {"value": 9})
    assert limit.status_code == 204
    channel = connect(virtual_host="rt").channel()
    channel.exchange_declare("rtx", "topic", durable=True)
    channel.queue_declare("rtq", durable=True, arguments={"x-message-ttl": 60000})
    channel.queue_bind("rtq", "rtx", "a.#")
    channel.queue_declare("rt-temp")  # transient: exported, as RabbitMQ does
    channel.queue_declare("rt-mine", exclusive=True)  # exclusive: not
    channel.queue_bind("rt-mine", "rtx", "b")

    exported = api.get("/api/definitions")
    assert exported.status_code == 200
    definitions = exported.json()
    assert list(definitions)[:4] == [
        "rabbit_version",
        "rabbitmq_version",
        "product_name",
        "product_version",
    ]
    queues = {queue["name"]: queue for queue in definitions["queues"]}
    assert sorted(queues) == ["rt-temp", "rtq"]
    # RabbitMQ's fields, not amqpy's store keys.
    assert queues["rtq"] == {
        "name": "rtq",
        "vhost": "rt",
        "durable": True,
        "auto_delete": False,
        "arguments": {"x-message-ttl": 60000},
    }
    assert [binding["destination"] for binding in definitions["bindings"]] == ["rtq"]
    per_vhost = api.get(path("definitions", "rt")).json()
    assert list(per_vhost) == [
        "rabbit_version",
        "parameters",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ]
    assert sorted(queue["name"] for queue in per_vhost["queues"]) == ["rt-temp", "rtq"]
    assert all("vhost" not in queue for queue in per_vhost["queues"])

    other = make_broker(management={"enabled": True})
    other_api = Api(other.management_url)
    assert other_api.post("/api/definitions", definitions).status_code == 204
    imported = other_api.get("/api/definitions").json()
    assert normalized(imported) == normalized(definitions)

    # The imported user logs in to the imported vhost, and finds its queue.
    parameters = pika.ConnectionParameters(
        "127.0.0.1", other.port, **as_user("rtuser", "rtuser", "rt")
    )
    with pika.BlockingConnection(parameters) as connection:
        assert ready_count(connection.channel(), "rtq") == 0


def test_a_definitions_import_adds_to_what_is_there(api: Api, connect: Connect) -> None:
    kept = {"pattern": "^kept", "definition": {"max-length": 1}}
    assert api.put(path("policies", "/", "kept"), kept).status_code == 201
    document = {
        "vhosts": [{"name": "fresh"}],
        "users": [
            {
                "name": "from-rabbitmq",
                "password_hash": RABBITMQ_HASH,
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": "",
            }
        ],
        "permissions": [{"user": "from-rabbitmq", "vhost": "fresh", **ALL}],
        "policies": [
            {
                "vhost": "fresh",
                "name": "new",
                "pattern": ".*",
                "definition": {"message-ttl": 1000},
            }
        ],
        "queues": [
            {
                "name": "inbox",
                "vhost": "fresh",
                "durable": True,
                "auto_delete": False,
                "arguments": {},
            }
        ],
    }
    assert api.post("/api/definitions", document).status_code == 204
    names = [entry["name"] for entry in api.get("/api/policies").json()]
    assert sorted(names) == ["kept", "new"]
    login = as_user("from-rabbitmq", RABBITMQ_HASH_PASSWORD, "fresh")
    channel = connect(**login).channel()
    assert ready_count(channel, "inbox") == 0

    # Per vhost: the entries are the path's vhost's.
    more = {"queues": [{"name": "outbox", "durable": True, "arguments": {}}]}
    assert api.post(path("definitions", "fresh"), more).status_code == 204
    assert ready_count(channel, "outbox") == 0


# -- bad input -------------------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, str, Any, int, Any]] = [
    # method, path, body (bytes: sent as is), status, reason (None: any)
    ("PUT", path("vhosts", "v"), b'{"description": tr', 400, "not_json"),
    ("PUT", path("vhosts", "v"), {"tags": 5}, 400, None),
    ("PUT", path("vhosts", "v"), {"description": ["x"]}, 400, None),
    ("PUT", path("users", "u"), b"[1, 2]", 400, "not_json"),
    ("PUT", path("users", "u"), {"password": "p"}, 400, "tags_not_present"),
    (
        "PUT",
        path("users", "u"),
        {"password": "p", "password_hash": RABBITMQ_HASH, "tags": ""},
        400,
        "both_password_and_password_hash_are_provided",
    ),
    (
        "PUT",
        path("users", "u"),
        {"password_hash": "not base64!!", "tags": ""},
        400,
        ["not_base64", "not base64!!"],
    ),
    (
        "PUT",
        path("users", "u"),
        {"password_hash": RABBITMQ_HASH, "hashing_algorithm": "rot13", "tags": ""},
        400,
        None,
    ),
    ("PUT", path("users", "u"), {"password": 5, "tags": ""}, 400, None),
    (
        "PUT",
        path("users", "u"),
        {"password": "p", "tags": "", "limits": {"max-bogus": 1}},
        400,
        None,
    ),
    ("PUT", path("permissions", "/", "guest"), b"{", 400, "not_json"),
    (
        "PUT",
        path("permissions", "/", "guest"),
        {"configure": "(", "write": ".*", "read": ".*"},
        400,
        None,  # ["invalid_regexp", "(", why]: checked below
    ),
    (
        "PUT",
        path("permissions", "/", "guest"),
        {"configure": ".*"},
        400,
        "[{key_missing,write},{key_missing,read}]",
    ),
    (
        "PUT",
        path("permissions", "nosuch", "guest"),
        ALL,
        400,
        "vhost_or_user_not_found",
    ),
    ("PUT", path("permissions", "/", "nosuch"), ALL, 400, "vhost_or_user_not_found"),
    (
        "PUT",
        path("permissions", "/", "guest"),
        {"configure": 1, "write": ".*", "read": ".*"},
        400,
        None,
    ),
    ("PUT", path("vhost-limits", "/", "max-queues"), b"{x", 400, "not_json"),
    ("PUT", path("vhost-limits", "/", "max-queues"), {}, 400, "[{key_missing,value}]"),
    ("PUT", path("vhost-limits", "/", "max-queues"), {"value": "10"}, 400, None),
    ("PUT", path("vhost-limits", "/", "max-queues"), {"value": 1.5}, 400, None),
    ("PUT", path("vhost-limits", "/", "max-bogus"), {"value": 1}, 400, None),
    (
        "PUT",
        path("vhost-limits", "nosuch", "max-queues"),
        {"value": 1},
        404,
        "vhost_not_found",
    ),
    ("PUT", path("user-limits", "guest", "max-channels"), {"value": True}, 400, None),
    ("PUT", path("user-limits", "guest", "max-bogus"), {"value": 1}, 400, None),
    (
        "PUT",
        path("user-limits", "nosuch", "max-channels"),
        {"value": 1},
        400,
        ["no_such_user", "nosuch"],
    ),
    ("PUT", path("policies", "/", "p"), b"{", 400, "not_json"),
    (
        "PUT",
        path("policies", "/", "p"),
        {"definition": {"max-length": 1}},
        400,
        "[{key_missing,pattern}]",
    ),
    (
        "PUT",
        path("policies", "/", "p"),
        {"pattern": "(", "definition": {"max-length": 1}},
        400,
        None,
    ),
    (
        "PUT",
        path("policies", "/", "p"),
        {"pattern": "x", "definition": {"max-length": "abc"}},
        400,
        None,
    ),
    (
        "PUT",
        path("policies", "/", "p"),
        {"pattern": "x", "definition": {"no-such-key": 1}},
        400,
        None,
    ),
    ("PUT", path("policies", "/", "p"), {"pattern": "x", "definition": {}}, 400, None),
    (
        "PUT",
        path("policies", "/", "p"),
        {"pattern": "x", "definition": {"max-length": 1}, "apply-to": "bogus"},
        400,
        None,
    ),
    (
        "PUT",
        path("policies", "/", "p"),
        {"pattern": "x", "definition": {"max-length": 1}, "priority": "high"},
        400,
        None,
    ),
    (
        "PUT",
        path("policies", "nosuch", "p"),
        {"pattern": "x", "definition": {"max-length": 1}},
        404,
        "vhost_not_found",
    ),
    ("POST", "/api/definitions", b"{not json", 400, "failed_to_parse_json"),
    ("POST", "/api/definitions", b"[1]", 400, "failed_to_parse_json"),
    ("POST", "/api/definitions", {"queues": "nope"}, 400, None),
    (
        "POST",
        "/api/definitions",
        {"vhosts": [{"name": "half"}], "queues": [{"name": "q", "vhost": "nosuch"}]},
        400,
        ["no_such_vhost", "nosuch"],
    ),
    (
        "POST",
        "/api/definitions",
        {
            "vhosts": [{"name": "half"}],
            "permissions": [{"user": "nosuch", "vhost": "half", **ALL}],
        },
        400,
        ["no_such_user", "nosuch"],
    ),
    (
        "POST",
        "/api/definitions",
        {
            "vhosts": [{"name": "half"}],
            "users": [{"name": "half", "password_hash": "", "tags": ""}],
            "permissions": [
                {
                    "user": "half",
                    "vhost": "half",
                    "configure": "(",
                    "write": "",
                    "read": "",
                }
            ],
        },
        400,
        None,
    ),
    (
        "POST",
        "/api/definitions",
        {
            "vhosts": [{"name": "half"}],
            "policies": [
                {
                    "vhost": "half",
                    "name": "p",
                    "pattern": "x",
                    "definition": {"max-length": "abc"},
                }
            ],
        },
        400,
        None,
    ),
    (
        "POST",
        "/api/definitions",
        {
            "vhosts": [{"name": "half"}],
            "exchanges": [
                {"name": "x", "vhost": "half", "type": "bogus", "durable": True}
            ],
        },
        400,
        None,
    ),
    (
        "POST",
        "/api/definitions",
        {
            "vhosts": [{"name": "half"}],
            "queues": [
                {
                    "name": "q",
                    "vhost": "half",
                    "durable": True,
                    "arguments": {"x-max-length": "a"},
                }
            ],
        },
        400,
        None,
    ),
    ("POST", path("definitions", "/"), b"{", 400, "failed_to_parse_json"),
    (
        "POST",
        path("definitions", "/"),
        {"queues": [{"name": "q", "arguments": {"x-expires": 0}}]},
        400,
        None,
    ),
    (
        "POST",
        "/api/users/bulk-delete",
        {"users": ["guest", "nosuch"]},
        400,
        ["no_such_user", "nosuch"],
    ),
    ("POST", "/api/users/bulk-delete", {}, 400, "[{key_missing,users}]"),
    ("DELETE", path("vhosts", "nosuch"), None, 404, "Not Found"),
    ("DELETE", path("users", "nosuch"), None, 404, "Not Found"),
    ("DELETE", path("permissions", "/", "nosuch"), None, 404, "Not Found"),
    ("DELETE", path("policies", "/", "nosuch"), None, 404, "Not Found"),
    ("DELETE", path("vhost-limits", "nosuch", "max-queues"), None, 404, "Not Found"),
    ("DELETE", path("user-limits", "nosuch", "max-channels"), None, 404, "Not Found"),
]


def send(api: Api, method: str, url: str, body: Any) -> Any:
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        return api.request(method, url, content=body, headers=headers)
    if body is None:
        return api.request(method, url)
    return api.request(method, url, json=body)


def test_bad_input_to_every_write_endpoint_is_refused_and_changes_nothing(
    api: Api,
) -> None:
    before = api.get("/api/definitions").json()
    for method, url, body, status, reason in BAD_REQUESTS:
        answer = send(api, method, url, body)
        case = f"{method} {url} {body!r}: {answer.status_code} {answer.text}"
        assert answer.status_code == status, case
        error = answer.json()
        assert set(error) == {"error", "reason"}, case
        assert error["reason"], case
        if reason is not None:
            assert error["reason"] == reason, case
    assert api.get("/api/definitions").json() == before
    assert api.get(path("vhosts", "half")).status_code == 404

    invalid = api.put(
        path("permissions", "/", "guest"),
        {"configure": "(", "write": ".*", "read": ".*"},
    ).json()
    assert invalid["reason"][:2] == ["invalid_regexp", "("]


# -- who may do what -------------------------------------------------------------------


def test_a_monitoring_user_reads_everything_and_writes_nothing(api: Api) -> None:
    add_user(api, "watcher", tags="monitoring", vhost="/")
    assert api.put(path("vhosts", "elsewhere")).status_code == 201
    watcher = api.as_user("watcher", "watcher")
    policy = {"pattern": "x", "definition": {"max-length": 1}}
    writes = [
        ("PUT", path("vhosts", "new"), None),
        ("DELETE", path("vhosts", "elsewhere"), None),
        ("PUT", path("users", "new"), {"password": "p", "tags": ""}),
        ("DELETE", path("users", "guest"), None),
        ("PUT", path("permissions", "/", "watcher"), ALL),
        ("PUT", path("vhost-limits", "/", "max-queues"), {"value": 1}),
        ("PUT", path("user-limits", "watcher", "max-channels"), {"value": 1}),
        ("POST", "/api/definitions", {"vhosts": [{"name": "new"}]}),
        ("POST", "/api/users/bulk-delete", {"users": ["guest"]}),
    ]
    for method, url, body in writes:
        answer = send(watcher, method, url, body)
        assert answer.status_code == 401, (method, url)
        assert answer.json() == NOT_ADMINISTRATOR, (method, url)
    refused = watcher.put(path("policies", "/", "p"), policy)
    assert refused.status_code == 401
    assert refused.json() == {
        "error": "not_authorised",
        "reason": "User not authorised to access object",
    }
    for url in (
        "/api/users",
        "/api/permissions",
        "/api/definitions",
        path("vhosts", "/"),
    ):
        assert watcher.get(url).json() == NOT_ADMINISTRATOR, url

    names = [vhost["name"] for vhost in watcher.get("/api/vhosts").json()]
    assert names == ["/", "elsewhere"]
    assert watcher.get("/api/nodes").status_code == 200
    assert api.get(path("policies", "/", "p")).status_code == 404
    assert [v["name"] for v in api.get("/api/vhosts").json()] == ["/", "elsewhere"]


def test_management_users_see_only_their_vhosts(api: Api) -> None:
    for name in ("mine", "theirs"):
        assert api.put(path("vhosts", name)).status_code == 201
        limit = api.put(path("vhost-limits", name, "max-queues"), {"value": 5})
        assert limit.status_code == 204
        policy = {"pattern": "x", "definition": {"max-length": 1}}
        assert (
            api.put(path("policies", name, f"{name}-policy"), policy).status_code == 201
        )
    add_user(api, "tenant", tags="management", vhost="mine")
    tenant = api.as_user("tenant", "tenant")

    assert [vhost["name"] for vhost in tenant.get("/api/vhosts").json()] == ["mine"]
    assert [entry["name"] for entry in tenant.get("/api/policies").json()] == [
        "mine-policy"
    ]
    assert [entry["vhost"] for entry in tenant.get("/api/vhost-limits").json()] == [
        "mine"
    ]
    assert tenant.get(path("policies", "theirs")).json() == {
        "error": "not_authorised",
        "reason": "User not authorised to access virtual host",
    }
    assert tenant.get(path("nodes")).json() == {
        "error": "not_authorised",
        "reason": "Not monitor user",
    }
    assert tenant.get("/api/users").json() == NOT_ADMINISTRATOR
    # Policies need the policymaker tag, and then only in one's own vhosts.
    policy = {"pattern": "y", "definition": {"max-length": 2}}
    assert tenant.put(path("policies", "mine", "p"), policy).status_code == 401
    add_user(api, "maker", tags="policymaker", vhost="mine")
    maker = api.as_user("maker", "maker")
    assert maker.put(path("policies", "mine", "p"), policy).status_code == 201
    assert maker.put(path("policies", "theirs", "p"), policy).status_code == 401
    assert maker.delete(path("policies", "mine", "p")).status_code == 204


# -- health, aliveness, nodes ----------------------------------------------------------


def test_health_checks_report_the_disk_alarm(
    make_broker: Callable[..., EmbeddedBroker],
) -> None:
    broker = make_broker(
        management={"enabled": True},
        store={"disk_free_limit_bytes": 10**18, "disk_check_interval_s": 0.05},
    )
    api = Api(broker.management_url)

    def alarms_status() -> int:
        return int(api.get("/api/health/checks/alarms").status_code)

    wait_for(lambda: alarms_status() == 503, "the disk alarm")
    alarm = [{"node": "amqpy@localhost", "resource": "disk"}]
    assert api.get("/api/health/checks/alarms").json() == {
        "status": "failed",
        "reason": "There are alarms in effect in the cluster",
        "alarms": alarm,
    }
    local = api.get("/api/health/checks/local-alarms")
    assert local.status_code == 503
    assert local.json()["alarms"] == alarm
    assert api.get("/api/nodes").json()[0]["disk_free_alarm"] is True

    def lift() -> None:
        broker.server.disk_free_limit_bytes = 0

    broker.call(lift)
    wait_for(lambda: alarms_status() == 200, "the alarm to clear")
    assert api.get("/api/health/checks/alarms").json() == {"status": "ok"}
    assert api.get("/api/health/checks/local-alarms").json() == {"status": "ok"}


def test_aliveness_test_declares_publishes_and_gets(api: Api, connect: Connect) -> None:
    answer = api.get(path("aliveness-test", "/"))
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}
    # It leaves its (empty) queue behind, as RabbitMQ's does.
    assert ready_count(connect().channel(), "aliveness-test") == 0
    assert api.get(path("aliveness-test", "nosuch")).status_code == 404

    add_user(api, "viewer", tags="monitoring")
    assert api.as_user("viewer", "viewer").get(path("aliveness-test", "/")).json() == {
        "error": "not_authorised",
        "reason": "User not authorised to access virtual host",
    }
    no_configure = {"configure": "", "write": ".*", "read": ".*"}
    assert api.put(path("permissions", "/", "viewer"), no_configure).status_code == 201
    connect().channel().queue_delete("aliveness-test")
    refused = api.as_user("viewer", "viewer").get(path("aliveness-test", "/"))
    assert refused.status_code == 401
    assert refused.json()["reason"] == (
        "ACCESS_REFUSED - access to queue 'aliveness-test' in vhost '/' "
        "refused for user 'viewer'"
    )


def test_nodes_and_extensions(api: Api) -> None:
    nodes = api.get("/api/nodes").json()
    assert len(nodes) == 1
    node = nodes[0]
    assert node["name"] == "amqpy@localhost"
    assert node["type"] == "disc"
    assert node["running"] is True
    assert node["mem_used"] > 0
    assert node["disk_free"] > 0
    assert node["uptime"] >= 0
    assert node["disk_free_alarm"] is False
    assert api.get(path("nodes", "amqpy@localhost")).json()["name"] == node["name"]
    assert api.get(path("nodes", "rabbit@elsewhere")).status_code == 404
    assert api.get("/api/extensions").json() == []


# -- persistence -----------------------------------------------------------------------


def test_what_the_api_set_survives_a_kill(start: Callable[..., Server]) -> None:
    server = start()
    api = Api(server.wait_management())
    assert api.put(path("vhosts", "kept"), {"description": "stays"}).status_code == 201
    add_user(api, "keeper", tags="management", vhost="kept")
    policy = {"pattern": "^q", "definition": {"max-length": 4}}
    assert api.put(path("policies", "kept", "cap"), policy).status_code == 201
    assert api.put(path("vhost-limits", "kept", "max-queues"), {"value": 8}).is_success
    assert api.put(
        path("user-limits", "keeper", "max-channels"), {"value": 6}
    ).is_success
    assert api.delete(path("permissions", "/", "guest")).status_code == 204
    api.close()
    # Every answer came after the change was on disk: kill -9 loses nothing.
    server.kill()

    again = start()
    api = Api(again.wait_management())
    assert api.get(path("vhosts", "kept")).json()["description"] == "stays"
    assert api.get(path("permissions", "kept", "keeper")).json() == {
        "user": "keeper",
        "vhost": "kept",
        **ALL,
    }
    assert api.get(path("permissions", "/", "guest")).status_code == 404
    assert api.get(path("policies", "kept", "cap")).json()["definition"] == {
        "max-length": 4
    }
    assert api.get(path("vhost-limits", "kept")).json() == [
        {"vhost": "kept", "value": {"max-queues": 8}}
    ]
    assert api.get(path("user-limits", "keeper")).json() == [
        {"user": "keeper", "value": {"max-channels": 6}}
    ]
    parameters = pika.ConnectionParameters(
        "127.0.0.1", again.port, **as_user("keeper", "keeper", "kept")
    )
    with pika.BlockingConnection(parameters) as connection:
        connection.channel().queue_declare("q1")
    api.close()
