"""bosh-cm behind a real nginx running the example ``conf/nginx-bosh.conf`` (issue 13).

With the shipped defaults (``[http] trusted_proxies`` = loopback, generous per-IP limits)
the X-Forwarded-For nginx appends is believed, so the per-IP limits count the client behind
the proxy, not the proxy: many users behind one local nginx all get in, and a tight limit
refuses one client address while another still gets in. The WebSocket location block of the
example really upgrades.

Clients are told apart by their source address on loopback (127.0.0.2, 127.0.0.3).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import aiohttp
import pytest

from tests.support.boshclient import BoshClient, BoshResponse
from tests.support.nginx import NginxProxy, require_nginx
from tests.support.wsclient import OPEN, WsClient

pytestmark = pytest.mark.integration

CONCURRENCY = 20


@pytest.fixture
def nginx_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], NginxProxy]]:
    """``nginx_factory(bosh_cm_port)`` -> a started nginx with the example config in front."""
    require_nginx()
    made: list[NginxProxy] = []

    def factory(upstream_port: int) -> NginxProxy:
        proxy = NginxProxy(Path(tmp_path_factory.mktemp("nginx")), upstream_port)
        made.append(proxy)
        proxy.start()
        return proxy

    yield factory
    for proxy in made:
        proxy.stop()


@pytest.fixture
async def from_addr() -> AsyncIterator[Callable[[str], aiohttp.ClientSession]]:
    """``from_addr("127.0.0.2")`` -> an aiohttp session whose connections leave from that
    loopback address (one per address, closed after the test)."""
    sessions: dict[str, aiohttp.ClientSession] = {}

    def get(addr: str) -> aiohttp.ClientSession:
        if addr not in sessions:
            sessions[addr] = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                connector=aiohttp.TCPConnector(limit=0, local_addr=(addr, 0)))
        return sessions[addr]

    yield get
    for s in sessions.values():
        await s.close()


async def _create_many(url: str, domain: str, http: aiohttp.ClientSession, n: int,
                       made: list[BoshClient]) -> list[BoshResponse]:
    """``n`` session creations, at most :data:`CONCURRENCY` at a time; the clients go to
    ``made`` (to be closed by the caller)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> BoshResponse:
        async with gate:
            client = BoshClient(url, http=http)
            made.append(client)
            return await client.create(domain, wait=5)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _close_all(clients: list[BoshClient]) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(c: BoshClient) -> None:
        async with gate:
            await c.close()

    await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)


def _admitted(resp: BoshResponse) -> bool:
    return resp.status == 200 and not resp.terminated and bool(resp.get("sid"))


def _diag(cm, proxy: NginxProxy) -> str:  # type: ignore[no-untyped-def]
    return "\n" + cm.log_tail(3000) + "\n" + proxy.log_tail(3000)


async def test_defaults_admit_many_sessions_from_one_client_behind_nginx(
        prosody, boshcm_factory, nginx_factory, from_addr):
    """The example config's defaults: 150 sessions from one client address through a local
    nginx are all admitted (the proxy's own address is trusted, the client is counted)."""
    cm = boshcm_factory(prosody)
    proxy = nginx_factory(cm.port)
    clients: list[BoshClient] = []
    try:
        answers = await _create_many(proxy.url("/http-bind"), prosody.domain,
                                     from_addr("127.0.0.2"), 150, clients)
        refused = [r for r in answers if not _admitted(r)]
        assert not refused, f"{len(refused)} of 150 refused, first: {refused[0]!r}" + _diag(cm, proxy)
        assert len({r.get("sid") for r in answers}) == 150
    finally:
        await _close_all(clients)


async def test_per_ip_limit_counts_the_client_behind_nginx(
        prosody, boshcm_factory, nginx_factory, from_addr, ws_client):
    """``max_sessions_per_ip = 10`` behind nginx: the 11th session from 127.0.0.2 is refused
    with policy-violation (logged once), 127.0.0.3 still gets in; and the example's WebSocket
    location upgrades to the 'xmpp' subprotocol and carries the stream."""
    cm = boshcm_factory(prosody, bosh={"max_sessions_per_ip": 10})
    proxy = nginx_factory(cm.port)
    url = proxy.url("/http-bind")
    clients: list[BoshClient] = []
    try:
        first = await _create_many(url, prosody.domain, from_addr("127.0.0.2"), 10, clients)
        assert all(_admitted(r) for r in first), [r for r in first if not _admitted(r)][:1] \
            + [_diag(cm, proxy)]

        for _ in range(2):  # two refusals: one WARNING line (once per address per minute)
            over = BoshClient(url, http=from_addr("127.0.0.2"))
            clients.append(over)
            resp = await over.create(prosody.domain, wait=5)
            assert resp.terminated, f"11th session from 127.0.0.2 admitted: {resp!r}" + _diag(cm, proxy)
            assert resp.condition == "policy-violation", resp

        other = BoshClient(url, http=from_addr("127.0.0.3"))
        clients.append(other)
        resp = await other.create(prosody.domain, wait=5)
        assert _admitted(resp), f"127.0.0.3 refused: {resp!r}" + _diag(cm, proxy)

        # WebSocket through the example's upgrade block (RFC 7395).
        ws: WsClient = await ws_client(proxy.ws_url("/xmpp-websocket"))
        assert ws.protocol == "xmpp"
        await ws.send_raw('<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="localhost" '
                          'version="1.0"/>')
        opened = await ws.wait_for(lambda e: e.tag == OPEN, timeout=10)
        assert opened.get("version") == "1.0", opened.attrib
    finally:
        await _close_all(clients)

    warnings = [line for line in cm.log_path.read_text(errors="replace").splitlines()
                if " WARNING " in line and "127.0.0.2" in line and "max_sessions_per_ip" in line]
    assert len(warnings) == 1, warnings or cm.log_tail(3000)
    assert not [line for line in cm.log_path.read_text(errors="replace").splitlines()
                if " WARNING " in line and "127.0.0.3" in line]
