"""Regression tests from a code review of the sans-IO core (bosh/session.py): each one
reproduces a bug that was found and fixed (early-rid timeout, ack/pause parsing, window
bounds, restart domain, replay after the upstream closed, inactivity after a parked rid)."""

from __future__ import annotations

import pytest

from bosh.errors import Condition
from bosh.session import MAX_REQUESTS_HOLD, Limits, RestartUpstream
from tests.core._helpers import (
    LIMITS, MSG_A, RID0, answer_for, is_empty_body, new_session, parse, req, sent,
)

N = RID0
LONG_IDLE = Limits(max_wait=10, max_inactivity=30, max_hold=1, polling=2)
MSG_A_S = MSG_A.decode()


def test_review_parked_rid_timeout_loses_its_payload() -> None:
    s, _ = new_session(now=0.0, limits=LONG_IDLE)  # inactivity must not interfere here
    wait = s.terms.wait
    # N+2 (carrying a message) overtakes N+1, whose connection is slow/failed.
    events = s.receive("r2", req("SID", N + 2, MSG_A_S), 1.0)
    assert not any(e.request == "r2" for e in events if hasattr(e, "request"))  # parked
    events = s.handle_timer(1.0 + wait + 0.1)
    r2 = answer_for(events, "r2")
    # The client now sees a normal, successful empty answer for N+2 ...
    delivered_ok = is_empty_body(r2.body)
    # ... the late N+1 arrives, the client carries on with N+3.
    all_events = list(events)
    all_events += s.receive("r1", req("SID", N + 1), 1.0 + wait + 0.2)
    all_events += s.receive("r3", req("SID", N + 3), 1.0 + wait + 0.3)
    # Either the answer told the client to resend (type='error', §17.3), or the message made it.
    told_to_resend = parse(r2.body).get("type") == "error"
    assert told_to_resend or (MSG_A in sent(all_events)), (
        f"N+2 answered as delivered ({delivered_ok}) but its payload never went upstream")


def test_parked_and_cache_bounds_stay_small_whatever_hold_the_client_asks_for() -> None:
    """#33 makes 'requests' exceed the asked hold, but the rid window it sizes (early
    requests parked, answers cached) stays bounded: hold='65535' cannot park 200 requests."""
    s, _ = new_session(now=0.0, hold="65535")
    assert s.terms.hold == LIMITS.max_hold == 1
    assert s.terms.requests == MAX_REQUESTS_HOLD + 1
    for i in range(2, 202):  # N+1 never sent: everything above it parks, until the window ends
        s.receive(f"p{i}", req("SID", N + i), 1.0)
        if not s.alive:
            break
    assert not s.alive and i == MAX_REQUESTS_HOLD + 2  # the first rid above the window (#57)
    assert s._cache_limit <= 32


def test_review_restart_to_bypasses_domain_allow_list() -> None:
    s, _ = new_session(now=0.0)
    events = s.receive("r1", req("SID", N + 1, to="not-served.example.net", xmpp_restart="true"), 1.0)
    restarts = [e for e in events if isinstance(e, RestartUpstream)]
    assert all(r.params.to == "example.com" for r in restarts), restarts


def test_review_doomed_session_does_not_replay_cached_answer() -> None:
    s, _ = new_session(now=0.0)
    s.receive("r1", req("SID", N + 1), 1.0)
    events = s.upstream_elements([MSG_A], 2.0)
    first = answer_for(events, "r1").body
    assert MSG_A in first  # the answer that the network then lost
    s.upstream_closed(Condition.REMOTE_CONNECTION_FAILED, None, 3.0)
    events = s.receive("r1-again", req("SID", N + 1), 4.0)  # client resends the lost rid
    assert answer_for(events, "r1-again").body == first


# 4000 digits: the parser (bosh.xmlsafe) refuses values over 4096 characters before the core.
@pytest.mark.parametrize("ack", ["\u00b2", "9" * 4000])
def test_review_malformed_ack_raises_inside_core(ack: str) -> None:
    s, _ = new_session(now=0.0, ack="1")
    assert s.terms.acks
    s.receive("r1", req("SID", N + 1, ack=ack), 1.0)  # must not raise


def test_review_huge_pause_raises_inside_core() -> None:
    s, _ = new_session(now=0.0, limits=Limits(max_wait=10, max_inactivity=4, max_hold=1,
                                               polling=2, max_pause=120))
    s.receive("r1", req("SID", N + 1, pause="9" * 4000), 1.0)  # must not raise


def test_review_parked_request_timeout_ends_session_by_inactivity() -> None:
    s, _ = new_session(now=0.0)  # wait 5, inactivity 4
    assert s.terms.wait > s.terms.inactivity - 1
    s.receive("r2", req("SID", N + 2), 1.0)  # an early rid: the client is not idle
    events = s.handle_timer(1.0 + s.terms.wait)
    answer_for(events, "r2")
    assert s.alive, events  # inactivity should count from this answer (§10)
