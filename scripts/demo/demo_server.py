"""Serve the demo chat page (this folder) plus the Strophe.js browser bundle and a config.js.

Used by scripts/demo/launch.py (``scripts/run``) and by tests/browser. Standard library
only, so it runs before anything is installed. The page is deliberately served from a
different origin than bosh-cm, so every BOSH request is a cross-origin (CORS) request and
every WebSocket handshake carries a foreign ``Origin``.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parent.parent
STROPHE_DIST = REPO_ROOT / "node_modules" / "strophe.js" / "dist"
STROPHE_BUNDLE = STROPHE_DIST / "strophe.umd.min.js"

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
}
_VENDOR = {
    "/vendor/strophe.umd.min.js": "text/javascript; charset=utf-8",
    "/vendor/strophe.umd.min.js.map": "application/json",
}


class DemoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], page_config: dict[str, Any]) -> None:
        super().__init__(addr, _Handler)
        self.page_config = page_config

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path = self.path.split("?", 1)[0]
        if path in _STATIC:
            name, ctype = _STATIC[path]
            self._send(200, ctype, (DEMO_DIR / name).read_bytes())
        elif path in _VENDOR:
            f = STROPHE_DIST / path.rsplit("/", 1)[1]
            if f.is_file():
                self._send(200, _VENDOR[path], f.read_bytes())
            else:
                self._send(404, "text/plain", b"Strophe.js is not installed: run `npm install`\n")
        elif path == "/config.js":
            body = "window.BOSH_DEMO_CONFIG = " + json.dumps(self.server.page_config, indent=2) + ";\n"
            self._send(200, "text/javascript; charset=utf-8", body.encode())
        elif path == "/favicon.ico":
            self._send(204, "image/x-icon", b"")
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def start(host: str, port: int, *, bosh_url: str, ws_url: str | None = None,
          accounts: list[tuple[str, str]] = ()) -> DemoServer:
    """Start serving in a daemon thread; ``port=0`` picks a free one. Stop with ``.shutdown()``.

    ``bosh_url`` and ``ws_url`` (XMPP over WebSocket, RFC 7395) prefill the page's two
    transports; the page lets the user pick one (or ``?transport=websocket``)."""
    page_config = {
        "boshUrl": bosh_url,
        "wsUrl": ws_url or "",
        "accounts": [{"jid": jid, "password": pw} for jid, pw in accounts],
    }
    server = DemoServer((host, port), page_config)
    threading.Thread(target=server.serve_forever, name="demo-http", daemon=True).start()
    return server
