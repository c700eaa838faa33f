"""Checklist I. Overactivity and polling (§11, §12): items #78-#85."""

from __future__ import annotations

import asyncio

from conformance.client import Skip, bogus_auth, ensure
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, need_idle, profile, result_or_none


@check(78, "SHOULD", "more than 'requests' unanswered new requests -> policy-violation (or overflow)")
async def c78(sc: Scope) -> str | None:
    s, _ = await created(sc, wait=4, wait_features=False)
    tasks = [s.start() for _ in range(s.requests + 1)]
    await asyncio.wait(tasks, timeout=sc.ctx.slack)
    done = [result_or_none(t) for t in tasks if t.done()]
    held = sum(1 for t in tasks if not t.done())
    if any(r is not None and r.is_term("policy-violation") for r in done):
        return "policy-violation"
    ensure(held <= s.hold, f"{held} requests held with hold={s.hold} and none policed")
    return f"overflow answered ({len(done)} answered, {held} held)"


@check(79, "DEF", "a terminate beyond the request limit is allowed")
async def c79(sc: Scope) -> str | None:
    s, _ = await created(sc, wait=4, wait_features=False)
    tasks = [s.start(), s.start(bogus_auth())]
    tasks.append(s.start(type="terminate"))
    await asyncio.wait(tasks, timeout=sc.ctx.slack + 2, return_when=asyncio.ALL_COMPLETED)
    rs = [result_or_none(t) for t in tasks]
    ensure(all(r is not None for r in rs), "not every request was answered after the terminate")
    ensure(not any(r.condition for r in rs if r is not None),
           "error after terminate: " + "; ".join(r.describe() for r in rs if r is not None and r.condition))
    return None


@check(80, "MUST", "no 'requests' advertised -> any number of requests")
async def c80(sc: Scope) -> str | None:
    p = await profile(sc)
    raise Skip(f"N/A: 'requests' is advertised ({p['requests']})")


@check(81, "SHOULD", "too-frequent empty requests -> policy-violation")
async def c81(sc: Scope) -> str | None:
    p = await profile(sc)
    if not p["polling"]:
        raise Skip("no 'polling' advertised")
    # control first: a payload makes it legitimate
    c, _ = await created(sc, wait=4, wait_features=False)
    ct1 = c.start()
    ensure(await c.is_held(ct1, 0.2), "REQ(N+1) not held")
    cr = await c.req(bogus_auth())
    ensure(not cr.terminated, f"control (N+2 with payload) was refused: {cr.describe()}")
    s, _ = await created(sc, wait=4, wait_features=False)
    t1 = s.start()
    ensure(await s.is_held(t1, 0.2), "REQ(N+1) not held")
    t2 = s.start()
    await asyncio.wait([t1, t2], timeout=sc.ctx.slack, return_when=asyncio.ALL_COMPLETED)
    r2 = result_or_none(t2)
    ensure(r2 is not None and r2.is_term("policy-violation"),
           f"second empty request 0.2s after the first: {r2.describe() if r2 else 'held'} (want policy-violation)")
    r1 = result_or_none(t1)
    ensure(r1 is not None and (r1.is_term("other-request") or r1.is_empty() or r1.is_term("policy-violation")),
           f"the first request got {r1.describe() if r1 else 'nothing'}")
    return None


@check(82, "MUST", "no 'polling' advertised -> any rate")
async def c82(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["polling"] is not None:
        raise Skip(f"N/A: 'polling' is advertised ({p['polling']})")
    raise Skip("no 'polling' advertised; rate test not implemented")


@check(83, "SHOULD", "polling is not forced (requests >= 2)")
async def c83(sc: Scope) -> str | None:
    p = await profile(sc)
    ensure(p["requests"] >= 2, f"requests={p['requests']}")
    return None


@check(84, "SHOULD", "polling sessions get inactivity longer by more than 'polling'")
async def c84(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["inactivity"] is None or p["polling"] is None:
        raise Skip("inactivity or polling not advertised")
    s, r = await created(sc, wait=0, hold=0, wait_features=False)
    ensure(s.inactivity is not None, "no inactivity on the polling session")
    ensure(s.inactivity - p["inactivity"] > p["polling"],
           f"polling session inactivity {s.inactivity} vs default {p['inactivity']} (polling {p['polling']})")
    return None


@check(85, "SHOULD", "polling too fast -> policy-violation (and the controls pass)")
async def c85(sc: Scope) -> str | None:
    p = await profile(sc)
    if not p["polling"]:
        raise Skip("no 'polling' advertised")
    need_idle(sc, p["polling"] + 1, "the slow-poll control")
    # control: slow polls and a resend are fine
    c, _ = await created(sc, wait=0, hold=0, wait_features=False)
    a = await c.req(timeout=5)
    ensure(not a.terminated, f"first poll after creation: {a.describe()}")
    await asyncio.sleep(p["polling"] + 0.5)
    b = await c.req(timeout=5)
    ensure(not b.terminated, f"poll after polling+0.5s: {b.describe()}")
    rep = await c.req(rid=b.rid, raw=c.build("", sid=c.sid, rid=b.rid), timeout=5)
    ensure(not rep.is_term("policy-violation"), "a resend counted as a new poll")
    s, _ = await created(sc, wait=0, hold=0, wait_features=False)
    x = await s.req(timeout=5)
    ensure(not x.terminated, f"first poll: {x.describe()}")
    await asyncio.sleep(0.3)
    y = await s.req(timeout=5)
    ensure(y.is_term("policy-violation"), f"poll 0.3s after an empty poll: {y.describe()} (want policy-violation)")
    return None
