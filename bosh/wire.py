"""The BOSH wire format: a hardened ``<body/>`` parser and the body renderers.

Requests are parsed by the hardened parser every transport shares (:mod:`bosh.xmlsafe`: no
DTD, no entities, no network; XEP-0124 §6, §19; checklist #13); a DOCTYPE, a comment or a
processing instruction anywhere is a bad-request.

Responses are built as bytes directly: payloads already arrive serialized (see
``bosh.ports``), so a response is a start tag, the payload bytes and an end tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from lxml import etree

from bosh import xmlsafe
from bosh.errors import BoshError, Condition, XmlRefused
from bosh.xmltext import escape_attr, escape_text
from bosh.ports import NS_CLIENT, NS_HTTPBIND, NS_STREAM, NS_XBOSH, NS_XML, ClientElement

# XEP-0124 §14.1: rids go up to 2^53 - 1; anything larger is not a valid rid.
MAX_RID = 2**53 - 1

_ATTR_PREFIXES = {NS_XBOSH: "xmpp:", NS_XML: "xml:"}


@dataclass(frozen=True, slots=True)
class Body:
    """A parsed request ``<body/>``.

    ``attrs`` uses plain names for unqualified attributes and the conventional prefixes for
    the two namespaced families a client sends: ``xmpp:version``, ``xmpp:restart``,
    ``xml:lang``. Other namespaced attributes keep Clark notation (``{ns}name``).
    """

    attrs: Mapping[str, str]
    payload: tuple[ClientElement, ...]

    def get(self, name: str) -> str | None:
        return self.attrs.get(name)

    @property
    def sid(self) -> str | None:
        return self.attrs.get("sid")

    @property
    def rid(self) -> int | None:
        """The request id, or None when missing or not a valid positiveInteger (§6, §14.1)."""
        return parse_rid(self.attrs.get("rid"))


def parse_uint(value: str | None, max_digits: int = 16) -> int | None:
    """A non-negative decimal integer attribute, or None. Only ASCII digits, and few enough
    of them that no client can make ``int()`` slow or raise (Python caps digit strings)."""
    if value is None or not value or len(value) > max_digits or not value.isascii() \
            or not value.isdigit():
        return None
    return int(value)


def parse_rid(value: str | None) -> int | None:
    rid = parse_uint(value)
    return rid if rid is not None and 0 < rid <= MAX_RID else None


def parse_route(raw: str) -> tuple[str, int] | None:
    """Split 'proto:host:port' (§7.1: not a URI): proto at the first ':', port at the last."""
    proto, sep, rest = raw.partition(":")
    host, sep2, port_s = rest.rpartition(":")
    port = parse_uint(port_s, 5)
    if not (proto and sep and sep2 and host) or port is None:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # xmpp:[2001:db8::1]:5222
    return (host.lower(), port) if 0 < port < 65536 else None


def parse_bool(value: str | None) -> bool:
    """XML Schema boolean: 'true'/'1' are true (XEP-0206 §5 and the XSF boolean note)."""
    return value in ("true", "1")


def parse_body(data: bytes) -> Body:
    """Parse one request body, raising ``BoshError(BAD_REQUEST)`` on anything unacceptable
    (the hardened parser of :mod:`bosh.xmlsafe`; every refusal is bad-request here, §17.2)."""
    if not data.strip():
        raise BoshError(Condition.BAD_REQUEST, "empty request")
    try:
        root = xmlsafe.parse_document(data)
    except XmlRefused as exc:
        error = BoshError(Condition.BAD_REQUEST, exc.detail)
        # A terminal error ends the session the request names (§17.2, checklist #89), even
        # when the document as a whole is unreadable (a billion-laughs DTD, say).
        error.sid = _scan_attr(data, _SID_RE)
        error.ver = _scan_attr(data, _VER_RE)
        raise error from None
    if root.tag != f"{{{NS_HTTPBIND}}}body":
        raise BoshError(Condition.BAD_REQUEST, "root element must be {%s}body" % NS_HTTPBIND)
    attrs = xmlsafe.attrs_of(root, _ATTR_PREFIXES)
    try:
        if root.text is not None and root.text.strip():
            raise BoshError(Condition.BAD_REQUEST, "character data directly inside <body/>")  # §6
        payload = tuple(_payload(root))
    except BoshError as exc:
        exc.sid = attrs.get("sid")
        exc.ver = attrs.get("ver")
        raise
    return Body(attrs=attrs, payload=payload)


_SID_RE = re.compile(rb"<body\b[^>]*?\ssid\s*=\s*(['\"])([A-Za-z0-9_.~-]{1,128})\1")
_VER_RE = re.compile(rb"<body\b[^>]*?\sver\s*=\s*(['\"])([0-9.]{1,16})\1")


def _scan_attr(data: bytes, pattern: re.Pattern[bytes]) -> str | None:
    """An attribute of the ``<body`` start tag of an unparseable document, if visible."""
    match = pattern.search(data, 0, 65536)
    return match.group(2).decode("ascii") if match else None


def _payload(root: etree._Element) -> Iterable[ClientElement]:
    for child in root:
        if child.tail is not None and child.tail.strip():
            raise BoshError(Condition.BAD_REQUEST, "character data directly inside <body/>")
        try:
            # XEP-0206 §2 note: stanzas sent without an xmlns inherit the httpbind namespace;
            # they (and their descendants) really are jabber:client.
            yield xmlsafe.client_element(child, remap=NS_HTTPBIND)
        except XmlRefused as exc:
            raise BoshError(Condition.BAD_REQUEST, exc.detail) from None


def _split(tag: str) -> tuple[str, str]:
    return xmlsafe.split(tag)


# ---------------------------------------------------------------------------------------
# Rendering

_BODY_OPEN = f"<body xmlns='{NS_HTTPBIND}'"
_STREAM_DECL = f" xmlns:stream='{NS_STREAM}'"
_XBOSH_DECL = f" xmlns:xmpp='{NS_XBOSH}'"
EMPTY_BODY = (_BODY_OPEN + "/>").encode()


def render_body(attrs: Mapping[str, str] | None = None, payload: Sequence[bytes] = ()) -> bytes:
    """One response ``<body/>``. Attribute names may use the ``xmpp:`` prefix.

    A body with payload declares ``xmlns:stream`` on its own start tag, since payload may
    contain ``stream:features`` or ``stream:error`` (XEP-0206 §2, checklist #16).
    """
    if not attrs and not payload:
        return EMPTY_BODY
    parts = [_BODY_OPEN]
    if attrs:
        if any(k.startswith("xmpp:") for k in attrs):
            parts.append(_XBOSH_DECL)
        for key, value in attrs.items():
            parts.append(f" {key}='{escape_attr(value)}'")
    if not payload:
        parts.append("/>")
        return "".join(parts).encode()
    parts.append(_STREAM_DECL)
    parts.append(">")
    head = "".join(parts).encode()
    return b"".join((head, *payload, b"</body>"))


def render_terminate(condition: Condition | None = None, payload: Sequence[bytes] = (),
                     extra: Mapping[str, str] | None = None) -> bytes:
    """The one place terminate bodies are built (XEP-0124 §13, §17.2)."""
    attrs = {"type": "terminate"}
    if condition is not None:
        attrs["condition"] = condition.value
    if extra:
        attrs.update(extra)
    return render_body(attrs, payload)


def render_error() -> bytes:
    """The recoverable binding error of XEP-0124 §17.3."""
    return render_body({"type": "error"})


_STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
_BOUNCE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def bounce(stanza: bytes) -> ClientElement | None:
    """The error reply for a stanza the client will never receive (XEP-0206 §7).

    A message gets recipient-unavailable, an iq get/set service-unavailable; presence and
    stanzas that are already errors get nothing (RFC 6120 §8.3.1).
    """
    try:
        elem = etree.fromstring(stanza, _BOUNCE_PARSER)
    except etree.XMLSyntaxError:
        return None  # e.g. a stream:-prefixed element: not a stanza
    ns, name = _split(elem.tag)
    kind = elem.get("type")
    if ns != NS_CLIENT or kind == "error" or elem.get("from") is None:
        return None
    if name == "message":
        error_type, condition = "wait", "recipient-unavailable"
    elif name == "iq" and kind in ("get", "set"):
        error_type, condition = "cancel", "service-unavailable"
    else:
        return None
    reply = etree.Element(f"{{{NS_CLIENT}}}{name}", nsmap={None: NS_CLIENT})
    reply.set("to", elem.get("from", ""))
    reply.set("type", "error")
    if elem.get("id") is not None:
        reply.set("id", elem.get("id", ""))
    error = etree.SubElement(reply, f"{{{NS_CLIENT}}}error")
    error.set("type", error_type)
    etree.SubElement(error, f"{{{_STANZAS_NS}}}{condition}", nsmap={None: _STANZAS_NS})
    return ClientElement(NS_CLIENT, name, etree.tostring(reply, encoding="utf-8"))
