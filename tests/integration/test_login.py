"""End-to-end login through the CM: SASL passes through untouched, restart, bind, presence.

Item numbers refer to docs/spec-checklist.md; XEP-0206 §5 is "authentication and resource
binding". Runs against bosh-cm and (BOSH_ENDPOINTS=prosody) Prosody's own mod_bosh.
"""

from __future__ import annotations

import pytest

from tests.integration._xmpp_steps import bind_and_see_own_presence, resource
from tests.support.prosody import USERS
from tests.support.boshclient import NS_BIND, NS_CLIENT, BoshClient, SaslFailure

# every_upstream: once against Prosody, once against ejabberd (UPSTREAMS, tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.every_upstream]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-1"])
async def test_sasl_login_restart_bind_presence(endpoint, bosh_client, mechanism):
    """XEP-0206 §5 (#118, #119, #120, #123): SASL (PLAIN / SCRAM-SHA-1 with the server signature
    verified) passes through; xmpp:restart='true' yields fresh features offering bind; bind
    returns our full JID; initial presence comes back to us from the server."""
    c: BoshClient = await bosh_client(endpoint.url)
    await c.create(endpoint.domain, wait=5)
    if mechanism == "PLAIN":
        await c.auth_plain("alice", USERS["alice"])
    else:
        await c.auth_scram_sha1("alice", USERS["alice"])
    features = await c.restart()
    assert features.find(f"{{{NS_BIND}}}bind") is not None, "no bind feature after the restart"
    await bind_and_see_own_presence(c, "alice", endpoint.domain, "login")


async def test_wrong_password_is_a_sasl_failure_not_a_session_end(endpoint, bosh_client):
    """XEP-0206 §5 / XEP-0124 §17.4 (#101, #118): a SASL <failure/> is a payload; the BOSH
    session survives it and a second attempt can succeed."""
    c: BoshClient = await bosh_client(endpoint.url)
    await c.create(endpoint.domain, wait=5)
    with pytest.raises(SaslFailure):
        await c.auth_plain("alice", "definitely-not-the-password")
    assert c.terminated is None
    await c.auth_plain("alice", USERS["alice"])


async def test_roster_and_ping_round_trip_after_login(endpoint, bosh_client):
    """XEP-0124 §8 (#45, #48, #53): an iq goes up at once and its result comes back in a
    held response (roster get, XEP-0199 ping to the server)."""
    c: BoshClient = await bosh_client(endpoint.url)
    await c.create(endpoint.domain, wait=5)
    await c.login("bob", USERS["bob"], resource=resource("iq"))
    roster = await c.iq("<query xmlns='jabber:iq:roster'/>", "get")
    assert roster.get("type") == "result"
    pong = await c.iq("<ping xmlns='urn:xmpp:ping'/>", "get", to=endpoint.domain)
    assert pong.get("type") == "result"
    assert pong.tag == f"{{{NS_CLIENT}}}iq"
