"""Checklist L. Multiple streams (§16, optional): items #102-#113."""

from __future__ import annotations

import time

from conformance.client import Skip, bogus_auth, ensure
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, profile


@check(102, "MUST", "multiple streams only when 'stream' is on the creation response")
async def c102(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["stream"]:
        raise Skip(f"'stream' advertised ({p['stream']!r}); §16 checks not implemented")
    return "not advertised"


async def _no_streams(sc: Scope) -> None:
    p = await profile(sc)
    if p["stream"] is None:
        raise Skip("'stream' not advertised (multiple streams not offered)")
    raise Skip("'stream' advertised; §16 checks not implemented in this checker")


for _n, _lvl, _title in (
        (103, "MUST", "stream names opaque and unique"),
        (105, "MUST", "add-stream request opens a new named stream"),
        (106, "MUST", "a later 'from' comes with its 'stream'"),
        (107, "MUST", "bodies name their stream and never mix streams"),
        (108, "MUST", "a body without 'stream' goes to every stream"),
        (109, "SHOULD", "unknown stream name -> item-not-found"),
        (110, "SHOULD", "empty bodies leave out 'stream'"),
        (111, "MUST", "terminate with 'stream' closes that stream"),
        (112, "MUST", "a terminal error with 'stream' closes only that stream"),
        (113, "SHOULD", "xmpp:version on add-stream requests and responses")):
    check(_n, _lvl, _title)(_no_streams)


@check(104, "MUST", "without streams, a REQ with 'to' is an ordinary empty request")
async def c104(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["stream"]:
        raise Skip("'stream' advertised: #104 does not apply")
    s, _ = await created(sc, wait=2, wait_features=False)
    started = time.monotonic()
    r = await s.req(to="other.example", route="xmpp:other.example:5222", xml_lang="en")
    took = time.monotonic() - started
    ensure(not r.terminated, f"add-stream request: {r.describe()}")
    ensure(r.get("stream") is None, f"answer carries stream={r.get('stream')!r}")
    ensure(took >= s.wait - 1, f"not handled like an empty poll (answered after {took:.1f}s)")
    t = await s.req(bogus_auth())
    ensure(not t.terminated, f"session after it: {t.describe()}")
    return None
