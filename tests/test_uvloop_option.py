"""[server] event_loop = "uvloop" makes bosh-cm run on uvloop (issue 5: uvloop as an option)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs bosh.__main__.main with serve() replaced by a probe that reports the running loop's
# module, so the test checks the real CLI path without binding a port.
_PROBE = """
import asyncio, sys
from bosh import __main__ as m
async def probe(cfg, path):
    print(type(asyncio.get_running_loop()).__module__)
    return 0
m.serve = probe
sys.exit(m.main(['--config', sys.argv[1]]))
"""


def _run(tmp_path: Path, loop: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "cm.toml"
    cfg.write_text(f'[server]\nevent_loop = "{loop}"\n')
    return subprocess.run([sys.executable, "-c", _PROBE, str(cfg)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_uvloop_option_runs_bosh_cm_on_uvloop(tmp_path: Path) -> None:
    proc = _run(tmp_path, "uvloop")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("uvloop"), proc.stdout


def test_default_event_loop_is_asyncio(tmp_path: Path) -> None:
    proc = _run(tmp_path, "asyncio")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("asyncio"), proc.stdout
