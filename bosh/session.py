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
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence, Union

from bosh.errors import BoshError, Condition
from bosh.events import (CloseUpstream, FinishUpstream, FlowControl, OpenUpstream, RestartUpstream,
                         SendUpstream, SessionEnded)
from bosh.ports import ClientElement, StreamInfo, StreamParams
from bosh.wire import Body, bounce, parse_bool, parse_route, parse_uint, render_body, render_error, render_terminate

# The protocol version this connection manager implements (XEP-0124 §7.2 'ver').
VERSION = (1, 11)
DEFAULT_CONTENT = "text/xml; charset=utf-8"
MAX_WAIT_ATTRIBUTE = 65535  # the schema types 'wait' as unsignedShort (§22)
# 'requests' exceeds the hold a client asked for (§7.2), but it also sizes the rid window,
# i.e. how many early requests may be parked and answers cached: bound the asked hold.
MAX_REQUESTS_HOLD = 16


# ---------------------------------------------------------------------------------------
# Events (outputs)

@dataclass(frozen=True, slots=True)
class Respond:
    """Answer HTTP request ``request`` with ``body`` and HTTP ``status``."""

    request: Hashable
    body: bytes
    status: int = 200


Event = Union[Respond, OpenUpstream, SendUpstream, RestartUpstream, CloseUpstream, FinishUpstream,
              FlowControl, SessionEnded]


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
    max_pause: int = 120                                # 0: pausing not offered (§10)
    routes: frozenset[tuple[str, int]] = frozenset()   # allow-listed 'route' targets
    max_repeats: int = 10                               # resends of one rid (§14.3 MAY cap)
    max_queued_bytes: int = 1_048_576                   # upstream reading pauses above this


# Content codings we can decode in requests and use for responses (§7.1/§7.2 'accept').
CODINGS = ("gzip", "deflate")


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
    acks: bool = False                 # §9.1: the client asked for request acks
    maxpause: int = 0                  # §10: advertised maximum pause, 0 = none
    accept: tuple[str, ...] = ()       # §7.1: codings the client can decode in responses
    newkey: str | None = None          # §15: first key of the client's key sequence
    max_repeats: int = 10              # §14.3: resends of one rid before policy-violation
    max_queued_bytes: int = 1_048_576  # queued server data that pauses upstream reading

    @property
    def legacy(self) -> bool:
        return self.ver is None


def _int_attr(body: Body, name: str, default: int, hi: int) -> int:
    raw = body.get(name)
    if raw is None:
        return default
    value = parse_uint(raw)
    if value is None or value > hi:
        raise BoshError(Condition.BAD_REQUEST, f"invalid '{name}' attribute")
    return value


def _negotiate_ver(raw: str | None) -> str | None:
    if raw is None:
        return None
    major_s, dot, minor_s = raw.partition(".")
    major, minor = parse_uint(major_s, 6), parse_uint(minor_s, 6)
    if not dot or major is None or minor is None:
        raise BoshError(Condition.BAD_REQUEST, "invalid 'ver' attribute")
    # §7.1: the minor number is an integer of its own ('1.10' > '1.9').
    asked = (major, minor)
    answer = min(asked, VERSION)
    return f"{answer[0]}.{answer[1]}"


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _content_type(raw: str | None) -> str:
    """§7.1 'content' is echoed as every response's Content-Type (#7), so it must be a
    plausible media type: printable ASCII, no CR/LF (header injection), 'type/subtype'."""
    if raw is None:
        return DEFAULT_CONTENT
    media, _, _params = raw.partition(";")
    kind, slash, sub = media.strip().partition("/")
    printable = all(" " <= ch <= "~" for ch in raw)
    if not (printable and slash and kind and sub and len(raw) <= 256
            and set(kind) <= _TOKEN_CHARS and set(sub) <= _TOKEN_CHARS):
        raise BoshError(Condition.BAD_REQUEST, "invalid 'content' attribute")
    return raw


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
        route=_allowed_route(body.get("route"), limits.routes),
    )
    accept = tuple(c for c in (x.strip().lower() for x in (body.get("accept") or "").split(","))
                   if c in CODINGS)
    return Terms(
        rid=rid, wait=wait, hold=hold,
        # §7.2: 'requests' must exceed the hold the client asked for, even when we granted
        # less (checklist Q2); hold + 1 is the recommended value.
        requests=min(max(asked_hold, hold), MAX_REQUESTS_HOLD) + 1,
        inactivity=inactivity, polling=limits.polling, ver=ver,
        content=_content_type(body.get("content")),
        stream=stream,
        acks=body.get("ack") == "1",
        maxpause=limits.max_pause,
        accept=accept,
        newkey=body.get("newkey"),
        max_repeats=limits.max_repeats,
        max_queued_bytes=limits.max_queued_bytes,
    )


def _allowed_route(raw: str | None, allowed: frozenset[tuple[str, int]]) -> tuple[str, int] | None:
    """A 'route' is honoured only when the operator allow-listed it; anything else is
    refused, or we would be an open TCP relay (checklist #27 REC, §19)."""
    if raw is None:
        return None
    target = parse_route(raw)
    if target is None:
        raise BoshError(Condition.BAD_REQUEST, "malformed 'route'")
    if target not in allowed:
        raise BoshError(Condition.HOST_UNKNOWN, "route not allowed")
    return target


# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Parked:
    """An early request waiting for the gap below its rid to fill (§14.2)."""

    request: Hashable
    body: Body
    deadline: float  # 'wait' after arrival: then the client is told to resend (§17.3)


@dataclass(slots=True)
class _Sent:
    """A cached answer (§14.3): exact bytes, when it was sent (§9.2 'time'), resends so far."""

    status: int
    body: bytes
    at: float
    had_payload: bool
    repeats: int = 0


class Session:
    """One BOSH session. See the module docstring for the invariants."""

    # Thousands of these live at once: no per-instance __dict__.
    __slots__ = (
        "_cache", "_cache_limit", "_creation_request", "_deadlines", "_doom", "_early",
        "_idle_since", "_inactivity", "_key", "_last_new", "_last_rid", "_now", "_out",
        "_parked", "_paused", "_pending", "_pending_bytes", "_slots", "_where", "sid", "state",
        "terms", "_finishing", "_finish_deadline", "_upstream_done", "_waiting",
    )

    def __init__(self, sid: str, terms: Terms, request: Hashable, now: float) -> None:
        self.sid = sid
        self.terms = terms
        self.state = State.CONNECTING
        self._now = now  # time of the input being handled; set by every public call
        self._creation_request: Hashable | None = request
        self._last_rid = terms.rid
        self._parked: dict[int, _Parked] = {}             # early rids (§14.2)
        self._slots: dict[int, Hashable | None] = {}     # processed, not yet answered; rid order
        self._deadlines: dict[int, float] = {}            # wait deadline per live slot
        self._where: dict[Hashable, int] = {}             # live request -> its rid (slot or parked)
        self._cache: OrderedDict[int, _Sent] = OrderedDict()
        # With acks the cache keeps every unacknowledged answer (§9.2), within a bound.
        self._cache_limit = max(terms.requests, 32) if terms.acks else terms.requests
        self._pending: list[bytes] = []                   # from upstream, not yet delivered
        self._finishing: Condition | None = None          # finish(): waiting for the server's close
        self._finish_deadline = 0.0
        self._upstream_done: Condition | None = None      # finished upstream; pending still to go
        self._pending_bytes = 0
        self._paused = False                              # upstream reading paused (FlowControl)
        self._early: list[ClientElement] = []             # from the client before upstream ready
        self._doom: tuple[Condition, bytes] | None = None
        self._idle_since: float | None = None             # None while a request is held
        self._waiting = 0  # requests held back by the driver (backpressure): count as held
        self._inactivity = terms.inactivity               # lowered/raised by 'pause' (§10)
        self._last_new: tuple[float, bool] | None = None  # arrival, empty: for §11/§12 checks
        self._key = terms.newkey                          # §15 key sequence
        self._out: list[Event] = [OpenUpstream(terms.stream)]

    @property
    def alive(self) -> bool:
        return self.state is not State.ENDED

    @property
    def content_type(self) -> str:
        return self.terms.content

    @property
    def held_count(self) -> int:
        return sum(1 for r in self._slots.values() if r is not None)

    def initial_events(self) -> list[Event]:
        """Events produced by construction (the OpenUpstream)."""
        return self._take()

    # -- inputs from upstream ---------------------------------------------------------------

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
            "accept": ",".join(CODINGS),
            "xmpp:version": info.version or t.stream.version,
            "xmpp:restartlogic": "true",
        }
        if t.maxpause:
            attrs["maxpause"] = str(t.maxpause)  # §7.2: only when pausing is supported
        if t.acks:
            attrs["ack"] = str(t.rid)  # §7.2/§9.1: the creation response acks its own rid
        if info.id:
            attrs["authid"] = info.id  # XEP-0206 §4 (obsolete, still sent for old clients)
        request = self._creation_request
        self._creation_request = None
        body = render_body(attrs, (features,))
        self._cache[t.rid] = _Sent(200, body, now, True)
        if request is not None:
            self._emit(Respond(request, body))
        self._idle_since = now
        if self._early:
            self._emit(SendUpstream(tuple(self._early)))
            self._early.clear()
        return self._take()

    def upstream_elements(self, elements: Sequence[bytes], now: float) -> list[Event]:
        self._now = now
        if self.state is State.OPEN:
            self._pending.extend(elements)
            self._pending_bytes += sum(map(len, elements))
            self._flush()
            if not self._paused and self._pending_bytes > self.terms.max_queued_bytes:
                self._paused = True
                self._emit(FlowControl(paused=True))
        return self._take()

    def upstream_closed(self, condition: Condition, stream_error: bytes | None, now: float) -> list[Event]:
        """The upstream stream ended: tell the client at once (XEP-0124 §17.2, XEP-0206 §6)."""
        self._now = now
        if self.state is State.ENDED or self.state is State.DOOMED:
            return self._take()
        if self._finishing is not None and stream_error is None:
            # The server answered our </stream:stream> (finish): everything it sent before has
            # arrived. What the client has not read yet goes out first, then the terminate.
            condition, self._finishing = self._finishing, None
            if not self._live_rids():
                if self._pending:
                    self._upstream_done = condition  # settled by _take once the queue is empty
                else:
                    self._stop(condition, close_upstream=False)
                return self._take()
        self._gone(condition, stream_error)
        return self._take()

    def _gone(self, condition: Condition, stream_error: bytes | None) -> None:
        """The upstream is gone: the client learns ``condition`` now, or with its next request."""
        payload = list(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if stream_error is not None:
            payload.append(stream_error)  # §17.2/0206 §6: stanzas first, then the error
        if self.state is State.CONNECTING:
            request = self._creation_request
            self._creation_request = None
            if request is not None:
                self._emit(Respond(request, render_terminate(condition, payload), self._status(condition)))
            self._end(condition, close_upstream=False, others=condition)
            return
        live = self._live_rids()
        if live:
            first, *rest = live
            self._answer(first, _term(condition), payload, self._status(condition))
            for rid in rest:
                self._answer(rid, _term(condition), (), self._status(condition))
            self._end(condition, close_upstream=False, others=condition)
        else:
            # Nobody to tell right now: keep the terminal body for the next request (#95).
            self.state = State.DOOMED
            self._doom = (condition, render_terminate(condition, payload))
            if self._idle_since is None:
                self._idle_since = self._now

    # -- inputs from the client -------------------------------------------------------------

    def receive(self, request: Hashable, body: Body, now: float) -> list[Event]:
        """A request for this session arrived (XEP-0124 §8, §14)."""
        self._now = now
        if self.state is State.ENDED:
            self._emit(Respond(request, render_terminate(Condition.ITEM_NOT_FOUND),
                               self._status(Condition.ITEM_NOT_FOUND)))
            return self._take()
        if self.state is State.DOOMED:
            assert self._doom is not None
            rid = body.rid
            sent = self._cache.get(rid) if rid is not None and rid <= self._last_rid else None
            if sent is not None:
                # A lost answer is still replayed (§14.3); the news waits for a new rid.
                self._emit(Respond(request, sent.body, sent.status))
                return self._take()
            condition, doom_body = self._doom
            self._emit(Respond(request, doom_body, self._status(condition)))
            self._end(condition, close_upstream=False)
            return self._take()
        rid = body.rid
        if rid is None:
            self._fail(request, Condition.BAD_REQUEST)
            return self._take()
        if rid <= self._last_rid:
            return self._repeat(request, rid)
        if rid > self._last_rid + self.terms.requests:
            self._fail(request, Condition.ITEM_NOT_FOUND)  # §14.2 MUST
            return self._take()
        old = self._parked.get(rid)
        if old is not None:
            # The same early rid again: the newer copy replaces the older (§14.3 spirit).
            self._where.pop(old.request, None)
            self._emit(Respond(old.request, render_error()))
        self._parked[rid] = _Parked(request, body, now + self.terms.wait)
        self._where[request] = rid
        while self.alive and (nxt := self._parked.pop(self._last_rid + 1, None)):
            self._process(nxt.request, self._last_rid + 1, nxt.body)
        if self.alive:  # processing may have ended the session
            self._enforce_hold()
            self._flush()
        return self._take()

    def reject(self, request: Hashable, condition: Condition, now: float) -> list[Event]:
        """A request for this session that could not be read at all (e.g. a comment in its
        payload): it gets ``condition`` and the session ends, others get other-request
        (§17.2 bad-request, checklist #93)."""
        self._now = now
        if self.state is State.ENDED:
            self._emit(Respond(request, render_terminate(Condition.ITEM_NOT_FOUND)))
        else:
            self._fail(request, condition)
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
        if self._slots.get(rid) == request:
            self._slots[rid] = None
            self._deadlines.pop(rid, None)
            if self._idle_since is None and not self._live_rids():
                self._idle_since = now
        elif rid in self._parked and self._parked[rid].request == request:
            del self._parked[rid]
            if not self._live_rids():
                self._idle_since = now
        return self._take()

    # -- time and the server side -----------------------------------------------------------

    def handle_timer(self, now: float) -> list[Event]:
        self._now = now
        if self.state is State.ENDED:
            return self._take()
        stuck = self._finishing or self._upstream_done
        if stuck is not None and now >= self._finish_deadline:
            return self.shutdown(stuck, now)  # the server never answered our closing tag
        for rid, deadline in list(self._deadlines.items()):
            if deadline <= now and rid in self._deadlines:
                self._answer_pending(rid)  # §8: an empty body when 'wait' runs out
        for rid, parked in list(self._parked.items()):
            if parked.deadline <= now:
                # The gap below this early rid never filled within 'wait': let the client
                # resend it rather than hold the connection forever (it stays unprocessed).
                del self._parked[rid]
                self._where.pop(parked.request, None)
                # §17.3: the recoverable error makes the client resend this request and every
                # earlier unanswered one, which fills the gap; its payload is not lost.
                self._emit(Respond(parked.request, render_error()))
                if not self._live_rids():
                    self._idle_since = now  # §10: the clock restarts with this answer
        if self._idle_since is not None and self._creation_request is None and not self._waiting \
                and not self._parked and now >= self._idle_since + self._inactivity:
            # §10: silently end a session nobody polls any more.
            condition = self._doom[0] if self._doom else None
            self._end(condition, close_upstream=self._doom is None)
        return self._take()

    def client_waiting(self, waiting: bool, now: float) -> list[Event]:
        """A request of this client waits outside the core (the driver holds it back while
        the server does not read, backpressure): for §10 it counts as a held request, so
        the session is not inactive; the clock restarts when none waits any more."""
        self._now = now
        self._waiting += 1 if waiting else -1
        if not self._waiting and self._idle_since is not None:
            self._idle_since = now
        return self._take()

    def finish(self, condition: Condition, now: float, grace: float) -> list[Event]:
        """End the session from the server side without losing what is in flight.

        ``</stream:stream>`` goes upstream first and the stream is read on until the server's
        own closing tag (RFC 6120 §4.4): stanzas it routed here before it saw ours still reach
        the client in ordinary responses; then the client gets ``condition``. A server
        that does not answer within ``grace`` seconds is not waited for (:meth:`shutdown`).
        Idempotent while finishing.
        """
        self._now = now
        if self._finishing is not None or self._upstream_done is not None:
            return self._take()
        if self.state is not State.OPEN:
            return self.shutdown(condition, now)
        self._finishing = condition
        self._finish_deadline = now + grace
        if not self._live_rids():
            # Nobody is polling: what waits now goes back to its senders while we still can
            # write (XEP-0206 §7), as shutdown() does; what arrives from here on is delivered
            # if the client polls before the server's closing tag or within ``grace``.
            self._bounce_pending()
        self._emit(FinishUpstream())
        return self._take()

    def shutdown(self, condition: Condition, now: float) -> list[Event]:
        """End the session from the server side (e.g. system-shutdown, §17.2)."""
        self._now = now
        if self.state is not State.ENDED:
            self._stop(condition, close_upstream=True)
        return self._take()

    def _stop(self, condition: Condition, close_upstream: bool) -> None:
        """Every waiting request learns ``condition``; the session ends."""
        if self._creation_request is not None:
            self._emit(Respond(self._creation_request, render_terminate(condition)))
            self._creation_request = None
        for rid in self._live_rids():
            self._answer(rid, _term(condition), (), cache=False)
        self._end(condition, close_upstream=close_upstream, others=condition)

    def next_deadline(self) -> float | None:
        if self.state is State.ENDED:
            return None
        candidates = [*self._deadlines.values(), *(p.deadline for p in self._parked.values())]
        if self._finishing is not None or self._upstream_done is not None:
            candidates.append(self._finish_deadline)
        if self._idle_since is not None and self._creation_request is None and not self._parked \
                and not self._waiting:
            candidates.append(self._idle_since + self._inactivity)
        return min(candidates) if candidates else None

    # -- internals --------------------------------------------------------------------------

    def _take(self) -> list[Event]:
        if self._upstream_done is not None and not self._pending and self.state is State.OPEN:
            # finish(): the last stanzas were delivered; the session ends as shutdown() ends
            # it (a held request learns the condition; the next request, item-not-found).
            condition, self._upstream_done = self._upstream_done, None
            self._stop(condition, close_upstream=False)
        out, self._out = self._out, []
        return out

    def _emit(self, event: Event) -> None:
        self._out.append(event)

    def _status(self, condition: Condition) -> int:
        # §17.1: legacy HTTP error codes only for clients that sent no 'ver'.
        return condition.legacy_http_status if self.terms.legacy else 200

    def _live_rids(self) -> list[int]:
        return [rid for rid, req in self._slots.items() if req is not None]

    def _hold(self, request: Hashable, rid: int) -> None:
        self._slots[rid] = request
        self._where[request] = rid
        self._deadlines[rid] = self._now + self.terms.wait
        self._idle_since = None

    def _repeat(self, request: Hashable, rid: int) -> list[Event]:
        if rid in self._slots:
            old = self._slots[rid]
            if old is not None:
                # §14.3: answer the older copy with the recoverable error, hold the newer.
                self._where.pop(old, None)
                self._emit(Respond(old, render_error()))
            self._hold(request, rid)
            self._enforce_hold()
            self._flush()
            return self._take()
        sent = self._cache.get(rid)
        if sent is None:
            self._fail(request, Condition.ITEM_NOT_FOUND)  # §14.3 MUST
            return self._take()
        sent.repeats += 1
        if sent.repeats > self.terms.max_repeats:
            self._fail(request, Condition.POLICY_VIOLATION)  # §14.3 cap (#61)
            return self._take()
        self._emit(Respond(request, sent.body, sent.status))  # §14.3: byte for byte
        return self._take()


    def _process(self, request: Hashable, rid: int, body: Body) -> None:
        """Handle the next in-order request: its payload goes upstream now (§8 SHOULD)."""
        self._where.pop(request, None)
        self._last_rid = rid
        if not self._check_key(body):
            self._fail(request, Condition.ITEM_NOT_FOUND)  # §15.4: not processed
            return
        kind = self._kind(body)
        if kind == "terminate":
            self._terminate(request, rid, body)
            return
        pause = body.get("pause") if self.terms.maxpause else None  # §10 REC: else ignored
        if kind == "empty" and pause is None and self._too_frequent():
            self._fail(request, Condition.POLICY_VIOLATION)  # §11/§12
            return
        self._last_new = (self._now, kind == "empty")
        if self.terms.acks:
            self._drop_acknowledged(body.get("ack"), rid)
        if kind == "restart":
            # XEP-0206 §5: new stream header on the same connection; stanzas ignored (#121).
            s = self.terms.stream
            # The domain is the one checked at creation; a restart cannot move the session
            # to another (unchecked) host.
            self._emit(RestartUpstream(StreamParams(
                to=s.to, lang=body.get("xml:lang") or s.lang,
                from_=body.get("from") or s.from_, version=s.version, route=s.route)))
        elif kind == "payload":
            if self.state is State.CONNECTING:
                self._early.extend(body.payload)
            else:
                self._emit(SendUpstream(body.payload))
        self._inactivity = self.terms.inactivity  # §10: a new request ends any pause
        if pause is not None:
            self._pause(request, rid, pause)
            return
        self._hold(request, rid)
        if self.terms.acks:
            self._report(rid, body.get("ack"))

    @staticmethod
    def _kind(body: Body) -> str:
        if body.get("type") == "terminate":
            return "terminate"
        if parse_bool(body.get("xmpp:restart")):
            return "restart"
        return "payload" if body.payload else "empty"

    def _check_key(self, body: Body) -> bool:
        """§15.4: each key must hash (SHA-1, hex, case-insensitive §15.3) to the previous one."""
        if self._key is None:
            return True
        key = body.get("key")
        if key is None or hashlib.sha1(key.lower().encode()).hexdigest() != self._key.lower():
            return False
        self._key = body.get("newkey") or key  # §15.5: newkey switches to a new chain
        return True

    def _too_frequent(self) -> bool:
        """§11 (too many empty requests) and §12 (polling too fast), measured from arrivals.

        Only new, empty requests count; pause, terminate and restart requests never do.
        """
        if self._last_new is None or not self.terms.polling:
            return False  # the first poll after creation is never too fast (§12 REC)
        last_at, last_empty = self._last_new
        if self._now - last_at >= self.terms.polling:
            return False
        if self.terms.hold == 0:
            # §12: the previous poll was empty and so was its answer.
            return last_empty and not self._last_answer_had_payload()
        return len(self._live_rids()) + 1 >= self.terms.requests  # §11

    def _last_answer_had_payload(self) -> bool:
        sent = self._cache.get(self._last_rid - 1)
        return sent is None or sent.had_payload

    def _pause(self, request: Hashable, rid: int, raw: str) -> None:
        """§10: answer everything now and stretch inactivity to 'pause' for this idle spell."""
        pause = parse_uint(raw)
        if pause is None or pause > self.terms.maxpause:
            self._fail(request, Condition.POLICY_VIOLATION)  # beyond maxpause (checklist Q7)
            return
        for live in self._live_rids():
            self._answer_pending(live)
        # §10 MUST NOT: no payload in the pause response. §14.3 keeps pause answers out of
        # the cache; a resend of this rid then gets an empty body (checklist Q4).
        self._slots[rid] = request
        self._where[request] = rid
        self._answer(rid, None, (), had_payload=False)
        self._inactivity = pause

    def _drop_acknowledged(self, ack: str | None, rid: int) -> None:
        """§9.2: the client has every answer up to 'ack' (all earlier ones when absent)."""
        upto = rid - 1 if ack is None else (parse_uint(ack) or 0)
        while self._cache and next(iter(self._cache)) <= upto:
            self._cache.popitem(last=False)

    def _report(self, rid: int, ack: str | None) -> None:
        """§9.2: the client's ack shows it missed an answer we sent: say so at once."""
        acked = parse_uint(ack)
        if acked is None:
            return
        missed = acked + 1
        sent = self._cache.get(missed)
        if sent is None or missed >= rid or not any(r > missed for r in self._cache):
            return
        elapsed = min(int((self._now - sent.at) * 1000), 65535)  # unsignedShort (checklist Q6)
        self._answer(rid, {"report": str(missed), "time": str(elapsed)}, ())

    def _terminate(self, request: Hashable, rid: int, body: Body) -> None:
        """§13: forward the payload, then the oldest open request gets type='terminate'."""
        if body.payload and self.state is State.OPEN:
            self._emit(SendUpstream(body.payload))
        self._slots[rid] = request
        self._where[request] = rid
        live = self._live_rids()
        self._answer(live[0], {"type": "terminate"}, ())
        for other in live[1:]:
            self._answer(other, None, ())
        self._end(None, close_upstream=True)

    def _fail(self, request: Hashable, condition: Condition) -> None:
        """A terminal error caused by ``request``: others are told other-request (§17.2)."""
        self._where.pop(request, None)
        for rid, req in list(self._slots.items()):
            if req == request:
                del self._slots[rid]
        self._emit(Respond(request, render_terminate(condition), self._status(condition)))
        for rid in self._live_rids():
            self._answer(rid, _term(Condition.OTHER_REQUEST), (), cache=False)
        self._end(condition, close_upstream=True)

    def _end(self, condition: Condition | None, close_upstream: bool,
             others: Condition = Condition.OTHER_REQUEST) -> None:
        """End the session. Requests still waiting (parked, or held while the creation
        request was pending) learn why: ``others`` (other-request when one request's error
        ended the session, the upstream's condition when the server side did)."""
        for parked in self._parked.values():
            self._emit(Respond(parked.request, render_terminate(others), self._status(others)))
        for req in self._slots.values():
            if req is not None:
                self._emit(Respond(req, render_terminate(others), self._status(others)))
        if close_upstream and self.state is State.OPEN:
            self._bounce_pending()
        self._parked.clear()
        self._where.clear()
        self._slots.clear()
        self._deadlines.clear()
        self._pending.clear()
        self._cache.clear()
        self.state = State.ENDED
        if close_upstream:
            self._emit(CloseUpstream())
        self._emit(SessionEnded(condition))

    def _bounce_pending(self) -> None:
        """XEP-0206 §7: stanzas nobody will read go back to their senders (while the stream
        is still writable)."""
        if self._pending:
            bounces = tuple(b for b in map(bounce, self._pending) if b is not None)
            if bounces:
                self._emit(SendUpstream(bounces))
            self._pending.clear()
            self._pending_bytes = 0

    def _answer(self, rid: int, attrs: dict[str, str] | None, payload: Sequence[bytes],
                status: int = 200, cache: bool = True, had_payload: bool | None = None) -> None:
        """Answer the live request holding ``rid``. The bytes are cached before they are
        written, so a broken connection can be healed by a resend (§14.3)."""
        request = self._slots.pop(rid)
        self._deadlines.pop(rid, None)
        assert request is not None
        self._where.pop(request, None)
        if self.terms.acks and self._last_rid > rid:
            # §9.1: tell the client which later requests already arrived (#64-#66).
            attrs = {**(attrs or {}), "ack": str(self._last_rid)}
        body = render_body(attrs, payload)
        if cache:
            self._cache[rid] = _Sent(status, body, self._now,
                                     bool(payload) if had_payload is None else had_payload)
            while len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)
        self._emit(Respond(request, body, status))
        if self._idle_since is None and not self._live_rids():
            self._idle_since = self._now  # §10: the inactivity clock starts now
        self._prune_slots()

    def _answer_pending(self, rid: int) -> None:
        payload = self._next_group()
        self._answer(rid, None, payload)
        if self._paused and self.state is not State.ENDED \
                and self._pending_bytes <= self.terms.max_queued_bytes // 2:
            self._paused = False
            self._emit(FlowControl(paused=False))

    def _next_group(self) -> list[bytes]:
        """Take what one response body may carry (XEP-0206 §2): a <stream:features/> alone,
        one SASL element alone, or everything else up to the next such element."""
        pending = self._pending
        if not pending:
            return []
        if _alone(pending[0]):
            n = 1
        else:
            n = next((i for i, el in enumerate(pending) if _alone(el)), len(pending))
        group, self._pending = pending[:n], pending[n:]
        self._pending_bytes -= sum(map(len, group))
        return group

    def _enforce_hold(self) -> None:
        """§8: never hold more than 'hold' requests; the oldest is answered first."""
        live = self._live_rids()
        for rid in live[:max(len(live) - self.terms.hold, 0)]:
            self._answer_pending(rid)

    def _flush(self) -> None:
        while self._pending and (live := self._live_rids()):
            self._answer_pending(live[0])

    def _prune_slots(self) -> None:
        # A slot whose request went away and that the client never resent cannot be
        # answered; once it falls out of the window a resend would be item-not-found anyway.
        floor = self._last_rid - self.terms.requests
        for rid in [r for r, req in self._slots.items() if req is None and r <= floor]:
            del self._slots[rid]


_SASL_MARK = b'xmlns="urn:ietf:params:xml:ns:xmpp-sasl"'


def _alone(element: bytes) -> bool:
    """Does this serialized element need a body of its own (XEP-0206 §2)?"""
    if element.startswith(b"<stream:features"):
        return True
    head = element[:element.find(b">") + 1]
    return _SASL_MARK in head


def _term(condition: Condition) -> dict[str, str]:
    return {"type": "terminate", "condition": condition.value}
