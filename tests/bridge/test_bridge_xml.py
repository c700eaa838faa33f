"""Serializer, client filter, features filter, stream header and routing (pure functions)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from lxml import etree

from bosh.config import UpstreamConfig
from bosh.ports import StreamParams
from xmpp_bridge.routing import RoutePlan, order_srv_answers, plan_route, srv_name
from xmpp_bridge.stream import build_stream_header
from xmpp_bridge.xml import allowed_upstream, filter_features, serialize

NS_STREAM = "http://etherx.jabber.org/streams"
NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
BODY_OPEN = (f"<body xmlns='{NS_HTTPBIND}' xmlns:stream='{NS_STREAM}' "
             "xmlns:xmpp='urn:xmpp:xbosh'>")


def parse_stream_child(xml: str) -> ET.Element:
    """Parse ``xml`` as a child of a server stream, the way slixmpp sees it."""
    root = ET.fromstring(
        f"<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}'>{xml}</stream:stream>")
    return root[0]


def in_body(data: bytes) -> etree._Element:
    """Parse serialized bytes as the single child of a BOSH body, like a client would."""
    body = etree.fromstring(BODY_OPEN.encode() + data + b"</body>")
    assert len(body) == 1
    return body[0]


def same_tree(a: ET.Element, b: etree._Element) -> None:
    """Structural equality: tags, attributes, text and tails (top tail excluded)."""
    assert a.tag == b.tag
    assert dict(a.attrib) == dict(b.attrib)
    assert (a.text or "") == (b.text or "")
    assert len(a) == len(b)
    for ca, cb in zip(a, b):
        same_tree(ca, cb)
        assert (ca.tail or "") == (cb.tail or "")


def roundtrip(xml: str) -> bytes:
    elem = parse_stream_child(xml)
    data = serialize(elem)
    same_tree(elem, in_body(data))
    return data


# -- serializer ---------------------------------------------------------------------------

def test_message_gets_explicit_jabber_client_xmlns() -> None:
    """XEP-0206 §2 note: stanzas in a body carry xmlns='jabber:client'."""
    data = roundtrip("<message to='a@b' type='chat'><body>hi</body></message>")
    assert data.startswith(b'<message xmlns="jabber:client" ')
    assert b"ns0" not in data
    assert b"<body>hi</body>" in data  # child in the same namespace: no xmlns


def test_stream_features_declare_the_stream_prefix_themselves() -> None:
    """RFC 7395 §3.3.3: standalone, so the element declares xmlns:stream (inside a BOSH
    <body/> that declares it too, XEP-0206 §2, that is harmless); never <stream:stream:features>."""
    data = roundtrip("<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
                     "</stream:features>")
    assert data == (b'<stream:features xmlns:stream="http://etherx.jabber.org/streams"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/>'
                    b"</stream:features>")
    assert data.count(b"xmlns:stream") == 1


def test_stream_error_with_text_and_lang() -> None:
    data = roundtrip("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                     "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>"
                     "Replaced by new connection</text></stream:error>")
    assert data.startswith(b'<stream:error xmlns:stream="http://etherx.jabber.org/streams"><conflict ')
    assert b'xml:lang="en"' in data
    assert b"xmlns:xml" not in data


def test_special_characters_in_text_and_attributes() -> None:
    data = roundtrip("<message to='a&amp;b@x' id='q&quot;1&apos;&lt;&gt;'>"
                     "<body>1 &lt; 2 &amp;&amp; 3 &gt; 2 ]]&gt; \"quoted\" 'single'</body>"
                     "</message>")
    assert b"]]>" not in data
    assert b'to="a&amp;b@x"' in data


def test_whitespace_in_attributes_and_cr_in_text_survive() -> None:
    """XML 1.0 §3.3.3 attribute normalization and §2.11 end-of-line handling."""
    elem = parse_stream_child("<message id='a&#10;b&#9;c&#13;d'><body>x&#13;y\nz</body></message>")
    data = serialize(elem)
    parsed = in_body(data)
    assert parsed.get("id") == "a\nb\tc\rd"
    assert parsed[0].text == "x\ry\nz"


def test_nested_foreign_namespaces() -> None:
    data = roundtrip(
        "<iq type='result' id='1'><query xmlns='jabber:iq:roster'>"
        "<item jid='a@b'><group>G</group></item></query>"
        "<x xmlns='jabber:x:data'><field var='f'><value>v</value></field>"
        "<inner xmlns='urn:other'><deep/></inner><back/></x></iq>")
    parsed = in_body(data)
    assert parsed.tag == "{jabber:client}iq"
    assert parsed[0][0][0].tag == "{jabber:iq:roster}group"
    assert parsed[1][1][0].tag == "{urn:other}deep"
    assert parsed[1][2].tag == "{jabber:x:data}back"


def test_element_in_no_namespace_undeclares_default() -> None:
    data = roundtrip("<message><x xmlns=''><y/></x></message>")
    assert b'<x xmlns="">' in data
    assert in_body(data)[0][0].tag == "y"


def test_no_namespace_child_of_stream_element() -> None:
    """Under a stream: element the default in scope is the body's (httpbind): undeclare it."""
    data = roundtrip("<stream:features><x xmlns=''/></stream:features>")
    assert in_body(data)[0].tag == "x"


def test_foreign_attribute_namespace_gets_declared_prefix() -> None:
    data = roundtrip("<presence xmlns:foo='urn:foo' foo:bar='1' xml:lang='de'>"
                     "<c xmlns:foo2='urn:foo2' foo2:x='2' foo:y='3'/></presence>")
    parsed = in_body(data)
    assert parsed.get("{urn:foo}bar") == "1"
    assert parsed.get("{http://www.w3.org/XML/1998/namespace}lang") == "de"
    assert parsed[0].get("{urn:foo2}x") == "2"
    assert parsed[0].get("{urn:foo}y") == "3"
    assert b"ns0" not in data


def test_empty_elements_and_mixed_content_with_tails() -> None:
    data = roundtrip("<message><body/><html xmlns='http://jabber.org/protocol/xhtml-im'>"
                     "<body xmlns='http://www.w3.org/1999/xhtml'>a<b>bold</b> tail "
                     "<i/>end</body></html></message>")
    assert b"<body/>" in data
    assert b"<b>bold</b> tail <i/>end" in data


def test_top_level_tail_is_not_written() -> None:
    root = ET.fromstring(f"<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}'>"
                         "<presence/>\n  <presence/></stream:stream>")
    assert serialize(root[0]) == b'<presence xmlns="jabber:client"/>'


def test_non_ascii_is_utf8() -> None:
    data = roundtrip("<message><body>grüße ☃ 𝄞</body></message>")
    assert "grüße ☃ 𝄞".encode() in data


def test_client_cannot_break_out_via_text() -> None:
    """Re-serializing a parsed tree means no '</stream:stream>' can appear in output."""
    data = roundtrip("<message><body>&lt;/stream:stream&gt;</body></message>")
    assert b"</stream:stream>" not in data


# -- client -> server filter --------------------------------------------------------------

@pytest.mark.parametrize("namespace,name", [
    ("jabber:client", "message"),
    ("jabber:client", "presence"),
    ("jabber:client", "iq"),
    ("urn:ietf:params:xml:ns:xmpp-sasl", "auth"),
    ("urn:ietf:params:xml:ns:xmpp-sasl", "response"),
    ("urn:xmpp:sm:3", "enable"),
    ("urn:xmpp:sm:3", "r"),
    ("urn:xmpp:sm:2", "a"),
    ("urn:xmpp:csi:0", "inactive"),
    ("urn:xmpp:some-future-extension", "thing"),
])
def test_allowed_upstream(namespace: str, name: str) -> None:
    assert allowed_upstream(namespace, name)


@pytest.mark.parametrize("namespace,name", [
    ("urn:ietf:params:xml:ns:xmpp-tls", "starttls"),
    ("http://etherx.jabber.org/streams", "stream"),
    ("http://etherx.jabber.org/streams", "error"),
    ("http://jabber.org/protocol/compress", "compress"),
    ("http://jabber.org/features/compress", "compression"),
    ("http://jabber.org/protocol/httpbind", "body"),
    ("jabber:client", "stream"),
    ("", "message"),
])
def test_refused_upstream(namespace: str, name: str) -> None:
    assert not allowed_upstream(namespace, name)


# -- features filter ----------------------------------------------------------------------

FEATURES = ("<stream:features>"
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
            "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            "<mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>"
            "<mechanism> SCRAM-SHA-1-PLUS </mechanism><mechanism>PLAIN</mechanism></mechanisms>"
            "<authentication xmlns='urn:xmpp:sasl:2'><mechanism>SCRAM-SHA-1-PLUS</mechanism>"
            "<mechanism>SCRAM-SHA-1</mechanism></authentication>"
            "<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>"
            "<channel-binding type='tls-server-end-point'/></sasl-channel-binding>"
            "<compression xmlns='http://jabber.org/features/compress'><method>zlib</method>"
            "</compression>"
            "<register xmlns='http://jabber.org/features/iq-register'/>"
            "</stream:features>")


def test_features_filter_strips_hop_only_features() -> None:
    """Design §5: STARTTLS, channel binding (RFC 5802 §6, XEP-0440), compression."""
    original = parse_stream_child(FEATURES)
    data = serialize(filter_features(original))
    assert b"starttls" not in data
    assert b"-PLUS" not in data
    assert b"sasl-channel-binding" not in data
    assert b"compression" not in data
    assert b"<mechanism>SCRAM-SHA-256</mechanism>" in data
    assert b"<mechanism>PLAIN</mechanism>" in data
    assert b"<mechanism>SCRAM-SHA-1</mechanism>" in data
    assert b'<register xmlns="http://jabber.org/features/iq-register"/>' in data
    # The input is untouched.
    assert b"starttls" in serialize(original)


# -- stream header and routing ------------------------------------------------------------

def test_stream_header_attributes_are_escaped() -> None:
    header = build_stream_header(StreamParams(to="ex'ample.org", lang="en", from_="a@b"))
    assert b"to='ex&apos;ample.org'" in header
    root = etree.fromstring(header + b"</stream:stream>")
    assert root.tag == f"{{{NS_STREAM}}}stream"
    assert root.get("to") == "ex'ample.org"
    assert root.get("version") == "1.0"
    assert root.get("from") == "a@b"
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert root.nsmap[None] == "jabber:client"


def test_route_overrides_fixed_host() -> None:
    cfg = UpstreamConfig(host="xmpp.internal", port=5223)
    params = StreamParams(to="example.org", route=("10.0.0.1", 5999))
    assert plan_route(cfg, params) == RoutePlan(fallback=(("10.0.0.1", 5999),))


def test_fixed_host_skips_srv() -> None:
    cfg = UpstreamConfig(host="xmpp.internal", port=5223)
    assert plan_route(cfg, StreamParams(to="example.org")) == RoutePlan(
        fallback=(("xmpp.internal", 5223),))


def test_no_host_means_srv_with_domain_fallback() -> None:
    plan = plan_route(UpstreamConfig(host=""), StreamParams(to="example.org"))
    assert plan == RoutePlan(fallback=(("example.org", 5222),), srv_domain="example.org")
    assert srv_name("example.org") == "_xmpp-client._tcp.example.org"


def test_srv_answers() -> None:
    fallback = (("example.org", 5222),)
    assert order_srv_answers([], fallback) == [("example.org", 5222)]
    assert order_srv_answers([(".", 0)], fallback) == []
    assert order_srv_answers([("a.example.org.", 5223), ("b.example.org", 5224)], fallback) == [
        ("a.example.org", 5223), ("b.example.org", 5224)]
