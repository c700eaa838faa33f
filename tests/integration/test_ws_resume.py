"""XEP-0198 stream resumption through bosh-cm over WebSocket (issue 8, design §10).

All stream-management state lives in the client and the server; bosh-cm must pass the SM
elements through untouched, never inject or drop a stanza, and never send
``</stream:stream>`` upstream for a session whose server granted resumption when the client's
connection drops or bosh-cm stops or dies. Then the client can reconnect (through bosh-cm,
the same node or a restarted one), log in again, ``<resume previd h/>`` and get every
message exactly once: the server replays what our ``h`` did not acknowledge.

A TCP user (bob) sends numbered messages in three phases: a burst while alice is connected
(she drops her connection after the first few arrived, the rest are in flight), a burst
while she is away, and a burst after she resumed. Variants: (a) the WebSocket dropped
abruptly (TCP abort, no close frame), (b) bosh-cm SIGKILLed and started again on the same
port, (c) bosh-cm SIGTERMed: resumable sessions get close code 1012 and no ``<close/>``.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections import Counter

import pytest

from tests.support.prosody import USERS
from tests.support.wsclient import CLOSE, NS_SM, STREAM_ERROR, WsClient

pytestmark = pytest.mark.integration

BURST = 20


async def _login_with_sm(ws_client, url: str, domain: str, resource: str) -> tuple[WsClient, str]:  # type: ignore[no-untyped-def]
    c: WsClient = await ws_client(url)
    await c.open(domain)
    jid = await c.login("alice", USERS["alice"], "SCRAM-SHA-1", resource=resource)
    enabled = await c.enable(resume=True)
    assert enabled.get("resume") in ("true", "1"), enabled.attrib
    assert c.sm_id, "no SM id: cannot resume"
    return c, jid


def _mine(c: WsClient, tag: str) -> list[str]:
    return [b for b in c.message_bodies() if b.startswith(tag)]


async def _resume_and_check(ws_client, url: str, domain: str, old: WsClient, bob, jid: str,  # type: ignore[no-untyped-def]
                            tag: str, sent: list[str]) -> WsClient:
    """Reconnect, SASL + restart, <resume/>; a third burst live; every body exactly once."""
    previd, h = old.sm_id, old.h_in
    assert previd is not None
    new: WsClient = await ws_client(url)
    await new.open(domain)
    features = await new.authenticate("alice", USERS["alice"], "SCRAM-SHA-1")
    assert features.find(f"{{{NS_SM}}}sm") is not None, "no XEP-0198 feature after the restart"
    resumed = await new.resume(previd, h)
    assert resumed.tag == f"{{{NS_SM}}}resumed", resumed.attrib
    assert resumed.get("previd") == previd
    # the server handled exactly the stanzas we sent on the old stream: nothing injected, none lost
    assert int(resumed.get("h") or "-1") == old.h_out, (resumed.get("h"), old.h_out)

    live = [f"{tag} live #{i}" for i in range(5)]
    for b in live:
        bob.send_chat(jid, b)
    sent = sent + live
    end = f"{tag} end"
    bob.send_chat(jid, end)  # in order after everything else: once it is here, all is here
    await new.wait_until(lambda: end in new.message_bodies(), timeout=10, what="the last message")

    got = Counter(_mine(old, tag) + _mine(new, tag))
    dupes = {b: n for b, n in got.items() if n > 1}
    assert not dupes, f"delivered more than once: {dupes}"
    missing = [b for b in sent + [end] if b not in got]
    assert not missing, f"lost: {missing} (old h={h}, replayed {len(_mine(new, tag))})"
    assert set(got) == set(sent + [end])
    # and the resumed stream is an ordinary one: a message the other way
    reply = f"{tag} reply"
    await new.send_message(str(bob.boundjid), reply)
    await bob.next_message(timeout=10, body=reply)
    return new


async def _phase_one(c: WsClient, bob, jid: str, tag: str) -> list[str]:  # type: ignore[no-untyped-def]
    """One stanza up (the server counts it), then a burst down. The client stops reading
    after the first 3 messages of the burst: the rest stay unread (and unacknowledged) in
    the socket buffers and in bosh-cm when the connection goes."""
    up = f"{tag} up"
    await c.send_message(str(bob.boundjid), up)
    await bob.next_message(timeout=10, body=up)
    c.stall_when = lambda cl: len(_mine(cl, tag)) >= 3
    first = [f"{tag} a#{i:02d}" for i in range(BURST)]
    for b in first:
        bob.send_chat(jid, b)
    await asyncio.wait_for(c.stalled.wait(), 10)
    assert len(_mine(c, tag)) == 3
    return first


async def _phase_two(bob, jid: str, tag: str) -> list[str]:  # type: ignore[no-untyped-def]
    second = [f"{tag} b#{i:02d}" for i in range(BURST)]
    for b in second:
        bob.send_chat(jid, b)
    # a round trip on bob's own stream: once answered, Prosody has routed the whole burst
    # (into alice's stream-management queue, she is away)
    await bob.make_iq_get(queryxmlns="jabber:iq:version", ito=bob.boundjid.domain).send(timeout=10)
    return second


async def test_resume_after_the_socket_dropped(ws_endpoint, ws_client, xmpp_peer):
    """(a) The WebSocket is dropped mid-burst (TCP abort, no close frame). bosh-cm closes the
    upstream TCP without </stream:stream>, so Prosody keeps the session; the client
    reconnects through the same endpoint and resumes: every message exactly once."""
    tag = f"sm-a-{secrets.token_hex(3)}"
    c, jid = await _login_with_sm(ws_client, ws_endpoint.url, ws_endpoint.domain, f"ws-{tag}")
    bob = await xmpp_peer(ws_endpoint.prosody, "bob", resource=f"tcp-{tag}")
    first = await _phase_one(c, bob, jid, tag)
    c.abort(rst=True)
    second = await _phase_two(bob, jid, tag)
    assert c.close_element is None and c.stream_error is None
    await _resume_and_check(ws_client, ws_endpoint.url, ws_endpoint.domain, c, bob, jid, tag, first + second)


async def test_resume_after_bosh_cm_was_killed(prosody, boshcm_factory, ws_client, xmpp_peer):
    """(b) bosh-cm SIGKILLed mid-burst: the kernel closes its sockets (no close frame to the
    client, no </stream:stream> to the server). Started again on the same port, it carries
    the resumption of the session."""
    cm = boshcm_factory(prosody)
    tag = f"sm-b-{secrets.token_hex(3)}"
    c, jid = await _login_with_sm(ws_client, cm.ws_url, prosody.domain, f"ws-{tag}")
    bob = await xmpp_peer(prosody, "bob", resource=f"tcp-{tag}")
    first = await _phase_one(c, bob, jid, tag)
    cm.kill()
    c.unstall()  # reads (and counts) what reached the socket before the crash, then EOF
    await c.wait_closed(5)
    assert c.close_code is None, f"a close frame from a SIGKILLed process? {c.close_code}"
    assert c.close_element is None and c.stream_error is None
    second = await _phase_two(bob, jid, tag)
    await asyncio.to_thread(cm.start)
    await _resume_and_check(ws_client, cm.ws_url, prosody.domain, c, bob, jid, tag, first + second)


async def test_sigterm_closes_resumable_sessions_with_1012_then_resume(
        prosody, boshcm_factory, ws_client, xmpp_peer):
    """(c) bosh-cm SIGTERMed: a session whose server granted resumption gets WebSocket close
    code 1012 (service restart) and no <close/> or stream error, and its upstream stream is
    left resumable; a session without XEP-0198 gets system-shutdown + <close/>. After the
    restart the first one resumes with every message exactly once."""
    cm = boshcm_factory(prosody, http={"shutdown_grace": 3.0})
    tag = f"sm-c-{secrets.token_hex(3)}"
    c, jid = await _login_with_sm(ws_client, cm.ws_url, prosody.domain, f"ws-{tag}")
    plain: WsClient = await ws_client(cm.ws_url)
    await plain.open(prosody.domain)
    await plain.login("carol", USERS["carol"], resource=f"plain-{tag}")
    bob = await xmpp_peer(prosody, "bob", resource=f"tcp-{tag}")
    first = await _phase_one(c, bob, jid, tag)

    cm.send_signal(signal.SIGTERM)
    c.unstall()
    await c.wait_closed(5)
    assert c.close_code == 1012, (c.close_code, c.close_reason)
    assert CLOSE not in [f.tag for f in c.frames], "a resumable session got <close/>"
    assert STREAM_ERROR not in [f.tag for f in c.frames], c.texts()[-2:]
    await plain.wait_closed(5)
    assert plain.stream_error_condition == "system-shutdown", plain.texts()[-3:]
    assert [f.tag for f in plain.frames[-2:]] == [STREAM_ERROR, CLOSE]

    second = await _phase_two(bob, jid, tag)
    assert await asyncio.to_thread(cm.wait_exit, 10) == 0
    await asyncio.to_thread(cm.start)
    await _resume_and_check(ws_client, cm.ws_url, prosody.domain, c, bob, jid, tag, first + second)
