"""Regression tests from a code review of bosh/driver.py and bosh/wire.py, through
Manager.handle (the entry point of bosh/web.py): oversized integers, log-line injection,
an upstream factory that fails at creation. Each reproduces a bug that was fixed."""

from __future__ import annotations

import logging

import pytest

from bosh.driver import Manager, Reply
from bosh.ports import StreamParams, UpstreamListener
from tests.driver._fakes import (
    make_manager,
    NS, TEST_LIMITS, FakeUpstreamFactory, create_body, never_closing, within,
)

BIG = "1" * 5000  # > sys.get_int_max_str_digits() (4300): int() raises ValueError


@pytest.mark.parametrize("over", [{"rid": BIG}, {"wait": BIG}, {"hold": BIG}, {"ver": "1." + BIG},
                                  {"route": "xmpp:example.com:" + BIG}])
async def test_review_huge_integer_attribute_escapes_as_500(manager: Manager, over: dict[str, str]) -> None:
    reply = await within(manager.handle(create_body(**over), never_closing))
    assert isinstance(reply, Reply) and b"type='terminate'" in reply.body


async def test_review_rejected_body_log_line_injection(manager: Manager,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    forged = "urn:x&#10;2026-01-01 00:00:00,000 CRITICAL bosh.driver: forged line"
    data = (f"<body xmlns='{NS}' rid='5' to='example.com'><x xmlns='{forged}'/></body>").encode()
    with caplog.at_level(logging.INFO):
        reply = await within(manager.handle(data, never_closing, "192.0.2.1"))
    assert b"bad-request" in reply.body
    messages = [r.getMessage() for r in caplog.records]
    assert messages and not any("\n" in m or "\r" in m for m in messages), messages


class _RaisingFactory:
    def open(self, params: StreamParams, listener: UpstreamListener) -> object:
        raise RuntimeError("adapter bug")


async def test_review_create_failure_leaks_registry_and_per_ip_slot() -> None:
    m = make_manager(TEST_LIMITS, ["example.com"], 100, _RaisingFactory())  # type: ignore[arg-type]
    try:
        reply = await within(m.handle(create_body(), never_closing, "192.0.2.7"))
        assert b"type='terminate'" in reply.body
    finally:
        leaked = (len(m.registry), m.hub.client_limits.open_for("192.0.2.7"))
        for d in m.registry:  # do not leave a pending future behind
            for fut in d._futures.values():
                fut.cancel()
    assert leaked == (0, 0), leaked


async def test_review_stanza_size_log_uses_unvalidated_sid(fake: FakeUpstreamFactory,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    m = make_manager(TEST_LIMITS, ["example.com"], 100, fake, max_stanza_bytes=256)
    try:
        sid = "x&#10;2026-01-01 00:00:00,000 CRITICAL bosh.driver: forged line"
        big = "<message xmlns='jabber:client'><body>" + "a" * 400 + "</body></message>"
        data = f"<body xmlns='{NS}' sid='{sid}' rid='5'>{big}</body>".encode()
        with caplog.at_level(logging.INFO):
            await within(m.handle(data, never_closing, "192.0.2.1"))
        messages = [r.getMessage() for r in caplog.records]
        assert messages and not any("\n" in msg for msg in messages), messages
    finally:
        await m.shutdown()
