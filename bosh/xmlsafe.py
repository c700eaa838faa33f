"""Hardened parsing of client XML, shared by every transport (sans-IO).

One parser for everything a client sends, BOSH ``<body/>`` documents and WebSocket messages
alike: it never loads a DTD, never resolves entities and never touches the network
(XEP-0124 §6, §19, checklist #13; RFC 7395 §3.3.3; RFC 6120 §11.1 restricted XML); a DOCTYPE,
a comment or a processing instruction anywhere is refused, and so is nesting deeper than
:data:`MAX_DEPTH`, an element with more than :data:`MAX_ATTRIBUTES` attributes or an attribute
value longer than :data:`MAX_ATTRIBUTE_CHARS`.

:func:`client_element` re-serializes one payload element into a fresh tree whose namespace
declarations are exactly the ones it uses. That is also what stops a client from injecting
raw markup such as ``</stream:stream>`` into the upstream stream.

Failures raise :class:`bosh.errors.XmlRefused`; each transport turns its ``kind`` into its own
condition once (BOSH: bad-request; WebSocket: the stream error of that name).
"""

from __future__ import annotations

from lxml import etree

from bosh.errors import XmlRefused
from bosh.ports import NS_CLIENT, ClientElement

__all__ = ["MAX_DEPTH", "MAX_ATTRIBUTES", "parse_document", "client_element", "split", "attrs_of"]

MAX_DEPTH = 64
MAX_ATTRIBUTES = 64
#: Longest attribute value, in characters. The longest legitimate one is a full JID (RFC 7622
#: §3.1: 3 x 1023 bytes plus separators); 4 KiB leaves room and bounds what one tag costs.
MAX_ATTRIBUTE_CHARS = 4096

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=False,
    remove_pis=False,
    collect_ids=False,
)


def split(tag: str) -> tuple[str, str]:
    """``'{ns}name'`` -> ``('ns', 'name')``; ``'name'`` -> ``('', 'name')``."""
    if tag[0] == "{":
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def parse_document(data: bytes) -> etree._Element:
    """Parse one standalone document and return its root element.

    Raises :class:`XmlRefused` for malformed XML, a DOCTYPE, or a comment / processing
    instruction before or after the root. What is inside the root is checked by
    :func:`client_element`.
    """
    try:
        root = etree.fromstring(data, _PARSER)
    except (etree.XMLSyntaxError, ValueError) as exc:  # ValueError: e.g. a refused encoding
        raise XmlRefused(XmlRefused.NOT_WELL_FORMED, f"malformed XML: {exc}") from None
    if not isinstance(root.tag, str):
        raise XmlRefused(XmlRefused.RESTRICTED, "comments and processing instructions not allowed")
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XmlRefused(XmlRefused.RESTRICTED, "DOCTYPE not allowed")  # checklist #13
    # Prolog/epilog comments and PIs are siblings of the root.
    if root.getprevious() is not None or root.getnext() is not None:
        raise XmlRefused(XmlRefused.RESTRICTED, "comments and processing instructions not allowed")
    _check_attributes(root)
    return root


def _check_attributes(elem: etree._Element) -> None:
    attrib = elem.attrib
    if len(attrib) > MAX_ATTRIBUTES:
        raise XmlRefused(XmlRefused.TOO_COMPLEX, "too many attributes")
    for value in attrib.values():
        if len(value) > MAX_ATTRIBUTE_CHARS:
            raise XmlRefused(XmlRefused.TOO_COMPLEX, "attribute value too long")


def attrs_of(elem: etree._Element, prefixes: dict[str, str]) -> dict[str, str]:
    """The attributes of ``elem``; namespaced ones named ``prefix + local`` when their
    namespace is in ``prefixes`` (e.g. ``xml:lang``), Clark notation otherwise."""
    out: dict[str, str] = {}
    for key, value in elem.attrib.items():
        if key[0] == "{":
            ns, _, local = key[1:].partition("}")
            prefix = prefixes.get(ns)
            key = prefix + local if prefix else key
        out[key] = value
    return out


def client_element(src: etree._Element, remap: str | None = None) -> ClientElement:
    """One payload element, bounded and re-serialized with clean namespace declarations.

    ``remap``: a namespace that really means ``jabber:client`` for this transport, in the
    element and its descendants: ``http://jabber.org/protocol/httpbind`` for BOSH (XEP-0206 §2
    note: stanzas sent inside ``<body/>`` without an xmlns inherit it), ``""`` for WebSocket
    (a message without an xmlns is in the content namespace of the stream, RFC 6120 §4.8.3).
    """
    if not isinstance(src.tag, str):
        raise XmlRefused(XmlRefused.RESTRICTED, "comments and processing instructions not allowed")
    ns, name = split(src.tag)
    if ns == remap:
        ns = NS_CLIENT
    # An unqualified descendant cannot sit under a default namespace (lxml cannot write
    # xmlns=""), so such a rare payload is written with prefixes instead.
    prefixed = remap != "" and any(isinstance(e.tag, str) and e.tag[0] != "{" for e in src.iter())
    copy = _rebuild(src, None, 0, prefixed, remap)
    return ClientElement(ns, name, etree.tostring(copy, encoding="utf-8"))


def _rebuild(src: etree._Element, parent: etree._Element | None, depth: int,
             prefixed: bool, remap: str | None) -> etree._Element:
    """Copy ``src`` into a fresh tree whose namespace declarations are exactly the ones used."""
    if depth > MAX_DEPTH:
        raise XmlRefused(XmlRefused.TOO_COMPLEX, "payload nested too deeply")
    _check_attributes(src)
    ns, name = split(src.tag)
    if remap is not None and ns == remap:
        ns = NS_CLIENT
    tag = f"{{{ns}}}{name}" if ns else name
    parent_ns = None if parent is None else split(parent.tag)[0]
    nsmap = {None: ns} if ns and ns != parent_ns and not prefixed else None
    if parent is None:
        elem = etree.Element(tag, nsmap=nsmap)
    else:
        elem = etree.SubElement(parent, tag, nsmap=nsmap)
    for key, value in src.attrib.items():
        elem.set(key, value)
    elem.text = src.text
    for child in src:
        if not isinstance(child.tag, str):
            raise XmlRefused(XmlRefused.RESTRICTED, "comments and processing instructions not allowed")
        copy = _rebuild(child, elem, depth + 1, prefixed, remap)
        copy.tail = child.tail
    return elem
