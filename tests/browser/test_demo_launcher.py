"""scripts/demo/launch.py (what `scripts/run` starts): Prosody + bosh-cm + the demo page."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
def test_launcher_check_starts_everything_and_bosh_works_cross_origin(tmp_path: Path) -> None:
    """--check: page served, CORS preflight OK, bosh-cm creates a session upstream, all stopped."""
    if not prosody_available():
        _missing("prosody/prosodyctl/openssl not installed (bash scripts/test installs them)")
    if not (REPO / "node_modules" / "strophe.js" / "dist" / "strophe.umd.min.js").is_file():
        _missing("node_modules/strophe.js missing (run `npm ci`)")
    res = _launch(tmp_path, "--check", bosh_port=free_port(), page_port=free_port())
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "check: OK" in out
    assert "Stopped bosh-cm, Prosody and the demo page." in out
    config = (tmp_path / "demo-state" / "bosh-cm.toml").read_text()
    assert 'tls = "required"' in config and "ca_file" in config


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
