"""A real browser chats through bosh-cm: Chromium + Strophe.js (the demo page) <-> bosh-cm <-> Prosody.

The page (scripts/demo) is served from another loopback origin than bosh-cm, so every
BOSH request is cross-origin and CORS is exercised for real (XEP-0124 §3 lets a client
reach the connection manager from anywhere; browsers need the CORS headers for that).
The other party, bob, is a plain slixmpp client connected straight to Prosody over TCP.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from tests.browser._helpers import (DEMO_WIRE_JS, REPO, available_peer, chromium_page,
                                    demo_server_module, expect_demo_online, require_browser)
from tests.support.prosody import USERS

pytestmark = pytest.mark.browser

TIMEOUT_MS = 20_000


@pytest.fixture
def browser_requirements() -> None:
    require_browser({REPO / "node_modules" / "strophe.js" / "dist" / "strophe.umd.min.js":
                     "node_modules/strophe.js missing (run `npm install` in the repo root)"})


@pytest.fixture
def demo_page(browser_requirements: None, endpoint: Any) -> Iterator[Any]:
    """The demo page on its own loopback origin, preconfigured for the BOSH endpoint under test
    (bosh-cm; BOSH_ENDPOINTS=prosody runs the same test against Prosody's mod_bosh)."""
    server = demo_server_module().start("127.0.0.1", 0, bosh_url=endpoint.url)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
async def bob(prosody: Any, xmpp_peer: Any) -> Any:
    """bob over plain XMPP/TCP (STARTTLS, Prosody's cert as trust anchor), available, with
    XMPP ping (a round trip through Prosody)."""
    return await available_peer(xmpp_peer, prosody, "bob", resource="slixmpp", timeout=TIMEOUT_MS / 1000)


@contextlib.asynccontextmanager
async def demo_chromium_page(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh headless Chromium page; on any failure: screenshot, console and wire log."""
    async with chromium_page(tmp_path, "browser-chat", timeout_ms=TIMEOUT_MS,
                             wire_js=DEMO_WIRE_JS) as (page, console):
        page.on("requestfailed", lambda r: console.append(
            f"requestfailed: {r.method} {r.url} {r.failure} {(r.post_data or '')[:120]}"))
        yield page


async def login(page: Any, user: str) -> None:
    """Fill the login form, connect, and wait until the page is online (presence echoed)."""
    from playwright.async_api import expect

    await page.fill("#jid", f"{user}@localhost")
    await page.fill("#password", USERS[user])
    await page.click("#connect")
    await expect_online(page, user)


async def expect_online(page: Any, user: str) -> None:
    from playwright.async_api import expect

    await expect_demo_online(page)
    await expect(page.locator("#me")).to_have_attribute("data-jid", re.compile(rf"^{user}@localhost/"))


async def test_browser_chat_through_boshcm(demo_page: Any, bob: Any, tmp_path: Path) -> None:
    """Strophe.js in Chromium logs in via bosh-cm (XEP-0206 SASL + bind end to end, CORS from
    another origin), receives a chat message from a TCP client and sends one back, logs out."""
    from playwright.async_api import expect

    async with demo_chromium_page(tmp_path) as page:
        await page.goto(demo_page.url)
        await expect(page.locator("#bosh-url")).to_have_value(demo_page.page_config["boshUrl"])
        await login(page, "alice")

        # -- bob -> alice (bare JID): appears in the page
        hello = f"hello alice, from bob {uuid.uuid4().hex[:8]} <b>&amp;</b>"
        bob.send_chat("alice@localhost", hello)
        incoming = page.locator('#log .msg[data-dir="in"][data-from="bob@localhost"]')
        await expect(incoming).to_have_count(1)
        await expect(incoming.locator(".text")).to_have_text(hello)  # as text, not markup
        assert await incoming.get_attribute("data-from-full") == "bob@localhost/slixmpp"

        # -- alice -> bob from the page: bob's slixmpp client receives it
        reply = f"hi bob, from the browser {uuid.uuid4().hex[:8]}"
        await page.fill("#to", "bob@localhost")
        await page.fill("#body", reply)
        await page.click("#send")
        await expect(page.locator('#log .msg[data-dir="out"]')).to_have_count(1)
        msg = await bob.next_message(timeout=TIMEOUT_MS / 1000)
        assert msg["body"] == reply
        assert msg["from"].bare == "alice@localhost"
        assert msg["type"] == "chat"
        await expect(page.locator("#body")).to_have_value("")

        # -- clean logout: Strophe sends type='terminate' (XEP-0124 §13)
        await page.click("#disconnect")
        await expect(page.locator("#status")).to_have_attribute("data-state", "disconnected")


async def test_message_sent_while_the_page_reloads_is_not_lost(
        demo_page: Any, bob: Any, prosody: Any, tmp_path: Path) -> None:
    """A reload drops the held request (design §4); Strophe's keepalive re-attaches to the same
    BOSH session with the next rid (XEP-0124 §9, §14.3): what came in meanwhile must arrive."""
    from playwright.async_api import expect

    async with demo_chromium_page(tmp_path) as page:
        await page.goto(demo_page.url)
        await login(page, "alice")
        first_jid = await page.locator("#me").get_attribute("data-jid")

        # Leave the page: the browser aborts the held BOSH request; the session lives on.
        await page.goto("about:blank")
        lost_candidate = f"sent during the reload {uuid.uuid4().hex[:8]}"
        bob.send_chat(str(first_jid), lost_candidate)
        # Once the server answers bob's ping, it has routed the message to alice's stream
        # (Prosody handles one client's stanzas in order): it is on its way to the CM.
        await bob.plugin["xep_0199"].ping(prosody.domain, timeout=TIMEOUT_MS / 1000)

        await page.goto(demo_page.url)  # same tab: sessionStorage holds jid/sid/rid
        await expect_online(page, "alice")
        assert await page.locator("#me").get_attribute("data-jid") == first_jid, "a new session, not a re-attach"
        incoming = page.locator('#log .msg[data-dir="in"][data-from="bob@localhost"]')
        await expect(incoming.locator(".text")).to_have_text([lost_candidate])

        # ... and the re-attached session still works both ways.
        after = f"after the reload {uuid.uuid4().hex[:8]}"
        bob.send_chat("alice@localhost", after)
        await expect(incoming.locator(".text")).to_have_text([lost_candidate, after])
        await page.fill("#to", "bob@localhost")
        await page.fill("#body", "still here")
        await page.click("#send")
        msg = await bob.next_message(timeout=TIMEOUT_MS / 1000, body="still here")
        assert msg["from"] == first_jid
