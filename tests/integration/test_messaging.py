"""Messages both ways between a BOSH user and a user on a plain XMPP TCP client (slixmpp).

XEP-0124 §8 (#45, #46, #48, #53, #54) and XEP-0206 §2 (#17: stanzas come back in jabber:client).
"""

from __future__ import annotations

import secrets

import pytest

from tests.integration._xmpp_steps import message_each_way
from tests.support.prosody import USERS
from tests.support.boshclient import BoshClient, is_message

# every_upstream: once against Prosody, once against ejabberd (UPSTREAMS, tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.every_upstream]


async def test_message_each_way_between_bosh_and_tcp_clients(endpoint, bosh_client, xmpp_peer):
    """A BOSH user (alice) and a TCP user (bob) exchange messages through the CM and the server,
    including text that needs XML escaping (#11)."""
    c: BoshClient = await bosh_client(endpoint.url)
    await c.create(endpoint.domain, wait=5)
    alice = await c.login("alice", USERS["alice"], mechanism="SCRAM-SHA-1",
                          resource=f"web-{secrets.token_hex(3)}")
    await c.send_presence()
    bob = await xmpp_peer(endpoint.server, "bob", resource=f"tcp-{secrets.token_hex(3)}")
    await message_each_way(c, alice, bob, f"hello alice <3 & more {secrets.token_hex(4)}",
                           f"hi bob ]]> {secrets.token_hex(4)}")


async def test_burst_of_messages_arrives_complete_and_in_order(endpoint, bosh_client, xmpp_peer):
    """XEP-0124 §8 + §2 requirement 11 (#52, #54): data that arrives while no request is held
    is queued and delivered, in order, without loss."""
    c: BoshClient = await bosh_client(endpoint.url)
    await c.create(endpoint.domain, wait=5)
    carol = await c.login("carol", USERS["carol"], resource=f"web-{secrets.token_hex(3)}")
    await c.send_presence()
    bob = await xmpp_peer(endpoint.server, "bob", resource=f"tcp-{secrets.token_hex(3)}")
    tag = secrets.token_hex(3)
    bodies = [f"{tag} #{i}" for i in range(30)]
    for b in bodies:
        bob.send_chat(carol, b)
    got = []
    for b in bodies:
        el = await c.wait_for(lambda e: is_message()(e) and (e.findtext("{jabber:client}body") or "")
                              .startswith(tag), timeout=10)
        got.append(el.findtext("{jabber:client}body"))
    assert got == bodies
