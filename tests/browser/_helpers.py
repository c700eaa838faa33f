"""What the browser tests share: their requirements, the demo page's server, a headless
Chromium page with failure diagnostics, and a TCP peer that is available.

Imported as ``tests.browser._helpers`` (the repository root is on sys.path under
``python -m pytest``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# design.md §7; Playwright adds --headless itself and gives the browser a fresh profile dir.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The demo page's own wire log (scripts/demo), for a failure report.
DEMO_WIRE_JS = "() => document.querySelector('#wire').textContent"


def missing(reason: str) -> None:
    if os.environ.get("CI") == "true":  # design.md §7: fail, not skip, in CI
        pytest.fail(reason + " (CI=true: browser tests must run)", pytrace=False)
    pytest.skip(reason)


def require_browser(bundles: Mapping[Path, str]) -> None:
    """Chromium, the JavaScript bundles (path -> what to say when it is missing) and the
    Playwright package are there, or the test is skipped (fails under CI=true)."""
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        missing(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    for bundle, reason in bundles.items():
        if not bundle.is_file():
            missing(reason)
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing("playwright (Python package) is not installed: pip install -e '.[test]'")


def demo_server_module() -> Any:
    """scripts/demo/demo_server.py, loaded once (scripts do not import tests, nor tests
    scripts as packages)."""
    if "bosh_demo_server" in sys.modules:
        return sys.modules["bosh_demo_server"]
    path = REPO / "scripts" / "demo" / "demo_server.py"
    spec = importlib.util.spec_from_file_location("bosh_demo_server", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def chromium_page(tmp_path: Path, name: str, *, timeout_ms: int, loopback_only: bool = False,
                        wire_js: str | None = None) -> AsyncIterator[tuple[Any, list[str]]]:
    """A fresh headless Chromium page and its console log (the caller may add listeners that
    append to it). A ``pageerror`` fails the test; on any failure: a screenshot
    (``<name>-failure.png``), the console tail and (``wire_js``) the page's own wire log.
    ``loopback_only`` aborts requests to anywhere else (Converse links logos from its site)."""
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=timeout_ms)
    console: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        page.set_default_timeout(timeout_ms)
        if loopback_only:
            async def block(route: Any) -> None:
                console.append(f"blocked: {route.request.url}")
                await route.abort("blockedbyclient")

            await page.route(lambda url: not url.startswith("http://127.0.0.1:"), block)
        page.on("console", lambda m: console.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        try:
            yield page, console
            assert not [c for c in console if c.startswith("pageerror")], console
        except BaseException:
            shot = tmp_path / f"{name}-failure.png"
            wire = ""
            try:
                await page.screenshot(path=str(shot), full_page=True)
                if wire_js:
                    wire = await page.evaluate(wire_js)
            except Exception as exc:  # the page itself may be gone
                wire = f"(no wire log: {exc})"
            print(f"screenshot: {shot}\nbrowser console:\n" + "\n".join(console[-200:])
                  + (f"\nwire log (tail):\n{(wire or '')[-6000:]}" if wire_js else ""))
            raise
        finally:
            await browser.close()


async def available_peer(xmpp_peer: Any, prosody: Any, user: str, *, timeout: float,
                         resource: str | None = None) -> Any:
    """``user`` over plain XMPP/TCP (STARTTLS), available, with XMPP ping for round trips
    (``resource`` defaults to ``tcp-<random>``)."""
    peer = await xmpp_peer(prosody, user, resource=resource or "tcp-" + uuid.uuid4().hex[:6])
    peer.register_plugin("xep_0199")
    while True:  # RFC 6121 §4.2.2: the reflected initial presence says we are available
        pres = await asyncio.wait_for(peer.presences.get(), timeout)
        if pres["from"] == peer.boundjid and pres["type"] == "available":
            return peer


async def expect_demo_online(page: Any) -> Any:
    """The demo page's status reaches online; returns the status locator. Stops waiting at the
    first terminal state, then demands the good one (fails fast on an error)."""
    from playwright.async_api import expect

    status = page.locator("#status")
    await expect(status).to_have_attribute("data-state", re.compile(r"^(online|error)$"))
    await expect(status).to_have_attribute("data-state", "online", timeout=1)
    return status
