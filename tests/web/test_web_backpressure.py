"""Backpressure toward the client (issue 11): while the server does not read what a session
wrote (the bridge's ``upstream_writable(False)``, from the upstream socket's high-water mark),
that session takes no more client data, on either transport; other sessions go on; once the
server catches up (``upstream_writable(True)``) what waited goes through, in order, nothing
lost. The bridge side of the signal is tested against a real socket in
tests/bridge/test_bridge_bounds.py."""

from __future__ import annotations

import asyncio
import re
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bosh.config import HttpConfig, WebSocketConfig
from bosh.driver import Manager, SessionDriver
from bosh.hub import Hub
from bosh.ws_driver import WsEndpoint
from bosh.ws_session import WsLimits
from bosh.web import make_app
from tests.driver._fakes import (PATH, TEST_LIMITS, FakeUpstream, FakeUpstreamFactory, ManualClock,
                                 create_body, never_closing, req_body, sid_of, until, within)

OPEN = '<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="example.com" version="1.0"/>'
WS_PATH = "/xmpp-websocket"


def message(n: int) -> str:
    return f"<message xmlns='jabber:client' to='bob@example.com' id='m{n}'><body>{n}</body></message>"


def sent_ids(up: FakeUpstream) -> list[int]:
    """The numbers of the client's messages the server was given, in order."""
    return [int(m.group(1)) for d in up.sent_data
            if (m := re.search(rb"""id=["']m(\d+)["']""", d)) is not None]


# -- BOSH, at the driver: no sockets, so "not yet" is checked after many loop turns ----------

async def bosh_session(**hub_options: Any) -> tuple[Hub, Manager, FakeUpstream, SessionDriver]:
    """A live BOSH session on a fake upstream that is ready."""
    fake = FakeUpstreamFactory()
    hub = Hub(["example.com"], 10, fake, **hub_options)
    manager = Manager(TEST_LIMITS, hub)
    create = asyncio.ensure_future(manager.handle(create_body(), never_closing, "192.0.2.1"))
    up = await fake.next_open(1)
    up.ready()
    driver = hub.registry.get(sid_of((await within(create)).body))
    assert isinstance(driver, SessionDriver)
    return hub, manager, up, driver


async def paused_bosh_request() -> tuple[Hub, FakeUpstream, SessionDriver, "asyncio.Future[Any]"]:
    """A live BOSH session whose server stopped reading, and a request with payload sent."""
    hub, manager, up, driver = await bosh_session()
    sid = driver.sid
    driver.upstream_writable(False)
    blocked = asyncio.ensure_future(manager.handle(
        req_body(sid, 1001, message(1)), never_closing, "192.0.2.1"))
    return hub, up, driver, blocked


async def test_bosh_payload_waits_while_the_server_does_not_read_then_goes_through() -> None:
    hub, up, driver, blocked = await paused_bosh_request()
    for _ in range(50):  # plenty of loop turns: in-process, nothing else to wait for
        await asyncio.sleep(0)
    assert not blocked.done() and sent_ids(up) == []

    driver.upstream_writable(True)
    await until(lambda: sent_ids(up) == [1])
    reply = await within(blocked)
    assert reply.status == 200
    await hub.shutdown()


async def test_a_session_that_ends_while_paused_releases_its_waiting_request() -> None:
    hub, up, _, blocked = await paused_bosh_request()
    await asyncio.sleep(0)
    up.lose()  # the server goes away instead of catching up
    reply = await within(blocked)
    assert b"remote-connection-failed" in reply.body
    await hub.shutdown()


async def test_a_long_stall_does_not_end_the_bosh_session_for_inactivity() -> None:
    """§10: the request waiting for the server counts as held. The held poll is answered
    after 'wait' (1 s); 40 s later (inactivity is 30 s) the session is alive and the payload
    goes through once the server reads again."""
    clock = ManualClock(now=0.0)
    hub, manager, up, driver = await bosh_session(clock=clock)
    sid = driver.sid
    poll = asyncio.ensure_future(manager.handle(req_body(sid, 1001), never_closing, "192.0.2.1"))
    await until(lambda: manager.held_count() == 1)
    driver.upstream_writable(False)
    blocked = asyncio.ensure_future(manager.handle(
        req_body(sid, 1002, message(1)), never_closing, "192.0.2.1"))
    await until(lambda: driver.session is not None and driver.session._waiting == 1)
    clock.advance(1.0)
    assert b"terminate" not in (await within(poll)).body  # the poll's 'wait' ran out
    for _ in range(40):
        clock.advance(1.0)
    assert hub.registry.get(sid) is driver and not blocked.done()
    driver.upstream_writable(True)
    await until(lambda: sent_ids(up) == [1])
    clock.advance(1.0)
    assert b"terminate" not in (await within(blocked)).body
    await hub.shutdown()


# -- WebSocket, over a real loopback socket --------------------------------------------------

@pytest.fixture
async def app() -> AsyncIterator[tuple[TestClient, Hub, FakeUpstreamFactory]]:
    factory = FakeUpstreamFactory(auto=True)
    hub = Hub(["example.com"], 100, factory)
    ws = WsEndpoint(hub, WsLimits(ping_interval=0))
    http = HttpConfig(path=PATH)
    client = TestClient(TestServer(make_app(Manager(TEST_LIMITS, hub), http, websocket=ws,
                                            ws_config=WebSocketConfig())))
    await client.start_server()
    try:
        yield client, hub, factory
    finally:
        await hub.shutdown()
        await client.close()


async def opened(client: TestClient, factory: FakeUpstreamFactory
                 ) -> tuple[aiohttp.ClientWebSocketResponse, FakeUpstream]:
    count = len(factory.opened) + 1
    ws = await client.ws_connect(WS_PATH, protocols=("xmpp",))
    await ws.send_str(OPEN)
    up = await factory.next_open(count)
    for _ in range(2):  # <open/> and the features
        await within(ws.receive())
    return ws, up


async def echoed(ws: aiohttp.ClientWebSocketResponse, n: int) -> None:
    """The fake server echoes every <message/>: wait for message ``n`` to come back."""
    while True:
        msg = await within(ws.receive())
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        if f"id=\"m{n}\"" in msg.data or f"id='m{n}'" in msg.data:
            return


async def test_websocket_reads_no_frames_while_the_server_does_not_read(app) -> None:  # type: ignore[no-untyped-def]
    client, hub, factory = app
    ws_a, up_a = await opened(client, factory)
    ws_b, up_b = await opened(client, factory)
    await ws_a.send_str(message(1))
    await echoed(ws_a, 1)
    driver_a = next(d for d in hub.registry if d.upstream is up_a)

    driver_a.upstream_writable(False)
    # The handler may already be inside receive(): one frame can slip through. Send one
    # to take that place, then two that must wait.
    await ws_a.send_str(message(2))
    await ws_a.send_str(message(3))
    await ws_a.send_str(message(4))
    # Barrier: session B's round trip through the same loop and listener completes...
    await ws_b.send_str(message(10))
    await echoed(ws_b, 10)
    await ws_b.send_str(message(11))
    await echoed(ws_b, 11)
    # ... while A's later frames still wait in its socket.
    assert 3 not in sent_ids(up_a) and 4 not in sent_ids(up_a), sent_ids(up_a)

    driver_a.upstream_writable(True)
    await echoed(ws_a, 4)
    assert sent_ids(up_a) == [1, 2, 3, 4]
    await ws_a.close()
    await ws_b.close()
