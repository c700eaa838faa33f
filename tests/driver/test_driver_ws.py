"""The WebSocket endpoint's driver on the shared hub (bosh.ws_driver, bosh.hub): one session
table, one set of limits and metrics, one shutdown for both transports. Fake upstream and a
fake socket (design.md §8 rule 7: fake only the edges)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from bosh.errors import Condition, StreamCondition
from bosh.hub import Hub
from bosh.limits import ClientLimits, PerIpPolicy
from bosh.driver import Manager
from bosh.ws_driver import WsEndpoint
from bosh.ws_session import CLOSE, WsLimits, stream_error
from tests.driver._fakes import FakeUpstreamFactory, TEST_LIMITS, create_body, never_closing, within

OPEN = b'<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="example.com" version="1.0"/>'
ENABLED = b'<enabled xmlns="urn:xmpp:sm:3" id="q1" resume="true"/>'


@dataclass
class FakeSocket:
    sent: list[bytes] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    pings: int = 0
    backlog: int = 0  # what queued_bytes reports

    def send_text(self, data: bytes) -> None:
        self.sent.append(data)

    def ping(self) -> None:
        self.pings += 1

    def close(self, code: int) -> None:
        self.closed.append(code)

    def queued_bytes(self) -> int:
        return self.backlog

    @property
    def waiting(self) -> bool:  # a write waits for the kernel while anything is backlogged
        return self.backlog > 0


def build(fake: FakeUpstreamFactory, **hub_kw: object) -> tuple[Hub, WsEndpoint, Manager]:
    hub = Hub(["example.com"], 10, fake, **hub_kw)  # type: ignore[arg-type]
    return hub, WsEndpoint(hub, WsLimits(ping_interval=0), max_queued_bytes=1000), Manager(TEST_LIMITS, hub)


async def opened(ws: WsEndpoint, fake: FakeUpstreamFactory, ip: str = "192.0.2.1"):  # type: ignore[no-untyped-def]
    sock = FakeSocket()
    count = len(fake.opened) + 1
    driver = ws.connect(sock, ip)
    driver.text(OPEN)
    up = await fake.next_open(count)
    up.ready()
    return sock, driver, up


async def test_both_transports_share_one_session_table_and_the_per_ip_limit(fake: FakeUpstreamFactory) -> None:
    hub, ws, bosh = build(fake, client_limits=ClientLimits(PerIpPolicy(max_sessions_per_ip=2)))
    sock, driver, up = await opened(ws, fake)
    assert len(hub.registry) == 1 and hub.registry.get(driver.sid) is driver
    bosh_task = asyncio.ensure_future(bosh.handle(create_body(), never_closing, "192.0.2.1"))
    (await fake.next_open(2)).ready()
    reply = await within(bosh_task)
    assert b"sid=" in reply.body and len(hub.registry) == 2
    # the third session from the same address is refused, whichever the transport
    third = FakeSocket()
    ws.connect(third, "192.0.2.1")
    assert third.sent[-2:] == [stream_error(StreamCondition.POLICY_VIOLATION), CLOSE]
    assert third.closed and len(hub.registry) == 2
    text = hub.metrics.render().decode()
    assert 'bosh_transport_sessions_open{transport="websocket"} 1.0' in text
    assert 'bosh_transport_sessions_open{transport="bosh"} 1.0' in text
    assert 'bosh_limit_hits_total{limit="per_ip"} 1.0' in text
    # another address still gets in
    await opened(ws, fake, "192.0.2.2")
    assert len(hub.registry) == 3
    await hub.shutdown()


async def test_a_websocket_sid_is_no_bosh_session(fake: FakeUpstreamFactory) -> None:
    """XEP-0124 §17.2: a BOSH request naming a WebSocket session's sid is item-not-found."""
    hub, ws, bosh = build(fake)
    _, driver, _ = await opened(ws, fake)
    body = (f"<body xmlns='http://jabber.org/protocol/httpbind' sid='{driver.sid}' rid='5'/>").encode()
    reply = await within(bosh.handle(body, never_closing, "192.0.2.1"))
    assert b"item-not-found" in reply.body
    assert hub.registry.get(driver.sid) is driver
    await hub.shutdown()


async def test_ending_gives_the_slot_back_and_counts_by_transport(fake: FakeUpstreamFactory) -> None:
    hub, ws, _ = build(fake, client_limits=ClientLimits(PerIpPolicy(max_sessions_per_ip=1)))
    sock, driver, up = await opened(ws, fake)
    driver.text(b'<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>')
    assert up.closed == 1 and up.end_stream is True
    assert sock.sent[-1] == CLOSE and sock.closed == [1000]
    assert len(hub.registry) == 0 and hub.client_limits.open_for("192.0.2.1") == 0
    text = hub.metrics.render().decode()
    assert 'bosh_transport_sessions_ended_total{condition="none",transport="websocket"} 1.0' in text
    assert "bosh_upstreams_open 0.0" in text
    await opened(ws, fake)  # the slot is free again


async def test_socket_loss_keeps_a_resumable_session_resumable_upstream(fake: FakeUpstreamFactory) -> None:
    """XEP-0198 §5: no </stream:stream> when the server granted resumption."""
    hub, ws, _ = build(fake)
    sock, driver, up = await opened(ws, fake)
    up.deliver(ENABLED)
    assert sock.sent[-1] == ENABLED
    driver.lost()
    assert up.closed == 1 and up.end_stream is False
    assert len(hub.registry) == 0


async def test_shutdown_releases_resumable_sessions_with_1012_and_closes_the_others(fake: FakeUpstreamFactory) -> None:
    hub, ws, bosh = build(fake)
    sock_r, _, up_r = await opened(ws, fake)
    up_r.deliver(ENABLED)
    sock_p, _, up_p = await opened(ws, fake)
    await hub.shutdown()
    assert sock_r.closed == [1012] and CLOSE not in sock_r.sent and up_r.end_stream is False
    assert sock_p.sent[-2:] == [stream_error(StreamCondition.SYSTEM_SHUTDOWN), CLOSE]
    assert up_p.end_stream is True
    assert len(hub.registry) == 0
    late = FakeSocket()
    ws.connect(late, "192.0.2.9")  # draining: new connections are told so
    assert late.sent[-2:] == [stream_error(StreamCondition.SYSTEM_SHUTDOWN), CLOSE]
    text = hub.metrics.render().decode()
    assert 'bosh_websocket_closes_total{code="1012"} 1.0' in text


async def test_reload_ends_websocket_sessions_of_a_dropped_domain_with_host_gone(fake: FakeUpstreamFactory) -> None:
    hub, ws, bosh = build(fake)
    sock, _, _ = await opened(ws, fake)
    bosh.reload(TEST_LIMITS, 10, ClientLimits(), 0, domains=["other.example"])
    assert sock.sent[-2:] == [stream_error(StreamCondition.HOST_GONE), CLOSE]


async def test_a_slow_client_pauses_upstream_reading_until_its_socket_drains(fake: FakeUpstreamFactory) -> None:
    """The same bound as a BOSH queue ([bosh] max_queued_bytes): no unbounded buffering."""
    hub, ws, _ = build(fake)
    sock, driver, up = await opened(ws, fake)
    sock.backlog = 5000
    up.deliver(b"<message xmlns='jabber:client'><body>x</body></message>")
    assert up.paused
    sock.backlog = 0
    driver.drained()
    assert not up.paused


async def test_upstream_stream_error_reaches_the_client_then_close(fake: FakeUpstreamFactory) -> None:
    hub, ws, _ = build(fake)
    sock, _, up = await opened(ws, fake)
    err = (b'<stream:error xmlns:stream="http://etherx.jabber.org/streams"><conflict '
           b'xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error>')
    up.lose(err)
    assert sock.sent[-2:] == [err, CLOSE] and sock.closed == [1000]
    assert len(hub.registry) == 0


async def test_restart_answers_with_the_new_header(fake: FakeUpstreamFactory) -> None:
    hub, ws, _ = build(fake)
    sock, driver, up = await opened(ws, fake)
    driver.text(OPEN)
    assert len(up.restarts) == 1
    up.restarted()
    assert sock.sent[-1].startswith(b'<open xmlns="urn:ietf:params:xml:ns:xmpp-framing"')
    await hub.shutdown()


@pytest.mark.parametrize("condition", [Condition.POLICY_VIOLATION])
async def test_operator_conditions_map_to_stream_errors(fake: FakeUpstreamFactory, condition: Condition) -> None:
    hub, ws, _ = build(fake)
    sock, driver, _ = await opened(ws, fake)
    driver.end(condition)
    assert sock.sent[-2] == stream_error(StreamCondition.POLICY_VIOLATION)


async def test_a_cluster_drain_releases_websockets_at_once_and_waits_for_bosh(fake: FakeUpstreamFactory) -> None:
    """Issue 9: no new sessions; WebSocket sessions released (resumable: 1012); BOSH sessions
    served until they end (or the drain timeout)."""
    hub, ws, bosh = build(fake)
    sock_r, _, up_r = await opened(ws, fake)
    up_r.deliver(ENABLED)
    create = asyncio.ensure_future(bosh.handle(create_body(), never_closing, "192.0.2.5"))
    (await fake.next_open(2)).ready()
    reply = await within(create)
    sid = reply.body.split(b"sid='")[1].split(b"'")[0].decode()
    drain = asyncio.ensure_future(hub.drain(timeout=30))
    await asyncio.sleep(0)
    assert sock_r.closed == [1012] and not hub.accepting
    assert len(hub.registry) == 1 and not drain.done()  # the BOSH session lives on
    # it still gets answers while draining
    terminate = (f"<body xmlns='http://jabber.org/protocol/httpbind' sid='{sid}' rid='1001' "
                 f"type='terminate'/>").encode()
    await within(bosh.handle(terminate, never_closing, "192.0.2.5"))
    await within(drain)
    assert len(hub.registry) == 0


async def test_a_cluster_drain_ends_bosh_sessions_at_the_timeout(fake: FakeUpstreamFactory) -> None:
    hub, ws, bosh = build(fake)
    create = asyncio.ensure_future(bosh.handle(create_body(), never_closing, "192.0.2.5"))
    (await fake.next_open(1)).ready()
    await within(create)
    await within(hub.drain(timeout=0.05))
    assert len(hub.registry) == 0
    assert 'bosh_sessions_ended_total{condition="system-shutdown"} 1.0' in hub.metrics.render().decode()


async def test_node_sids_and_node_info(fake: FakeUpstreamFactory) -> None:
    hub = Hub(["example.com"], 10, fake, node_id="n2")  # type: ignore[arg-type]
    sock = FakeSocket()
    driver = WsEndpoint(hub, WsLimits(ping_interval=0)).connect(sock, "192.0.2.1")
    assert driver.sid.startswith("n2.")
    assert 'bosh_node_info{node_id="n2"} 1.0' in hub.metrics.render().decode()
    await hub.shutdown()


async def test_the_client_address_reaches_the_upstream_with_either_transport(
        fake: FakeUpstreamFactory) -> None:
    """[upstream] proxy_protocol: the driver puts the address it was given (the peer, or
    X-Forwarded-For from a trusted proxy, bosh.web) into the StreamParams it opens the
    upstream with; the cores build them without one."""
    hub, ws, bosh = build(fake)
    _sock, _driver, up = await opened(ws, fake, "192.0.2.7")
    assert up.params.client_ip == "192.0.2.7"
    bosh_task = asyncio.ensure_future(bosh.handle(create_body(), never_closing, "2001:db8::9"))
    bosh_up = await fake.next_open(2)
    assert bosh_up.params.client_ip == "2001:db8::9"
    bosh_up.ready()
    await within(bosh_task)
    await hub.shutdown()
