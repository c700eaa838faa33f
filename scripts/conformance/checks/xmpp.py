"""Checklist N. XMPP-specific behaviour (0206 §3-§7; §19.2): items #118-#126."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from typing import Any

from lxml import etree

from conformance.client import (BIND, CLIENT, FEATURES, Fail, SASL, STANZAS, Skip, bogus_auth,
                                ensure, is_iq, is_sasl, message, ping, short, xq)
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import (always_skip, created, desc, need_idle, profile, spaced,
                                       spacing_wait)


@check(118, "DEF", "SASL elements pass through unchanged")
async def c118(sc: Scope) -> str | None:
    s, _ = await created(sc)
    await s.req(bogus_auth())
    f = await s.poll_until(is_sasl("failure"), 10)
    ensure(len(f) and etree.QName(f[0]).namespace == SASL, f"<failure/> lost its condition: {short(etree.tostring(f))}")
    if sc.ctx.user and sc.ctx.password:
        s2 = await sc.login()
        ensure(s2.jid, "login failed")
        return "failure and success both delivered"
    return "failure delivered (no --user for success)"


async def login_scenario(sc: Scope) -> dict[str, Any]:
    async def run(scope: Scope) -> dict[str, Any]:
        resource = "r-" + secrets.token_hex(4)
        s = await scope.login(resource=resource)
        carrier = next((x for x in s.responses if x.features is not None and x is not s.creation), None)
        return {"jid": s.jid, "resource": resource, "features": s.features, "carrier": carrier}
    return await sc.ctx.once("login", run)


@check(119, "MUST", "restart reuses the authenticated upstream stream", login=True)
async def c119(sc: Scope) -> str | None:
    sc.need_login()
    o = await login_scenario(sc)
    f = o["features"]
    ensure(f.find(f"{{{SASL}}}mechanisms") is None,
           "SASL offered again after the restart (a new, unauthenticated connection?)")
    ensure(f.find(f"{{{BIND}}}bind") is not None, "no <bind/> after the restart")
    return None


@check(120, "MUST", "post-restart <stream:features/> forwarded, xmlns:stream on <body>", login=True)
async def c120(sc: Scope) -> str | None:
    sc.need_login()
    o = await login_scenario(sc)
    c = o["carrier"]
    ensure(c is not None, "no response carried the new features")
    ensure(re.search(rb"""xmlns:stream\s*=\s*(['"])http://etherx\.jabber\.org/streams\1""", c.start_tag),
           f"start tag lacks xmlns:stream: {short(c.start_tag)}")
    return None


@check(121, "SHOULD", "stanzas inside a restart body are ignored", login=True)
async def c121(sc: Scope) -> str | None:
    sc.need_login()
    s = sc.sess()
    r = await s.create()
    ensure(not r.terminated, r.describe())
    mechs = s.mechanisms()
    if "PLAIN" not in mechs:
        raise Skip("needs SASL PLAIN")
    tok = base64.b64encode(f"\0{sc.ctx.user}\0{sc.ctx.password}".encode()).decode()
    await s.req(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{tok}</auth>")
    await s.poll_until(is_sasl("success"), 10)
    pid = "rs" + secrets.token_hex(4)
    await s.req(ping(sc.ctx.domain, pid), xmpp_restart="true", to=sc.ctx.domain, xml_lang="en")
    feats = s.take(lambda e: e.tag == FEATURES)
    if feats is None:
        feats = await s.poll_until(lambda e: e.tag == FEATURES, 10)
    ensure(feats.find(f"{{{BIND}}}bind") is not None, "no bind after the restart")
    res = await s.iq(f"<bind xmlns='{BIND}'/>", "set")
    ensure(res.get("type") == "result", f"bind failed: {short(etree.tostring(res))} (a forwarded stanza broke the stream?)")
    got = s.take(is_iq(pid))
    if got is None:
        await s.req(timeout=s.wait + 5)
        got = s.take(is_iq(pid))
    if got is not None:
        raise Fail(f"the iq inside the restart body was forwarded: {short(etree.tostring(got))}")
    return None


@check(122, "MUST", "booleans: xmpp:restart accepts '1'; 'false'/'0' are no restart", login=True)
async def c122(sc: Scope) -> str | None:
    sc.need_login()
    p = await profile(sc)
    s = sc.sess()
    r = await s.create(wait=spacing_wait(p, sc.ctx.slack))
    ensure(not r.terminated, r.describe())
    if "PLAIN" not in s.mechanisms():
        raise Skip("needs SASL PLAIN")
    tok = base64.b64encode(f"\0{sc.ctx.user}\0{sc.ctx.password}".encode()).decode()
    await s.req(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{tok}</auth>")
    await s.poll_until(is_sasl("success"), 10)
    t0 = time.monotonic()
    f = s.start(xmpp_restart="false", to=sc.ctx.domain)
    ensure(await s.is_held(f), f"xmpp:restart='false' was not an ordinary (held) request: {desc(f)}")
    await spaced(s, t0)
    t1 = time.monotonic()
    z = s.start(xmpp_restart="0", to=sc.ctx.domain)
    await asyncio.wait([f], timeout=sc.ctx.slack)
    ensure(await s.is_held(z), f"xmpp:restart='0' was not an ordinary (held) request: {desc(z)}")
    ensure(not any(c.tag == FEATURES for c in s.inbox), "features arrived: 'false' or '0' restarted the stream")
    await spaced(s, t1)
    s.start(xmpp_restart="1", to=sc.ctx.domain, xml_lang="en")
    feats = await s.poll_until(lambda e: e.tag == FEATURES, 10)
    ensure(feats.find(f"{{{BIND}}}bind") is not None, "xmpp:restart='1' did not restart the stream")
    return None


@check(123, "DEF", "resource binding passes through untouched", login=True)
async def c123(sc: Scope) -> str | None:
    sc.need_login()
    o = await login_scenario(sc)
    want = f"{sc.ctx.user}@{sc.ctx.domain}/{o['resource']}".lower()
    ensure((o["jid"] or "").lower() == want, f"bound {o['jid']!r}, asked for {want!r}")
    return None


always_skip(124, "MAY", "SASL EXTERNAL with HTTP-level authentication",
            "needs HTTP-level client authentication")


@check(125, "SHOULD", "undeliverable stanzas bounced when the session dies", login=True, deadline=60)
async def c125(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["inactivity"] is None:
        raise Skip("no 'inactivity' advertised")
    need_idle(sc, p["inactivity"] + 3, "letting a session die of inactivity")
    peer = await sc.peer()
    s = await sc.login()
    mid, iid = "b" + secrets.token_hex(4), "i" + secrets.token_hex(4)
    await peer.req(message(s.jid or "", "bounce-me", id_=mid)
                   + f"<iq xmlns='{CLIENT}' type='get' id='{iid}' to='{xq(s.jid or '')}'><ping xmlns='urn:xmpp:ping'/></iq>"
                   + f"<presence xmlns='{CLIENT}' to='{xq(s.jid or '')}'/>")
    s.dead_probed = True
    s.terminated = s.creation  # never touch it again: let it die
    got_m = got_i = None
    deadline = time.monotonic() + (s.inactivity or p["inactivity"]) + 6
    while time.monotonic() < deadline and (got_m is None or got_i is None):
        x = await peer.req(timeout=peer.wait + 5)
        ensure(not x.terminated, f"the peer session ended: {x.describe()}")
        got_m = got_m or peer.take(lambda e: e.tag == f"{{{CLIENT}}}message" and e.get("id") == mid)
        got_i = got_i or peer.take(is_iq(iid))
    ensure(got_m is not None, "the queued message was not bounced")
    ensure(got_m.get("type") == "error" and got_m.find(f".//{{{STANZAS}}}recipient-unavailable") is not None,
           f"message bounce: {short(etree.tostring(got_m))}")
    ensure(got_i is not None, "the queued iq was not bounced")
    ensure(got_i.get("type") == "error" and got_i.find(f".//{{{STANZAS}}}service-unavailable") is not None,
           f"iq bounce: {short(etree.tostring(got_i))}")
    return None


always_skip(126, "SHOULD", "the CM -> server link is encrypted",
            "the upstream link is not observable from outside (see #18 and tests/bridge)")
