"""A server-side end that loses nothing in flight (Session.finish): our </stream:stream> goes
first and the stream is read until the server's (RFC 6120 §4.4), so what the server routed
here before it saw ours still reaches the client. Found by the rolling-restart test (issue 9):
messages written by Prosody just before it read our closing tag were dropped. Literal times."""

from __future__ import annotations

from bosh.errors import Condition
from bosh.events import FinishUpstream
from tests.core._helpers import (
    MSG_A, MSG_B, CloseUpstream, SendUpstream, SessionEnded, answer_for, is_empty_body,
    is_terminate, new_session, req,
)

RC = Condition.REMOTE_CONNECTION_FAILED
SHUT = Condition.SYSTEM_SHUTDOWN


def test_stanzas_after_our_closing_tag_reach_a_held_request_then_the_end() -> None:
    s, _ = new_session(now=0.0)
    s.receive("r1", req("SID", 1001), 1.0)              # held
    assert s.finish(SHUT, 1.0, grace=2.0) == [FinishUpstream()]
    assert s.finish(SHUT, 1.1, grace=2.0) == []          # idempotent while finishing
    ev = s.upstream_elements([MSG_A], 1.2)               # routed before the server saw ours
    assert MSG_A in answer_for(ev, "r1").body
    s.receive("r2", req("SID", 1002), 1.3)               # the client polls again: held
    ev = s.upstream_closed(RC, None, 1.4)                # the server's closing tag
    assert is_terminate(answer_for(ev, "r2").body, "system-shutdown")  # not remote-connection-failed
    assert ev[-1] == SessionEnded(SHUT)
    assert not [e for e in ev if isinstance(e, SendUpstream)]  # nothing written after the footer


def test_what_arrived_unread_goes_out_with_the_next_request_before_the_end() -> None:
    s, _ = new_session(now=0.0)
    s.finish(SHUT, 1.0, grace=2.0)
    s.upstream_elements([MSG_A, MSG_B], 1.1)             # nobody held: queued
    assert s.upstream_closed(RC, None, 1.2) == []        # kept: the client has not read them
    ev = s.receive("r1", req("SID", 1001), 1.3)
    body = answer_for(ev, "r1").body
    assert MSG_A in body and MSG_B in body and b"terminate" not in body
    assert ev[-1] == SessionEnded(SHUT)


def test_a_server_that_never_answers_is_not_waited_for_beyond_the_grace() -> None:
    s, _ = new_session(now=0.0)
    s.receive("r1", req("SID", 1001), 1.0)
    s.finish(SHUT, 1.0, grace=2.0)
    assert s.next_deadline() == 3.0
    assert s.handle_timer(2.9) == []
    ev = s.handle_timer(3.0)
    assert is_terminate(answer_for(ev, "r1").body, "system-shutdown")
    assert CloseUpstream() in ev and ev[-1] == SessionEnded(SHUT)


def test_finish_of_a_session_whose_upstream_is_not_open_is_a_plain_shutdown() -> None:
    s, _ = new_session(now=0.0, ready=False)
    ev = s.finish(SHUT, 1.0, grace=2.0)
    assert is_terminate(answer_for(ev, "create").body, "system-shutdown")
    assert ev[-1] == SessionEnded(SHUT)


def test_an_idle_session_ends_at_once_when_the_server_answers() -> None:
    s, _ = new_session(now=0.0)
    s.finish(SHUT, 1.0, grace=2.0)
    ev = s.upstream_closed(RC, None, 1.1)
    assert ev == [SessionEnded(SHUT)]
    ev = s.receive("r1", req("SID", 1001), 1.2)  # ended: the next request learns so
    assert is_terminate(answer_for(ev, "r1").body, "item-not-found")


def test_a_stream_error_while_finishing_is_passed_on_as_usual() -> None:
    s, _ = new_session(now=0.0)
    s.receive("r1", req("SID", 1001), 1.0)
    s.finish(SHUT, 1.0, grace=2.0)
    err = b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    ev = s.upstream_closed(Condition.REMOTE_STREAM_ERROR, err, 1.1)
    assert is_terminate(answer_for(ev, "r1").body, "remote-stream-error")
    assert not is_empty_body(answer_for(ev, "r1").body)


def test_what_waits_for_a_client_that_does_not_poll_is_bounced_before_our_closing_tag() -> None:
    """XEP-0206 §7: bounced while the stream is still writable (after the footer it is not)."""
    msg = b"<message xmlns='jabber:client' from='b@example.com/x' to='a@example.com'><body>q</body></message>"
    s, _ = new_session(now=0.0)
    s.upstream_elements([msg], 0.5)
    ev = s.finish(SHUT, 1.0, grace=2.0)
    assert isinstance(ev[0], SendUpstream) and b"recipient-unavailable" in ev[0].elements[0].data
    assert ev[-1] == FinishUpstream()
