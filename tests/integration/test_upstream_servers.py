"""In front of any XMPP server (issue 12): what differs between servers, and the client's
address passed upstream.

* ``[upstream] proxy_protocol`` (HAProxy's PROXY protocol, v1 and v2): behind bosh-cm the
  server sees the client's address, not bosh-cm's. Tested against ejabberd's c2s listener
  with ``use_proxy_protocol: true``: clients from 127.0.0.2 (and one whose address comes
  from X-Forwarded-For through a trusted proxy) appear there with that address, over BOSH and
  WebSocket; without the option ejabberd sees 127.0.0.1.
* A client asking for ``xmpp:version='0.9'`` (XEP-0206 §3) gets its answer at once, whatever
  the server does with it: Prosody answers version 1.0 with features, ejabberd a pre-1.0
  stream without features (RFC 6120 §4.7.5), which with STARTTLS required ends the session
  with remote-connection-failed at once instead of after connect_timeout.
"""

from __future__ import annotations

import secrets
import time
from typing import AsyncIterator

import aiohttp
import pytest

from tests.support.boshclient import BoshClient
from tests.support.ejabberd import EjabberdServer
from tests.support.prosody import USERS
from tests.support.upstreams import upstream_names
from tests.support.wsclient import WsClient

pytestmark = pytest.mark.integration

CLIENT_ADDRESS = "127.0.0.2"  # another loopback address: not bosh-cm's 127.0.0.1


@pytest.fixture
async def from_second_address() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections come from 127.0.0.2."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(CLIENT_ADDRESS, 0)))
    yield http
    await http.close()


@pytest.fixture
def proxy_test_server(request: pytest.FixtureRequest) -> EjabberdServer:
    """The session's ejabberd: its second c2s listener expects the PROXY protocol header."""
    if "ejabberd" not in upstream_names():
        pytest.skip("UPSTREAMS leaves out ejabberd, the PROXY protocol test bed")
    server: EjabberdServer = request.getfixturevalue("ejabberd")
    return server


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_the_server_sees_the_client_address_with_proxy_protocol(
        proxy_test_server, boshcm_factory, bosh_client, from_second_address, version) -> None:
    """BOSH and WebSocket sessions from 127.0.0.2, and a BOSH session whose address comes
    from X-Forwarded-For (the HTTP peer is loopback, a trusted proxy by default): ejabberd
    reports each session with the client's address (ejabberdctl user_sessions_info)."""
    server = proxy_test_server
    cm = boshcm_factory(server, upstream={"port": server.proxy_c2s_port, "proxy_protocol": version})
    direct = f"bosh-{secrets.token_hex(3)}"
    c: BoshClient = await bosh_client(cm.url, http=from_second_address)
    await c.create(server.domain, wait=5)
    await c.login("alice", USERS["alice"], resource=direct)

    forwarded = f"xff-{secrets.token_hex(3)}"
    proxied: BoshClient = await bosh_client(cm.url, headers={"X-Forwarded-For": "198.51.100.4"})
    await proxied.create(server.domain, wait=5)
    await proxied.login("alice", USERS["alice"], resource=forwarded)

    ws_resource = f"ws-{secrets.token_hex(3)}"
    ws = WsClient(cm.ws_url, http=from_second_address)
    try:
        await ws.connect()
        await ws.open(server.domain)
        await ws.login("alice", USERS["alice"], "PLAIN", resource=ws_resource)
        addresses = server.session_addresses("alice")
    finally:
        await ws.aclose()
    assert addresses.get(direct) == CLIENT_ADDRESS, addresses
    assert addresses.get(forwarded) == "198.51.100.4", addresses
    assert addresses.get(ws_resource) == CLIENT_ADDRESS, addresses


async def test_without_proxy_protocol_the_server_sees_bosh_cm(
        proxy_test_server, request, bosh_client, from_second_address) -> None:
    """The default (proxy_protocol = "off"): the server sees bosh-cm's own address."""
    server = proxy_test_server
    cm = request.getfixturevalue("boshcm_ejabberd")
    resource = f"plain-{secrets.token_hex(3)}"
    c: BoshClient = await bosh_client(cm.url, http=from_second_address)
    await c.create(server.domain, wait=5)
    await c.login("bob", USERS["bob"], resource=resource)
    assert server.session_addresses("bob").get(resource) == "127.0.0.1"


@pytest.mark.every_upstream  # once against Prosody, once against ejabberd (tests/conftest.py)
async def test_client_asking_for_xmpp_0_9_is_answered_at_once(
        xmpp_server, boshcm_factory, bosh_client) -> None:
    """XEP-0206 §3 / RFC 6120 §4.7.5: with a connect_timeout of 30 s, the creation request of a
    client that asked for xmpp:version='0.9' is answered within seconds. ejabberd answers with
    a version='0.9' stream and no features: no STARTTLS on a pre-1.0 stream, so
    remote-connection-failed; Prosody answers version 1.0 with features: a normal session."""
    cm = boshcm_factory(xmpp_server, upstream={"connect_timeout": 30.0})
    c: BoshClient = await bosh_client(cm.url)
    started = time.monotonic()
    r = await c.create(xmpp_server.domain, wait=5, xmpp_version="0.9")
    assert time.monotonic() - started < 10, "waited for connect_timeout"
    if isinstance(xmpp_server, EjabberdServer):
        assert r.terminated and r.condition == "remote-connection-failed", r.raw
    else:
        assert not r.terminated, r.raw
        assert r.get("xmpp:version") == "1.0", r.raw
        await c.login("carol", USERS["carol"], resource=f"v09-{secrets.token_hex(3)}")
