"""XML at the boundary between the upstream XMPP stream and the BOSH side.

Three things live here, all pure functions without I/O:

* :func:`serialize` -- writes one element parsed from the server stream (an
  ``xml.etree.ElementTree.Element`` with ``{namespace}name`` tags) as bytes that can be
  placed inside a BOSH ``<body/>`` or sent as one WebSocket message. The standard serializers get this wrong in ways that
  break real clients (see design.md section 5): ElementTree writes ``ns0:`` prefixes
  (Strophe.js matches on ``tagName``), slixmpp's ``tostring`` writes
  ``<stream:stream:features>`` or drops foreign attributes, and lxml copies inherited
  namespace declarations.
* :func:`allowed_upstream` -- which client elements may be written onto the upstream stream.
* :func:`filter_features` -- removes from ``<stream:features/>`` what only makes sense for
  the hop between us and the server (STARTTLS, channel binding, compression).
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from typing import Iterator

from bosh.ports import NS_CLIENT, NS_HTTPBIND, NS_STREAM, NS_XBOSH, NS_XML
from bosh.xmltext import escape_attr, escape_text

__all__ = [
    "NS_TLS",
    "NS_SASL",
    "NS_SASL2",
    "NS_SASL_CB",
    "NS_COMPRESS_PROTOCOL",
    "NS_COMPRESS_FEATURE",
    "NS_STREAM_ERRORS",
    "serialize",
    "escape_attr",
    "split_tag",
    "allowed_upstream",
    "filter_features",
    "is_features",
    "is_stream_error",
    "offers_starttls",
]

NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_SASL2 = "urn:xmpp:sasl:2"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"
NS_COMPRESS_PROTOCOL = "http://jabber.org/protocol/compress"
NS_COMPRESS_FEATURE = "http://jabber.org/features/compress"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"

_STREAM_PREFIX = "stream"

# Sentinel for "the default namespace in scope is not known": the element is written into a
# context we do not control (the BOSH <body/> has xmlns='http://jabber.org/protocol/httpbind'),
# so the first unprefixed element always declares its namespace, even the empty one.
_UNKNOWN: str = "\x00unknown"


def split_tag(tag: str) -> tuple[str, str]:
    """Split ``'{ns}name'`` into ``('ns', 'name')``; ``'name'`` gives ``('', 'name')``."""
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


# -- serializer -----------------------------------------------------------------------------

class _Writer:
    """Accumulates output; owns the counter for generated attribute-namespace prefixes."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._counter = 0

    def new_prefix(self) -> str:
        # Prefixes are unique within one serialized element tree, so a nested declaration
        # never shadows an outer one with a different meaning.
        prefix = f"a{self._counter}"
        self._counter += 1
        return prefix

    def element(self, elem: ET.Element, default_ns: str, top: bool,
                stream_declared: bool = False) -> None:
        tag = elem.tag
        if not isinstance(tag, str):
            # Comments / processing instructions: the pull parser used by slixmpp does not
            # produce them, but never write something we cannot represent.
            if not top and elem.tail:
                self.parts.append(escape_text(elem.tail))
            return
        ns, name = split_tag(tag)
        decls: list[tuple[str, str]] = []  # (attribute name, namespace URI)
        if ns == NS_STREAM:
            # RFC 7395 §3.3.3: no parent context provides the prefix, so the element declares
            # it itself (inside a BOSH <body/> that also declares it, XEP-0206 §2, the
            # repeated declaration is harmless).
            qname = f"{_STREAM_PREFIX}:{name}"
            child_default = default_ns
            if not stream_declared:
                decls.append((f"xmlns:{_STREAM_PREFIX}", NS_STREAM))
                stream_declared = True
        else:
            qname = name
            if ns != default_ns:
                decls.append(("xmlns", ns))
            child_default = ns

        attrs: list[tuple[str, str]] = []
        for key, value in elem.attrib.items():
            ans, aname = split_tag(key)
            if not ans:
                attrs.append((aname, value))
            elif ans == NS_XML:
                # The xml: prefix is bound by definition and must not be declared
                # (Namespaces in XML §3).
                attrs.append((f"xml:{aname}", value))
            elif ans == NS_STREAM:
                if not stream_declared:
                    decls.append((f"xmlns:{_STREAM_PREFIX}", NS_STREAM))
                    stream_declared = True
                attrs.append((f"{_STREAM_PREFIX}:{aname}", value))
            else:
                prefix = self.new_prefix()
                decls.append((f"xmlns:{prefix}", ans))
                attrs.append((f"{prefix}:{aname}", value))

        out = self.parts
        out.append("<")
        out.append(qname)
        for dname, uri in decls:
            out.append(f' {dname}="{escape_attr(uri)}"')
        for aname, value in attrs:
            out.append(f' {aname}="{escape_attr(value)}"')
        children = list(elem)
        if not children and not elem.text:
            out.append("/>")
        else:
            out.append(">")
            if elem.text:
                out.append(escape_text(elem.text))
            for child in children:
                self.element(child, child_default, top=False, stream_declared=stream_declared)
            out.append(f"</{qname}>")
        if not top and elem.tail:
            out.append(escape_text(elem.tail))


def serialize(elem: ET.Element) -> bytes:
    """Serialize one top-level element of the server stream as UTF-8 bytes.

    The result is a standalone document (RFC 7395 §3.3.3): the top element carries an
    explicit ``xmlns`` (``jabber:client`` for stanzas, XEP-0206 §2 note), children in a
    different namespace declare their own, elements in the streams namespace are written
    as ``stream:name`` with ``xmlns:stream`` declared on the outermost one, ``xml:``
    attributes keep their prefix, attributes in other
    namespaces get a generated, declared prefix. The top element's ``tail`` (whitespace
    between stanzas) is not written.
    """
    writer = _Writer()
    writer.element(elem, _UNKNOWN, top=True)
    return "".join(writer.parts).encode("utf-8")


# -- client -> server filter ----------------------------------------------------------------

# Namespaces a client must never write onto our upstream stream: TLS and compression are
# negotiated on the hop we own (and would desynchronize it), stream-namespace elements could
# close or re-open the stream, and BOSH elements belong to the HTTP side.
_DENIED_NAMESPACES = frozenset({
    NS_TLS,
    NS_STREAM,
    NS_COMPRESS_PROTOCOL,
    NS_COMPRESS_FEATURE,
    NS_HTTPBIND,
    NS_XBOSH,
    "",  # a top-level element without a namespace is never valid XMPP (RFC 6120 §4.8.3)
})

# RFC 6120 §8: the only stanzas in the content namespace.
_CLIENT_STANZAS = frozenset({"message", "presence", "iq"})


def allowed_upstream(namespace: str, name: str) -> bool:
    """May a client element with this namespace and local name go to the server?

    Allowed: ``jabber:client`` message/presence/iq, SASL, stream management
    (``urn:xmpp:sm:3``, ``:2``), CSI and in general any other extension namespace.
    Refused: TLS, the streams namespace, stream compression (XEP-0138) and BOSH itself.
    """
    if namespace in _DENIED_NAMESPACES:
        return False
    if namespace == NS_CLIENT:
        return name in _CLIENT_STANZAS
    return True


# -- features filter ------------------------------------------------------------------------

def is_features(elem: ET.Element) -> bool:
    """Is this ``<stream:features/>`` (RFC 6120 §4.3.2)?"""
    return elem.tag == f"{{{NS_STREAM}}}features"


def is_stream_error(elem: ET.Element) -> bool:
    """Is this ``<stream:error/>`` (RFC 6120 §4.9)?"""
    return elem.tag == f"{{{NS_STREAM}}}error"


def _is_plus_mechanism(elem: ET.Element) -> bool:
    return (elem.tag in (f"{{{NS_SASL}}}mechanism", f"{{{NS_SASL2}}}mechanism")
            and (elem.text or "").strip().upper().endswith("-PLUS"))


def _iter_mechanism_lists(features: ET.Element) -> Iterator[ET.Element]:
    for child in features:
        if child.tag in (f"{{{NS_SASL}}}mechanisms", f"{{{NS_SASL2}}}authentication"):
            yield child


def offers_starttls(features: ET.Element) -> bool:
    """Does this features element offer STARTTLS (RFC 6120 §5.3.1)?"""
    return features.find(f"{{{NS_TLS}}}starttls") is not None


_STRIPPED_FEATURES = frozenset({
    f"{{{NS_TLS}}}starttls",
    f"{{{NS_SASL_CB}}}sasl-channel-binding",  # XEP-0440
    f"{{{NS_COMPRESS_FEATURE}}}compression",  # XEP-0138
})


def filter_features(features: ET.Element) -> ET.Element:
    """Return a copy of ``features`` without what belongs to our hop only.

    Removed: ``<starttls/>`` (TLS to the server is ours, RFC 6120 §5), ``*-PLUS`` SASL
    mechanisms and ``<sasl-channel-binding/>`` (they would bind to our TLS session, not
    the client's: RFC 5802 §6, XEP-0440) and ``<compression/>`` (XEP-0138 is negotiated
    per TCP stream). The input is not modified.
    """
    result = copy.deepcopy(features)
    for child in list(result):
        if child.tag in _STRIPPED_FEATURES:
            result.remove(child)
    for mechanisms in _iter_mechanism_lists(result):
        for mech in list(mechanisms):
            if _is_plus_mechanism(mech):
                mechanisms.remove(mech)
    return result
