"""A small black-box XMPP-over-WebSocket (RFC 7395) test client on aiohttp.

It knows nothing of bosh-cm internals, so the same tests run against Prosody's own
``/xmpp-websocket``. A background reader takes every WebSocket message as it arrives: text
messages are parsed alone and strictly (namespace-aware, non-recovering, no DTD, no
entities) and kept in order in :attr:`WsClient.frames` (the transcript) and, as elements,
in an inbox that :meth:`WsClient.wait_for` searches with a deadline.

    c = WsClient(url)
    await c.connect()                                     # handshake, subprotocol 'xmpp'
    await c.open("localhost")                             # <open/> -> <open/> + features
    await c.login("alice", "pw", mechanism="SCRAM-SHA-1", resource="ws")  # SASL, restart, bind
    await c.send_message("bob@localhost/tcp", "hi")
    msg = await c.wait_for(is_message(body="hi back"))
    await c.close()                                       # <close/> -> <close/>, socket closes

XEP-0198: :meth:`enable` sends ``<enable resume='true'/>``; from the server's ``<enabled/>``
(or ``<resumed/>``) on, the reader counts inbound stanzas in :attr:`h_in` and answers every
``<r/>`` with ``<a h='N'/>``. :meth:`abort` drops the TCP connection without a close frame
(the reader stops first, so :attr:`h_in` is exactly the number of stanzas recorded);
:meth:`resume` sends ``<resume previd h/>`` on a new connection.

Passwords are never logged or put into exception messages.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import aiohttp
from lxml import etree

from scripts.lib.xmpplogin import (NS_BIND, NS_CLIENT, NS_SASL, NS_STREAM, LoginSteps,
                                   SaslFailure, strict_parser)
from tests.support.boshclient import is_message, is_presence, is_tag
from tests.support.rawhttp import read_head

__all__ = [
    "NS_FRAMING", "NS_SM", "NS_STREAMS_ERR", "NS_TLS", "NS_BIND", "NS_CLIENT", "NS_SASL", "NS_STREAM",
    "OPEN", "CLOSE", "FEATURES", "STREAM_ERROR", "CLOSE_TEXT", "WsClient", "WsFrame", "WsClosed",
    "WsProtocolError", "SaslFailure", "HandshakeResult", "raw_handshake", "is_tag", "is_message",
    "is_presence", "stream_error_condition",
]

log = logging.getLogger("tests.wsclient")

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_SM = "urn:xmpp:sm:3"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
#: The server's close element, byte for byte as Strophe.js recognises it (design §10).
CLOSE_TEXT = f'<close xmlns="{NS_FRAMING}" />'

OPEN = f"{{{NS_FRAMING}}}open"
CLOSE = f"{{{NS_FRAMING}}}close"
FEATURES = f"{{{NS_STREAM}}}features"
STREAM_ERROR = f"{{{NS_STREAM}}}error"
STANZAS = frozenset(f"{{{NS_CLIENT}}}{n}" for n in ("message", "presence", "iq"))

Predicate = Callable[[etree._Element], bool]


class WsProtocolError(AssertionError):
    """The endpoint sent something that is not valid RFC 7395 framing."""


class WsClosed(Exception):
    """The WebSocket closed (or the server sent ``<close/>``/``<stream:error/>``) while we
    waited for something else."""

    def __init__(self, client: "WsClient", what: str) -> None:
        super().__init__(f"{what}: stream_error={client.stream_error_condition!r} "
                         f"close_element={client.close_element is not None} "
                         f"close_code={client.close_code!r} closed={client.closed.is_set()}")
        self.client = client


def stream_error_condition(el: etree._Element | None) -> str | None:
    """The defined condition of a ``<stream:error/>`` (its child in the streams namespace)."""
    if el is None:
        return None
    for child in el:
        if isinstance(child.tag, str) and child.tag.startswith(f"{{{NS_STREAMS_ERR}}}") \
                and etree.QName(child).localname != "text":
            return etree.QName(child).localname
    return None


@dataclass
class WsFrame:
    """One WebSocket message from the server, in arrival order."""

    kind: str                      # "text" | "binary"
    data: str | bytes
    element: etree._Element | None = None
    error: str | None = None       # why a text message did not parse as one element
    at: float = field(default_factory=time.monotonic)

    @property
    def tag(self) -> str | None:
        return self.element.tag if self.element is not None else None


@dataclass
class HandshakeResult:
    """The raw HTTP answer to a hand-written upgrade request (see :func:`raw_handshake`)."""

    status: int
    headers: dict[str, str]
    body: bytes


async def raw_handshake(url: str, protocols: str | None = "xmpp", origin: str | None = None,
                        extra: dict[str, str] | None = None, timeout: float = 5.0) -> HandshakeResult:
    """One hand-written WebSocket upgrade request on a fresh TCP connection; returns the HTTP
    status line, headers (lower-case names) and whatever body arrives with the answer. No
    frame is ever sent: a 101 is answered by closing the connection."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    hdrs = {"Host": f"{host}:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13"}
    if protocols is not None:
        hdrs["Sec-WebSocket-Protocol"] = protocols
    if origin is not None:
        hdrs["Origin"] = origin
    hdrs.update(extra or {})
    head = (f"GET {parts.path or '/'} HTTP/1.1\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n")

    async def go() -> HandshakeResult:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head.encode())
            await writer.drain()
            status, headers = await read_head(reader)
            body = b""
            if status != 101 and "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            return HandshakeResult(status, headers, body)
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout)


class WsClient(LoginSteps):
    """One XMPP stream over one WebSocket connection. Not reusable after it closed: make a
    new client to reconnect (and :meth:`resume` with the old one's ``sm_id`` and ``h_in``).
    The login steps (``auth``, ``authenticate``, ``bind``, ``iq``, ``send_message``, ...) are
    the BOSH client's, :class:`~scripts.lib.xmpplogin.LoginSteps`, over :meth:`send_element`
    and :meth:`wait_for`."""

    protocol_error = WsProtocolError
    iq_prefix = "w"

    def __init__(self, url: str, *, origin: str | None = None, protocols: tuple[str, ...] = ("xmpp",),
                 headers: dict[str, str] | None = None, http: aiohttp.ClientSession | None = None,
                 auto_ack: bool = True, max_msg_size: int = 64 * 1024 * 1024) -> None:
        self.url = url
        self.origin = origin
        self.protocols = protocols
        self.headers = dict(headers or {})
        self.http = http
        self._own_http = http is None
        self.auto_ack = auto_ack
        self.max_msg_size = max_msg_size
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.to: str | None = None
        self.jid: str | None = None
        self.stream_open: etree._Element | None = None     # the server's latest <open/>
        self.features: etree._Element | None = None
        self.frames: list[WsFrame] = []                    # every server message, in order
        self.inbox: list[etree._Element] = []              # parsed, not yet taken by wait_for
        self.stream_error: etree._Element | None = None
        self.close_element: etree._Element | None = None
        self.close_code: int | None = None                 # from the server's close frame
        self.close_reason: str | None = None
        self.closed = asyncio.Event()                      # the WebSocket is gone (any way)
        self.aborted = False
        self.reader_error: BaseException | None = None
        # XEP-0198
        self.sm_id: str | None = None
        self.sm_resumable = False
        self.sm_location: str | None = None
        self.sm_counting = False
        self.h_in = 0                                      # stanzas received (we ack this)
        self.h_out = 0                                     # stanzas sent since enable/resume
        self.acks_sent = 0
        # stall_when(client) -> True: the reader stops reading (the server's data stays in the
        # socket buffers, unread and unacknowledged) until unstall(); `stalled` is then set.
        self.stall_when: Callable[["WsClient"], bool] | None = None
        self.stalled = asyncio.Event()
        self._unstall = asyncio.Event()
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ connection
    async def __aenter__(self) -> "WsClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self, timeout: float = 10) -> "WsClient":
        """The WebSocket handshake; raises :class:`aiohttp.WSServerHandshakeError` (with
        ``.status``) when the server refuses the upgrade."""
        if self.http is None:
            self.http = aiohttp.ClientSession()
        self.ws = await self._ws_connect(timeout)
        self._reader = asyncio.ensure_future(self._pump())
        return self

    async def _ws_connect(self, timeout: float) -> aiohttp.ClientWebSocketResponse:
        assert self.http is not None
        return await asyncio.wait_for(self.http.ws_connect(
            self.url, protocols=self.protocols, origin=self.origin, headers=self.headers,
            autoclose=True, autoping=True, max_msg_size=self.max_msg_size,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)), timeout)

    @property
    def protocol(self) -> str | None:
        """The subprotocol the server chose (``Sec-WebSocket-Protocol`` of the 101)."""
        return self.ws.protocol if self.ws is not None else None

    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def _pump(self) -> None:
        assert self.ws is not None
        ws = self.ws
        try:
            while True:
                if self.stall_when is not None and self.stall_when(self):
                    self.stalled.set()
                    self._notify()
                    await self._unstall.wait()
                    self.stall_when = None
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.frames.append(WsFrame("binary", msg.data))
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    # aiohttp (autoclose) has answered the close frame already
                    self.close_code = msg.data
                    self.close_reason = msg.extra
                elif msg.type == aiohttp.WSMsgType.CLOSING:
                    pass
                else:  # CLOSED (EOF, connection lost) or ERROR
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        self.reader_error = msg.data
                    break
                self._notify()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded; the waiters see `closed`
            self.reader_error = exc
        finally:
            self.closed.set()
            self._notify()

    async def _on_text(self, text: str) -> None:
        frame = WsFrame("text", text)
        try:
            el = etree.fromstring(text.encode("utf-8"), strict_parser(huge_tree=True))
            if el.getroottree().docinfo.doctype:
                raise WsProtocolError("DOCTYPE in a server message")
            frame.element = el
        except (etree.XMLSyntaxError, WsProtocolError, ValueError) as exc:
            frame.error = str(exc)
        self.frames.append(frame)
        el = frame.element
        if el is None:
            return
        tag = el.tag
        if tag in STANZAS and self.sm_counting:
            self.h_in += 1
        elif tag == f"{{{NS_SM}}}enabled":
            self.sm_id = el.get("id")
            self.sm_resumable = el.get("resume") in ("true", "1")
            self.sm_location = el.get("location")
            self.sm_counting, self.h_in, self.h_out = True, 0, 0
        elif tag == f"{{{NS_SM}}}resumed":
            self.sm_counting = True
        elif tag == f"{{{NS_SM}}}r" and self.sm_counting and self.auto_ack:
            try:
                await self.send_raw(f"<a xmlns='{NS_SM}' h='{self.h_in}'/>")
                self.acks_sent += 1
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                log.debug("<a/> not sent: %r", exc)  # the socket is going away
            return  # answered; not for the inbox
        elif tag == OPEN:
            self.stream_open = el
        elif tag == STREAM_ERROR:
            self.stream_error = el
        elif tag == CLOSE:
            self.close_element = el
        self.inbox.append(el)

    def unstall(self) -> None:
        """Let a reader stopped by ``stall_when`` go on (it reads what is buffered first)."""
        self._unstall.set()

    # ------------------------------------------------------------------ sending
    async def send_raw(self, data: str) -> None:
        """One text message, exactly as given."""
        if self.ws is None:
            raise RuntimeError("not connected")
        await self.ws.send_str(data)

    async def send_binary(self, data: bytes) -> None:
        if self.ws is None:
            raise RuntimeError("not connected")
        await self.ws.send_bytes(data)

    async def send(self, data: str) -> None:
        """One element; counted as an outbound stanza for XEP-0198 if it is one."""
        await self.send_raw(data)
        if self.sm_counting and data.lstrip().startswith(("<message", "<presence", "<iq")):
            self.h_out += 1

    async def send_open(self, to: str | None = None, lang: str | None = None,
                        version: str | None = "1.0", **extra: str) -> None:
        attrs = {"to": to, "version": version, "xml:lang": lang, **extra}
        text = "".join(f' {k}="{v}"' for k, v in attrs.items() if v is not None)
        await self.send_raw(f'<open xmlns="{NS_FRAMING}"{text}/>')

    # ------------------------------------------------------------------ receiving
    async def wait_change(self, deadline: float) -> None:
        ev = self._changed
        try:
            await asyncio.wait_for(ev.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass

    def _check_dead(self, what: str) -> None:
        if self.stream_error is not None or self.close_element is not None or self.closed.is_set():
            raise WsClosed(self, what)

    async def wait_for(self, pred: Predicate, timeout: float = 10.0, *,
                       allow_closed: bool = False) -> etree._Element:
        """The first inbox element matching ``pred`` (removed from the inbox). Raises
        :class:`WsClosed` if the stream ends first (a ``<stream:error/>``, a ``<close/>`` or
        the socket closing) unless ``allow_closed``, and ``TimeoutError`` at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            for i, el in enumerate(self.inbox):
                if pred(el):
                    return self.inbox.pop(i)
            if not allow_closed:
                self._check_dead("stream ended while waiting")
            elif self.closed.is_set():
                raise WsClosed(self, "socket closed while waiting")
            if time.monotonic() >= deadline:
                got = [etree.QName(e).localname for e in self.inbox]
                raise TimeoutError(f"nothing matching within {timeout}s; inbox has {got}")
            await self.wait_change(deadline)

    async def next_element(self, timeout: float = 10.0) -> etree._Element:
        """The oldest element in the inbox (whatever it is), closed or not."""
        return await self.wait_for(lambda e: True, timeout, allow_closed=True)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Until the socket is gone; ``TimeoutError`` if it is still open at the deadline."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"WebSocket still open after {timeout}s") from None

    async def wait_until(self, cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition",
                         *, allow_closed: bool = False) -> None:
        """Until ``cond()`` holds, re-checked after every received message."""
        deadline = time.monotonic() + timeout
        while not cond():
            if not allow_closed and self.closed.is_set():
                raise WsClosed(self, f"socket closed before {what}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} not reached within {timeout}s")
            await self.wait_change(deadline)

    def texts(self) -> list[str]:
        return [f.data for f in self.frames if f.kind == "text"]  # type: ignore[misc]

    def message_bodies(self) -> list[str]:
        """Bodies of every ``<message/>`` received on this connection, in order."""
        out = []
        for f in self.frames:
            if f.element is not None and f.element.tag == f"{{{NS_CLIENT}}}message":
                body = f.element.findtext(f"{{{NS_CLIENT}}}body")
                if body is not None:
                    out.append(body)
        return out

    @property
    def stream_error_condition(self) -> str | None:
        return stream_error_condition(self.stream_error)

    # ------------------------------------------------------------------ stream setup
    async def open(self, to: str, lang: str | None = None, timeout: float = 10) -> etree._Element:
        """Send ``<open/>``; wait for the server's ``<open/>`` and ``<stream:features/>``;
        returns the features."""
        self.to = to
        self.stream_open = None
        await self.send_open(to, lang)
        await self.wait_for(lambda e: e.tag == OPEN, timeout)
        self.features = await self.wait_for(lambda e: e.tag == FEATURES, timeout)
        return self.features

    async def restart(self, timeout: float = 10) -> etree._Element:
        """RFC 7395 §3.7: after SASL success, a new ``<open/>`` (never a ``<close/>``)."""
        assert self.to is not None, "open() first"
        return await self.open(self.to, timeout=timeout)

    async def send_element(self, data: str) -> None:
        """One element (:meth:`send`): what the login steps send."""
        await self.send(data)

    async def login(self, user: str, password: str, mechanism: str = "PLAIN",
                    resource: str | None = None, to: str | None = None, timeout: float = 10) -> str:
        """(``open`` if not yet,) SASL, restart, bind; returns the bound full JID."""
        if self.features is None:
            if to is None:
                raise ValueError("login() before open() needs to=")
            await self.open(to, timeout=timeout)
        return await super().login(user, password, mechanism, resource, timeout=timeout)

    # ------------------------------------------------------------------ XEP-0198
    async def enable(self, resume: bool = True, timeout: float = 10) -> etree._Element:
        """``<enable resume='true'/>``; returns ``<enabled/>`` (raises on ``<failed/>``)."""
        attr = " resume='true'" if resume else ""
        await self.send_raw(f"<enable xmlns='{NS_SM}'{attr}/>")
        el = await self.wait_for(lambda e: e.tag in (f"{{{NS_SM}}}enabled", f"{{{NS_SM}}}failed"), timeout)
        if el.tag != f"{{{NS_SM}}}enabled":
            raise WsProtocolError(f"SM enable failed: {etree.tostring(el)!r}")
        return el

    async def request_ack(self, timeout: float = 10) -> int:
        """``<r/>``; returns the server's ``h`` from its ``<a/>``."""
        await self.send_raw(f"<r xmlns='{NS_SM}'/>")
        el = await self.wait_for(is_tag(NS_SM, "a"), timeout)
        return int(el.get("h") or "0")

    async def resume(self, previd: str, h: int, timeout: float = 10) -> etree._Element:
        """``<resume previd h/>`` (after SASL + restart on a new connection); returns
        ``<resumed/>`` or ``<failed/>``. Inbound counting continues from ``h``."""
        self.h_in, self.h_out, self.sm_counting = h, 0, False
        self.sm_id = previd
        await self.send_raw(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
        return await self.wait_for(lambda e: e.tag in (f"{{{NS_SM}}}resumed", f"{{{NS_SM}}}failed"), timeout)

    # ------------------------------------------------------------------ ending
    async def close(self, timeout: float = 5) -> etree._Element:
        """RFC 7395 §3.6: send ``<close/>``, wait for the server's ``<close/>`` and for the
        socket to close; returns the server's close element."""
        await self.send_raw(f'<close xmlns="{NS_FRAMING}" />')
        el = await self.wait_for(lambda e: e.tag == CLOSE, timeout, allow_closed=True) \
            if self.close_element is None else self.close_element
        await self.wait_closed(timeout)
        return el

    def abort(self, rst: bool = False) -> None:
        """Drop the TCP connection at once: no ``<close/>``, no close frame. The reader stops
        first, so whatever the server still sends is neither recorded nor counted. With
        ``rst`` the kernel sends a TCP RST instead of a FIN."""
        self.aborted = True
        if self._reader is not None:
            self._reader.cancel()
        transport = None
        if self.ws is not None:
            conn = getattr(self.ws, "_conn", None) or self.ws._response.connection  # noqa: SLF001
            transport = conn.transport if conn is not None else None
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if rst and sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            transport.abort()
        self.closed.set()
        self._notify()

    async def aclose(self) -> None:
        """Cleanup: close the socket if still open (no XMPP close), stop the reader, close HTTP."""
        try:
            if self.ws is not None and not self.ws.closed and not self.aborted:
                await asyncio.wait_for(self.ws.close(), 2)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError, RuntimeError) as exc:
            log.debug("ws close during cleanup failed: %r", exc)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._own_http and self.http is not None:
            await self.http.close()
            self.http = None
