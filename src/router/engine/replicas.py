"""Picking a replica of a model: least outstanding work, power of two choices, session affinity.

A model listed with ``replicas: [a, b, ...]`` is one candidate to `decide()`; the engine picks the
deployment here, with live state, each time it sends an attempt to the model:

1. Replicas that are out (open circuit, failed probe, saturated, at `max_concurrency`: the
   monitor's `replica_load` is None) and replicas this request already failed on are skipped.
   When none is left the engine moves to the next candidate.
2. With an affinity key (`affinity_key`: a session, the `user` field, or a hash of the
   conversation's stable prefix), replicas are ranked by rendezvous hashing of the key, and the
   first whose load is within the bound is used: at most ``ceil(load_cap x (total + 1) / n)``
   requests (bounded-load consistent hashing). A replica's loss moves only the keys it held; a hot
   key spills to its next replica instead of overloading one.
3. Otherwise (or when every ranked replica is over the bound, which the bound rules out in
   practice) ``least_loaded`` takes two usable replicas at random and keeps the less loaded one
   (power of two choices: proxies working from the same stale scrape do not all herd to the one
   replica that looked idle), and ``round_robin`` takes them in turn.

Load is the monitor's outstanding-work estimate: this process's requests in flight plus the other
clients' queue (vLLM's waiting + running, from the last scrape) plus the KV-cache usage (0..1).

>>> rendezvous(b"session-1", ["a", "b", "c"]) == rendezvous(b"session-1", ["c", "b", "a"])
True
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from router.core.policy import Model

__all__ = ["SESSION_HEADERS", "Fleet", "ReplicaPicker", "affinity_key", "rendezvous", "session_from_headers"]

#: Request headers that name a conversation, in the order they are read: router's own, then what
#: coding agents send (Claude Code's, Codex's); docs/routing.md.
SESSION_HEADERS = ("x-router-session", "x-claude-code-session-id", "session-id")
_SESSION_LIMIT = 256     # longer session values are cut (a key, not data)


def session_from_headers(headers: Mapping[str, str]) -> str | None:
    """The conversation a request belongs to, from its headers, or None.

    >>> session_from_headers({"x-router-session": "chat-42"})
    'chat-42'
    """
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return value[:_SESSION_LIMIT]
    return None


def _prefix(body: Mapping[str, Any]) -> list[Any]:
    """The part of a conversation that stays the same from turn to turn: the tools, the system and
    developer messages, and the first user message (later turns only append)."""
    out: list[Any] = [body.get("tools")]
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            role = m.get("role")
            if role in ("system", "developer"):
                out.append(m.get("content"))
            elif role == "user":
                out.append(m.get("content"))
                break
    return out


def affinity_key(body: Mapping[str, Any], session: str | None, affinity: str) -> bytes | None:
    """The key that keeps a conversation on one replica, or None (no affinity).

    ``session`` and ``prefix`` affinity use an explicit session (a `SESSION_HEADERS` header, or
    ``session=`` in the library), else the `user` field; ``prefix`` then falls back to a hash of the
    conversation's stable prefix (`_prefix`).

    >>> affinity_key({"messages": [{"role": "user", "content": "hi"}]}, "s1", "prefix")
    b's:s1'
    >>> affinity_key({"messages": [{"role": "user", "content": "hi"}]}, None, "session") is None
    True
    """
    if affinity == "none":
        return None
    if session:
        return b"s:" + session.encode()
    user = body.get("user")
    if isinstance(user, str) and user:
        return b"u:" + user[:_SESSION_LIMIT].encode()
    if affinity != "prefix":
        return None
    try:
        raw = orjson.dumps(_prefix(body))
    except TypeError:  # not JSON (a library caller's own objects): no stable prefix to hash
        return None
    return b"p:" + hashlib.blake2b(raw, digest_size=16).digest()


def _score(key: bytes, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest(), "big")


def rendezvous(key: bytes, names: list[str]) -> list[str]:
    """`names` in the key's rendezvous (highest random weight) order: each key ranks every replica
    by a hash of (key, replica), so removing a replica only moves the keys that ranked it first."""
    return sorted(names, key=lambda n: _score(key, n), reverse=True)


class Fleet:
    """One request's picking state: the replicas it already failed on, its affinity key, its hedge."""

    __slots__ = ("hedged", "key", "keyed", "tried")

    def __init__(self) -> None:
        self.tried: set[str] = set()     # deployment keys that failed for this request
        self.key: bytes | None = None
        self.keyed: str | None = None    # the affinity mode `key` was computed for (it may be None)
        self.hedged = False              # a hedge was considered (at most one per request)


class ReplicaPicker:
    """Chooses the replica of a model for one attempt (see the module docstring).

    `rng` is injected so tests are deterministic; the round-robin counters are per model alias.
    """

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()
        self._turn: dict[str, int] = {}

    def pick(self, model: Model, load: Callable[[str], float | None], key: bytes | None,
             exclude: set[str] | frozenset[str] = frozenset()) -> tuple[str, str] | None:
        """``(provider, how)`` for the next attempt on `model`, or None when every replica is out.
        `load(deployment key)` is the monitor's `replica_load`; `exclude` holds deployment keys.
        `how`: ``affinity``, ``spill`` (affinity, moved by the load bound), ``least_loaded``,
        ``round_robin`` or ``only`` (one usable replica)."""
        usable: list[tuple[str, float]] = []
        for name in model.replicas:
            dk = model.key(name)
            if dk in exclude:
                continue
            value = load(dk)
            if value is not None:
                usable.append((name, value))
        if not usable:
            return None
        if len(usable) == 1:
            return usable[0][0], "only"
        balance = model.balance
        if key is not None:
            loads = dict(usable)
            total = sum(int(v) for v in loads.values())
            bound = math.ceil(balance.load_cap * (total + 1) / len(usable))
            for i, name in enumerate(rendezvous(key, list(loads))):
                if int(loads[name]) + 1 <= bound:
                    return name, "affinity" if i == 0 else "spill"
        if balance.strategy == "round_robin":
            turn = self._turn.get(model.alias, 0)
            self._turn[model.alias] = turn + 1
            return usable[turn % len(usable)][0], "round_robin"
        a, b = self.rng.sample(usable, 2)
        return (a if a[1] <= b[1] else b)[0], "least_loaded"
