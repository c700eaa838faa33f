"""Checklist D. Session creation response (§7.2; 0206 §4): items #31-#44."""

from __future__ import annotations

import asyncio
import gzip
import math
import zlib

from conformance.client import Fail, Skip, XB, bogus_auth, ensure, is_sasl
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, desc, fail_reasons, profile, spacing_wait


COMPRESS_FEATURE = "http://jabber.org/features/compress"


CREATION_ONLY = ("sid", "wait", "requests", "polling", "inactivity", "hold", "ver", "accept",
                 "charsets", "maxpause")


@check(31, "MUST", "sids are unique and unpredictable")
async def c31(sc: Scope) -> str | None:
    n = 30
    sem = asyncio.Semaphore(10)

    async def one() -> str:
        async with sem:
            s = sc.sess()
            r = await s.create(wait_features=False)
            ensure(not r.terminated and s.sid, f"CREATE failed: {r.describe()}")
            return s.sid or ""
    sids = await asyncio.gather(*(one() for _ in range(n)))
    ensure(len(set(sids)) == n, f"{n - len(set(sids))} repeated sids")
    alphabet = set("".join(sids))
    bits = min(len(x) for x in sids) * math.log2(max(len(alphabet), 2))
    ordered = sorted(sids)
    lcp = max(len(_common_prefix(a, b)) for a, b in zip(ordered, ordered[1:]))
    ensure(lcp <= 8, f"sorted sids share prefixes of {lcp} characters (sequential or time-based?)")
    ensure(bits >= 96, f"sids look too short: ~{bits:.0f} bits ({min(len(x) for x in sids)} characters)")
    numeric = [int(x) for x in sids if x.isdigit()]
    ensure(len(numeric) < n, "sids are plain numbers")
    return f"{n} distinct, ~{bits:.0f} bits nominal, longest shared prefix {lcp}"


def _common_prefix(a: str, b: str) -> str:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return a[:i]


@check(32, "MUST", "creation response has sid, wait, requests (integers)")
async def c32(sc: Scope) -> str | None:
    p = await profile(sc)
    a = p["attrs"]
    missing = [k for k in ("sid", "wait", "requests") if k not in a]
    ensure(not missing, f"missing {missing}")
    ensure(a["wait"].isdigit() and a["requests"].isdigit(), f"wait={a['wait']!r} requests={a['requests']!r}")
    return None


@check(33, "MUST", "'requests' > the 'hold' the client asked for")
async def c33(sc: Scope) -> str | None:
    reasons = []
    notes = []
    for h in (1, 3):
        s = sc.sess()
        r = await s.create(hold=h, wait_features=False)
        ensure(not r.terminated, f"hold={h}: {r.describe()}")
        req = r.get("requests")
        if req is None or not req.isdigit():
            reasons.append(f"hold={h}: requests={req!r}")
        elif int(req) <= h:
            reasons.append(f"hold={h} asked (granted {r.get('hold')}): requests={req}, must be > {h} (Q2: literal reading)")
        elif int(req) != h + 1:
            notes.append(f"hold={h}: requests={req} (RECOMMENDED {h + 1})")
    fail_reasons(reasons)
    return "; ".join(notes) or None


@check(34, "SHOULD", "creation response has ver, polling, inactivity, hold, from")
async def c34(sc: Scope) -> str | None:
    s, r = await created(sc)
    missing = [k for k in ("ver", "polling", "inactivity", "hold") if r.get(k) is None]
    if r.get("from") is None and not any(x.get("from") for x in s.responses[1:2]):
        missing.append("from")
    ensure(not missing, f"missing {missing}")
    return None


@check(35, "SHOULD", "creation-only attributes not repeated on later responses", phase=2)
async def c35(sc: Scope) -> str | None:
    s, _ = await created(sc, wait=2)
    await s.req(bogus_auth())
    await s.req()
    bad: dict[str, set[str]] = {}
    n = 0
    for ex in sc.ctx.exchanges:
        if ex.el is None or ex.kind != "req" or ex.resp is None or ex.resp.status != 200:
            continue
        n += 1
        extra = [k for k in CREATION_ONLY if ex.el.get(k) is not None]
        for k in extra:
            bad.setdefault(k, set()).add(ex.check)
    ensure(not bad, "later responses carry " + ", ".join(f"{k} ({len(v)} checks)" for k, v in sorted(bad.items())))
    return f"{n} later responses"


@check(36, "MAY", "advertised 'accept' codings are decoded in requests")
async def c36(sc: Scope) -> str | None:
    s, r = await created(sc, wait_features=False)
    acc = [c.strip().lower() for c in (r.get("accept") or "").split(",") if c.strip()]
    if not acc:
        raise Skip("no 'accept' advertised (request compression not offered)")
    tested = []
    for coding in ("gzip", "deflate"):
        if coding not in acc:
            continue
        x, _ = await created(sc, wait_features=False)
        rid = x.next_rid()
        plain = x.build(bogus_auth(), sid=x.sid, rid=rid)
        data = gzip.compress(plain) if coding == "gzip" else zlib.compress(plain)
        t = await x.req(rid=rid, raw=data, headers={"Content-Encoding": coding})
        ensure(not t.terminated, f"{coding} body: {t.describe()}")
        await x.poll_until(is_sasl("failure"), 10) if not any(is_sasl("failure")(c) for c in t.children) else None
        tested.append(coding)
    if not tested:
        raise Skip(f"accept={r.get('accept')!r}: neither gzip nor deflate")
    return "decoded " + ", ".join(tested)


@check(37, "MUST", "with acks, the creation response acks its own rid")
async def c37(sc: Scope) -> str | None:
    s, r = await created(sc, ack="1", wait=2, wait_features=False)
    ack = r.get("ack")
    if ack is None:
        t = await s.req()
        ensure(t.get("ack") is None, f"no ack on the creation response but ack on a later one: {t.describe()}")
        return "acks not used"
    ensure(ack == str(s.creation.rid if s.creation else ""), f"ack={ack!r}, creation rid {s.creation.rid if s.creation else '?'}")
    return None


@check(38, "SHOULD", "'maxpause' advertised iff pausing works")
async def c38(sc: Scope) -> str | None:
    p = await profile(sc)
    w = spacing_wait(p, sc.ctx.slack)
    s, r = await created(sc, wait=w, wait_features=False)
    t1 = s.start()
    ensure(await s.is_held(t1), f"an empty request was not held: {desc(t1)}")
    pause = "5" if r.get("maxpause") is None else str(min(int(r.get("maxpause") or 5), 5))
    t2 = s.start(pause=pause)
    done, _ = await asyncio.wait([t1, t2], timeout=sc.ctx.slack, return_when=asyncio.ALL_COMPLETED)
    paused = t2 in done and t1 in done and not t2.result().terminated
    if r.get("maxpause") is None:
        if paused:
            raise Fail("pause works (everything answered at once) but no 'maxpause' was advertised")
        return "no maxpause, pause not honoured"
    ensure(paused, f"maxpause={r.get('maxpause')} advertised but pause={pause} was not answered at once")
    return None


@check(39, "SHOULD", "charsets: UTF-8, conversion only when advertised")
async def c39(sc: Scope) -> str | None:
    p = await profile(sc)
    if not p["charsets"]:
        raise Skip("no 'charsets' advertised (only UTF-8 offered)")
    raise Skip(f"charsets={p['charsets']!r} advertised; conversion check not implemented")


@check(40, "MAY", "'from' = the server identity, on creation or the first later response")
async def c40(sc: Scope) -> str | None:
    s, r = await created(sc)
    frm = r.get("from") or next((x.get("from") for x in s.responses[1:2] if x.get("from")), None)
    if frm is None:
        raise Skip("'from' not sent (optional)")
    ensure(frm.lower() == sc.ctx.domain.lower(), f"from={frm!r}, domain {sc.ctx.domain!r}")
    return None


@check(41, "SHOULD", "xmpp:version and <stream:features/> sent as soon as known")
async def c41(sc: Scope) -> str | None:
    s, r = await created(sc)
    carrier = next((x for x in s.responses if x.features is not None), None)
    ensure(carrier is not None, "features never arrived")
    ver = r.get("xmpp:version") or (carrier.get("xmpp:version") if carrier else None)
    ensure(ver == "1.0", f"xmpp:version={ver!r} (want '1.0' on the response with the features)")
    return "features in the creation response" if carrier is r else "features in a later response"


@check(42, "MUST", "restart support advertised: xmpp:restartlogic='true'")
async def c42(sc: Scope) -> str | None:
    p = await profile(sc)
    v = p["attrs"].get(f"{{{XB}}}restartlogic")
    ensure(v in ("true", "1"), f"{{urn:xmpp:xbosh}}restartlogic={v!r}")
    return None


@check(43, "SHOULD", "'authid' (obsolete) sent with the features")
async def c43(sc: Scope) -> str | None:
    s, r = await created(sc)
    carrier = next((x for x in s.responses if x.features is not None), None)
    aid = (carrier.get("authid") if carrier else None) or r.get("authid")
    if aid is None:
        raise Skip("'authid' not sent (obsolete since XEP-0206 v1.0)")
    ensure(aid.strip(), "empty authid")
    return None


@check(44, "SHOULD", "no TLS/stream compression offered over BOSH")
async def c44(sc: Scope) -> str | None:
    s, _ = await created(sc)
    ensure(s.features is not None and s.features.find(f"{{{COMPRESS_FEATURE}}}compression") is None,
           "<compression xmlns='http://jabber.org/features/compress'/> offered")
    return None
