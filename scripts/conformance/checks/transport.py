"""Checklist A. HTTP transport (§5, §7.1, §17.1, §18.1): items #1-#9."""

from __future__ import annotations

import secrets

from conformance.client import DEFAULT_CT, Fail, Skip, bogus_auth, ensure, is_message, message
from conformance.rawhttp import Conn
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created, fail_reasons


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
