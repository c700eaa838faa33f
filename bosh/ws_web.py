"""The WebSocket endpoint's HTTP side (aiohttp only): the handshake checks, the socket.

Before the upgrade (RFC 7395 §3.1, RFC 6455 §4.2): the ``xmpp`` subprotocol must be offered
(else HTTP 400 and no upgrade: aiohttp would otherwise upgrade without a subprotocol, design.md
§10), and a browser's ``Origin`` must be allowed (else HTTP 403: cross-site WebSocket
hijacking, ejabberd#2821). After it, every message goes to ``bosh.ws_driver``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Generator

from aiohttp import WSCloseCode, WSMsgType, web

from bosh.config import WebSocketConfig
from bosh.ws_driver import WsDriver, WsEndpoint

__all__ = ["SUBPROTOCOL", "handle_websocket", "WS_ENDPOINT_KEY", "WS_CONFIG_KEY", "ALLOWED_ORIGINS_KEY"]

log = logging.getLogger("bosh.ws")

SUBPROTOCOL = "xmpp"  # RFC 7395 §3.1, IANA WebSocket subprotocol registry
#: Seconds a closing connection may take (queued frames, the closing handshake) before it is
#: aborted.
CLOSE_DEADLINE = 10.0

WS_ENDPOINT_KEY = web.AppKey("ws_endpoint", WsEndpoint)
WS_CONFIG_KEY = web.AppKey("ws_config", WebSocketConfig)
ALLOWED_ORIGINS_KEY = web.AppKey("ws_origins", tuple)


class _Resume:
    """Finish a coroutine that was already stepped once and is suspended on ``pending``."""

    def __init__(self, coro: Any, pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, None, None]:
        pending = self._pending
        while True:
            thrown: BaseException | None = None
            try:
                yield pending
            except BaseException as exc:  # cancellation reaches the inner coroutine
                thrown = exc
            try:
                pending = self._coro.send(None) if thrown is None else self._coro.throw(thrown)
            except StopIteration:
                return


class _XmppWebSocket(web.WebSocketResponse):
    """aiohttp's response, told to let the session say policy-violation before aiohttp
    closes a too-large message with 1009 (design.md §10: Prosody does the same)."""

    driver: WsDriver | None = None

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"",
                    drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and self.driver is not None and not self.closed:
            driver, self.driver = self.driver, None
            driver.too_big()
        return await super().close(code=code, message=message, drain=drain)


class AiohttpSocket:
    """``bosh.ws_driver.ClientSocket`` on an aiohttp WebSocketResponse.

    Writes are synchronous in the common case: aiohttp writes an uncompressed frame to the
    transport before it would wait for the transport to drain, so the send coroutine is
    stepped once and usually finishes there, with no task and no queue. When it does wait
    (the kernel buffer is full, or a compressed frame goes to the executor), that write and
    every later one continue in order in one task; :meth:`queued_bytes` lets the driver pause
    the upstream meanwhile.
    """

    __slots__ = ("_ws", "_transport", "driver", "_outbox", "_outbox_bytes", "_task", "_closing",
                 "_deadline")

    def __init__(self, ws: _XmppWebSocket, transport: asyncio.BaseTransport | None) -> None:
        self._ws = ws
        self._transport = transport
        self.driver: WsDriver | None = None
        self._outbox: deque[tuple[bytes, WSMsgType]] | None = None
        self._outbox_bytes = 0
        self._task: asyncio.Task[Any] | None = None
        self._closing = False
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> bool:
        """A write is waiting for the kernel to take more (the socket's own buffer is full)."""
        return self._outbox is not None

    def send_text(self, data: bytes) -> None:
        self._send(data, WSMsgType.TEXT)

    def ping(self) -> None:
        self._send(b"", WSMsgType.PING)

    def pong(self, data: bytes) -> None:
        self._send(data, WSMsgType.PONG)

    def close(self, code: int) -> None:
        if self._closing:
            return
        self._closing = True
        # However the peer behaves (a client that stops reading keeps the kernel buffer full
        # and aiohttp's drain waits forever), the connection is gone within CLOSE_DEADLINE:
        # the session has already let go of its registry entry and per-IP slot.
        self._deadline = asyncio.get_running_loop().call_later(CLOSE_DEADLINE, self.abort)
        if self._outbox is not None:
            self._outbox.append((code.to_bytes(2, "big"), WSMsgType.CLOSE))
            return
        self._spawn_close(code)

    def abort(self) -> None:
        """Drop the connection now (no closing handshake); idempotent."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.abort()  # type: ignore[attr-defined]

    def queued_bytes(self) -> int:
        # Duck-typed: uvloop's transports are no asyncio.WriteTransport subclass.
        size = getattr(self._transport, "get_write_buffer_size", None)
        return (size() if size is not None else 0) + self._outbox_bytes

    def _spawn_close(self, code: int) -> None:
        if self._ws.closed:
            return
        # The closing handshake waits for the client's close frame: never in the caller.
        self._task = asyncio.get_running_loop().create_task(self._ws.close(code=code))

    def _send(self, data: bytes, kind: WSMsgType) -> None:
        if self._ws.closed or (self._closing and kind is not WSMsgType.CLOSE):
            return
        if self._outbox is not None:  # a write is waiting: keep the order
            self._outbox.append((data, kind))
            self._outbox_bytes += len(data)
            return
        coro = self._ws.send_frame(data, kind)
        try:
            pending = coro.send(None)
        except StopIteration:
            return
        except (ConnectionError, RuntimeError) as exc:  # the peer went away meanwhile
            log.debug("websocket write failed: %s", exc)
            return
        self._outbox = deque()
        self._task = asyncio.get_running_loop().create_task(self._drain(coro, pending))

    async def _drain(self, coro: Any, pending: Any) -> None:
        try:
            await _Resume(coro, pending)
            outbox = self._outbox
            while outbox:
                data, kind = outbox.popleft()
                self._outbox_bytes -= len(data) if kind is not WSMsgType.CLOSE else 0
                if kind is WSMsgType.CLOSE:
                    await self._ws.close(code=int.from_bytes(data, "big"))
                    return
                await self._ws.send_frame(data, kind)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("websocket write failed: %s", exc)
            return
        finally:
            self._outbox = None
            self._outbox_bytes = 0
        if self.driver is not None:
            self.driver.drained()


def _offered_protocols(request: web.Request) -> list[str]:
    return [p.strip() for header in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in header.split(",") if p.strip()]


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """A request without ``Origin`` comes from no browser page (RFC 6455 §10.2): allowed."""
    return origin is None or "*" in allowed or origin in allowed


async def handle_websocket(request: web.Request) -> web.StreamResponse:
    from bosh.web import request_client_ip  # the one client-address rule (trusted proxies)

    endpoint = request.app[WS_ENDPOINT_KEY]
    cfg = request.app[WS_CONFIG_KEY]
    client_ip = request_client_ip(request)
    headers = {"Cache-Control": "no-store"}
    if SUBPROTOCOL not in _offered_protocols(request):
        # RFC 7395 §3.1: the server MUST NOT upgrade without the subprotocol.
        log.info("websocket from %s refused: no 'xmpp' subprotocol offered", client_ip)
        endpoint.hub.metrics.limit_hits.labels("ws_subprotocol").inc()
        return web.Response(status=400, text="the 'xmpp' WebSocket subprotocol is required "
                            "(RFC 7395)\n", headers=headers)
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, request.app[ALLOWED_ORIGINS_KEY]):
        log.info("websocket from %s refused: Origin %r not allowed", client_ip, origin)
        endpoint.hub.metrics.limit_hits.labels("ws_origin").inc()
        return web.Response(status=403, text="Origin not allowed\n", headers=headers)
    hub = endpoint.hub
    if not hub.accepting and hub.node_id:
        # A draining cluster node (issue 9): before the upgrade, so HAProxy retries elsewhere.
        return web.Response(status=503, text="draining: retry on another node\n", headers=headers)
    # autoping off: pongs reach the session (two missed ones close the socket).
    ws = _XmppWebSocket(protocols=(SUBPROTOCOL,), autoping=False, compress=cfg.compress,
                        max_msg_size=endpoint.max_message_bytes, decode_text=False)
    if not ws.can_prepare(request).ok:
        return web.Response(status=400, text="expected a WebSocket upgrade\n", headers=headers)
    await ws.prepare(request)
    socket = AiohttpSocket(ws, request.transport)
    driver = endpoint.connect(socket, client_ip)
    socket.driver = driver
    ws.driver = driver
    try:
        while not driver.ended:
            # Backpressure (issue 11): while the server does not read what this client sent,
            # read no more frames; aiohttp then stops reading the socket (its queue limit),
            # so the client's further data waits in TCP, not in our memory.
            if driver.upstream_blocked:  # a check, not a coroutine per frame
                await driver.until_writable()
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                driver.text(msg.data)
            elif kind is WSMsgType.PING:
                socket.pong(msg.data)
            elif kind is WSMsgType.PONG:
                driver.pong()
            elif kind is WSMsgType.BINARY:
                driver.binary()
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the socket is going away
                break
    finally:
        ws.driver = None
        driver.lost()  # a no-op when the session already ended
        socket.close(1000)  # a no-op when already closing; bounded by CLOSE_DEADLINE either way
        task = socket._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), CLOSE_DEADLINE)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                socket.abort()
            except Exception:
                socket.abort()
    return ws
