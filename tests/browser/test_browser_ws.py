"""Real browsers over XMPP-over-WebSocket (RFC 7395) through bosh-cm.

* Converse.js (``websocket_url`` = bosh-cm's ``ws://`` URL) logs in and chats both ways with a
  plain TCP client.
* Strophe.js 5 with its built-in XEP-0198 support (``enableStreamManagement``) resumes its
  session after the connection drops and after bosh-cm is SIGKILLed and started again on the
  same port; every numbered message of a TCP sender arrives exactly once, in order.

The pages are served from their own loopback origin (another port than bosh-cm), so every
WebSocket handshake carries a cross-origin ``Origin`` header. ``BOSH_ENDPOINTS=prosody`` runs
the parametrized tests against Prosody's own mod_websocket instead: the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import mimetypes
import signal
import socket
import struct
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from tests.browser._helpers import (DEMO_WIRE_JS, REPO, available_peer, chromium_page,
                                    demo_server_module, expect_demo_online, require_browser)
from tests.support.prosody import USERS, ProsodyServer

pytestmark = pytest.mark.browser

NODE_MODULES = REPO / "node_modules"
STROPHE_BUNDLE = NODE_MODULES / "strophe.js" / "dist" / "strophe.umd.min.js"
CONVERSE_DIST = NODE_MODULES / "converse.js" / "dist"
TIMEOUT_MS = 15_000
TIMEOUT = TIMEOUT_MS / 1000


@pytest.fixture
def browser_requirements() -> None:
    require_browser({bundle: f"{bundle.relative_to(REPO)} missing (run `npm ci` in the repo root)"
                     for bundle in (STROPHE_BUNDLE, CONVERSE_DIST / "converse.min.js")})


# ---- the test pages, on their own origin ----------------------------------------------------

CONVERSE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Converse.js over bosh-cm</title>
<link rel="stylesheet" href="/converse/converse.min.css">
</head><body>
<script type="module">
  import converse from '/converse/converse.min.js';  // an ES module since Converse.js 11
  // Only to read the connection's state (the test checks the chat itself in the DOM).
  converse.plugins.add('bosh-cm-test', {
    initialize() { window.converseApi = this._converse.api; }
  });
  window.converse = converse;
</script>
</body></html>
"""

# A small Strophe.js 5 client with XEP-0198 that reconnects by itself like any real client;
# window.sm is the test's handle on it.
SM_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Strophe.js XEP-0198 over bosh-cm</title>
<script src="/vendor/strophe.umd.min.js"></script>
</head><body>
<script>
window.sm = (function () {
  'use strict';
  var S = Strophe.Status;
  var state = { statuses: [], received: [], connects: 0, enabled: 0, resumed: 0, fresh: 0,
                online: false, jid: null };
  var wire = [];
  var conn = null, creds = null, handler = null, retry = null, held = false, stopping = false;
  var backoff = 100;

  function statusName(code) {
    for (var k in S) { if (S[k] === code) return k; }
    return String(code);
  }
  var SECRET = /(<(auth|response|challenge|success)\\b[^>]*>)[^<]+(<\\/\\2>)/g;
  function log(dir, data) {
    wire.push(dir + ' ' + String(data).replace(SECRET, '$1…$3'));
    if (wire.length > 400) wire.shift();
  }

  function onMessage(stanza) {
    var body = stanza.getElementsByTagName('body')[0];
    if (body) state.received.push(body.textContent);
    return true;
  }

  function connect() {
    retry = null;
    state.connects += 1;
    // Strophe drops every handler when a connection ends: add ours again, exactly once.
    if (handler) conn.deleteHandler(handler);
    handler = conn.addHandler(onMessage, null, 'message', 'chat');
    conn.connect(creds.jid, creds.password, onStatus);
  }

  function scheduleReconnect() {
    if (retry || held || stopping) return;
    retry = setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 800);
  }

  function onStatus(code, condition) {
    state.statuses.push(statusName(code) + (condition ? ' ' + condition : ''));
    if (code === S.CONNECTED) {
      backoff = 100;
      state.jid = conn.jid;
      if (conn.hasResumed()) {
        state.resumed += 1;  // XEP-0198 §5: same session, no new presence needed
      } else {
        state.fresh += 1;
        conn.send($pres());
      }
      state.online = true;
    } else if (code === S.DISCONNECTED) {
      state.online = false;
      scheduleReconnect();
    }
  }

  return {
    state: state,
    wire: function () { return wire.join('\\n'); },
    start: function (url, jid, password) {
      creds = { jid: jid, password: password };
      conn = new Strophe.Connection(url, { enableStreamManagement: true,
                                           streamManagement: { maxUnacked: 2 } });
      conn.sm.onEnabled = function () { state.enabled += 1; };
      conn.rawInput = function (d) { log('<-', d); };
      conn.rawOutput = function (d) { log('->', d); };
      connect();
    },
    // Reconnects wait while held (the test sends meanwhile), then go on by themselves.
    hold: function () { held = true; },
    release: function () { held = false; if (!state.online) scheduleReconnect(); },
    // The page itself ends the WebSocket (a close frame) without sending <close/>.
    closeSocket: function () { conn._proto.socket.close(); },
    stop: function () { stopping = true; if (conn) conn.disconnect('test over'); },
  };
})();
</script>
</body></html>
"""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pages = {"/converse.html": CONVERSE_PAGE, "/sm.html": SM_PAGE}

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path = self.path.split("?", 1)[0]
        if path in self.pages:
            return self._send(200, "text/html; charset=utf-8", self.pages[path].encode())
        if path == "/vendor/strophe.umd.min.js":
            return self._send(200, "text/javascript; charset=utf-8", STROPHE_BUNDLE.read_bytes())
        if path.startswith("/converse/"):
            f = (CONVERSE_DIST / path[len("/converse/"):]).resolve()
            if f.is_file() and CONVERSE_DIST.resolve() in f.parents:
                ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
                return self._send(200, ctype, f.read_bytes())
        self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def pages(browser_requirements: None) -> Iterator[str]:
    """Base URL of the test pages: http://127.0.0.1:PORT (another origin than bosh-cm)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ws-test-pages", daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@contextlib.asynccontextmanager
async def ws_page(tmp_path: Path, wire_js: str | None = None) -> AsyncIterator[Any]:
    """A fresh headless Chromium page (loopback only: Converse's fullscreen footer links
    sponsor logos from its web site); on any failure: screenshot, console, WebSocket closes
    and (``wire_js``) the page's own wire log."""
    async with chromium_page(tmp_path, "browser-ws", timeout_ms=TIMEOUT_MS, loopback_only=True,
                             wire_js=wire_js) as (page, console):
        def on_response(r: Any) -> None:
            if r.status >= 400:
                console.append(f"HTTP {r.status}: {r.url}")

        def on_websocket(ws: Any) -> None:
            console.append(f"websocket open: {ws.url}")
            ws.on("close", lambda w: console.append(f"websocket closed: {w.url}"))
            ws.on("socketerror", lambda err: console.append(f"websocket error: {err}"))

        page.on("requestfailed", lambda r: console.append(f"requestfailed: {r.url} {r.failure}"))
        page.on("response", on_response)
        page.on("websocket", on_websocket)
        yield page


# ---- a network path that can lose packets and break ------------------------------------------

@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter    # towards the browser
    upstream: asyncio.StreamWriter  # towards the WebSocket endpoint
    lose_downstream: bool = False


class FlakyNetwork:
    """A transparent TCP relay 127.0.0.1:port -> the endpoint, standing in for the network.

    :meth:`lose` makes what the endpoint sends on the current connections vanish (stanzas the
    server handed over that never reach the client: XEP-0198 must re-send them);
    :meth:`cut` aborts the current connections with a TCP RST both ways (the browser reports
    close code 1006, the endpoint reads ECONNRESET; nobody gets a close frame or ``<close/>``).
    New connections pass untouched."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url_for(self, ws_url: str) -> str:
        """``ws_url`` with this relay's port."""
        scheme, rest = ws_url.split("://", 1)
        return f"{scheme}://127.0.0.1:{self.port}/{rest.split('/', 1)[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:  # endpoint down: the client sees the connection fail, as it would
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer, lambda: False)),
                 asyncio.ensure_future(self._pump(up_reader, writer, lambda: link.lose_downstream))]
        self._tasks.update(pumps)
        await asyncio.wait(pumps)
        self._tasks.difference_update(pumps)
        self._links.discard(link)
        for w in (writer, up_writer):
            w.close()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, losing: Any) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                if not losing():
                    dst.write(data)
                    await dst.drain()
        with contextlib.suppress(OSError, RuntimeError):
            dst.write_eof()

    def lose(self) -> int:
        """From now on the endpoint's bytes on the current connections are lost."""
        for link in self._links:
            link.lose_downstream = True
        return len(self._links)

    def cut(self) -> int:
        """RST the current connections both ways; returns how many were cut."""
        links, self._links = list(self._links), set()
        for link in links:
            for w in (link.client, link.upstream):
                sock = w.get_extra_info("socket")
                if sock is not None:  # SO_LINGER 0: close() sends RST, not FIN
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
        return len(links)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()


@pytest.fixture
async def flaky_network() -> AsyncIterator[Any]:
    """``await flaky_network(ws_url)`` -> a started :class:`FlakyNetwork` in front of it."""
    made: list[FlakyNetwork] = []

    async def factory(ws_url: str) -> FlakyNetwork:
        hostport = ws_url.split("://", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        net = FlakyNetwork(host, int(port))
        await net.start()
        made.append(net)
        return net

    yield factory
    for net in made:
        await net.close()


# ---- Converse.js ----------------------------------------------------------------------------

async def test_converse_logs_in_over_websocket_and_chats_both_ways(
        ws_endpoint: Any, pages: str, xmpp_peer: Any, prosody: ProsodyServer,
        tmp_path: Path) -> None:
    """Converse.js with only ``websocket_url`` set (RFC 7395: SASL, bind, XEP-0198 over the
    endpoint) receives a chat from a TCP client, shows it, and its reply reaches the client."""
    from playwright.async_api import expect

    bob = await available_peer(xmpp_peer, prosody, "bob", timeout=TIMEOUT)
    async with ws_page(tmp_path) as page:
        await page.goto(pages + "/converse.html")
        await page.wait_for_function("() => window.converse")
        await page.evaluate("cfg => converse.initialize(cfg)", {
            "websocket_url": ws_endpoint.url,
            "discover_connection_methods": False,  # no host-meta lookup: use websocket_url
            "jid": "carol@localhost", "password": USERS["carol"], "auto_login": True,
            "view_mode": "fullscreen",
            "auto_join_private_chats": ["bob@localhost"],  # the chat with bob is open
            "assets_path": "/converse/", "i18n": "en", "loglevel": "warn",
            "play_sounds": False, "show_desktop_notifications": False,
            "whitelisted_plugins": ["bosh-cm-test"],
            # OMEMO needs PEP (not in the fixture) and fetches its wasm from the page root.
            "blacklisted_plugins": ["converse-omemo"],
        })
        chat = page.locator('converse-chat[jid="bob@localhost"]')
        await expect(chat.locator("textarea.chat-textarea")).to_be_visible()
        await page.wait_for_function(
            "() => window.converseApi && converseApi.connection.connected()"
            " && converseApi.connection.get().authenticated")
        carol_jid = await page.evaluate("() => converseApi.connection.get().jid")
        assert carol_jid.startswith("carol@localhost/")
        assert await page.evaluate("() => converseApi.connection.get().service") == ws_endpoint.url

        # -- bob -> carol (her full JID: delivered even before her presence is out)
        hello = f"hello carol, from bob {uuid.uuid4().hex[:8]} <b>&amp;</b>"
        bob.send_chat(carol_jid, hello)
        incoming = chat.locator('.chat-msg[data-from^="bob@localhost"] .chat-msg__text')
        await expect(incoming).to_have_text([hello])  # as text, not markup

        # -- carol -> bob from Converse's message form
        reply = f"hi bob, from Converse {uuid.uuid4().hex[:8]}"
        await chat.locator("textarea.chat-textarea").fill(reply)
        await chat.locator("textarea.chat-textarea").press("Enter")
        await expect(chat.locator(".chat-msg__content--me .chat-msg__text")).to_have_text([reply])
        msg = await bob.next_message(timeout=TIMEOUT, body=reply)
        assert msg["from"] == carol_jid
        assert msg["type"] == "chat"

        # -- log out: <close/> ends the stream, nothing stays behind hibernated (XEP-0198)
        await page.evaluate("() => converseApi.user.logout()")
        await page.wait_for_function("() => !converseApi.connection.connected()")


# ---- the demo page (scripts/demo) over WebSocket ------------------------------------------

@pytest.fixture
def demo_page_ws(browser_requirements: None, ws_endpoint: Any) -> Iterator[Any]:
    """The demo page on its own origin, with the WebSocket endpoint under test preconfigured."""
    server = demo_server_module().start("127.0.0.1", 0, bosh_url="http://127.0.0.1:9/unused",
                                         ws_url=ws_endpoint.url)
    yield server
    server.shutdown()
    server.server_close()


async def test_demo_page_chats_over_websocket_chosen_in_the_url(
        demo_page_ws: Any, ws_endpoint: Any, xmpp_peer: Any, prosody: ProsodyServer,
        tmp_path: Path) -> None:
    """``?transport=websocket``: the demo page logs in over the WebSocket URL it was given,
    says so in its status line, and chats both ways with a TCP client."""
    from playwright.async_api import expect

    bob = await available_peer(xmpp_peer, prosody, "bob", timeout=TIMEOUT)
    async with ws_page(tmp_path, DEMO_WIRE_JS) as page:
        await page.goto(demo_page_ws.url + "?transport=websocket")
        await expect(page.locator("#transport-websocket")).to_be_checked()
        await expect(page.locator("#ws-url")).to_have_value(ws_endpoint.url)
        await expect(page.locator("#ws-url")).to_be_visible()
        await expect(page.locator("#bosh-url")).to_be_hidden()
        await page.fill("#jid", "carol@localhost")
        await page.fill("#password", USERS["carol"])
        await page.click("#connect")
        status = await expect_demo_online(page)
        await expect(status).to_have_attribute("data-transport", "websocket")
        await expect(status).to_have_text("Online as carol@localhost over WebSocket")
        carol_jid = await page.locator("#me").get_attribute("data-jid")
        assert carol_jid and carol_jid.startswith("carol@localhost/")

        hello = f"hello over websocket {uuid.uuid4().hex[:8]} <b>&amp;</b>"
        bob.send_chat("carol@localhost", hello)
        incoming = page.locator('#log .msg[data-dir="in"][data-from="bob@localhost"] .text')
        await expect(incoming).to_have_text([hello])

        reply = f"reply over websocket {uuid.uuid4().hex[:8]}"
        await page.fill("#to", "bob@localhost")
        await page.fill("#body", reply)
        await page.click("#send")
        msg = await bob.next_message(timeout=TIMEOUT, body=reply)
        assert msg["from"] == carol_jid

        await page.click("#disconnect")  # <close/>: the session ends, nothing to resume
        await expect(status).to_have_attribute("data-state", "disconnected")
        await expect(status).to_have_text("Disconnected")
        # The choice can be changed on the page too.
        await page.check("#transport-bosh")
        await expect(page.locator("#bosh-url")).to_be_visible()
        await expect(page.locator("#ws-url")).to_be_hidden()
        await expect(status).to_have_attribute("data-transport", "bosh")


# ---- Strophe.js 5 with XEP-0198 stream management ------------------------------------------

SM_WIRE = "() => window.sm ? sm.wire() + '\\nstatuses: ' + sm.state.statuses.join(', ') : ''"


async def start_sm_page(page: Any, pages: str, ws_url: str, user: str) -> str:
    """Open the Strophe page, log in with XEP-0198 enabled; returns the bound full JID."""
    await page.goto(pages + "/sm.html")
    jid = f"{user}@localhost/sm-{uuid.uuid4().hex[:8]}"
    await page.evaluate("([u, j, p]) => sm.start(u, j, p)", [ws_url, jid, USERS[user]])
    # XEP-0198 §3: <enabled resume='true'/> came back: the session is resumable from now on.
    await page.wait_for_function("() => sm.state.online && sm.state.enabled === 1")
    assert await page.evaluate("() => sm.state.jid") == jid
    return jid


async def send_numbered(peer: Any, to: str, numbers: range, tag: str) -> list[str]:
    bodies = [f"{tag} #{n:02d}" for n in numbers]
    for body in bodies:
        peer.send_chat(to, body)
    return bodies


async def routed(peer: Any, prosody: ProsodyServer) -> None:
    """Once the server answers the peer's ping it has routed everything the peer sent before
    (Prosody handles one client's stanzas in order)."""
    await peer.plugin["xep_0199"].ping(prosody.domain, timeout=TIMEOUT)


async def deliver_then_lose(page: Any, net: FlakyNetwork, peer: Any, prosody: ProsodyServer, to: str,
                            tag: str) -> tuple[list[str], list[str]]:
    """#01-#05 arrive; then the network loses what the server sends: #06-#10 (routed) never
    reach the page. Returns (all sent, the lost ones)."""
    sent = await send_numbered(peer, to, range(1, 6), tag)
    await page.wait_for_function("n => sm.state.received.length >= n", arg=len(sent))
    assert net.lose() == 1
    lost = await send_numbered(peer, to, range(6, 11), tag)
    await routed(peer, prosody)
    return sent + lost, lost


async def expect_offline_without(page: Any, lost: list[str]) -> None:
    """The page lost its connection, and none of ``lost`` reached it."""
    await page.wait_for_function("() => !sm.state.online")
    before = await page.evaluate("() => sm.state.received")
    assert not set(lost) & set(before), "the network was meant to lose these"


async def expect_resumed_then_all_once(page: Any, peer: Any, to: str, sent: list[str], tag: str) -> None:
    """The page is back online by a XEP-0198 resume of the same session (the same resource);
    #16-#20 and every one of ``sent`` arrive exactly once, in order; then a clean close
    leaves nothing hibernating."""
    await page.wait_for_function("() => sm.state.online")
    state = await page.evaluate("() => sm.state")
    assert (state["resumed"], state["fresh"]) == (1, 1), state["statuses"]
    assert state["jid"] == to  # the same resource: the same session
    sent = sent + await send_numbered(peer, to, range(16, 21), tag)
    await expect_received_exactly_once(page, peer, to, sent, tag)
    await page.evaluate("() => sm.stop()")
    await page.wait_for_function("() => !sm.state.online")


async def expect_received_exactly_once(page: Any, peer: Any, to: str, sent: list[str], tag: str) -> None:
    """Every one of ``sent`` arrived once, in order: a last marker stanza proves nothing else
    is still on its way (XEP-0198 re-sends come before anything newer)."""
    marker = f"{tag} end"
    peer.send_chat(to, marker)
    await page.wait_for_function("m => sm.state.received.includes(m)", arg=marker)
    received = await page.evaluate("() => sm.state.received")
    assert received[-1] == marker
    got = received[:-1]
    dupes = sorted({b for b in got if got.count(b) > 1})
    assert not dupes, f"delivered more than once: {dupes}"
    assert not set(sent) - set(got), f"lost: {sorted(set(sent) - set(got))}"
    assert got == sent, "all there once, but out of order"


@pytest.mark.parametrize("drop", ["tcp-reset", "close-frame"])
async def test_strophe_resumes_after_dropped_connection_and_every_message_arrives_once(
        drop: str, ws_endpoint: Any, pages: str, xmpp_peer: Any, prosody: ProsodyServer,
        flaky_network: Any, tmp_path: Path) -> None:
    """XEP-0198 §5 through the endpoint: stanzas get lost on the way to the client, then the
    connection drops without ``<close/>`` (``tcp-reset``: RST both ways, a broken network;
    ``close-frame``: the page closes its WebSocket). The session stays resumable upstream,
    Strophe sends ``<resume/>`` on its next connection and gets exactly what it had not
    counted: the lost stanzas and those queued meanwhile, once each, in order."""
    bob = await available_peer(xmpp_peer, prosody, "bob", timeout=TIMEOUT)
    net = await flaky_network(ws_endpoint.url)
    async with ws_page(tmp_path, SM_WIRE) as page:
        alice = await start_sm_page(page, pages, net.url_for(ws_endpoint.url), "alice")
        tag = f"{drop} {uuid.uuid4().hex[:6]}"
        sent, lost = await deliver_then_lose(page, net, bob, prosody, alice, tag)
        await page.evaluate("() => sm.hold()")
        if drop == "tcp-reset":
            assert net.cut() == 1
        else:
            await page.evaluate("() => sm.closeSocket()")
        await expect_offline_without(page, lost)

        # While the client is away: the server keeps the session and queues these.
        sent += await send_numbered(bob, alice, range(11, 16), tag)
        await routed(bob, prosody)

        await page.evaluate("() => sm.release()")
        await expect_resumed_then_all_once(page, bob, alice, sent, tag)


async def test_strophe_resumes_after_boshcm_is_killed_and_restarted_on_the_same_port(
        pages: str, xmpp_peer: Any, prosody: ProsodyServer, boshcm_factory: Any,
        flaky_network: Any, tmp_path: Path) -> None:
    """bosh-cm keeps no XEP-0198 state: SIGKILLed with stanzas in flight, its sockets die
    with it (no ``</stream:stream>`` upstream) and the server keeps the session; Strophe
    retries, reaches the bosh-cm started again on the same port and resumes; every message
    arrives once, in order."""
    cm = boshcm_factory(prosody)
    bob = await available_peer(xmpp_peer, prosody, "bob", timeout=TIMEOUT)
    net = await flaky_network(cm.ws_url)  # only to make sure stanzas are in flight
    async with ws_page(tmp_path, SM_WIRE) as page:
        alice = await start_sm_page(page, pages, net.url_for(cm.ws_url), "alice")
        tag = f"sigkill {uuid.uuid4().hex[:6]}"
        sent, lost = await deliver_then_lose(page, net, bob, prosody, alice, tag)
        port = cm.port
        assert cm.kill() == -signal.SIGKILL
        await expect_offline_without(page, lost)

        # The page retries on its own meanwhile; these wait in the session upstream.
        sent += await send_numbered(bob, alice, range(11, 16), tag)
        await routed(bob, prosody)
        await page.wait_for_function("() => sm.state.connects >= 3")  # it retried in vain

        await asyncio.to_thread(cm.start)
        assert cm.port == port
        await expect_resumed_then_all_once(page, bob, alice, sent, tag)
