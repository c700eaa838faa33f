"""bosh.driver: Manager.handle and SessionDriver with a fake upstream (design §4).

Real Manager/Session objects, a fake UpstreamFactory at the edge. Every await has a deadline;
nothing sleeps for time (the wait-expiry test waits on the driver's own 1 s timer)."""

from __future__ import annotations

import asyncio

import pytest
from lxml import etree

from bosh import session as session_mod
from bosh.driver import Manager, Reply
from bosh.errors import Condition
from bosh.ports import NS_STREAM
from tests.driver._fakes import (
    make_manager,
    TEST_LIMITS, Closing, ManualClock, FakeUpstream, FakeUpstreamFactory, NS, XB, create_body, never_closing, req_body,
    sid_of, until, within,
)

MSG = b"<message xmlns='jabber:client' from='b@example.com/r' to='a@example.com'><body>hi</body></message>"


def parse(data: bytes) -> etree._Element:
    root = etree.fromstring(data, etree.XMLParser(recover=False, resolve_entities=False))
    assert root.tag == f"{{{NS}}}body"
    return root


def is_terminate(reply: Reply, condition: str | None) -> bool:
    root = parse(reply.body)
    return root.get("type") == "terminate" and root.get("condition") == condition


def is_empty(reply: Reply) -> bool:
    root = parse(reply.body)
    return len(root) == 0 and root.get("type") is None


async def create(manager: Manager, fake: FakeUpstreamFactory, **over: str | None
                 ) -> tuple[str, FakeUpstream, Reply]:
    task = asyncio.create_task(manager.handle(create_body(**over), never_closing))
    up = await fake.next_open(len(fake.opened) + 1)
    assert not task.done()  # 0206 §4: answered only once the features arrived
    up.ready()
    reply = await within(task)
    return sid_of(reply.body), up, reply


def held(manager: Manager, sid: str, count: int = 1):  # type: ignore[no-untyped-def]
    def check() -> bool:
        driver = manager.registry.get(sid)
        return driver is not None and driver.session is not None and driver.session.held_count == count
    return check


async def send(manager: Manager, sid: str, rid: int, payload: str = "", closing=never_closing,  # type: ignore[no-untyped-def]
               **attrs: str) -> "asyncio.Task[Reply]":
    return asyncio.create_task(manager.handle(req_body(sid, rid, payload, **attrs), closing))


# -- creation -------------------------------------------------------------------------------

async def test_creation_opens_upstream_and_answers_once_ready(manager: Manager, fake: FakeUpstreamFactory) -> None:
    """XEP-0124 §7.2, XEP-0206 §3/§4 (checklist #20, #29, #30, #32, #41)."""
    sid, up, reply = await create(manager, fake, **{"xml:lang": "de"})
    assert (up.params.to, up.params.lang, up.params.version) == ("example.com", "de", "1.0")
    assert reply.status == 200 and reply.content_type == "text/xml; charset=utf-8"
    root = parse(reply.body)
    assert root.get("sid") == sid and root.get("wait") == "1" and root.get("requests") == "2"
    assert root.get(f"{{{XB}}}restartlogic") in ("true", "1")
    assert root[0].tag == f"{{{NS_STREAM}}}features"
    assert manager.registry.get(sid) is not None


@pytest.mark.parametrize("over,condition", [
    ({"to": None}, "improper-addressing"),
    ({"to": "unknown.invalid"}, "host-unknown"),
    ({"rid": "x"}, "bad-request"),
    ({"ver": "1.x"}, "bad-request"),
])
async def test_creation_refused_without_opening_upstream(manager: Manager, fake: FakeUpstreamFactory,
                                                         over: dict[str, str | None], condition: str) -> None:
    """§17.2 (checklist #21, #22, #14, #23): refused with HTTP 200 + terminal body, and no
    upstream connection is attempted."""
    reply = await within(manager.handle(create_body(**over), never_closing))
    assert reply.status == 200 and is_terminate(reply, condition)
    assert fake.opened == [] and len(manager.registry) == 0


@pytest.mark.parametrize("over,status", [({"rid": "x"}, 400), ({"to": None}, 200)])
async def test_legacy_creation_refusal_uses_http_status(manager: Manager, fake: FakeUpstreamFactory,
                                                        over: dict[str, str | None], status: int) -> None:
    """§17.1 (checklist #99): a client without 'ver' gets 400 for bad-request; other
    conditions have no legacy code and stay 200."""
    reply = await within(manager.handle(create_body(ver=None, **over), never_closing))
    assert reply.status == status


async def test_upstream_failure_during_creation_is_remote_connection_failed(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§17.2 (checklist #94a)."""
    task = asyncio.create_task(manager.handle(create_body(), never_closing))
    up = await fake.next_open(1)
    up.lose()
    reply = await within(task)
    assert is_terminate(reply, "remote-connection-failed")
    assert len(manager.registry) == 0


async def test_unknown_sid_is_item_not_found_with_status_200(manager: Manager) -> None:
    """§7.1 (checklist #19, Q5)."""
    reply = await within(manager.handle(req_body("nope", 1001), never_closing))
    assert reply.status == 200 and is_terminate(reply, "item-not-found")


async def test_malformed_body_without_session_is_bad_request(manager: Manager) -> None:
    """§17.2 bad-request (checklist #90)."""
    reply = await within(manager.handle(b"<body xmlns='urn:wrong' rid='1'/>", never_closing))
    assert reply.status == 200 and is_terminate(reply, "bad-request")


# -- held requests ----------------------------------------------------------------------------

async def test_held_request_is_answered_when_upstream_delivers(manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§8 (checklist #45, #53): payload forwarded while held; data answers the held request."""
    sid, up, _ = await create(manager, fake)
    task = await send(manager, sid, 1001, "<message to='b@example.com'><body>x</body></message>")
    await within(up.sent_event.wait())
    assert not task.done()
    assert etree.fromstring(up.sent_data[0]).tag == "{jabber:client}message"
    up.deliver(MSG)
    reply = await within(task)
    root = parse(reply.body)
    assert [c.tag for c in root] == ["{jabber:client}message"]


async def test_timer_answers_held_request_with_empty_body_when_wait_expires(
        clocked: Manager, fake: FakeUpstreamFactory, clock: ManualClock) -> None:
    """§8 SHOULD (checklist #49, #50): max_wait 1 s; the session's one timer fires, at 'wait'
    and not before (the clock is turned by hand: nothing waits for real time)."""
    sid, up, _ = await create(clocked, fake, wait="1")
    task = await send(clocked, sid, 1001)
    await until(held(clocked, sid))
    clock.advance(0.99)
    await until(lambda: True)
    assert not task.done()
    clock.advance(0.01)
    reply = await within(task)
    assert is_empty(reply)
    assert clocked.registry.get(sid) is not None


async def test_client_disconnect_before_delivery_keeps_data_for_the_next_request(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """Design §4: a held request whose transport is closing gets nothing; the data goes to the
    next request instead of being lost."""
    sid, up, _ = await create(manager, fake)
    closing = Closing()
    first = await send(manager, sid, 1001, closing=closing)
    await until(held(manager, sid))
    closing.closed = True
    up.deliver(MSG)
    dropped = await within(first)
    assert b"hi" not in dropped.body
    second = await send(manager, sid, 1002)
    reply = await within(second)
    assert b"<body>hi</body>" in reply.body


async def test_cancelled_request_keeps_data_for_the_next_request(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """Design §4 (aiohttp handler cancellation): request_gone, data kept."""
    sid, up, _ = await create(manager, fake)
    first = await send(manager, sid, 1001)
    await until(held(manager, sid))
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    up.deliver(MSG)
    reply = await within(await send(manager, sid, 1002))
    assert b"<body>hi</body>" in reply.body


async def test_hold_overflow_answers_the_older_request(manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§8 (checklist #51): with payload, never overactivity."""
    sid, up, _ = await create(manager, fake)
    first = await send(manager, sid, 1001)
    await until(held(manager, sid))
    second = await send(manager, sid, 1002, "<presence xmlns='jabber:client'/>")
    assert is_empty(await within(first))
    assert not second.done()
    up.deliver(MSG)
    assert b"hi" in (await within(second)).body


async def test_early_rid_waits_for_the_gap_and_payloads_go_up_in_order(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§8 + §14.2 MUST (checklist #46, #56)."""
    sid, up, _ = await create(manager, fake)
    second = await send(manager, sid, 1002, "<message xmlns='jabber:client'><body>B</body></message>")
    await asyncio.sleep(0)
    assert up.sent == []
    first = await send(manager, sid, 1001, "<message xmlns='jabber:client'><body>A</body></message>")
    await within(first)
    assert [b"A" in d for d in up.sent_data] == [True, False]
    assert not second.done()


async def test_repeated_rid_is_replayed_from_cache_without_resending(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§14.3 (checklist #59): a synchronously answered replay is byte-identical."""
    sid, up, _ = await create(manager, fake)
    payload = "<message xmlns='jabber:client'><body>M</body></message>"
    first = await send(manager, sid, 1001, payload)
    await until(held(manager, sid))
    up.deliver(MSG)
    original = await within(first)
    replay = await within(manager.handle(req_body(sid, 1001, payload), never_closing))
    assert replay == original
    assert len(up.sent) == 1


async def test_terminate_closes_upstream_and_forgets_the_session(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§13 (checklist #86, #87, #88)."""
    sid, up, _ = await create(manager, fake)
    reply = await within(manager.handle(
        req_body(sid, 1001, "<presence xmlns='jabber:client' type='unavailable'/>", type="terminate"),
        never_closing))
    assert is_terminate(reply, None)
    assert b"unavailable" in up.sent_data[0] and up.closed >= 1
    assert manager.registry.get(sid) is None
    again = await within(manager.handle(req_body(sid, 1002), never_closing))
    assert is_terminate(again, "item-not-found")


async def test_upstream_loss_with_held_request(manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§17.2 (checklist #94b)."""
    sid, up, _ = await create(manager, fake)
    task = await send(manager, sid, 1001)
    await until(held(manager, sid))
    up.lose()
    assert is_terminate(await within(task), "remote-connection-failed")
    assert manager.registry.get(sid) is None


async def test_restart_request_restarts_upstream_with_lang(manager: Manager, fake: FakeUpstreamFactory) -> None:
    """XEP-0206 §5 (checklist #119, #121, #122)."""
    sid, up, _ = await create(manager, fake)
    task = await send(manager, sid, 1001, "<presence xmlns='jabber:client'/>",
                      to="example.com", xml_lang="de", xmpp_restart="1")
    await until(held(manager, sid))
    assert [p.lang for p in up.restarts] == ["de"] and up.sent == []
    up.deliver(b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>")
    assert b"xmpp-bind" in (await within(task)).body


async def test_content_attribute_is_the_content_type_of_every_reply(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§7.1 MUST (checklist #7): creation, held, replayed and terminal replies."""
    ctype = "text/html; charset=utf-8"
    sid, up, created = await create(manager, fake, content=ctype)
    task = await send(manager, sid, 1001)
    await until(held(manager, sid))
    up.deliver(MSG)
    held_reply = await within(task)
    replay = await within(manager.handle(req_body(sid, 1001), never_closing))
    final = await within(manager.handle(req_body(sid, 1002, type="terminate"), never_closing))
    assert [r.content_type for r in (created, held_reply, replay, final)] == [ctype] * 4


async def test_shutdown_answers_held_requests_with_system_shutdown(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§17.2 system-shutdown (checklist #97): held requests told, upstream closed, no new
    sessions."""
    sid, up, _ = await create(manager, fake)
    task = await send(manager, sid, 1001)
    await until(held(manager, sid))
    await within(manager.shutdown())
    assert is_terminate(await within(task), "system-shutdown")
    # RFC 6120 §4.4: our closing tag first, the stream read until the server's (finish)
    assert up.finished == 1 and len(manager.registry) == 0
    refused = await within(manager.handle(create_body(), never_closing))
    assert is_terminate(refused, "system-shutdown")
    assert len(fake.opened) == 1


async def test_core_exception_becomes_internal_server_error(
        manager: Manager, fake: FakeUpstreamFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """§17.2 internal-server-error (checklist #92): a core bug never escapes as an exception."""
    sid, up, _ = await create(manager, fake)

    def boom(self, request, body, now):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected")

    monkeypatch.setattr(session_mod.Session, "receive", boom)
    reply = await within(manager.handle(req_body(sid, 1001), never_closing))
    assert reply.status == 200 and is_terminate(reply, "internal-server-error")
    assert up.closed >= 1 and manager.registry.get(sid) is None


async def test_session_limit_refuses_with_policy_violation(fake: FakeUpstreamFactory) -> None:
    """Design §9: cap on sessions in total."""
    m = make_manager(TEST_LIMITS, ["example.com"], 1, fake)
    await create(m, fake)
    reply = await within(m.handle(create_body(), never_closing))
    assert is_terminate(reply, "policy-violation")
    await m.shutdown()


# -- fatal errors under a valid sid -----------------------------------------------------------

async def test_rid_above_window_ends_session_and_tells_held_request_other_request(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§14.2 + §17.2 other-request (checklist #57, #93)."""
    sid, up, _ = await create(manager, fake)
    task = await send(manager, sid, 1001)
    await until(held(manager, sid))
    bad = await within(manager.handle(req_body(sid, 1005), never_closing))
    assert is_terminate(bad, "item-not-found")
    assert is_terminate(await within(task), "other-request")
    assert up.closed >= 1


async def test_malformed_body_under_valid_sid_ends_session_with_other_request(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§17.2 bad-request + other-request (checklist #93): REQ(N+2, P=<!-- x -->) → N+2 gets
    bad-request and the held N+1 gets other-request; the session is over."""
    sid, up, _ = await create(manager, fake)
    task = await send(manager, sid, 1001)
    await until(held(manager, sid))
    data = f"<body xmlns='{NS}' sid='{sid}' rid='1002'><!-- x --></body>".encode()
    bad = await within(manager.handle(data, never_closing))
    assert is_terminate(bad, "bad-request")
    assert is_terminate(await within(task, 0.5), "other-request")


async def test_legacy_client_malformed_payload_under_valid_sid_is_http_400(
        manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§17.1 (checklist #99): a malformed payload under a valid sid → 400 for a legacy client."""
    sid, up, _ = await create(manager, fake, ver=None)
    data = f"<body xmlns='{NS}' sid='{sid}' rid='1001'><!-- x --></body>".encode()
    reply = await within(manager.handle(data, never_closing))
    assert reply.status == 400


async def test_legacy_client_rid_above_window_is_404(manager: Manager, fake: FakeUpstreamFactory) -> None:
    """§17.1 (checklist #99)."""
    sid, up, _ = await create(manager, fake, ver=None)
    reply = await within(manager.handle(req_body(sid, 1003), never_closing))
    assert reply.status == 404
