"""The process hub: what every client transport shares (asyncio, no aiohttp).

One :class:`Hub` per process holds the session table of all transports, the per-address
limits, the served domains, the metrics, the upstream factory, and the operator's
controls: draining (SIGTERM), reload (SIGHUP), see-other-uri. Each transport is an endpoint
on top of it (``bosh.driver.Manager`` for BOSH, ``bosh.ws_driver.WsEndpoint`` for
WebSocket) whose per-session drivers subclass :class:`UpstreamLink`, the one place upstream
events are executed and a session's bookkeeping is undone. A third transport is one more
endpoint; it gets limits, metrics, shutdown and reload from here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Callable, ClassVar, Protocol, Sequence

from bosh.errors import BoshError, Condition
from bosh.events import (CloseUpstream, EndCondition, FinishUpstream, FlowControl, OpenUpstream,
                         RestartUpstream, SendUpstream)
from bosh.limits import ClientLimits, PerIpLimitHit
from bosh.metrics import Metrics
from bosh.ports import Clock, StreamInfo, Timer, Upstream, UpstreamFactory
from bosh.registry import Registry

__all__ = ["Hub", "HubSession", "UpstreamLink", "TRANSPORTS"]

log = logging.getLogger("bosh.hub")

TRANSPORTS = ("bosh", "websocket")
_PRUNE_EVERY = 60.0  # seconds between sweeps of the per-address creation windows


class HubSession(Protocol):
    """What the hub needs of a live session, whatever its transport."""

    sid: str

    @property
    def transport(self) -> str:
        """'bosh' or 'websocket' (the ``transport`` label of the metrics)."""

    @property
    def domain(self) -> str | None:
        """The served domain the session talks to (None before the client named one)."""

    def end(self, condition: Condition) -> None:
        """The operator ends the session (e.g. host-gone after a reload, XEP-0124 §17.2)."""

    def shutdown(self) -> None:
        """The process stops (SIGTERM): end the session the way its transport does."""

    def drain(self) -> None:
        """A cluster drain begins: a session that can go on through another node is
        released now; one that cannot keeps being served (``Hub.drain``)."""


class Hub:
    """Sessions of every transport in one process, and the limits they share.

    ``client_limits`` bounds sessions per client address, ``max_stanza_bytes`` (0 = no
    bound) the size of one client element (a BOSH payload element, a WebSocket message).
    """

    def __init__(self, domains: Sequence[str], max_sessions: int, upstreams: UpstreamFactory, *,
                 client_limits: ClientLimits | None = None, max_stanza_bytes: int = 0,
                 metrics: Metrics | None = None, see_other_uri: str = "",
                 node_id: str = "", clock: Clock | None = None) -> None:
        #: The drivers' time and timers (design.md §3: the cores get ``now`` from here).
        self.clock: Clock = clock if clock is not None else asyncio.get_running_loop()
        self.domains = frozenset(d.lower() for d in domains)
        self.upstreams = upstreams
        self.node_id = node_id
        self.registry: Registry[HubSession] = Registry(max_sessions, node_id)
        self.client_limits = client_limits if client_limits is not None else ClientLimits()
        self.max_stanza_bytes = max_stanza_bytes
        self.see_other_uri = see_other_uri
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.sessions_open.set_function(lambda: len(self.registry))
        for transport in TRANSPORTS:
            self.metrics.transport_sessions_open.labels(transport).set_function(
                self._counter(transport))
        self.metrics.node_info.labels(node_id).set(1)
        self.accepting = True
        self._pruned_at = 0.0
        self._empty = asyncio.Event()

    def _counter(self, transport: str) -> Callable[[], int]:
        return lambda: sum(1 for s in self.registry if s.transport == transport)

    def serves(self, domain: str) -> bool:
        return domain.lower() in self.domains

    def admit(self, client_ip: str, now: float) -> str:
        """A fresh sid for a new session from ``client_ip``, or ``BoshError(POLICY_VIOLATION)``
        (counted in ``bosh_limit_hits_total`` by limit) when a limit refuses it."""
        if now - self._pruned_at > _PRUNE_EVERY:
            self.client_limits.prune(now)
            self._pruned_at = now
        try:
            sid = self.registry.reserve()
        except BoshError as exc:
            log.warning("session refused for %s: %s (max_sessions %d)", client_ip, exc,
                        self.registry.max_sessions)
            self.metrics.limit_hits.labels("sessions").inc()
            raise
        try:
            self.client_limits.admit(client_ip, now)
        except PerIpLimitHit as exc:
            self.metrics.limit_hits.labels("per_ip").inc()
            if self.client_limits.should_warn(client_ip, now):
                # Once per address per minute (the counter has every refusal).
                log.warning("per-IP limit: refusing new sessions from %s ([bosh] %s = %d reached; "
                            "raise it if many users share that address, or list your proxy in "
                            "[http] trusted_proxies if it is the proxy's address)",
                            client_ip, exc.key, exc.limit)
            else:
                log.debug("session refused for %s: %s", client_ip, exc)
            raise
        return sid

    def add(self, session: HubSession) -> None:
        self.registry.add(session.sid, session)
        self._empty.clear()
        self.metrics.sessions_created.inc()
        self.metrics.transport_sessions_created.labels(session.transport).inc()

    def remove(self, sid: str) -> None:
        self.registry.remove(sid)
        if not len(self.registry):
            self._empty.set()

    def reload(self, max_sessions: int, client_limits: ClientLimits, max_stanza_bytes: int,
               domains: Sequence[str] | None = None, see_other_uri: str = "") -> None:
        """Apply new limits (SIGHUP). Open sessions keep what they negotiated; their
        per-address counts carry over to the new policy. Sessions of a domain that is no
        longer served end with host-gone (XEP-0124 §17.2, RFC 6120 §4.9.3.5)."""
        self.registry.max_sessions = max_sessions
        self.client_limits.policy = client_limits.policy
        self.max_stanza_bytes = max_stanza_bytes
        self.see_other_uri = see_other_uri
        if domains is not None:
            self.domains = frozenset(d.lower() for d in domains)
            for session in self.registry:
                domain = session.domain
                if domain is not None and domain.lower() not in self.domains:
                    session.end(Condition.HOST_GONE)

    async def shutdown(self, wait: float = 3.0) -> None:
        """Stop accepting sessions and end every open one the way its transport ends it;
        wait (at most ``wait`` seconds) until they have: a BOSH session first reads what the
        server still sends after our closing tag (``Session.finish``)."""
        self.accepting = False
        for session in self.registry:
            session.shutdown()
        if len(self.registry) and wait > 0:
            try:
                await asyncio.wait_for(self._empty.wait(), wait)
            except TimeoutError:
                log.warning("shutdown: %d session(s) did not end within %g s", len(self.registry),
                            wait)

    async def drain(self, timeout: float) -> None:
        """A cluster node's drain (SIGTERM with ``[cluster] node_id``, a rolling restart).

        New sessions are refused at once (``/readyz`` 503, so the balancer sends none).
        WebSocket sessions are released at once: those the server keeps resumable get close
        1012 and their upstream is dropped without the footer, so the client resumes through
        another node (XEP-0198 §5); the others get system-shutdown. BOSH sessions cannot move,
        so they are served until they end or ``timeout`` seconds pass; then they get
        system-shutdown (XEP-0124 §17.2).
        """
        self.accepting = False
        for session in self.registry:
            session.drain()
        if len(self.registry):
            log.info("draining: %d session(s) left, waiting up to %g s", len(self.registry),
                     timeout)
            try:
                await asyncio.wait_for(self._empty.wait(), timeout)
            except TimeoutError:
                log.info("drain timeout: ending %d session(s)", len(self.registry))
        await self.shutdown()


#: A timer that goes off this close to its deadline counts as on time (the core compares
#: deadlines with its own ``now`` anyway and asks again when it is early).
_TIMER_SLACK = 0.001


class UpstreamLink:
    """The transport-neutral half of one session's driver: its upstream stream and its
    bookkeeping in the hub. Subclasses are the per-transport drivers; they also serve as
    the upstream's ``bosh.ports.UpstreamListener``."""

    __slots__ = ("hub", "sid", "client_ip", "upstream", "_loop", "_clock", "_upstream_live",
                 "_opened_at", "_forgotten", "_timer", "_timer_at", "_timer_fires", "_unwritable")

    transport: ClassVar[str]

    def __init__(self, hub: Hub, sid: str, client_ip: str) -> None:
        self.hub = hub
        self.sid = sid
        self.client_ip = client_ip
        self.upstream: Upstream | None = None
        self._loop = asyncio.get_running_loop()  # futures only; time comes from the clock
        self._clock = hub.clock
        self._timer: Timer | None = None
        self._timer_at: float | None = None   # the deadline the core asked for
        self._timer_fires: float | None = None  # when the armed timer goes off (<= _timer_at)
        self._upstream_live = False
        self._opened_at: float | None = None
        self._forgotten = False
        # Set while the server reads slower than this client writes (upstream_writable).
        self._unwritable: asyncio.Future[None] | None = None

    # -- the one timer per session (design.md §8 rule 5), for every transport's driver --------

    def arm_timer(self, deadline: float | None) -> None:
        """(Re-)arm the session's one timer for ``deadline``.

        Most requests move the deadline later (a new held request waits ``wait`` seconds
        from now). Then the armed timer is kept: it goes off early, once, and re-arms itself
        for the deadline then in force, instead of a cancel and a new timer per request
        (the cancelled ones also stay in the loop's heap until their time).
        """
        if deadline == self._timer_at:
            return
        if deadline is None:
            self._cancel_timer()
            return
        self._timer_at = deadline
        if self._timer_fires is not None and self._timer_fires <= deadline:
            return  # armed (``_timer_fires`` is set exactly while a timer is)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._clock.call_at(deadline, self._fire)
        self._timer_fires = deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None
        self._timer_fires = None

    def _fire(self) -> None:
        self._timer = None
        self._timer_fires = None
        deadline = self._timer_at
        if deadline is not None and deadline - self._clock.time() > _TIMER_SLACK:
            self._timer = self._clock.call_at(deadline, self._fire)  # went off early: see arm_timer
            self._timer_fires = deadline
            return
        self._timer_at = None
        self.on_timer()

    def on_timer(self) -> None:
        """The deadline passed: the driver calls its core's ``handle_timer``."""
        raise NotImplementedError

    def run_upstream_event(self, ev: object) -> bool:
        """Execute ``ev`` if it is one of the upstream events of ``bosh.events``."""
        if isinstance(ev, SendUpstream):
            if self.upstream is not None:
                self.upstream.send(ev.elements)
            self.hub.metrics.flow(self.transport, "in").add(
                len(ev.elements), sum(len(e.data) for e in ev.elements))
        elif isinstance(ev, OpenUpstream):
            self._opened_at = self._clock.time()
            self._upstream_live = True
            self.hub.metrics.upstreams_open.inc()
            # The cores know no addresses: the client's goes into the PROXY protocol
            # header, when [upstream] proxy_protocol asks for one.
            params = dataclasses.replace(ev.params, client_ip=self.client_ip)
            self.upstream = self.hub.upstreams.open(params, self)  # type: ignore[arg-type]
        elif isinstance(ev, RestartUpstream):
            if self.upstream is not None:
                self.upstream.restart(ev.params)
        elif isinstance(ev, CloseUpstream):
            if self.upstream is not None:
                self.upstream.close(end_stream=ev.end_stream)
            self.upstream_gone()
        elif isinstance(ev, FinishUpstream):
            if self.upstream is not None:
                self.upstream.finish()
        elif isinstance(ev, FlowControl):
            if self.upstream is not None:
                if ev.paused:
                    self.upstream.pause_reading()
                else:
                    self.upstream.resume_reading()
        else:
            return False
        return True

    def note_ready(self, info: StreamInfo) -> None:
        """Record the upstream's connect time once (``bosh_upstream_connect_seconds``)."""
        if self._opened_at is not None:
            took = self._clock.time() - self._opened_at
            self._opened_at = None
            self.hub.metrics.upstream_connect.observe(took)
            log.info("session %s upstream ready in %.3f s (%s)", self.sid, took, self.transport)

    def note_pushed(self, elements: Sequence[bytes]) -> None:
        self.hub.metrics.flow(self.transport, "out").add(len(elements), sum(map(len, elements)))

    # -- backpressure from the server toward the client (issue 11) ----------------------------

    def upstream_writable(self, writable: bool) -> None:
        """UpstreamListener: the server stopped (False) or resumed (True) reading what we
        write. In between, each transport stops taking client data (:meth:`until_writable`)
        so that it waits in the client's socket, not in our memory."""
        if not writable:
            if self._unwritable is None and self._upstream_live:
                self._unwritable = self._loop.create_future()
                log.info("session %s: server reads slower than the client writes; "
                         "client data waits (%s)", self.sid, self.transport)
        else:
            self._release_writers()

    @property
    def upstream_blocked(self) -> bool:
        """The server does not keep up with this client: take no more of its data."""
        return self._unwritable is not None

    async def until_writable(self) -> None:
        """Return once the server keeps up again (at once when it does, or when the upstream
        is gone: the session then ends through its own path)."""
        if self._unwritable is not None:
            await asyncio.shield(self._unwritable)

    def _release_writers(self) -> None:
        waiting, self._unwritable = self._unwritable, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def upstream_gone(self) -> None:
        self._release_writers()
        if self._upstream_live:
            self._upstream_live = False
            self.hub.metrics.upstreams_open.dec()

    def drop_upstream(self, end_stream: bool = True) -> None:
        """Close the upstream after a failure of ours; never raises."""
        if self.upstream is not None:
            try:
                self.upstream.close(end_stream=end_stream)
            except Exception:  # already failing; the session is gone either way
                log.exception("session %s: upstream close failed", self.sid)
            self.upstream = None
        self.upstream_gone()

    def forget(self, condition: EndCondition) -> None:
        """Undo the session's bookkeeping exactly once: registry, per-address slot, upstream
        gauge, end counters by condition. A session the hub never admitted (a refused
        WebSocket) only counts its error."""
        if self._forgotten:
            return
        self._forgotten = True
        m = self.hub.metrics
        label = condition.value if condition is not None else "none"
        if condition is not None:
            m.errors.labels(label).inc()
        self.upstream_gone()
        if self.hub.registry.get(self.sid) is not self:  # type: ignore[comparison-overlap]
            return
        m.sessions_ended.labels(label).inc()
        m.transport_sessions_ended.labels(self.transport, label).inc()
        self.hub.remove(self.sid)
        self.hub.client_limits.release(self.client_ip)
