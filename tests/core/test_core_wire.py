"""bosh.wire: the hardened request parser and the response renderers (XEP-0124 §6, §14.1, §17.2;
XEP-0206 §2). Synchronous, no I/O."""

from __future__ import annotations

import pytest
from lxml import etree

from bosh import wire
from bosh.errors import BoshError, Condition
from bosh.ports import NS_CLIENT
from tests.core._helpers import NS, ST, XB, body_bytes, parse

HEAD = f"<body xmlns='{NS}' rid='1001' sid='S'"


def bad(data: bytes) -> BoshError:
    with pytest.raises(BoshError) as info:
        wire.parse_body(data)
    assert info.value.condition is Condition.BAD_REQUEST
    return info.value


# -- refusals: checklist #12, #13, #90 ------------------------------------------------------

@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(b"   \n", id="whitespace-only"),
    pytest.param((HEAD).encode(), id="truncated-start-tag"),
    pytest.param((HEAD + "><message>").encode(), id="unclosed-child"),
    pytest.param(b"<foo xmlns='x'/>", id="wrong-root"),
    pytest.param(b"<body xmlns='urn:wrong' rid='1'/>", id="wrong-namespace"),
    pytest.param(b"<body rid='1'/>", id="no-namespace"),
    pytest.param(f"<!DOCTYPE body>{HEAD}/>".encode(), id="doctype"),
    pytest.param(f"<!DOCTYPE body [<!ENTITY e 'x'>]>{HEAD}>&e;</body>".encode(), id="doctype-entity"),
    pytest.param(f"{HEAD}><!-- c --></body>".encode(), id="comment-in-body"),
    pytest.param(f"<!-- c -->{HEAD}/>".encode(), id="comment-in-prolog"),
    pytest.param(f"{HEAD}/><!-- c -->".encode(), id="comment-in-epilog"),
    pytest.param(f"{HEAD}><message xmlns='jabber:client'><!-- c --></message></body>".encode(),
                 id="comment-in-payload"),
    pytest.param(f"<?pi x?>{HEAD}/>".encode(), id="pi-in-prolog"),
    pytest.param(f"{HEAD}><?pi x?></body>".encode(), id="pi-in-body"),
    pytest.param(f"{HEAD}><a xmlns='x'><?pi x?></a></body>".encode(), id="pi-in-payload"),
    pytest.param(f"{HEAD}>hello</body>".encode(), id="text-in-body"),
    pytest.param(f"{HEAD}><a xmlns='x'/>hello</body>".encode(), id="text-after-child"),
    pytest.param(f"{HEAD}>&foo;</body>".encode(), id="undefined-entity-in-body"),
    pytest.param(f"{HEAD}><a xmlns='x'>&foo;</a></body>".encode(), id="undefined-entity-in-payload"),
])
def test_parser_rejects_unacceptable_bodies_with_bad_request(data: bytes) -> None:
    """§6 (no DTD, comments, PIs, custom entities, character data in body) and §17.2
    bad-request for malformed XML / wrong root or namespace. Checklist #12, #13, #90."""
    bad(data)


def test_parser_rejects_billion_laughs_without_expanding() -> None:
    """Checklist #13: entity definitions are refused, never expanded."""
    lol = "".join(f"<!ENTITY l{i} '{('&l%d;' % (i - 1)) * 10}'>" for i in range(1, 10))
    data = f"<!DOCTYPE body [<!ENTITY l0 'lol'>{lol}]>{HEAD}>&l9;</body>".encode()
    bad(data)


def test_parser_rejects_payload_nested_too_deeply() -> None:
    """Hardened parser (design §9): a depth cap stops deep-nesting attacks."""
    depth = 200
    payload = "<a xmlns='urn:x'>" * depth + "</a>" * depth
    bad(f"{HEAD}>{payload}</body>".encode())


def test_parser_accepts_moderate_nesting() -> None:
    payload = "<a xmlns='urn:x'>" * 20 + "</a>" * 20
    parsed = wire.parse_body(f"{HEAD}>{payload}</body>".encode())
    assert len(parsed.payload) == 1


def test_parser_tolerates_xml_declaration_and_whitespace_between_children() -> None:
    """Checklist Q10: whitespace between payload children is tolerated (the spec's own examples
    are pretty-printed); an XML declaration is not a processing instruction."""
    data = (f"<?xml version='1.0' encoding='utf-8'?>\n{HEAD}>\n  <a xmlns='x'/>\n  "
            f"<b xmlns='y'/>\n</body>").encode()
    parsed = wire.parse_body(data)
    assert [(p.namespace, p.name) for p in parsed.payload] == [("x", "a"), ("y", "b")]


def test_parser_keeps_predefined_entities_in_text() -> None:
    """§6: the five predefined entities are fine and round-trip (checklist #11)."""
    data = f"{HEAD}><message xmlns='jabber:client'><body>a &amp; b &lt; c ]]&gt;</body></message></body>"
    parsed = wire.parse_body(data.encode())
    elem = etree.fromstring(parsed.payload[0].data)
    assert elem[0].text == "a & b < c ]]>"


# -- attributes ---------------------------------------------------------------------------

def test_parser_maps_xbosh_and_xml_attributes_to_conventional_prefixes() -> None:
    data = body_bytes({"rid": "1", "to": "example.com", "xml:lang": "de", "xmpp:version": "1.0",
                       "xmpp:restart": "true"})
    parsed = wire.parse_body(data)
    assert parsed.get("xml:lang") == "de"
    assert parsed.get("xmpp:version") == "1.0"
    assert parsed.get("xmpp:restart") == "true"
    assert parsed.get("to") == "example.com"


@pytest.mark.parametrize("raw,expected", [
    ("1", 1),
    ("1000", 1000),
    ("9007199254740991", 9007199254740991),  # 2^53 - 1, exact
    ("9007199254740992", None),              # 2^53: above the §14.1 bound
    ("99999999999999999999", None),
    ("0", None),
    ("-5", None),
    ("+5", None),
    ("abc", None),
    ("1.0", None),
    ("1e3", None),
    (" 5", None),
    ("", None),
    ("\u0661\u0662", None),                  # non-ASCII digits
    (None, None),
])
def test_rid_is_a_positive_integer_up_to_2_pow_53_minus_1(raw: str | None, expected: int | None) -> None:
    """§6 rid is a positiveInteger; §14.1 rids go up to 2^53-1 and are handled exactly (#14, #55)."""
    assert wire.parse_rid(raw) == expected
    if raw is not None and '"' not in raw:
        attrs = {"rid": raw} if raw != "" else {"rid": ""}
        assert wire.parse_body(body_bytes(attrs)).rid == expected


def test_rid_2_pow_53_minus_1_is_exact_not_float() -> None:
    """Checklist #55: a float would round 2^53-1 + nothing, but 2^53-1 must stay exact."""
    rid = wire.parse_rid("9007199254740991")
    assert isinstance(rid, int) and rid == 2**53 - 1 and rid - 1 == 9007199254740990


@pytest.mark.parametrize("raw,expected", [
    ("true", True), ("1", True), ("false", False), ("0", False), (None, False),
    ("TRUE", False), ("yes", False), ("", False),
])
def test_boolean_attributes_accept_true_and_1(raw: str | None, expected: bool) -> None:
    """XSF boolean note, XEP-0206 §5 (checklist #122): 'true' and '1' are true."""
    assert wire.parse_bool(raw) is expected


# -- payload namespaces: §B REC, 0206 §2, checklist #15 ------------------------------------

def test_stanza_without_xmlns_and_its_descendants_are_remapped_to_jabber_client() -> None:
    """Checklist §B REC (XEP-0206 §2 note): stanzas without xmlns inherit NS; they and every
    descendant in NS become jabber:client. Children in other namespaces keep theirs."""
    data = (f"{HEAD}><message to='a@example.com'><body>hi</body>"
            f"<x xmlns='urn:y'><b/></x></message></body>").encode()
    (elem,) = wire.parse_body(data).payload
    assert (elem.namespace, elem.name) == (NS_CLIENT, "message")
    tree = etree.fromstring(elem.data)
    assert tree.tag == "{jabber:client}message"
    assert tree.get("to") == "a@example.com"
    assert tree[0].tag == "{jabber:client}body" and tree[0].text == "hi"
    assert tree[1].tag == "{urn:y}x" and tree[1][0].tag == "{urn:y}b"
    assert NS.encode() not in elem.data


def test_payload_in_any_namespace_is_kept_with_attributes_and_text() -> None:
    """§6 MAY (checklist #15): XEP-0198 nonzas and foreign elements travel unchanged."""
    data = (f"{HEAD}><enable xmlns='urn:xmpp:sm:3' resume='true'/>"
            f"<foo xmlns='urn:x:test' a='1'>t</foo></body>").encode()
    first, second = wire.parse_body(data).payload
    assert (first.namespace, first.name) == ("urn:xmpp:sm:3", "enable")
    e1 = etree.fromstring(first.data)
    assert e1.tag == "{urn:xmpp:sm:3}enable" and e1.get("resume") == "true"
    e2 = etree.fromstring(second.data)
    assert e2.tag == "{urn:x:test}foo" and e2.get("a") == "1" and e2.text == "t"


def test_payload_serialization_carries_only_its_own_namespace_declarations() -> None:
    """Design §5: lxml must not carry inherited declarations (httpbind, xbosh) into payloads."""
    data = body_bytes({"rid": "1", "sid": "S"},
                      "<iq xmlns='jabber:client' type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>")
    (elem,) = wire.parse_body(data).payload
    assert XB.encode() not in elem.data and NS.encode() not in elem.data
    assert etree.fromstring(elem.data).tag == "{jabber:client}iq"


def test_payload_cannot_inject_raw_stream_markup() -> None:
    """Design §5: re-serializing means escaped text stays text."""
    data = f"{HEAD}><message xmlns='jabber:client'><body>&lt;/stream:stream&gt;</body></message></body>"
    (elem,) = wire.parse_body(data.encode()).payload
    assert b"</stream:stream>" not in elem.data
    assert etree.fromstring(elem.data)[0].text == "</stream:stream>"


def test_unnamespaced_child_of_namespaced_payload_keeps_no_namespace() -> None:
    """§6 MAY (checklist #15): payloads are forwarded with the same names and namespaces."""
    data = f"{HEAD}><foo xmlns='urn:x'><bar xmlns=''/></foo></body>".encode()
    (elem,) = wire.parse_body(data).payload
    assert etree.fromstring(elem.data)[0].tag == "bar"


# -- renderers: §6, 0206 §2 ----------------------------------------------------------------

def test_empty_body_is_minimal_and_well_formed() -> None:
    """§8: the wait-expiry answer is an empty <body xmlns=NS/> with no type."""
    root = parse(wire.render_body())
    assert len(root) == 0 and dict(root.attrib) == {}
    assert wire.EMPTY_BODY == wire.render_body()


def test_render_body_escapes_attribute_values() -> None:
    data = wire.render_body({"from": "a'b\"c<d>&e"})
    assert parse(data).get("from") == "a'b\"c<d>&e"


def test_render_body_declares_xmpp_prefix_for_xbosh_attributes() -> None:
    """0206 §4: xmpp:version / xmpp:restartlogic are XB-qualified (checklist #42)."""
    root = parse(wire.render_body({"xmpp:version": "1.0", "xmpp:restartlogic": "true"}))
    assert root.get(f"{{{XB}}}version") == "1.0"
    assert root.get(f"{{{XB}}}restartlogic") == "true"


def test_render_body_with_features_declares_stream_prefix_on_body_start_tag() -> None:
    """0206 §2 MUST (checklist #16): xmlns:stream is declared on <body> itself."""
    data = wire.render_body({"sid": "x"}, [b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
                                           b"</stream:features>"])
    start_tag = data[:data.index(b">") + 1]
    assert f"xmlns:stream='{ST}'".encode() in start_tag
    root = parse(data)
    assert root[0].tag == f"{{{ST}}}features"


def test_render_body_payload_only_is_well_formed() -> None:
    payload = [b"<message xmlns='jabber:client'><body>a &amp; b</body></message>",
               b"<presence xmlns='jabber:client'/>"]
    root = parse(wire.render_body(None, payload))
    assert [c.tag for c in root] == ["{jabber:client}message", "{jabber:client}presence"]
    assert root.text is None


@pytest.mark.parametrize("condition", list(Condition))
def test_render_terminate_for_every_condition_is_well_formed(condition: Condition) -> None:
    """§17.2: terminate bodies are built in one function and carry the exact condition string."""
    data = wire.render_terminate(condition)
    root = parse(data)
    assert root.get("type") == "terminate" and root.get("condition") == condition.value
    for marker in (b"<!--", b"<!DOCTYPE", b"<?"):
        assert marker not in data


def test_render_terminate_without_condition_and_with_stream_error_payload() -> None:
    """0206 §6 (checklist #95): stanzas then the full <stream:error/>, with xmlns:stream on body."""
    assert parse(wire.render_terminate()).get("condition") is None
    err = (b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
           b"</stream:error>")
    root = parse(wire.render_terminate(Condition.REMOTE_STREAM_ERROR,
                                       [b"<message xmlns='jabber:client'/>", err]))
    assert [c.tag for c in root] == ["{jabber:client}message", f"{{{ST}}}error"]


def test_render_error_is_recoverable_type_error() -> None:
    """§17.3: <body type='error'/> (recoverable)."""
    root = parse(wire.render_error())
    assert root.get("type") == "error" and root.get("condition") is None


def test_bounds_on_attributes_of_the_body_and_of_payload_elements() -> None:
    """Issue 11: a body with 10,000 attributes, or an attribute of a megabyte, is refused
    (bad-request), in the body itself and in its payload; ordinary ones pass."""
    from bosh.xmlsafe import MAX_ATTRIBUTE_CHARS, MAX_ATTRIBUTES

    ns = "http://jabber.org/protocol/httpbind"
    many = " ".join(f"a{i}='1'" for i in range(10_000))
    for data in (f"<body xmlns='{ns}' rid='1' {many}/>",
                 f"<body xmlns='{ns}' rid='1' to='{'x' * (MAX_ATTRIBUTE_CHARS + 1)}'/>",
                 f"<body xmlns='{ns}' rid='1'><message {many}/></body>",
                 f"<body xmlns='{ns}' rid='1'><message><x y='{'z' * 100_000}'/></message></body>"):
        with pytest.raises(BoshError) as info:
            wire.parse_body(data.encode())
        assert info.value.condition is Condition.BAD_REQUEST
    fine = " ".join(f"a{i}='1'" for i in range(MAX_ATTRIBUTES - 2))
    wire.parse_body(f"<body xmlns='{ns}' rid='1' to='{'x' * MAX_ATTRIBUTE_CHARS}'><message {fine}/></body>".encode())
