"""TopicIndex against RabbitMQ's topic-exchange semantics.

The big table is the one in RabbitMQ's own unit tests (``topic_matching`` in
``unit_inbroker_non_parallel_SUITE`` / ``rabbit_db_topic_exchange_SUITE``).
"""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amqpy.broker.exchanges.topic import TopicIndex


def reference_match(binding_key: str, routing_key: str) -> bool:
    """A slow, obviously-correct matcher for the same semantics."""
    pattern = binding_key.split(".") if binding_key else []
    words = routing_key.split(".") if routing_key else []

    @functools.cache
    def matches(p: int, w: int) -> bool:
        if p == len(pattern):
            return w == len(words)
        if pattern[p] == "#":
            return any(matches(p + 1, k) for k in range(w, len(words) + 1))
        if w == len(words):
            return False
        return pattern[p] in ("*", words[w]) and matches(p + 1, w + 1)

    return matches(0, 0)


# --- RabbitMQ's table ------------------------------------------------------

RABBIT_BINDINGS = [
    ("a.b.c", "t1"),
    ("a.*.c", "t2"),
    ("a.#.b", "t3"),
    ("a.b.b.c", "t4"),
    ("#", "t5"),
    ("#.#", "t6"),
    ("#.b", "t7"),
    ("*.*", "t8"),
    ("a.*", "t9"),
    ("*.b.c", "t10"),
    ("a.#", "t11"),
    ("a.#.#", "t12"),
    ("b.b.c", "t13"),
    ("a.b.b", "t14"),
    ("a.b", "t15"),
    ("b.c", "t16"),
    ("", "t17"),
    ("*.*.*", "t18"),
    ("vodka.martini", "t19"),
    ("a.b.c", "t20"),
    ("*.#", "t21"),
    ("#.*.#", "t22"),
    ("*.#.#", "t23"),
    ("#.#.#", "t24"),
    ("*", "t25"),
    ("#.b.#", "t26"),
    # RabbitMQ binds t27 twice with different arguments ("aliasing"); the
    # index holds (key, destination) pairs, so the exchange counts those.
    ("args-test", "t27"),
]

RABBIT_EXPECTED = {
    "a.b.c": "t1 t2 t5 t6 t10 t11 t12 t18 t20 t21 t22 t23 t24 t26",
    "a.b": "t3 t5 t6 t7 t8 t9 t11 t12 t15 t21 t22 t23 t24 t26",
    "a.b.b": "t3 t5 t6 t7 t11 t12 t14 t18 t21 t22 t23 t24 t26",
    "": "t5 t6 t17 t24",
    "b.c.c": "t5 t6 t18 t21 t22 t23 t24 t26",
    "a.a.a.a.a": "t5 t6 t11 t12 t21 t22 t23 t24",
    "vodka.gin": "t5 t6 t8 t21 t22 t23 t24",
    "vodka.martini": "t5 t6 t8 t19 t21 t22 t23 t24",
    "b.b.c": "t5 t6 t10 t13 t18 t21 t22 t23 t24 t26",
    "nothing.here.at.all": "t5 t6 t21 t22 t23 t24",
    "oneword": "t5 t6 t21 t22 t23 t24 t25",
    "args-test": "t5 t6 t21 t22 t23 t24 t25 t27",
}

# RabbitMQ then removes bindings 1, 5, 11, 19 and 21 (and one of the two
# t27 bindings, which leaves t27 bound).
RABBIT_REMOVED = [RABBIT_BINDINGS[n - 1] for n in (1, 5, 11, 19, 21)]

RABBIT_EXPECTED_AFTER_REMOVAL = {
    "a.b.c": "t2 t6 t10 t12 t18 t20 t22 t23 t24 t26",
    "a.b": "t3 t6 t7 t8 t9 t12 t15 t22 t23 t24 t26",
    "a.b.b": "t3 t6 t7 t12 t14 t18 t22 t23 t24 t26",
    "": "t6 t17 t24",
    "b.c.c": "t6 t18 t22 t23 t24 t26",
    "a.a.a.a.a": "t6 t12 t22 t23 t24",
    "vodka.gin": "t6 t8 t22 t23 t24",
    "vodka.martini": "t6 t8 t22 t23 t24",
    "b.b.c": "t6 t10 t13 t18 t22 t23 t24 t26",
    "nothing.here.at.all": "t6 t22 t23 t24",
    "oneword": "t6 t22 t23 t24 t25",
    "args-test": "t6 t22 t23 t24 t25 t27",
}


def rabbit_index() -> TopicIndex[str]:
    index: TopicIndex[str] = TopicIndex()
    for binding_key, destination in RABBIT_BINDINGS:
        index.add(binding_key, destination)
    return index


@pytest.mark.parametrize(("routing_key", "expected"), RABBIT_EXPECTED.items())
def test_rabbit_table(routing_key: str, expected: str) -> None:
    assert rabbit_index().match(routing_key) == set(expected.split())


@pytest.mark.parametrize(
    ("routing_key", "expected"), RABBIT_EXPECTED_AFTER_REMOVAL.items()
)
def test_rabbit_table_after_removal(routing_key: str, expected: str) -> None:
    index = rabbit_index()
    for binding_key, destination in RABBIT_REMOVED:
        index.remove(binding_key, destination)
    assert index.match(routing_key) == set(expected.split())


def test_rabbit_table_after_removing_everything() -> None:
    index = rabbit_index()
    for binding_key, destination in RABBIT_BINDINGS:
        index.remove(binding_key, destination)
    for routing_key in ("a.b.c", "b.b.c", ""):
        assert index.match(routing_key) == set()
    assert len(index) == 0
    assert index.node_count() == 1


# rabbit_db_topic_exchange_SUITE:match1
@pytest.mark.parametrize(
    ("routing_key", "expected"),
    [
        ("a.b.c", {1, 2, 3, 4, 5}),
        ("a.b", {3, 4, 5, 6}),
        ("", {4, 5}),
        ("zen.rabbit", {3, 4, 5}),
    ],
)
def test_rabbit_db_match(routing_key: str, expected: set[int]) -> None:
    index: TopicIndex[int] = TopicIndex()
    for destination, binding_key in enumerate(
        ["a.b.c", "a.*.c", "*.#", "#", "#.#", "a.*"], start=1
    ):
        index.add(binding_key, destination)
    assert index.match(routing_key) == expected


# --- single-binding edge cases ----------------------------------------------

EDGE_CASES = [
    # The empty key is zero words, not one empty word.
    ("", "", True),
    ("", "a", False),
    ("a", "", False),
    ("*", "", False),
    ("#", "", True),
    ("#.#", "", True),
    ("#.#.#.#.#", "", True),
    ("#.*", "", False),
    ("*.#", "", False),
    # Empty words elsewhere are real words that * matches.
    ("*", ".", False),
    ("*.*", ".", True),
    ("#", ".", True),
    ("a.*", "a.", True),
    ("*.a", ".a", True),
    ("a.*.b", "a..b", True),
    ("a.#.b", "a..b", True),
    ("a..b", "a..b", True),
    ("a..b", "a.x.b", False),
    ("a.b", "a..b", False),
    ("a.", "a", False),
    ("a", "a.", False),
    ("a.", "a.", True),
    (".", ".", True),
    (".", "", False),
    ("#.", "", False),
    ("#.", ".", True),
    ("#.", "a.", True),
    ("#.", "a", False),
    (".#", "", False),
    (".#", ".", True),
    # Wildcards only as whole words.
    ("a*", "a*", True),
    ("a*", "ab", False),
    ("a#", "a.b", False),
    ("a#", "a#", True),
    ("#a", "xa", False),
    ("*a", "ba", False),
    # Wildcards in a routing key are ordinary words.
    ("*", "*", True),
    ("#", "#", True),
    ("a.#", "a.#", True),
    ("a.*", "a.#", True),
    ("a.b", "a.*", False),
    ("a.b", "a.#", False),
    ("a.#.c", "a.#", False),
    # Ordinary wildcard behaviour.
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.*", "a", False),
    ("a.#", "a", True),
    ("#.a", "a", True),
    ("#.a.#", "a", True),
    ("#.a.#", "x.y.a.z", True),
    ("#.a.#", "x.y.z", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.#.*", "a", False),
    ("a.#.*", "a.b.c.d", True),
    ("#.*", "a.b.c", True),
    ("a.#.#.b", "a.b", True),
    ("a.#.#.b", "a.x.y.z.b", True),
    ("a.#.#.b", "a.x.y.z.c", False),
    ("#.b.#.d.#", "a.b.c.d.e", True),
    ("#.b.#.d.#", "a.d.c.b.e", False),
    ("*.#.*", "a", False),
    ("*.#.*", "a.b", True),
    ("*.#.*", "a.b.c.d", True),
    # Words are compared exactly.
    ("A", "a", False),
    ("café.*", "café.x", True),
    ("café", "cafe", False),
    ("a b.c", "a b.c", True),
]


@pytest.mark.parametrize(("binding_key", "routing_key", "expected"), EDGE_CASES)
def test_edge_case(binding_key: str, routing_key: str, expected: bool) -> None:
    assert reference_match(binding_key, routing_key) is expected
    index: TopicIndex[str] = TopicIndex()
    index.add(binding_key, "q")
    assert index.match(routing_key) == ({"q"} if expected else set())


def test_all_edge_cases_in_one_index() -> None:
    index: TopicIndex[str] = TopicIndex()
    for binding_key, _, _ in EDGE_CASES:
        index.add(binding_key, binding_key)
    binding_keys = {binding_key for binding_key, _, _ in EDGE_CASES}
    for _, routing_key, _ in EDGE_CASES:
        expected = {key for key in binding_keys if reference_match(key, routing_key)}
        assert index.match(routing_key) == expected


def test_many_hashes_against_a_long_key_stay_polynomial() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("#." * 12 + "z", "never")
    index.add("#." * 12 + "a", "always")
    routing_key = "a." * 60 + "a"
    assert index.match(routing_key) == {"always"}
    # each of the 13 nodes at most once per word index
    assert index.visit_count(routing_key) <= 2 * 13 * 62


_WORDS = st.sampled_from(["a", "b", "", "*", "#"])
_ROUTING_WORDS = st.sampled_from(["a", "b", "", "*", "#", "c"])


def _join(words: list[str]) -> str:
    return ".".join(words)


@settings(max_examples=300, deadline=None)
@given(
    binding_keys=st.lists(st.lists(_WORDS, max_size=5).map(_join), max_size=12),
    routing_keys=st.lists(st.lists(_ROUTING_WORDS, max_size=6).map(_join)),
)
def test_matches_reference(binding_keys: list[str], routing_keys: list[str]) -> None:
    index: TopicIndex[str] = TopicIndex()
    for binding_key in binding_keys:
        index.add(binding_key, binding_key)
    for routing_key in [*routing_keys, ""]:
        expected = {key for key in binding_keys if reference_match(key, routing_key)}
        assert index.match(routing_key) == expected


# --- add / remove / prune ---------------------------------------------------


def test_add_is_idempotent() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a.*", "q")
    index.add("a.*", "q")
    assert len(index) == 1
    assert index.match("a.b") == {"q"}
    index.remove("a.*", "q")
    assert len(index) == 0
    assert index.match("a.b") == set()


def test_len_counts_pairs() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a", "q1")
    index.add("a", "q2")
    index.add("b", "q1")
    index.add("", "q1")
    assert len(index) == 4


@pytest.mark.parametrize(
    ("binding_key", "destination"),
    [
        ("a.b", "q"),  # no such key
        ("a", "q"),  # a prefix node that holds no binding
        ("a.b.c", "other"),  # key bound, but to someone else
        ("a.*.c", "q"),
        ("#", "q"),
        ("", "q"),
    ],
)
def test_remove_absent_is_a_no_op(binding_key: str, destination: str) -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a.b.c", "q")
    nodes = index.node_count()
    index.remove(binding_key, destination)
    assert len(index) == 1
    assert index.node_count() == nodes
    assert index.match("a.b.c") == {"q"}


def test_remove_one_destination_keeps_the_other() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a.#", "q1")
    index.add("a.#", "q2")
    index.remove("a.#", "q1")
    assert index.match("a.b") == {"q2"}
    assert index.node_count() == 3


def test_remove_prunes_empty_nodes_only() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a.b.c.d", "q1")
    index.add("a.b", "q2")
    index.add("a.*.#", "q3")
    assert index.node_count() == 7  # root, a, b, c, d, *, #

    index.remove("a.b.c.d", "q1")  # prunes d and c, keeps b (it has q2)
    assert index.node_count() == 5
    assert index.match("a.b") == {"q2", "q3"}

    index.remove("a.b", "q2")  # prunes b, keeps a (it has the * branch)
    assert index.node_count() == 4
    index.remove("a.*.#", "q3")
    assert index.node_count() == 1
    assert len(index) == 0


def test_remove_keeps_a_node_with_children() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a", "q1")
    index.add("a.b", "q2")
    index.remove("a", "q1")
    assert index.match("a") == set()
    assert index.match("a.b") == {"q2"}
    assert index.node_count() == 3


def test_empty_key_binds_to_the_root() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("", "q")
    assert index.node_count() == 1
    assert index.match("") == {"q"}
    assert index.match(".") == set()
    index.remove("", "q")
    assert index.match("") == set()


def test_destinations_are_any_hashable() -> None:
    index: TopicIndex[tuple[str, int]] = TopicIndex()
    index.add("a.*", ("q", 1))
    index.add("a.*", ("q", 2))
    assert index.match("a.x") == {("q", 1), ("q", 2)}


def test_match_returns_a_fresh_set() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a", "q")
    index.match("a").add("intruder")
    assert index.match("a") == {"q"}


# --- scale -------------------------------------------------------------------


def test_ten_thousand_bindings_visit_few_nodes() -> None:
    rng = random.Random(7)
    index: TopicIndex[int] = TopicIndex()
    bindings: list[tuple[str, int]] = []
    for n in range(10_000):
        words = [f"w{rng.randrange(100)}", f"x{rng.randrange(10)}", f"y{n}"]
        if n % 10 == 0:
            words[rng.randrange(3)] = "*"
        if n % 25 == 0:
            words[rng.randrange(3)] = "#"
        binding_key = ".".join(words)
        bindings.append((binding_key, n))
        index.add(binding_key, n)
    assert len(index) == 10_000
    assert index.node_count() > 10_000

    for routing_key in ["w1.x2.y3", "w42.x0.y4200", "w7.x7", "zzz", ""]:
        expected = {n for key, n in bindings if reference_match(key, routing_key)}
        assert index.match(routing_key) == expected
        assert index.visit_count(routing_key) < 200
