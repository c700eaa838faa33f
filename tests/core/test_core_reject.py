"""Refused input: a request the parser refuses but that names a live session ends that
session properly (XEP-0124 §17.2 bad-request and other-request; checklist #90, #93, #99),
and a creation 'content' that cannot be a Content-Type is refused (#7)."""

from __future__ import annotations

import pytest

from bosh import wire
from bosh.errors import BoshError, Condition
from bosh.session import State, negotiate
from tests.core._helpers import (
    DOMAINS, LIMITS, NS, RID0, SessionEnded, answer_for, body, create_attrs, is_terminate, kinds,
    new_session, req,
)


def test_parser_error_names_the_sid_and_ver_of_a_readable_root() -> None:
    """#93 setup: the root is readable, the payload is not (a comment, §6)."""
    data = f"<body xmlns='{NS}' sid='S1' rid='7' ver='1.6'><!-- x --></body>".encode()
    with pytest.raises(BoshError) as info:
        wire.parse_body(data)
    assert info.value.condition is Condition.BAD_REQUEST
    assert (info.value.sid, info.value.ver) == ("S1", "1.6")


def test_parser_error_on_unreadable_xml_still_names_a_visible_sid() -> None:
    """#89: a terminal body ends the session the request names, even when the document is
    unreadable as a whole (truncated, or a DTD the parser refuses outright)."""
    with pytest.raises(BoshError) as info:
        wire.parse_body(f"<body xmlns='{NS}' sid='S1' rid='7'".encode())
    assert info.value.sid == "S1"


def test_parser_error_without_a_visible_sid_names_no_session() -> None:
    """REC under #90: when no sid can be seen, no session is touched."""
    with pytest.raises(BoshError) as info:
        wire.parse_body(b"<body xmlns='x' rid='7'><<")
    assert info.value.sid is None


def test_reject_answers_bad_request_and_tells_the_held_request_other_request() -> None:
    """#93: the held N+1 gets other-request, the broken N+2 gets bad-request, session ends."""
    s, _ = new_session()
    s.receive("r1", req("SID", RID0 + 1), 1.0)
    events = s.reject("r2", Condition.BAD_REQUEST, 1.5)
    assert is_terminate(answer_for(events, "r2").body, "bad-request")
    assert is_terminate(answer_for(events, "r1").body, "other-request")
    assert kinds(events)[-2:] == ["CloseUpstream", "SessionEnded"]
    assert s.state is State.ENDED
    assert isinstance(events[-1], SessionEnded) and events[-1].condition is Condition.BAD_REQUEST


def test_reject_uses_the_legacy_status_for_a_client_without_ver() -> None:
    """#99: a legacy client (no 'ver' at creation) gets HTTP 400 for bad-request."""
    s, _ = new_session(ver=None)
    events = s.reject("r2", Condition.BAD_REQUEST, 1.0)
    assert answer_for(events, "r2").status == 400



@pytest.mark.parametrize("content", ["text/xml\r\nSet-Cookie: a=b", "text/xml; charset=\u00e9",
                                     "nonsense", "", "text/", "/xml"])
def test_unusable_content_attribute_is_bad_request(content: str) -> None:
    """§7.1 'content' becomes the Content-Type of every response (#7): a value that is not a
    media type, or that would inject a header, is refused with bad-request at creation."""
    with pytest.raises(BoshError) as info:
        negotiate(body(create_attrs(content=content.replace("\r\n", "&#13;&#10;"))), LIMITS, DOMAINS)
    assert info.value.condition is Condition.BAD_REQUEST


def test_media_type_with_parameters_is_echoed_unchanged() -> None:
    terms = negotiate(body(create_attrs(content="text/html; charset=utf-8")), LIMITS, DOMAINS)
    assert terms.content == "text/html; charset=utf-8"


def test_upstream_failure_while_connecting_tells_every_waiting_request_why() -> None:
    """§17.2 remote-connection-failed: a request that arrived before the upstream was ready
    (held or parked) learns the real condition, not item-not-found or other-request."""
    s, _ = new_session(ready=False)
    s.receive("held", req("SID", RID0 + 1), 0.1)
    s.receive("parked", req("SID", RID0 + 3), 0.2)
    events = s.upstream_closed(Condition.REMOTE_CONNECTION_FAILED, None, 0.5)
    for request in ("create", "held", "parked"):
        assert is_terminate(answer_for(events, request).body, "remote-connection-failed"), request
    assert s.state is State.ENDED
