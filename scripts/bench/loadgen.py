"""Lean load generators: many logged-in sessions over BOSH or over WebSocket (RFC 7395).

Lean on purpose (2 cores shared with both servers): one aiohttp ClientSession with no
connection limit (HTTP/1.1 keep-alive for BOSH), request bodies and WebSocket messages built
with f-strings, what comes back checked with substring searches and one regex, never parsed
into a tree.

:class:`BoshLoad`: each session holds one request. :class:`WsLoad`: each session is one
aiohttp client WebSocket and one reading task, nothing else per connection.

Messages carry ``m<seq>t<perf_counter_ns>`` as their body text; the receiving session
records ``now - t`` when the held response (BOSH) or the WebSocket message (RFC 7395: one
stanza per message) that carries it has been read.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import aiohttp

from servers import PASSWORD, user_name

__all__ = ["BoshLoad", "Session", "WsLoad", "WsSession", "LoginError"]

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
_SID = re.compile(rb"""\bsid=['"]([^'"]+)['"]""")
_MSG = re.compile(rb">m(\d+)t(\d+)<")
_MSG_TEXT = re.compile(r">m(\d+)t(\d+)<")   # the same over a WebSocket text message (str)


class LoginError(Exception):
    pass


@dataclass(slots=True)
class Counters:
    responses: int = 0              # HTTP responses (BOSH) / WebSocket messages read, all phases
    msg_responses: int = 0          # of those, the ones that carried a benchmark message
    received: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)


class Session:
    __slots__ = ("load", "index", "jid", "sid", "rid", "task", "alive")

    def __init__(self, load: "BoshLoad", index: int) -> None:
        self.load = load
        self.index = index
        self.jid = f"{user_name(index)}@{load.domain}"
        self.sid = ""
        self.rid = random.randint(1 << 20, 1 << 40)
        self.task: asyncio.Task[None] | None = None
        self.alive = False

    async def _post(self, data: bytes) -> bytes:
        load = self.load
        async with load.http.post(load.url, data=data, headers=HEADERS) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise LoginError(f"HTTP {resp.status} for {self.jid}: {raw[:200]!r}")
        load.counters.responses += 1
        if b"terminate" in raw and (b"type='terminate'" in raw or b'type="terminate"' in raw):
            raise LoginError(f"session of {self.jid} terminated: {raw[:300]!r}")
        return raw

    async def post(self, payload: str = "", attrs: str = "") -> bytes:
        self.rid += 1
        body = f"<body rid='{self.rid}' sid='{self.sid}' xmlns='{NS_HTTPBIND}'{attrs}>{payload}</body>"
        return await self._post(body.encode())

    async def _until(self, raw: bytes, needle: bytes, what: str, fail: bytes | None = None) -> bytes:
        """Poll with empty bodies until a response contains ``needle``."""
        for _ in range(20):
            if needle in raw:
                return raw
            if fail is not None and fail in raw:
                raise LoginError(f"{what} failed for {self.jid}: {raw[:300]!r}")
            raw = await self.post()
        raise LoginError(f"no {what} for {self.jid}")

    async def login(self) -> None:
        """Creation, SASL PLAIN, restart, bind, initial presence (XEP-0206 §§3-6)."""
        load = self.load
        self.rid += 1
        create = (f"<body content='text/xml; charset=utf-8' hold='1' rid='{self.rid}' "
                  f"to='{load.domain}' ver='1.6' wait='{load.wait}' xml:lang='en' "
                  f"xmlns='{NS_HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>")
        raw = await self._post(create.encode())
        m = _SID.search(raw)
        if m is None:
            raise LoginError(f"no sid for {self.jid}: {raw[:300]!r}")
        self.sid = m.group(1).decode()
        raw = await self._until(raw, b"mechanisms", "stream features")
        cred = base64.b64encode(f"\0{user_name(self.index)}\0{PASSWORD}".encode()).decode()
        raw = await self.post(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")
        await self._until(raw, b"<success", "SASL", fail=b"<failure")
        raw = await self.post(attrs=f" to='{load.domain}' xml:lang='en' xmpp:restart='true' "
                                    "xmlns:xmpp='urn:xmpp:xbosh'")
        raw = await self._until(raw, b"xmpp-bind", "bind feature")
        raw = await self.post("<iq type='set' id='bind1' xmlns='jabber:client'><bind "
                              "xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource>"
                              "</bind></iq>")
        raw = await self._until(raw, b"<jid", "bind result", fail=b"type='error'")
        raw = await self.post("<presence xmlns='jabber:client'/>")
        # RFC 6121 §4.2.2: the server echoes initial presence to the user's own resources.
        await self._until(raw, b"<presence", "presence echo")
        self.alive = True

    async def abort(self) -> None:
        """After a failed login: nothing of its own to release (the connection is pooled)."""

    async def hold(self) -> None:
        """Keep one request held; record every benchmark message that comes back."""
        load = self.load
        try:
            while True:
                raw = await self.post()
                if b">m" in raw:
                    load.record(_MSG.finditer(raw))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dead session loses its messages: reported as lost
            self.alive = False
            load.counters.errors.append(f"{self.jid}: {exc!r}"[:300])


NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
_ERROR_TYPE = ("type='error'", 'type="error"')
_CLOSED = ("<close", "<stream:error")


class WsSession:
    """One RFC 7395 session: an aiohttp client WebSocket and, once logged in, one task.

    Nothing else per connection (the JID is derived when an error needs it): thousands of
    these live in one process next to the servers being measured.
    """

    __slots__ = ("load", "index", "ws", "task", "alive")

    def __init__(self, load: "WsLoad", index: int) -> None:
        self.load = load
        self.index = index
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.alive = False

    @property
    def jid(self) -> str:
        return f"{user_name(self.index)}@{self.load.domain}"

    async def _recv(self) -> str:
        assert self.ws is not None
        msg = await self.ws.receive()
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise LoginError(f"WebSocket {msg.type.name} for {self.jid}: {msg.data!r}"[:300])
        self.load.counters.responses += 1
        return msg.data

    async def _until(self, needle: str, what: str, fail: tuple[str, ...] = ()) -> str:
        """Read messages until one contains ``needle`` (a stream error or close fails)."""
        for _ in range(20):
            raw = await self._recv()
            if needle in raw:
                if any(f in raw for f in fail):
                    raise LoginError(f"{what} failed for {self.jid}: {raw[:300]!r}")
                return raw
            if any(f in raw for f in fail) or any(c in raw for c in _CLOSED):
                raise LoginError(f"{what} failed for {self.jid}: {raw[:300]!r}")
        raise LoginError(f"no {what} for {self.jid}")

    async def login(self) -> None:
        """Handshake (subprotocol ``xmpp``), <open/>, SASL PLAIN, restart by a new <open/>,
        bind, session if the server requires it, initial presence (RFC 7395 §§3.3-3.4)."""
        load = self.load
        async with asyncio.timeout(load.login_timeout):
            self.ws = ws = await load.http.ws_connect(
                load.url, protocols=("xmpp",), compress=0, autoping=True, heartbeat=None,
                max_msg_size=load.max_msg_size)
            if ws.protocol != "xmpp":
                raise LoginError(f"server did not accept subprotocol xmpp ({ws.protocol!r})")
            await ws.send_str(load.open_text)
            await self._until("mechanisms", "stream features")
            cred = base64.b64encode(f"\0{user_name(self.index)}\0{PASSWORD}".encode()).decode()
            await ws.send_str(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>")
            await self._until("<success", "SASL", fail=("<failure",))
            await ws.send_str(load.open_text)           # stream restart (RFC 7395 §3.5)
            features = await self._until("xmpp-bind", "bind feature")
            await ws.send_str("<iq type='set' id='bind1' xmlns='jabber:client'><bind "
                              "xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource>"
                              "</bind></iq>")
            await self._until("<jid", "bind result", fail=_ERROR_TYPE)
            if _session_required(features):             # RFC 3921 session, unless <optional/>
                await ws.send_str(f"<iq type='set' id='sess1' xmlns='jabber:client'>"
                                  f"<session xmlns='{NS_SESSION}'/></iq>")
                await self._until("sess1", "session", fail=_ERROR_TYPE)
            await ws.send_str("<presence xmlns='jabber:client'/>")
            # RFC 6121 §4.2.2: the server echoes initial presence to the user's own resources.
            await self._until("<presence", "presence echo")
        self.alive = True

    async def hold(self) -> None:
        """Read every message; record every benchmark message."""
        ws = self.ws
        assert ws is not None
        load = self.load
        counters = load.counters
        text = aiohttp.WSMsgType.TEXT
        try:
            while True:
                msg = await ws.receive()    # pings are answered inside (autoping)
                if msg.type is not text:
                    raise LoginError(f"WebSocket {msg.type.name}: {msg.data!r} "
                                     f"(close code {ws.close_code})"[:300])
                counters.responses += 1
                data: str = msg.data
                if ">m" in data:
                    load.record(_MSG_TEXT.finditer(data))
                elif "<close" in data or "<stream:error" in data:
                    raise LoginError(f"server ended the stream: {data[:300]!r}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dead session loses its messages: reported as lost
            self.alive = False
            counters.errors.append(f"{self.jid}: {exc!r}"[:300])

    async def abort(self, polite: bool = False) -> None:
        """Close the socket; ``polite``: an RFC 7395 <close/> first (the server answers one)."""
        ws, self.ws = self.ws, None
        if ws is None:
            return
        try:
            if polite and not ws.closed:
                await ws.send_str(self.load.close_text)
            await ws.close()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, RuntimeError):
            pass


def _session_required(features: str) -> bool:
    """True when <stream:features> offers an RFC 3921 session without <optional/> inside."""
    i = features.find(NS_SESSION)
    if i < 0:
        return False
    end = features.find("</session>", i)
    return end < 0 or "optional" not in features[i:end]


class _Load:
    """What both load generators share: counters, received messages, logging in N sessions."""

    session_class: type
    login_errors: tuple[type[BaseException], ...] = (LoginError, aiohttp.ClientError,
                                                     asyncio.TimeoutError)

    def __init__(self, url: str, domain: str) -> None:
        self.url = url
        self.domain = domain
        self.counters = Counters()
        self.seen: dict[int, int] = {}        # seq -> latency ns
        self.progress = asyncio.Event()
        self.last_recv_ns = 0
        self.sessions: list = []

    async def login_all(self, count: int, concurrency: int, on_done: "Callable[[int], None] | None" = None
                        ) -> list[float]:
        """Log in ``count`` sessions, ``concurrency`` at a time; returns each login's seconds.

        A logged-in session immediately starts holding a request (BOSH) / reading (WebSocket).
        """
        durations: list[float] = []
        queue = iter(range(count))
        failures: list[str] = []
        cls = self.session_class

        async def worker() -> None:
            for i in queue:
                s = cls(self, i)
                t0 = time.perf_counter()
                try:
                    await s.login()
                except self.login_errors as exc:
                    failures.append(f"{s.jid}: {exc!r}"[:300])
                    await s.abort()
                    if len(failures) > 10:
                        return
                    continue
                durations.append(time.perf_counter() - t0)
                self.sessions.append(s)
                s.task = asyncio.get_running_loop().create_task(s.hold())
                if on_done is not None:
                    on_done(len(self.sessions))

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        if failures:
            raise LoginError(f"{len(failures)} login(s) failed, first: {failures[0]}")
        return durations

    def record(self, matches: Iterable[re.Match[Any]]) -> None:
        """Record the benchmark messages (``_MSG``/``_MSG_TEXT`` matches) of one response or
        WebSocket message just read: latency ``now - t`` per new ``seq``, repeats counted."""
        now = time.perf_counter_ns()
        counters = self.counters
        seen = self.seen
        found = False
        for m in matches:
            seq = int(m.group(1))
            if seq in seen:
                counters.duplicates += 1
                continue
            seen[seq] = now - int(m.group(2))
            found = True
        if found:
            self.last_recv_ns = now
            counters.msg_responses += 1
            counters.received = len(seen)
            self.progress.set()

    def alive(self) -> int:
        return sum(1 for s in self.sessions if s.alive and s.task is not None and not s.task.done())

    async def wait_received(self, total: int, timeout: float) -> bool:
        """Until ``total`` distinct messages arrived, or ``timeout`` seconds without progress."""
        while len(self.seen) < total:
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def _cancel_tasks(self) -> None:
        tasks = [s.task for s in self.sessions if s.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class BoshLoad(_Load):
    """N BOSH sessions against one endpoint."""

    session_class = Session

    def __init__(self, url: str, domain: str, *, wait: int = 60) -> None:
        super().__init__(url, domain)
        self.wait = wait
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None,
                                         enable_cleanup_closed=False, keepalive_timeout=wait + 60)
        self.http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=wait + 30),
            skip_auto_headers=("User-Agent", "Accept-Encoding"), auto_decompress=False)

    async def close(self) -> None:
        await self._cancel_tasks()
        await self.http.close()


class WsLoad(_Load):
    """N RFC 7395 sessions against one ``ws://`` endpoint (one aiohttp ClientSession)."""

    session_class = WsSession

    def __init__(self, url: str, domain: str, *, login_timeout: float = 60,
                 max_msg_size: int = 1 << 20) -> None:
        super().__init__(url, domain)
        self.login_timeout = login_timeout
        self.max_msg_size = max_msg_size
        self.open_text = f"<open xmlns='{NS_FRAMING}' to='{domain}' version='1.0' xml:lang='en'/>"
        self.close_text = f"<close xmlns='{NS_FRAMING}'/>"
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None,
                                         enable_cleanup_closed=False)
        # No total timeout: it would cut long-lived sockets; each login has its own deadline.
        self.http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        await self._cancel_tasks()
        await asyncio.gather(*(s.abort(polite=True) for s in self.sessions), return_exceptions=True)
        await self.http.close()
