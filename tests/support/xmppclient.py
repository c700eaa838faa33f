"""A plain XMPP-over-TCP peer (slixmpp) for the tests: re-exported from
:mod:`scripts.lib.xmppclient`, the one copy (design.md §8 rule 9)."""

from __future__ import annotations

from scripts.lib.xmppclient import XmppPeer

__all__ = ["XmppPeer"]
