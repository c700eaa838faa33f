"""Checklist K. Error reporting (§17; 0206 §6): items #89-#101."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

from lxml import etree

from conformance.client import NS, ST, STREAMS, Skip, ensure, short
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import always_skip, created, desc, fail_reasons, result_or_none
from conformance.checks.rids import repeat_held_scenario


@check(89, "MAY", "after every terminal body the session is gone (DEAD)", phase=2)
async def c89(sc: Scope) -> str | None:
    # Let the closes of phase 1 finish their DEAD probes first (they ran in each check's scope).
    probes = list(sc.ctx.dead_probes)
    if not probes:
        raise Skip("no terminal bodies were probed")
    bad = [f"{who}: {why}" for who, ok, why in probes if not ok]
    ensure(not bad, f"{len(bad)}/{len(probes)} probes: " + "; ".join(bad[:4]))
    return f"{len(probes)} probes"


@check(90, "DEF", "malformed XML, wrong root or namespace -> bad-request")
async def c90(sc: Scope) -> str | None:
    async def one(label: str, make: Any) -> str | None:
        s, _ = await created(sc, wait_features=False)
        rid = s.next_rid()
        r = await s.req(rid=rid, raw=make(s, rid), timeout=s.wait + 10)
        s.dead_probed = True  # the sid may not be readable: no DEAD expectation
        return None if r.is_term("bad-request") else f"{label}: {r.describe()}"
    res = await asyncio.gather(
        one("truncated body", lambda s, rid: f"<body xmlns='{NS}' rid='{rid}' sid='{s.sid}'".encode()),
        one("root <foo/>", lambda s, rid: f"<foo xmlns='x' rid='{rid}' sid='{s.sid}'/>".encode()),
        one("body in urn:wrong", lambda s, rid: f"<body xmlns='urn:wrong' rid='{rid}' sid='{s.sid}'/>".encode()),
    )
    fail_reasons([x for x in res if x])
    return None


always_skip(91, "DEF", "host-gone when a domain stops being served",
            "needs an operator to remove a served domain and reload the CM")


always_skip(92, "DEF", "internal-server-error on an internal failure",
            "needs fault injection inside the CM")


@check(93, "DEF", "a fatal error tells the other held requests other-request")
async def c93(sc: Scope) -> str | None:
    async def variant(label: str, make: Any, cond: str) -> str | None:
        s, _ = await created(sc, wait=4, wait_features=False)
        t1 = s.start()
        if not await s.is_held(t1):
            return f"{label}: REQ(N+1) not held"
        rid = s.next_rid()
        r2 = await s.req(rid=make(s, rid)[0], raw=make(s, rid)[1])
        r1 = await s.answered_within(t1)
        if not r2.is_term(cond):
            return f"{label}: the faulty request got {r2.describe()}"
        if r1 is None:
            return f"{label}: the held request was not told (still held)"
        if not r1.is_term("other-request"):
            return f"{label}: the held request got {r1.describe()} (want other-request)"
        return None
    res = await asyncio.gather(
        variant("comment in REQ(N+2)",
                lambda s, rid: (rid, f"<body xmlns='{NS}' sid='{s.sid}' rid='{rid}'><!-- x --></body>".encode()),
                "bad-request"),
        variant("rid above the window",
                lambda s, rid: (rid + s.requests, s.build("", sid=s.sid, rid=rid + s.requests)),
                "item-not-found"),
    )
    fail_reasons([x for x in res if x])
    return None


always_skip(94, "DEF", "remote-connection-failed when the server is unreachable",
            "needs the XMPP server stopped or unreachable (tests/integration kills Prosody)")


@check(95, "MUST", "a stream error arrives as remote-stream-error with the <stream:error/>", login=True)
async def c95(sc: Scope) -> str | None:
    resource = "dup-" + secrets.token_hex(4)
    s = await sc.login(resource=resource)
    held = s.start()
    ensure(await s.is_held(held, 0.3), f"request not held: {desc(held)}")
    other = sc.sess()
    r = await other.create()
    ensure(not r.terminated, r.describe())
    await other.login(sc.ctx.user or "", sc.ctx.password or "", resource)
    await asyncio.wait([held], timeout=5)
    x = result_or_none(held)
    if x is None:
        raise Skip("the server did not end the first session on a resource conflict")
    if not x.terminated:
        x = await s.req(timeout=6)
    ensure(x.is_term("remote-stream-error"), f"{x.describe()} (want remote-stream-error)")
    err = x.el.find(f"{{{ST}}}error") if x.el is not None else None
    ensure(err is not None, "no <stream:error/> copy in the body")
    ensure(err.find(f"{{{STREAMS}}}conflict") is not None, f"the copy lost its condition: {short(etree.tostring(err))}")
    ensure(re.search(rb"""xmlns:stream\s*=\s*(['"])http://etherx\.jabber\.org/streams\1""", x.start_tag),
           f"no xmlns:stream on <body>: {short(x.start_tag)}")
    return None


always_skip(96, "DEF", "see-other-uri carries a <uri/>",
            "needs a CM configured to redirect (e.g. https-only)")


always_skip(97, "DEF", "system-shutdown on shutdown", "needs the CM to be shut down during the run")
always_skip(98, "SHOULD", "undefined-condition carries application detail",
            "needs fault injection inside the CM")


@check(99, "SHOULD", "legacy clients (no 'ver') get HTTP 400/404")
async def c99(sc: Scope) -> str | None:
    reasons = []
    s, _ = await created(sc, ver=None, wait_features=False)
    r = await s.req(rid=s.rid + s.requests + 1)
    if r.status != 404:
        reasons.append(f"rid above the window: {r.describe()} (want HTTP 404)")
    s2, _ = await created(sc, ver=None, wait_features=False)
    rid = s2.next_rid()
    r2 = await s2.req(rid=rid, raw=f"<body xmlns='{NS}' sid='{s2.sid}' rid='{rid}'><!-- x --></body>".encode())
    if r2.status != 400:
        reasons.append(f"comment in the body: {r2.describe()} (want HTTP 400)")
    fail_reasons(reasons)
    return None


@check(100, "MAY", "after type='error' the resent requests are processed exactly once")
async def c100(sc: Scope) -> str | None:
    o = await repeat_held_scenario(sc)
    if "fails" not in o:
        raise Skip("no recoverable type='error' was given (#60)")
    ensure(o["fails"] == 1, f"the payload after the resends reached the server {o['fails']} times")
    return None


@check(101, "DEF", "stanza errors pass through and keep the session", login=True)
async def c101(sc: Scope) -> str | None:
    s = await sc.login()
    bare = (s.jid or "").split("/")[0]
    res = await s.iq("<query xmlns='urn:x:conformance:none'/>", "get", to=f"{bare}/no-such-{secrets.token_hex(3)}")
    ensure(res.get("type") == "error", f"expected an iq error: {short(etree.tostring(res))}")
    t = s.start()
    ok = await s.is_held(t, 0.3)
    ensure(ok or not t.result().terminated, f"the session ended: {desc(t)}")
    return None
