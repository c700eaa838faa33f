"""Run bosh-cm as a real subprocess (``python -m bosh --config CFG``) for black-box tests
and the scripts (``tests/support/boshcm.py`` re-exports this module).

    cm = BoshCM(workdir, prosody, bosh={"max_wait": 10})
    cm.start()            # returns once stderr says "listening on http://..."
    cm.url                # http://127.0.0.1:PORT/http-bind
    cm.stop()             # SIGTERM + wait

Its stdout+stderr go to ``workdir/bosh-cm.log`` (printed by :meth:`log_tail` on failures).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from bosh.cluster import render_toml  # the product's own writer of flat-table configs
from scripts.lib.procs import Managed, free_port, kill_process, python_env, stop_process
from scripts.lib.upstreams import XmppServer

__all__ = ["BoshCM", "BoshCMError", "REPO_ROOT", "render_toml"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_READY = re.compile(r"listening on (http://\S+)")


class BoshCMError(RuntimeError):
    """bosh-cm did not start (the message carries its log tail)."""


class BoshCM(Managed):
    """One bosh-cm process in front of a :class:`ProsodyServer`, an :class:`EjabberdServer`
    or (``prosody=None`` and ``upstream={...}``) any upstream."""

    def __init__(self, workdir: Path, prosody: XmppServer | None = None, *,
                 http: Mapping[str, Any] | None = None, bosh: Mapping[str, Any] | None = None,
                 upstream: Mapping[str, Any] | None = None,
                 websocket: Mapping[str, Any] | None = None,
                 discovery: Mapping[str, Any] | None = None, log_level: str = "DEBUG",
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.path = "/http-bind"
        self.config: dict[str, dict[str, Any]] = {
            "http": {"host": "127.0.0.1", "port": self.port, "path": self.path},
            "bosh": {"max_wait": 10, "max_inactivity": 10, "max_hold": 1, "polling": 2},
            "upstream": {},
            "log": {"level": log_level},
        }
        if prosody is not None:
            self.config["upstream"] = {
                "domains": [prosody.domain], "host": "127.0.0.1", "port": prosody.c2s_port,
                "tls": "required", "ca_file": str(prosody.cert_path), "connect_timeout": 5.0,
            }
        for section, overrides in (("http", http), ("bosh", bosh), ("upstream", upstream),
                                   ("websocket", websocket), ("discovery", discovery)):
            if overrides:
                self.config.setdefault(section, {}).update(overrides)
        self.port = int(self.config["http"]["port"])
        self.path = str(self.config["http"]["path"])
        self.config_path = self.workdir / "bosh-cm.toml"
        self.log_path = self.workdir / "bosh-cm.log"
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}{self.path}"
        ws_path = str(self.config.get("websocket", {}).get("path", "/xmpp-websocket"))
        #: RFC 7395 endpoint on the same listener.
        self.ws_url = f"ws://127.0.0.1:{self.port}{ws_path}"
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self.announced_url: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_toml(self.config))
        self._ready.clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bosh", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT), env=python_env(REPO_ROOT, self.env), start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(2)
                self._close_pipe(self.proc)
                raise BoshCMError(f"bosh-cm exited with {self.proc.returncode} during startup\n"
                                  + self.log_tail())
            if time.monotonic() > deadline:
                self.stop()
                raise BoshCMError(f"bosh-cm did not report 'listening on http://' within {timeout}s\n"
                                  + self.log_tail())

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        # Tee the child's output into the log file; flag the readiness line.
        assert proc.stdout is not None
        with open(self.log_path, "ab", buffering=0) as out:
            for line in iter(proc.stdout.readline, b""):
                out.write(line)
                if not self._ready.is_set():
                    m = _READY.search(line.decode(errors="replace"))
                    if m:
                        self.announced_url = m.group(1)
                        self._ready.set()

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, wait; SIGKILL after ``timeout``. Returns the exit code."""
        return self._reap(stop_process, timeout)

    def kill(self) -> int | None:
        """SIGKILL (a crash: nothing is drained or closed cleanly) and wait."""
        return self._reap(kill_process)

    def _reap(self, end: Any, *args: float) -> int | None:
        """End the process with ``end(proc, *args)``, then the output pump and its pipe."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        end(proc, *args)
        if self._reader is not None:
            self._reader.join(2)
        self._close_pipe(proc)
        return proc.returncode

    @staticmethod
    def _close_pipe(proc: subprocess.Popen[bytes]) -> None:
        if proc.stdout is not None and not proc.stdout.closed:
            try:
                proc.stdout.close()
            except OSError:
                pass

    def log_tail(self, limit: int = 6000) -> str:
        if not self.log_path.exists():
            return "(no bosh-cm log)"
        return "--- bosh-cm.log ---\n" + self.log_path.read_bytes()[-limit:].decode(errors="replace")

    # -------------------------------------------------------------- added for the WebSocket tests
    def send_signal(self, sig: int) -> None:
        """Send ``sig`` without waiting (e.g. SIGTERM while the test watches the drain);
        follow with :meth:`wait_exit`."""
        if self.proc is None:
            raise BoshCMError("not running")
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 10) -> int | None:
        """Wait (blocking: call it via ``asyncio.to_thread`` from a test) until the process
        exits, then reap it like :meth:`stop`; returns the exit code. SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.kill()

    def restart(self, kill: bool = False, timeout: float = 20) -> None:
        """Stop (SIGTERM, or SIGKILL with ``kill``) if running, then start again on the same
        port with the same configuration (the log file is appended to)."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start(timeout)
