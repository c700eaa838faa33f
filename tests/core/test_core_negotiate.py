"""Session creation: negotiation of the creation request and the creation response
(XEP-0124 §7.1, §7.2, §12, §17.2; XEP-0206 §3, §4). Synchronous, literal times."""

from __future__ import annotations

import pytest

from bosh.errors import BoshError, Condition
from bosh.ports import StreamInfo
from bosh.session import Limits, OpenUpstream, Respond, Session, State, negotiate
from tests.core._helpers import (
    DOMAINS, FEATURES, INFO, LIMITS, RID0, ST, XB, answer_for, body, body_bytes, create_attrs,
    new_session, parse,
)


def terms(limits: Limits = LIMITS, **over: str | None):  # type: ignore[no-untyped-def]
    return negotiate(body(create_attrs(**over)), limits, DOMAINS)


def refused(limits: Limits = LIMITS, **over: str | None) -> Condition:
    with pytest.raises(BoshError) as info:
        terms(limits, **over)
    return info.value.condition


# -- wait / hold / requests ---------------------------------------------------------------

@pytest.mark.parametrize("asked,granted", [("5", 5), ("10", 10), ("60", 10), ("0", 0), ("1", 1),
                                           ("65535", 10), (None, 10)])
def test_wait_is_capped_by_max_wait_and_never_above_the_request(asked: str | None, granted: int) -> None:
    """§7.2 MUST: the response 'wait' is ≤ the requested 'wait' (checklist #24)."""
    assert terms(wait=asked).wait == granted


@pytest.mark.parametrize("asked,granted", [("1", 1), ("3", 1), ("0", 0), (None, 1)])
def test_hold_is_capped_by_max_hold_and_never_above_the_request(asked: str | None, granted: int) -> None:
    """§7.2 MUST NOT exceed the requested 'hold' (checklist #25)."""
    assert terms(hold=asked).hold == granted


@pytest.mark.parametrize("hold,requests", [("1", 2), ("0", 1), ("2", 3)])
def test_requests_is_granted_hold_plus_one(hold: str, requests: int) -> None:
    """§7.2 RECOMMENDED: requests = hold + 1 (checklist #33, #83) when the hold is granted."""
    t = terms(Limits(max_wait=10, max_inactivity=4, max_hold=2, polling=2), hold=hold)
    assert t.requests == requests


@pytest.mark.parametrize("wait", ["-1", "abc", "1.5", "65536", "", " 5"])
def test_non_integer_or_oversized_wait_is_bad_request(wait: str) -> None:
    """§22 schema: 'wait' is unsignedShort; anything else is bad-request (checklist #24 REC)."""
    assert refused(wait=wait) is Condition.BAD_REQUEST


@pytest.mark.parametrize("hold", ["-1", "x", "1.0"])
def test_non_integer_hold_is_bad_request(hold: str) -> None:
    assert refused(hold=hold) is Condition.BAD_REQUEST


# -- ver: §7.1 numeric min --------------------------------------------------------------------

@pytest.mark.parametrize("asked,answered", [
    ("1.6", "1.6"),
    ("1.10", "1.10"),   # a float/string comparison would say '1.10' < '1.9' or == '1.1'
    ("1.9", "1.9"),
    ("1.11", "1.11"),
    ("1.12", "1.11"),
    ("2.0", "1.11"),
    ("0.5", "0.5"),
    ("01.06", "1.6"),
])
def test_ver_is_the_numeric_minimum_of_client_and_cm(asked: str, answered: str) -> None:
    """§7.1 MUST: major.minor with the minor an integer of its own; answer min (checklist #23)."""
    assert terms(ver=asked).ver == answered


@pytest.mark.parametrize("ver", ["1", "1.", ".1", "a.b", "1.6.1", "1,6", "", "v1.6", "1.-6"])
def test_malformed_ver_is_bad_request(ver: str) -> None:
    """Checklist #23 REC: a malformed 'ver' → bad-request."""
    assert refused(ver=ver) is Condition.BAD_REQUEST


def test_missing_ver_marks_the_client_legacy() -> None:
    """§17.1: a client without 'ver' is legacy (gets HTTP error codes, checklist #99)."""
    t = terms(ver=None)
    assert t.ver is None and t.legacy


# -- addressing and rid --------------------------------------------------------------------

@pytest.mark.parametrize("over,condition", [
    ({"to": None}, Condition.IMPROPER_ADDRESSING),
    ({"to": ""}, Condition.IMPROPER_ADDRESSING),
    ({"to": "unknown.invalid"}, Condition.HOST_UNKNOWN),
    ({"rid": None}, Condition.BAD_REQUEST),
    ({"rid": "abc"}, Condition.BAD_REQUEST),
    ({"rid": "0"}, Condition.BAD_REQUEST),
    ({"rid": "-5"}, Condition.BAD_REQUEST),
    ({"rid": "9007199254740992"}, Condition.BAD_REQUEST),
])
def test_creation_refusals_carry_the_right_condition(over: dict[str, str | None], condition: Condition) -> None:
    """§17.2: improper-addressing (missing/empty 'to', #21), host-unknown (unserved 'to', #22),
    bad-request (rid not a positiveInteger ≤ 2^53-1, #14, #55)."""
    assert refused(**over) is condition


def test_to_is_matched_case_insensitively_and_kept_for_the_stream_header() -> None:
    """§7.1 'to' (checklist #20): it goes on the upstream header."""
    t = terms(to="Example.COM")
    assert t.stream.to == "Example.COM"


def test_rid_2_pow_53_minus_1_is_accepted_exactly() -> None:
    """§14.1 (checklist #55)."""
    assert terms(rid="9007199254740991").rid == 2**53 - 1


def test_stream_params_carry_lang_from_and_version() -> None:
    """§7.1 xml:lang (#29), 'from' (#28), 0206 §3 xmpp:version (#30)."""
    t = terms(xml_lang="de", **{"from": "user@example.com"})
    assert (t.stream.to, t.stream.lang, t.stream.from_, t.stream.version) == \
        ("example.com", "de", "user@example.com", "1.0")


def test_content_attribute_is_kept_and_defaults_to_text_xml() -> None:
    """§7.1 MUST (checklist #6, #7): the session's Content-Type."""
    assert terms().content == "text/xml; charset=utf-8"
    assert terms(content="text/html; charset=utf-8").content == "text/html; charset=utf-8"
    s, _ = new_session(content="text/html; charset=utf-8")
    assert s.content_type == "text/html; charset=utf-8"


@pytest.mark.parametrize("over", [{"wait": "0"}, {"hold": "0"}, {"wait": "0", "hold": "0"}])
def test_polling_session_gets_an_inactivity_larger_by_more_than_polling(over: dict[str, str]) -> None:
    """§12 SHOULD (checklist #84): polling sessions' inactivity − default > 'polling'."""
    normal = terms()
    polling = terms(**over)
    assert polling.inactivity - normal.inactivity > LIMITS.polling
    assert normal.inactivity == LIMITS.max_inactivity


# -- the creation response -----------------------------------------------------------------

def test_creation_waits_for_upstream_and_opens_it_with_the_stream_params() -> None:
    """0206 §3/§4: the creation request is answered once the upstream features arrived."""
    s, events = new_session(ready=False, xml_lang="de")
    assert s.state is State.CONNECTING
    assert len(events) == 1 and isinstance(events[0], OpenUpstream)
    assert events[0].params.to == "example.com" and events[0].params.lang == "de"
    assert s.next_deadline() is None  # no inactivity while the creation request is held
    out = s.upstream_ready(INFO, FEATURES, now=0.5)
    assert s.state is State.OPEN
    assert answer_for(out, "create").status == 200


def test_creation_response_carries_every_negotiated_attribute() -> None:
    """§7.2 MUST sid/wait/requests (#32), SHOULD ver/polling/inactivity/hold/from (#34);
    0206 §4 xmpp:version, xmpp:restartlogic (#42), authid = server stream id (#43)."""
    s, events = new_session(wait="60", hold="3", ver="1.10")
    root = parse(answer_for(events, "create").body)
    assert root.get("sid") == "SID"
    assert root.get("wait") == "10"
    assert root.get("hold") == "1"
    # #33 / Q2: 'requests' exceeds the hold the client asked for (3), not only the granted 1.
    assert root.get("requests") == "4"
    assert root.get("inactivity") == "4"
    assert root.get("polling") == "2"
    assert root.get("ver") == "1.10"
    assert root.get("from") == "example.com"
    assert root.get("authid") == "s1"
    assert root.get(f"{{{XB}}}version") == "1.0"
    assert root.get(f"{{{XB}}}restartlogic") in ("true", "1")
    assert root.get("type") is None


def test_creation_response_to_a_legacy_client_still_announces_ver() -> None:
    """§7.2/§17.1: always sending 'ver' tells the client the CM is not legacy (#34)."""
    _, events = new_session(ver=None)
    assert parse(answer_for(events, "create").body).get("ver") == "1.11"


def test_creation_response_contains_features_with_stream_prefix_declared_on_body() -> None:
    """0206 §4 SHOULD (#41) and 0206 §2 MUST (#16): features inside, xmlns:stream on <body>."""
    _, events = new_session()
    data = answer_for(events, "create").body
    start_tag = data[:data.index(b">") + 1]
    assert f"xmlns:stream='{ST}'".encode() in start_tag
    root = parse(data)
    assert [c.tag for c in root] == [f"{{{ST}}}features"]
    assert root[0][0].tag == "{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms"


def test_creation_response_from_falls_back_to_to_when_server_gave_none() -> None:
    """§7.2 'from' (#40); no authid when the server sent no id (#43)."""
    s, _ = new_session(ready=False)
    out = s.upstream_ready(StreamInfo(from_=None, id=None, version=None), FEATURES, now=1.0)
    root = parse(answer_for(out, "create").body)
    assert root.get("from") == "example.com"
    assert root.get("authid") is None
    assert root.get(f"{{{XB}}}version") == "1.0"


def test_upstream_failure_during_creation_answers_the_creation_request_with_terminate() -> None:
    """§17.2 remote-connection-failed (checklist #94a): in the creation response."""
    s, _ = new_session(ready=False)
    out = s.upstream_closed(Condition.REMOTE_CONNECTION_FAILED, None, now=2.0)
    reply = answer_for(out, "create")
    assert reply.status == 200
    assert parse(reply.body).get("condition") == "remote-connection-failed"
    assert s.state is State.ENDED


def test_sids_from_registry_are_long_random_and_distinct() -> None:
    """§7.2 + §19.3 MUST (checklist #31): opaque, unpredictable, unique."""
    from bosh.registry import Registry, mint_sid

    sids = {mint_sid() for _ in range(2000)}
    assert len(sids) == 2000
    assert all(len(s) >= 32 for s in sids)
    reg: Registry[int] = Registry(max_sessions=2)
    a = reg.reserve()
    reg.add(a, 1)
    b = reg.reserve()
    reg.add(b, 2)
    assert a != b and reg.get(a) == 1 and len(reg) == 2
    with pytest.raises(BoshError) as info:
        reg.reserve()
    assert info.value.condition is Condition.POLICY_VIOLATION
    reg.remove(a)
    assert reg.get(a) is None and reg.reserve() not in (b,)


def test_a_cluster_nodes_sids_carry_its_id_and_keep_their_random_bits() -> None:
    """Issue 9: a balancer reads the owner from the sid; still >= 128 random bits (§7.2)."""
    from bosh.registry import Registry, mint_sid, node_of

    reg: Registry[int] = Registry(max_sessions=10, node_id="n7")
    sid = reg.reserve()
    head, _, token = sid.partition(".")
    assert head == "n7" and node_of(sid) == "n7"
    assert len(token) >= 32 and "." not in token
    assert node_of(mint_sid()) is None


def test_creation_body_helper_roundtrip() -> None:
    # Guards the helpers themselves: CREATE(...) has the checklist's attributes.
    parsed = body(create_attrs())
    assert parsed.rid == RID0 and parsed.get("xmpp:version") == "1.0"
    assert b"xmlns:xmpp" in body_bytes({"xmpp:version": "1.0"})
    assert isinstance(Session, type) and Respond
