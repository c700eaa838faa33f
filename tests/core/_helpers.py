"""Helpers for the synchronous core tests: build request bodies, drive a Session, read events.

Imported as ``tests.core._helpers`` (the repository root is on sys.path under ``python -m pytest``).
"""

from __future__ import annotations

from typing import Hashable, Iterable, Sequence

from lxml import etree

from bosh import wire
from bosh.ports import NS_HTTPBIND, NS_STREAM, NS_XBOSH, StreamInfo
from bosh.session import (
    CloseUpstream, Event, Limits, OpenUpstream, Respond, RestartUpstream, SendUpstream, Session,
    SessionEnded, negotiate,
)

NS = NS_HTTPBIND
XB = NS_XBOSH
ST = NS_STREAM
DOMAINS = frozenset({"example.com"})
LIMITS = Limits(max_wait=10, max_inactivity=4, max_hold=1, polling=2)
LIMITS_H2 = Limits(max_wait=10, max_inactivity=4, max_hold=2, polling=2)
FEATURES = (b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>")
INFO = StreamInfo(from_="example.com", id="s1", version="1.0")
MSG_A = b"<message xmlns='jabber:client' to='a@example.com'><body>A</body></message>"
MSG_B = b"<message xmlns='jabber:client' to='a@example.com'><body>B</body></message>"
RID0 = 1000


def _attr(key: str, value: str) -> str:
    return f"{key}='{value}'"


def body_bytes(attrs: dict[str, str] | None = None, payload: str = "") -> bytes:
    """A request ``<body/>`` in NS with the xmpp prefix declared."""
    parts = [f"<body xmlns='{NS}' xmlns:xmpp='{XB}'"]
    for key, value in (attrs or {}).items():
        parts.append(" " + _attr(key, value))
    if payload:
        return ("".join(parts) + ">" + payload + "</body>").encode()
    return ("".join(parts) + "/>").encode()


def body(attrs: dict[str, str] | None = None, payload: str = "") -> wire.Body:
    return wire.parse_body(body_bytes(attrs, payload))


def create_attrs(**over: str | None) -> dict[str, str]:
    """The CREATE(...) of the checklist's conventions (§0.1); ``None`` removes an attribute."""
    attrs = {"rid": str(RID0), "to": "example.com", "xml:lang": "en", "ver": "1.11",
             "wait": "5", "hold": "1", "xmpp:version": "1.0"}
    for key, value in over.items():
        key = key.replace("xml_", "xml:").replace("xmpp_", "xmpp:")
        if value is None:
            attrs.pop(key, None)
        else:
            attrs[key] = value
    return attrs


def new_session(now: float = 0.0, limits: Limits = LIMITS, ready: bool = True,
                request: Hashable = "create", **over: str | None) -> tuple[Session, list[Event]]:
    """A session created at ``now``; when ``ready`` the upstream became ready at ``now`` too."""
    terms = negotiate(body(create_attrs(**over)), limits, DOMAINS)
    s = Session("SID", terms, request, now)
    events = s.initial_events()
    if ready:
        events += s.upstream_ready(INFO, FEATURES, now)
    return s, events


def req(sid: str, rid: int, payload: str = "", **attrs: str) -> wire.Body:
    a = {"sid": sid, "rid": str(rid)}
    for key, value in attrs.items():
        a[key.replace("xml_", "xml:").replace("xmpp_", "xmpp:")] = value
    return body(a, payload)


def responses(events: Iterable[Event]) -> list[Respond]:
    return [e for e in events if isinstance(e, Respond)]


def answer_for(events: Iterable[Event], request: Hashable) -> Respond:
    found = [e for e in events if isinstance(e, Respond) and e.request == request]
    assert len(found) == 1, f"expected one answer for {request!r}, got {found!r}"
    return found[0]


def sent(events: Iterable[Event]) -> list[bytes]:
    out: list[bytes] = []
    for e in events:
        if isinstance(e, SendUpstream):
            out.extend(el.data for el in e.elements)
    return out


def kinds(events: Sequence[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def parse(data: bytes) -> etree._Element:
    """Strict, namespace-aware, non-recovering parse (checklist #10)."""
    parser = etree.XMLParser(recover=False, resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.fromstring(data, parser)
    assert root.tag == f"{{{NS}}}body"
    return root


def is_empty_body(data: bytes) -> bool:
    root = parse(data)
    return len(root) == 0 and root.get("type") is None and root.get("condition") is None


def is_terminate(data: bytes, condition: str | None) -> bool:
    root = parse(data)
    return root.get("type") == "terminate" and root.get("condition") == condition


__all__ = [
    "CloseUpstream", "OpenUpstream", "RestartUpstream", "SendUpstream", "SessionEnded", "Respond",
]
