"""XEP-0156 discovery documents: ``/.well-known/host-meta`` (XRD) and ``host-meta.json`` (JRD).

Pure renderers; ``bosh.web`` serves them. Each lists the public BOSH and WebSocket URLs of
``[discovery]`` (an empty one is left out) under the link relations of XEP-0156 §3:
``urn:xmpp:alt-connections:xbosh`` and ``urn:xmpp:alt-connections:websocket``.
"""

from __future__ import annotations

import json

from bosh.xmltext import escape_attr

__all__ = ["REL_BOSH", "REL_WEBSOCKET", "XRD_TYPE", "JRD_TYPE", "links", "render_xrd", "render_jrd"]

REL_BOSH = "urn:xmpp:alt-connections:xbosh"
REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"
XRD_TYPE = "application/xrd+xml"   # RFC 6415 §3
JRD_TYPE = "application/json"      # RFC 6415 Appendix A (JRD)
_NS_XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"


def links(bosh_url: str, websocket_url: str) -> list[tuple[str, str]]:
    return [(rel, url) for rel, url in ((REL_BOSH, bosh_url), (REL_WEBSOCKET, websocket_url)) if url]


def render_xrd(bosh_url: str, websocket_url: str) -> bytes:
    body = "".join(f"\n  <Link rel='{rel}' href='{escape_attr(url)}'/>"
                   for rel, url in links(bosh_url, websocket_url))
    return (f"<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='{_NS_XRD}'>{body}\n</XRD>\n"
            .encode())


def render_jrd(bosh_url: str, websocket_url: str) -> bytes:
    doc = {"links": [{"rel": rel, "href": url} for rel, url in links(bosh_url, websocket_url)]}
    return (json.dumps(doc, indent=2) + "\n").encode()
