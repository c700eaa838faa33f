"""The session state machine: hold/wait, rid ordering and retransmission, termination,
inactivity, upstream failures, legacy status codes, restarts (XEP-0124 §8, §10, §13, §14,
§17; XEP-0206 §5, §6). Synchronous; every time is a literal."""

from __future__ import annotations

import pytest

from bosh.errors import Condition
from bosh.session import (
    CloseUpstream, Limits, Respond, RestartUpstream, SendUpstream, SessionEnded, State,
)
from tests.core._helpers import (
    LIMITS_H2, MSG_A, body, MSG_B, RID0, ST, answer_for, is_empty_body, is_terminate, kinds, new_session,
    parse, req, responses, sent,
)

N = RID0  # the creation rid; N+1 is the first request (checklist §0.1)
MSG_P = "<message xmlns='jabber:client' to='b@example.com'><body>{}</body></message>"
STREAM_ERROR = (b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced</text></stream:error>")


def msg(text: str) -> str:
    return MSG_P.format(text)


def open_session(**kw):  # type: ignore[no-untyped-def]
    s, _ = new_session(now=0.0, **kw)
    return s


# -- hold and wait: §8 ----------------------------------------------------------------------

def test_empty_request_is_held_until_wait_expires_then_answered_with_empty_body() -> None:
    """§8 RECOMMENDED/SHOULD NOT/SHOULD (checklist #48, #49, #50): held up to 'wait', then an
    empty <body/> with no type; next_deadline names the wait expiry."""
    s = open_session()  # wait=5
    assert responses(s.receive("r1", req("SID", N + 1), now=10.0)) == []
    assert s.held_count == 1
    assert s.next_deadline() == 15.0
    assert s.handle_timer(14.999) == []
    out = s.handle_timer(15.0)
    assert is_empty_body(answer_for(out, "r1").body)
    assert s.state is State.OPEN
    # Then the inactivity clock runs from that answer (§10).
    assert s.next_deadline() == 15.0 + 4


def test_upstream_data_answers_the_held_request_at_once() -> None:
    """§8 SHOULD (checklist #53): server payloads go out as soon as they arrive."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.upstream_elements([MSG_A, MSG_B], now=1.5)
    root = parse(answer_for(out, "r1").body)
    assert [c[0].text for c in root] == ["A", "B"]
    assert root[0].tag == "{jabber:client}message"


def test_data_arriving_with_nothing_held_is_queued_and_given_to_the_next_request() -> None:
    """§2 req. 11 (checklist #54): queued without loss, delivered in order, answered at once."""
    s = open_session()
    assert s.upstream_elements([MSG_A], now=1.0) == []
    assert s.upstream_elements([MSG_B], now=1.1) == []
    out = s.receive("r1", req("SID", N + 1), now=2.0)
    assert [c[0].text for c in parse(answer_for(out, "r1").body)] == ["A", "B"]
    assert s.held_count == 0


def test_hold_overflow_answers_the_oldest_and_holds_the_newer() -> None:
    """§8 SHOULD NOT hold more than 'hold' (checklist #51): the connections switch roles."""
    s = open_session()  # hold=1
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.receive("r2", req("SID", N + 2), now=4.0)  # ≥ polling apart: not overactivity
    assert [r.request for r in responses(out)] == ["r1"]
    assert is_empty_body(out[0].body)
    assert s.held_count == 1
    assert s.next_deadline() == 4.0 + 5


def test_hold_overflow_with_payload_answers_oldest_even_when_quick() -> None:
    """§8 (checklist #51, #81 control): a request with payload is never overactivity."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.receive("r2", req("SID", N + 2, msg("x")), now=1.1)
    assert [r.request for r in responses(out)] == ["r1"]
    assert len(sent(out)) == 1


def test_with_hold_2_data_goes_to_the_lowest_rid_and_the_higher_stays_held() -> None:
    """§8 + §14.2 MUST (checklist #52, profile H2)."""
    s = open_session(limits=LIMITS_H2, hold="2")
    s.receive("r1", req("SID", N + 1), now=1.0)
    s.receive("r2", req("SID", N + 2), now=4.0)
    assert s.held_count == 2
    out = s.upstream_elements([MSG_A], now=5.0)
    assert [r.request for r in responses(out)] == ["r1"]
    assert s.held_count == 1


def test_payload_goes_upstream_while_the_request_is_still_held() -> None:
    """§8 SHOULD (checklist #45): forwarded at once, not when answered."""
    s = open_session()
    out = s.receive("r1", req("SID", N + 1, msg("hi")), now=1.0)
    assert responses(out) == []
    (data,) = sent(out)
    assert b"<body>hi</body>" in data
    assert s.held_count == 1


def test_polling_session_answers_at_once() -> None:
    """§7.1/§12 (checklist #26): with hold=0 nothing waits."""
    s = open_session(wait="0", hold="0")
    out = s.receive("r1", req("SID", N + 1), now=1.0)
    assert is_empty_body(answer_for(out, "r1").body)


# -- rid ordering: §14.2 --------------------------------------------------------------------

def test_early_rid_is_parked_and_processed_once_the_gap_fills_in_rid_order() -> None:
    """§8 + §14.2 MUST / SHOULD (checklist #46, #56): payloads upstream strictly in rid order."""
    s = open_session()
    out = s.receive("r2", req("SID", N + 2, msg("B")), now=1.0)
    assert out == []  # parked: not processed, not answered, nothing upstream
    out = s.receive("r1", req("SID", N + 1, msg("A")), now=1.3)
    data = sent(out)
    assert [b"<body>A</body>" in d for d in data] == [True, False]
    assert b"<body>B</body>" in data[1]
    # hold=1: N+1 answered (oldest), N+2 held.
    assert [r.request for r in responses(out)] == ["r1"]
    assert s.held_count == 1


def test_early_terminate_is_applied_after_the_gap_fills() -> None:
    """Checklist #46 variant: terminate N+2 first, then N+1 → msg, presence, then close."""
    s = open_session()
    s.receive("r2", req("SID", N + 2, "<presence xmlns='jabber:client' type='unavailable'/>",
                        type="terminate"), now=1.0)
    out = s.receive("r1", req("SID", N + 1, msg("A")), now=1.2)
    data = sent(out)
    assert b"<message" in data[0] and b"<presence" in data[1]
    assert kinds(out)[-2:] == ["CloseUpstream", "SessionEnded"]


@pytest.mark.parametrize("offset", [3, 4, 100])
def test_rid_above_the_window_ends_the_session_with_item_not_found(offset: int) -> None:
    """§14.2 MUST (checklist #57): requests=2, so N+3 and above → item-not-found, then DEAD."""
    s = open_session()
    out = s.receive("rx", req("SID", N + offset, msg("x")), now=1.0)
    reply = answer_for(out, "rx")
    assert reply.status == 200 and is_terminate(reply.body, "item-not-found")
    assert sent(out) == []
    assert isinstance(out[-1], SessionEnded) and CloseUpstream() in out
    out = s.receive("ry", req("SID", N + 1), now=1.1)
    assert is_terminate(answer_for(out, "ry").body, "item-not-found")


# -- retransmission: §14.3 ------------------------------------------------------------------

def test_repeated_answered_rid_gets_byte_identical_cached_response_and_no_resend_upstream() -> None:
    """§14.3 SHOULD (checklist #59): replayed from the cache; payload forwarded exactly once."""
    s = open_session()
    first = s.receive("r1", req("SID", N + 1, msg("M")), now=1.0)
    assert len(sent(first)) == 1
    answered = s.upstream_elements([MSG_A], now=1.5)
    original = answer_for(answered, "r1")
    again = s.receive("r1b", req("SID", N + 1, msg("M")), now=2.0)
    replay = answer_for(again, "r1b")
    assert replay.body == original.body and replay.status == original.status
    assert sent(again) == []
    assert s.state is State.OPEN


def test_repeated_creation_rid_replays_the_creation_response() -> None:
    """§14.3 (checklist #59): the creation response is a response like any other."""
    s, events = new_session(now=0.0)
    out = s.receive("again", req("SID", N), now=1.0)
    assert answer_for(out, "again").body == answer_for(events, "create").body


def test_repeated_rid_still_held_answers_older_copy_with_type_error_and_holds_newer() -> None:
    """§14.3 SHOULD (checklist #60, #100): the older copy gets recoverable <body type='error'/>;
    the newer one is held and gets the data; the payload went upstream once."""
    s = open_session()
    first = s.receive("a", req("SID", N + 1, msg("M")), now=1.0)
    out = s.receive("b", req("SID", N + 1, msg("M")), now=2.0)
    old = answer_for(out, "a")
    root = parse(old.body)
    assert old.status == 200 and root.get("type") == "error" and root.get("condition") is None
    assert sent(first + out) == sent(first) and len(sent(first)) == 1
    assert s.held_count == 1
    out = s.upstream_elements([MSG_A], now=3.0)
    assert [r.request for r in responses(out)] == ["b"]
    assert s.state is State.OPEN


def test_repeated_rid_out_of_the_cache_is_item_not_found_identical_to_too_high() -> None:
    """§14.3 MUST (checklist #62) and DEF #63: too low and too high are indistinguishable."""
    s = open_session()
    for i, t in zip(range(1, 5), (1.0, 4.0, 7.0, 10.0)):
        s.receive(f"r{i}", req("SID", N + i), now=t)
    s.handle_timer(15.0)  # N+4 answered at wait expiry
    low = answer_for(s.receive("low", req("SID", N + 1), now=16.0), "low")
    assert is_terminate(low.body, "item-not-found")
    assert s.state is State.ENDED

    s2 = open_session()
    high = answer_for(s2.receive("high", req("SID", N + 3), now=1.0), "high")
    assert low.body == high.body and low.status == high.status


def test_request_gone_keeps_data_for_the_next_request() -> None:
    """Design §4: data for a request whose connection went away is kept for the next one."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    assert s.request_gone("r1", now=2.0) == []
    assert s.upstream_elements([MSG_A], now=3.0) == []
    out = s.receive("r2", req("SID", N + 2), now=4.0)
    assert [c[0].text for c in parse(answer_for(out, "r2").body)] == ["A"]


def test_resend_of_a_gone_request_takes_over_its_slot() -> None:
    """§14.3 (checklist #100): the client resends the rid whose connection broke."""
    s = open_session()
    s.receive("r1", req("SID", N + 1, msg("M")), now=1.0)
    s.request_gone("r1", now=2.0)
    out = s.receive("r1b", req("SID", N + 1, msg("M")), now=3.0)
    assert responses(out) == [] and sent(out) == []
    out = s.upstream_elements([MSG_A], now=3.5)
    assert [r.request for r in responses(out)] == ["r1b"]


# -- termination: §13 ------------------------------------------------------------------------

def test_client_terminate_forwards_payload_then_closes_oldest_gets_terminate_others_empty() -> None:
    """§13 MUST/SHOULD (checklist #86, #87, #88; Q3)."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.receive("r2", req("SID", N + 2, "<presence xmlns='jabber:client' type='unavailable'/>",
                              type="terminate"), now=1.5)
    assert kinds(out) == ["SendUpstream", "Respond", "Respond", "CloseUpstream", "SessionEnded"]
    assert b"unavailable" in sent(out)[0]
    r1, r2 = answer_for(out, "r1"), answer_for(out, "r2")
    assert is_terminate(r1.body, None)
    assert is_empty_body(r2.body)
    assert s.state is State.ENDED
    dead = s.receive("r3", req("SID", N + 3), now=2.0)
    assert is_terminate(answer_for(dead, "r3").body, "item-not-found")


def test_terminate_with_nothing_held_answers_itself_with_type_terminate() -> None:
    """§13 (checklist #87): with nothing held the terminate request gets type='terminate'."""
    s = open_session()
    out = s.receive("t", req("SID", N + 1, type="terminate"), now=1.0)
    assert is_terminate(answer_for(out, "t").body, None)
    assert out[-1] == SessionEnded(None)


# -- inactivity: §10 -------------------------------------------------------------------------

def test_session_ends_silently_after_inactivity_with_nothing_held() -> None:
    """§10 SHOULD (checklist #69, #70): no answer to anybody, upstream closed, then item-not-found."""
    s = open_session()  # inactivity 4, clock starts at the creation response (t=0)
    assert s.next_deadline() == 4.0
    assert s.handle_timer(3.9) == []
    out = s.handle_timer(4.0)
    assert kinds(out) == ["CloseUpstream", "SessionEnded"]
    assert s.state is State.ENDED and s.next_deadline() is None
    late = s.receive("r1", req("SID", N + 1), now=5.0)
    assert is_terminate(answer_for(late, "r1").body, "item-not-found")


def test_inactivity_does_not_run_while_a_request_is_held() -> None:
    """§10 DEF (checklist #71): wait (5) > inactivity (4); the held request is not inactivity."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    assert s.next_deadline() == 6.0
    assert s.handle_timer(5.5) == []
    out = s.handle_timer(6.0)
    assert is_empty_body(answer_for(out, "r1").body)
    assert s.state is State.OPEN
    out = s.receive("r2", req("SID", N + 2), now=9.0)
    assert s.state is State.OPEN and responses(out) == []


def test_inactivity_does_not_end_a_session_with_a_parked_request() -> None:
    """§10: only when the CM 'has responded to all the requests it has received' and the
    inactivity passed may it end the session. A parked N+2 is a received, unanswered request."""
    s = open_session()  # inactivity 4 from t=0
    s.receive("r2", req("SID", N + 2), now=1.0)
    s.handle_timer(4.0)
    assert s.state is State.OPEN


# -- upstream failures: §17.2, 0206 §6 -------------------------------------------------------

def test_upstream_stream_error_with_held_request_is_remote_stream_error_with_the_error_inside() -> None:
    """§17.2 + 0206 §6 MUST (checklist #95): type='terminate' condition='remote-stream-error',
    xmlns:stream on <body>, the full <stream:error/> element inside; then DEAD."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.upstream_closed(Condition.REMOTE_STREAM_ERROR, STREAM_ERROR, now=2.0)
    reply = answer_for(out, "r1")
    start_tag = reply.body[:reply.body.index(b">") + 1]
    assert f"xmlns:stream='{ST}'".encode() in start_tag
    root = parse(reply.body)
    assert root.get("type") == "terminate" and root.get("condition") == "remote-stream-error"
    assert [c.tag for c in root] == [f"{{{ST}}}error"]
    assert root[0][0].tag == "{urn:ietf:params:xml:ns:xmpp-streams}conflict"
    assert isinstance(out[-1], SessionEnded) and CloseUpstream() not in out
    assert s.state is State.ENDED


def test_upstream_lost_with_held_request_is_remote_connection_failed() -> None:
    """§17.2 (checklist #94b)."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.upstream_closed(Condition.REMOTE_CONNECTION_FAILED, None, now=2.0)
    assert is_terminate(answer_for(out, "r1").body, "remote-connection-failed")


def test_upstream_closed_with_nothing_held_gives_pending_stanzas_then_error_to_next_request() -> None:
    """0206 §6 (checklist #95): nobody held → keep the body (stanzas in order, then the
    stream:error) for the next request, which ends the session."""
    s = open_session()
    s.upstream_elements([MSG_A], now=1.0)
    out = s.upstream_closed(Condition.REMOTE_STREAM_ERROR, STREAM_ERROR, now=1.5)
    assert responses(out) == []
    out = s.receive("r1", req("SID", N + 1, msg("late")), now=2.0)
    reply = answer_for(out, "r1")
    root = parse(reply.body)
    assert root.get("condition") == "remote-stream-error"
    assert [c.tag for c in root] == ["{jabber:client}message", f"{{{ST}}}error"]
    assert sent(out) == []
    assert s.state is State.ENDED


# -- fatal errors and legacy codes: §17.1, §17.2 -------------------------------------------

def test_fatal_error_of_one_request_gives_other_request_to_the_held_one() -> None:
    """§17.2 other-request (checklist #93)."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.receive("bad", req("SID", N + 9), now=2.0)
    assert is_terminate(answer_for(out, "bad").body, "item-not-found")
    assert is_terminate(answer_for(out, "r1").body, "other-request")
    assert s.state is State.ENDED


def test_request_without_rid_under_a_valid_sid_is_bad_request_and_ends_session() -> None:
    """§6 (checklist #14): a missing rid → bad-request."""
    s = open_session()
    out = s.receive("r", body({"sid": "SID"}), now=1.0)
    reply = answer_for(out, "r")
    assert reply.status == 200 and is_terminate(reply.body, "bad-request")
    assert s.state is State.ENDED


@pytest.mark.parametrize("make,status", [
    (lambda s: s.receive("x", req("SID", N + 3), now=1.0), 404),          # above the window
    (lambda s: s.receive("x", body({"sid": "SID"}), now=1.0), 400),
])
def test_legacy_client_gets_http_error_statuses(make, status: int) -> None:  # type: ignore[no-untyped-def]
    """§17.1 + §17.2(*) SHOULD (checklist #99): no 'ver' → 400 / 404 instead of 200."""
    s = open_session(ver=None)
    out = make(s)
    assert answer_for(out, "x").status == status


def test_legacy_client_out_of_cache_repeat_is_404() -> None:
    """§17.1 (checklist #99, #62)."""
    s = open_session(ver=None)
    for i, t in zip(range(1, 5), (1.0, 4.0, 7.0, 10.0)):
        s.receive(f"r{i}", req("SID", N + i), now=t)
    out = s.receive("x", req("SID", N + 1), now=11.0)
    assert answer_for(out, "x").status == 404


def test_non_legacy_client_errors_are_http_200() -> None:
    """§17.1 SHOULD NOT (checklist #8)."""
    s = open_session()
    assert answer_for(s.receive("x", req("SID", N + 3), now=1.0), "x").status == 200


def test_shutdown_answers_held_requests_with_system_shutdown_and_closes_upstream() -> None:
    """§17.2 system-shutdown (checklist #97)."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.shutdown(Condition.SYSTEM_SHUTDOWN, now=2.0)
    assert is_terminate(answer_for(out, "r1").body, "system-shutdown")
    assert kinds(out)[-2:] == ["CloseUpstream", "SessionEnded"]


# -- restart: XEP-0206 §5 --------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["true", "1"])
def test_restart_request_emits_restart_upstream_with_lang_and_ignores_stanzas(flag: str) -> None:
    """0206 §5 MUST (checklist #119), SHOULD ignore stanzas (#121), boolean '1' (#122)."""
    s = open_session(xml_lang="en")
    out = s.receive("r1", req("SID", N + 1, "<presence xmlns='jabber:client'/>",
                              to="example.com", xml_lang="de", xmpp_restart=flag), now=1.0)
    restarts = [e for e in out if isinstance(e, RestartUpstream)]
    assert len(restarts) == 1
    assert restarts[0].params.lang == "de" and restarts[0].params.to == "example.com"
    assert sent(out) == []
    assert s.held_count == 1
    # The new features answer the restart request (#120).
    out = s.upstream_elements([b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
                               b"</stream:features>"], now=1.2)
    root = parse(answer_for(out, "r1").body)
    assert root[0].tag == f"{{{ST}}}features"


def test_restart_without_lang_keeps_the_creation_lang() -> None:
    """0206 §5 / checklist #29: the restart header carries the session's xml:lang."""
    s = open_session(xml_lang="de")
    out = s.receive("r1", req("SID", N + 1, xmpp_restart="true"), now=1.0)
    (restart,) = [e for e in out if isinstance(e, RestartUpstream)]
    assert restart.params.lang == "de"


@pytest.mark.parametrize("flag", ["false", "0"])
def test_restart_false_or_0_is_an_ordinary_request(flag: str) -> None:
    """XSF boolean note (checklist #122)."""
    s = open_session()
    out = s.receive("r1", req("SID", N + 1, msg("x"), xmpp_restart=flag), now=1.0)
    assert not any(isinstance(e, RestartUpstream) for e in out)
    assert len(sent(out)) == 1


# -- namespaces on the way up ---------------------------------------------------------------

def test_stanzas_without_xmlns_go_upstream_as_jabber_client_with_descendants() -> None:
    """Checklist §B REC (0206 §2 note)."""
    from lxml import etree

    s = open_session()
    out = s.receive("r1", req("SID", N + 1, "<message to='a@example.com'><body>hi</body></message>"),
                    now=1.0)
    (elem,) = [e for ev in out if isinstance(ev, SendUpstream) for e in ev.elements]
    assert elem.namespace == "jabber:client"
    tree = etree.fromstring(elem.data)
    assert tree.tag == "{jabber:client}message" and tree[0].tag == "{jabber:client}body"


def test_events_are_frozen() -> None:
    """Design §3: frozen events out."""
    ev = Respond("r", b"x")
    with pytest.raises(Exception):
        ev.body = b"y"  # type: ignore[misc]
    assert Limits().max_hold == 1


# -- overactivity, polling and repeat caps: §11, §12, §14.3 --------------------------------

def test_two_empty_requests_faster_than_polling_are_policy_violation() -> None:
    """§11 SHOULD (checklist #81): 'requests' new empty requests unanswered and the last two
    less than 'polling' apart → policy-violation; the held one gets other-request."""
    s = open_session()  # hold=1, requests=2, polling=2
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.receive("r2", req("SID", N + 2), now=1.2)
    assert is_terminate(answer_for(out, "r2").body, "policy-violation")
    assert is_terminate(answer_for(out, "r1").body, "other-request")
    assert s.state is State.ENDED


def test_first_poll_after_an_answered_request_is_not_overactivity() -> None:
    """§11 control (checklist #81): N+1 was answered by data before N+2 arrived."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    s.upstream_elements([MSG_A], now=1.1)
    out = s.receive("r2", req("SID", N + 2), now=1.2)
    assert responses(out) == [] and s.state is State.OPEN


def test_polling_too_fast_on_a_polling_session_is_policy_violation() -> None:
    """§12 SHOULD (checklist #85): two empty polls < 'polling' apart, the first answer empty."""
    s = open_session(wait="0", hold="0")
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.receive("r2", req("SID", N + 2), now=1.3)
    assert is_terminate(answer_for(out, "r2").body, "policy-violation")


def test_polling_at_the_advertised_rate_is_fine() -> None:
    """§12 control (checklist #85): N+2 sent 2.5 s later."""
    s = open_session(wait="0", hold="0")
    s.receive("r1", req("SID", N + 1), now=1.0)
    out = s.receive("r2", req("SID", N + 2), now=3.5)
    assert is_empty_body(answer_for(out, "r2").body) and s.state is State.OPEN


def test_too_many_resends_of_one_rid_are_policy_violation() -> None:
    """§14.3 MAY + SHOULD (checklist #61): over the cap → policy-violation, then DEAD."""
    limits = Limits(max_wait=10, max_inactivity=4, max_hold=1, polling=2, max_repeats=3)
    s, _ = new_session(now=0.0, limits=limits)
    s.receive("r1", req("SID", N + 1, msg("M")), now=1.0)
    s.upstream_elements([MSG_A], now=1.1)
    for i in range(3):
        out = s.receive(f"again{i}", req("SID", N + 1, msg("M")), now=1.2 + i / 10)
        assert parse(answer_for(out, f"again{i}").body)[0][0].text == "A"
    out = s.receive("again3", req("SID", N + 1, msg("M")), now=1.6)
    assert is_terminate(answer_for(out, "again3").body, "policy-violation")
    assert s.state is State.ENDED


def test_key_sequence_mismatch_is_item_not_found_and_nothing_goes_upstream() -> None:
    """§15.4 MUST when checking (checklist #115): wrong key → not processed, item-not-found."""
    import hashlib

    k1 = "a" * 40
    k2 = hashlib.sha1(k1.encode()).hexdigest()
    s, _ = new_session(now=0.0, newkey=k2)
    ok = s.receive("r1", req("SID", N + 1, key=k1), now=1.0)
    assert responses(ok) == [] and s.state is State.OPEN
    out = s.receive("r2", req("SID", N + 2, msg("x"), key=k1), now=4.0)
    assert is_terminate(answer_for(out, "r2").body, "item-not-found")
    assert sent(out) == [] and isinstance(out[-1], SessionEnded)


def test_fail_inside_process_leaves_the_session_ended() -> None:
    """Documents the state after the §11 check fires (see LOST_FAIL_EVENTS)."""
    s = open_session()
    s.receive("r1", req("SID", N + 1), now=1.0)
    s.receive("r2", req("SID", N + 2), now=1.2)
    assert s.state is State.ENDED
