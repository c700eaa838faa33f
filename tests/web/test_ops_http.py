"""The HTTP edge under bad input and for operators (issue 4): body size refused without
reading it all (also chunked), bodies split over TCP segments read whole, X-Forwarded-For
believed only from trusted proxies, /healthz, /readyz, /metrics. Real loopback sockets."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable

import pytest

from bosh import config as config_mod
from bosh.__main__ import build_manager
from bosh.driver import Manager
from bosh.web import make_app
from tests.driver._fakes import FakeUpstreamFactory
from tests.faults._ops import (Served, attr, create_body, eof_within, http_request, raw_http,
                               read_response, serve_app)

Start = Callable[..., Awaitable[tuple[Served, Manager]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    made: list[tuple[Served, Manager]] = []

    async def factory(http: dict | None = None, bosh: dict | None = None) -> tuple[Served, Manager]:
        cfg = config_mod.from_mapping({"http": {"max_body_bytes": 4096, **(http or {})},
                                       "bosh": {"max_wait": 2, **(bosh or {})},
                                       "upstream": {"domains": ["example.com"]}})
        manager = build_manager(cfg, FakeUpstreamFactory(auto=True))
        served = await serve_app(make_app(manager, cfg.http), cfg.http)
        made.append((served, manager))
        return served, manager

    yield factory
    for served, manager in made:
        await manager.shutdown()
        await served.close()


async def test_chunked_body_over_the_limit_is_refused_before_it_ends_and_the_connection_closed(start) -> None:
    """No Content-Length: the server answers policy-violation after max_body_bytes + 1 bytes,
    while the client is still sending, and closes the connection instead of draining."""
    served, manager = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(f"POST {served.path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"<body xmlns='http://jabber.org/protocol/httpbind'>" + b" " * 1000
    for _ in range(6):  # 6 KB of an endless body: more than 4096, never finished
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    await writer.drain()
    res = await read_response(reader)
    assert res.status == 200 and attr(res.body, "condition") == "policy-violation"
    assert res.headers.get("connection", "").lower() == "close"
    assert await eof_within(reader)
    writer.close()
    assert manager.metrics.limit_hits.labels("body_size")._value.get() == 1


async def test_content_length_over_the_limit_is_refused_from_the_headers_alone(start) -> None:
    served, _ = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(f"POST {served.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n".encode())
    await writer.drain()
    res = await read_response(reader)  # not one body byte sent
    assert attr(res.body, "condition") == "policy-violation"
    assert await eof_within(reader)
    writer.close()


async def test_a_body_split_over_several_tcp_segments_is_read_whole(start) -> None:
    """StreamReader.read(n) returns what is buffered; the handler must wait for the rest."""
    served, _ = await start()
    body = create_body()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    req = http_request(served.path, body)
    cut = len(req) - len(body) + 20
    writer.write(req[:cut])
    await writer.drain()
    with pytest.raises(asyncio.TimeoutError):  # nothing may be answered from half a body
        await asyncio.wait_for(reader.read(1), 0.3)
    writer.write(req[cut:])
    await writer.drain()
    res = await read_response(reader)
    assert res.status == 200 and attr(res.body, "sid"), res.body
    writer.close()


@pytest.mark.parametrize("trusted, expect_second", [([], False), (["127.0.0.1"], True)])
async def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(start, trusted, expect_second) -> None:
    """max_sessions_per_ip = 1. Untrusted peer: the header is ignored, both requests are
    127.0.0.1 and the second is refused. Trusted proxy: two different clients."""
    served, manager = await start(http={"trusted_proxies": trusted}, bosh={"max_sessions_per_ip": 1})
    a = await raw_http(served.port, served.path, create_body(), {"X-Forwarded-For": "203.0.113.1"})
    assert attr(a.body, "sid")
    b = await raw_http(served.port, served.path, create_body(), {"X-Forwarded-For": "203.0.113.2"})
    assert bool(attr(b.body, "sid")) is expect_second, b.body
    if not expect_second:
        assert attr(b.body, "condition") == "policy-violation"
    # the same forwarded client twice is refused either way
    c = await raw_http(served.port, served.path, create_body(), {"X-Forwarded-For": "203.0.113.1"})
    assert attr(c.body, "condition") == "policy-violation"
    ips = sorted(d.client_ip for d in manager.registry)
    assert ips == (["203.0.113.1", "203.0.113.2"] if expect_second else ["127.0.0.1"])


async def test_healthz_readyz_and_metrics_endpoints(start) -> None:
    served, manager = await start()
    import aiohttp

    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{served.port}"
        async with http.get(base + "/healthz") as r:
            assert r.status == 200
        async with http.get(base + "/readyz") as r:
            assert r.status == 200
        async with http.post(base + served.path, data=create_body()) as r:
            assert attr(await r.read(), "sid")
        async with http.get(base + "/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        assert "bosh_sessions_open 1.0" in text and "bosh_requests_total 1.0" in text
        assert "bosh_response_seconds_bucket" in text
        await manager.shutdown()  # draining
        async with http.get(base + "/readyz") as r:
            assert r.status == 503
        async with http.get(base + "/healthz") as r:
            assert r.status == 200
        async with http.post(base + served.path, data=create_body()) as r:
            assert attr(await r.read(), "condition") == "system-shutdown"
