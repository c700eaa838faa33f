"""BOSH client side of the conformance checker: strict parsing, exchange recording, sessions.

Black-box only: HTTP and XML. Nothing here knows how the endpoint is implemented.
Every HTTP exchange is recorded (:class:`Exchange`) so that whole-run invariants
(Content-Length framing, Content-Type, well-formedness, ...) can be checked at the end.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from lxml import etree

from bosh import sasl  # sans-IO, no I/O: the product's SASL client (one SCRAM)
# The test clients' login steps and XML helpers (standard library, lxml and bosh.sasl only):
# one SASL exchange and one bind for the checker, the BOSH and the WebSocket test clients.
from scripts.lib.xmpplogin import (attr_name, bind_resource, offered_mechanisms, sasl_exchange,
                                   strict_parser)

from .rawhttp import Conn, HttpError, HttpResponse, request

if TYPE_CHECKING:
    from .scope import Ctx

NS = "http://jabber.org/protocol/httpbind"
XB = "urn:xmpp:xbosh"
ST = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"
PING = "urn:xmpp:ping"
XMLNS = "http://www.w3.org/XML/1998/namespace"
BODY = f"{{{NS}}}body"
FEATURES = f"{{{ST}}}features"
DEFAULT_CT = "text/xml; charset=utf-8"

LEGACY_STATUS = {"bad-request": 400, "policy-violation": 403, "item-not-found": 404}

Pred = Callable[[etree._Element], bool]


class Fail(Exception):
    """The check failed; the message says why."""


class Skip(Exception):
    """The check cannot be run against this endpoint; the message says why."""


def ensure(cond: object, msg: str) -> None:
    if not cond:
        raise Fail(msg)


def parse_strict(raw: bytes) -> tuple[etree._Element | None, str | None]:
    """(root, None) for a well-formed ``{NS}body`` document, else (None or root, problem)."""
    try:
        root = etree.fromstring(raw, strict_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        return None, f"not well-formed XML ({exc})"
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        return root, "carries a DOCTYPE"
    if root.tag != BODY:
        return root, f"root element is {root.tag}, not {BODY}"
    return root, None


def short(raw: bytes | str, n: int = 220) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    raw = " ".join(raw.split())
    return raw if len(raw) <= n else raw[:n] + "..."


def xq(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


@dataclass
class BoshResp:
    """One answered request."""

    http: HttpResponse
    el: etree._Element | None
    problem: str | None
    rid: int | None = None

    @property
    def status(self) -> int:
        return self.http.status

    @property
    def raw(self) -> bytes:
        return self.http.body

    def get(self, name: str, default: str | None = None) -> str | None:
        """An attribute; ``xmpp:x`` / ``xml:x`` shorthands work too."""
        return default if self.el is None else self.el.get(attr_name(name), default)

    @property
    def attrs(self) -> dict[str, str]:
        return dict(self.el.attrib) if self.el is not None else {}

    @property
    def type(self) -> str | None:
        return self.get("type")

    @property
    def condition(self) -> str | None:
        return self.get("condition")

    @property
    def terminated(self) -> bool:
        return self.status != 200 or self.type == "terminate"

    @property
    def children(self) -> list[etree._Element]:
        return [c for c in self.el if isinstance(c.tag, str)] if self.el is not None else []

    @property
    def features(self) -> etree._Element | None:
        return self.el.find(FEATURES) if self.el is not None else None

    @property
    def start_tag(self) -> bytes:
        raw = self.raw.lstrip()
        if raw.startswith(b"<?xml"):
            raw = raw[raw.index(b"?>") + 2:].lstrip()
        end = raw.find(b">")
        return raw[: end + 1] if end >= 0 else raw

    def is_term(self, condition: str | None, legacy_ok: bool = True) -> bool:
        """A terminal answer with ``condition`` (HTTP 200 body, or the legacy HTTP code)."""
        if self.status == 200:
            return self.type == "terminate" and self.condition == condition
        return legacy_ok and condition is not None and LEGACY_STATUS.get(condition) == self.status

    def is_empty(self) -> bool:
        return self.status == 200 and not self.children and self.type is None

    def describe(self) -> str:
        return f"HTTP {self.status} {short(self.raw)}"


@dataclass
class Exchange:
    """One HTTP request and what came back (for the whole-run invariants)."""

    check: str
    kind: str                       # create | req | raw | other
    req_headers: dict[str, str]
    req_body: bytes
    legacy: bool                    # the session's creation request had no 'ver'
    expect_ct: str | None           # Content-Type every response must carry (#6/#7)
    resp: HttpResponse | None = None
    el: etree._Element | None = None
    problem: str | None = None
    error: str | None = None
    abandoned: bool = False         # we gave up on it on purpose (cancelled)


def term_attrs(r: BoshResp) -> str:
    return f"type={r.type!r} condition={r.condition!r} status={r.status}"


@dataclass
class Sess:
    """One BOSH session driven by a check. Use through ``Scope.sess()`` so it gets closed."""

    ctx: "Ctx"
    check: str
    sid: str | None = None
    rid: int = 0                      # the highest rid used so far
    creation: BoshResp | None = None
    wait: int = 0
    hold: int = 1
    requests: int = 2
    polling: int | None = None
    inactivity: int | None = None
    content: str | None = None
    legacy: bool = False
    features: etree._Element | None = None
    jid: str | None = None
    terminated: BoshResp | None = None
    dead_probed: bool = False
    inbox: list[etree._Element] = field(default_factory=list)
    responses: list[BoshResp] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    accept_encoding: str | None = None   # sent on every request when set

    # ------------------------------------------------------------------ building
    def build(self, payload: str | bytes = "", attrs: Mapping[str, Any] | None = None, **kw: Any) -> bytes:
        """A request ``<body/>``. Keyword names: ``xmpp_restart`` -> ``xmpp:restart``,
        ``xml_lang`` -> ``xml:lang``, trailing ``_`` dropped (``from_``, ``type_``); values
        ``None`` are left out. ``attrs`` takes literal attribute names."""
        if isinstance(payload, bytes):
            payload = payload.decode()
        items: list[tuple[str, Any]] = []
        for k, v in kw.items():
            if k.startswith("xmpp_"):
                k = "xmpp:" + k[5:]
            elif k == "xml_lang":
                k = "xml:lang"
            items.append((k.rstrip("_"), v))
        items.extend((attrs or {}).items())
        head = f"<body xmlns='{NS}' xmlns:xmpp='{XB}'"
        for k, v in items:
            if v is None:
                continue
            head += f" {k}='{xq(str(v))}'"
        return (head + ">" + payload + "</body>").encode() if payload else (head + "/>").encode()

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    # ------------------------------------------------------------------ transport
    async def post(self, data: bytes, *, kind: str = "req", headers: Mapping[str, str] | None = None,
                   timeout: float | None = None, version: str = "1.1", conn: Conn | None = None,
                   rid: int | None = None, collect: bool = True, keep_alive: bool = False) -> BoshResp:
        hdrs = {"Content-Type": "text/xml; charset=utf-8"}
        if self.accept_encoding:
            hdrs["Accept-Encoding"] = self.accept_encoding
        hdrs.update(headers or {})
        hdrs = {k: v for k, v in hdrs.items() if v is not None}
        ex = Exchange(self.check, kind, dict(hdrs), data, self.legacy,
                      self.content or DEFAULT_CT if kind != "other" else None)
        self.ctx.exchanges.append(ex)
        to = timeout if timeout is not None else max(self.wait, self.ctx.wait) + 10
        try:
            resp = await request(self.ctx.target, data, hdrs, timeout=to, version=version, conn=conn,
                                 keep_alive=keep_alive)
        except asyncio.CancelledError:
            ex.abandoned = True
            raise
        except HttpError as exc:
            ex.error = str(exc)
            raise Fail(f"request failed: {exc}") from None
        ex.resp = resp
        el, problem = parse_strict(resp.body) if (resp.status == 200 or resp.body.strip()) else (None, None)
        if resp.status != 200 and problem:
            el, problem = None, None  # a legacy error status may come with any body
        ex.el, ex.problem = el, problem
        if resp.decode_error:
            raise Fail(resp.decode_error)
        if resp.status == 200 and problem:
            raise Fail(f"response {problem}: {short(resp.body)}")
        r = BoshResp(resp, el, problem, rid)
        self.responses.append(r)
        if r.terminated and self.terminated is None:
            self.terminated = r
        if collect:
            self.inbox.extend(r.children)
        return r

    async def create(self, *, headers: Mapping[str, str] | None = None, timeout: float | None = None,
                     version: str = "1.1", conn: Conn | None = None, keep_alive: bool = False,
                     wait_features: bool = True, attrs: Mapping[str, Any] | None = None,
                     **kw: Any) -> BoshResp:
        """CREATE (checklist §0.1). Defaults: to=domain, xml:lang='en', ver='1.11',
        wait=ctx.wait, hold=1, xmpp:version='1.0', a random rid. ``None`` drops one."""
        ctx = self.ctx
        base: dict[str, Any] = {"rid": secrets.randbelow(2**40) + 10**6, "to": ctx.domain, "xml_lang": "en",
                                "ver": "1.11", "wait": ctx.wait, "hold": 1, "xmpp_version": "1.0"}
        base.update(kw)
        self.rid = int(base["rid"]) if str(base.get("rid", "")).isdigit() else 0
        self.legacy = base.get("ver") is None
        self.content = base.get("content")
        data = self.build("", attrs, **base)
        r = await self.post(data, kind="create", headers=headers, version=version, conn=conn,
                            timeout=timeout if timeout is not None else int(base.get("wait") or 0) + 15,
                            rid=self.rid, keep_alive=keep_alive)
        self.creation = r
        if r.terminated:
            return r
        self.sid = r.get("sid")
        if not self.sid:
            raise Fail(f"creation response without sid: {r.describe()}")
        self.wait = _int(r.get("wait"), int(base.get("wait") or 0))
        self.hold = _int(r.get("hold"), int(base.get("hold") or 1))
        self.requests = _int(r.get("requests"), self.hold + 1)
        self.polling = _int(r.get("polling"), None)
        self.inactivity = _int(r.get("inactivity"), None)
        self.features = r.features
        if self.features is not None:
            self.inbox = [c for c in self.inbox if c.tag != FEATURES]
        elif wait_features and self.hold > 0 and self.wait > 0:
            self.features = await self.poll_until(lambda e: e.tag == FEATURES, self.wait + 5)
        return r

    async def req(self, payload: str | bytes = "", *, rid: int | None = None,
                  headers: Mapping[str, str] | None = None, timeout: float | None = None,
                  raw: bytes | None = None, attrs: Mapping[str, Any] | None = None,
                  collect: bool = True, conn: Conn | None = None, keep_alive: bool = False,
                  **kw: Any) -> BoshResp:
        """REQ(rid, attrs, payload): the next rid unless ``rid`` is given; sid added."""
        if rid is None:
            rid = self.next_rid()
        else:
            self.rid = max(self.rid, rid)
        data = raw if raw is not None else self.build(payload, attrs, sid=self.sid, rid=rid, **kw)
        return await self.post(data, headers=headers, timeout=timeout, rid=rid, collect=collect,
                               conn=conn, keep_alive=keep_alive)

    def start(self, payload: str | bytes = "", **kw: Any) -> "asyncio.Task[BoshResp]":
        """Send a request in the background (its rid is taken now)."""
        if kw.get("rid") is None and kw.get("raw") is None:
            kw["rid"] = self.next_rid()
        task = asyncio.ensure_future(self.req(payload, **kw))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def is_held(self, task: "asyncio.Task[BoshResp]", seconds: float | None = None) -> bool:
        """True if ``task`` is still unanswered after ``seconds`` (default: the slack)."""
        done, _ = await asyncio.wait([task], timeout=self.ctx.slack if seconds is None else seconds)
        return not done

    async def answered_within(self, task: "asyncio.Task[BoshResp]", seconds: float | None = None) -> BoshResp | None:
        done, _ = await asyncio.wait([task], timeout=self.ctx.slack if seconds is None else seconds)
        return task.result() if done else None

    # ------------------------------------------------------------------ waiting for payloads
    def take(self, pred: Pred) -> etree._Element | None:
        for i, el in enumerate(self.inbox):
            if pred(el):
                return self.inbox.pop(i)
        return None

    async def poll_until(self, pred: Pred, timeout: float) -> etree._Element:
        """Send empty requests one after another until an element matching ``pred`` arrives."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.take(pred)
            if found is not None:
                return found
            if self.terminated is not None:
                raise Fail(f"session ended while waiting: {self.terminated.describe()}")
            left = deadline - time.monotonic()
            if left <= 0:
                names = [etree.QName(e).localname for e in self.inbox]
                raise Fail(f"expected element did not arrive within {timeout:.0f}s (inbox: {names})")
            pending = [t for t in self.tasks if not t.done()]
            if pending:
                # A request is still out: its answer may carry it. Sending another empty one
                # now could be "too frequent" (§11), so wait for that answer first.
                await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                continue
            task = self.start()
            done, _ = await asyncio.wait([task], timeout=left)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                names = [etree.QName(e).localname for e in self.inbox]
                raise Fail(f"expected element did not arrive within {timeout:.0f}s (inbox: {names})")
            task.result()

    async def drain(self, seconds: float) -> list[etree._Element]:
        """Keep one request held for about ``seconds`` and return everything that arrived."""
        deadline = time.monotonic() + seconds
        got: list[etree._Element] = []
        while time.monotonic() < deadline and self.terminated is None:
            task = self.start()
            done, _ = await asyncio.wait([task], timeout=max(0.05, deadline - time.monotonic()))
            if not done:
                # leave it held; the caller's next request releases it
                self._dangling = task
                break
            task.result()
        got.extend(self.inbox)
        self.inbox.clear()
        return got

    # ------------------------------------------------------------------ XMPP
    def mechanisms(self) -> list[str]:
        return offered_mechanisms(self.features)

    async def login(self, user: str, password: str, resource: str | None = None,
                    restart_value: str = "true") -> str:
        """SASL (PLAIN, else SCRAM-SHA-1), restart, bind. Returns the full JID."""
        to = self.ctx.sasl_timeout
        mechs = self.mechanisms()
        if "PLAIN" in mechs:
            mech = "PLAIN"
        elif "SCRAM-SHA-1" in mechs:
            mech = "SCRAM-SHA-1"
        else:
            raise Skip(f"no SASL mechanism we speak (offered: {mechs or 'none'})")
        try:
            await sasl_exchange(sasl.client(mech, user, password), self.req,
                                lambda: self._sasl_result(to), Fail)
        except sasl.SaslError as exc:  # a server answer the mechanism refuses (RFC 5802 §3)
            raise Fail(f"SASL {mech}: {exc}") from None
        r = await self.req("", xmpp_restart=restart_value, to=self.ctx.domain, xml_lang="en")
        self.features = self.take(lambda e: e.tag == FEATURES)
        if self.features is None:
            self.features = await self.poll_until(lambda e: e.tag == FEATURES, to)
        self.restart_resp = r
        ensure(self.features.find(f"{{{BIND}}}bind") is not None,
               f"no <bind/> in the features after the restart: {short(etree.tostring(self.features))}")
        resource = resource or f"conf-{secrets.token_hex(4)}"
        self.jid = await bind_resource(self.iq, self.features, resource, to, Fail)
        return self.jid or ""

    async def _sasl_result(self, timeout: float) -> etree._Element:
        """The next ``<challenge/>`` or ``<success/>``; a ``<failure/>`` fails the check."""
        want = {f"{{{SASL}}}{n}" for n in ("success", "failure", "challenge")}
        el = await self.poll_until(lambda e: e.tag in want, timeout)
        ensure(el.tag != f"{{{SASL}}}failure", f"SASL did not succeed: {short(etree.tostring(el))}")
        return el

    async def iq(self, inner: str, type_: str = "get", to: str | None = None,
                 timeout: float | None = None) -> etree._Element:
        iq_id = "c" + secrets.token_hex(5)
        to_attr = f" to='{xq(to)}'" if to else ""
        await self.req(f"<iq xmlns='{CLIENT}' type='{type_}' id='{iq_id}'{to_attr}>{inner}</iq>")
        return await self.poll_until(lambda e: e.tag == f"{{{CLIENT}}}iq" and e.get("id") == iq_id,
                                     timeout or self.ctx.sasl_timeout)

    # ------------------------------------------------------------------ endings
    async def probe_dead(self, why: str = "") -> tuple[bool, str]:
        """DEAD (checklist §0.1): the next rid must get TERM(item-not-found). Recorded for #89."""
        self.dead_probed = True
        rid = self.rid + 1
        self.rid = rid
        data = self.build("", sid=self.sid, rid=rid)
        task = asyncio.ensure_future(self.post(data, kind="req", rid=rid, collect=False,
                                               timeout=self.ctx.slack + 10))
        done, _ = await asyncio.wait([task], timeout=self.ctx.slack + 1.0)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            ok, detail = False, "the session is still alive: a request after the terminal body was held"
            self.terminated = None
            await self._terminate_quietly()
        else:
            try:
                r = task.result()
            except Fail as exc:
                ok, detail = False, str(exc)
            else:
                ok = r.is_term("item-not-found")
                detail = "" if ok else f"after the terminal body, rid {rid} got {r.describe()}"
                if not ok and not r.terminated:
                    self.terminated = None
                    await self._terminate_quietly()
        self.ctx.dead_probes.append((self.check, ok, (why + ": " if why else "") + detail))
        return ok, detail

    async def _terminate_quietly(self) -> None:
        if not self.sid:
            return
        try:
            await self.post(self.build("", sid=self.sid, rid=self.next_rid(), type="terminate"),
                            kind="req", timeout=5, collect=False)
        except Exception:  # noqa: BLE001 - cleanup
            pass

    async def close(self) -> None:
        pending = [t for t in self.tasks if not t.done()]
        if self.sid and self.terminated is None:
            await self._terminate_quietly()
        elif self.sid and self.terminated is not None and not self.dead_probed and self.ctx.probe_after_term:
            try:
                await self.probe_dead(f"after {self.terminated.condition or self.terminated.status}")
            except Exception:  # noqa: BLE001
                pass
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        for t in list(self.tasks):
            if not t.done():
                t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _int(value: str | None, default: Any) -> Any:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        return default


# ---------------------------------------------------------------------- stanza helpers
def message(to: str, text: str, extra: str = "", id_: str | None = None) -> str:
    mid = id_ or "m" + secrets.token_hex(4)
    return (f"<message xmlns='{CLIENT}' to='{xq(to)}' type='chat' id='{mid}'>"
            f"<body>{xq(text)}</body>{extra}</message>")


def is_message(text: str | None = None) -> Pred:
    def pred(el: etree._Element) -> bool:
        return el.tag == f"{{{CLIENT}}}message" and el.get("type") != "error" and (
            text is None or el.findtext(f"{{{CLIENT}}}body") == text)
    return pred


def bogus_auth() -> str:
    """A SASL <auth/> with a mechanism nobody offers: the server answers <failure/> at once
    and keeps the stream (RFC 6120 §6.4.5). A way to make server data without an account."""
    return f"<auth xmlns='{SASL}' mechanism='X-CONFORMANCE-NONE'>AA==</auth>"


def is_sasl(name: str) -> Pred:
    return lambda el: el.tag == f"{{{SASL}}}{name}"


def ping(domain: str, id_: str) -> str:
    return f"<iq xmlns='{CLIENT}' type='get' to='{xq(domain)}' id='{id_}'><ping xmlns='{PING}'/></iq>"


def is_iq(id_: str) -> Pred:
    return lambda el: el.tag == f"{{{CLIENT}}}iq" and el.get("id") == id_
