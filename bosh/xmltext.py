"""The one XML text escaper (sans-IO, no lxml): character data and attribute values.

Used wherever bytes are written by hand: BOSH bodies (``bosh.wire``), WebSocket framing
(``bosh.ws_session``), discovery documents, and the upstream bridge's serializer and stream
header (``xmpp_bridge``; this module is one of the few it may import from ``bosh``).
"""

from __future__ import annotations

__all__ = ["escape_text", "escape_attr"]

_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;",
                       "\r": "&#13;", "\n": "&#10;", "\t": "&#9;"})


def escape_text(text: str) -> str:
    """Escape character data. ``>`` too, so that ``]]>`` never appears (XML 1.0 §2.4); ``\\r``
    as a reference, so that it survives the parser's line-end normalization (§2.11)."""
    return text.translate(_TEXT)


def escape_attr(value: str) -> str:
    """Escape a value for a single- or double-quoted attribute. Whitespace other than the
    space is written as references: attribute-value normalization (XML 1.0 §3.3.3) would turn
    literal ones into spaces."""
    return value.translate(_ATTR)
