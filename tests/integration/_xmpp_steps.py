"""XMPP steps the BOSH and the WebSocket integration tests share.

Both test clients (:class:`tests.support.boshclient.BoshClient`,
:class:`tests.support.wsclient.WsClient`) offer the same XMPP-level calls (``bind``,
``send_presence``, ``send_message``, ``wait_for``), so a step is written once for both
transports. Imported as ``tests.integration._xmpp_steps``.
"""

from __future__ import annotations

import secrets
from typing import Any

from lxml import etree

from tests.support.boshclient import is_message, is_presence


def resource(tag: str) -> str:
    """A fresh resource name: ``<tag>-<8 hex digits>``."""
    return f"{tag}-{secrets.token_hex(4)}"


async def bind_and_see_own_presence(c: Any, user: str, domain: str, tag: str) -> str:
    """Bind a fresh resource (bind returns our full JID), send initial presence and see it
    come back to us from the server (RFC 6121 §4.2.2); returns the full JID."""
    res = resource(tag)
    jid: str = await c.bind(res)
    assert jid == f"{user}@{domain}/{res}"
    await c.send_presence()
    pres = await c.wait_for(is_presence(from_=jid), timeout=10)
    assert pres.get("from") == jid
    return jid


async def message_each_way(c: Any, me: str, peer: Any, to_me: str, to_peer: str) -> etree._Element:
    """The TCP ``peer`` sends ``to_me`` to ``me`` (the client ``c``): it arrives from the peer's
    full JID to ours; then ``c`` sends ``to_peer`` back and the peer gets it from ``me``.
    Returns the message ``c`` received."""
    peer.send_chat(me, to_me)
    msg: etree._Element = await c.wait_for(is_message(body=to_me), timeout=10)
    assert msg.get("from") == str(peer.boundjid)
    assert msg.get("to") == me
    await c.send_message(str(peer.boundjid), to_peer)
    got = await peer.next_message(timeout=10, body=to_peer)
    assert str(got["from"]) == me
    return msg
