"""The prebind API over HTTP (bosh/prebind_web.py) on the real app, with the scripted fake
server of tests/driver/_prebind_fakes.py: JSON in, JSON out, the status codes of issue 10,
RFC 6750 WWW-Authenticate, Retry-After, no CORS, no caching."""

from __future__ import annotations

from typing import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bosh.config import HttpConfig
from bosh.prebind import Prebinder, PrebindService
from bosh.prebind_keys import ApiKeys
from bosh.session import Limits
from bosh.web import make_app
from tests.driver._fakes import make_manager
from tests.driver._prebind_fakes import DOMAIN, PASSWORD, ScriptedFactory

KEY = "web-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
OK = {"jid": f"user@{DOMAIN}", "password": PASSWORD}


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    manager = make_manager(Limits(max_wait=5, max_inactivity=30), [DOMAIN], 10, ScriptedFactory())
    service = PrebindService(Prebinder(manager, plain_allowed=False), ApiKeys([KEY]),
                             per_key_per_minute=5, path="/prebind")
    app = make_app(manager, HttpConfig(path="/http-bind", cors_origins=("*",)), prebind=service)
    tc = TestClient(TestServer(app))
    await tc.start_server()
    yield tc
    await manager.shutdown()
    await tc.close()


async def test_success_is_200_json_jid_sid_rid_not_cached_and_without_cors(client: TestClient) -> None:
    resp = await client.post("/prebind", json={**OK, "resource": "portal"}, headers={
        **AUTH, "Origin": "https://evil.example"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Origin" not in resp.headers  # browsers must not call it
    doc = await resp.json()
    assert set(doc) == {"jid", "sid", "rid"}
    assert doc["jid"] == f"user@{DOMAIN}/portal" and isinstance(doc["rid"], int) and doc["sid"]


@pytest.mark.parametrize("headers, body, status, condition", [
    ({}, OK, 401, "missing-api-key"),
    ({"Authorization": "Bearer not-the-key-0123456789"}, OK, 401, "bad-api-key"),
    (AUTH, {**OK, "password": "wrong"}, 403, "not-authorized"),
    (AUTH, {"jid": "no-at-sign", "password": "x"}, 400, "jid-malformed"),
    (AUTH, {"jid": "user@elsewhere.org", "password": "x"}, 400, "host-unknown"),
])
async def test_errors_are_json_with_status_and_condition(
        client: TestClient, headers: dict[str, str], body: dict[str, str], status: int,
        condition: str) -> None:
    resp = await client.post("/prebind", json=body, headers=headers)
    assert resp.status == status
    doc = await resp.json()
    assert doc["condition"] == condition and doc["error"]
    assert resp.headers["Cache-Control"] == "no-store"
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")  # RFC 6750 §3


async def test_bad_json_is_400(client: TestClient) -> None:
    resp = await client.post("/prebind", data=b"{jid: nope", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["condition"] == "bad-request"


async def test_over_the_rate_is_429_with_retry_after(client: TestClient) -> None:
    for _ in range(5):
        assert (await client.post("/prebind", data=b"{", headers=AUTH)).status == 400
    resp = await client.post("/prebind", json=OK, headers=AUTH)
    assert resp.status == 429
    assert (await resp.json())["condition"] == "policy-violation"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60


async def test_a_large_body_is_413_and_get_is_405(client: TestClient) -> None:
    resp = await client.post("/prebind", data=b"x" * 9000, headers=AUTH)
    assert resp.status == 413
    assert (await client.get("/prebind")).status == 405


async def test_no_prebind_route_unless_enabled() -> None:
    manager = make_manager(Limits(), [DOMAIN], 10, ScriptedFactory())
    tc = TestClient(TestServer(make_app(manager, HttpConfig())))
    await tc.start_server()
    try:
        assert (await tc.post("/prebind", json=OK, headers=AUTH)).status == 404
    finally:
        await manager.shutdown()
        await tc.close()
