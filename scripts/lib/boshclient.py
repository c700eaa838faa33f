"""A small black-box BOSH (XEP-0124 + XEP-0206) test client on aiohttp.

The one BOSH client of the tests and the scripts (``tests/support/boshclient.py`` re-exports
it); its login steps (SASL with the product's sans-IO :mod:`bosh.sasl`, restart, bind) are
:class:`scripts.lib.xmpplogin.LoginSteps`, which the WebSocket client takes too.

HTTP only: it knows nothing of bosh-cm internals, so the same tests run against Prosody's
own ``/http-bind``. Every response is parsed strictly (namespace-aware, non-recovering, no
DTD, no entities) and must have ``{http://jabber.org/protocol/httpbind}body`` as its root.

Model: the client keeps up to ``requests`` HTTP requests in flight, like Strophe.js. Payload
children of every response go, in rid order, to an inbox; :meth:`BoshClient.wait_for` keeps
one empty request held at the CM (a long poll) until a matching element arrives or a deadline
passes. A request still held at the deadline is not abandoned: the next wait reuses it, so
nothing the CM sends is lost.

    async with BoshClient(url) as c:
        await c.create("localhost")
        await c.login("alice", "pw", mechanism="SCRAM-SHA-1")   # SASL, restart, bind
        await c.send_presence()
        msg = await c.wait_for(is_message(body="hi"))

Passwords are never logged or put into exception messages.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import aiohttp
from lxml import etree

from bosh import sasl
from scripts.lib.xmpplogin import (NS_BIND, NS_CLIENT, NS_SASL, NS_STREAM, NS_XBOSH, NS_XML,
                                   LoginSteps, SaslFailure, attr_name, bind_resource,
                                   sasl_exchange, strict_parser)

__all__ = [
    "NS_HTTPBIND", "NS_XBOSH", "NS_STREAM", "NS_CLIENT", "NS_SASL", "NS_BIND", "NS_STANZAS",
    "NS_STREAMS_ERR", "NS_XML", "Predicate", "BoshResponse", "BoshClient", "BoshTerminated", "BoshProtocolError", "SaslFailure",
    "parse_body", "is_tag", "is_message", "is_presence", "scram_sha1_client", "sasl_exchange",
    "bind_resource",
    "BODY", "FEATURES",
]

log = logging.getLogger("tests.boshclient")

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"

BODY = f"{{{NS_HTTPBIND}}}body"
FEATURES = f"{{{NS_STREAM}}}features"

Predicate = Callable[[etree._Element], bool]


class BoshProtocolError(AssertionError):
    """The endpoint answered something that is not a valid BOSH response."""


class BoshTerminated(Exception):
    """The session ended (a ``type='terminate'`` body) while we waited for something else."""

    def __init__(self, response: "BoshResponse") -> None:
        super().__init__(f"session terminated: condition={response.condition!r}")
        self.response = response


def parse_body(raw: bytes) -> etree._Element:
    """Parse one response strictly; raise :class:`BoshProtocolError` unless it is a ``<body/>``."""
    try:
        root = etree.fromstring(raw, strict_parser())
    except etree.XMLSyntaxError as exc:
        raise BoshProtocolError(f"response is not well-formed XML ({exc}): {raw[:300]!r}") from None
    if root.getroottree().docinfo.doctype:
        raise BoshProtocolError("response carries a DOCTYPE (XEP-0124 §6)")
    if root.tag != BODY:
        raise BoshProtocolError(f"response root is {root.tag}, not {BODY}")
    return root


@dataclass
class BoshResponse:
    """One HTTP response carrying a ``<body/>``."""

    status: int
    headers: Mapping[str, str]
    raw: bytes
    body: etree._Element
    rid: int | None = None
    elapsed: float = 0.0

    @property
    def attrs(self) -> dict[str, str]:
        return dict(self.body.attrib)

    def get(self, name: str, default: str | None = None) -> str | None:
        """An attribute by Clark name or plain name; ``xmpp:x`` / ``xml:x`` shorthands work too."""
        return self.body.get(attr_name(name), default)

    @property
    def type(self) -> str | None:
        return self.body.get("type")

    @property
    def condition(self) -> str | None:
        return self.body.get("condition")

    @property
    def terminated(self) -> bool:
        return self.body.get("type") == "terminate"

    @property
    def children(self) -> list[etree._Element]:
        return [c for c in self.body if isinstance(c.tag, str)]

    @property
    def features(self) -> etree._Element | None:
        return self.body.find(FEATURES)

    def __repr__(self) -> str:
        return f"<BoshResponse rid={self.rid} status={self.status} {self.raw[:200]!r}>"


# ---------------------------------------------------------------------- predicates
def is_tag(ns: str, name: str) -> Predicate:
    tag = f"{{{ns}}}{name}"
    return lambda el: el.tag == tag


def is_message(body: str | None = None, from_: str | None = None) -> Predicate:
    def pred(el: etree._Element) -> bool:
        if el.tag != f"{{{NS_CLIENT}}}message":
            return False
        if body is not None and el.findtext(f"{{{NS_CLIENT}}}body") != body:
            return False
        if from_ is not None and not (el.get("from") or "").startswith(from_):
            return False
        return True
    return pred


def is_presence(from_: str | None = None, type_: str | None = None) -> Predicate:
    def pred(el: etree._Element) -> bool:
        return (el.tag == f"{{{NS_CLIENT}}}presence"
                and (from_ is None or (el.get("from") or "").startswith(from_))
                and el.get("type") == type_)
    return pred


# ---------------------------------------------------------------------- SASL (RFC 6120 §6.4)
def scram_sha1_client(username: str, password: str, nonce: str | None = None) -> sasl.Scram:
    """A SCRAM-SHA-1 client exchange: the product's :class:`bosh.sasl.Scram` (kept under this
    name for older imports; there is one SCRAM implementation)."""
    return sasl.Scram("SCRAM-SHA-1", username, password, nonce=nonce)


# ---------------------------------------------------------------------- the client
@dataclass
class _Sent:
    rid: int
    task: "asyncio.Task[BoshResponse]"


@dataclass
class BoshClient(LoginSteps):
    """One BOSH session over raw HTTP POSTs. Use as an async context manager. The login
    steps (``auth``, ``login``, ``bind``, ``iq``, ``send_message``, ...) are
    :class:`~scripts.lib.xmpplogin.LoginSteps`, over :meth:`send_element` and :meth:`wait_for`."""

    protocol_error = BoshProtocolError
    iq_prefix = "t"

    url: str
    origin: str | None = None
    http: aiohttp.ClientSession | None = None
    headers: dict[str, str] = field(default_factory=dict)
    sid: str | None = None
    rid: int = 0
    wait: int = 0
    hold: int = 1
    requests: int = 2
    creation: BoshResponse | None = None
    features: etree._Element | None = None
    jid: str | None = None
    terminated: BoshResponse | None = None
    inbox: list[etree._Element] = field(default_factory=list)
    responses: list[BoshResponse] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._own_http = self.http is None
        self._inflight: list[_Sent] = []
        self._done: dict[int, BoshResponse | BaseException] = {}
        self._next_to_deliver = 0
        self._changed = asyncio.Event()
        self._gen = 0
        self._ids = itertools.count(1)
        self.to: str | None = None
        self.error: BaseException | None = None

    async def __aenter__(self) -> "BoshClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _session(self) -> aiohttp.ClientSession:
        if self.http is None:
            self.http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                connector=aiohttp.TCPConnector(limit=0, force_close=False))
        return self.http

    # ------------------------------------------------------------------ raw HTTP
    async def post_raw(self, data: bytes | str, headers: Mapping[str, str] | None = None,
                       timeout: float | None = None) -> BoshResponse:
        """POST ``data`` as is and parse the response strictly (any HTTP status)."""
        if isinstance(data, str):
            data = data.encode()
        hdrs = {"Content-Type": "text/xml; charset=utf-8", **self.headers}
        if self.origin:
            hdrs["Origin"] = self.origin
        hdrs.update(headers or {})
        to = timeout if timeout is not None else max(self.wait, 60) + 15
        start = time.monotonic()
        async with self._session().post(self.url, data=data, headers=hdrs,
                                        timeout=aiohttp.ClientTimeout(total=to)) as resp:
            raw = await resp.read()
            status, rh = resp.status, resp.headers
        if status != 200:
            # legacy error codes (§17.1) may come without a body
            try:
                body = parse_body(raw)
            except BoshProtocolError:
                body = etree.Element(BODY, type="terminate", condition=f"http-{status}")
        else:
            body = parse_body(raw)
        return BoshResponse(status, rh, raw, body, elapsed=time.monotonic() - start)

    def build(self, payload: bytes | str = b"", **attrs: Any) -> bytes:
        """Serialize a request ``<body/>``. Attribute names: ``xmpp_restart`` -> ``xmpp:restart``,
        ``xml_lang`` -> ``xml:lang``; ``None`` values are left out."""
        if isinstance(payload, bytes):
            payload = payload.decode()
        parts = [f"<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}'"]
        for k, v in attrs.items():
            if v is None:
                continue
            name = k.replace("xmpp_", "xmpp:", 1) if k.startswith("xmpp_") else (
                "xml:lang" if k == "xml_lang" else k.rstrip("_"))
            val = str(v).replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")
            parts.append(f" {name}='{val}'")
        if payload:
            return ("".join(parts) + ">" + payload + "</body>").encode()
        return ("".join(parts) + "/>").encode()

    # ------------------------------------------------------------------ session creation
    async def create(self, to: str, wait: int = 10, hold: int = 1, ver: str | None = "1.6",
                     rid: int | None = None, lang: str = "en", content: str | None = None,
                     xmpp_version: str | None = "1.0", **extra: Any) -> BoshResponse:
        """Session creation request (XEP-0124 §7.1, XEP-0206 §3); remembers sid and limits.

        Waits (with the session's own held requests) for ``<stream:features/>`` if the
        creation response did not carry them (XEP-0206 §4 allows a later response).
        """
        self.rid = rid if rid is not None else secrets.randbelow(2**40) + 1_000_000
        self.to = to
        data = self.build(rid=self.rid, to=to, xml_lang=lang, wait=wait, hold=hold, ver=ver,
                          content=content, xmpp_version=xmpp_version, **extra)
        resp = await self.post_raw(data, timeout=wait + 15)
        resp.rid = self.rid
        self.creation = resp
        self.responses.append(resp)
        self._next_to_deliver = self.rid + 1
        if resp.terminated or resp.status != 200:
            self.terminated = resp
            return resp
        self.sid = resp.get("sid")
        if not self.sid:
            raise BoshProtocolError(f"creation response without sid: {resp.raw!r}")
        self.wait = int(resp.get("wait") or wait)
        self.hold = int(resp.get("hold") or hold)
        self.requests = int(resp.get("requests") or self.hold + 1)
        self.inbox.extend(c for c in resp.children if c.tag != FEATURES)
        self.features = resp.features
        if self.features is None:
            self.features = await self.wait_for(lambda e: e.tag == FEATURES, timeout=wait + 5)
        return resp

    # ------------------------------------------------------------------ requests in a session
    async def post(self, payload: bytes | str = b"", **attrs: Any) -> "asyncio.Task[BoshResponse]":
        """Send one request (next rid) without waiting for its answer; at most ``requests``
        in flight (waits for a free slot). Payload children of the answer go to the inbox."""
        if self.terminated is not None:
            raise BoshTerminated(self.terminated)
        if self.sid is None:
            raise RuntimeError("no session: call create() first")
        while len(self._inflight) >= self.requests:
            await self._wait_change(self._mark(), None)
        self.rid += 1
        rid = self.rid
        data = self.build(payload, rid=rid, sid=self.sid, **attrs)
        task = asyncio.ensure_future(self._request(rid, data))
        self._inflight.append(_Sent(rid, task))
        return task

    async def send(self, payload: bytes | str = b"", **attrs: Any) -> BoshResponse:
        """Send one request and wait for its own answer (which the CM may hold up to 'wait')."""
        return await (await self.post(payload, **attrs))

    async def _request(self, rid: int, data: bytes) -> BoshResponse:
        try:
            resp = await self.post_raw(data)
            resp.rid = rid
            self._done[rid] = resp
            return resp
        except BaseException as exc:
            self._done[rid] = exc
            if not isinstance(exc, asyncio.CancelledError):
                self.error = exc
            raise
        finally:
            self._inflight = [s for s in self._inflight if s.rid != rid]
            self._deliver()
            self._gen += 1
            ev, self._changed = self._changed, asyncio.Event()
            ev.set()

    def _deliver(self) -> None:
        # Deliver payloads in rid order (XEP-0124 §8: responses carry data in rid order).
        while self._next_to_deliver in self._done:
            item = self._done.pop(self._next_to_deliver)
            self._next_to_deliver += 1
            if isinstance(item, BaseException):
                continue
            self.responses.append(item)
            if item.terminated or item.status != 200:
                self.terminated = self.terminated or item
            self.inbox.extend(item.children)

    def _mark(self) -> tuple[int, asyncio.Event]:
        return self._gen, self._changed

    async def _wait_change(self, mark: tuple[int, asyncio.Event], deadline: float | None) -> None:
        """Return once a request completed after ``mark`` was taken, or at the deadline."""
        gen, ev = mark
        if gen != self._gen:
            return
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _check_failed(self) -> None:
        if self.terminated is not None:
            raise BoshTerminated(self.terminated)
        if self.error is not None:
            raise BoshProtocolError(f"a request failed: {self.error!r}") from self.error

    async def wait_for(self, pred: Predicate, timeout: float = 10.0) -> etree._Element:
        """Wait for an inbox element matching ``pred`` (removed from the inbox), keeping one
        empty request held at the CM. Raises :class:`BoshTerminated` if the session ends
        and ``TimeoutError`` at the deadline (without abandoning the held request)."""
        deadline = time.monotonic() + timeout
        while True:
            mark = self._mark()
            for i, el in enumerate(self.inbox):
                if pred(el):
                    return self.inbox.pop(i)
            self._check_failed()
            if time.monotonic() >= deadline:
                got = [etree.QName(e).localname for e in self.inbox]
                raise TimeoutError(f"nothing matching within {timeout}s; inbox has {got}")
            if not self._inflight:
                await self.post()
            await self._wait_change(mark, deadline)

    async def wait_terminate(self, timeout: float = 10.0) -> BoshResponse:
        """Keep polling until a ``type='terminate'`` response arrives; return it."""
        deadline = time.monotonic() + timeout
        while self.terminated is None:
            mark = self._mark()
            if self.error is not None:
                raise BoshProtocolError(f"a request failed: {self.error!r}") from self.error
            if time.monotonic() >= deadline:
                raise TimeoutError(f"session not terminated within {timeout}s")
            if not self._inflight:
                await self.post()
            await self._wait_change(mark, deadline)
        return self.terminated

    # ------------------------------------------------------------------ XMPP (LoginSteps)
    async def send_element(self, data: str) -> "asyncio.Task[BoshResponse]":
        """One element in the next request, without waiting for its answer (:meth:`post`)."""
        return await self.post(data)

    async def restart(self, timeout: float = 10) -> etree._Element:
        """Stream restart (XEP-0206 §5): xmpp:restart='true'; returns the new features."""
        await self.post(b"", xmpp_restart="true", to=self.to, xml_lang="en")
        self.features = await self.wait_for(lambda e: e.tag == FEATURES, timeout)
        return self.features

    async def terminate(self, payload: str = "", timeout: float = 5) -> BoshResponse | None:
        """type='terminate' (XEP-0124 §13) and wait for the in-flight requests to end."""
        if self.sid is None or self.terminated is not None:
            return self.terminated
        task = await self.post(payload, type="terminate")
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except (asyncio.TimeoutError, aiohttp.ClientError):
            return None

    async def close(self) -> None:
        """Terminate (best effort), cancel whatever is still in flight, close HTTP."""
        try:
            if self.sid is not None and self.terminated is None:
                await self.terminate(f"<presence xmlns='{NS_CLIENT}' type='unavailable'/>")
        except Exception as exc:  # noqa: BLE001 - cleanup must not mask the test's outcome
            log.debug("terminate during close failed: %r", exc)
        pending = [s.task for s in self._inflight]
        if pending:
            done, still = await asyncio.wait(pending, timeout=2)
            for t in still:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._own_http and self.http is not None:
            await self.http.close()
            self.http = None
