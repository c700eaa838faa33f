"""The prebind API's keys and per-key rate (no asyncio, no aiohttp; time passed in).

* :class:`ApiKeys` holds the SHA-256 digests of the keys of ``[prebind] api_keys_file`` (one
  key per line; blank lines and ``#`` comments ignored) and checks a presented key against
  every one of them with :func:`hmac.compare_digest`: comparing fixed-length digests, never
  stopping at the first match, so the time taken says nothing about any key.
* :class:`KeyRates` counts requests per key in a sliding 60 s window
  (``[prebind] per_key_per_minute``); memory is bounded by keys x that number.

Keys never appear in logs or messages; a key is named by its *id*, ``sha256:`` and the first
8 hex digits of its digest (the same id for the same key after a reload).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections import deque
from pathlib import Path
from typing import Iterable

from bosh.errors import ConfigError

__all__ = ["ApiKeys", "KeyRates", "load_keys", "permission_warning", "KEY_MIN_LENGTH",
           "KEY_MAX_LENGTH", "WINDOW"]

KEY_MIN_LENGTH = 16   # a guessable key would make the rate limit the only defence
KEY_MAX_LENGTH = 512
WINDOW = 60.0         # seconds: "per key per minute"
_WHERE = "[prebind] api_keys_file"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _key_id(digest: bytes) -> str:
    return "sha256:" + digest.hex()[:8]


class ApiKeys:
    """The valid keys, as digests."""

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._digests = tuple(dict.fromkeys(_digest(k) for k in keys))

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"<ApiKeys {len(self._digests)} key(s)>"

    def ids(self) -> frozenset[str]:
        return frozenset(_key_id(d) for d in self._digests)

    def match(self, presented: str) -> str | None:
        """The id of the key ``presented`` is, or None. Constant time in which key matched
        and in the presented key's length: every stored digest is compared, always."""
        given = _digest(presented)
        found: bytes | None = None
        for digest in self._digests:
            if hmac.compare_digest(digest, given):
                found = digest
        return _key_id(found) if found is not None else None


def load_keys(path: str) -> ApiKeys:
    """Read ``path`` (one key per line). Raises :class:`ConfigError` naming the file, the
    line (never the key) and what is allowed, or when the file lists no key at all."""
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{_WHERE}: {path}: cannot read the key file: "
                          f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{_WHERE}: {path}: not UTF-8 text; allowed: one key per line") from None
    keys = []
    for lineno, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not (KEY_MIN_LENGTH <= len(key) <= KEY_MAX_LENGTH
                and all("!" <= ch <= "~" for ch in key)):
            raise ConfigError(
                f"{_WHERE}: {path} line {lineno}: not a valid key; allowed: {KEY_MIN_LENGTH} to "
                f"{KEY_MAX_LENGTH} printable ASCII characters without spaces, one per line, e.g. "
                "the output of `openssl rand -hex 32`")
        keys.append(key)
    if not keys:
        raise ConfigError(f"{_WHERE}: {path} lists no key; allowed: one key per line, e.g. the "
                          "output of `openssl rand -hex 32` (or set [prebind] enabled = false)")
    return ApiKeys(keys)


def permission_warning(path: str) -> str | None:
    """A warning when others than the owner may read the key file (README: keys in a file
    only root can read)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"{_WHERE}: {path} can be read or written by group or others (mode "
                f"{stat.S_IMODE(mode):o}); make it readable by bosh-cm's user only: chmod 600")
    return None


class KeyRates:
    """Requests per key id in any :data:`WINDOW` seconds; ``per_minute`` 0 = unlimited."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = {}

    def admit(self, key_id: str, now: float) -> float | None:
        """Record one request and return None, or return the seconds until one is allowed
        again (the request is not recorded then)."""
        if not self.per_minute:
            return None
        seen = self._seen.setdefault(key_id, deque())
        while seen and seen[0] <= now - WINDOW:
            seen.popleft()
        if len(seen) >= self.per_minute:
            return max(seen[0] + WINDOW - now, 0.0)
        seen.append(now)
        return None

    def retain(self, key_ids: Iterable[str]) -> None:
        """Forget the windows of keys no longer valid (after a reload)."""
        keep = set(key_ids)
        for key_id in [k for k in self._seen if k not in keep]:
            del self._seen[key_id]
