"""Upstream faults (issue 4, "Faults"; XEP-0124 §17.2 remote-connection-failed).

* One of two upstream servers dies mid-session: every held request of its sessions ends with
  remote-connection-failed within seconds; the session on the other server keeps working.
* Upstream refusing or silent at creation: remote-connection-failed quickly (connect_timeout),
  no hanging request.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.boshclient import BoshClient, is_message, is_presence
from tests.support.prosody import USERS

# every_upstream: once against Prosody, once against ejabberd (UPSTREAMS, tests/conftest.py)
pytestmark = [pytest.mark.integration, pytest.mark.every_upstream]


async def test_killed_upstream_ends_its_sessions_and_spares_the_others(
        xmpp_server_factory, xmpp_server, boshcm_factory, bosh_client, xmpp_peer, tmp_path) -> None:
    doomed_server = xmpp_server_factory()
    other_server = xmpp_server  # the session's server: it survives this test
    # Both test servers are 'localhost' with their own self-signed certificate: trust both.
    ca = tmp_path / "both.pem"
    ca.write_bytes(doomed_server.cert_path.read_bytes() + other_server.cert_path.read_bytes())
    route = f"xmpp:127.0.0.1:{other_server.c2s_port}"
    cm = boshcm_factory(doomed_server, upstream={"ca_file": str(ca), "routes": [route]},
                        bosh={"max_wait": 10})

    doomed: list[BoshClient] = []
    for i, user in enumerate(("alice", "bob", "carol")):
        c: BoshClient = await bosh_client(cm.url)
        await c.create(doomed_server.domain, wait=10)
        jid = await c.login(user, USERS[user], resource=f"doomed{i}")
        await c.send_presence()
        await c.wait_for(is_presence(from_=jid))
        doomed.append(c)
    survivor: BoshClient = await bosh_client(cm.url)
    await survivor.create(other_server.domain, wait=10, route=route)
    survivor_jid = await survivor.login("alice", USERS["alice"], resource="survivor")
    await survivor.send_presence()
    await survivor.wait_for(is_presence(from_=survivor_jid))
    for c in doomed:
        if not c._inflight:
            await c.post()  # a request held at the CM when the server dies

    doomed_server.kill()
    started = time.monotonic()
    results = await asyncio.gather(*(c.wait_terminate(timeout=8) for c in doomed))
    elapsed = time.monotonic() - started
    assert all(r.condition == "remote-connection-failed" for r in results), [r.raw for r in results]
    assert all(r.status == 200 for r in results)
    assert elapsed < 5, elapsed

    # The session on the other server did not notice.
    peer = await xmpp_peer(other_server, "bob")
    peer.send_chat(survivor_jid, "still here")
    msg = await survivor.wait_for(is_message(body="still here"), timeout=10)
    assert msg is not None
    await survivor.send_message(f"bob@{other_server.domain}/tcp", "and back")
    await peer.next_message(timeout=10, body="and back")

    # A new session for the dead server fails fast instead of hanging.
    late: BoshClient = await bosh_client(cm.url)
    t0 = time.monotonic()
    r = await late.create(doomed_server.domain, wait=10)
    assert r.terminated and r.condition == "remote-connection-failed", r.raw
    assert time.monotonic() - t0 < 5


async def test_refusing_or_silent_upstream_at_creation_fails_fast(boshcm_factory, bosh_client) -> None:
    from tests.support.prosody import free_port

    closed_port = free_port()  # nothing listens here: connection refused
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never speaks
    silent_port = silent.sockets[0].getsockname()[1]
    try:
        cm = boshcm_factory(None, upstream={
            "domains": ["localhost"], "host": "127.0.0.1", "port": closed_port, "tls": "none",
            "connect_timeout": 1.0, "routes": [f"xmpp:127.0.0.1:{silent_port}"]})
        refused: BoshClient = await bosh_client(cm.url)
        t0 = time.monotonic()
        r = await refused.create("localhost", wait=10)
        assert r.terminated and r.condition == "remote-connection-failed", r.raw
        assert time.monotonic() - t0 < 2

        quiet: BoshClient = await bosh_client(cm.url)
        t0 = time.monotonic()
        r = await quiet.create("localhost", wait=10, route=f"xmpp:127.0.0.1:{silent_port}")
        took = time.monotonic() - t0
        assert r.terminated and r.condition == "remote-connection-failed", r.raw
        assert 0.9 <= took < 4, took  # connect_timeout = 1 s, not 'wait' or forever
    finally:
        silent.close()
