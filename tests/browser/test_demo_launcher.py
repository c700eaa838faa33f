"""scripts/demo/launch.py (what `scripts/run` starts): Prosody + bosh-cm + the demo page."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.prosody import free_port, prosody_available

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "scripts" / "demo" / "launch.py"


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":  # design.md §7: fail, not skip, in CI
        pytest.fail(reason)
    pytest.skip(reason)


def _launch(tmp_path: Path, *args: str, bosh_port: int, page_port: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BOSH_PORT=str(bosh_port), DEMO_PORT=str(page_port),
               DEMO_STATE=str(tmp_path / "demo-state"))
    return subprocess.run([sys.executable, str(LAUNCHER), *args], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


@pytest.mark.integration
def test_launcher_check_starts_everything_and_both_transports_work_cross_origin(tmp_path: Path) -> None:
    """--check: page served; BOSH: CORS preflight OK and bosh-cm creates a session upstream;
    WebSocket: the handshake from the page's Origin (subprotocol xmpp) and an XMPP stream open
    through bosh-cm (RFC 7395 §3.3-3.4); then everything is stopped."""
    if not prosody_available():
        _missing("prosody/prosodyctl/openssl not installed (bash scripts/test installs them)")
    if not (REPO / "node_modules" / "strophe.js" / "dist" / "strophe.umd.min.js").is_file():
        _missing("node_modules/strophe.js missing (run `npm ci`)")
    bosh_port, page_port = free_port(), free_port()
    res = _launch(tmp_path, "--check", bosh_port=bosh_port, page_port=page_port)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "check: OK: page served; CORS preflight and BOSH session creation" in out
    assert ("check: OK: WebSocket handshake (subprotocol xmpp, Origin "
            f"http://127.0.0.1:{page_port}) and XMPP stream open through bosh-cm at "
            f"ws://127.0.0.1:{bosh_port}/xmpp-websocket") in out
    assert "Stopped bosh-cm, Prosody and the demo page." in out
    config = (tmp_path / "demo-state" / "bosh-cm.toml").read_text()
    assert 'tls = "required"' in config and "ca_file" in config
    assert "[websocket]" in config and 'path = "/xmpp-websocket"' in config


@pytest.mark.integration
def test_launcher_banner_lists_the_bosh_and_the_websocket_url(tmp_path: Path) -> None:
    """The running demo prints both endpoints and how to pick the transport; SIGTERM stops it."""
    if not prosody_available():
        _missing("prosody/prosodyctl/openssl not installed (bash scripts/test installs them)")
    bosh_port, page_port = free_port(), free_port()
    env = dict(os.environ, BOSH_PORT=str(bosh_port), DEMO_PORT=str(page_port),
               DEMO_STATE=str(tmp_path / "demo-state"))
    proc = subprocess.Popen([sys.executable, str(LAUNCHER)], env=env, cwd=str(REPO), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    banner_done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                banner_done.set()
        banner_done.set()  # EOF: it exited

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert banner_done.wait(60), "".join(lines)
        out = "".join(lines)
        assert f"BOSH URL:       http://127.0.0.1:{bosh_port}/http-bind" in out, out
        assert f"WebSocket URL:  ws://127.0.0.1:{bosh_port}/xmpp-websocket" in out, out
        assert "?as=alice&transport=websocket" in out, out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
    assert proc.returncode == 0, "".join(lines)
    assert "Stopped bosh-cm, Prosody and the demo page." in "".join(lines)


def test_launcher_says_clearly_when_the_bosh_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _launch(tmp_path, bosh_port=port, page_port=free_port())
    assert res.returncode == 2
    assert f"cannot use port {port}" in res.stderr
    assert "BOSH_PORT=" in res.stderr
    assert not (tmp_path / "demo-state").exists()  # nothing was started
