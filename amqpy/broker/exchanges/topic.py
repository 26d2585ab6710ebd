"""The topic exchange's routing index: a trie of binding keys.

Semantics are RabbitMQ's (``rabbit_db_topic_exchange``):

- A key is split on ``"."`` into words. The empty key ``""`` is *zero* words,
  not one empty word; otherwise empty words are kept (``"a..b"`` is
  ``["a", "", "b"]``, ``"."`` is ``["", ""]``).
- In a binding key, ``*`` matches exactly one word (which may be empty) and
  ``#`` matches zero or more words. Any other word, including ``"a*"`` or
  ``""``, matches only itself.
- A ``*`` or ``#`` in a *routing* key is an ordinary word.

Matching walks the trie from the root with a stack of (node, word index)
states, so its cost depends on the shape of the trie near the routing key, not
on the number of bindings. A ``#`` node can be entered at many word indexes;
each hash node remembers the lowest index it was entered at during one match,
so every (hash node, index) pair is expanded once and ``"#.#.#.x"`` against a
long key stays polynomial. Every state that is not a hash node's exit is
reached in exactly one way (a trie has one path to each node), so no other
state needs remembering.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["TopicIndex"]

D = TypeVar("D", bound=Hashable)


class _Node(Generic[D]):
    """One trie node: edges by word, plus the destinations bound right here."""

    __slots__ = ("dests", "hash", "star", "words")

    def __init__(self) -> None:
        self.words: dict[str, _Node[D]] = {}  # literal words only
        self.star: _Node[D] | None = None
        self.hash: _Node[D] | None = None
        self.dests: set[D] = set()

    def is_empty(self) -> bool:
        return (
            not self.dests
            and not self.words
            and self.star is None
            and self.hash is None
        )


def _split(key: str) -> list[str]:
    # RabbitMQ: <<>> is no words at all; str.split would give [""].
    return key.split(".") if key else []


class TopicIndex(Generic[D]):
    """Topic bindings as a trie of (binding key, destination) pairs.

    Adding a pair twice stores it once; counting bindings that differ only by
    their arguments is the caller's job.
    """

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[D] = _Node()
        self._count = 0

    def __len__(self) -> int:
        """The number of distinct (binding key, destination) pairs."""
        return self._count

    def add(self, binding_key: str, destination: D) -> None:
        """Bind `destination` with `binding_key`; a no-op if already bound."""
        node = self._root
        for word in _split(binding_key):
            if word == "*":
                child = node.star
                if child is None:
                    child = node.star = _Node()
            elif word == "#":
                child = node.hash
                if child is None:
                    child = node.hash = _Node()
            else:
                child = node.words.get(word)
                if child is None:
                    child = node.words[word] = _Node()
            node = child
        if destination not in node.dests:
            node.dests.add(destination)
            self._count += 1

    def remove(self, binding_key: str, destination: D) -> None:
        """Unbind the pair if present, pruning nodes left with nothing in them."""
        node = self._root
        path: list[tuple[_Node[D], str]] = []
        for word in _split(binding_key):
            if word == "*":
                child = node.star
            elif word == "#":
                child = node.hash
            else:
                child = node.words.get(word)
            if child is None:
                return
            path.append((node, word))
            node = child
        if destination not in node.dests:
            return
        node.dests.discard(destination)
        self._count -= 1
        while path and node.is_empty():
            parent, word = path.pop()
            if word == "*":
                parent.star = None
            elif word == "#":
                parent.hash = None
            else:
                del parent.words[word]
            node = parent

    def match(self, routing_key: str) -> set[D]:
        """Every destination whose binding key matches `routing_key`."""
        result: set[D] = set()
        self._walk(routing_key, result)
        return result

    def visit_count(self, routing_key: str) -> int:
        """How many trie states matching `routing_key` expands (for tests)."""
        return self._walk(routing_key, set())

    def node_count(self) -> int:
        """How many trie nodes exist, the root included (for tests)."""
        count = 0
        pending = [self._root]
        while pending:
            node = pending.pop()
            count += 1
            pending.extend(node.words.values())
            if node.star is not None:
                pending.append(node.star)
            if node.hash is not None:
                pending.append(node.hash)
        return count

    def _walk(self, routing_key: str, result: set[D]) -> int:
        """Add the matches of `routing_key` to `result`; return states expanded.

        A state (node, i) means: the path to `node` has consumed ``words[:i]``.
        For a hash node the state is its *exit*: the ``#`` has swallowed
        ``words[entry:i]`` and matching continues from ``words[i]``.
        """
        words = routing_key.split(".") if routing_key else []
        n = len(words)
        nodes = [self._root]
        indexes = [0]
        push_node = nodes.append
        push_index = indexes.append
        pop_node = nodes.pop
        pop_index = indexes.pop
        # hash node -> lowest index it has been entered at during this match
        entered: dict[_Node[D], int] | None = None
        visits = 0
        while nodes:
            node = pop_node()
            i = pop_index()
            visits += 1
            if i == n:
                if node.dests:
                    result.update(node.dests)
            else:
                child = node.words.get(words[i])
                if child is not None:
                    push_node(child)
                    push_index(i + 1)
                child = node.star
                if child is not None:
                    push_node(child)
                    push_index(i + 1)
            hash_node = node.hash
            if hash_node is None:
                continue
            if entered is None:
                entered = {}
            # Enter `hash_node` at i: it may swallow words[i:j] for any j >= i.
            # A hash node with no literal or * children (as in "a.#" or "#.#")
            # needs no exit states: it matches because j can reach n, and its
            # own # child is entered at i just the same.
            while hash_node is not None:
                low = entered.get(hash_node)
                if low is not None and low <= i:
                    break
                entered[hash_node] = i
                if hash_node.words or hash_node.star is not None:
                    for j in range(i, n + 1 if low is None else low):
                        push_node(hash_node)
                        push_index(j)
                    break
                if low is None and hash_node.dests:
                    result.update(hash_node.dests)
                hash_node = hash_node.hash
        return visits
