"""sid -> session, sid minting and the global session limit (sans-IO)."""

from __future__ import annotations

import secrets
from typing import Generic, Iterator, TypeVar

from bosh.errors import BoshError, Condition

T = TypeVar("T")

# XEP-0124 §7.2 + §19.3: the sid is opaque, unpredictable and never reused. 24 random bytes
# = 192 bits from the OS CSPRNG, written as 32 URL-safe characters.
SID_BYTES = 24


#: Separates a cluster node's id from the random part of its sids ('n1.Xk3...'). It is not in
#: the URL-safe base64 alphabet, so a balancer reads the node id without any shared state.
NODE_SEPARATOR = "."


def mint_sid(node_id: str = "") -> str:
    """A fresh sid; with ``node_id`` (``[cluster] node_id``) it starts ``node_id + '.'`` so that
    HAProxy can route a request to the node owning the session. The random part keeps all
    192 bits either way."""
    token = secrets.token_urlsafe(SID_BYTES)
    return f"{node_id}{NODE_SEPARATOR}{token}" if node_id else token


def node_of(sid: str) -> str | None:
    """The node id a sid carries, if any."""
    head, sep, _ = sid.partition(NODE_SEPARATOR)
    return head if sep else None


class Registry(Generic[T]):
    """Live sessions by sid. Values are whatever the adapter keeps per session."""

    def __init__(self, max_sessions: int, node_id: str = "") -> None:
        self.max_sessions = max_sessions
        self.node_id = node_id
        self._items: dict[str, T] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def get(self, sid: str) -> T | None:
        return self._items.get(sid)

    def reserve(self) -> str:
        """A fresh sid, or ``BoshError`` when the session limit is reached."""
        if len(self._items) >= self.max_sessions:
            raise BoshError(Condition.POLICY_VIOLATION, "too many sessions")
        while True:
            sid = mint_sid(self.node_id)
            if sid not in self._items:  # a collision of 192 random bits: paranoia only
                return sid

    def add(self, sid: str, item: T) -> None:
        self._items[sid] = item

    def remove(self, sid: str) -> None:
        self._items.pop(sid, None)
