"""Start a complete local bosh-cm demo: Prosody + bosh-cm + the demo chat page.

Run through ``scripts/run`` (which installs everything first), or directly with the venv
python from the repo root: ``.venv/bin/python scripts/demo/launch.py [--help]``.

    browser (page on :8080) --BOSH (CORS) or WebSocket--> bosh-cm (:5280) --XMPP+STARTTLS--> Prosody

Everything it writes lives in ./demo-state/ (Prosody's config, cert, data and log; the
bosh-cm config). Ctrl-C (or SIGTERM) stops all three.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_server  # noqa: E402  (this folder)
from scripts.lib.prosody import ProsodyError, ProsodyServer  # noqa: E402

DOMAIN = "localhost"
ACCOUNTS = [("alice", "alice-demo"), ("bob", "bob-demo")]
LISTENING = re.compile(r"listening on (http://\S+)")
WS_PATH = "/xmpp-websocket"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        sys.exit(f"error: ${name} must be a port number, got {value!r}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=os.environ.get("DEMO_HOST", "127.0.0.1"),
                   help="address for bosh-cm and the page (env DEMO_HOST; default 127.0.0.1)")
    p.add_argument("--bosh-port", type=int, default=_env_int("BOSH_PORT", 5280),
                   help="bosh-cm HTTP port (env BOSH_PORT; default 5280)")
    p.add_argument("--page-port", type=int, default=_env_int("DEMO_PORT", 8080),
                   help="port of the demo chat page (env DEMO_PORT; default 8080)")
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("DEMO_STATE", REPO / "demo-state")),
                   help="where Prosody and the bosh-cm config live (env DEMO_STATE; default ./demo-state)")
    p.add_argument("--check", action="store_true",
                   help="start everything, check that the page loads, that bosh-cm opens a BOSH "
                        "session for it (with CORS) and an XMPP stream over WebSocket (with the "
                        "page's Origin), then stop: a smoke test")
    return p.parse_args()


def port_is_free(host: str, port: int) -> tuple[bool, str]:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False, "already in use"
            return False, exc.strerror or str(exc)
    return True, ""


def _who_listens(port: int) -> str:
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(r'users:\(\("([^"]+)"', out)
    return f" (by {m.group(1)})" if m else ""


def write_boshcm_config(path: Path, args: argparse.Namespace, prosody: ProsodyServer) -> None:
    page_origins = [f"http://{args.host}:{args.page_port}"]
    if args.host in ("127.0.0.1", "localhost"):
        page_origins = [f"http://127.0.0.1:{args.page_port}", f"http://localhost:{args.page_port}"]
    else:  # listening on a LAN address or 0.0.0.0: pages may be opened under any name
        page_origins = ["*"]
    origins = ", ".join(f'"{o}"' for o in page_origins)
    path.write_text(f"""# Written by scripts/demo/launch.py for the local demo; rewritten at every start.
# Every key is documented in conf/bosh-cm.toml.

[http]
host = "{args.host}"
port = {args.bosh_port}
path = "/http-bind"
# Only the demo page may call us from a browser (CORS; also the WebSocket Origin check).
cors_origins = [{origins}]

[websocket]
# XMPP over WebSocket (RFC 7395) on the same port; origins = [] means cors_origins above.
enabled = true
path = "{WS_PATH}"
origins = []

[upstream]
domains = ["{DOMAIN}"]
# The throwaway Prosody started by the launcher, with its self-signed certificate.
host = "{prosody.host}"
port = {prosody.c2s_port}
tls = "required"
ca_file = "{prosody.cert_path}"

[log]
level = "INFO"
""")


class BoshCm:
    """``python -m bosh --config PATH`` as a child; its log goes to our stderr, prefixed."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.url: str | None = None
        self.ready = threading.Event()
        self.output: list[str] = []
        self._pumped = threading.Event()

    def start(self, timeout: float = 20) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bosh", "--config", str(self.config)],
            cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
        )
        threading.Thread(target=self._pump, name="bosh-cm-log", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                self._pumped.wait(2)
                raise RuntimeError(f"bosh-cm exited with status {self.proc.returncode} while starting:\n"
                                   + "".join(self.output[-30:]))
            if time.monotonic() > deadline:
                raise RuntimeError(f"bosh-cm did not report 'listening on ...' within {timeout}s:\n"
                                   + "".join(self.output[-30:]))

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.output.append(line)
            del self.output[:-200]
            sys.stderr.write("  [bosh-cm] " + line)
            m = LISTENING.search(line)
            if m and not self.ready.is_set():
                self.url = m.group(1)
                self.ready.set()
        self._pumped.set()

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def smoke_check(page_url: str, bosh_url: str) -> None:
    """The page and config.js load, and bosh-cm answers a cross-origin session creation."""
    for path in ("", "config.js", "chat.js", "vendor/strophe.umd.min.js"):
        with urllib.request.urlopen(page_url + path, timeout=10) as r:
            assert r.status == 200, f"{page_url + path}: HTTP {r.status}"
    origin = page_url.rstrip("/")
    # Strophe posts text/xml, so browsers send a CORS preflight first.
    pre = urllib.request.Request(bosh_url, method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    with urllib.request.urlopen(pre, timeout=10) as r:
        allowed = r.headers.get("Access-Control-Allow-Origin")
        if r.status not in (200, 204) or allowed not in (origin, "*"):
            raise AssertionError(f"CORS preflight from {origin} refused: HTTP {r.status}, "
                                 f"Access-Control-Allow-Origin={allowed!r}")
    body = (f"<body rid='1573741820' to='{DOMAIN}' xml:lang='en' wait='5' hold='1' ver='1.6' "
            "content='text/xml; charset=utf-8' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh' "
            "xmlns='http://jabber.org/protocol/httpbind'/>").encode()
    req = urllib.request.Request(bosh_url, data=body, method="POST",
                                 headers={"Origin": origin, "Content-Type": "text/xml; charset=utf-8"})
    with urllib.request.urlopen(req, timeout=20) as r:
        answer = r.read().decode()
        allow = r.headers.get("Access-Control-Allow-Origin")
    if "sid=" not in answer:
        raise AssertionError(f"bosh-cm did not create a session: {answer}")
    if allow not in (origin, "*"):
        raise AssertionError(f"bosh-cm answered without CORS for {origin}: Access-Control-Allow-Origin={allow!r}")
    print(f"check: OK: page served; CORS preflight and BOSH session creation through bosh-cm "
          f"from {origin} (Access-Control-Allow-Origin: {allow})", flush=True)


def ws_smoke_check(page_url: str, ws_url: str) -> None:
    """bosh-cm upgrades a WebSocket from the page's Origin with subprotocol ``xmpp`` and opens
    an XMPP stream for it (RFC 7395 §3.3-3.4: <open/> answered by <open/> + features)."""
    import aiohttp  # installed with bosh-cm itself (scripts/run made the venv)

    origin = page_url.rstrip("/")

    async def check() -> None:
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.ws_connect(ws_url, protocols=("xmpp",), headers={"Origin": origin},
                                       autoping=True) as ws:
                if ws.protocol != "xmpp":
                    raise AssertionError(f"{ws_url}: handshake without Sec-WebSocket-Protocol: xmpp")

                async def text() -> str:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise AssertionError(f"{ws_url}: expected a text message, got {msg.type.name} "
                                             f"{msg.data!r} {msg.extra or ''}")
                    return str(msg.data)

                await ws.send_str(f'<open xmlns="{FRAMING}" to="{DOMAIN}" version="1.0"/>')
                opened = await text()
                features = await text()
                if not opened.startswith("<open") or FRAMING not in opened:
                    raise AssertionError(f"{ws_url}: expected <open/>, got {opened[:200]!r}")
                if "<stream:features" not in features or "mechanism" not in features:
                    raise AssertionError(f"{ws_url}: expected stream features with SASL "
                                         f"mechanisms, got {features[:300]!r}")
                await ws.send_str(f'<close xmlns="{FRAMING}"/>')

    try:
        asyncio.run(check())
    except aiohttp.WSServerHandshakeError as exc:
        raise AssertionError(f"WebSocket handshake to {ws_url} from {origin} refused: "
                             f"HTTP {exc.status} {exc.message}") from exc
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise AssertionError(f"WebSocket to {ws_url} failed: {exc!r}") from exc
    print(f"check: OK: WebSocket handshake (subprotocol xmpp, Origin {origin}) and XMPP stream "
          f"open through bosh-cm at {ws_url}", flush=True)


def main() -> int:
    args = parse_args()
    for name, port in (("bosh-cm", args.bosh_port), ("demo page", args.page_port)):
        ok, why = port_is_free(args.host, port)
        if not ok:
            flag = "--bosh-port / BOSH_PORT" if name == "bosh-cm" else "--page-port / DEMO_PORT"
            print(f"error: cannot use port {port} on {args.host} for the {name}: {why}{_who_listens(port)}.\n"
                  f"       Stop whatever holds it (a system Prosody with mod_bosh listens on 5280: "
                  f"`systemctl stop prosody`), or pick another port with {flag}, e.g.\n"
                  f"       {'BOSH_PORT=5281' if name == 'bosh-cm' else 'DEMO_PORT=8081'} scripts/run",
                  file=sys.stderr)
            return 2
    if args.bosh_port == args.page_port:
        print("error: bosh-cm and the page need different ports", file=sys.stderr)
        return 2

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    prosody = ProsodyServer(state / "prosody", domain=DOMAIN, bosh=False)
    boshcm: BoshCm | None = None
    page: demo_server.DemoServer | None = None
    try:
        print(f"Starting Prosody (state in {prosody.workdir}) ...", flush=True)
        prosody.start()
        for user, password in ACCOUNTS:
            prosody.register(user, password)
        print(f"  Prosody c2s on {prosody.host}:{prosody.c2s_port} (STARTTLS, self-signed cert "
              f"{prosody.cert_path})", flush=True)

        config = state / "bosh-cm.toml"
        write_boshcm_config(config, args, prosody)
        print(f"Starting bosh-cm: {sys.executable} -m bosh --config {config}", flush=True)
        boshcm = BoshCm(config)
        boshcm.start()
        bosh_url = boshcm.url or f"http://{args.host}:{args.bosh_port}/http-bind"
        ws_host = f"[{args.host}]" if ":" in args.host else args.host
        ws_url = f"ws://{ws_host}:{args.bosh_port}{WS_PATH}"
        # Listening on all addresses: chat.js puts the page's own hostname in place of 0.0.0.0.
        page = demo_server.start(args.host, args.page_port, bosh_url=bosh_url, ws_url=ws_url,
                                 accounts=[(f"{u}@{DOMAIN}", pw) for u, pw in ACCOUNTS])

        page_url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.page_port}/"
        if args.check:
            local = "127.0.0.1" if args.host in ("0.0.0.0", "::") else ws_host
            smoke_check(page_url, boshcm.url or f"http://127.0.0.1:{args.bosh_port}/http-bind")
            ws_smoke_check(page_url, f"ws://{local}:{args.bosh_port}{WS_PATH}")
            return 0

        (a, apw), (b, bpw) = ACCOUNTS
        print(f"""
==========================================================================
 bosh-cm demo is running.

   Chat page:      {page_url}
   BOSH URL:       {boshcm.url}   (bosh-cm)
   WebSocket URL:  {ws_url}   (bosh-cm, RFC 7395)
   XMPP:           Prosody on {prosody.host}:{prosody.c2s_port}, domain {DOMAIN}

 1. Open {page_url}?as={a} and press Connect
    (or log in by hand as {a}@{DOMAIN} / {apw}).
    Pick BOSH or WebSocket on the page, or open {page_url}?as={a}&transport=websocket
 2. Open a second tab (or a private window) at {page_url}?as={b}
    ({b}@{DOMAIN} / {bpw}) and press Connect.
 3. Send a message to {b}@{DOMAIN} from the first tab; it shows up in the second.
    Reload a tab: over BOSH it re-attaches to its session; over WebSocket, Connect
    resumes it (XEP-0198).

 Any XMPP client can log in too (Prosody above; TLS cert is self-signed).
 Press Ctrl-C to stop everything.
==========================================================================
""", flush=True)
        while not stop.is_set():
            if boshcm.proc is not None and boshcm.proc.poll() is not None:
                print(f"bosh-cm exited with status {boshcm.proc.returncode}; stopping.", file=sys.stderr)
                return 1
            if not prosody.running:
                print("Prosody exited; stopping. Log:\n" + prosody.log_tail(), file=sys.stderr)
                return 1
            stop.wait(0.5)
        print("\nStopping ...", flush=True)
        return 0
    except (ProsodyError, RuntimeError, AssertionError, OSError, urllib.error.URLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if page is not None:
            page.shutdown()
            page.server_close()
        if boshcm is not None:
            boshcm.stop()
        prosody.stop()
        print("Stopped bosh-cm, Prosody and the demo page.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
