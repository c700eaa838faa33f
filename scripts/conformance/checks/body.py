"""Checklist B. The <body/> wrapper and payload namespaces (§6; 0206 §2): items #10-#18."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any

from lxml import etree

from conformance.client import (CLIENT, FEATURES, NS, SASL, ST, Sess, ensure, is_message, message,
                                short)
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, fail_reasons, localnames


XMPP_TLS = "urn:ietf:params:xml:ns:xmpp-tls"


STANZA_NAMES = ("message", "presence", "iq")


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
