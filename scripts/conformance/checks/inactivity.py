"""Checklist H. Inactivity and pause (§10): items #69-#77."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from conformance.client import BoshResp, Sess, Skip, ensure, is_message, message
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, desc, localnames, need_idle, profile, result_or_none


async def inactivity_scenario(sc: Scope) -> BoshResp:
    async def run(scope: Scope) -> BoshResp:
        p = await profile(scope)
        if p["inactivity"] is None:
            raise Skip("no 'inactivity' advertised")
        need_idle(scope, p["inactivity"] + 2, "inactivity timeout")
        s, _ = await created(scope, wait=2, wait_features=False)
        await asyncio.sleep(p["inactivity"] + 2)
        r = await s.req(timeout=s.wait + 5)
        s.dead_probed = True
        return r
    return await sc.ctx.once("inactivity", run)


@check(69, "SHOULD", "an idle session ends after 'inactivity'")
async def c69(sc: Scope) -> str | None:
    r = await inactivity_scenario(sc)
    ensure(r.terminated, f"request after inactivity+2s: {r.describe()}")
    return None


@check(70, "SHOULD", "after inactivity the sid is as unknown as a random one")
async def c70(sc: Scope) -> str | None:
    r = await inactivity_scenario(sc)
    ensure(r.is_term("item-not-found") and r.get("sid") is None, f"{r.describe()} (want TERM(item-not-found))")
    return None


@check(71, "DEF", "a held request is not inactivity")
async def c71(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["inactivity"] is None:
        raise Skip("no 'inactivity' advertised")
    want = p["inactivity"] + 3
    need_idle(sc, want, "holding longer than 'inactivity'")
    s, _ = await created(sc, wait=want, wait_features=False)
    if s.wait <= p["inactivity"]:
        raise Skip(f"the CM's wait cap ({s.wait}) is not above inactivity ({p['inactivity']})")
    r = await s.req(timeout=s.wait + 5)
    ensure(not r.terminated, f"held {s.wait}s > inactivity: {r.describe()}")
    t = s.start()
    ok = await s.is_held(t)
    ensure(ok or not t.result().terminated, f"next request: {desc(t)}")
    return None


@check(72, "SHOULD", "no 'inactivity' advertised -> no inactivity timeout")
async def c72(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["inactivity"] is not None:
        raise Skip(f"N/A: 'inactivity' is advertised ({p['inactivity']}s)")
    raise Skip("no 'inactivity' advertised; a 60 s idle test is not run")


@check(73, "SHOULD", "non-polling sessions get a short inactivity (<= 60 s)")
async def c73(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["inactivity"] is None:
        raise Skip("no 'inactivity' advertised")
    ensure(p["inactivity"] <= 60, f"inactivity={p['inactivity']}")
    return f"inactivity={p['inactivity']}"


async def pause_session(sc: Scope, **kw: Any) -> tuple[Sess, int]:
    p = await profile(sc)
    if not p["maxpause"]:
        raise Skip("no 'maxpause' advertised (pausing not offered)")
    s, r = await created(sc, wait_features=False, **kw)
    return s, int(r.get("maxpause") or p["maxpause"])


async def pause_scenario(sc: Scope) -> dict[str, Any]:
    async def run(scope: Scope) -> dict[str, Any]:
        p = await profile(scope)
        s, maxpause = await pause_session(scope, wait=4)
        inact = s.inactivity or p["inactivity"] or 0
        t1 = s.start()
        ensure(await s.is_held(t1), "REQ(N+1) not held")
        pause = min(maxpause, inact + 8)
        t2 = s.start(pause=str(pause))
        done, _ = await asyncio.wait([t1, t2], timeout=scope.ctx.slack, return_when=asyncio.ALL_COMPLETED)
        out: dict[str, Any] = {"immediate": len(done) == 2, "t1": result_or_none(t1), "t2": result_or_none(t2)}
        if len(done) != 2 or pause < inact + 4 or not inact or inact + 3 > scope.ctx.max_idle:
            out["alive"] = None
            return out
        await asyncio.sleep(inact + 3)
        r3 = await s.req(timeout=s.wait + 5)
        out["alive"] = r3
        if r3.terminated:
            return out
        need = inact + 2
        await asyncio.sleep(need)
        r4 = await s.req(timeout=s.wait + 5)
        s.dead_probed = True
        out["after"] = r4
        return out
    return await sc.ctx.once("pause", run)


@check(74, "SHOULD", "pause: everything answered at once; inactivity stretched", deadline=60)
async def c74(sc: Scope) -> str | None:
    o = await pause_scenario(sc)
    ensure(o["immediate"], "the held request and the pause request were not both answered at once")
    for k in ("t1", "t2"):
        ensure(o[k] is not None and not o[k].terminated, f"{k}: {o[k].describe() if o[k] else 'failed'}")
    if o["alive"] is None:
        return "answers checked; idle part not run (inactivity/maxpause/--max-idle)"
    ensure(not o["alive"].terminated, f"after idling past inactivity during the pause: {o['alive'].describe()}")
    return None


@check(75, "MUST", "the pause response carries no payload", login=True)
async def c75(sc: Scope) -> str | None:
    p = await profile(sc)
    if not p["maxpause"]:
        raise Skip("no 'maxpause' advertised (pausing not offered)")
    peer = await sc.peer()
    s = await sc.login()
    tag = "z" + secrets.token_hex(4)
    peer.start(message(s.jid or "", tag))
    await asyncio.sleep(0.8)
    r = await s.req(pause=str(min(10, p["maxpause"])), collect=False)
    ensure(not r.terminated, r.describe())
    ensure(not r.children, f"the pause response carries {localnames(r.children)}")
    r2 = await s.req(timeout=s.wait + 5)
    ensure(any(is_message(tag)(c) for c in r2.children), f"the queued message did not come next: {r2.describe()}")
    return None


@check(76, "SHOULD", "the normal inactivity returns with the next request", deadline=60)
async def c76(sc: Scope) -> str | None:
    o = await pause_scenario(sc)
    if o["alive"] is None:
        raise Skip("idle part not run (inactivity/maxpause/--max-idle)")
    ensure(not o["alive"].terminated, "session died during the pause")
    ensure(o["after"].terminated, f"still alive {o['after'].describe()} after inactivity+2s idle")
    return None


@check(77, "DEF", "a pause shorter than inactivity shortens the timeout")
async def c77(sc: Scope) -> str | None:
    p = await profile(sc)
    s, maxpause = await pause_session(sc, wait=2)
    inact = s.inactivity or p["inactivity"] or 0
    if inact < 4:
        raise Skip(f"inactivity {inact}s too short to tell a 1 s pause apart")
    r = await s.req(pause="1")
    ensure(not r.terminated, r.describe())
    await asyncio.sleep(2.5)
    x = await s.req(timeout=s.wait + 5)
    s.dead_probed = True
    ensure(x.is_term("item-not-found"), f"2.5s after pause=1 (inactivity {inact}): {x.describe()}")
    return None
