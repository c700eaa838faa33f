"""XMPP over WebSocket (RFC 7395) through bosh-cm: handshake, stream set-up, SASL, restart,
bind, messages both ways with a plain TCP user, and the closing handshake.

Runs against bosh-cm and (BOSH_ENDPOINTS=prosody) Prosody's own mod_websocket, the
reference; where Prosody differs from the bosh-cm contract (/tmp/ws-contract.md) the
reference run is skipped with the reason.
"""

from __future__ import annotations

import secrets

import pytest

from tests.integration._xmpp_steps import bind_and_see_own_presence, message_each_way, resource
from tests.support.prosody import USERS
from tests.support.wsclient import (CLOSE, CLOSE_TEXT, FEATURES, NS_BIND, NS_CLIENT, NS_FRAMING,
                                    NS_SASL, NS_SM, NS_TLS, OPEN, WsClient)

# every_upstream: once against Prosody, once against ejabberd (UPSTREAMS, tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.every_upstream]

ALLOWED_ROOT_NS = (NS_FRAMING, NS_CLIENT, "http://etherx.jabber.org/streams", NS_SASL, NS_SM)


def assert_clean_framing(c: WsClient) -> None:
    """RFC 7395 §3.3.3, §3.8: text frames only; every message exactly one complete element
    with its namespaces declared; never a whitespace-only message."""
    assert c.frames, "nothing received"
    for f in c.frames:
        assert f.kind == "text", f"binary frame from the server: {f.data[:100]!r}"
        assert f.data.strip(), f"whitespace-only message {f.data!r}"
        assert f.element is not None, f"message is not one well-formed element ({f.error}): {f.data[:200]!r}"
        ns = f.element.tag[1:].split("}")[0] if f.element.tag.startswith("{") else ""
        assert ns in ALLOWED_ROOT_NS, f"root element in namespace {ns!r}: {f.data[:200]!r}"


async def test_open_features_without_starttls_and_subprotocol_echoed(ws_endpoint, ws_client):
    """RFC 7395 §3.1 (subprotocol 'xmpp' echoed), §3.4 (<open/> answered by <open/> in the
    framing namespace, version 1.0, from = the domain, a stream id), §3.9 (no STARTTLS)."""
    c: WsClient = await ws_client(ws_endpoint.url)
    assert c.protocol == "xmpp"
    features = await c.open(ws_endpoint.domain)
    assert c.stream_open is not None and c.stream_open.tag == OPEN
    assert c.stream_open.get("version") == "1.0"
    assert c.stream_open.get("from") == ws_endpoint.domain
    assert c.stream_open.get("id")
    assert features.tag == FEATURES
    assert features.find(f"{{{NS_TLS}}}starttls") is None, "STARTTLS offered over WebSocket (§3.9)"
    assert {"PLAIN", "SCRAM-SHA-1"} <= set(c.mechanisms())
    # the first two messages are the <open/> and the features, nothing before
    assert [f.tag for f in c.frames[:2]] == [OPEN, FEATURES]
    assert_clean_framing(c)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-1"])
async def test_sasl_restart_bind_presence(ws_endpoint, ws_client, mechanism):
    """SASL (PLAIN / SCRAM-SHA-1, server signature verified) passes through; the restart is a
    new <open/> (§3.7) answered by a new <open/> with a new id and features offering bind (no
    mechanisms); bind returns our JID; our presence comes back."""
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.open(ws_endpoint.domain)
    first_id = c.stream_open.get("id") if c.stream_open is not None else None
    features = await c.authenticate("alice", USERS["alice"], mechanism)
    assert c.stream_open is not None and c.stream_open.get("id") != first_id, "restart kept the stream id"
    assert features.find(f"{{{NS_BIND}}}bind") is not None, "no bind feature after the restart"
    assert not c.mechanisms(), "SASL offered again after the restart"
    assert features.find(f"{{{NS_TLS}}}starttls") is None
    await bind_and_see_own_presence(c, "alice", ws_endpoint.domain, "ws-login")
    assert_clean_framing(c)


async def test_wrong_password_is_a_sasl_failure_and_the_stream_lives(ws_endpoint, ws_client):
    """A SASL <failure/> is an ordinary element: the WebSocket stays open and a second
    attempt succeeds."""
    from tests.support.wsclient import SaslFailure

    c: WsClient = await ws_client(ws_endpoint.url)
    await c.open(ws_endpoint.domain)
    with pytest.raises(SaslFailure):
        await c.auth_plain("alice", "definitely-not-the-password")
    assert not c.closed.is_set() and c.stream_error is None
    await c.auth_plain("alice", USERS["alice"])


async def test_message_each_way_with_a_tcp_user(ws_endpoint, ws_client, xmpp_peer):
    """A WebSocket user (alice) and a TCP user (bob) exchange messages (text that needs
    escaping included); each stanza arrives as one text message in jabber:client; no
    whitespace-only message at any point (§3.8)."""
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.open(ws_endpoint.domain)
    alice = await c.login("alice", USERS["alice"], "SCRAM-SHA-1", resource=resource("ws-msg"))
    await c.send_presence()
    bob = await xmpp_peer(ws_endpoint.server, "bob", resource=resource("tcp"))

    msg = await message_each_way(c, alice, bob, f"hello alice <3 & ]]> {secrets.token_hex(4)}",
                                 f"hi bob </close> {secrets.token_hex(4)}")
    assert msg.tag == f"{{{NS_CLIENT}}}message"

    # a burst comes complete and in order, one stanza per message
    tag = secrets.token_hex(3)
    bodies = [f"{tag} #{i}" for i in range(20)]
    for b in bodies:
        bob.send_chat(alice, b)
    await c.wait_until(lambda: sum(1 for b in c.message_bodies() if b.startswith(tag)) >= len(bodies),
                       timeout=10, what="the burst")
    assert [b for b in c.message_bodies() if b.startswith(tag)] == bodies
    assert_clean_framing(c)


async def test_client_close_is_answered_by_close_then_the_socket_closes(ws_endpoint, ws_client):
    """RFC 7395 §3.6: the client's <close/> is answered by the server's <close/>, then the
    server closes the WebSocket; nothing comes after the <close/>."""
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.open(ws_endpoint.domain)
    await c.login("bob", USERS["bob"], resource=resource("ws-close"))
    el = await c.close(timeout=5)
    assert el.tag == CLOSE
    assert c.closed.is_set()
    assert c.frames[-1].tag == CLOSE, "something came after the <close/>"
    assert c.stream_error is None
    assert_clean_framing(c)


async def test_close_text_is_exactly_what_strophe_recognises(ws_endpoint, ws_client):
    """Contract: the server's close is byte for byte
    ``<close xmlns="urn:ietf:params:xml:ns:xmpp-framing" />`` (Strophe.js compares the string),
    then a WebSocket close frame (code 1000)."""
    if ws_endpoint.is_reference:
        pytest.skip("Prosody writes <close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>; "
                    "the exact text is bosh-cm's contract")
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.open(ws_endpoint.domain)
    await c.close(timeout=5)
    assert c.texts()[-1] == CLOSE_TEXT
    assert c.close_code == 1000, c.close_code
