"""The BOSH session state machine (sans-IO).

Calls in, events out, time passed in. Nothing here does I/O, reads a clock or knows asyncio.
The adapter (``bosh.driver``) executes the returned events and calls ``handle_timer`` at
``next_deadline()``.

Requests are identified by an opaque, hashable ``request`` token chosen by the adapter; the
session never looks inside it.

Invariants (checked by the unit tests in tests/core/):

* Payloads of client requests go upstream strictly in rid order, each exactly once
  (XEP-0124 §8, §14.2). Early rids wait in ``_parked`` until the gap is filled.
* ``_last_rid`` is the highest rid processed with no gap below it (checklist Q1).
* A processed rid is either still waiting for its answer (``_slots``; its HTTP request may
  have gone away, then the slot holds ``None`` and a resend of that rid takes it over) or
  answered, in which case its exact response bytes sit in ``_cache`` for replays (§14.3).
* Upstream data goes to the lowest-rid live held request, never to a higher one while a
  lower one waits (§8). With no live held request it is queued in ``_pending`` and the
  next request gets it at once.
* At most ``hold`` live requests are held; the oldest is answered when one more arrives (§8).
* Once ENDED, the session emits nothing more; the registry forgets it.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Union

from bosh.errors import BoshError, Condition
from bosh.ports import ClientElement, StreamInfo, StreamParams
from bosh.wire import Body, parse_bool, render_body, render_error, render_terminate

# The protocol version this connection manager implements (XEP-0124 §7.2 'ver').
VERSION = (1, 11)
DEFAULT_CONTENT = "text/xml; charset=utf-8"
MAX_WAIT_ATTRIBUTE = 65535  # the schema types 'wait' as unsignedShort (§22)


# ---------------------------------------------------------------------------------------
# Events (outputs)

@dataclass(frozen=True, slots=True)
class Respond:
    """Answer HTTP request ``request`` with ``body`` and HTTP ``status``."""

    request: Hashable
    body: bytes
    status: int = 200


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    params: StreamParams


@dataclass(frozen=True, slots=True)
class SendUpstream:
    elements: tuple[ClientElement, ...]


@dataclass(frozen=True, slots=True)
class RestartUpstream:
    params: StreamParams


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    pass


@dataclass(frozen=True, slots=True)
class SessionEnded:
    condition: Condition | None


Event = Union[Respond, OpenUpstream, SendUpstream, RestartUpstream, CloseUpstream, SessionEnded]


class State(enum.Enum):
    CONNECTING = "connecting"  # creation request received, upstream not ready yet
    OPEN = "open"
    DOOMED = "doomed"          # upstream gone with nobody held: the next request learns why
    ENDED = "ended"


# ---------------------------------------------------------------------------------------
# Negotiation of the creation request (XEP-0124 §7.1/§7.2, XEP-0206 §3/§4)

@dataclass(frozen=True, slots=True)
class Limits:
    """The server-side bounds a session is negotiated within (from ``[bosh]``)."""

    max_wait: int = 60
    max_inactivity: int = 60
    max_hold: int = 1
    polling: int = 2


@dataclass(frozen=True, slots=True)
class Terms:
    """What was agreed at creation."""

    rid: int
    wait: int
    hold: int
    requests: int
    inactivity: int
    polling: int
    ver: str | None          # the answered version; None for a legacy client that sent none
    content: str
    stream: StreamParams

    @property
    def legacy(self) -> bool:
        return self.ver is None


def _int_attr(body: Body, name: str, default: int, hi: int) -> int:
    raw = body.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or int(raw) > hi:
        raise BoshError(Condition.BAD_REQUEST, f"invalid '{name}' attribute")
    return int(raw)


def _negotiate_ver(raw: str | None) -> str | None:
    if raw is None:
        return None
    major_s, dot, minor_s = raw.partition(".")
    if not dot or not (major_s.isascii() and major_s.isdigit() and minor_s.isascii() and minor_s.isdigit()):
        raise BoshError(Condition.BAD_REQUEST, "invalid 'ver' attribute")
    # §7.1: the minor number is an integer of its own ('1.10' > '1.9').
    asked = (int(major_s), int(minor_s))
    major, minor = min(asked, VERSION)
    return f"{major}.{minor}"


def negotiate(body: Body, limits: Limits, domains: frozenset[str]) -> Terms:
    """Validate a creation request and agree the session terms, or raise ``BoshError``."""
    rid = body.rid
    if rid is None:
        raise BoshError(Condition.BAD_REQUEST, "missing or invalid 'rid'")  # §6, checklist #14
    ver = _negotiate_ver(body.get("ver"))
    to = body.get("to")
    if not to:
        raise BoshError(Condition.IMPROPER_ADDRESSING, "missing 'to'")  # §17.2
    if to.lower() not in domains:
        raise BoshError(Condition.HOST_UNKNOWN, f"domain not served: {to!r}")  # §17.2
    asked_wait = _int_attr(body, "wait", limits.max_wait, MAX_WAIT_ATTRIBUTE)
    asked_hold = _int_attr(body, "hold", 1, MAX_WAIT_ATTRIBUTE)
    wait = min(asked_wait, limits.max_wait)        # §7.2 MUST: not more than asked
    hold = min(asked_hold, limits.max_hold)        # §7.2 MUST NOT exceed the request
    polling_session = wait == 0 or hold == 0       # §7.1/§12
    inactivity = limits.max_inactivity
    if polling_session:
        # §12 SHOULD: polling sessions get a longer inactivity, by more than 'polling'.
        inactivity += 2 * limits.polling + 1
    stream = StreamParams(
        to=to,
        lang=body.get("xml:lang"),
        from_=body.get("from"),
        version=body.get("xmpp:version") or "1.0",  # schema default (checklist Q8)
    )
    return Terms(
        rid=rid, wait=wait, hold=hold,
        requests=hold + 1,  # §7.2 RECOMMENDED: hold + 1
        inactivity=inactivity, polling=limits.polling, ver=ver,
        content=body.get("content") or DEFAULT_CONTENT,
        stream=stream,
    )


# ---------------------------------------------------------------------------------------

class Session:
    """One BOSH session. See the module docstring for the invariants."""

    def __init__(self, sid: str, terms: Terms, request: Hashable, now: float) -> None:
        self.sid = sid
        self.terms = terms
        self.state = State.CONNECTING
        self.ended_condition: Condition | None = None
        self._creation_request: Hashable | None = request
        self._last_rid = terms.rid
        self._parked: dict[int, tuple[Hashable, Body]] = {}
        self._slots: dict[int, Hashable | None] = {}     # processed, not yet answered; rid order
        self._deadlines: dict[int, float] = {}            # wait deadline per live slot
        self._where: dict[Hashable, int] = {}             # live request -> its rid (slot or parked)
        self._cache: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._pending: list[bytes] = []                   # from upstream, not yet delivered
        self._early: list[ClientElement] = []             # from the client before upstream ready
        self._doom: tuple[Condition, bytes] | None = None
        self._idle_since: float | None = None             # None while a request is held
        self._out: list[Event] = []
        self._now = now  # time of the input being handled; set by every public call
        self._emit(OpenUpstream(terms.stream))

    @property
    def content_type(self) -> str:
        return self.terms.content

    @property
    def held_count(self) -> int:
        return sum(1 for r in self._slots.values() if r is not None)

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out

    def _emit(self, event: Event) -> None:
        self._out.append(event)

    def initial_events(self) -> list[Event]:
        """Events produced by construction (the OpenUpstream)."""
        return self._take()

    # -- inputs ---------------------------------------------------------------------------

    def upstream_ready(self, info: StreamInfo, features: bytes, now: float) -> list[Event]:
        """XEP-0206 §4: answer the creation request with the terms and the first features."""
        self._now = now
        if self.state is not State.CONNECTING:
            return self._take()
        self.state = State.OPEN
        t = self.terms
        attrs = {
            "sid": self.sid,
            "wait": str(t.wait),
            "requests": str(t.requests),
            "hold": str(t.hold),
            "inactivity": str(t.inactivity),
            "polling": str(t.polling),
            "ver": t.ver or "%d.%d" % VERSION,
            "from": info.from_ or t.stream.to,
            "xmpp:version": info.version or t.stream.version,
            "xmpp:restartlogic": "true",
        }
        if info.id:
            attrs["authid"] = info.id
        body = render_body(attrs, (features,))
        request = self._creation_request
        self._creation_request = None
        if request is not None:
            self._where.pop(request, None)
            self._emit(Respond(request, body))
        self._idle_since = now
        if self._early:
            self._emit(SendUpstream(tuple(self._early)))
            self._early.clear()
        return self._take()

    def upstream_elements(self, elements: list[bytes] | tuple[bytes, ...], now: float) -> list[Event]:
        self._now = now
        if self.state is State.OPEN:
            self._pending.extend(elements)
            self._flush(now)
        return self._take()

    def upstream_closed(self, condition: Condition, stream_error: bytes | None, now: float) -> list[Event]:
        """The upstream stream ended: tell the client at once (XEP-0124 §17.2, XEP-0206 §6)."""
        self._now = now
        if self.state is State.ENDED or self.state is State.DOOMED:
            return self._take()
        payload = list(self._pending)
        self._pending.clear()
        if stream_error is not None:
            payload.append(stream_error)
        body = render_terminate(condition, payload)
        if self.state is State.CONNECTING:
            request = self._creation_request
            self._creation_request = None
            if request is not None:
                self._where.pop(request, None)
                self._emit(Respond(request, body, self._status(condition)))
            self._end(condition, now, close_upstream=False)
            return self._take()
        live = self._live_rids()
        if live:
            first, *rest = live
            self._answer(first, body, self._status(condition))
            for rid in rest:
                self._answer(rid, render_terminate(condition), self._status(condition))
            self._end(condition, now, close_upstream=False)
        else:
            # Nobody to tell right now: keep the terminal body for the next request (#95).
            self.state = State.DOOMED
            self._doom = (condition, body)
            if self._idle_since is None:
                self._idle_since = now
        return self._take()

    def receive(self, request: Hashable, body: Body, now: float) -> list[Event]:
        """A request for this session arrived (XEP-0124 §8, §14)."""
        self._now = now
        if self.state is State.ENDED:
            self._emit(Respond(request, render_terminate(Condition.ITEM_NOT_FOUND),
                               self._status(Condition.ITEM_NOT_FOUND)))
            return self._take()
        if self.state is State.DOOMED:
            assert self._doom is not None
            condition, doom_body = self._doom
            self._emit(Respond(request, doom_body, self._status(condition)))
            self._end(condition, now, close_upstream=False)
            return self._take()
        rid = body.rid
        if rid is None:
            return self._fail(request, Condition.BAD_REQUEST, now)
        if rid <= self._last_rid:
            return self._repeat(request, rid, now)
        if rid > self._last_rid + self.terms.requests:
            return self._fail(request, Condition.ITEM_NOT_FOUND, now)  # §14.2 MUST
        old = self._parked.get(rid)
        if old is not None:
            # The same early rid again: the newer copy replaces the older (§14.3 spirit).
            self._where.pop(old[0], None)
            self._emit(Respond(old[0], render_error()))
        self._parked[rid] = (request, body)
        self._where[request] = rid
        while self.state is not State.ENDED and (nxt := self._parked.pop(self._last_rid + 1, None)):
            self._process(nxt[0], self._last_rid + 1, nxt[1], now)
        if self.state is not State.ENDED:
            self._enforce_hold()
            self._flush(now)
        return self._take()

    def request_gone(self, request: Hashable, now: float) -> list[Event]:
        """The client's HTTP request went away before it was answered.

        Its rid stays processed; data meant for it stays queued for the next request.
        """
        self._now = now
        if request == self._creation_request:
            self._creation_request = None
            return self._take()
        rid = self._where.pop(request, None)
        if rid is None:
            return self._take()
        if rid in self._slots and self._slots[rid] == request:
            self._slots[rid] = None
            self._deadlines.pop(rid, None)
            if self._idle_since is None and not self._live_rids():
                self._idle_since = now
        elif rid in self._parked and self._parked[rid][0] == request:
            del self._parked[rid]
        return self._take()

    def handle_timer(self, now: float) -> list[Event]:
        self._now = now
        if self.state is State.ENDED:
            return self._take()
        for rid, deadline in list(self._deadlines.items()):
            if deadline <= now and rid in self._deadlines:
                self._answer(rid, self._drain_pending())  # §8: empty body when wait expires
        if self._idle_since is not None and now >= self._idle_since + self.terms.inactivity \
                and self._creation_request is None:
            # §10: silently end a session nobody polls any more.
            condition = self._doom[0] if self._doom else None
            self._end(condition, now, close_upstream=self._doom is None)
        return self._take()

    def shutdown(self, condition: Condition, now: float) -> list[Event]:
        """End the session from the server side (e.g. system-shutdown, §17.2)."""
        self._now = now
        if self.state is not State.ENDED:
            if self._creation_request is not None:
                self._emit(Respond(self._creation_request, render_terminate(condition)))
                self._creation_request = None
            for rid in self._live_rids():
                self._answer(rid, render_terminate(condition), cache=False)
            self._end(condition, now, close_upstream=True)
        return self._take()

    def next_deadline(self) -> float | None:
        if self.state is State.ENDED:
            return None
        candidates = list(self._deadlines.values())
        if self._idle_since is not None and self._creation_request is None:
            candidates.append(self._idle_since + self.terms.inactivity)
        return min(candidates) if candidates else None

    # -- internals --------------------------------------------------------------------------

    def _status(self, condition: Condition) -> int:
        # §17.1: legacy HTTP error codes only for clients that sent no 'ver'.
        return condition.legacy_http_status if self.terms.legacy else 200

    def _live_rids(self) -> list[int]:
        return [rid for rid, req in self._slots.items() if req is not None]

    def _repeat(self, request: Hashable, rid: int, now: float) -> list[Event]:
        if rid in self._slots:
            old = self._slots[rid]
            if old is not None:
                # §14.3: answer the older copy with the recoverable error, hold the newer.
                self._where.pop(old, None)
                self._emit(Respond(old, render_error()))
            self._slots[rid] = request
            self._where[request] = rid
            self._deadlines[rid] = now + self.terms.wait
            self._idle_since = None
            self._enforce_hold()
            self._flush(now)
            return self._take()
        cached = self._cache.get(rid)
        if cached is not None:
            status, data = cached
            self._emit(Respond(request, data, status))  # §14.3: byte for byte
            return self._take()
        return self._fail(request, Condition.ITEM_NOT_FOUND, now)  # §14.3 MUST

    def _process(self, request: Hashable, rid: int, body: Body, now: float) -> None:
        """Handle the next in-order request: its payload goes upstream now (§8 SHOULD)."""
        self._where.pop(request, None)
        self._last_rid = rid
        if body.get("type") == "terminate":
            self._terminate(request, rid, body, now)
            return
        if parse_bool(body.get("xmpp:restart")):
            # XEP-0206 §5: new stream header on the same connection; stanzas ignored (#121).
            s = self.terms.stream
            params = StreamParams(
                to=body.get("to") or s.to,
                lang=body.get("xml:lang") or s.lang,
                from_=body.get("from") or s.from_,
                version=s.version,
                route=s.route,
            )
            self._emit(RestartUpstream(params))
        elif body.payload:
            if self.state is State.CONNECTING:
                self._early.extend(body.payload)
            else:
                self._emit(SendUpstream(body.payload))
        self._slots[rid] = request
        self._where[request] = rid
        self._deadlines[rid] = now + self.terms.wait
        self._idle_since = None
        self._prune_slots()

    def _terminate(self, request: Hashable, rid: int, body: Body, now: float) -> None:
        """§13: forward the payload, then the oldest open request gets type='terminate'."""
        if body.payload and self.state is State.OPEN:
            self._emit(SendUpstream(body.payload))
        self._slots[rid] = request
        self._where[request] = rid
        live = self._live_rids()
        self._answer(live[0], render_terminate())
        for other in live[1:]:
            self._answer(other, render_body())
        self._end(None, now, close_upstream=True)

    def _fail(self, request: Hashable, condition: Condition, now: float) -> list[Event]:
        """A terminal error caused by ``request``: others are told other-request (§17.2)."""
        self._where.pop(request, None)
        self._emit(Respond(request, render_terminate(condition), self._status(condition)))
        for rid in self._live_rids():
            self._answer(rid, render_terminate(Condition.OTHER_REQUEST), cache=False)
        self._end(condition, now, close_upstream=True)
        return self._take()

    def _end(self, condition: Condition | None, now: float, close_upstream: bool) -> None:
        for req, _body in self._parked.values():
            self._emit(Respond(req, render_terminate(Condition.OTHER_REQUEST)))
        self._parked.clear()
        self._where.clear()
        self._slots.clear()
        self._deadlines.clear()
        self._pending.clear()
        self._cache.clear()
        self.state = State.ENDED
        self.ended_condition = condition
        if close_upstream:
            self._emit(CloseUpstream())
        self._emit(SessionEnded(condition))

    def _answer(self, rid: int, body: bytes, status: int = 200, cache: bool = True) -> None:
        """Answer the live request holding ``rid``; cache the bytes before they are written
        so a broken connection can be healed by a resend (§14.3)."""
        request = self._slots.pop(rid)
        self._deadlines.pop(rid, None)
        assert request is not None
        self._where.pop(request, None)
        if cache:
            self._cache[rid] = (status, body)
            while len(self._cache) > self.terms.requests:
                self._cache.popitem(last=False)
        self._emit(Respond(request, body, status))
        if self._idle_since is None and not self._live_rids():
            self._idle_since = self._now  # §10: the inactivity clock starts now
        self._prune_slots()

    def _drain_pending(self) -> bytes:
        if not self._pending:
            return render_body()
        body = render_body(None, self._pending)
        self._pending = []
        return body

    def _enforce_hold(self) -> None:
        """§8: never hold more than 'hold' requests; the oldest is answered first."""
        live = self._live_rids()
        excess = len(live) - self.terms.hold
        for rid in live[:max(excess, 0)]:
            self._answer(rid, self._drain_pending())

    def _flush(self, now: float) -> None:
        if self._pending:
            live = self._live_rids()
            if live:
                self._answer(live[0], self._drain_pending())

    def _prune_slots(self) -> None:
        # A slot whose request went away and that the client never resent cannot be
        # answered; once it falls out of the window a resend would be item-not-found anyway.
        floor = self._last_rid - self.terms.requests
        for rid in [r for r, req in self._slots.items() if req is None and r <= floor]:
            del self._slots[rid]
