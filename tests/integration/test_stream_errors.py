"""Fatal upstream conditions reach the client as terminal bodies.

* XEP-0124 §17.2 remote-stream-error + XEP-0206 §6 (#95, #16): a <stream:error/> from the
  server ends the session with condition='remote-stream-error' and a full copy of the error.
* XEP-0124 §17.2 remote-connection-failed (#94): the server vanishes.
"""

from __future__ import annotations

import re
import secrets
import time

import pytest

from tests.support.prosody import USERS
from tests.support.boshclient import NS_STREAM, BoshClient, BoshTerminated, is_presence

# every_upstream: once against Prosody, once against ejabberd (UPSTREAMS, tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.every_upstream]

NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"


@pytest.mark.parametrize("second", ["bosh", "tcp"])
async def test_resource_conflict_ends_the_old_session_with_remote_stream_error(
        endpoint, bosh_client, xmpp_peer, second):
    """Same user and resource logged in elsewhere: the default conflict policy of Prosody
    (conflict_resolve = "kick_old") and of ejabberd (the new session replaces the old one) sends
    <stream:error><conflict/></stream:error> to the OLD stream, so the first BOSH session's held request ends with type='terminate'
    condition='remote-stream-error' carrying the <stream:error/> (xmlns:stream on <body>)."""
    resource = f"dup-{secrets.token_hex(4)}"
    first: BoshClient = await bosh_client(endpoint.url)
    await first.create(endpoint.domain, wait=10)
    jid = await first.login("alice", USERS["alice"], resource=resource)
    await first.send_presence()
    await first.wait_for(is_presence(from_=jid))
    await first.post()  # a request held at the CM when the error arrives

    if second == "bosh":
        other: BoshClient = await bosh_client(endpoint.url)
        await other.create(endpoint.domain, wait=5)
        assert await other.login("alice", USERS["alice"], resource=resource) == jid
    else:
        peer = await xmpp_peer(endpoint.server, "alice", resource=resource)
        assert str(peer.boundjid) == jid

    started = time.monotonic()
    r = await first.wait_terminate(timeout=10)
    assert time.monotonic() - started < 5
    assert r.status == 200
    assert r.condition == "remote-stream-error", r.raw
    err = r.body.find(f"{{{NS_STREAM}}}error")
    assert err is not None, r.raw
    assert err.find(f"{{{NS_STREAMS_ERR}}}conflict") is not None, r.raw
    start_tag = r.raw[: r.raw.index(b">") + 1]
    assert re.search(rb"""xmlns:stream=['"]http://etherx.jabber.org/streams['"]""", start_tag), start_tag
    # The session is gone (#88): its sid is unknown from now on.
    after = await first.post_raw(first.build(sid=first.sid, rid=first.rid + 1))
    assert after.terminated and after.condition in ("item-not-found", "remote-stream-error")


async def test_upstream_killed_ends_held_request_with_remote_connection_failed(
        xmpp_server_factory, boshcm_factory, bosh_client):
    """XEP-0124 §17.2 remote-connection-failed (#94): SIGKILL the upstream server mid-session;
    the held request ends with type='terminate' condition='remote-connection-failed' within a
    few seconds. While the server is down, a new session fails the same way; once it is back,
    sessions work again."""
    server = xmpp_server_factory()
    cm = boshcm_factory(server)
    c: BoshClient = await bosh_client(cm.url)
    await c.create(server.domain, wait=10)
    jid = await c.login("alice", USERS["alice"], resource="doomed")
    await c.send_presence()
    await c.wait_for(is_presence(from_=jid))
    await c.post()  # held

    server.kill()
    started = time.monotonic()
    r = await c.wait_terminate(timeout=8)
    assert time.monotonic() - started < 5
    assert r.status == 200
    assert r.condition == "remote-connection-failed", r.raw

    down: BoshClient = await bosh_client(cm.url)
    r2 = await down.create(server.domain, wait=5)
    assert r2.terminated and r2.condition == "remote-connection-failed", r2.raw

    server.start()
    again: BoshClient = await bosh_client(cm.url)
    await again.create(server.domain, wait=5)
    assert await again.login("alice", USERS["alice"], resource="back") == f"alice@{server.domain}/back"


async def test_wait_terminate_reports_terminated_session(endpoint, bosh_client):
    """XEP-0124 §13 (#87, #88): a client type='terminate' ends the session; later requests on
    that sid get item-not-found."""
    c: BoshClient = await bosh_client(endpoint.url)
    await c.create(endpoint.domain, wait=5)
    await c.login("bob", USERS["bob"], resource=f"t-{secrets.token_hex(3)}")
    r = await c.terminate("<presence xmlns='jabber:client' type='unavailable'/>")
    assert r is not None and r.status == 200
    after = await c.post_raw(c.build(sid=c.sid, rid=c.rid + 1))
    assert after.terminated and after.condition == "item-not-found", after.raw
    with pytest.raises(BoshTerminated):
        c.terminated = after
        await c.wait_for(lambda e: False, timeout=1)
