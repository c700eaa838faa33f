"""Stream errors over WebSocket (RFC 7395 §3.6, RFC 6120 §4.9) and the upstream going away.

Each error is ``<stream:error><COND/></stream:error>``, then ``<close/>``, then the WebSocket
closes; an error before the stream was opened is preceded by an ``<open/>`` (RFC 7395 §3.5,
RFC 6120 §4.9.1.1). Runs against bosh-cm and (BOSH_ENDPOINTS=prosody) Prosody's own
mod_websocket where Prosody answers the same way.
"""

from __future__ import annotations

import secrets
import asyncio
import time

import pytest

from tests.support.prosody import USERS
from tests.support.wsclient import (CLOSE, CLOSE_TEXT, FEATURES, OPEN, STREAM_ERROR, WsClient,
                                    is_presence, stream_error_condition)

pytestmark = pytest.mark.integration

MESSAGE = "<message xmlns='jabber:client' to='bob@localhost' type='chat'><body>x</body></message>"


async def expect_stream_error(c: WsClient, condition: str, timeout: float = 5.0) -> None:
    """<stream:error> with ``condition``, then <close/>, then the socket closes; nothing else
    after the error; every message from the server parses alone."""
    err = await c.wait_for(lambda e: e.tag == STREAM_ERROR, timeout, allow_closed=True)
    assert stream_error_condition(err) == condition, [f.data[:300] for f in c.frames]
    await c.wait_for(lambda e: e.tag == CLOSE, timeout, allow_closed=True)
    await c.wait_closed(timeout)
    tags = [f.tag for f in c.frames]
    assert tags[-2:] == [STREAM_ERROR, CLOSE], [f.data[:200] for f in c.frames]
    assert all(f.kind == "text" and f.element is not None for f in c.frames), \
        [(f.kind, f.error, f.data[:200]) for f in c.frames]


def assert_bosh_cm_close_text(c: WsClient, endpoint) -> None:  # type: ignore[no-untyped-def]
    if not endpoint.is_reference:
        assert c.texts()[-1] == CLOSE_TEXT


@pytest.mark.parametrize("first", [
    pytest.param("<open xmlns='urn:example:wrong' to='DOMAIN' version='1.0'/>", id="open-wrong-ns"),
    pytest.param("<message xmlns='jabber:client'/>", id="stanza-first"),
])
async def test_invalid_namespace_before_the_stream(ws_endpoint, ws_client, first):
    """The first message is not an <open/> in the framing namespace: invalid-namespace,
    preceded by the server's <open/> (no stream was open yet)."""
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.send_raw(first.replace("DOMAIN", ws_endpoint.domain))
    await expect_stream_error(c, "invalid-namespace")
    assert c.frames[0].tag == OPEN, c.frames[0].data
    assert FEATURES not in [f.tag for f in c.frames]
    assert_bosh_cm_close_text(c, ws_endpoint)


async def test_host_unknown(ws_endpoint, ws_client):
    """<open to=...> for a domain not served: <open/>, host-unknown, <close/>."""
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.send_open(to=f"nowhere-{secrets.token_hex(3)}.invalid")
    await expect_stream_error(c, "host-unknown")
    assert c.frames[0].tag == OPEN
    assert FEATURES not in [f.tag for f in c.frames]
    assert_bosh_cm_close_text(c, ws_endpoint)


async def test_not_well_formed(ws_endpoint, ws_client):
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.open(ws_endpoint.domain)
    await c.send_raw("<message xmlns='jabber:client'><body>x</bogus></message>")
    await expect_stream_error(c, "not-well-formed")
    assert_bosh_cm_close_text(c, ws_endpoint)


@pytest.mark.parametrize("text", [
    pytest.param("<message xmlns='jabber:client'><!-- a comment --><body>x</body></message>", id="comment"),
    pytest.param("<?pi data?><message xmlns='jabber:client'><body>x</body></message>", id="pi"),
    pytest.param("<!DOCTYPE message><message xmlns='jabber:client'><body>x</body></message>", id="doctype"),
])
async def test_restricted_xml(ws_endpoint, ws_client, text):
    """RFC 6120 §11.1: comments, processing instructions and DTDs are restricted-xml
    (Prosody's parser reports them as not-well-formed)."""
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.open(ws_endpoint.domain)
    await c.send_raw(text)
    await expect_stream_error(c, "not-well-formed" if ws_endpoint.is_reference else "restricted-xml")
    assert_bosh_cm_close_text(c, ws_endpoint)


async def test_oversize_message_is_policy_violation(ws_endpoint, ws_client):
    """A message over [bosh] max_stanza_bytes (default 262,144, Prosody's c2s limit too) is
    the policy-violation stream error, not a bare close (a resuming client would resend it)."""
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.open(ws_endpoint.domain)
    await c.send_raw(f"<message xmlns='jabber:client' to='bob@{ws_endpoint.domain}'><body>"
                     + "x" * 300_000 + "</body></message>")
    await expect_stream_error(c, "policy-violation")
    assert_bosh_cm_close_text(c, ws_endpoint)


async def test_binary_frame_is_unsupported_encoding(ws_endpoint, ws_client):
    """RFC 7395 §3.2 text frames only: a binary frame gets unsupported-encoding."""
    if ws_endpoint.is_reference:
        pytest.skip("Prosody answers a binary frame with WebSocket close 1003, no stream error")
    c: WsClient = await ws_client(ws_endpoint.url)
    await c.open(ws_endpoint.domain)
    await c.send_binary(MESSAGE.encode())
    await expect_stream_error(c, "unsupported-encoding")
    assert_bosh_cm_close_text(c, ws_endpoint)


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_upstream_stopped_mid_session(prosody_factory, boshcm_factory, ws_client, how):
    """The upstream server goes away mid-session. SIGKILL: no stream error (there is none to
    pass on; remote-connection-failed is not a stream error condition), just <close/> and
    the socket closes within a few seconds. SIGTERM: Prosody's own <stream:error>
    (system-shutdown) is passed through, then <close/>."""
    server = prosody_factory()
    cm = boshcm_factory(server)
    c: WsClient = await ws_client(cm.ws_url)
    await c.open(server.domain)
    jid = await c.login("alice", USERS["alice"], resource="doomed")
    await c.send_presence()
    await c.wait_for(is_presence(from_=jid))

    # In a thread: stop() waits for Prosody to exit, which must not block our event loop.
    await asyncio.to_thread(server.kill if how == "kill" else server.stop)
    gone = time.monotonic()  # the server is gone now; bosh-cm must tell the client at once
    await c.wait_for(lambda e: e.tag == CLOSE, timeout=8, allow_closed=True)
    await c.wait_closed(5)
    assert time.monotonic() - gone < 5
    assert c.texts()[-1] == CLOSE_TEXT
    if how == "kill":
        assert c.stream_error is None, c.frames[-2].data
    else:
        assert c.stream_error_condition == "system-shutdown", [f.data[:200] for f in c.frames[-3:]]
        assert [f.tag for f in c.frames[-2:]] == [STREAM_ERROR, CLOSE]
    assert "Traceback" not in cm.log_path.read_text(errors="replace")
