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
from typing import Callable, Sequence

from bosh import wire
from bosh.errors import BoshError, Condition
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


def error_reply(condition: Condition, legacy: bool = False) -> Reply:
    """The answer to a request that has no session (yet). Design.md §4: rendered in one place."""
    status = condition.legacy_http_status if legacy else 200
    return Reply(status, wire.render_terminate(condition))


class Manager:
    """All sessions of one process: entry point for the web layer."""

    def __init__(self, limits: Limits, domains: Sequence[str], max_sessions: int,
                 upstreams: UpstreamFactory) -> None:
        self.limits = limits
        self.domains = frozenset(d.lower() for d in domains)
        self.upstreams = upstreams
        self.registry: Registry[SessionDriver] = Registry(max_sessions)
        self.accepting = True
        self._ids = itertools.count(1)

    def next_request_id(self) -> int:
        return next(self._ids)

    async def handle(self, data: bytes, is_closing: IsClosing) -> Reply:
        """Handle one POSTed body and return the complete answer (maybe much later)."""
        try:
            body = wire.parse_body(data)
        except BoshError as exc:
            log.info("rejected request: %s", exc)
            return error_reply(exc.condition)
        sid = body.sid
        if sid is None:
            return await self._create(body, is_closing)
        driver = self.registry.get(sid)
        if driver is None:
            # Checklist Q5: we cannot know whether an unknown sid's client is legacy: 200.
            return error_reply(Condition.ITEM_NOT_FOUND)
        return await driver.request(body, is_closing)

    async def _create(self, body: wire.Body, is_closing: IsClosing) -> Reply:
        legacy = body.get("ver") is None
        if not self.accepting:
            return error_reply(Condition.SYSTEM_SHUTDOWN)
        try:
            terms = negotiate(body, self.limits, self.domains)
            sid = self.registry.reserve()
        except BoshError as exc:
            log.info("session refused: %s", exc)
            return error_reply(exc.condition, legacy)
        driver = SessionDriver(self, sid)
        self.registry.add(sid, driver)
        return await driver.create(terms, is_closing)

    async def shutdown(self, condition: Condition = Condition.SYSTEM_SHUTDOWN) -> None:
        """Stop accepting sessions and end every open one with ``condition`` (§17.2)."""
        self.accepting = False
        for driver in self.registry:
            driver.end(condition)


class SessionDriver:
    """Executes one session's events; is the session's ``UpstreamListener``."""

    def __init__(self, manager: Manager, sid: str) -> None:
        self.manager = manager
        self.sid = sid
        self.session: Session | None = None
        self.upstream: Upstream | None = None
        self._loop = asyncio.get_running_loop()
        self._futures: dict[int, asyncio.Future[Reply]] = {}
        self._closing: dict[int, IsClosing] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # -- requests ---------------------------------------------------------------------------

    async def create(self, terms: Terms, is_closing: IsClosing) -> Reply:
        req, fut = self._new_request(is_closing)
        self.session = Session(self.sid, terms, req, self._loop.time())
        log.info("session %s created for %s", self.sid, terms.stream.to)
        self._execute(self.session.initial_events())
        return await self._wait(req, fut)

    async def request(self, body: wire.Body, is_closing: IsClosing) -> Reply:
        req, fut = self._new_request(is_closing)
        self._call(lambda s, now: s.receive(req, body, now))
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
            if not fut.done():
                self._forget(req)
                self._call(lambda s, now: s.request_gone(req, now))
            raise

    def _forget(self, req: int) -> None:
        self._futures.pop(req, None)
        self._closing.pop(req, None)

    # -- upstream listener ------------------------------------------------------------------

    def upstream_ready(self, info: StreamInfo, features: bytes) -> None:
        self._call(lambda s, now: s.upstream_ready(info, features, now))

    def upstream_elements(self, elements: Sequence[bytes]) -> None:
        self._call(lambda s, now: s.upstream_elements(list(elements), now))

    def upstream_closed(self, condition: Condition, stream_error: bytes | None) -> None:
        log.info("session %s upstream closed: %s", self.sid, condition.value)
        self._call(lambda s, now: s.upstream_closed(condition, stream_error, now))

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
        except Exception:  # a bug in the core must not take other sessions down
            log.exception("session %s: internal error", self.sid)
            self._crash()
            return
        self._execute(events)

    def _reap_dead(self, session: Session, now: float) -> None:
        """Before data is put into a held request, drop requests whose connection is
        already closing, so their data goes to the next request instead (design.md §4)."""
        for req, is_closing in list(self._closing.items()):
            if is_closing():
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
                self.upstream = self.manager.upstreams.open(ev.params, self)
            elif isinstance(ev, RestartUpstream):
                if self.upstream is not None:
                    self.upstream.restart(ev.params)
            elif isinstance(ev, CloseUpstream):
                if self.upstream is not None:
                    self.upstream.close()
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
        cond = ev.condition.value if ev.condition else "none"
        log.info("session %s ended (condition %s)", self.sid, cond)
        self.manager.registry.remove(self.sid)
        for fut in self._futures.values():  # parked requests were answered by the core
            if not fut.done():
                fut.set_result(error_reply(Condition.ITEM_NOT_FOUND))
        self._futures.clear()
        self._closing.clear()
        self.upstream = None

    def _crash(self) -> None:
        reply = Reply(200, wire.render_terminate(Condition.INTERNAL_SERVER_ERROR))
        for fut in self._futures.values():
            if not fut.done():
                fut.set_result(reply)
        self._futures.clear()
        self._closing.clear()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.manager.registry.remove(self.sid)
        self.session = None
        self._cancel_timer()

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
