"""The WebSocket endpoint over real loopback sockets, in-process (aiohttp app + fake upstream):
the handshake checks of RFC 7395 §3.1 and RFC 6455 §10.2, frames both ways, the too-large
message, and a hypothesis fuzz of frames (issue 8: no crash, no traceback, other sessions
untouched)."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bosh.config import HttpConfig, WebSocketConfig
from bosh.hub import Hub
from bosh.driver import Manager
from bosh.web import make_app
from bosh.ws_driver import WsEndpoint
from bosh.ws_session import CLOSE, WsLimits
from tests.driver._fakes import PATH, TEST_LIMITS, FakeUpstreamFactory

OPEN = '<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="example.com" version="1.0"/>'
WS_PATH = "/xmpp-websocket"
DEADLINE = 5.0


class App:
    def __init__(self, client: TestClient, hub: Hub, factory: FakeUpstreamFactory) -> None:
        self.client, self.hub, self.factory = client, hub, factory

    async def connect(self, **kw: object) -> aiohttp.ClientWebSocketResponse:
        kw.setdefault("protocols", ("xmpp",))
        return await self.client.ws_connect(WS_PATH, **kw)  # type: ignore[arg-type]

    async def opened(self) -> aiohttp.ClientWebSocketResponse:
        ws = await self.connect()
        await ws.send_str(OPEN)
        assert (await recv(ws)).startswith('<open xmlns="urn:ietf:params:xml:ns:xmpp-framing"')
        assert (await recv(ws)).startswith("<stream:features")
        return ws


async def recv(ws: aiohttp.ClientWebSocketResponse) -> str:
    msg = await asyncio.wait_for(ws.receive(), DEADLINE)
    assert msg.type is WSMsgType.TEXT, msg
    return str(msg.data)


async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[str]:
    """Every text message up to the close, then the close itself."""
    got: list[str] = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), DEADLINE)
        if msg.type is WSMsgType.TEXT:
            got.append(str(msg.data))
        else:
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
            return got


@pytest.fixture
async def app() -> AsyncIterator[App]:
    factory = FakeUpstreamFactory(auto=True)
    hub = Hub(["example.com"], 100, factory, max_stanza_bytes=4096)
    manager = Manager(TEST_LIMITS, hub)
    ws = WsEndpoint(hub, WsLimits(max_message_bytes=4096, ping_interval=0), max_queued_bytes=65536)
    http = HttpConfig(path=PATH, cors_origins=("https://chat.example",))
    client = TestClient(TestServer(make_app(manager, http, websocket=ws, ws_config=WebSocketConfig())))
    await client.start_server()
    try:
        yield App(client, hub, factory)
    finally:
        await hub.shutdown()
        await client.close()


async def test_handshake_without_the_xmpp_subprotocol_is_refused_without_upgrade(app: App) -> None:
    """RFC 7395 §3.1: no upgrade without the subprotocol (aiohttp alone would upgrade)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await app.connect(protocols=("chat",))
    assert info.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await app.connect(protocols=())
    assert info.value.status == 400
    assert len(app.hub.registry) == 0


async def test_the_subprotocol_is_echoed(app: App) -> None:
    ws = await app.connect(protocols=("other", "xmpp"))
    assert ws.protocol == "xmpp"
    await ws.close()


async def test_a_page_of_another_origin_is_refused_before_the_upgrade(app: App) -> None:
    """Cross-site WebSocket hijacking (ejabberd#2821): [] origins = the CORS list."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await app.connect(headers={"Origin": "https://evil.example"})
    assert info.value.status == 403
    ws = await app.connect(headers={"Origin": "https://chat.example"})
    await ws.send_str(OPEN)
    assert (await recv(ws)).startswith("<open ")
    await ws.close()


async def test_stanza_round_trip_and_clean_close(app: App) -> None:
    ws = await app.opened()
    await ws.send_str("<message to='b@example.com'><body>echo me</body></message>")
    assert await recv(ws) == '<message xmlns="jabber:client" to="b@example.com"><body>echo me</body></message>'
    await ws.send_str('<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>')
    assert await until_closed(ws) == [CLOSE.decode()]
    assert ws.close_code == 1000
    assert app.factory.live == 0 and len(app.hub.registry) == 0


async def test_message_over_the_bound_gets_policy_violation_before_the_close(app: App) -> None:
    """design.md §10: the stream error, not only aiohttp's bare 1009 close."""
    ws = await app.opened()
    await ws.send_str("<message><body>" + "x" * 10_000 + "</body></message>")
    got = await until_closed(ws)
    assert any("policy-violation" in m for m in got), got
    assert got[-1] == CLOSE.decode()
    assert len(app.hub.registry) == 0


async def test_binary_frame_gets_unsupported_encoding(app: App) -> None:
    ws = await app.opened()
    await ws.send_bytes(b"<message/>")
    got = await until_closed(ws)
    assert "unsupported-encoding" in got[0] and got[-1] == CLOSE.decode()
    assert ws.close_code == 1003


async def test_client_pings_are_answered(app: App) -> None:
    ws = await app.connect(autoping=False)  # so that the pong reaches the test
    await ws.ping(b"p1")
    msg = await asyncio.wait_for(ws.receive(), DEADLINE)
    assert (msg.type, msg.data) == (WSMsgType.PONG, b"p1")
    await ws.close()


async def test_dropped_socket_ends_the_session_and_its_upstream(app: App) -> None:
    ws = await app.opened()
    ws._response.connection.transport.abort()  # type: ignore[union-attr]  # no close frame
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while len(app.hub.registry) or app.factory.live:
        assert loop.time() < deadline, "session not ended after the socket dropped"
        await asyncio.sleep(0.01)
    assert app.factory.opened[-1].end_stream is True  # not resumable: closed cleanly


FRAGMENTS = [OPEN, "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", "<message>",
             "</message>", "<!DOCTYPE x>", "<!-- c -->", "<?pi?>", "&amp;", "&x;", "<a>" * 70,
             "<enable xmlns='urn:xmpp:sm:3' resume='true'/>", "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
             "</stream:stream>", "<open xmlns='jabber:client'/>", "\x00", "\ud7ff", "x" * 5000,
             "<presence/>", "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>", " "]
FRAME = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=4).map("".join),
    st.text(max_size=200),
    st.binary(max_size=64),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(FRAME, min_size=1, max_size=6))
async def test_fuzzed_frames_never_crash_and_leave_other_sessions_alone(
        app: App, frames: list[object], caplog: pytest.LogCaptureFixture) -> None:
    bystander = await app.opened()
    ws = await app.opened()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for frame in frames:
            if ws.closed:
                break
            try:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
            except ConnectionResetError:
                break
        await ws.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while len(app.hub.registry) > 1:  # the fuzzed session is gone, the bystander not
            assert loop.time() < deadline, "fuzzed session left behind"
            await asyncio.sleep(0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    await bystander.send_str("<message><body>still here</body></message>")
    assert "still here" in await recv(bystander)
    await bystander.close()


async def test_a_draining_cluster_node_answers_new_sessions_503_so_the_balancer_retries() -> None:
    """Issue 9: between the start of a node's drain and its failed /readyz check, a creation
    request or a WebSocket upgrade gets HTTP 503 before anything is created (HAProxy's
    retry-on 503 sends it to another node); a standalone process still says system-shutdown."""
    from tests.driver._fakes import create_body

    for node_id, expect in (("n1", 503), ("", 200)):
        factory = FakeUpstreamFactory(auto=True)
        hub = Hub(["example.com"], 100, factory, node_id=node_id)
        manager = Manager(TEST_LIMITS, hub)
        ws = WsEndpoint(hub, WsLimits(ping_interval=0))
        client = TestClient(TestServer(make_app(manager, HttpConfig(path=PATH), websocket=ws,
                                                ws_config=WebSocketConfig())))
        await client.start_server()
        try:
            await hub.drain(timeout=0)
            resp = await client.post(PATH, data=create_body())
            body = await resp.read()
            assert resp.status == expect, body
            if expect == 200:
                assert b"system-shutdown" in body
            if node_id:
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await client.ws_connect(WS_PATH, protocols=("xmpp",))
                assert info.value.status == 503
            assert factory.opened == [] and len(hub.registry) == 0
        finally:
            await client.close()


async def test_a_client_that_stops_reading_pauses_upstream_and_is_cut_off_after_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Backpressure and a bounded close: a client that never reads keeps the kernel buffer
    full; bosh-cm pauses reading upstream (no unbounded buffering) and, once the session has
    ended, drops the connection within CLOSE_DEADLINE instead of waiting forever to drain."""
    import base64
    import os
    import socket

    from bosh import ws_web
    from tests.driver._fakes import FakeUpstreamFactory

    monkeypatch.setattr(ws_web, "CLOSE_DEADLINE", 0.5)
    factory = FakeUpstreamFactory()
    hub = Hub(["example.com"], 100, factory, max_stanza_bytes=4096)
    ws = WsEndpoint(hub, WsLimits(max_message_bytes=4096, ping_interval=0), max_queued_bytes=65536)
    client = TestClient(TestServer(make_app(Manager(TEST_LIMITS, hub), HttpConfig(path=PATH),
                                            websocket=ws, ws_config=WebSocketConfig())))
    await client.start_server()
    loop = asyncio.get_running_loop()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    try:
        await loop.sock_connect(raw, ("127.0.0.1", client.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(raw, (
            f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: xmpp\r\n\r\n").encode())
        assert b" 101 " in (await asyncio.wait_for(loop.sock_recv(raw, 200), DEADLINE)).split(b"\r\n")[0]
        mask = os.urandom(4)
        payload = OPEN.encode()
        await loop.sock_sendall(raw, bytes([0x81, 0x80 | len(payload)]) + mask
                                + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        up = await factory.next_open(1)
        up.ready()
        big = b"<message xmlns='jabber:client'><body>" + b"x" * 8000 + b"</body></message>"
        deadline = loop.time() + DEADLINE
        while not up.paused:  # the client reads nothing: the server's stream gets paused
            assert loop.time() < deadline, "upstream reading never paused"
            up.deliver(big)
            await asyncio.sleep(0)
        driver = next(iter(hub.registry))
        assert driver.socket.queued_bytes() < 65536 + 2 * len(big) + 2 ** 20  # bounded
        up.lose()  # the session ends; its close waits behind data the client never reads
        assert len(hub.registry) == 0
        deadline = loop.time() + 5
        while not driver.socket._transport.is_closing():
            assert loop.time() < deadline, "the connection outlived its session"
            await asyncio.sleep(0.02)
    finally:
        raw.close()
        await client.close()
