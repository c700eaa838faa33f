"""Checklist G. Acknowledgements (§9): items #64-#68."""

from __future__ import annotations

import time
from typing import Any

from conformance.client import BoshResp, Sess, Skip, ensure
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, profile, spaced, spacing_wait


async def ack_session(sc: Scope, **kw: Any) -> tuple[Sess, BoshResp]:
    s, r = await created(sc, ack="1", wait_features=False, **kw)
    if r.get("ack") is None:
        raise Skip("the CM does not use request acks (no 'ack' on the creation response)")
    return s, r


async def acks_scenario(sc: Scope) -> tuple[BoshResp, int]:
    async def run(scope: Scope) -> tuple[BoshResp, int]:
        p = await profile(scope)
        s, _ = await ack_session(scope, wait=spacing_wait(p, scope.ctx.slack))
        t0 = time.monotonic()
        t1 = s.start()
        ensure(await s.is_held(t1), "REQ(N+1) not held")
        await spaced(s, t0)
        s.start()
        r1 = await s.answered_within(t1)
        ensure(r1 is not None, "REQ(N+1) not answered when N+2 arrived")
        return r1, s.rid
    return await sc.ctx.once("acks", run)


@check(64, "MAY", "'ack' tells which later requests arrived")
async def c64(sc: Scope) -> str | None:
    r1, n2 = await acks_scenario(sc)
    ensure(r1.get("ack") == str(n2), f"answer to N+1 has ack={r1.get('ack')!r}, want {n2}")
    return None


@check(65, "MUST", "once acks are on, every response that needs one carries 'ack'")
async def c65(sc: Scope) -> str | None:
    r1, n2 = await acks_scenario(sc)
    ensure(r1.get("ack") is not None, f"no ack on a response answered after a later rid arrived: {r1.describe()}")
    return None


@check(66, "SHOULD", "no 'ack' when it would equal the rid answered")
async def c66(sc: Scope) -> str | None:
    s, _ = await ack_session(sc, wait=2)
    r = await s.req()
    ensure(r.get("ack") is None, f"timeout answer to rid {r.rid} carries ack={r.get('ack')!r}")
    return None


@check(67, "client-rule", "the client's 'ack' decides which cached responses are dropped")
async def c67(sc: Scope) -> str | None:
    s, r = await ack_session(sc, wait=1)
    n = s.rid
    first = n + 1
    for _ in range(3):
        x = await s.req(ack=n)
        ensure(not x.terminated, x.describe())
    again = await s.req(rid=first, raw=s.build("", sid=s.sid, rid=first, ack=n), collect=False)
    ensure(not again.terminated, f"rid {first} unacknowledged but not replayed: {again.describe()}")
    x = await s.req()  # no ack: everything received
    ensure(not x.terminated, x.describe())
    gone = await s.req(rid=first, raw=s.build("", sid=s.sid, rid=first), collect=False)
    ensure(gone.is_term("item-not-found"), f"acknowledged rid {first} resent: {gone.describe()} (want item-not-found)")
    return None


@check(68, "SHOULD", "a lagging client 'ack' gets report + time")
async def c68(sc: Scope) -> str | None:
    s, _ = await ack_session(sc, wait=1)
    n = s.rid
    r1 = await s.req(ack=n)          # answered at t1 (wait=1), but "lost" by the client
    t1 = r1.http.done_at
    await s.req(ack=n)               # the client still only has the creation response
    sent = time.monotonic()
    task = s.start(ack=n)
    r3 = await s.answered_within(task)
    if r3 is None or (r3.get("report") is None and r3.is_empty()):
        raise Skip("the CM does not answer early on a lagging ack (MAY)")
    ensure(r3.get("report") == str(n + 1), f"report={r3.get('report')!r}, want {n + 1}: {r3.describe()}")
    tm = r3.get("time")
    ensure(tm is not None and tm.isdigit(), f"time={tm!r}")
    want = (sent - t1) * 1000
    ensure(abs(int(tm) - want) <= 600, f"time={tm} ms, about {want:.0f} ms expected")
    return None
