"""AccessControl without sockets: RabbitMQ's password hashes, permission
regexes and their texts, users' tags and limits as definitions give them."""

from __future__ import annotations

import base64
import gc
import hashlib
import os

import pytest

from amqpy.broker.access import (
    CONFIGURE,
    MD5,
    READ,
    SHA256,
    SHA512,
    USER_LIMITS,
    VHOST_LIMITS,
    WRITE,
    AccessControl,
    Permission,
    hash_password,
    parse_limits,
    parse_tags,
    password_matches,
)
from amqpy.broker.errors import AccessRefusedError

# Made by RabbitMQ 3.10.8 itself (rabbitmqctl export_definitions), for the
# users guest/guest and bob/bob.
RABBITMQ_GUEST_HASH = "VYx4afZ31gm2Dxxt+1XrKQLSat0bOfkf/fzzt0LbhFSN7ZCX"
RABBITMQ_BOB_HASH = "Ns6/d67ufQ6iUstXcwJ7z53Gu2p2rDUveTWl60lIRR40ccep"

ALGORITHMS = {SHA256: hashlib.sha256, SHA512: hashlib.sha512, MD5: hashlib.md5}


def rabbitmq_hash(password: str, algorithm: str) -> str:
    """What RabbitMQ stores: base64(salt + H(salt + UTF-8 password))."""
    salt = os.urandom(4)
    digest = ALGORITHMS[algorithm](salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def refusal(kind: str, name: str, user: str = "bob", vhost: str = "/") -> str:
    return f"access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"


# -- password hashes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("password_hash", "password"),
    [(RABBITMQ_GUEST_HASH, "guest"), (RABBITMQ_BOB_HASH, "bob")],
)
def test_hashes_made_by_rabbitmq_match(password_hash: str, password: str) -> None:
    assert password_matches(password_hash, SHA256, password)
    assert not password_matches(password_hash, SHA256, password + "x")
    assert not password_matches(password_hash, SHA512, password)


@pytest.mark.parametrize("algorithm", [SHA256, SHA512, MD5])
@pytest.mark.parametrize("password", ["frankpw", "pässwörd", "", "日本語 pw"])
def test_hashes_round_trip_both_ways(algorithm: str, password: str) -> None:
    ours = hash_password(password, algorithm)
    raw = base64.b64decode(ours)
    digest_size = ALGORITHMS[algorithm]().digest_size
    assert len(raw) == 4 + digest_size
    assert raw[4:] == ALGORITHMS[algorithm](raw[:4] + password.encode()).digest()
    assert password_matches(ours, algorithm, password)
    assert password_matches(rabbitmq_hash(password, algorithm), algorithm, password)
    assert not password_matches(ours, algorithm, password + "!")


def test_hashes_are_salted() -> None:
    assert hash_password("same") != hash_password("same")


@pytest.mark.parametrize(
    ("password_hash", "algorithm"),
    [
        ("", SHA256),  # RabbitMQ's passwordless user
        ("not base64!", SHA256),
        (RABBITMQ_GUEST_HASH, "rabbit_password_hashing_nope"),
        (RABBITMQ_GUEST_HASH[:-4], SHA256),  # truncated
    ],
)
def test_unusable_hashes_never_match(password_hash: str, algorithm: str) -> None:
    assert not password_matches(password_hash, algorithm, "guest")
    assert not password_matches(password_hash, algorithm, "")


def test_authenticate() -> None:
    access = AccessControl()
    access.put_user("bob", password="secret")
    access.put_user("ivy")  # no password: cannot log in
    access.put_user("old", password="pw", hashing_algorithm=MD5)
    assert access.authenticate("bob", "secret") is access.users["bob"]
    assert access.authenticate("bob", "wrong") is None
    assert access.authenticate("nobody", "secret") is None
    assert access.authenticate("ivy", "") is None
    assert access.authenticate("old", "pw") is access.users["old"]
    assert access.users["old"].definition()["hashing_algorithm"] == MD5


def test_put_user_refuses_bad_input_and_keeps_the_old_user() -> None:
    access = AccessControl()
    bob = access.put_user("bob", password="pw")
    with pytest.raises(ValueError, match="unknown hashing algorithm"):
        access.put_user("bob", password="x", hashing_algorithm="sha1")
    with pytest.raises(ValueError, match="must not be empty"):
        access.put_user("", password="x")
    assert access.users == {"bob": bob}
    assert access.authenticate("bob", "pw") is bob


# -- permissions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "allowed"),
    [
        (".*", "anything", True),
        (".*", "", True),
        ("^$", "q", False),
        ("", "q", False),  # "" is "^$", not "anything"
        ("", "", True),
        ("bqe", "xbqe4x", True),  # unanchored: found anywhere in the name
        ("^bqe$", "xbqe4x", False),
        ("^amq\\.gen", "amq.gen-abc", True),
        ("^q$|^ex$", "ex", True),
    ],
)
def test_permission_regexes(pattern: str, name: str, allowed: bool) -> None:
    permission = Permission("bob", "/", pattern, pattern, pattern)
    for kind in (CONFIGURE, WRITE, READ):
        assert permission.allows(kind, name) is allowed


def test_invalid_regex_is_refused_and_changes_nothing() -> None:
    access = AccessControl()
    access.set_permissions("bob", "/", ".*", ".*", ".*")
    with pytest.raises(ValueError, match=r"invalid regular expression '\('"):
        access.set_permissions("bob", "/", "(", ".*", ".*")
    assert access.permissions[("bob", "/")].configure == ".*"


def test_check_texts_and_the_default_exchange() -> None:
    access = AccessControl()
    access.set_permissions("bob", "/", "^q", "^amq\\.default$", "")
    access.check("bob", "/", CONFIGURE, "queue", "q1")
    with pytest.raises(AccessRefusedError) as error:
        access.check("bob", "/", CONFIGURE, "exchange", "x1")
    assert error.value.text == refusal("exchange", "x1")

    # The default exchange is matched and named as amq.default.
    access.check("bob", "/", WRITE, "exchange", "")
    with pytest.raises(AccessRefusedError) as error:
        access.check("bob", "/", READ, "exchange", "")
    assert error.value.text == refusal("exchange", "amq.default")
    # A queue named "" is not the default exchange.
    access.check("bob", "/", READ, "queue", "")


def test_no_entry_means_no_access() -> None:
    access = AccessControl()
    access.set_permissions("carol", "v2", ".*", ".*", ".*")
    assert access.can_access_vhost("carol", "v2")
    assert not access.can_access_vhost("carol", "/")
    with pytest.raises(AccessRefusedError) as error:
        access.check("carol", "/", READ, "queue", "q")
    assert error.value.text == refusal("queue", "q", "carol")


def test_all_empty_regexes_still_give_vhost_access() -> None:
    access = AccessControl()
    access.set_permissions("dave", "/", "", "", "")
    assert access.can_access_vhost("dave", "/")
    with pytest.raises(AccessRefusedError):
        access.check("dave", "/", CONFIGURE, "queue", "amq.gen-x")


def test_deleting_a_user_or_vhost_drops_its_permissions() -> None:
    access = AccessControl()
    access.put_user("bob", password="pw")
    access.set_permissions("bob", "/", ".*", ".*", ".*")
    access.set_permissions("bob", "v2", ".*", ".*", ".*")
    access.set_permissions("carol", "v2", ".*", ".*", ".*")
    access.forget_vhost("v2")
    assert set(access.permissions) == {("bob", "/")}
    assert access.delete_user("bob")
    assert access.permissions == {}
    assert not access.delete_user("bob")
    assert not access.clear_permissions("bob", "/")


def test_permission_changes_empty_channel_caches() -> None:
    access = AccessControl()
    caches = [access.new_cache(), access.new_cache()]
    changes = [
        lambda: access.set_permissions("bob", "/", ".*", ".*", ".*"),
        lambda: access.clear_permissions("bob", "/"),
        lambda: access.forget_vhost("/"),
        lambda: access.delete_user("bob"),
    ]
    access.put_user("bob", password="pw")
    for change in changes:
        for cache in caches:
            cache[(WRITE, "exchange", "ex")] = None
        change()
        assert all(not cache for cache in caches), change
    # A closed channel's cache is not kept alive by the registry.
    del caches, cache
    gc.collect()
    assert len(access._caches) == 0


# -- tags, limits and definitions ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        (["administrator", "weirdtag"], ("administrator", "weirdtag")),
        ("monitoring, weirdtag", ("monitoring", "weirdtag")),
        ("", ()),
        (None, ()),
        ([], ()),
    ],
)
def test_parse_tags(value: object, tags: tuple[str, ...]) -> None:
    assert parse_tags(value) == tags


def test_parse_tags_refuses_other_types() -> None:
    with pytest.raises(ValueError, match="tags must be a list or a string"):
        parse_tags(3)


def test_parse_limits() -> None:
    assert parse_limits({"max-connections": 1, "max-channels": 0}, USER_LIMITS) == {
        "max-connections": 1,
        "max-channels": 0,
    }
    # Negative means "no limit", as with rabbitmqctl.
    assert parse_limits({"max-queues": -1}, VHOST_LIMITS) == {}
    assert parse_limits(None, VHOST_LIMITS) == {}
    with pytest.raises(ValueError, match="unknown limit 'max-queues'"):
        parse_limits({"max-queues": 1}, USER_LIMITS)
    with pytest.raises(ValueError, match="must be an integer"):
        parse_limits({"max-connections": "1"}, VHOST_LIMITS)
    with pytest.raises(ValueError, match="must be an integer"):
        parse_limits({"max-connections": True}, VHOST_LIMITS)
    with pytest.raises(ValueError, match="limits must be an object"):
        parse_limits([1], VHOST_LIMITS)


def test_users_from_rabbitmq_definitions() -> None:
    access = AccessControl()
    access.import_users(
        [
            {
                "name": "frank",
                "password_hash": rabbitmq_hash("frankpw", SHA256),
                "hashing_algorithm": SHA256,
                "tags": [],
                "limits": {"max-connections": 2},
            },
            {
                "name": "gina",
                "password_hash": rabbitmq_hash("pässwörd", SHA256),
                "tags": "",  # RabbitMQ accepts a string
            },
            {"name": "hank", "password_hash": rabbitmq_hash("hankpw", SHA256)},
            {
                "name": "sam",
                "password_hash": rabbitmq_hash("sampw", SHA512),
                "hashing_algorithm": SHA512,
                "tags": "administrator,monitoring",
            },
            {"name": "ivy", "password_hash": ""},
        ]
    )
    assert access.authenticate("frank", "frankpw") is not None
    assert access.authenticate("gina", "pässwörd") is not None
    assert access.authenticate("hank", "hankpw") is not None
    assert access.authenticate("sam", "sampw") is not None
    assert access.authenticate("ivy", "") is None
    exported = {user["name"]: user for user in access.export_users()}
    assert exported["gina"]["tags"] == []
    assert exported["hank"]["hashing_algorithm"] == SHA256
    assert exported["sam"]["tags"] == ["administrator", "monitoring"]
    assert exported["frank"]["limits"] == {"max-connections": 2}

    # An export imports back to the same users.
    again = AccessControl()
    again.import_users(access.export_users())
    assert again.export_users() == access.export_users()


@pytest.mark.parametrize(
    "entry",
    [
        {"password_hash": "x"},
        {"name": 3},
        {"name": "x", "password_hash": 5},
        {"name": "x", "limits": {"max-queues": 1}},
        "x",
    ],
)
def test_malformed_user_definitions_are_refused(entry: object) -> None:
    with pytest.raises(ValueError):
        AccessControl().import_users([entry])


def test_permissions_from_definitions() -> None:
    access = AccessControl()
    access.import_permissions(
        [{"user": "bob", "vhost": "/", "configure": "", "write": ".*", "read": "^q"}]
    )
    assert access.export_permissions() == [
        {"user": "bob", "vhost": "/", "configure": "", "write": ".*", "read": "^q"}
    ]
    for entry in (
        {"user": "bob", "vhost": "/", "configure": ".*", "write": ".*"},
        {"user": "bob", "vhost": "/", "configure": 1, "write": ".*", "read": ".*"},
        {"user": "bob", "vhost": "/", "configure": "(", "write": ".*", "read": ".*"},
    ):
        with pytest.raises(ValueError):
            access.import_permissions([entry])


def test_topic_permissions_match_routing_keys_with_the_user_and_vhost_filled_in() -> (
    None
):
    access = AccessControl()
    access.set_topic_permissions("bob", "/", "tx", r"^{username}\.", r"^{vhost}")
    access.check("bob", "/", "write", "topic", "tx", "bob.created")
    with pytest.raises(AccessRefusedError) as refused:
        access.check("bob", "/", "write", "topic", "tx", "alice.created")
    assert refused.value.text == (
        "access to topic 'alice.created' in exchange 'tx' in vhost '/' "
        "refused for user 'bob'"
    )
    access.check("bob", "/", "read", "topic", "tx", "/anything")
    # No entry for this exchange, or for this user: not restricted.
    access.check("bob", "/", "write", "topic", "other", "alice.created")
    access.check("carol", "/", "write", "topic", "tx", "alice.created")


def test_topic_permissions_round_trip_and_go_with_their_user_and_vhost() -> None:
    access = AccessControl()
    entry = {"user": "bob", "vhost": "v", "exchange": "tx", "write": "a", "read": ""}
    access.import_topic_permissions([entry])
    assert access.export_topic_permissions() == [entry]
    with pytest.raises(ValueError, match="malformed topic permission"):
        access.import_topic_permissions([{"user": "bob"}])
    access.forget_vhost("v")
    assert access.export_topic_permissions() == []
    access.import_topic_permissions([entry])
    access.put_user("bob", password="bob")
    access.delete_user("bob")
    assert access.export_topic_permissions() == []
