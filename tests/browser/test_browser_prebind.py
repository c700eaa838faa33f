"""Converse.js in headless Chromium with ``authentication: 'prebind'`` (issue 10).

The page comes from a tiny "portal" backend (an aiohttp app on its own loopback origin). Its
``GET /prebind-session`` is Converse.js's ``prebind_url``: the portal, which knows its
logged-in user, calls bosh-cm's ``POST /prebind`` with its API key and the user's password,
and hands the browser ``{jid, sid, rid}``. Converse.js attaches to that BOSH session
(``bosh_service_url`` = bosh-cm, cross-origin) and chats both ways with a plain TCP client.
The browser never sees the password or the key.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from tests.browser._helpers import REPO, available_peer, chromium_page, require_browser
from tests.support.boshcm import BoshCM
from tests.support.prosody import USERS, ProsodyServer

pytestmark = pytest.mark.browser

CONVERSE_DIST = REPO / "node_modules" / "converse.js" / "dist"
TIMEOUT_MS = 20_000
TIMEOUT = TIMEOUT_MS / 1000
KEY = "browser-portal-key-" + "0123456789abcdef"
USER = "carol"


@pytest.fixture
def browser_requirements() -> None:
    require_browser({CONVERSE_DIST / "converse.min.js":
                     "node_modules/converse.js missing (run `npm ci` in the repo root)"})


@pytest.fixture
def prebind_cm(browser_requirements: None, prosody: ProsodyServer, tmp_path: Path) -> Iterator[BoshCM]:
    keys = tmp_path / "prebind.keys"
    keys.write_text(KEY + "\n")
    os.chmod(keys, 0o600)
    cm = BoshCM(tmp_path / "cm", prosody, bosh={"max_wait": 10, "max_inactivity": 30})
    cm.config["prebind"] = {"enabled": True, "api_keys_file": str(keys)}
    cm.start()
    yield cm
    cm.stop()


# ---- the portal: its page and its server-side prebind call ---------------------------------

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Portal with Converse.js (prebind)</title>
<link rel="stylesheet" href="/converse/converse.min.css">
</head><body>
<script type="module">
  import converse from '/converse/converse.min.js';
  converse.plugins.add('bosh-cm-test', {
    initialize() { window.converseApi = this._converse.api; }
  });
  window.converse = converse;
</script>
</body></html>
"""


@contextlib.asynccontextmanager
async def portal(cm: BoshCM) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """The portal on 127.0.0.1:PORT; yields its base URL and the prebind answers it gave."""
    given: list[dict[str, Any]] = []

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def asset(request: web.Request) -> web.StreamResponse:
        f = (CONVERSE_DIST / request.match_info["name"]).resolve()
        if not (f.is_file() and CONVERSE_DIST.resolve() in f.parents):
            raise web.HTTPNotFound()
        ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        return web.Response(body=f.read_bytes(), content_type=ctype)

    async def prebind_session(_: web.Request) -> web.Response:
        # What a portal does for its logged-in user: server to server, key and password
        # never leave it. Converse.js GETs this (prebind_url) and attaches.
        async with aiohttp.ClientSession() as http:
            async with http.post(cm.base_url + "/prebind",
                                 headers={"Authorization": f"Bearer {KEY}"},
                                 json={"jid": f"{USER}@localhost", "password": USERS[USER],
                                       "resource": "portal-" + uuid.uuid4().hex[:6]}) as resp:
                doc = await resp.json()
                if resp.status != 200:
                    return web.json_response(doc, status=502)
        given.append(doc)
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/portal.html", page)
    app.router.add_get("/converse/{name:.+}", asset)
    app.router.add_get("/prebind-session", prebind_session)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", given
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def converse_page(tmp_path: Path) -> AsyncIterator[tuple[Any, list[str]]]:
    """A fresh headless Chromium page (loopback only) and its console log with every request;
    on failure: screenshot and console."""
    async with chromium_page(tmp_path, "browser-prebind", timeout_ms=TIMEOUT_MS,
                             loopback_only=True) as (page, console):
        page.on("request", lambda r: console.append(f"request: {r.method} {r.url} "
                                                    f"{(r.post_data or '')[:200]}"))
        yield page, console


async def test_converse_prebind_attaches_to_the_portals_session_and_chats_with_a_tcp_user(
        prebind_cm: BoshCM, prosody: ProsodyServer, xmpp_peer: Any, tmp_path: Path) -> None:
    bob = await available_peer(xmpp_peer, prosody, "bob", timeout=TIMEOUT)
    async with portal(prebind_cm) as (base, given), converse_page(tmp_path) as (page, console):
        await page.goto(base + "/portal.html")
        await page.wait_for_function("() => window.converse")
        await page.evaluate("cfg => converse.initialize(cfg)", {
            "authentication": "prebind",
            "prebind_url": base + "/prebind-session",
            "bosh_service_url": prebind_cm.url,   # another origin: CORS
            "jid": f"{USER}@localhost", "auto_login": True,
            "discover_connection_methods": False,
            "view_mode": "fullscreen",
            "auto_join_private_chats": ["bob@localhost"],
            "assets_path": "/converse/", "i18n": "en", "loglevel": "warn",
            "play_sounds": False, "show_desktop_notifications": False,
            "whitelisted_plugins": ["bosh-cm-test"],
            "blacklisted_plugins": ["converse-omemo"],  # needs PEP and its own wasm
        })
        await page.wait_for_function(
            "() => window.converseApi && converseApi.connection.connected()"
            " && converseApi.connection.get().authenticated")
        assert len(given) == 1, "Converse.js asked the portal for one prebound session"
        jid = await page.evaluate("() => converseApi.connection.get().jid")
        assert jid == given[0]["jid"] and jid.startswith(f"{USER}@localhost/portal-")
        assert await page.evaluate("() => converseApi.connection.get().service") == prebind_cm.url
        # Attached, not logged in: no SASL from the browser, its first rid is the one handed out.
        bosh_posts = [c for c in console if c.startswith("request: POST " + prebind_cm.url)]
        assert bosh_posts and all("<auth" not in c and "<response" not in c for c in bosh_posts)
        assert f"rid=\"{given[0]['rid']}\"" in bosh_posts[0] or f"rid='{given[0]['rid']}'" in bosh_posts[0]
        assert not [c for c in console if USERS[USER] in c or KEY in c]

        chat = page.locator('converse-chat[jid="bob@localhost"]')
        await chat.locator("textarea.chat-textarea").wait_for(state="visible")

        # -- bob -> carol (her full JID)
        hello = f"hello carol, from bob {uuid.uuid4().hex[:8]} <b>&amp;</b>"
        bob.send_chat(jid, hello)
        incoming = chat.locator('.chat-msg[data-from^="bob@localhost"] .chat-msg__text')
        from playwright.async_api import expect

        await expect(incoming).to_have_text([hello])

        # -- carol -> bob from Converse's message form
        reply = f"hi bob, from the prebound Converse {uuid.uuid4().hex[:8]}"
        await chat.locator("textarea.chat-textarea").fill(reply)
        await chat.locator("textarea.chat-textarea").press("Enter")
        msg = await bob.next_message(timeout=TIMEOUT, body=reply)
        assert msg["from"] == jid and msg["type"] == "chat"

        await page.evaluate("() => converseApi.user.logout()")
        await page.wait_for_function("() => !converseApi.connection.connected()")
