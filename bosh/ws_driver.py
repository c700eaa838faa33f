"""The WebSocket endpoint: asyncio glue around the sans-IO ``bosh.ws_session`` (no aiohttp).

The web layer (``bosh.ws_web``) owns the socket and calls in here with each message; this
module executes the session's events on a :class:`ClientSocket` and on the upstream (through
``bosh.hub.UpstreamLink``), keeps one timer per session (pings, the open timeout), and
pauses reading upstream while the client's socket has more than ``max_queued_bytes``
unsent (the same bound as a BOSH session's queue).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Protocol, Sequence

from bosh.errors import BoshError, Condition, StreamCondition
from bosh.events import SessionEnded
from bosh.hub import Hub, UpstreamLink
from bosh.ports import StreamInfo
from bosh.ws_session import CloseSocket, SendPing, SendText, WsEvent, WsLimits, WsSession

__all__ = ["ClientSocket", "WsEndpoint", "WsDriver"]

log = logging.getLogger("bosh.ws")

# Operator conditions of the hub in their stream-error form (RFC 6120 §4.9.3).
_OPERATOR = {Condition.HOST_GONE: StreamCondition.HOST_GONE,
             Condition.POLICY_VIOLATION: StreamCondition.POLICY_VIOLATION,
             Condition.SYSTEM_SHUTDOWN: StreamCondition.SYSTEM_SHUTDOWN}


class ClientSocket(Protocol):
    """The client's WebSocket as the driver sees it (implemented in ``bosh.ws_web``)."""

    def send_text(self, data: bytes) -> None:
        """Queue one text message; never blocks."""

    def ping(self) -> None:
        """Send a ping frame."""

    def close(self, code: int) -> None:
        """Start the closing handshake (idempotent)."""

    def queued_bytes(self) -> int:
        """Bytes accepted by :meth:`send_text` and not yet handed to the kernel."""

    @property
    def waiting(self) -> bool:
        """A write waits for the kernel; :meth:`WsDriver.drained` follows when it is done."""


class WsEndpoint:
    """Every WebSocket session of the process, on top of the shared :class:`Hub`."""

    def __init__(self, hub: Hub, limits: WsLimits, max_queued_bytes: int = 1_048_576) -> None:
        self.hub = hub
        self.limits = limits
        self.max_queued_bytes = max_queued_bytes

    @property
    def max_message_bytes(self) -> int:
        """Largest client message: ``[bosh] max_stanza_bytes``, shared with BOSH (live)."""
        return self.hub.max_stanza_bytes or self.limits.max_message_bytes

    def connect(self, socket: ClientSocket, client_ip: str) -> "WsDriver":
        """A new WebSocket connection (after the upgrade). When the hub refuses it (draining,
        a limit), the session sends its stream error at once and ends (RFC 7395 §3.5)."""
        hub = self.hub
        now = hub.clock.time()
        refusal: StreamCondition | None = None
        sid = "-"
        if not hub.accepting:
            refusal = StreamCondition.SYSTEM_SHUTDOWN
        else:
            try:
                sid = hub.admit(client_ip, now)
            except BoshError:
                refusal = StreamCondition.POLICY_VIOLATION  # counted by hub.admit
        limits = self.limits
        if self.max_message_bytes != limits.max_message_bytes:
            limits = WsLimits(self.max_message_bytes, limits.ping_interval, limits.missed_pongs,
                              limits.open_timeout)
        driver = WsDriver(self, sid, socket, client_ip, WsSession(
            sid, hub.domains, limits, now, hub.see_other_uri))
        if refusal is None:
            hub.add(driver)
            log.info("session %s opened from %s (websocket)", sid, client_ip)
            driver.arm()
        else:
            log.warning("websocket from %s refused: %s", client_ip, refusal.value)
            driver.call(lambda s, t: s.end(refusal, t))
        return driver


class WsDriver(UpstreamLink):
    """Executes one WebSocket session's events; is its upstream's ``UpstreamListener``."""

    __slots__ = ("endpoint", "socket", "session", "_paused")

    transport = "websocket"

    def __init__(self, endpoint: WsEndpoint, sid: str, socket: ClientSocket, client_ip: str,
                 session: WsSession) -> None:
        super().__init__(endpoint.hub, sid, client_ip)
        self.endpoint = endpoint
        self.socket = socket
        self.session = session
        self._paused = False

    @property
    def domain(self) -> str | None:
        return self.session.domain

    @property
    def ended(self) -> bool:
        return self.session.state.value == "ended"

    # -- from the socket (bosh.ws_web) -------------------------------------------------------

    def text(self, data: bytes) -> None:
        self.call(lambda s, now: s.receive_text(data, now))

    def binary(self) -> None:
        self.call(lambda s, now: s.receive_binary(now))

    def too_big(self) -> None:
        self.call(lambda s, now: s.message_too_big(now))

    def pong(self) -> None:
        self.call(lambda s, now: s.receive_pong(now))

    def lost(self) -> None:
        self.call(lambda s, now: s.connection_lost(now))

    def upstream_writable(self, writable: bool) -> None:
        """Backpressure (bosh.hub.UpstreamLink): ws_web stops reading this client's frames
        while the server does not read; the core must not take the missing pongs for a lost
        client meanwhile."""
        super().upstream_writable(writable)
        unread = self.upstream_blocked
        self.call(lambda s, now: s.client_unread(unread, now))

    def drained(self) -> None:
        """The socket sent everything it had queued: read upstream again."""
        if self._paused and self.upstream is not None:
            self._paused = False
            self.upstream.resume_reading()

    # -- from the hub ------------------------------------------------------------------------

    def end(self, condition: Condition) -> None:
        stream_condition = _OPERATOR.get(condition, StreamCondition.POLICY_VIOLATION)
        self.call(lambda s, now: s.end(stream_condition, now))

    def shutdown(self) -> None:
        self.call(lambda s, now: s.shutdown(now))

    def drain(self) -> None:
        """Released at once: resumable sessions resume through another node (close 1012)."""
        self.shutdown()

    # -- upstream listener -------------------------------------------------------------------

    def upstream_ready(self, info: StreamInfo, features: bytes) -> None:
        self.note_ready(info)
        self.call(lambda s, now: s.upstream_ready(info, features, now))

    def upstream_header(self, info: StreamInfo) -> None:
        self.call(lambda s, now: s.upstream_header(info, now))

    def upstream_elements(self, elements: Sequence[bytes]) -> None:
        self.note_pushed(elements)
        self.call(lambda s, now: s.upstream_elements(list(elements), now))

    def upstream_closed(self, stream_error: bytes | None) -> None:
        log.info("session %s upstream closed (%s)", self.sid,
                 "stream error" if stream_error is not None else "connection lost or closed")
        self.upstream_gone()
        self.call(lambda s, now: s.upstream_closed(stream_error, now))

    # -- the engine --------------------------------------------------------------------------

    def call(self, fn: Callable[[WsSession, float], list[WsEvent]]) -> None:
        try:
            self._execute(fn(self.session, self._clock.time()))
        except Exception:  # a bug in the core or an adapter must not take others down
            log.exception("session %s: internal error", self.sid)
            self._crash()

    def _execute(self, events: list[WsEvent]) -> None:
        sent = False
        for ev in events:
            if isinstance(ev, SendText):
                self.socket.send_text(ev.data)
                sent = True
            elif isinstance(ev, SendPing):
                self.socket.ping()
            elif isinstance(ev, CloseSocket):
                self.hub.metrics.websocket_closes.labels(str(ev.code)).inc()
                self.socket.close(ev.code)
            elif isinstance(ev, SessionEnded):
                self._ended(ev)
            else:
                self.run_upstream_event(ev)
        if sent and not self._paused and self.upstream is not None and self.socket.waiting \
                and self.socket.queued_bytes() > self.endpoint.max_queued_bytes:
            # A slow client: stop reading from the server until its socket drains. Only while
            # a write waits for the kernel: its end (``drained``) is what resumes reading; below
            # that the transport's own buffer (64 KiB high-water mark) bounds what is held.
            self._paused = True
            self.upstream.pause_reading()
        self.arm()

    def _ended(self, ev: SessionEnded) -> None:
        if self.hub.registry.get(self.sid) is self:
            log.info("session %s ended (websocket, condition %s%s)", self.sid,
                     ev.condition.value if ev.condition else "none",
                     ", left resumable" if self.session.resumable else "")
        self.forget(ev.condition)
        self.upstream = None
        self._cancel_timer()

    def _crash(self) -> None:
        self.forget(StreamCondition.INTERNAL_SERVER_ERROR)
        self.drop_upstream(end_stream=not self.session.resumable)
        self._cancel_timer()
        try:
            self.socket.close(1011)  # RFC 6455 §7.4.1: internal error
        except Exception:
            log.exception("session %s: socket close failed", self.sid)

    def arm(self) -> None:
        self.arm_timer(self.session.next_deadline())

    def on_timer(self) -> None:
        self.call(lambda s, now: s.handle_timer(now))
