"""Operator-driven terminal conditions: see-other-uri for draining a node and host-gone when
a domain stops being served (XEP-0124 §17.2; checklist #91, #96)."""

from __future__ import annotations

import asyncio

from lxml import etree

from bosh.driver import Manager
from bosh.limits import ClientLimits
from tests.driver._fakes import (
    make_manager,
    NS, TEST_LIMITS, FakeUpstreamFactory, create_body, never_closing, req_body, sid_of, until,
    within,
)


async def _open(manager: Manager, fake: FakeUpstreamFactory, to: str) -> str:
    task = asyncio.create_task(manager.handle(create_body(to=to), never_closing))
    up = await fake.next_open(len(fake.opened) + 1)
    up.ready()
    return sid_of((await within(task)).body)


def _reload(manager: Manager, domains: list[str], see_other_uri: str = "") -> None:
    manager.reload(TEST_LIMITS, 100, ClientLimits(), 0, domains, see_other_uri)


async def test_see_other_uri_sends_new_sessions_elsewhere_and_keeps_open_ones(
        fake: FakeUpstreamFactory) -> None:
    """#96: the creation answer is TERM(see-other-uri) with a <uri/> child; open sessions go on."""
    manager = make_manager(TEST_LIMITS, ["example.com"], 100, fake)
    sid = await _open(manager, fake, "example.com")
    _reload(manager, ["example.com"], "https://other.example/http-bind?a=1&b=2")
    reply = await within(manager.handle(create_body(), never_closing))
    root = etree.fromstring(reply.body)
    assert (root.get("type"), root.get("condition")) == ("terminate", "see-other-uri")
    assert root.findtext(f"{{{NS}}}uri") == "https://other.example/http-bind?a=1&b=2"
    assert len(fake.opened) == 1  # no upstream was opened for the refused creation
    held = asyncio.create_task(manager.handle(req_body(sid, 1001), never_closing))
    await until(lambda: manager.registry.get(sid).session.held_count == 1)  # type: ignore[union-attr]
    assert not held.done()
    await manager.shutdown()
    await within(held)


async def test_dropping_a_domain_ends_its_sessions_with_host_gone(fake: FakeUpstreamFactory) -> None:
    """#91: the held request of a session whose domain is no longer served gets host-gone,
    a session of a domain still served is untouched, and a new creation is host-unknown."""
    manager = make_manager(TEST_LIMITS, ["example.com", "other.example"], 100, fake)
    gone = await _open(manager, fake, "example.com")
    kept = await _open(manager, fake, "other.example")
    held = asyncio.create_task(manager.handle(req_body(gone, 1001), never_closing))
    await until(lambda: manager.registry.get(gone).session.held_count == 1)  # type: ignore[union-attr]
    _reload(manager, ["other.example"])
    root = etree.fromstring((await within(held)).body)
    assert (root.get("type"), root.get("condition")) == ("terminate", "host-gone")
    assert fake.opened[0].closed
    assert manager.registry.get(gone) is None and manager.registry.get(kept) is not None
    again = etree.fromstring((await within(manager.handle(create_body(), never_closing))).body)
    assert again.get("condition") == "host-unknown"
    await manager.shutdown()
