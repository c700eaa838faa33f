"""The WebSocket session core (bosh.ws_session): RFC 7395 framing, stream errors, XEP-0198
resumability, pings. Synchronous, literal times, no event loop (design.md §3)."""

from __future__ import annotations

import pytest

from bosh.errors import StreamCondition
from bosh.events import CloseUpstream, OpenUpstream, RestartUpstream, SendUpstream, SessionEnded
from bosh.ports import NS_CLIENT, StreamInfo
from bosh.ws_session import (
    CLOSE, WS_POLICY, WS_RESTART, WS_UNSUPPORTED_DATA, CloseSocket, SendPing, SendText, WsLimits,
    WsSession, WsState, render_open, stream_error,
)

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
OPEN = f'<open xmlns="{FRAMING}" to="example.com" version="1.0"/>'.encode()
CLIENT_CLOSE = f'<close xmlns="{FRAMING}"/>'.encode()
INFO = StreamInfo(from_="example.com", id="s1", version="1.0")
FEATURES = (b'<stream:features xmlns:stream="http://etherx.jabber.org/streams"><mechanisms '
            b'xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><mechanism>PLAIN</mechanism></mechanisms>'
            b'</stream:features>')
LIMITS = WsLimits(max_message_bytes=1024, ping_interval=30.0, missed_pongs=2, open_timeout=10.0)


def texts(events: list[object]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, SendText)]


def of(events: list[object], kind: type) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def new(now: float = 100.0, **kw: object) -> WsSession:
    return WsSession("sid1", frozenset({"example.com"}), LIMITS, now, **kw)  # type: ignore[arg-type]


def opened(now: float = 100.0) -> WsSession:
    s = new(now)
    s.receive_text(OPEN, now)
    s.upstream_ready(INFO, FEATURES, now + 0.1)
    assert s.state is WsState.OPEN
    return s


def assert_stream_error(events: list[object], condition: StreamCondition, code: int | None = None) -> None:
    """RFC 7395 §3.5/§3.6: the error, then the exact close text, then the socket close."""
    out = texts(events)
    assert out[-2:] == [stream_error(condition), CLOSE]
    closes = of(events, CloseSocket)
    assert len(closes) == 1
    if code is not None:
        assert closes[0].code == code  # type: ignore[attr-defined]
    assert isinstance(events[-1], SessionEnded) and events[-1].condition is condition


# -- opening -----------------------------------------------------------------------------

def test_open_to_a_served_domain_opens_upstream_with_its_attributes() -> None:
    """RFC 7395 §3.4: the client's <open/> carries the RFC 6120 §4.7 header attributes."""
    s = new()
    ev = s.receive_text(f'<open xmlns="{FRAMING}" to="Example.com" version="1.0" '
                        f'xml:lang="de"/>'.encode(), 100.0)
    assert len(ev) == 1 and isinstance(ev[0], OpenUpstream)
    assert (ev[0].params.to, ev[0].params.lang, ev[0].params.version) == ("Example.com", "de", "1.0")
    assert s.state is WsState.CONNECTING and s.domain == "example.com"


def test_upstream_ready_answers_open_then_features_as_separate_messages() -> None:
    """§3.3.3: one element per message; §3.4: the answer is an <open/> with the server's values."""
    s = new()
    s.receive_text(OPEN, 100.0)
    ev = s.upstream_ready(INFO, FEATURES, 100.5)
    assert texts(ev) == [render_open("example.com", "s1", None, "1.0"), FEATURES]
    assert texts(ev)[0] == b'<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" from="example.com" id="s1" version="1.0"/>'


def test_first_message_not_open_is_invalid_namespace_after_an_open() -> None:
    """§3.4 + §3.5: an error while opening: our <open/> first, then the stream error."""
    s = new()
    ev = s.receive_text(b"<open xmlns='jabber:client' to='example.com'/>", 100.0)
    assert texts(ev)[0].startswith(b'<open xmlns="urn:ietf:params:xml:ns:xmpp-framing"')
    assert_stream_error(ev, StreamCondition.INVALID_NAMESPACE)
    assert not of(ev, CloseUpstream)  # nothing was opened upstream
    assert s.state is WsState.ENDED


def test_unknown_domain_is_host_unknown() -> None:
    ev = new().receive_text(f'<open xmlns="{FRAMING}" to="elsewhere.org" version="1.0"/>'.encode(), 1.0)
    assert_stream_error(ev, StreamCondition.HOST_UNKNOWN)
    assert not of(ev, OpenUpstream)


def test_see_other_uri_answers_open_with_a_close_naming_it() -> None:
    """§3.6.1: the operator drains this node."""
    ev = new(see_other_uri="wss://other.example/xmpp-websocket").receive_text(OPEN, 1.0)
    assert texts(ev) == [b'<close xmlns="urn:ietf:params:xml:ns:xmpp-framing" '
                         b'see-other-uri="wss://other.example/xmpp-websocket" />']
    assert of(ev, CloseSocket) and not of(ev, OpenUpstream)


def test_no_open_within_the_open_timeout_is_connection_timeout() -> None:
    s = new(now=100.0)
    assert s.next_deadline() == 110.0
    assert s.handle_timer(109.9) == []
    assert_stream_error(s.handle_timer(110.0), StreamCondition.CONNECTION_TIMEOUT)


def test_upstream_failure_while_connecting_sends_open_then_close() -> None:
    s = new()
    s.receive_text(OPEN, 1.0)
    ev = s.upstream_closed(None, 2.0)
    assert texts(ev)[0].startswith(b"<open ") and texts(ev)[-1] == CLOSE
    assert isinstance(ev[-1], SessionEnded)


# -- stanzas -----------------------------------------------------------------------------

def test_client_stanza_goes_upstream_reserialized_in_jabber_client() -> None:
    """A message without an xmlns is in the stream's content namespace (RFC 6120 §4.8.3)."""
    s = opened()
    ev = s.receive_text(b"<message to='b@example.com'><body>hi</body></message>", 101.0)
    assert len(ev) == 1 and isinstance(ev[0], SendUpstream)
    element = ev[0].elements[0]
    assert (element.namespace, element.name) == (NS_CLIENT, "message")
    assert element.data == b'<message xmlns="jabber:client" to="b@example.com"><body>hi</body></message>'


def test_server_elements_go_to_the_client_one_message_each() -> None:
    s = opened()
    a, b = b'<message xmlns="jabber:client"><body>1</body></message>', b'<iq xmlns="jabber:client"/>'
    assert texts(s.upstream_elements([a, b], 101.0)) == [a, b]


def test_elements_sent_before_the_upstream_is_ready_follow_in_order() -> None:
    s = new()
    s.receive_text(OPEN, 1.0)
    assert s.receive_text(b"<presence/>", 1.1) == []
    ev = s.upstream_ready(INFO, FEATURES, 1.2)
    sends = of(ev, SendUpstream)
    assert len(sends) == 1 and sends[0].elements[0].name == "presence"  # type: ignore[attr-defined]


def test_restart_is_a_new_open_answered_by_the_new_header() -> None:
    """§3.7: after SASL the client sends a new <open/>; the answer is the server's new header."""
    s = opened()
    ev = s.receive_text(OPEN, 101.0)
    assert len(ev) == 1 and isinstance(ev[0], RestartUpstream) and ev[0].params.to == "example.com"
    ev = s.upstream_header(StreamInfo("example.com", "s2", "1.0"), 101.1)
    assert texts(ev) == [render_open("example.com", "s2", None, "1.0")]


def test_restart_to_another_domain_is_refused() -> None:
    s = opened()
    ev = s.receive_text(f'<open xmlns="{FRAMING}" to="other.org" version="1.0"/>'.encode(), 101.0)
    assert_stream_error(ev, StreamCondition.HOST_UNKNOWN)
    assert of(ev, CloseUpstream)[0] == CloseUpstream(end_stream=True)


# -- stream errors of ours ---------------------------------------------------------------

@pytest.mark.parametrize("data, condition", [
    (b"<message><body>unclosed", StreamCondition.NOT_WELL_FORMED),
    (b"not xml at all", StreamCondition.NOT_WELL_FORMED),
    (b"\xff\xfe<message/>", StreamCondition.NOT_WELL_FORMED),
    (b"<!DOCTYPE x [<!ENTITY a 'b'>]><message>&a;</message>", StreamCondition.RESTRICTED_XML),
    (b"<!-- hi --><message/>", StreamCondition.RESTRICTED_XML),
    (b"<message><?pi x?></message>", StreamCondition.RESTRICTED_XML),
    (b"<message " + b" ".join(b"a%d='1'" % i for i in range(100)) + b"/>",
     StreamCondition.POLICY_VIOLATION),
    (b"<message to='" + b"x" * 5000 + b"'/>", StreamCondition.POLICY_VIOLATION),
    (b"<x:open xmlns:x='urn:ietf:params:xml:ns:xmpp-framing-nope'/>", None),
    (b"<foo xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", StreamCondition.INVALID_XML),
])
def test_bad_client_messages_get_the_matching_stream_error(data: bytes, condition: StreamCondition | None) -> None:
    """RFC 6120 §4.9.3 conditions; the same hardened parser as BOSH (no DTD, no entities)."""
    s = opened()
    ev = s.receive_text(data, 101.0)
    if condition is None:  # an unknown namespace is an extension: passed through
        assert of(ev, SendUpstream)
        return
    assert_stream_error(ev, condition)
    assert of(ev, CloseUpstream) == [CloseUpstream(end_stream=True)]
    assert not of(ev, SendUpstream)
    assert s.upstream_elements([b"<iq/>"], 102.0) == []  # ended: nothing more


def test_oversize_message_is_policy_violation_not_a_bare_close() -> None:
    """design.md §10 (Prosody does the same): a resuming client must not resend it."""
    s = opened()
    ev = s.receive_text(b"<message>" + b"x" * 2000 + b"</message>", 101.0)
    assert_stream_error(ev, StreamCondition.POLICY_VIOLATION, WS_POLICY)
    s2 = opened()
    assert_stream_error(s2.message_too_big(101.0), StreamCondition.POLICY_VIOLATION, WS_POLICY)


def test_binary_frame_is_unsupported_encoding() -> None:
    """RFC 7395 §3.2: XMPP messages are text frames."""
    assert_stream_error(opened().receive_binary(101.0), StreamCondition.UNSUPPORTED_ENCODING,
                        WS_UNSUPPORTED_DATA)


# -- closing ---------------------------------------------------------------------------

def test_client_close_closes_upstream_then_answers_close_then_the_socket() -> None:
    """§3.6: <close/> -> upstream stream closed -> <close/> back -> WebSocket close."""
    ev = opened().receive_text(CLIENT_CLOSE, 101.0)
    assert ev[0] == CloseUpstream(end_stream=True)
    assert texts(ev) == [CLOSE]
    assert of(ev, CloseSocket) == [CloseSocket(1000)]
    assert ev[-1] == SessionEnded(None)


def test_server_stream_error_goes_through_then_close_at_once() -> None:
    s = opened()
    err = (b'<stream:error xmlns:stream="http://etherx.jabber.org/streams"><conflict '
           b'xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error>')
    ev = s.upstream_closed(err, 101.0)
    assert texts(ev) == [err, CLOSE] and of(ev, CloseSocket) == [CloseSocket(1000)]


def test_upstream_lost_is_close_at_once() -> None:
    ev = opened().upstream_closed(None, 101.0)
    assert texts(ev) == [CLOSE] and of(ev, CloseSocket)


# -- XEP-0198 resumption -----------------------------------------------------------------

ENABLED = b'<enabled xmlns="urn:xmpp:sm:3" id="q1" resume="true" max="600"/>'


def test_socket_loss_without_resumption_closes_the_stream_cleanly() -> None:
    ev = opened().connection_lost(101.0)
    assert ev == [CloseUpstream(end_stream=True), SessionEnded(None)]


def test_socket_loss_with_resumption_granted_keeps_the_server_session() -> None:
    """XEP-0198 §5: a cleanly closed stream is not resumable: no </stream:stream>."""
    s = opened()
    assert texts(s.upstream_elements([ENABLED], 101.0)) == [ENABLED]  # passed through untouched
    assert s.resumable
    assert s.connection_lost(102.0) == [CloseUpstream(end_stream=False), SessionEnded(None)]


@pytest.mark.parametrize("element, resumable", [
    (b'<enabled xmlns="urn:xmpp:sm:3" id="q1" resume="1"/>', True),
    (b'<enabled xmlns="urn:xmpp:sm:3"/>', False),
    (b'<resumed xmlns="urn:xmpp:sm:3" previd="q1" h="3"/>', True),
    (b'<failed xmlns="urn:xmpp:sm:3"/>', False),
    (b'<enabled xmlns="urn:xmpp:sm:2" resume="true"/>', True),  # the older version, same rules
    (b'<enabled xmlns="urn:xmpp:sm:4" resume="true"/>', False),  # not a version we know
])
def test_resumability_follows_the_servers_answers(element: bytes, resumable: bool) -> None:
    s = opened()
    s.upstream_elements([element], 101.0)
    assert s.resumable is resumable


def test_shutdown_releases_a_resumable_session_with_1012_and_no_close() -> None:
    s = opened()
    s.upstream_elements([ENABLED], 101.0)
    ev = s.shutdown(102.0)
    assert texts(ev) == []  # no <close/>: the client resumes elsewhere
    assert of(ev, CloseUpstream) == [CloseUpstream(end_stream=False)]
    assert of(ev, CloseSocket) == [CloseSocket(WS_RESTART)]


def test_shutdown_of_a_plain_session_is_system_shutdown() -> None:
    ev = opened().shutdown(101.0)
    assert_stream_error(ev, StreamCondition.SYSTEM_SHUTDOWN)
    assert of(ev, CloseUpstream) == [CloseUpstream(end_stream=True)]


def test_client_close_of_a_resumable_session_ends_it_cleanly() -> None:
    s = opened()
    s.upstream_elements([ENABLED], 101.0)
    assert s.receive_text(CLIENT_CLOSE, 102.0)[0] == CloseUpstream(end_stream=True)


def test_sm_elements_from_the_client_pass_through_untouched() -> None:
    s = opened()
    for data in (b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>", b"<r xmlns='urn:xmpp:sm:3'/>",
                 b"<a xmlns='urn:xmpp:sm:3' h='7'/>", b"<resume xmlns='urn:xmpp:sm:3' previd='q1' h='7'/>"):
        ev = s.receive_text(data, 101.0)
        assert len(ev) == 1 and isinstance(ev[0], SendUpstream)
        assert ev[0].elements[0].namespace == "urn:xmpp:sm:3"


# -- pings -------------------------------------------------------------------------------

def test_pings_every_interval_and_two_missed_pongs_count_as_a_lost_socket() -> None:
    s = opened(now=100.0)  # ready at 100.1
    assert s.next_deadline() == pytest.approx(130.1)
    assert s.handle_timer(130.1) == [SendPing()]
    assert s.receive_pong(131.0) == []
    assert s.handle_timer(160.1) == [SendPing()]
    assert s.handle_timer(190.1) == [SendPing()]  # one missed
    s.upstream_elements([ENABLED], 191.0)
    ev = s.handle_timer(220.1)                    # two missed: gone
    assert of(ev, CloseUpstream) == [CloseUpstream(end_stream=False)]  # still resumable
    assert of(ev, CloseSocket) and not texts(ev)
    assert s.state is WsState.ENDED and s.next_deadline() is None


def test_while_the_client_is_not_read_missing_pongs_do_not_count() -> None:
    """Backpressure: the adapter reads no frames (pongs included) while the server does not
    read; minutes of that are no lost client. Once reading resumes the count starts afresh."""
    s = opened(now=100.0)
    assert s.handle_timer(130.1) == [SendPing()]       # one out, not answered yet
    assert s.client_unread(True, 131.0) == []
    for t in (160.1, 190.1, 220.1, 250.1):
        assert s.handle_timer(t) == []
    assert s.state is WsState.OPEN
    s.client_unread(False, 251.0)
    assert s.handle_timer(280.1) == [SendPing()]
    assert s.handle_timer(310.1) == [SendPing()]       # one missed
    assert of(s.handle_timer(340.1), CloseSocket)      # two missed: gone, as before


def test_ping_interval_zero_sends_no_pings() -> None:
    s = WsSession("sid", frozenset({"example.com"}), WsLimits(ping_interval=0), 1.0)
    s.receive_text(OPEN, 1.0)
    s.upstream_ready(INFO, FEATURES, 1.0)
    assert s.next_deadline() is None


def test_operator_end_is_a_stream_error() -> None:
    assert_stream_error(opened().end(StreamCondition.HOST_GONE, 101.0), StreamCondition.HOST_GONE)


def test_ended_session_emits_nothing() -> None:
    s = opened()
    s.receive_text(CLIENT_CLOSE, 101.0)
    assert s.receive_text(b"<presence/>", 102.0) == []
    assert s.upstream_elements([b"<iq/>"], 102.0) == []
    assert s.upstream_closed(None, 102.0) == []
    assert s.connection_lost(102.0) == []
    assert s.shutdown(102.0) == []
    assert s.handle_timer(1e9) == []


def test_a_refused_second_enable_leaves_the_session_resumable() -> None:
    """XEP-0198 §4: <failed><unexpected-request/></failed> answers an <enable/> sent twice;
    the session enabled first is still resumable, so a drop must not send the footer."""
    s = opened()
    s.upstream_elements([ENABLED], 101.0)
    s.upstream_elements([b'<failed xmlns="urn:xmpp:sm:3"><unexpected-request '
                         b'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>'], 102.0)
    assert s.resumable
    assert s.connection_lost(103.0)[0] == CloseUpstream(end_stream=False)
