"""A real browser chats through bosh-cm: Chromium + Strophe.js (the demo page) <-> bosh-cm <-> Prosody.

The page (scripts/demo) is served from another loopback origin than bosh-cm, so every
BOSH request is cross-origin and CORS is exercised for real (XEP-0124 §3 lets a client
reach the connection manager from anywhere; browsers need the CORS headers for that).
The other party, bob, is a plain slixmpp client connected straight to Prosody over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from tests.support.prosody import USERS

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# design.md §7; Playwright adds --headless itself and gives the browser a fresh profile dir.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: browser tests must run)")
    pytest.skip(reason)


def _load_demo_server() -> Any:
    path = REPO / "scripts" / "demo" / "demo_server.py"
    spec = importlib.util.spec_from_file_location("bosh_demo_server", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def browser_requirements() -> None:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        _missing(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    if not (REPO / "node_modules" / "strophe.js" / "dist" / "strophe.umd.min.js").is_file():
        _missing("node_modules/strophe.js missing (run `npm install` in the repo root)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _missing("playwright (Python package) is not installed: pip install -e '.[test]'")


@pytest.fixture
def demo_page(browser_requirements: None, endpoint: Any) -> Iterator[Any]:
    """The demo page on its own loopback origin, preconfigured for the BOSH endpoint under test
    (bosh-cm; BOSH_ENDPOINTS=prosody runs the same test against Prosody's mod_bosh)."""
    demo_server = _load_demo_server()
    server = demo_server.start("127.0.0.1", 0, bosh_url=endpoint.url)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
async def bob(prosody: Any, xmpp_peer: Any) -> Any:
    """bob over plain XMPP/TCP (STARTTLS, Prosody's cert as trust anchor), available."""
    peer = await xmpp_peer(prosody, "bob", resource="slixmpp")
    peer.register_plugin("xep_0199")  # XMPP ping: a round trip through Prosody
    # RFC 6121 §4.2.2: the server reflects initial presence back: then bob is available.
    while True:
        pres = await asyncio.wait_for(peer.presences.get(), TIMEOUT_MS / 1000)
        if pres["from"] == peer.boundjid and pres["type"] == "available":
            return peer


@contextlib.asynccontextmanager
async def chromium_page(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh headless Chromium page; on any failure: screenshot, console and wire log."""
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_MS)
    console: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", lambda m: console.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: console.append(
            f"requestfailed: {r.method} {r.url} {r.failure} {(r.post_data or '')[:120]}"))
        try:
            yield page
            assert not [c for c in console if c.startswith("pageerror")], console
        except BaseException:
            shot = tmp_path / "browser-chat-failure.png"
            try:
                await page.screenshot(path=str(shot), full_page=True)
                wire = await page.locator("#wire").text_content(timeout=2000)
            except Exception as exc:  # the page itself may be gone
                wire = f"(no wire log: {exc})"
            print(f"screenshot: {shot}\nbrowser console:\n" + "\n".join(console)
                  + f"\nwire log (tail):\n{(wire or '')[-4000:]}")
            raise
        finally:
            await browser.close()


async def login(page: Any, user: str) -> None:
    """Fill the login form, connect, and wait until the page is online (presence echoed)."""
    from playwright.async_api import expect

    await page.fill("#jid", f"{user}@localhost")
    await page.fill("#password", USERS[user])
    await page.click("#connect")
    await expect_online(page, user)


async def expect_online(page: Any, user: str) -> None:
    from playwright.async_api import expect

    status = page.locator("#status")
    # Stop waiting at the first terminal state, then demand the good one (fails fast).
    await expect(status).to_have_attribute("data-state", _re(r"^(online|error)$"))
    await expect(status).to_have_attribute("data-state", "online", timeout=1)
    await expect(page.locator("#me")).to_have_attribute("data-jid", _re(rf"^{user}@localhost/"))


async def test_browser_chat_through_boshcm(demo_page: Any, bob: Any, tmp_path: Path) -> None:
    """Strophe.js in Chromium logs in via bosh-cm (XEP-0206 SASL + bind end to end, CORS from
    another origin), receives a chat message from a TCP client and sends one back, logs out."""
    from playwright.async_api import expect

    async with chromium_page(tmp_path) as page:
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

    async with chromium_page(tmp_path) as page:
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


def _re(pattern: str) -> Any:
    import re

    return re.compile(pattern)
