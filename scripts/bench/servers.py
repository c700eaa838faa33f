"""The two servers under test: a throwaway Prosody tuned for load, and bosh-cm in front of it.

Prosody comes from the shared throwaway server (scripts/lib/prosody.py) with a few global options
appended: no per-connection idle timeouts that would cut held sessions, quieter logging
(one INFO line per connection is CPU we would otherwise measure), and the BOSH limits
raised. mod_limits (c2s rate limiting) is not in the fixture's module list; we check.
The fixture also loads mod_websocket (``/xmpp-websocket`` on the same HTTP port, with
``consider_websocket_secure`` so SASL PLAIN is offered over ``ws://``); we check that too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.error
import urllib.request
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bosh.cluster import render_toml  # noqa: E402
from procstat import child_pids  # noqa: E402
from scripts.lib.procs import (  # noqa: E402
    free_port, port_open, python_env, read_since, size_of, spawn, stop_process, wait_started,
)
from scripts.lib.prosody import (  # noqa: E402
    ProsodyServer, encode_store_name, lua, scram_account_text,
)

__all__ = ["BenchProsody", "BenchBoshCM", "BenchCluster", "PASSWORD", "user_name",
           "node_metrics"]

PASSWORD = "bench-pw"


def user_name(i: int) -> str:
    return f"u{i}"


_EXTRA_CONFIG = """
-- added by scripts/bench/servers.py for load: nothing may cut or throttle held sessions
log = { { levels = { min = "warn" }, to = "file", filename = %(log)s } }
c2s_timeout = 3600
c2s_close_timeout = 5
bosh_max_inactivity = 120
bosh_max_wait = 120
bosh_max_polling = 1
network_settings = { read_timeout = 3600; send_timeout = 600; }
"""


class BenchProsody(ProsodyServer):
    """The fixture's Prosody with load-friendly global options."""

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text()
        if re.search(r'"limits"', text):
            raise RuntimeError("mod_limits is enabled in the generated config: c2s would be throttled")
        if self.bosh and not re.search(r'modules_enabled = \{[^}]*"websocket"', text):
            raise RuntimeError("mod_websocket is not enabled in the generated config "
                               "(scripts/lib/prosody.py): --transport websocket needs it")
        head, sep, tail = text.partition("\nVirtualHost ")
        extra = _EXTRA_CONFIG % {"log": lua(str(self.log_path))}
        self.config_path.write_text(head + extra + sep + tail)

    def create_users(self, count: int, iterations: int = 4096) -> None:
        """``u0``..``u{count-1}`` plus ``sender``, all with :data:`PASSWORD`.

        Same store format as ``register_many`` (SCRAM-SHA-1 keys), but the keys are derived
        once and shared: thousands of PBKDF2 runs would take longer than the benchmark.
        """
        folder = self.data_path / encode_store_name(self.domain) / "accounts"
        folder.mkdir(parents=True, exist_ok=True)
        text = scram_account_text(PASSWORD, "benchsalt0123456789abcdef", iterations)
        names = [user_name(i) for i in range(count)] + ["sender"]
        for name in names:
            target = folder / (encode_store_name(name) + ".dat")
            if not target.exists() or target.read_text() != text:
                target.write_text(text)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_websocket(self, timeout: float = 10) -> None:
        """Prosody's HTTP port serves mod_websocket at :attr:`ws_url` (a plain GET there
        answers its "Prosody WebSocket endpoint" page); else a clear error, not N failed logins."""
        url = "http" + self.ws_url[len("ws"):]
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = resp.read(4096).decode(errors="replace")
                status = resp.status
        except urllib.error.HTTPError as exc:
            status, body = exc.code, ""
        except OSError as exc:
            raise RuntimeError(f"Prosody's {url} unreachable: {exc!r}") from exc
        if status != 200 or "WebSocket" not in body:
            raise RuntimeError(f"Prosody's HTTP port does not serve mod_websocket at {url} "
                               f"(HTTP {status}); see {self.log_path}")


def _launch(server: "BenchBoshCM | BenchCluster", cmd: list[str]) -> int:
    """Write ``server``'s config, start ``cmd`` from the checkout with its output appended to
    ``server.log_path`` (as ``server.proc``); returns the log offset where that output starts."""
    server.config_path.write_text(render_toml(server.config))
    offset = size_of(server.log_path)
    server.proc = spawn(cmd, server.log_path, cwd=REPO, env=python_env(REPO))
    return offset


def bench_cm_config(prosody: "BenchProsody", port: int, *, log_level: str = "INFO",
                    event_loop: str = "asyncio", max_wait: int = 60, websocket: bool = False
                    ) -> tuple[dict[str, dict[str, Any]], str, bool]:
    """bosh-cm's config for the bench (one process, or the base of a cluster): per-IP limits
    off, sessions bounded by 100,000, STARTTLS upstream to ``prosody`` with certificate
    verification. Returns the config, the WebSocket path and whether uvloop is set by the
    config key (``[server] event_loop``; older checkouts need the bench-only launcher)."""
    from bosh import config as cfgmod  # the checkout's config: only keys it knows

    bosh: dict[str, Any] = {"max_wait": max_wait, "max_inactivity": 120, "max_hold": 1,
                            "max_sessions": 100_000, "max_sessions_per_ip": 0,
                            "new_sessions_per_ip_per_minute": 0}
    known = {f.name for f in dataclasses.fields(cfgmod.BoshConfig)}
    bosh = {k: v for k, v in bosh.items() if k in known}
    http: dict[str, Any] = {"host": "127.0.0.1", "port": port, "path": "/http-bind"}
    config: dict[str, dict[str, Any]] = {
        "http": http,
        "bosh": bosh,
        "upstream": {"domains": [prosody.domain], "host": "127.0.0.1", "port": prosody.c2s_port,
                     "tls": "required", "ca_file": str(prosody.cert_path),
                     "connect_timeout": 30.0},
        "log": {"level": log_level},
    }
    # RFC 7395 endpoint on the same listener ([websocket], defaults otherwise: pings every
    # 30 s, no compression, origins as [http] cors_origins; the load sends no Origin).
    ws_cfg = getattr(cfgmod, "WebSocketConfig", None)
    ws_path = "/xmpp-websocket"
    if websocket:
        if ws_cfg is None:
            raise RuntimeError("this bosh-cm checkout has no [websocket] section "
                               "(bosh/config.py WebSocketConfig): no WebSocket endpoint to measure")
        ws_path = ws_cfg().path
        config["websocket"] = {"enabled": True, "path": ws_path}
    # uvloop through the config key when this checkout has it ([server] event_loop).
    server_cfg = getattr(cfgmod, "ServerConfig", None)
    loop_by_config = event_loop == "uvloop" and server_cfg is not None and \
        "event_loop" in {f.name for f in dataclasses.fields(server_cfg)}
    if loop_by_config:
        config["server"] = {"event_loop": "uvloop"}
    return config, ws_path, loop_by_config


class BenchBoshCM:
    """``python -m bosh --config`` in front of a :class:`BenchProsody`, output to a file.

    (scripts/lib/boshcm.py pipes the output through a thread of ours; at thousands of
    sessions that thread would compete with the load generator for the GIL.)
    """

    def __init__(self, workdir: Path, prosody: "BenchProsody", *, log_level: str = "INFO",
                 event_loop: str = "asyncio", max_wait: int = 60, gc_threshold: str = "",
                 websocket: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/http-bind"
        self.event_loop = event_loop
        self.gc_threshold = gc_threshold
        self.config, ws_path, self.loop_by_config = bench_cm_config(
            prosody, self.port, log_level=log_level, event_loop=event_loop, max_wait=max_wait,
            websocket=websocket)
        self.ws_url = f"ws://127.0.0.1:{self.port}{ws_path}"
        self.config_path = self.workdir / "bosh-cm.toml"
        self.log_path = self.workdir / "bosh-cm.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30) -> None:
        launcher_loop = self.event_loop == "uvloop" and not self.loop_by_config
        if launcher_loop or self.gc_threshold:
            # Bench-only launcher for experiments that need no config key: uvloop's policy
            # and/or gc.set_threshold, then the normal entry point (asyncio.run picks the
            # policy's loop). See .core-requests / docs/performance.md.
            pre = []
            if launcher_loop:
                pre.append("import uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())")
            if self.gc_threshold:
                pre.append(f"import gc; gc.set_threshold({self.gc_threshold})")
            cmd = [sys.executable, "-c",
                   "import asyncio, sys; " + "; ".join(pre) + "; "
                   "from bosh.__main__ import main; sys.exit(main(sys.argv[1:]))",
                   "--config", str(self.config_path)]
        else:
            cmd = [sys.executable, "-m", "bosh", "--config", str(self.config_path)]
        offset = _launch(self, cmd)
        # (below INFO the "listening on" line is not logged: the open port counts too)
        wait_started(self.proc, lambda: "listening on http://" in read_since(self.log_path, offset)
                     or port_open("127.0.0.1", self.port), timeout,
                     error=RuntimeError, exited="bosh-cm exited with {code}:",
                     late=f"bosh-cm did not start within {timeout}s:",
                     tail=lambda: read_since(self.log_path, offset)[-3000:], on_late=self.stop)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            stop_process(proc, timeout)

    def log_tail(self, limit: int = 3000) -> str:
        return read_since(self.log_path)[-limit:]


def node_metrics(port: int, timeout: float = 5) -> dict[str, float]:
    """A bosh-cm node's ``/metrics`` (Prometheus text) as ``{'name{labels}': value}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode(errors="replace")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


_READY = re.compile(r"listening on (\S+) \((\d+) nodes\)")


class BenchCluster:
    """``python -m bosh.cluster`` (bosh-cm-cluster: HAProxy + N nodes) in front of a
    :class:`BenchProsody`, its output (and its nodes' and HAProxy's, prefixed) to a file.

    The base config is :func:`bench_cm_config` with HAProxy's listener on a free loopback
    port and ``[cluster] drain_timeout`` short: the load has gone when the bench stops the
    launcher, so a node's left-over sessions (no client any more) need not be served for
    the default 300 s. Everything else (ports, node ids, ``haproxy.cfg``) is the launcher's.
    """

    def __init__(self, workdir: Path, prosody: "BenchProsody", nodes: int, *,
                 log_level: str = "INFO", event_loop: str = "asyncio", max_wait: int = 60,
                 websocket: bool = False, drain_timeout: float = 1.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = nodes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/http-bind"
        self.config, ws_path, by_config = bench_cm_config(
            prosody, self.port, log_level=log_level, event_loop=event_loop, max_wait=max_wait,
            websocket=websocket)
        if event_loop == "uvloop" and not by_config:
            raise RuntimeError("--cm-loop uvloop with --nodes needs [server] event_loop "
                               "(the launcher starts `python -m bosh` itself)")
        self.config["cluster"] = {"drain_timeout": drain_timeout}
        self.ws_url = f"ws://127.0.0.1:{self.port}{ws_path}"
        self.config_path = self.workdir / "base.toml"
        self.run_dir = self.workdir / "run"
        self.log_path = self.workdir / "launcher.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_pids: dict[str, int] = {}
        self.node_ports: dict[str, int] = {}
        self.haproxy_pids: list[int] = []   # the master (-W) and its worker(s)
        self.haproxy_maxconn: int | None = None

    @property
    def pid(self) -> int:
        """The launcher's own pid (its CPU is the log pump, reported apart)."""
        assert self.proc is not None
        return self.proc.pid

    def nodes_doc(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "nodes.json").read_text())

    def start(self, timeout: float = 90) -> None:
        offset = _launch(self, [sys.executable, "-m", "bosh.cluster", "--config",
                                str(self.config_path), "--nodes", str(self.nodes),
                                "--run-dir", str(self.run_dir)])
        m = wait_started(self.proc, lambda: _READY.search(read_since(self.log_path, offset)),
                         timeout, error=RuntimeError, exited="bosh-cm-cluster exited with {code}:",
                         late=f"bosh-cm-cluster not listening within {timeout}s:",
                         tail=lambda: read_since(self.log_path, offset)[-3000:], on_late=self.stop)
        if m.group(1) != self.url or int(m.group(2)) != self.nodes:
            self.stop()
            raise RuntimeError(f"launcher says {m.group(0)!r}; expected {self.url} "
                               f"with {self.nodes} nodes")
        doc = self.nodes_doc()
        self.node_pids = {n["node_id"]: n["pid"] for n in doc["nodes"]}
        self.node_ports = {n["node_id"]: n["port"] for n in doc["nodes"]}
        if any(p is None for p in self.node_pids.values()) or doc["haproxy"]["pid"] is None:
            self.stop()
            raise RuntimeError(f"a process of the cluster is down at start: {doc}")
        master = int(doc["haproxy"]["pid"])
        self.haproxy_pids = [master] + child_pids(master)
        m = re.search(r"^\s*maxconn\s+(\d+)", (self.run_dir / "haproxy.cfg").read_text(), re.M)
        self.haproxy_maxconn = int(m.group(1)) if m else None

    def haproxy_admin(self, command: str, timeout: float = 5) -> str:
        """One command on HAProxy's runtime socket (``RUN_DIR/haproxy.sock``, the launcher's)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.run_dir / "haproxy.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    def haproxy_stats(self) -> dict[str, Any]:
        """HAProxy's own counters: the public frontend's current, peak and limit of client
        connections and its 4xx/5xx answers; per backend the retries, redispatches,
        connection and response errors (``show stat``), and ``CurrConns`` (``show info``)."""
        text = self.haproxy_admin("show stat")
        lines = text[2:].splitlines() if text.startswith("# ") else []
        out: dict[str, Any] = {}
        if lines:
            head = lines[0].split(",")
            for line in lines[1:]:
                cols = dict(zip(head, line.split(",")))
                px, sv = cols.get("pxname"), cols.get("svname")
                num = {k: int(v) for k, v in cols.items() if v.isdigit()}
                if px == "bosh" and sv == "FRONTEND":
                    out["frontend"] = {k: num.get(k) for k in
                                       ("scur", "smax", "slim", "stot", "ereq", "hrsp_4xx", "hrsp_5xx")}
                elif px in ("bosh_owner", "bosh_new") and sv == "BACKEND":
                    out[px] = {k: num.get(k) for k in ("scur", "smax", "stot", "econ", "eresp",
                                                       "wretr", "wredis", "hrsp_5xx",
                                                       "connect", "reuse")}
        for line in self.haproxy_admin("show info").splitlines():
            key, _, value = line.partition(":")
            if key in ("CurrConns", "Maxconn", "Maxsock") and value.strip().isdigit():
                out[key] = int(value)
        return out

    def restarted(self) -> list[str]:
        """Node ids whose pid is not the one seen at start (a node died and came back)."""
        try:
            now = {n["node_id"]: n["pid"] for n in self.nodes_doc()["nodes"]}
        except (OSError, ValueError):
            return ["nodes.json unreadable"]
        return [k for k, v in self.node_pids.items() if now.get(k) != v]

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM (every node drains for ``drain_timeout``), a second SIGTERM if that takes
        too long (ends the drains), then SIGKILL of the launcher and of the node and HAProxy
        processes it started (by pid)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_process(proc, timeout, again=15)
        for pid in [*self.node_pids.values(), *self.haproxy_pids]:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    ours = str(self.run_dir).encode() in f.read()
            except OSError:
                continue
            if ours:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def log_tail(self, limit: int = 3000) -> str:
        return read_since(self.log_path)[-limit:]
