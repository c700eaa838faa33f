"""The BOSH endpoint: asyncio glue around the sans-IO BOSH core (no aiohttp here).

Each held HTTP request becomes a future; the session's events are executed here; one timer
per session is re-armed only when the session's deadline moves (design.md §4, style rule 5).
Time is the event loop's clock, so ``loop.call_at`` takes the core's deadlines directly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Sequence

from bosh import wire
from bosh.errors import BoshError, Condition
from bosh.events import EndCondition, SessionEnded
from bosh.hub import Hub, HubSession, UpstreamLink
from bosh.limits import ClientLimits
from bosh.metrics import Metrics
from bosh.ports import StreamInfo
from bosh.registry import Registry
from bosh.xmltext import escape_text
from bosh.session import DEFAULT_CONTENT, Event, Limits, Respond, Session, Terms, negotiate

log = logging.getLogger("bosh.driver")

IsClosing = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete HTTP answer for the web layer."""

    status: int
    body: bytes
    content_type: str = DEFAULT_CONTENT
    codings: tuple[str, ...] = ()  # content codings the client accepts (§7.1 'accept')


# The answer that is no answer: close the connection (XEP-0124 §19.1, checklist #128).
DROP = Reply(0, b"")
#: Seconds a server-side end waits for the server's closing tag (Session.finish).
FINISH_GRACE = 2.0
# A draining cluster node's answer to a creation request: the balancer retries elsewhere.
DRAINING = Reply(503, b"draining: retry on another node\n", "text/plain; charset=utf-8")


def error_reply(condition: Condition, legacy: bool = False) -> Reply:
    """The answer to a request that has no session (yet). Design.md §4: rendered in one place."""
    status = condition.legacy_http_status if legacy else 200
    return Reply(status, wire.render_terminate(condition))


class Manager:
    """The BOSH endpoint: every BOSH session of the process, on top of the shared :class:`Hub`
    (session table, limits, metrics, draining, reload: one for every transport)."""

    def __init__(self, limits: Limits, hub: Hub) -> None:
        self.limits = limits
        self.hub = hub
        hub.metrics.requests_held.set_function(self.held_count)
        self._ids = itertools.count(1)

    @property
    def metrics(self) -> Metrics:
        return self.hub.metrics

    @property
    def registry(self) -> Registry[HubSession]:
        return self.hub.registry

    def next_request_id(self) -> int:
        return next(self._ids)

    def held_count(self) -> int:
        return sum(d.session.held_count for d in self._drivers() if d.session is not None)

    def _drivers(self) -> Iterator[SessionDriver]:
        return (s for s in self.hub.registry if isinstance(s, SessionDriver))

    def _driver(self, sid: str | None) -> SessionDriver | None:
        found = self.hub.registry.get(sid) if sid is not None else None
        # A WebSocket sid is no BOSH session (XEP-0124 §17.2 item-not-found).
        return found if isinstance(found, SessionDriver) else None

    async def handle(self, data: bytes, is_closing: IsClosing, client_ip: str = "-",
                     secure: bool = False) -> Reply:
        """Handle one POSTed body and return the complete answer (maybe much later).

        ``secure``: the request came over https (directly or via a trusted proxy). The answer
        is :data:`DROP` when the connection must be closed without one (§19.1).
        """
        m = self.metrics
        m.requests.inc()
        clock = self.hub.clock
        started = clock.time()
        reply = await self._handle(data, is_closing, client_ip, secure)  # cancelled: client went away
        m.response_latency.observe(clock.time() - started)
        return reply

    def error(self, condition: Condition, legacy: bool = False) -> Reply:
        """An answer for a request without a session, counted by condition."""
        self.metrics.errors.labels(condition.value).inc()
        return error_reply(condition, legacy)

    def limit_hit(self, limit: str, condition: Condition = Condition.POLICY_VIOLATION,
                  legacy: bool = False) -> Reply:
        self.metrics.limit_hits.labels(limit).inc()
        return self.error(condition, legacy)

    async def _handle(self, data: bytes, is_closing: IsClosing, client_ip: str,
                      secure: bool) -> Reply:
        try:
            body = wire.parse_body(data)
        except BoshError as exc:
            log.info("rejected request from %s: %r", client_ip, exc.detail)  # %r: no forged lines
            known = self._driver(exc.sid)
            if known is not None:
                # The body names a live session: end it properly (§17.2, checklist #93).
                return await known.reject(exc.condition, is_closing)
            return self.error(exc.condition)  # no session to ask (checklist Q5): 200
        sid = body.sid
        driver = self._driver(sid)
        if driver is not None and driver.secure and not secure:
            log.warning("session %s: plain-http request from %s dropped (session is https)",
                        sid, client_ip)
            return DROP
        limit = self.hub.max_stanza_bytes
        if limit and any(len(e.data) > limit for e in body.payload):
            # Bounded before the core sees it: the session ends with policy-violation (§17.2).
            log.info("session %s: stanza over %d bytes from %s",
                     driver.sid if driver is not None else "-", limit, client_ip)
            if driver is not None:
                driver.end(Condition.POLICY_VIOLATION)
            return self.limit_hit("stanza_size", legacy=body.get("ver") is None and sid is None)
        if sid is None:
            return await self._create(body, is_closing, client_ip, secure)
        if driver is None:
            # Checklist Q5: we cannot know whether an unknown sid's client is legacy: 200.
            return self.error(Condition.ITEM_NOT_FOUND)
        return await driver.request(body, is_closing)

    async def _create(self, body: wire.Body, is_closing: IsClosing, client_ip: str,
                      secure: bool = False) -> Reply:
        legacy = body.get("ver") is None
        hub = self.hub
        if not hub.accepting:
            if hub.node_id:
                # A draining cluster node (issue 9): HTTP 503 before anything is created, so
                # that HAProxy retries the creation on another node (retry-on 503) and the
                # client never sees it. Standalone, the client is told: system-shutdown.
                return DRAINING
            return self.error(Condition.SYSTEM_SHUTDOWN)
        if hub.see_other_uri:
            # §17.2 see-other-uri: the operator sends new sessions elsewhere (draining).
            self.metrics.errors.labels(Condition.SEE_OTHER_URI.value).inc()
            uri = b"<uri>" + escape_text(hub.see_other_uri).encode() + b"</uri>"
            return Reply(200, wire.render_terminate(Condition.SEE_OTHER_URI, (uri,)))
        now = hub.clock.time()
        try:
            terms = negotiate(body, self.limits, hub.domains)
        except BoshError as exc:
            log.info("session refused for %s: %s", client_ip, exc)
            return self.error(exc.condition, legacy)
        try:
            sid = hub.admit(client_ip, now)
        except BoshError as exc:
            return self.error(exc.condition, legacy)  # counted by hub.admit as a limit hit
        driver = SessionDriver(self, sid, client_ip, secure)
        hub.add(driver)
        return await driver.create(terms, is_closing)

    def reload(self, limits: Limits, max_sessions: int, client_limits: ClientLimits,
               max_stanza_bytes: int, domains: Sequence[str] | None = None,
               see_other_uri: str = "") -> None:
        """Apply new limits (SIGHUP): the BOSH ``limits`` here, the shared ones in the hub
        (which ends sessions of a domain no longer served with host-gone, §17.2)."""
        self.limits = limits
        self.hub.reload(max_sessions, client_limits, max_stanza_bytes, domains, see_other_uri)

    async def shutdown(self, condition: Condition = Condition.SYSTEM_SHUTDOWN) -> None:
        """Stop accepting sessions and end every open one (all transports, §17.2)."""
        await self.hub.shutdown()


class SessionDriver(UpstreamLink):
    """Executes one BOSH session's events; is the session's ``UpstreamListener``."""

    __slots__ = ("manager", "secure", "session", "_futures", "_closing")

    transport = "bosh"

    def __init__(self, manager: Manager, sid: str, client_ip: str = "-", secure: bool = False) -> None:
        super().__init__(manager.hub, sid, client_ip)
        self.manager = manager
        self.secure = secure  # created over https: stays https (§19.1)
        self.session: Session | None = None
        # Keyed by the request token the core sees (an int from Manager.next_request_id).
        self._futures: dict[Hashable, asyncio.Future[Reply]] = {}
        self._closing: dict[Hashable, IsClosing] = {}

    @property
    def domain(self) -> str | None:
        return self.session.terms.stream.to if self.session is not None else None

    # -- requests ---------------------------------------------------------------------------

    async def create(self, terms: Terms, is_closing: IsClosing) -> Reply:
        req, fut = self._new_request(is_closing)
        self.session = Session(self.sid, terms, req, self._clock.time())
        log.info("session %s created for %s from %s (bosh, wait %d, hold %d)", self.sid,
                 terms.stream.to, self.client_ip, terms.wait, terms.hold)
        try:
            self._execute(self.session.initial_events())
        except Exception:  # e.g. the upstream factory failed: clean up like any crash
            log.exception("session %s: internal error", self.sid)
            self._crash()
        return await self._wait(req, fut)

    async def request(self, body: wire.Body, is_closing: IsClosing) -> Reply:
        if body.payload and self.upstream_blocked:
            # Backpressure (issue 11): the server is not reading what this client sent
            # before. Hold this request's payload until it catches up; the client can have
            # at most hold+1 requests out (XEP-0124 §11), so at most that many bodies wait.
            # Requests without payload are not held here: reading upstream goes on. The
            # core counts the waiting one as held, so §10 inactivity does not end the session.
            self._call(lambda s, now: s.client_waiting(True, now))
            try:
                await self.until_writable()
            finally:
                self._call(lambda s, now: s.client_waiting(False, now))
        req, fut = self._new_request(is_closing)
        self._call(lambda s, now: s.receive(req, body, now))
        return await self._wait(req, fut)

    async def reject(self, condition: Condition, is_closing: IsClosing) -> Reply:
        """A body for this session that could not be parsed: end the session with it."""
        req, fut = self._new_request(is_closing)
        self._call(lambda s, now: s.reject(req, condition, now))
        return await self._wait(req, fut)

    def _new_request(self, is_closing: IsClosing) -> tuple[int, asyncio.Future[Reply]]:
        req = self.manager.next_request_id()
        fut: asyncio.Future[Reply] = self._loop.create_future()
        self._futures[req] = fut
        self._closing[req] = is_closing
        return req, fut

    async def _wait(self, req: int, fut: asyncio.Future[Reply]) -> Reply:
        # The future may already be resolved: e.g. a replay is answered synchronously.
        try:
            return await fut
        except asyncio.CancelledError:
            # The client went away (aiohttp handler cancellation): keep its data (design §4).
            # Cancelling the handler cancels ``fut`` too, so "not answered" means cancelled.
            if fut.cancelled() and req in self._futures:
                self._forget(req)
                self._call(lambda s, now: s.request_gone(req, now))
            raise

    def _forget(self, req: Hashable) -> None:
        self._futures.pop(req, None)
        self._closing.pop(req, None)

    # -- upstream listener ------------------------------------------------------------------

    def upstream_ready(self, info: StreamInfo, features: bytes) -> None:
        self.note_ready(info)
        self._call(lambda s, now: s.upstream_ready(info, features, now))

    def upstream_header(self, info: StreamInfo) -> None:
        """XEP-0206 §5: BOSH has no use for the restarted header; the features follow."""

    def upstream_elements(self, elements: Sequence[bytes]) -> None:
        self.note_pushed(elements)
        self._call(lambda s, now: s.upstream_elements(list(elements), now))

    def upstream_closed(self, stream_error: bytes | None) -> None:
        # XEP-0206 §6 / XEP-0124 §17.2: a server stream error reaches the client inside a
        # remote-stream-error terminate; anything else is remote-connection-failed.
        condition = (Condition.REMOTE_STREAM_ERROR if stream_error is not None
                     else Condition.REMOTE_CONNECTION_FAILED)
        log.info("session %s upstream closed: %s", self.sid, condition.value)
        self.upstream_gone()
        self._call(lambda s, now: s.upstream_closed(condition, stream_error, now))

    def end(self, condition: Condition) -> None:
        self._call(lambda s, now: s.shutdown(condition, now))

    def drain(self) -> None:
        """A BOSH session cannot move to another node: it is served until it ends or the
        drain times out (then :meth:`shutdown`)."""

    def shutdown(self) -> None:
        """SIGTERM or the end of a drain: the stream gets its footer first and is read until
        the server's, so nothing it sent meanwhile is lost; then system-shutdown (§17.2)."""
        self._call(lambda s, now: s.finish(Condition.SYSTEM_SHUTDOWN, now, FINISH_GRACE))

    # -- the engine -------------------------------------------------------------------------

    def _call(self, fn: Callable[[Session, float], list[Event]]) -> None:
        session = self.session
        if session is None:
            return
        now = self._clock.time()
        self._reap_dead(session, now)
        try:
            events = fn(session, now)
            self._execute(events)
        except Exception:  # a bug in the core or an adapter must not take others down
            log.exception("session %s: internal error", self.sid)
            self._crash()

    def _reap_dead(self, session: Session, now: float) -> None:
        """Before data is put into a held request, drop requests whose connection is
        already closing, so their data goes to the next request instead (design.md §4)."""
        # Hot path: usually nothing is closing, so allocate nothing then.
        dead = [req for req, is_closing in self._closing.items() if is_closing()]
        for req in dead:
            if req in self._closing:
                fut = self._futures.get(req)
                self._forget(req)
                if fut is not None and not fut.done():
                    # Nothing was put into it; the bytes go nowhere anyway.
                    fut.set_result(Reply(200, wire.EMPTY_BODY))
                self._execute(session.request_gone(req, now))

    def _execute(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Respond):
                fut = self._futures.pop(ev.request, None)
                self._closing.pop(ev.request, None)
                if fut is not None and not fut.done() and self.session is not None:
                    terms = self.session.terms
                    fut.set_result(Reply(ev.status, ev.body, terms.content, terms.accept))
            elif isinstance(ev, SessionEnded):
                self._ended(ev)
            else:
                self.run_upstream_event(ev)
        self._arm()

    def _ended(self, ev: SessionEnded) -> None:
        log.info("session %s ended (bosh, condition %s)", self.sid,
                 ev.condition.value if ev.condition else "none")
        # The core answered every request it knew; anything left is a safety net.
        self._teardown(ev.condition, error_reply(Condition.ITEM_NOT_FOUND))
        self.upstream = None

    def _crash(self) -> None:
        self._teardown(Condition.INTERNAL_SERVER_ERROR,
                       Reply(200, wire.render_terminate(Condition.INTERNAL_SERVER_ERROR)))
        self.drop_upstream()
        self.session = None
        self._cancel_timer()

    def _teardown(self, condition: EndCondition, leftover: Reply) -> None:
        """Forget the session everywhere (``UpstreamLink.forget``: registry, per-address
        slot, upstream gauge, metrics); answer any request still waiting with ``leftover``."""
        self.forget(condition)
        for fut in self._futures.values():
            if not fut.done():
                fut.set_result(leftover)
        self._futures.clear()
        self._closing.clear()

    def _arm(self) -> None:
        self.arm_timer(self.session.next_deadline() if self.session is not None else None)

    def on_timer(self) -> None:
        self._call(lambda s, now: s.handle_timer(now))
