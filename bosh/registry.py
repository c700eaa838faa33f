"""sid -> session, sid minting and the global session limit (sans-IO)."""

from __future__ import annotations

import secrets
from typing import Generic, Iterator, TypeVar

from bosh.errors import BoshError, Condition

T = TypeVar("T")

# XEP-0124 §7.2 + §19.3: the sid is opaque, unpredictable and never reused. 24 random bytes
# = 192 bits from the OS CSPRNG, written as 32 URL-safe characters.
SID_BYTES = 24


def mint_sid() -> str:
    return secrets.token_urlsafe(SID_BYTES)


class Registry(Generic[T]):
    """Live sessions by sid. Values are whatever the adapter keeps per session."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._items: dict[str, T] = {}
        self.created_total = 0

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
            sid = mint_sid()
            if sid not in self._items:  # a collision of 192 random bits: paranoia only
                return sid

    def add(self, sid: str, item: T) -> None:
        self._items[sid] = item
        self.created_total += 1

    def remove(self, sid: str) -> None:
        self._items.pop(sid, None)
