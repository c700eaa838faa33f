"""bosh.web: the aiohttp layer with the real app and a fake upstream (XEP-0124 §5, §7.1, §17.1;
checklist §A). aiohttp's TestServer/TestClient; every await has a deadline; no sleeps."""

from __future__ import annotations

import asyncio
import gzip
from typing import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from lxml import etree

from tests.driver._fakes import (
    PATH, FakeUpstream, FakeUpstreamFactory, NS, create_body, req_body, sid_of, until, within,
)

XML = "text/xml; charset=utf-8"
MSG = b"<message xmlns='jabber:client' to='a@example.com'><body>hi</body></message>"


def parse(data: bytes) -> etree._Element:
    root = etree.fromstring(data, etree.XMLParser(recover=False, resolve_entities=False))
    assert root.tag == f"{{{NS}}}body"
    return root


def assert_framing(resp: ClientResponse) -> None:
    """§5 SHOULD NOT chunk (checklist #3): Content-Length present, no chunked coding."""
    assert "Content-Length" in resp.headers
    assert "chunked" not in resp.headers.get("Transfer-Encoding", "").lower()


async def post(client: TestClient, data: bytes, **headers: str) -> tuple[ClientResponse, bytes]:
    resp = await within(client.post(PATH, data=data, headers=headers))
    body = await within(resp.read())
    return resp, body


async def create(client: TestClient, fake: FakeUpstreamFactory, headers: dict[str, str] | None = None,
                 **over: str | None) -> tuple[str, FakeUpstream, ClientResponse, bytes]:
    task = asyncio.create_task(post(client, create_body(**over), **(headers or {})))
    up = await fake.next_open(len(fake.opened) + 1)
    up.ready()
    resp, body = await within(task)
    return sid_of(body), up, resp, body


# -- Content-Type and framing -------------------------------------------------------------

async def test_post_answers_with_exact_default_content_type_and_content_length(
        client: TestClient, fake: FakeUpstreamFactory) -> None:
    """§7.1 MUST (checklist #6) and §5 (checklist #3)."""
    sid, up, resp, body = await create(client, fake)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == XML
    assert_framing(resp)
    assert int(resp.headers["Content-Length"]) == len(body)
    assert parse(body).get("sid") == sid


async def test_content_attribute_is_echoed_as_content_type_on_every_response(
        client: TestClient, fake: FakeUpstreamFactory) -> None:
    """§7.1 MUST (checklist #7): creation, held, replayed and terminal responses."""
    ctype = "text/html; charset=utf-8"
    sid, up, resp, _ = await create(client, fake, content=ctype)
    held = asyncio.create_task(post(client, req_body(sid, 1001)))
    await until(lambda: bool(client.server.app) and _held(client, sid))
    up.deliver(MSG)
    held_resp, held_body = await within(held)
    replay_resp, replay_body = await post(client, req_body(sid, 1001))
    term_resp, _ = await post(client, req_body(sid, 1002, type="terminate"))
    for r in (resp, held_resp, replay_resp, term_resp):
        assert r.headers["Content-Type"] == ctype
        assert_framing(r)
    assert replay_body == held_body


def _held(client: TestClient, sid: str) -> bool:
    from bosh.web import MANAGER_KEY

    driver = client.server.app[MANAGER_KEY].registry.get(sid)  # type: ignore[index]
    return driver is not None and driver.session is not None and driver.session.held_count == 1


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "text/plain", None])
async def test_request_content_type_is_ignored(client: TestClient, fake: FakeUpstreamFactory,
                                               ctype: str | None) -> None:
    """§5 SHOULD (checklist #5): the body is read as raw bytes, never form-decoded."""
    headers = {"Content-Type": ctype} if ctype else {}
    sid, up, resp, body = await create(client, fake, headers=headers)
    assert resp.status == 200 and parse(body).get("sid") == sid


async def test_unknown_sid_is_item_not_found_200_with_default_content_type(client: TestClient) -> None:
    """§7.1 (checklist #6, #19)."""
    resp, body = await post(client, req_body("nope", 5))
    assert resp.status == 200 and resp.headers["Content-Type"] == XML
    assert parse(body).get("condition") == "item-not-found"
    assert_framing(resp)


async def test_large_response_payload_is_not_chunked(client: TestClient, fake: FakeUpstreamFactory) -> None:
    """§5 (checklist #3): a 200 KB payload response still has Content-Length."""
    sid, up, _, _ = await create(client, fake)
    text = "x" * 200_000
    up.deliver(f"<message xmlns='jabber:client'><body>{text}</body></message>".encode())
    resp, body = await post(client, req_body(sid, 1001))
    assert_framing(resp)
    assert parse(body)[0][0].text == text


async def test_compressed_response_only_when_accepted_and_still_framed(
        client: TestClient, fake: FakeUpstreamFactory) -> None:
    """§5 MAY (checklist #3, #4): gzip only with Accept-Encoding; Content-Length either way."""
    sid, up, _, _ = await create(client, fake, accept="gzip")
    up.deliver(f"<message xmlns='jabber:client'><body>{'y' * 2000}</body></message>".encode())
    resp = await within(client.post(PATH, data=req_body(sid, 1001),
                                    headers={"Accept-Encoding": "gzip"}, auto_decompress=False))
    raw = await resp.read()
    assert_framing(resp)
    if resp.headers.get("Content-Encoding"):
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = gzip.decompress(raw)
    assert b"y" * 2000 in raw
    up.deliver(f"<message xmlns='jabber:client'><body>{'z' * 2000}</body></message>".encode())
    resp = await within(client.post(PATH, data=req_body(sid, 1002),
                                    headers={"Accept-Encoding": "identity"}, auto_decompress=False))
    assert "Content-Encoding" not in resp.headers
    assert b"z" * 2000 in await resp.read()


# -- other methods and CORS ----------------------------------------------------------------

async def test_get_answers_an_html_information_page(client: TestClient) -> None:
    """Checklist §A REC: GET → 200 information page."""
    resp = await within(client.get(PATH))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "BOSH" in await resp.text()


@pytest.mark.parametrize("cfg,origin,expected", [
    ({}, "https://any.example", "*"),
    ({"cors_origins": ("https://app.example",)}, "https://app.example", "https://app.example"),
])
async def test_options_preflight_and_post_carry_cors_headers(
        make_client: Callable[..., Awaitable[TestClient]], cfg: dict[str, object], origin: str,
        expected: str) -> None:
    """Checklist §A REC: OPTIONS + CORS headers for browser clients on other origins; an
    allow-list echoes the allowed origin (with Vary: Origin)."""
    client = await make_client(**cfg)
    pre = await within(client.options(PATH, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"}))
    assert pre.status in (200, 204)
    assert pre.headers["Access-Control-Allow-Origin"] == expected
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "content-type" in pre.headers["Access-Control-Allow-Headers"].lower()
    resp, _ = await post(client, req_body("nope", 5), Origin=origin)
    assert resp.headers["Access-Control-Allow-Origin"] == expected
    if expected != "*":
        assert "Origin" in resp.headers.get("Vary", "")


async def test_origin_outside_the_allow_list_gets_no_cors_headers(
        make_client: Callable[..., Awaitable[TestClient]]) -> None:
    client = await make_client(cors_origins=("https://app.example",))
    pre = await within(client.options(PATH, headers={"Origin": "https://evil.example",
                                                      "Access-Control-Request-Method": "POST"}))
    assert "Access-Control-Allow-Origin" not in pre.headers
    assert pre.status >= 400
    resp, _ = await post(client, req_body("nope", 5), Origin="https://evil.example")
    assert "Access-Control-Allow-Origin" not in resp.headers


# -- body size limit -----------------------------------------------------------------------

async def test_body_larger_than_max_body_bytes_is_policy_violation(
        make_client: Callable[..., Awaitable[TestClient]], fake: FakeUpstreamFactory) -> None:
    """Checklist §O REC: cap the request body size → policy-violation; the server lives on."""
    client = await make_client(max_body_bytes=1024)
    big = req_body("nope", 5, "<message xmlns='jabber:client'><body>" + "x" * 2000 + "</body></message>")
    resp, body = await post(client, big)
    assert resp.status == 200 and parse(body).get("condition") == "policy-violation"
    assert_framing(resp)
    sid, up, resp, _ = await create(client, fake)
    assert resp.status == 200


async def test_chunked_body_larger_than_max_body_bytes_is_policy_violation(
        make_client: Callable[..., Awaitable[TestClient]]) -> None:
    """Checklist §O REC: without Content-Length the limit still holds."""
    client = await make_client(max_body_bytes=1024)

    async def chunks() -> AsyncIterator[bytes]:
        yield req_body("nope", 5, "<m xmlns='x'>")[:-len(b"</body>")]
        for _ in range(10):
            yield b"x" * 300
        yield b"</m></body>"

    resp = await within(client.post(PATH, data=chunks()))
    body = await resp.read()
    assert resp.status == 200 and parse(body).get("condition") == "policy-violation"


async def test_large_body_within_the_limit_is_read_completely(
        client: TestClient, fake: FakeUpstreamFactory) -> None:
    """§5/§8: a body below max_body_bytes (default 1 MiB) is read whole, whatever the TCP
    segmentation, and its payload goes upstream intact."""
    sid, up, _, _ = await create(client, fake)
    text = "x" * 600_000
    payload = f"<message xmlns='jabber:client' to='b@example.com'><body>{text}</body></message>"
    resp, body = await post(client, req_body(sid, 1001, payload))  # held ≤ wait (1 s)
    assert parse(body).get("type") is None, body
    assert len(up.sent) == 1 and text.encode() in up.sent_data[0]


# -- legacy status codes and disconnects ----------------------------------------------------

async def test_legacy_client_gets_http_404_for_rid_above_window(
        client: TestClient, fake: FakeUpstreamFactory) -> None:
    """§17.1 (checklist #99): no 'ver' → HTTP 404 for item-not-found; with 'ver' → 200 (#8)."""
    sid, up, _, _ = await create(client, fake, ver=None)
    resp, _ = await post(client, req_body(sid, 1003))
    assert resp.status == 404
    sid2, up2, _, _ = await create(client, fake)
    resp, _ = await post(client, req_body(sid2, 1003))
    assert resp.status == 200


async def test_legacy_client_gets_http_400_for_bad_creation(client: TestClient) -> None:
    """§17.1 (checklist #99, #14)."""
    resp, _ = await post(client, create_body(ver=None, rid="abc"))
    assert resp.status == 400


async def test_client_disconnect_while_held_keeps_data_for_the_next_request(
        client: TestClient, fake: FakeUpstreamFactory) -> None:
    """Design §4: a browser tab drops its held request; the stanza must reach the next one."""
    from bosh.web import MANAGER_KEY

    sid, up, _, _ = await create(client, fake)
    held = asyncio.create_task(post(client, req_body(sid, 1001)))
    await until(lambda: _held(client, sid))
    held.cancel()
    driver = client.server.app[MANAGER_KEY].registry.get(sid)  # type: ignore[index]
    await until(lambda: any(c() for c in driver._closing.values()), rounds=2000)
    up.deliver(MSG)
    resp, body = await post(client, req_body(sid, 1002))
    assert b"<body>hi</body>" in body


async def test_adapter_failure_is_internal_server_error_not_http_500(
        client: TestClient, fake: FakeUpstreamFactory) -> None:
    """§17.2 internal-server-error (checklist #92): never a bare HTTP 500 page."""
    sid, up, _, _ = await create(client, fake)
    up.fail_send = True
    resp, body = await post(client, req_body(sid, 1001, "<presence xmlns='jabber:client'/>"))
    assert resp.status == 200 and resp.headers["Content-Type"] == XML
    assert parse(body).get("condition") == "internal-server-error"
