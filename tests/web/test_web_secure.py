"""A session begun over https is never continued over plain http (XEP-0124 §19.1, checklist
#128): such a request's connection is closed without an answer and the session goes on.
https is seen directly or as X-Forwarded-Proto from a trusted proxy. Real loopback sockets."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from bosh import config as config_mod
from bosh.__main__ import build_manager
from bosh.driver import Manager
from bosh.limits import forwarded_secure, parse_networks
from bosh.web import make_app
from tests.driver._fakes import FakeUpstreamFactory
from tests.faults._ops import Served, attr, create_body, http_request, raw_http, serve_app

NS = "http://jabber.org/protocol/httpbind"
HTTPS = {"X-Forwarded-Proto": "https"}


@pytest.fixture
async def served() -> AsyncIterator[tuple[Served, Manager]]:
    cfg = config_mod.from_mapping({"http": {"trusted_proxies": ["127.0.0.1"]},
                                   "bosh": {"max_wait": 1},
                                   "upstream": {"domains": ["example.com"]}})
    manager = build_manager(cfg, FakeUpstreamFactory(auto=True))
    srv = await serve_app(make_app(manager, cfg.http), cfg.http)
    yield srv, manager
    await manager.shutdown()
    await srv.close()


def poll(sid: str, rid: int) -> bytes:
    return f"<body xmlns='{NS}' sid='{sid}' rid='{rid}'/>".encode()


async def test_plain_http_request_for_an_https_session_is_dropped_and_the_session_lives(served) -> None:
    """#128: closed without an answer; the same rid over https then works."""
    srv, manager = served
    created = await raw_http(srv.port, srv.path, create_body(), HTTPS)
    sid = attr(created.body, "sid")
    assert sid and manager.registry.get(sid) is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(http_request(srv.path, poll(sid, 1001)))  # no X-Forwarded-Proto: plain http
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    assert data == b""  # closed, not one byte of an answer
    writer.close()
    assert manager.registry.get(sid) is not None
    ok = await raw_http(srv.port, srv.path, poll(sid, 1001), HTTPS)  # the same rid, now https
    assert ok.status == 200 and attr(ok.body, "type") is None


async def test_a_plain_http_session_may_later_use_https(served) -> None:
    """#128: only the downgrade is refused; an upgrade is no risk."""
    srv, manager = served
    created = await raw_http(srv.port, srv.path, create_body())
    sid = attr(created.body, "sid")
    ok = await raw_http(srv.port, srv.path, poll(sid, 1001), HTTPS)
    assert ok.status == 200 and attr(ok.body, "type") is None


@pytest.mark.parametrize("transport_secure, peer, proto, trusted, expected", [
    (False, "127.0.0.1", ["https"], ["127.0.0.1"], True),     # trusted proxy says https
    (False, "192.0.2.9", ["https"], ["127.0.0.1"], False),    # untrusted peer: header ignored
    (True, "127.0.0.1", [], ["127.0.0.1"], True),             # https directly
    (False, "127.0.0.1", ["https, http"], ["127.0.0.1"], False),  # our proxy's value is last
    (False, "127.0.0.1", ["https"], [], False),               # no trusted proxies configured
])
def test_forwarded_proto_is_believed_only_from_trusted_proxies(
        transport_secure: bool, peer: str, proto: list[str], trusted: list[str], expected: bool) -> None:
    assert forwarded_secure(transport_secure, peer, proto, parse_networks(trusted)) is expected


