"""Checklist F. Request IDs, ordering and retransmission (§14): items #55-#63."""

from __future__ import annotations

import asyncio
from typing import Any

from conformance.client import BoshResp, Fail, Skip, bogus_auth, ensure, is_sasl, short
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import c14n, created, desc, result_or_none


@check(55, "client-rule", "rids up to 2^53-1 handled exactly", deadline=60)
async def c55(sc: Scope) -> str | None:
    s, _ = await created(sc, rid=9007199254740000, wait=1, wait_features=False)
    for _ in range(10):
        r = await s.req()
        ensure(not r.terminated, f"rid {s.rid}: {r.describe()}")
    return f"up to rid {s.rid}"


@check(56, "SHOULD", "early rids inside the window are parked until the gap fills")
async def c56(sc: Scope) -> str | None:
    s, _ = await created(sc, wait_features=False)
    rid1, rid2 = s.next_rid(), s.next_rid()
    t2 = asyncio.ensure_future(s.req(bogus_auth(), rid=rid2, collect=False))
    s.tasks.add(t2)
    ensure(await s.is_held(t2, 0.6), f"REQ(N+2) answered before N+1 arrived: {desc(t2)}")
    t1 = asyncio.ensure_future(s.req(bogus_auth(), rid=rid1, collect=False))
    s.tasks.add(t1)
    await asyncio.wait([t1, t2], timeout=s.wait + 5, return_when=asyncio.ALL_COMPLETED)
    r1, r2 = result_or_none(t1), result_or_none(t2)
    ensure(r1 is not None and r2 is not None, "not both answered")
    ensure(not r1.terminated and not r2.terminated, f"N+1: {r1.describe()}; N+2: {r2.describe()}")
    fails = sum(1 for r in (r1, r2) for c in r.children if is_sasl("failure")(c))
    while fails < 2:
        r = await s.req(collect=False)
        ensure(not r.terminated, r.describe())
        got = sum(1 for c in r.children if is_sasl("failure")(c))
        if not got:
            break
        fails += got
    ensure(fails == 2, f"{fails} SASL failures for two <auth/> payloads")
    return None


async def above_window(sc: Scope) -> BoshResp:
    async def run(scope: Scope) -> BoshResp:
        s, _ = await created(scope, wait_features=False)
        r = await s.req(rid=s.rid + s.requests + 1)
        if r.terminated:
            await s.probe_dead("#57")  # recorded for #89
        return r
    return await sc.ctx.once("above-window", run)


@check(57, "MUST", "a rid above the window -> item-not-found, session ends")
async def c57(sc: Scope) -> str | None:
    r = await above_window(sc)
    ensure(r.is_term("item-not-found"), f"{r.describe()} (want TERM(item-not-found))")
    return None


async def too_old(sc: Scope) -> BoshResp:
    async def run(scope: Scope) -> BoshResp:
        s, _ = await created(scope, wait=1, wait_features=False)
        first = s.rid + 1
        for _ in range(s.requests + 2):
            r = await s.req()
            ensure(not r.terminated, f"rid {s.rid}: {r.describe()}")
        r = await s.req(rid=first, raw=s.build("", sid=s.sid, rid=first))
        if r.terminated:
            await s.probe_dead("#62")  # recorded for #89
        return r
    return await sc.ctx.once("too-old", run)


async def replay_scenario(sc: Scope) -> tuple[BoshResp, BoshResp, int]:
    async def run(scope: Scope) -> tuple[BoshResp, BoshResp, int]:
        s, _ = await created(scope, wait=2, wait_features=False)
        rid = s.next_rid()
        data = s.build(bogus_auth(), sid=s.sid, rid=rid)
        r = await s.req(rid=rid, raw=data, collect=False)
        ensure(not r.terminated, r.describe())
        again = await s.req(rid=rid, raw=data, collect=False)
        fails = sum(1 for c in r.children if is_sasl("failure")(c))
        if not again.terminated:
            for _ in range(2):  # anything the server says about a second <auth/>
                x = await s.req(collect=False)
                if x.terminated:
                    break
                fails += sum(1 for c in x.children if is_sasl("failure")(c))
        return r, again, fails
    return await sc.ctx.once("replay", run)


@check(58, "SHOULD", "recent responses are kept for replays (see #59, #62)")
async def c58(sc: Scope) -> str | None:
    r, again, fails = await replay_scenario(sc)
    ensure(not again.terminated and again.el is not None and r.el is not None and c14n(again.el) == c14n(r.el),
           f"a resent rid was not answered from a cache: {again.describe()}")
    return None


@check(59, "SHOULD", "a repeated answered rid gets the same response; payload not resent")
async def c59(sc: Scope) -> str | None:
    r, again, fails = await replay_scenario(sc)
    ensure(not again.terminated, f"resend: {again.describe()}")
    ensure(again.el is not None and r.el is not None and c14n(again.el) == c14n(r.el),
           f"replay differs: first {short(r.raw)} / again {short(again.raw)}")
    ensure(fails == 1, f"the <auth/> payload reached the server {fails} times")
    return None


async def repeat_held_scenario(sc: Scope) -> dict[str, Any]:
    async def run(scope: Scope) -> dict[str, Any]:
        s, _ = await created(scope, wait=4, wait_features=False)
        rid = s.next_rid()
        data = s.build("", sid=s.sid, rid=rid)
        a = asyncio.ensure_future(s.req(rid=rid, raw=data))
        s.tasks.add(a)
        ensure(await s.is_held(a), f"REQ(N+1) not held: {desc(a)}")
        b = asyncio.ensure_future(s.req(rid=rid, raw=data))
        s.tasks.add(b)
        ra = await s.answered_within(a)
        b_held = await s.is_held(b, 0.5)
        out: dict[str, Any] = {"a": ra, "b_held": b_held}
        # #100: resend again (copy c), then a payload request: processed exactly once.
        if ra is not None and ra.type == "error" and b_held:
            c = asyncio.ensure_future(s.req(rid=rid, raw=data, collect=False))
            s.tasks.add(c)
            rb = await s.answered_within(b)
            n2 = s.next_rid()
            t = await s.req(bogus_auth(), rid=n2, collect=False)
            await asyncio.wait([c], timeout=s.wait + 2)
            rc = result_or_none(c)
            fails = sum(1 for x in (rc, t) if x is not None for ch in x.children if is_sasl("failure")(ch))
            while fails < 1:
                x = await s.req(collect=False)
                if x.terminated:
                    break
                got = sum(1 for ch in x.children if is_sasl("failure")(ch))
                fails += got
                if not got:
                    break
            out.update(rb=rb, rc=rc, t=t, fails=fails)
        return out
    return await sc.ctx.once("repeat-held", run)


@check(60, "SHOULD", "repeat of a held rid: the old copy gets type='error', the new one is held")
async def c60(sc: Scope) -> str | None:
    o = await repeat_held_scenario(sc)
    ra = o["a"]
    ensure(ra is not None, "the older copy was not answered at once")
    ensure(ra.status == 200 and ra.type == "error" and not ra.children,
           f"older copy got {ra.describe()} (want <body type='error'/>)")
    ensure(o["b_held"], "the newer copy was not held")
    return None


@check(61, "SHOULD", "repeats of one rid may be capped (policy-violation)")
async def c61(sc: Scope) -> str | None:
    s, _ = await created(sc, wait=1, wait_features=False)
    r = await s.req()
    rid = r.rid or s.rid
    data = s.build("", sid=s.sid, rid=rid)
    for i in range(1, 26):
        x = await s.req(rid=rid, raw=data, collect=False)
        if x.is_term("policy-violation"):
            ok, why = await s.probe_dead("#61")
            ensure(ok, f"policy-violation after {i} resends, but {why}")
            return f"capped after {i} resends"
        if x.terminated:
            raise Fail(f"resend {i}: {x.describe()}")
    raise Skip("no cap within 25 resends (MAY)")


@check(62, "MUST", "a repeated rid no longer cached -> item-not-found")
async def c62(sc: Scope) -> str | None:
    r = await too_old(sc)
    ensure(r.is_term("item-not-found"), f"{r.describe()} (want TERM(item-not-found))")
    return None


@check(63, "DEF", "too-high and too-low rids give identical errors")
async def c63(sc: Scope) -> str | None:
    hi, lo = await asyncio.gather(above_window(sc), too_old(sc))
    ensure(hi.status == lo.status and hi.el is not None and lo.el is not None and c14n(hi.el) == c14n(lo.el),
           f"above window: {hi.describe()} / too old: {lo.describe()}")
    return None
