"""The checks, one per item of docs/spec-checklist.md (numbers and levels from there).

Each check gets a :class:`Scope` (sessions opened through it are closed afterwards) and
returns an optional note, or raises ``Fail``/``Skip``. Conventions (checklist §0.1):
CREATE asks wait=--wait (4 s) and hold=1 unless a check says otherwise; "immediate" means
answered within --slack (1 s) and "held" means not answered within it.

Checks that need server data without an account use a SASL <auth/> with a mechanism nobody
offers: the server answers <failure/> at once and keeps the stream (RFC 6120 §6.4.5).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import math
import re
import secrets
import time
import zlib
from typing import Any

from lxml import etree

from conformance.core import Scope, check
from conformance.client import (BIND, CLIENT, DEFAULT_CT, FEATURES, NS, SASL, ST, STANZAS, STREAMS,
                                XB, BoshResp, Fail, Sess, Skip, bogus_auth, ensure, is_iq, is_message,
                                is_sasl, message, ping, short, xq)
from conformance.rawhttp import Conn

XMPP_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
COMPRESS_FEATURE = "http://jabber.org/features/compress"
CREATION_ONLY = ("sid", "wait", "requests", "polling", "inactivity", "hold", "ver", "accept",
                 "charsets", "maxpause")
STANZA_NAMES = ("message", "presence", "iq")


# ---------------------------------------------------------------------- helpers
async def created(sc: Scope, **kw: Any) -> tuple[Sess, BoshResp]:
    s = sc.sess()
    r = await s.create(**kw)
    if r.terminated:
        raise Fail(creation_failed(r))
    return s, r


def creation_failed(r: BoshResp) -> str:
    why = f"session creation failed: {r.describe()}"
    if r.is_term("policy-violation"):
        why += (" (a per-client session limit? one run opens about 150 sessions from this address;"
                " allow that for the test client)")
    return why


async def profile(sc: Scope) -> dict[str, Any]:
    """What a default CREATE gets (shared by all checks): limits used to plan the others."""
    async def run(scope: Scope) -> dict[str, Any]:
        s, r = await created(scope, wait=scope.ctx.wait)
        return {"attrs": dict(r.attrs), "wait": s.wait, "hold": s.hold, "requests": s.requests,
                "polling": s.polling, "inactivity": s.inactivity,
                "maxpause": _num(r.get("maxpause")), "stream": r.get("stream"),
                "accept": r.get("accept"), "charsets": r.get("charsets")}
    return await sc.ctx.once("profile", run)


def _num(v: str | None) -> int | None:
    return int(v) if v is not None and v.isdigit() else None


async def spaced(s: Sess, since: float) -> None:
    """Sleep until 'polling' + 0.3 s after ``since``: a new empty request then cannot be
    "too frequent" (§11/§12), so a check can test something else."""
    delay = since + (s.polling or 0) + 0.3 - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def spacing_wait(p: dict[str, Any], slack: float) -> int:
    """A 'wait' long enough to keep a request held across a polling-spaced second request."""
    return int(math.ceil((p["polling"] or 0) + slack + 3))


def c14n(el: etree._Element) -> bytes:
    return etree.tostring(el, method="c14n")


def localnames(els: list[etree._Element]) -> list[str]:
    return [etree.QName(e).localname for e in els]


def need_idle(sc: Scope, seconds: float, what: str) -> None:
    if seconds > sc.ctx.max_idle:
        raise Skip(f"{what} needs {seconds:.0f}s idle, more than --max-idle {sc.ctx.max_idle:.0f}s")


def result_or_none(task: "asyncio.Task[BoshResp]") -> BoshResp | None:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return None


def desc(task: "asyncio.Task[BoshResp]") -> str:
    """What happened to a background request, for a failure message."""
    if not task.done():
        return "still held"
    if task.cancelled():
        return "cancelled"
    if task.exception() is not None:
        return f"failed: {task.exception()}"
    return task.result().describe()


def fail_reasons(reasons: list[str]) -> None:
    if reasons:
        raise Fail("; ".join(reasons))


# ====================================================================== A. HTTP transport
@check(1, "MUST", "HTTP/1.1 keep-alive and HTTP/1.0 clients both work")
async def c1(sc: Scope) -> str | None:
    reasons = []
    s = sc.sess()
    conn = Conn(sc.ctx.target)
    try:
        r = await s.create(version="1.0", conn=conn, keep_alive=True)
        if r.terminated:
            reasons.append(f"HTTP/1.0 CREATE failed: {r.describe()}")
        else:
            if r.http.content_length is None:
                reasons.append("HTTP/1.0 response without Content-Length")
            if r.http.chunked:
                reasons.append("chunked response to an HTTP/1.0 request")
            if conn.writer is not None and not await conn.at_eof(3.0):
                reasons.append("connection not closed after the answer to an HTTP/1.0 request without keep-alive")
    finally:
        conn.close()
    s2 = sc.sess()
    conn2 = Conn(sc.ctx.target)
    try:
        r = await s2.create(conn=conn2, keep_alive=True, wait_features=False)
        if r.terminated:
            reasons.append(f"HTTP/1.1 CREATE failed: {r.describe()}")
        elif conn2.writer is None or r.http.closed_after:
            reasons.append("server closed the HTTP/1.1 keep-alive connection after the first answer")
        else:
            t = await s2.req(type="terminate", conn=conn2, keep_alive=True)
            if t.status != 200 or t.condition:
                reasons.append(f"second request on the keep-alive socket: {t.describe()}")
    finally:
        conn2.close()
    fail_reasons(reasons)
    return None


@check(2, "SHOULD", "unknown HTTP headers are ignored")
async def c2(sc: Scope) -> str | None:
    junk = {"Cookie": "a=b", "X-Junk": "1", "X-Forwarded-Proto": "gopher"}
    plain_s, plain = await created(sc)
    s = sc.sess()
    r = await s.create(headers=junk)
    ensure(not r.terminated, f"CREATE with Cookie/X-Junk headers failed: {r.describe()}")
    names = lambda x: {k for k in x.attrs if k not in ("authid",)}  # noqa: E731
    ensure(names(r) == names(plain),
           f"attributes differ from a plain CREATE: {sorted(names(r) ^ names(plain))}")
    t = await s.req(bogus_auth(), headers=junk)
    ensure(not t.terminated, f"REQ with junk headers: {t.describe()}")
    return None


@check(3, "SHOULD", "no chunked transfer coding; Content-Length on every response", phase=2, deadline=60)
async def c3(sc: Scope) -> str | None:
    note = ""
    if sc.ctx.user and sc.ctx.password:
        # A large payload response, compressed if the endpoint compresses at all.
        s = await sc.login(accept="gzip,deflate")
        s.accept_encoding = "gzip, deflate"
        text = "x" * 150_000
        tag = secrets.token_hex(4)
        r = await s.req(message(s.jid or "", tag + text))
        if not r.terminated:
            try:
                await s.poll_until(is_message(tag + text), 10)
                note = "incl. a 150 KB payload response"
            except Fail as exc:
                note = f"the 150 KB message did not come back ({exc})"
    bad = []
    for ex in sc.ctx.exchanges:
        if ex.resp is None or ex.kind == "other":
            continue
        if ex.resp.chunked:
            bad.append(f"{ex.check}: chunked response")
        elif ex.resp.content_length is None:
            bad.append(f"{ex.check}: response without Content-Length")
    ensure(not bad, f"{len(bad)} responses: " + ", ".join(sorted(set(bad))[:6]))
    n = sum(1 for ex in sc.ctx.exchanges if ex.resp is not None)
    return f"{n} responses" + (f"; {note}" if note else "")


@check(4, "MAY", "responses compressed only with a coding Accept-Encoding lists", phase=2)
async def c4(sc: Scope) -> str | None:
    s = sc.sess()
    s.accept_encoding = "gzip"
    r = await s.create(accept="gzip,deflate")
    ensure(not r.terminated, f"CREATE failed: {r.describe()}")
    s2 = sc.sess()
    r2 = await s2.create(accept="gzip,deflate", headers={"Accept-Encoding": None})
    ensure(not r2.terminated, f"CREATE failed: {r2.describe()}")
    bad = []
    compressed = 0
    for ex in sc.ctx.exchanges:
        if ex.resp is None:
            continue
        ce = (ex.resp.header("content-encoding") or "identity").lower()
        if ce == "identity":
            continue
        compressed += 1
        offered = {p.split(";")[0].strip().lower()
                   for p in (ex.req_headers.get("Accept-Encoding") or "").split(",") if p.strip()}
        if ce not in offered:
            bad.append(f"{ex.check}: Content-Encoding {ce} but Accept-Encoding was {sorted(offered) or 'absent'}")
        if ex.resp.decode_error:
            bad.append(f"{ex.check}: {ex.resp.decode_error}")
    ensure(not bad, "; ".join(sorted(set(bad))[:5]))
    return f"{compressed} compressed responses, all allowed" if compressed else "never compresses"


@check(5, "SHOULD", "the request Content-Type is ignored")
async def c5(sc: Scope) -> str | None:
    reasons = []
    for ct in ("application/x-www-form-urlencoded", "text/plain", None):
        s = sc.sess()
        r = await s.create(headers={"Content-Type": ct}, wait_features=False)
        if r.terminated:
            reasons.append(f"Content-Type {ct or '(none)'}: {r.describe()}")
    fail_reasons(reasons)
    return None


def _ct_ok(value: str | None, want: str) -> bool:
    norm = lambda v: ";".join(p.strip() for p in v.lower().split(";"))  # noqa: E731
    return value is not None and norm(value) == norm(want)


@check(6, "MUST", "Content-Type is text/xml; charset=utf-8 without 'content'", phase=2)
async def c6(sc: Scope) -> str | None:
    # The targeted sequence: creation, timed-out, replayed, terminal, unknown sid.
    s, _ = await created(sc, wait=2)
    r1 = await s.req()
    await s.req(rid=r1.rid, raw=s.build("", sid=s.sid, rid=r1.rid))
    await s.req(type="terminate")
    u = sc.sess()
    u.sid = "x" + secrets.token_hex(12)
    await u.req(rid=1000)
    bad = []
    n = 0
    for ex in sc.ctx.exchanges:
        if ex.resp is None or ex.expect_ct != DEFAULT_CT or ex.resp.status != 200:
            continue
        n += 1
        got = ex.resp.header("content-type")
        if not _ct_ok(got, DEFAULT_CT):
            bad.append(f"{ex.check}: {got!r}")
    ensure(not bad, f"wrong Content-Type on {len(bad)} responses: " + ", ".join(sorted(set(bad))[:5]))
    return f"{n} responses"


@check(7, "MUST", "'content' attribute becomes the Content-Type of every response")
async def c7(sc: Scope) -> str | None:
    want = "text/html; charset=utf-8"
    s, r = await created(sc, content=want, wait=2)
    seen = [("creation", r)]
    t = await s.req(bogus_auth())
    seen.append(("payload", t))
    e = await s.req()
    seen.append(("timed-out", e))
    rep = await s.req(rid=e.rid, raw=s.build("", sid=s.sid, rid=e.rid))
    seen.append(("replayed", rep))
    term = await s.req(type="terminate")
    seen.append(("terminal", term))
    bad = [f"{what}: {x.http.header('content-type')!r}" for what, x in seen
           if not _ct_ok(x.http.header("content-type"), want)]
    fail_reasons([f"want {want!r}; " + ", ".join(bad)] if bad else [])
    return None


@check(8, "SHOULD", "no HTTP error statuses for clients that sent 'ver'", phase=2)
async def c8(sc: Scope) -> str | None:
    u = sc.sess()
    u.sid = "x" + secrets.token_hex(12)
    await u.req(rid=1000)
    s, _ = await created(sc, wait_features=False)
    await s.req(rid=s.rid + 1, raw=s.build("", sid=s.sid, rid="abc"))
    bad = []
    for ex in sc.ctx.exchanges:
        if ex.resp is None or ex.legacy or ex.kind not in ("create", "req"):
            continue
        if ex.resp.status != 200:
            bad.append(f"{ex.check}: HTTP {ex.resp.status}")
    ensure(not bad, f"{len(bad)} non-200 answers: " + ", ".join(sorted(set(bad))[:6]))
    return None


@check(9, "SHOULD", "no HTTP pipelining (informational)")
async def c9(sc: Scope) -> str | None:
    raise Skip("informational: nothing for a CM to do (checklist #9)")


# ====================================================================== B. <body/> wrapper
@check(10, "MUST", "every response is one well-formed {httpbind}body document", phase=2)
async def c10(sc: Scope) -> str | None:
    bad = []
    n = 0
    for ex in sc.ctx.exchanges:
        if ex.resp is None or ex.resp.status != 200 or ex.kind == "other":
            continue
        n += 1
        if ex.problem:
            bad.append(f"{ex.check}: {ex.problem}")
    ensure(not bad, "; ".join(sorted(set(bad))[:5]))
    return f"{n} responses parsed strictly"


_ENTITY = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);)")


@check(11, "MUST", "no comments, PIs, DTDs or custom entities in responses", phase=2, login=True)
async def c11(sc: Scope) -> str | None:
    note = ""
    if sc.ctx.user and sc.ctx.password:
        s = await sc.login()
        text = "a & b < c ]]> d \"q\" 'a'"
        await s.req(message(s.jid or "", text))
        el = await s.poll_until(is_message(text), 10)
        ensure(el.findtext(f"{{{CLIENT}}}body") == text, "escaped text did not round-trip")
        note = "escaped text round-trips"
    bad = []
    for ex in sc.ctx.exchanges:
        if ex.resp is None or ex.resp.status != 200 or ex.kind == "other":
            continue
        raw = ex.resp.body
        stripped = raw.lstrip()
        if stripped.startswith(b"<?xml"):
            stripped = stripped[stripped.find(b"?>") + 2:]
        for needle, what in ((b"<!--", "a comment"), (b"<!DOCTYPE", "a DOCTYPE"), (b"<?", "a processing instruction")):
            if needle in stripped:
                bad.append(f"{ex.check}: {what}")
        if _ENTITY.search(raw):
            bad.append(f"{ex.check}: an entity reference other than the predefined five")
    ensure(not bad, "; ".join(sorted(set(bad))[:5]))
    return note or None


@check(12, "MUST", "no character data directly inside <body/>", phase=2)
async def c12(sc: Scope) -> str | None:
    bad = []
    for ex in sc.ctx.exchanges:
        if ex.el is None or ex.resp is None or ex.resp.status != 200:
            continue
        texts = [ex.el.text] + [c.tail for c in ex.el]
        if any(t is not None and t.strip() for t in texts):
            bad.append(ex.check)
    ensure(not bad, f"text directly under <body/> in responses of {sorted(set(bad))[:6]}")
    return None


# ---------------------------------------------------------------------- #13/#14 parser rejections
async def _bad_request(sc: Scope, make: Any, label: str, quick: float | None = None) -> str | None:
    s, _ = await created(sc, wait_features=False)
    rid = s.next_rid()
    raw = make(s, rid)
    started = time.monotonic()
    r = await s.req(rid=rid, raw=raw, timeout=(s.wait + 10))
    took = time.monotonic() - started
    if not r.is_term("bad-request"):
        return f"{label}: {r.describe()} (want TERM(bad-request))"
    if quick is not None and took > quick:
        return f"{label}: took {took:.1f}s"
    return None


@check(13, "client-rule", "DTD, comment, entity bomb in a request -> bad-request")
async def c13(sc: Scope) -> str | None:
    def doctype(s: Sess, rid: int) -> bytes:
        return (f"<!DOCTYPE body [<!ENTITY e 'x'>]><body xmlns='{NS}' sid='{s.sid}' rid='{rid}'>"
                f"<message xmlns='{CLIENT}' to='nobody@{sc.ctx.domain}'><body>&e;</body></message></body>").encode()

    def comment(s: Sess, rid: int) -> bytes:
        return f"<body xmlns='{NS}' sid='{s.sid}' rid='{rid}'><!-- c --></body>".encode()

    def laughs(s: Sess, rid: int) -> bytes:
        ents = "<!ENTITY lol0 'lol'>" + "".join(
            f"<!ENTITY lol{i} '{('&lol%d;' % (i - 1)) * 10}'>" for i in range(1, 10))
        return (f"<?xml version='1.0'?><!DOCTYPE body [{ents}]><body xmlns='{NS}' sid='{s.sid}' "
                f"rid='{rid}'><message xmlns='{CLIENT}'><body>&lol9;</body></message></body>").encode()

    res = await asyncio.gather(_bad_request(sc, doctype, "DOCTYPE prolog"),
                               _bad_request(sc, comment, "comment inside <body/>"),
                               _bad_request(sc, laughs, "billion laughs", quick=2.0))
    fail_reasons([x for x in res if x])
    return None


@check(14, "client-rule", "missing or invalid rid -> bad-request")
async def c14(sc: Scope) -> str | None:
    def with_rid(value: str | None) -> Any:
        return lambda s, rid: s.build("", sid=s.sid, rid=value)
    res = await asyncio.gather(*(_bad_request(sc, with_rid(v), f"rid={v!r}")
                                 for v in (None, "abc", "0", "-5")))
    fail_reasons([x for x in res if x])
    return None


# ====================================================================== payloads
@check(15, "MAY", "payloads in any namespace pass through unchanged", login=True)
async def c15(sc: Scope) -> str | None:
    s = await sc.login()
    tag = "p" + secrets.token_hex(4)
    extra = "<foo xmlns='urn:x:conformance' a='1' b='&amp;'>t<bar/></foo>"
    await s.req(message(s.jid or "", tag, extra))
    el = await s.poll_until(is_message(tag), 10)
    foo = el.find("{urn:x:conformance}foo")
    ensure(foo is not None, f"<foo xmlns='urn:x:conformance'/> lost: {short(etree.tostring(el))}")
    ensure(foo.get("a") == "1" and foo.get("b") == "&" and foo.text == "t"
           and foo.find("{urn:x:conformance}bar") is not None,
           f"<foo/> changed: {short(etree.tostring(foo))}")
    sm = s.features.find("{urn:xmpp:sm:3}sm") if s.features is not None else None
    if sm is not None:
        await s.req("<enable xmlns='urn:xmpp:sm:3'/>")
        got = await s.poll_until(lambda e: etree.QName(e).namespace == "urn:xmpp:sm:3", 10)
        return f"foreign element round-trips; XEP-0198 <enable/> answered with <{etree.QName(got).localname}/>"
    return "foreign-namespace element round-trips"


@check(16, "MUST", "a body carrying <stream:features/> declares xmlns:stream on <body>")
async def c16(sc: Scope) -> str | None:
    s, r = await created(sc)
    resp = next((x for x in s.responses if x.features is not None), None)
    ensure(resp is not None, "no response carried <stream:features/>")
    ensure(re.search(rb"""xmlns:stream\s*=\s*(['"])http://etherx\.jabber\.org/streams\1""", resp.start_tag),
           f"start tag lacks xmlns:stream: {short(resp.start_tag)}")
    return None


def _body_shape(el: etree._Element) -> str | None:
    kids = [c for c in el if isinstance(c.tag, str)]
    if not kids:
        return None
    tags = [c.tag for c in kids]
    if FEATURES in tags and len(kids) != 1:
        return f"<stream:features/> shares a body with {localnames(kids)}"
    sasl = [c for c in kids if etree.QName(c).namespace == SASL]
    if sasl and len(kids) != 1:
        return f"a SASL element shares a body with {localnames(kids)}"
    err = f"{{{ST}}}error"
    if err in tags and tags.index(err) != len(tags) - 1:
        return "<stream:error/> is not the last child"
    for c in kids:
        q = etree.QName(c)
        if q.localname in STANZA_NAMES and q.namespace != CLIENT:
            return f"stanza <{q.localname}/> in namespace {q.namespace!r}, not jabber:client"
    return None


@check(17, "SHOULD", "body holds features, one SASL element, or jabber:client stanzas (+ stream:error)",
       phase=2)
async def c17(sc: Scope) -> str | None:
    if sc.ctx.user and sc.ctx.password:
        s = await sc.login()
        tag = "s" + secrets.token_hex(4)
        await s.req(message(s.jid or "", tag))
        await s.poll_until(is_message(tag), 10)
    bad = []
    for ex in sc.ctx.exchanges:
        if ex.el is None or ex.resp is None or ex.resp.status != 200:
            continue
        why = _body_shape(ex.el)
        if why:
            bad.append(f"{ex.check}: {why}")
    ensure(not bad, "; ".join(sorted(set(bad))[:4]))
    return None


@check(18, "SHOULD", "no TLS negotiation inside BOSH: clients never see <starttls/>")
async def c18(sc: Scope) -> str | None:
    s, _ = await created(sc)
    ensure(s.features is not None, "no features")
    ensure(s.features.find(f"{{{XMPP_TLS}}}starttls") is None, "the features offer <starttls/>")
    if sc.ctx.user and sc.ctx.password:
        await s.login(sc.ctx.user, sc.ctx.password)
        ensure(s.features.find(f"{{{XMPP_TLS}}}starttls") is None, "post-restart features offer <starttls/>")
    return None


# ====================================================================== C. session creation
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


# ====================================================================== D. creation response
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


# ====================================================================== E. hold and wait
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


# ====================================================================== F. rids
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


# ====================================================================== G. acks
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


# ====================================================================== H. inactivity and pause
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


# ====================================================================== I. overactivity and polling
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


# ====================================================================== J. terminate
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


@check(89, "MAY", "after every terminal body the session is gone (DEAD)", phase=2)
async def c89(sc: Scope) -> str | None:
    # Let the closes of phase 1 finish their DEAD probes first (they ran in each check's scope).
    probes = list(sc.ctx.dead_probes)
    if not probes:
        raise Skip("no terminal bodies were probed")
    bad = [f"{who}: {why}" for who, ok, why in probes if not ok]
    ensure(not bad, f"{len(bad)}/{len(probes)} probes: " + "; ".join(bad[:4]))
    return f"{len(probes)} probes"


# ====================================================================== K. errors
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


def _skip(n: int, level: str, title: str, why: str) -> None:
    async def fn(sc: Scope) -> str | None:
        raise Skip(why)
    fn.__name__ = f"c{n}"
    check(n, level, title)(fn)


_skip(91, "DEF", "host-gone when a domain stops being served",
      "needs an operator to remove a served domain and reload the CM")
_skip(92, "DEF", "internal-server-error on an internal failure", "needs fault injection inside the CM")


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


_skip(94, "DEF", "remote-connection-failed when the server is unreachable",
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


_skip(96, "DEF", "see-other-uri carries a <uri/>", "needs a CM configured to redirect (e.g. https-only)")
_skip(97, "DEF", "system-shutdown on shutdown", "needs the CM to be shut down during the run")
_skip(98, "SHOULD", "undefined-condition carries application detail", "needs fault injection inside the CM")


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


# ====================================================================== L. multiple streams
@check(102, "MUST", "multiple streams only when 'stream' is on the creation response")
async def c102(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["stream"]:
        raise Skip(f"'stream' advertised ({p['stream']!r}); §16 checks not implemented")
    return "not advertised"


async def _no_streams(sc: Scope) -> None:
    p = await profile(sc)
    if p["stream"] is None:
        raise Skip("'stream' not advertised (multiple streams not offered)")
    raise Skip("'stream' advertised; §16 checks not implemented in this checker")


for _n, _lvl, _title in (
        (103, "MUST", "stream names opaque and unique"),
        (105, "MUST", "add-stream request opens a new named stream"),
        (106, "MUST", "a later 'from' comes with its 'stream'"),
        (107, "MUST", "bodies name their stream and never mix streams"),
        (108, "MUST", "a body without 'stream' goes to every stream"),
        (109, "SHOULD", "unknown stream name -> item-not-found"),
        (110, "SHOULD", "empty bodies leave out 'stream'"),
        (111, "MUST", "terminate with 'stream' closes that stream"),
        (112, "MUST", "a terminal error with 'stream' closes only that stream"),
        (113, "SHOULD", "xmpp:version on add-stream requests and responses")):
    check(_n, _lvl, _title)(_no_streams)


@check(104, "MUST", "without streams, a REQ with 'to' is an ordinary empty request")
async def c104(sc: Scope) -> str | None:
    p = await profile(sc)
    if p["stream"]:
        raise Skip("'stream' advertised: #104 does not apply")
    s, _ = await created(sc, wait=2, wait_features=False)
    started = time.monotonic()
    r = await s.req(to="other.example", route="xmpp:other.example:5222", xml_lang="en")
    took = time.monotonic() - started
    ensure(not r.terminated, f"add-stream request: {r.describe()}")
    ensure(r.get("stream") is None, f"answer carries stream={r.get('stream')!r}")
    ensure(took >= s.wait - 1, f"not handled like an empty poll (answered after {took:.1f}s)")
    t = await s.req(bogus_auth())
    ensure(not t.terminated, f"session after it: {t.describe()}")
    return None


# ====================================================================== M. key sequencing
def _chain(n: int) -> list[str]:
    k = [secrets.token_hex(20)]
    for _ in range(n - 1):
        k.append(hashlib.sha1(k[-1].encode()).hexdigest())
    return k  # k[i+1] = sha1(k[i]); the client uses them backwards


async def keys_scenario(sc: Scope) -> dict[str, Any]:
    async def run(scope: Scope) -> dict[str, Any]:
        ks = _chain(5)   # ks[4] = K5 goes first as newkey, then K4, K3...
        s, _ = await created(scope, wait=1, newkey=ks[4], wait_features=False)
        out: dict[str, Any] = {}
        r1 = await s.req(key=ks[3])
        out["ok1"] = r1
        r2 = await s.req(key=ks[3])  # the same key again: wrong
        out["bad"] = r2
        s2, _ = await created(scope, wait=1, newkey=ks[4], wait_features=False)
        out["nokey"] = await s2.req()
        # #116 switching chains, #117 upper case
        old = _chain(2)
        new = _chain(5)
        s3, _ = await created(scope, wait=1, newkey=old[1], wait_features=False)
        out["switch1"] = await s3.req(key=old[0], newkey=new[4])
        out["switch2"] = await s3.req(key=new[3])
        out["upper"] = await s3.req(key=new[2].upper())
        out["switch_bad"] = await s3.req(key=new[3])
        return out
    return await sc.ctx.once("keys", run)


async def _keys_checked(sc: Scope) -> dict[str, Any]:
    o = await keys_scenario(sc)
    if not o["ok1"].terminated and not o["bad"].terminated and not o["nokey"].terminated:
        raise Skip("the CM does not check keys (§15 is optional)")
    return o


@check(114, "MAY", "a correct 'key' is accepted")
async def c114(sc: Scope) -> str | None:
    o = await keys_scenario(sc)
    ensure(not o["ok1"].terminated, f"REQ with the right key: {o['ok1'].describe()}")
    if not o["bad"].terminated:
        raise Skip("the CM does not check keys (§15 is optional)")
    return None


@check(115, "MUST", "a wrong or missing key -> item-not-found")
async def c115(sc: Scope) -> str | None:
    o = await _keys_checked(sc)
    ensure(o["bad"].is_term("item-not-found"), f"repeated key: {o['bad'].describe()}")
    ensure(o["nokey"].is_term("item-not-found"), f"missing key: {o['nokey'].describe()}")
    return None


@check(116, "MUST", "switching key chains with key + newkey")
async def c116(sc: Scope) -> str | None:
    o = await _keys_checked(sc)
    ensure(not o["switch1"].terminated, f"key=K1 newkey=J5: {o['switch1'].describe()}")
    ensure(not o["switch2"].terminated, f"key=J4: {o['switch2'].describe()}")
    ensure(o["switch_bad"].is_term("item-not-found"), f"J4 again after J3: {o['switch_bad'].describe()}")
    return None


@check(117, "SHOULD", "keys compared without regard to case")
async def c117(sc: Scope) -> str | None:
    o = await _keys_checked(sc)
    ensure(not o["upper"].terminated, f"upper-case key: {o['upper'].describe()}")
    return None


# ====================================================================== N. XMPP specifics
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
    import base64
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
    import base64
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


_skip(124, "MAY", "SASL EXTERNAL with HTTP-level authentication", "needs HTTP-level client authentication")


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


_skip(126, "SHOULD", "the CM -> server link is encrypted",
      "the upstream link is not observable from outside (see #18 and tests/bridge)")


@check(127, "SHOULD", "client traffic encrypted at the HTTP layer (https)")
async def c127(sc: Scope) -> str | None:
    if sc.ctx.target.scheme == "https":
        s, _ = await created(sc, wait_features=False)
        return "served over https"
    raise Skip("the URL is http://; run against the deployment's https URL")


_skip(128, "MUST", "a session started over https is not continued over http",
      "needs the same endpoint over both https and http")
