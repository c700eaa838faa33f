"""Checklist J. Terminating the session (§13): items #86-#88."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from conformance.client import Fail, ensure, is_message, message
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, fail_reasons, result_or_none


@check(86, "MUST", "payloads of a terminate request are forwarded before the close", login=True)
async def c86(sc: Scope) -> str | None:
    peer = await sc.peer()
    s = await sc.login()
    tag = "bye" + secrets.token_hex(4)
    r = await s.req(message(peer.jid or "", tag), type="terminate")
    ensure(r.status == 200 and not r.condition, f"terminate: {r.describe()}")
    await peer.poll_until(is_message(tag), 10)
    # the upstream stream is closed: the server no longer knows our full JID
    deadline = time.monotonic() + 8
    while True:
        res = await peer.iq(f"<ping xmlns='urn:xmpp:ping'/>", "get", to=s.jid)
        if res.get("type") == "error":
            return None
        if time.monotonic() > deadline:
            raise Fail("the server still routes to the terminated session's JID")
        await asyncio.sleep(0.5)


async def terminate_scenario(sc: Scope) -> dict[str, Any]:
    async def run(scope: Scope) -> dict[str, Any]:
        s, _ = await created(scope, wait=4, wait_features=False)
        t1 = s.start()
        ensure(await s.is_held(t1), "REQ(N+1) not held")
        t2 = s.start(type="terminate")
        await asyncio.wait([t1, t2], timeout=scope.ctx.slack, return_when=asyncio.ALL_COMPLETED)
        out: dict[str, Any] = {"r1": result_or_none(t1), "r2": result_or_none(t2)}
        out["dead1"] = await s.probe_dead("#88 after terminate with a held request")
        s2, _ = await created(scope, wait=4, wait_features=False)
        out["alone"] = await s2.req(type="terminate", timeout=scope.ctx.slack + 5)
        out["dead2"] = await s2.probe_dead("#88 after terminate")
        return out
    return await sc.ctx.once("terminate", run)


@check(87, "SHOULD", "terminate: oldest request gets type='terminate', others empty")
async def c87(sc: Scope) -> str | None:
    o = await terminate_scenario(sc)
    r1, r2, alone = o["r1"], o["r2"], o["alone"]
    ensure(r1 is not None and r2 is not None, "the held request and the terminate were not both answered at once")
    for r in (r1, r2, alone):
        ensure(r.status == 200 and not r.condition and not r.children, f"unexpected {r.describe()}")
    ensure(r1.type == "terminate" or r2.type == "terminate",
           f"no type='terminate' answer: N+1 {r1.describe()}; N+2 {r2.describe()}")
    ensure(alone.type in ("terminate", None), f"terminate alone: {alone.describe()}")
    note = "held request got type='terminate'" if r1.type == "terminate" else "the terminate request got type='terminate'"
    return note


@check(88, "DEF", "after terminate the session is gone")
async def c88(sc: Scope) -> str | None:
    o = await terminate_scenario(sc)
    reasons = [why for ok, why in (o["dead1"], o["dead2"]) if not ok]
    fail_reasons(reasons)
    return None
