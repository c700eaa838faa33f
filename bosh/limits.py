"""Per-client limits and client-address resolution (sans-IO: no clock, no I/O, no asyncio).

* :class:`ClientLimits` counts open sessions per client address and new sessions per address
  in a sliding one-minute window; ``now`` is always passed in (design.md §3, style rule 1).
* :func:`client_address` picks the client address for limits and logs: the TCP peer, or the
  right-most untrusted ``X-Forwarded-For`` entry when the peer is a configured proxy
  (design.md §9: trust X-Forwarded-For only from configured proxies).

A limit hit raises ``BoshError(POLICY_VIOLATION)`` (XEP-0124 §17.2: "the client has broken
a rule"), rendered once at the boundary.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

from bosh.errors import BoshError, Condition

__all__ = ["ClientLimits", "PerIpPolicy", "PerIpLimitHit", "Networks", "parse_networks",
           "client_address", "LOOPBACK_PROXIES"]

#: The default ``[http] trusted_proxies``: a peer on loopback is a proxy on this host (nobody
#: remote can appear as one), as Prosody trusts 127.0.0.1 and ::1 by default.
LOOPBACK_PROXIES = ("127.0.0.0/8", "::1")

WINDOW = 60.0  # seconds: "new sessions per IP per minute"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...]


@dataclass(frozen=True, slots=True)
class PerIpPolicy:
    """The per-address bounds; 0 means unlimited."""

    max_sessions_per_ip: int = 0
    new_sessions_per_ip_per_minute: int = 0


class PerIpLimitHit(BoshError):
    """A per-address limit refused a session; ``key`` names the ``[bosh]`` setting to raise."""

    def __init__(self, ip: str, key: str, limit: int, detail: str) -> None:
        super().__init__(Condition.POLICY_VIOLATION, detail)
        self.ip = ip
        self.key = key
        self.limit = limit


class ClientLimits:
    """Open sessions and recent creations per client address.

    ``admit(ip, now)`` checks both bounds and records the creation; ``release(ip)`` is called
    once when a session admitted for ``ip`` ends. Memory stays bounded by the addresses with
    an open session or a creation in the last minute (``prune``).
    """

    def __init__(self, policy: PerIpPolicy = PerIpPolicy()) -> None:
        self.policy = policy
        self._open: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}
        self._warned: dict[str, float] = {}

    def should_warn(self, ip: str, now: float) -> bool:
        """True at most once per address per :data:`WINDOW`: refusals are logged at WARNING
        that often, so an operator sees why without one line per refused login."""
        last = self._warned.get(ip)
        if last is not None and now - last < WINDOW:
            return False
        self._warned[ip] = now
        return True

    def open_for(self, ip: str) -> int:
        return self._open.get(ip, 0)

    def admit(self, ip: str, now: float) -> None:
        """Record a new session for ``ip`` or raise ``BoshError(POLICY_VIOLATION)``."""
        p = self.policy
        if p.max_sessions_per_ip and self._open.get(ip, 0) >= p.max_sessions_per_ip:
            raise PerIpLimitHit(ip, "max_sessions_per_ip", p.max_sessions_per_ip,
                                f"too many sessions from {ip}")
        recent = self._recent.get(ip)
        if recent is not None:
            while recent and recent[0] <= now - WINDOW:
                recent.popleft()
        if p.new_sessions_per_ip_per_minute:
            if recent is not None and len(recent) >= p.new_sessions_per_ip_per_minute:
                raise PerIpLimitHit(ip, "new_sessions_per_ip_per_minute",
                                    p.new_sessions_per_ip_per_minute,
                                    f"too many new sessions from {ip}")
            if recent is None:
                recent = self._recent[ip] = deque()
            recent.append(now)
        self._open[ip] = self._open.get(ip, 0) + 1

    def release(self, ip: str) -> None:
        n = self._open.get(ip, 0) - 1
        if n > 0:
            self._open[ip] = n
        else:
            self._open.pop(ip, None)

    def prune(self, now: float) -> None:
        """Forget creation times older than the window (call now and then)."""
        for ip in list(self._recent):
            recent = self._recent[ip]
            while recent and recent[0] <= now - WINDOW:
                recent.popleft()
            if not recent:
                del self._recent[ip]
        for ip in [ip for ip, at in self._warned.items() if now - at >= WINDOW]:
            del self._warned[ip]

    @property
    def tracked(self) -> int:
        """Addresses with state (for tests: memory stays bounded)."""
        return len(set(self._open) | set(self._recent))


def parse_networks(values: Iterable[str]) -> Networks:
    """CIDRs or plain addresses -> networks; raises ValueError naming the bad one."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address or CIDR network") from None
    return tuple(out)


# Every request asks twice (client address, https) about the same few peers; parsing costs
# ~3 us each time (1-2 % of bosh-cm's CPU per burst message under py-spy, docs/performance.md).
# Bounded, so forged X-Forwarded-For values can only churn it.
@functools.lru_cache(maxsize=4096)
def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    v = value.strip()
    if v.startswith("[") and "]" in v:  # "[2001:db8::1]:443"
        v = v[1:v.index("]")]
    elif v.count(":") == 1 and "." in v:  # "192.0.2.1:443"
        v = v.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(v)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@functools.lru_cache(maxsize=4096)
def _trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Networks) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Networks) -> str:
    """The address per-IP limits and logs use.

    ``forwarded_for`` holds every ``X-Forwarded-For`` header value in order. They are only
    looked at when the TCP peer is a trusted proxy; then the list is walked from the right
    (the entry our proxy appended) past further trusted proxies, and the first untrusted
    entry is the client. Anything unparsable stops the walk at the last trusted hop, so a
    client cannot pick its own address by sending a forged header.
    """
    peer_addr = _ip(peer) if peer else None
    if peer_addr is None:
        return peer or "-"
    if not trusted or not _trusted(peer_addr, trusted):
        return str(peer_addr)
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    current = peer_addr
    for hop in reversed(hops):
        addr = _ip(hop)
        if addr is None:
            break
        current = addr
        if not _trusted(addr, trusted):
            break
    return str(current)


def forwarded_secure(transport_secure: bool, peer: str | None, forwarded_proto: Sequence[str],
                     trusted: Networks) -> bool:
    """Did the client reach us over https? ``X-Forwarded-Proto`` counts only when the TCP
    peer is a trusted proxy (its rightmost value: the one our proxy set)."""
    peer_addr = _ip(peer) if peer else None
    if peer_addr is None or not trusted or not _trusted(peer_addr, trusted) or not forwarded_proto:
        return transport_secure
    last = forwarded_proto[-1].split(",")[-1].strip().lower()
    return last == "https"
