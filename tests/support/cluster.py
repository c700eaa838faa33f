"""bosh-cm-cluster in a test: the real launcher (``python -m bosh.cluster``), the real HAProxy
and N real bosh-cm nodes in front of a real XMPP server, all on loopback (issue 9).

    cl = ClusterLauncher(workdir, prosody, nodes=3, base={"cluster": {"drain_timeout": 4.0}})
    cl.start()                       # returns once it logs "listening on ... (3 nodes)"
    cl.nodes_json()                  # {"haproxy": {...}, "nodes": [{"node_id", "pid", ...}]}
    await cl.haproxy_up()            # {("bosh_new", "n1"), ("bosh_owner", "n1"), ...}
    cl.stop()

Its output (its own lines, then ``[nK] `` and ``[haproxy] `` prefixed lines of the children)
goes to ``workdir/launcher.log``. Clients bind to their own loopback addresses
(:class:`AddressPool`), so the per-IP limits only see what HAProxy forwards in
``X-Forwarded-For``, and a node's log line ``session nK.xxx opened from IP`` tells which node
a given client reached (:meth:`ClusterLauncher.session_node`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

import aiohttp

from bosh.cluster import find_haproxy
from scripts.lib.procs import (Managed, free_port, python_env, read_since, size_of, spawn,
                               stop_process, wait_started)
from tests.support import require
from tests.support.boshcm import REPO_ROOT, render_toml

if TYPE_CHECKING:
    from tests.support.upstreams import XmppServer

__all__ = ["ClusterLauncher", "AddressPool", "require_haproxy", "alive", "client_http", "get",
           "metric", "until"]

_READY = re.compile(r"listening on (http://\S+) \((\d+) nodes\)")


def require_haproxy() -> str:
    """Design §7: fail in CI, skip on a dev box without HAProxy."""
    path = find_haproxy()
    require(None if path is not None else
            "haproxy not installed (bash scripts/test installs it: apt-get install haproxy)")
    assert path is not None
    return path


def alive(pid: int | None) -> bool:
    """``pid`` runs (a zombie does not)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _merge(base: dict[str, dict[str, Any]], extra: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in base.items()}
    for section, table in extra.items():
        out.setdefault(section, {}).update(table)
    return out


class ClusterLauncher(Managed):
    """``python -m bosh.cluster`` as a subprocess with a base config of its own."""

    def __init__(self, workdir: Path, server: "XmppServer", nodes: int = 3,
                 base: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/http-bind"
        self.ws_url = f"ws://127.0.0.1:{self.port}/xmpp-websocket"
        self.domain = server.domain
        self.nodes = nodes
        self.log_path = workdir / "launcher.log"
        self.base_path = workdir / "base.toml"
        self.config = _merge({
            "http": {"host": "127.0.0.1", "port": self.port, "path": "/http-bind"},
            "bosh": {"max_wait": 10, "max_inactivity": 10, "max_hold": 1, "polling": 2},
            "upstream": {"domains": [server.domain], "host": "127.0.0.1",
                         "port": server.c2s_port, "tls": "required",
                         "ca_file": str(server.cert_path), "connect_timeout": 5.0},
            "log": {"level": "INFO"},
        }, base or {})
        self.base_path.write_text(render_toml(self.config))
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ process
    def start(self, timeout: float = 40) -> None:
        self.proc = spawn([sys.executable, "-m", "bosh.cluster", "--config", str(self.base_path),
                           "--nodes", str(self.nodes), "--run-dir", str(self.run_dir)],
                          self.log_path, cwd=REPO_ROOT, env=python_env(REPO_ROOT))
        m = wait_started(self.proc, lambda: _READY.search(self.log()), timeout,
                         error=AssertionError, exited="launcher exited with {code}",
                         late=f"launcher not listening within {timeout}s", tail=self.tail,
                         on_late=self.stop)
        assert m.group(1) == self.url and int(m.group(2)) == self.nodes, m.group(0)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the launcher drains and stops its nodes and HAProxy) and wait; SIGKILL
        to its whole process group after ``timeout``."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        return stop_process(proc, timeout, group=True)

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        self.proc.send_signal(sig)

    # ------------------------------------------------------------------ state
    def log(self) -> str:
        return read_since(self.log_path)

    def log_size(self) -> int:
        """A mark: :meth:`log_since` returns what was written after it."""
        return size_of(self.log_path)

    def log_since(self, mark: int) -> str:
        return read_since(self.log_path, mark)

    def tail(self, limit: int = 6000) -> str:
        return "--- launcher.log ---\n" + self.log()[-limit:]

    def nodes_json(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "nodes.json").read_text())

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.nodes_json()["nodes"] if n["node_id"] == node_id)

    def pids(self) -> dict[str, int | None]:
        return {n["node_id"]: n["pid"] for n in self.nodes_json()["nodes"]}

    async def node_metrics(self) -> dict[str, str]:
        """node id -> the Prometheus text of that node's ``/metrics``."""
        out = {}
        for n in self.nodes_json()["nodes"]:
            status, text = await get(f"http://127.0.0.1:{n['port']}/metrics")
            assert status == 200, n
            out[n["node_id"]] = text
        return out

    async def haproxy_up(self) -> set[tuple[str, str]]:
        """(backend, server) pairs HAProxy has UP, from the launcher's stats socket."""
        reader, writer = await asyncio.open_unix_connection(str(self.run_dir / "haproxy.sock"))
        try:
            writer.write(b"show stat\n")
            text = (await asyncio.wait_for(reader.read(), 5)).decode()
        finally:
            writer.close()
        lines = text.lstrip("# ").splitlines()
        head = lines[0].split(",")
        px, sv, st = head.index("pxname"), head.index("svname"), head.index("status")
        return {(c[px], c[sv]) for c in (line.split(",") for line in lines[1:] if line)
                if len(c) > st and c[st].startswith("UP")
                and c[sv] not in ("FRONTEND", "BACKEND")}

    async def all_up(self, timeout: float = 15) -> None:
        """Until every node runs and answers ``/readyz`` 200 and HAProxy has every node UP in
        both backends. (HAProxy alone may still call a node UP that was killed a moment ago,
        then take it out for a second once it notices.)"""
        async def ok() -> bool:
            doc = self.nodes_json()["nodes"]
            if not all(alive(n["pid"]) for n in doc):
                return False
            for n in doc:
                if (await get(f"http://127.0.0.1:{n['port']}/readyz"))[0] != 200:
                    return False
            return len(await self.haproxy_up()) == 2 * self.nodes
        await until(ok, timeout, "every node ready and up in HAProxy", self)

    async def session_node(self, ip: str, mark: int, transport: str = "websocket",
                           timeout: float = 10) -> str:
        """The node on which the latest session from client address ``ip`` opened after the
        log ``mark`` (from the node's line ``session nK.xxx opened from IP (websocket)`` or
        ``session nK.xxx created for ... from IP (bosh ...``)."""
        if transport == "websocket":
            pat = re.compile(r"^\[(n\d+)\] .*session (n\d+)\.\S+ opened from "
                             + re.escape(ip) + r" \(websocket\)", re.M)
        else:
            pat = re.compile(r"^\[(n\d+)\] .*session (n\d+)\.\S+ created for .* from "
                             + re.escape(ip) + r" \(bosh", re.M)
        found: list[str] = []

        async def seen() -> bool:
            found[:] = [m.group(1) for m in pat.finditer(self.log_since(mark))
                        if m.group(1) == m.group(2)]
            return bool(found)

        await until(seen, timeout, f"a {transport} session from {ip} in the log", self)
        return found[-1]


class AddressPool:
    """Distinct loopback client addresses 127.0.X.Y (X from ``first_net``), never reused."""

    def __init__(self, first_net: int = 20) -> None:
        self._n = itertools.count()
        self.first_net = first_net

    def __call__(self) -> str:
        n = next(self._n)
        return f"127.0.{self.first_net + n // 250}.{n % 250 + 2}"


def client_http(ip: str) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from the loopback address ``ip`` (no total
    timeout: BOSH requests are held; no connection limit)."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                                 connector=aiohttp.TCPConnector(local_addr=(ip, 0), limit=0))


async def get(url: str) -> tuple[int, str]:
    """GET ``url``: (status, text), or (0, "") when nothing answers."""
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status, await r.text()
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return 0, ""


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text ``text`` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


async def until(cond: Callable[[], Awaitable[bool]], timeout: float, what: str,
                launcher: ClusterLauncher | None = None, step: float = 0.05) -> None:
    """Poll ``cond`` until it is true; fail (with the launcher's log) at the deadline."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s"
                                 + (f"\n{launcher.tail()}" if launcher is not None else ""))
        await asyncio.sleep(step)  # a poll step against a deadline, not a wait for time to pass
