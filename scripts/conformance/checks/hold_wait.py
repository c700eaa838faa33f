"""Checklist E. Request handling, hold and wait (§4, §8): items #45-#54."""

from __future__ import annotations

import asyncio
import secrets
import time

from conformance.client import BoshResp, CLIENT, Fail, ensure, is_message, message, ping
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, desc, profile, result_or_none, spaced, spacing_wait


@check(45, "SHOULD", "payloads forwarded at once, not when the request is answered", login=True)
async def c45(sc: Scope) -> str | None:
    s = await sc.login()
    tag = "f" + secrets.token_hex(4)
    started = time.monotonic()
    task = s.start(message(s.jid or "", tag))
    deadline = started + sc.ctx.slack + 1.0
    while time.monotonic() < deadline:
        if any(is_message(tag)(e) for e in s.inbox):
            return f"echo after {time.monotonic() - started:.2f}s"
        await asyncio.wait([task], timeout=0.05)
        if task.done():
            task.result()
            if not any(is_message(tag)(e) for e in s.inbox):
                task = s.start()
    raise Fail(f"a message to ourselves did not come back within {sc.ctx.slack + 1.0:.1f}s")


@check(46, "MUST", "payloads reach the server in rid order whatever the arrival order", login=True)
async def c46(sc: Scope) -> str | None:
    s = await sc.login()
    a, b = "A" + secrets.token_hex(3), "B" + secrets.token_hex(3)
    rid1 = s.next_rid()
    rid2 = s.next_rid()
    t2 = asyncio.ensure_future(s.req(message(s.jid or "", b), rid=rid2))
    s.tasks.add(t2)
    await asyncio.sleep(0.3)
    t1 = asyncio.ensure_future(s.req(message(s.jid or "", a), rid=rid1))
    s.tasks.add(t1)
    await asyncio.wait([t1, t2], timeout=s.wait + 5, return_when=asyncio.ALL_COMPLETED)
    got: list[str] = []
    for t in (t1, t2):  # rid order
        r = result_or_none(t)
        ensure(r is not None and not r.terminated, f"request failed: {r.describe() if r else t}")
    s.inbox.clear()
    for t in (t1, t2):
        got += [e.findtext(f"{{{CLIENT}}}body") or "" for e in t.result().children if is_message()(e)]
    deadline = time.monotonic() + 10
    while not (a in got and b in got) and time.monotonic() < deadline:
        r = await s.req()
        got += [e.findtext(f"{{{CLIENT}}}body") or "" for e in r.children if is_message()(e)]
    ensure(a in got and b in got, f"echoes missing: {got}")
    ensure(got.index(a) < got.index(b), f"server saw B (rid {rid2}) before A (rid {rid1})")
    return None


@check(47, "MUST", "every request is eventually answered with HTTP 200 and a <body/>", phase=2)
async def c47(sc: Scope) -> str | None:
    bad = []
    for ex in sc.ctx.exchanges:
        if ex.abandoned or ex.kind not in ("create", "req"):
            continue
        if ex.error:
            bad.append(f"{ex.check}: {ex.error}")
        elif ex.resp is not None and ex.resp.status != 200 and not ex.legacy:
            bad.append(f"{ex.check}: HTTP {ex.resp.status}")
    ensure(not bad, "; ".join(sorted(set(bad))[:5]))
    return None


async def timeout_scenario(sc: Scope) -> tuple[float, BoshResp, int]:
    async def run(scope: Scope) -> tuple[float, BoshResp, int]:
        s, _ = await created(scope, wait=3)
        started = time.monotonic()
        r = await s.req(timeout=s.wait + 10)
        return time.monotonic() - started, r, s.wait
    return await sc.ctx.once("timeout", run)


@check(48, "SHOULD", "an empty request is held until there is data (about 'wait')")
async def c48(sc: Scope) -> str | None:
    took, r, wait = await timeout_scenario(sc)
    ensure(took >= wait - 1, f"answered after {took:.1f}s with wait={wait}")
    return f"held {took:.1f}s (wait={wait})"


@check(49, "SHOULD", "a request is never held longer than 'wait'")
async def c49(sc: Scope) -> str | None:
    took, r, wait = await timeout_scenario(sc)
    ensure(took <= wait + 1, f"held {took:.1f}s with wait={wait}")
    return None


@check(50, "SHOULD", "'wait' timeout answer is an empty <body/>")
async def c50(sc: Scope) -> str | None:
    took, r, wait = await timeout_scenario(sc)
    ensure(r.is_empty(), f"timeout answer: {r.describe()}")
    return None


@check(51, "SHOULD", "never more than 'hold' held: the oldest is answered when one more arrives")
async def c51(sc: Scope) -> str | None:
    p = await profile(sc)
    s, _ = await created(sc, wait=spacing_wait(p, sc.ctx.slack), hold=1, wait_features=False)
    t0 = time.monotonic()
    t1 = s.start()
    ensure(await s.is_held(t1), f"REQ(N+1) not held: {desc(t1)}")
    await spaced(s, t0)
    ensure(not t1.done(), "REQ(N+1) answered before the second request")
    sent = time.monotonic()
    t2 = s.start()
    r1 = await s.answered_within(t1)
    ensure(r1 is not None, f"REQ(N+1) still held {sc.ctx.slack:.1f}s after REQ(N+2) arrived (hold=1)")
    ensure(r1.status == 200 and not r1.terminated, f"REQ(N+1): {r1.describe()}")
    ensure(await s.is_held(t2, max(0.2, sent + sc.ctx.slack - time.monotonic())),
           f"REQ(N+2) not held: {desc(t2)}")
    return None


@check(52, "MUST", "data goes to the lowest held rid; higher rids never answered first", login=True)
async def c52(sc: Scope) -> str | None:
    peer = await sc.peer()
    s = await sc.login(hold=2)
    if s.hold >= 2:
        t1 = s.start()
        await asyncio.sleep(0.2)
        t2 = s.start()
        ensure(await s.is_held(t1) and not t2.done(), "the two empty requests were not both held (hold=2)")
        tag = "h" + secrets.token_hex(4)
        peer.start(message(s.jid or "", tag))
        r1 = await s.answered_within(t1, sc.ctx.slack + 1)
        ensure(r1 is not None, "the lowest held rid was not answered with the message")
        ensure(any(is_message(tag)(c) for c in r1.children), f"REQ(N+1) answer lacks the message: {r1.describe()}")
        ensure(not t2.done() or not any(is_message(tag)(c) for c in t2.result().children),
               "the message went to the higher rid")
        ensure(await s.is_held(t2, 0.3), "REQ(N+2) was answered too (it should stay held)")
        return "hold=2 variant"
    # hold=1: a second request releases the first; the first must be answered first.
    t1 = s.start()
    ensure(await s.is_held(t1), "REQ(N+1) not held")
    t2 = s.start(ping(sc.ctx.domain, "p" + secrets.token_hex(3)))
    await asyncio.wait([t1, t2], timeout=s.wait + 5, return_when=asyncio.ALL_COMPLETED)
    r1, r2 = result_or_none(t1), result_or_none(t2)
    ensure(r1 is not None and r2 is not None, "requests not answered")
    ensure(r2.http.done_at >= r1.http.done_at - 0.05, "REQ(N+2) answered before REQ(N+1)")
    return f"hold=1 variant (CM granted hold={s.hold})"


@check(53, "SHOULD", "server data is returned at once", login=True)
async def c53(sc: Scope) -> str | None:
    peer = await sc.peer()
    s = await sc.login()
    t1 = s.start()
    ensure(await s.is_held(t1, 0.3), "REQ(N+1) not held")
    tag = "q" + secrets.token_hex(4)
    sent = time.monotonic()
    peer.start(message(s.jid or "", tag))
    r = await s.answered_within(t1, sc.ctx.slack + 1)
    ensure(r is not None, f"the held request was not answered within {sc.ctx.slack + 1:.1f}s of the message")
    took = r.http.done_at - sent
    ensure(any(is_message(tag)(c) for c in r.children), f"answer lacks the message: {r.describe()}")
    ensure(took <= sc.ctx.slack, f"took {took:.2f}s")
    return f"{took * 1000:.0f} ms from the peer's POST"


@check(54, "DEF", "data arriving with nothing held is queued and delivered in order", login=True)
async def c54(sc: Scope) -> str | None:
    peer = await sc.peer()
    s = await sc.login()
    tags = [f"m{i}-" + secrets.token_hex(3) for i in (1, 2, 3)]
    peer.start("".join(message(s.jid or "", t) for t in tags))
    await asyncio.sleep(0.8)
    started = time.monotonic()
    r = await s.req()
    took = time.monotonic() - started
    got = [c.findtext(f"{{{CLIENT}}}body") for c in r.children if is_message()(c)]
    ensure(took <= sc.ctx.slack, f"the next request was held {took:.1f}s despite queued data")
    ensure(got == tags, f"got {got}, want {tags} in one answer")
    return None
