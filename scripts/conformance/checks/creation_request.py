"""Checklist C. Session creation request (§7.1; 0206 §3): items #19-#30."""

from __future__ import annotations

import re
import secrets
import time

from conformance.client import Skip, ensure
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, fail_reasons


@check(19, "MUST", "no sid = new session; unknown sid -> item-not-found")
async def c19(sc: Scope) -> str | None:
    s, r = await created(sc, wait_features=False)
    ensure(r.status == 200 and r.get("sid"), f"no sid: {r.describe()}")
    u = sc.sess()
    u.sid = "x" + secrets.token_urlsafe(20)
    t = await u.req(rid=s.rid + 1)
    ensure(t.status == 200 and t.is_term("item-not-found", legacy_ok=False),
           f"unknown sid: {t.describe()} (want HTTP 200 TERM(item-not-found))")
    return None


@check(20, "MAY", "'to' goes on the upstream stream header")
async def c20(sc: Scope) -> str | None:
    raise Skip("needs a fake upstream to see the stream header (tests/core, tests/bridge)")


@check(21, "DEF", "missing or empty 'to' -> improper-addressing")
async def c21(sc: Scope) -> str | None:
    reasons = []
    for to in (None, ""):
        s = sc.sess()
        r = await s.create(to=to, wait_features=False)
        if not r.is_term("improper-addressing"):
            reasons.append(f"to={to!r}: {r.describe()}")
    fail_reasons(reasons)
    return None


@check(22, "DEF", "unknown 'to' domain -> host-unknown")
async def c22(sc: Scope) -> str | None:
    s = sc.sess()
    r = await s.create(to="unknown.invalid", wait_features=False)
    ensure(r.is_term("host-unknown"), f"{r.describe()} (want TERM(host-unknown))")
    return None


def _ver(v: str | None) -> tuple[int, int] | None:
    m = re.fullmatch(r"(\d+)\.(\d+)", v or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


@check(23, "MUST", "'ver' compared as major.minor integers; answer min(client, CM)")
async def c23(sc: Scope) -> str | None:
    async def ask(v: str) -> tuple[int, int] | None:
        s = sc.sess()
        r = await s.create(ver=v, wait_features=False)
        ensure(not r.terminated, f"ver={v}: {r.describe()}")
        got = _ver(r.get("ver"))
        ensure(got is not None, f"ver={v}: answer has no valid 'ver' ({r.get('ver')!r})")
        return got
    own = await ask("1.99")
    assert own is not None
    reasons = []
    for v in ("1.6", "1.10", "2.0"):
        want = min(_ver(v) or (0, 0), own)
        got = await ask(v)
        if got != want:
            reasons.append(f"ver={v} answered {got[0]}.{got[1]} (want {want[0]}.{want[1]})" if got else v)
    fail_reasons(reasons)
    return f"CM version {own[0]}.{own[1]}"


@check(24, "MUST", "response 'wait' <= requested 'wait'")
async def c24(sc: Scope) -> str | None:
    reasons = []
    for w in (1, 3, 60):
        s = sc.sess()
        r = await s.create(wait=w, wait_features=False)
        got = r.get("wait")
        if r.terminated or got is None or not got.isdigit() or int(got) > w:
            reasons.append(f"wait={w}: got {got!r} ({r.describe()})")
    fail_reasons(reasons)
    return None


@check(25, "MUST", "response 'hold' <= requested 'hold'")
async def c25(sc: Scope) -> str | None:
    reasons = []
    for h in (0, 1, 3):
        s = sc.sess()
        r = await s.create(hold=h, wait_features=False)
        got = r.get("hold")
        if r.terminated:
            reasons.append(f"hold={h}: {r.describe()}")
        elif got is not None and (not got.isdigit() or int(got) > h):
            reasons.append(f"hold={h}: got hold={got!r}")
    fail_reasons(reasons)
    return None


@check(26, "DEF", "wait=0/hold=0 polling session: requests answered at once")
async def c26(sc: Scope) -> str | None:
    s, r = await created(sc, wait=0, hold=0, wait_features=False)
    started = time.monotonic()
    t = await s.req(timeout=sc.ctx.slack + 10)
    took = time.monotonic() - started
    ensure(not t.terminated, f"poll: {t.describe()}")
    ensure(took <= sc.ctx.slack, f"an empty poll was held {took:.1f}s")
    return None


@check(27, "MUST", "'route' is ignored or allow-listed, never an open relay")
async def c27(sc: Scope) -> str | None:
    s = sc.sess()
    r = await s.create(route="xmpp:elsewhere.invalid:9999")
    if r.terminated:
        ensure(r.is_term("host-unknown") or r.is_term("improper-addressing"),
               f"{r.describe()} (want a working session or host-unknown)")
        return f"refused with {r.condition or r.status}"
    ensure(s.features is not None, "no features from the configured server")
    return "ignored; the configured server answered"


@check(28, "MAY", "'from' copied to the upstream header")
async def c28(sc: Scope) -> str | None:
    raise Skip("needs a fake upstream to see the stream header (tests/core, tests/bridge)")


@check(29, "DEF", "'xml:lang' carried to the upstream header (and on restart)")
async def c29(sc: Scope) -> str | None:
    raise Skip("needs a fake upstream to see the stream header (tests/core, tests/bridge)")


@check(30, "SHOULD", "xmpp:version forwarded: the server speaks XMPP 1.0 (features)")
async def c30(sc: Scope) -> str | None:
    s, r = await created(sc)
    ensure(s.features is not None, "no <stream:features/>: the server did not see version='1.0'")
    return None
