"""asyncio glue around the sans-IO core (no aiohttp here).

Each held HTTP request becomes a future; the session's events are executed here; one timer
per session is re-armed only when the session's deadline moves (design.md §4, style rule 5).
Time is the event loop's clock, so ``loop.call_at`` takes the core's deadlines directly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from bosh import wire
from bosh.errors import BoshError, Condition
from bosh.limits import ClientLimits
from bosh.metrics import Metrics
from bosh.ports import StreamInfo, Upstream, UpstreamFactory
from bosh.registry import Registry
from bosh.session import (
    DEFAULT_CONTENT, CloseUpstream, Event, FlowControl, Limits, OpenUpstream, Respond, RestartUpstream,
    SendUpstream, Session, SessionEnded, Terms, negotiate,
)

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


def error_reply(condition: Condition, legacy: bool = False) -> Reply:
    """The answer to a request that has no session (yet). Design.md §4: rendered in one place."""
    status = condition.legacy_http_status if legacy else 200
    return Reply(status, wire.render_terminate(condition))


class Manager:
    """All sessions of one process: entry point for the web layer.

    ``client_limits`` bounds sessions per client address, ``max_stanza_bytes`` (0 = no
    bound) the size of one payload element; both answer policy-violation (§17.2).
    """

    def __init__(self, limits: Limits, domains: Sequence[str], max_sessions: int,
                 upstreams: UpstreamFactory, *, client_limits: ClientLimits | None = None,
                 max_stanza_bytes: int = 0, metrics: Metrics | None = None,
                 see_other_uri: str = "") -> None:
        self.limits = limits
        self.domains = frozenset(d.lower() for d in domains)
        self.upstreams = upstreams
        self.registry: Registry[SessionDriver] = Registry(max_sessions)
        self.client_limits = client_limits if client_limits is not None else ClientLimits()
        self.max_stanza_bytes = max_stanza_bytes
        self.see_other_uri = see_other_uri
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.track_sessions(lambda: len(self.registry), self.held_count)
        self.accepting = True
        self._ids = itertools.count(1)
        self._pruned_at = 0.0

    def next_request_id(self) -> int:
        return next(self._ids)

    def held_count(self) -> int:
        return sum(d.session.held_count for d in self.registry if d.session is not None)

    async def handle(self, data: bytes, is_closing: IsClosing, client_ip: str = "-",
                     secure: bool = False) -> Reply:
        """Handle one POSTed body and return the complete answer (maybe much later).

        ``secure``: the request came over https (directly or via a trusted proxy). The answer
        is :data:`DROP` when the connection must be closed without one (§19.1).
        """
        m = self.metrics
        m.requests.inc()
        started = asyncio.get_running_loop().time()
        reply = await self._handle(data, is_closing, client_ip, secure)  # cancelled: client went away
        m.response_latency.observe(asyncio.get_running_loop().time() - started)
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
            known = self.registry.get(exc.sid) if exc.sid is not None else None
            if known is not None:
                # The body names a live session: end it properly (§17.2, checklist #93).
                return await known.reject(exc.condition, is_closing)
            return self.error(exc.condition)  # no session to ask (checklist Q5): 200
        sid = body.sid
        driver = self.registry.get(sid) if sid is not None else None
        if driver is not None and driver.secure and not secure:
            log.warning("session %s: plain-http request from %s dropped (session is https)",
                        sid, client_ip)
            return DROP
        if self.max_stanza_bytes and any(len(e.data) > self.max_stanza_bytes for e in body.payload):
            # Bounded before the core sees it: the session ends with policy-violation (§17.2).
            log.info("session %s: stanza over %d bytes from %s",
                     driver.sid if driver is not None else "-", self.max_stanza_bytes, client_ip)
            if driver is not None:
                driver.end(Condition.POLICY_VIOLATION)
            return self.limit_hit("stanza_size", legacy=body.get("ver") is None and sid is None)
        if sid is None:
            return await self._create(body, is_closing, client_ip, secure)
        if driver is None:
            # Checklist Q5: we cannot know whether an unknown sid's client is legacy: 200.
            return self.error(Condition.ITEM_NOT_FOUND)
        n = len(body.payload)
        if n:
            self.metrics.stanzas.labels("in").inc(n)
            self.metrics.bytes.labels("in").inc(sum(len(e.data) for e in body.payload))
        return await driver.request(body, is_closing)

    async def _create(self, body: wire.Body, is_closing: IsClosing, client_ip: str,
                      secure: bool = False) -> Reply:
        legacy = body.get("ver") is None
        if not self.accepting:
            return self.error(Condition.SYSTEM_SHUTDOWN)
        if self.see_other_uri:
            # §17.2 see-other-uri: the operator sends new sessions elsewhere (draining).
            self.metrics.errors.labels(Condition.SEE_OTHER_URI.value).inc()
            uri = b"<uri>" + wire.escape_text(self.see_other_uri).encode() + b"</uri>"
            return Reply(200, wire.render_terminate(Condition.SEE_OTHER_URI, (uri,)))
        now = asyncio.get_running_loop().time()
        if now - self._pruned_at > 60:
            self.client_limits.prune(now)
            self._pruned_at = now
        try:
            terms = negotiate(body, self.limits, self.domains)
        except BoshError as exc:
            log.info("session refused for %s: %s", client_ip, exc)
            return self.error(exc.condition, legacy)
        try:
            sid = self.registry.reserve()
        except BoshError as exc:
            log.warning("session refused for %s: %s (max_sessions %d)", client_ip, exc,
                        self.registry.max_sessions)
            return self.limit_hit("sessions", exc.condition, legacy)
        try:
            self.client_limits.admit(client_ip, now)
        except BoshError as exc:
            log.warning("session refused for %s: %s", client_ip, exc)
            return self.limit_hit("per_ip", exc.condition, legacy)
        driver = SessionDriver(self, sid, client_ip, secure)
        self.registry.add(sid, driver)
        self.metrics.sessions_created.inc()
        return await driver.create(terms, is_closing)

    def reload(self, limits: Limits, max_sessions: int, client_limits: ClientLimits,
               max_stanza_bytes: int, domains: Sequence[str] | None = None,
               see_other_uri: str = "") -> None:
        """Apply new limits (SIGHUP). Open sessions keep the terms they negotiated; their
        per-address counts carry over to the new policy. Sessions of a domain that is no
        longer served end with host-gone (§17.2)."""
        self.limits = limits
        self.registry.max_sessions = max_sessions
        self.client_limits.policy = client_limits.policy
        self.max_stanza_bytes = max_stanza_bytes
        self.see_other_uri = see_other_uri
        if domains is not None:
            self.domains = frozenset(d.lower() for d in domains)
            for driver in self.registry:
                session = driver.session
                if session is not None and session.terms.stream.to.lower() not in self.domains:
                    driver.end(Condition.HOST_GONE)

    async def shutdown(self, condition: Condition = Condition.SYSTEM_SHUTDOWN) -> None:
        """Stop accepting sessions and end every open one with ``condition`` (§17.2)."""
        self.accepting = False
        for driver in self.registry:
            driver.end(condition)


class SessionDriver:
    """Executes one session's events; is the session's ``UpstreamListener``."""

    def __init__(self, manager: Manager, sid: str, client_ip: str = "-", secure: bool = False) -> None:
        self.manager = manager
        self.sid = sid
        self.client_ip = client_ip
        self.secure = secure  # created over https: stays https (§19.1)
        self.session: Session | None = None
        self.upstream: Upstream | None = None
        self._released = False
        self._upstream_live = False
        self._opened_at: float | None = None
        self._loop = asyncio.get_running_loop()
        # Keyed by the request token the core sees (an int from Manager.next_request_id).
        self._futures: dict[Hashable, asyncio.Future[Reply]] = {}
        self._closing: dict[Hashable, IsClosing] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # -- requests ---------------------------------------------------------------------------

    async def create(self, terms: Terms, is_closing: IsClosing) -> Reply:
        req, fut = self._new_request(is_closing)
        self.session = Session(self.sid, terms, req, self._loop.time())
        log.info("session %s created for %s from %s (wait %d, hold %d)", self.sid, terms.stream.to,
                 self.client_ip, terms.wait, terms.hold)
        try:
            self._execute(self.session.initial_events())
        except Exception:  # e.g. the upstream factory failed: clean up like any crash
            log.exception("session %s: internal error", self.sid)
            self._crash()
        return await self._wait(req, fut)

    async def request(self, body: wire.Body, is_closing: IsClosing) -> Reply:
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
        if self._opened_at is not None:
            took = self._loop.time() - self._opened_at
            self._opened_at = None
            self.manager.metrics.upstream_connect.observe(took)
            log.info("session %s upstream ready in %.3f s", self.sid, took)
        self._call(lambda s, now: s.upstream_ready(info, features, now))

    def upstream_elements(self, elements: Sequence[bytes]) -> None:
        m = self.manager.metrics
        m.stanzas.labels("out").inc(len(elements))
        m.bytes.labels("out").inc(sum(map(len, elements)))
        self._call(lambda s, now: s.upstream_elements(list(elements), now))

    def upstream_closed(self, condition: Condition, stream_error: bytes | None) -> None:
        log.info("session %s upstream closed: %s", self.sid, condition.value)
        self._upstream_gone()
        self._call(lambda s, now: s.upstream_closed(condition, stream_error, now))

    def _upstream_gone(self) -> None:
        if self._upstream_live:
            self._upstream_live = False
            self.manager.metrics.upstreams_open.dec()

    def _release(self) -> None:
        """Give the session's per-address slot back, exactly once."""
        if not self._released:
            self._released = True
            self.manager.client_limits.release(self.client_ip)

    def end(self, condition: Condition) -> None:
        self._call(lambda s, now: s.shutdown(condition, now))

    # -- the engine -------------------------------------------------------------------------

    def _call(self, fn: Callable[[Session, float], list[Event]]) -> None:
        session = self.session
        if session is None:
            return
        now = self._loop.time()
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
            elif isinstance(ev, SendUpstream):
                if self.upstream is not None:
                    self.upstream.send(ev.elements)
            elif isinstance(ev, OpenUpstream):
                self._opened_at = self._loop.time()
                self._upstream_live = True
                self.manager.metrics.upstreams_open.inc()
                self.upstream = self.manager.upstreams.open(ev.params, self)
            elif isinstance(ev, RestartUpstream):
                if self.upstream is not None:
                    self.upstream.restart(ev.params)
            elif isinstance(ev, CloseUpstream):
                if self.upstream is not None:
                    self.upstream.close()
                self._upstream_gone()
            elif isinstance(ev, FlowControl):
                if self.upstream is not None:
                    if ev.paused:
                        self.upstream.pause_reading()
                    else:
                        self.upstream.resume_reading()
            elif isinstance(ev, SessionEnded):
                self._ended(ev)
        self._arm()

    def _ended(self, ev: SessionEnded) -> None:
        log.info("session %s ended (condition %s)", self.sid,
                 ev.condition.value if ev.condition else "none")
        # The core answered every request it knew; anything left is a safety net.
        self._teardown(ev.condition, error_reply(Condition.ITEM_NOT_FOUND))
        self.upstream = None

    def _crash(self) -> None:
        self._teardown(Condition.INTERNAL_SERVER_ERROR,
                       Reply(200, wire.render_terminate(Condition.INTERNAL_SERVER_ERROR)))
        if self.upstream is not None:
            try:
                self.upstream.close()
            except Exception:  # already failing; the session is gone either way
                log.exception("session %s: upstream close failed", self.sid)
            self.upstream = None
        self.session = None
        self._cancel_timer()

    def _teardown(self, condition: Condition | None, leftover: Reply) -> None:
        """Forget the session everywhere, exactly once per cause: registry, per-address
        slot, upstream gauge, metrics; answer any request still waiting with ``leftover``."""
        m = self.manager.metrics
        m.sessions_ended.labels(condition.value if condition else "none").inc()
        if condition is not None:
            m.errors.labels(condition.value).inc()
        self.manager.registry.remove(self.sid)
        self._release()
        self._upstream_gone()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_result(leftover)
        self._futures.clear()
        self._closing.clear()

    def _arm(self) -> None:
        deadline = self.session.next_deadline() if self.session is not None else None
        if deadline == self._timer_at:
            return
        self._cancel_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._call(lambda s, now: s.handle_timer(now))
