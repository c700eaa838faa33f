"""bosh-cm-cluster: N bosh-cm nodes behind HAProxy on one machine (issue 9).

    bosh-cm-cluster --config BASE.toml [--nodes N] [--run-dir DIR] [--stats-port P]

HAProxy listens on BASE's ``[http] host``/``port``/``path`` (HTTPS when BASE sets
``tls_cert``/``tls_key``); N nodes (default: the number of CPU cores) run as
``python -m bosh --config DIR/nK.toml`` on free loopback ports with node ids ``n1..nN``,
every other key taken from BASE. The launcher writes ``DIR/haproxy.cfg``, ``DIR/nK.toml``
and ``DIR/nodes.json``::

    {"haproxy": {"pid": P, "url": "http://HOST:PORT/http-bind"},
     "nodes": [{"node_id": "n1", "pid": P, "port": N, "url": "http://127.0.0.1:N/http-bind"}, ...]}

rewritten whenever a pid changes (``null`` while a node is down), and
``DIR/prometheus-targets.json`` (Prometheus ``file_sd_configs``: every node's ``/metrics``
and HAProxy's exporter). Once every node answers ``/readyz`` and HAProxy sees them all up it
logs ``listening on http://HOST:PORT/http-bind (N nodes)``.

Signals: SIGTERM/SIGINT drain every node (each serves its BOSH sessions until they end or
``[cluster] drain_timeout``; a second signal stops them at once), then stop HAProxy, exit 0.
SIGHUP re-reads BASE and restarts the nodes one at a time (rolling restart): the node is
taken out of HAProxy's creation backend, sent SIGTERM, waited for (it drains), started
again and waited for until ``/readyz`` is 200 and HAProxy sees it up; then the next. A node
that exits on its own is started again (same id and port) unless the launcher is stopping.

This module runs processes only: it imports neither ``xmpp_bridge`` nor slixmpp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import ipaddress
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from bosh import config as config_mod
from bosh.errors import ConfigError
from bosh.haproxy import HaproxyNode, maxconn_for_fd_limit, render_haproxy_cfg
from bosh.limits import parse_networks

__all__ = ["main", "node_config", "render_toml", "prometheus_targets", "nodes_document",
           "find_haproxy", "NodeSpec"]

log = logging.getLogger("bosh.cluster")

PROG = "bosh-cm-cluster"
INSTALL_HINT = "install it: apt-get install haproxy"
_NODE_READY_TIMEOUT = 60.0      # seconds for a (re)started node to answer /readyz 200
_HAPROXY_UP_TIMEOUT = 15.0      # seconds for HAProxy to see a node up
_STOP_MARGIN = 10.0             # seconds past drain_timeout + shutdown_grace before SIGKILL
_SOCKET_PATH_MAX = 100          # AF_UNIX paths are limited to 107 bytes


# ----------------------------------------------------------------------------- pure helpers
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A config file of flat tables (all bosh-cm's config needs)."""
    out: list[str] = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        out.append("")
    return "\n".join(out)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: str
    port: int
    host: str = "127.0.0.1"

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


def node_trusted_proxies(base: Sequence[str]) -> tuple[list[str], bool]:
    """``[http] trusted_proxies`` for a node behind the local HAProxy, and whether HAProxy
    keeps a client's own ``X-Forwarded-For``. The node must trust HAProxy (127.0.0.1). When
    BASE trusts nobody in front of the listener, HAProxy drops the client's header and
    appends the real peer, so the nodes see exactly what one bosh-cm would have seen."""
    if not base:
        return ["127.0.0.1"], False
    addr = ipaddress.ip_address("127.0.0.1")
    covered = any(addr.version == n.version and addr in n for n in parse_networks(base))
    return (list(base) if covered else [*base, "127.0.0.1"]), True


def node_config(base_raw: Mapping[str, Any], spec: NodeSpec, trusted: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One node's config: BASE with ``[http] host``/``port`` on loopback, no TLS (HAProxy
    terminates it), ``trusted_proxies`` including HAProxy, and ``[cluster] node_id``."""
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in base_raw.items()
                                           if isinstance(v, Mapping)}
    http = sections.setdefault("http", {})
    http.update(host=spec.host, port=spec.port, trusted_proxies=list(trusted))
    http.pop("tls_cert", None)
    http.pop("tls_key", None)
    sections.setdefault("cluster", {})["node_id"] = spec.node_id
    return sections


def _url_host(host: str) -> str:
    h = host.strip("[]")
    return f"[{h}]" if ":" in h else h


def nodes_document(haproxy_pid: int | None, public_url: str, specs: Sequence[NodeSpec],
                   pids: Mapping[str, int | None], path: str) -> dict[str, Any]:
    """The content of ``nodes.json``."""
    return {
        "haproxy": {"pid": haproxy_pid, "url": public_url},
        "nodes": [{"node_id": s.node_id, "pid": pids.get(s.node_id), "port": s.port,
                   "url": s.url(path)} for s in specs],
    }


def prometheus_targets(specs: Sequence[NodeSpec], stats_port: int, prometheus: bool) -> list[dict[str, Any]]:
    """Prometheus ``file_sd_configs`` content: every node's /metrics and HAProxy's exporter."""
    out: list[dict[str, Any]] = [
        {"targets": [f"{s.host}:{s.port}"], "labels": {"component": "bosh-cm", "node_id": s.node_id}}
        for s in specs]
    if stats_port and prometheus:
        out.append({"targets": [f"127.0.0.1:{stats_port}"],
                    "labels": {"component": "haproxy", "__metrics_path__": "/haproxy-metrics"}})
    return out


def find_haproxy(name: str = "haproxy") -> str | None:
    """The haproxy binary: on PATH, or in the sbin directories a user's PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    if os.sep not in name:
        for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
            cand = os.path.join(d, name)
            if os.access(cand, os.X_OK):
                return cand
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # A leftover .tmp (a crashed run) keeps its old mode and may be a symlink: start afresh,
    # so a private key written here is never readable by others.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- processes
_PR_SET_PDEATHSIG = 1
_libc: Any = None


def _load_libc() -> None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)


def _child_setup(parent: int) -> Any:
    """preexec_fn: the child gets SIGTERM when the launcher dies (even by SIGKILL), so no
    node or HAProxy outlives it."""
    libc = _libc

    def setup() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


async def _http_status(host: str, port: int, path: str, timeout: float = 1.0) -> int | None:
    """The status code of ``GET path`` (HTTP/1.0), or None when nothing answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class Node:
    spec: NodeSpec
    config_path: Path
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restarting: bool = False          # the rolling restart stopped it: start it again at once
    pump: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    termed_pid: int | None = None     # the process we sent SIGTERM (not twice: that ends a drain)

    @property
    def node_id(self) -> str:
        return self.spec.node_id

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None


class StartupError(Exception):
    pass


class Cluster:
    def __init__(self, base_path: Path, base: config_mod.Config, base_raw: dict[str, Any],
                 n_nodes: int, run_dir: Path, haproxy_bin: str, stats_port: int) -> None:
        self.base_path = base_path
        self.base = base
        self.base_raw = base_raw
        self.run_dir = run_dir
        self.haproxy_bin = haproxy_bin
        self.stats_port = stats_port
        self.prometheus = True
        self.host = base.http.host
        self.port = base.http.port
        self.path = base.http.path
        self.scheme = "https" if base.http.tls_cert else "http"
        self.public_url = f"{self.scheme}://{_url_host(self.host)}:{self.port}{self.path}"
        self.nodes = [Node(NodeSpec(f"n{i}", 0), run_dir / f"n{i}.toml") for i in range(1, n_nodes + 1)]
        self.haproxy: asyncio.subprocess.Process | None = None
        self.haproxy_pump: asyncio.Task[None] | None = None
        self.haproxy_watcher: asyncio.Task[None] | None = None
        self.haproxy_cfg = run_dir / "haproxy.cfg"
        sock = run_dir / "haproxy.sock"
        self.stats_socket = str(sock) if len(str(sock)) <= _SOCKET_PATH_MAX else ""
        self.tls_pem = ""
        self.stopping = False
        self.stop_requested = asyncio.Event()
        self.rolling: asyncio.Task[None] | None = None
        self._signals = 0
        self.trusted, self.keep_xff = node_trusted_proxies(base.http.trusted_proxies)

    # ------------------------------------------------------------------ files
    def _stop_wait(self) -> float:
        return self.base.cluster.drain_timeout + self.base.http.shutdown_grace + _STOP_MARGIN

    def write_node_configs(self) -> None:
        for node in self.nodes:
            text = render_toml(node_config(self.base_raw, node.spec, self.trusted))
            _write_atomic(node.config_path, f"# Generated by {PROG} from {self.base_path}\n" + text)
            config_mod.load(node.config_path)  # a node must start: fail here, naming the key

    def render_haproxy(self) -> str:
        fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fd_limit = fds if fds != resource.RLIM_INFINITY else 1_048_576
        ping = self.base.websocket.ping_interval
        return render_haproxy_cfg(
            [HaproxyNode(n.node_id, n.spec.host, n.spec.port) for n in self.nodes],
            host=self.host, port=self.port, path=self.path, max_wait=self.base.bosh.max_wait, maxconn=maxconn_for_fd_limit(fd_limit, len(self.nodes)),
            tls_pem=self.tls_pem, stats_port=self.stats_port, stats_socket=self.stats_socket,
            prometheus=self.prometheus, keep_forwarded_for=self.keep_xff,
            tunnel_timeout=max(3600, int(4 * ping)),
            private_paths=(self.base.prebind.path,) if self.base.prebind.enabled else ())

    def write_state(self) -> None:
        """nodes.json and prometheus-targets.json (atomically: readers never see half)."""
        haproxy_pid = self.haproxy.pid if self.haproxy is not None and self.haproxy.returncode is None else None
        doc = nodes_document(haproxy_pid, self.public_url, [n.spec for n in self.nodes],
                             {n.node_id: n.pid for n in self.nodes}, self.path)
        _write_atomic(self.run_dir / "nodes.json", json.dumps(doc, indent=2) + "\n")
        targets = prometheus_targets([n.spec for n in self.nodes], self.stats_port, self.prometheus)
        _write_atomic(self.run_dir / "prometheus-targets.json", json.dumps(targets, indent=2) + "\n")

    def write_tls_pem(self) -> None:
        """HAProxy wants the certificate chain and its key in one file."""
        http = self.base.http
        if not http.tls_cert:
            return
        parts = []
        for key, name in (("tls_cert", http.tls_cert), ("tls_key", http.tls_key)):
            try:
                parts.append(Path(name).read_text())
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{self.base_path}: [http] {key}: cannot read {name}: {exc}") from None
        pem = self.run_dir / "haproxy.pem"
        _write_atomic(pem, "\n".join(p.rstrip("\n") for p in parts) + "\n", 0o600)
        self.tls_pem = str(pem)

    # ------------------------------------------------------------------ child processes
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        return env

    async def _pump(self, label: str, stream: asyncio.StreamReader | None) -> None:
        """Copy a child's output to our stderr, each line prefixed with its name."""
        if stream is None:
            return
        prefix = f"[{label}] ".encode()
        out = sys.stderr.buffer
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the limit: pass it on in pieces
                line = await stream.read(65536)
            if not line:
                return
            try:
                out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
                out.flush()
            except (OSError, ValueError):
                pass

    async def _spawn_node(self, node: Node) -> None:
        cmd = [sys.executable, "-m", "bosh", "--config", str(node.config_path)]
        node.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=self._env(), start_new_session=True, preexec_fn=_child_setup(os.getpid()),
            limit=1 << 20)
        node.started_at = time.monotonic()
        node.pump = asyncio.ensure_future(self._pump(node.node_id, node.proc.stdout))
        log.info("node %s started: pid %d, port %d", node.node_id, node.proc.pid, node.spec.port)
        self.write_state()

    async def _wait_ready(self, node: Node, timeout: float = _NODE_READY_TIMEOUT) -> bool:
        """Poll the node's /readyz until 200; False if it exits or the time is up."""
        deadline = time.monotonic() + timeout
        proc = node.proc
        while time.monotonic() < deadline:
            if proc is None or proc.returncode is not None or self.stopping:
                return False
            if await _http_status(node.spec.host, node.spec.port, "/readyz") == 200:
                return True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.1)
        return False

    async def _start_nodes(self) -> None:
        """First start: pick free ports, start every node, wait until all are ready. A node
        that cannot listen (its port was taken meanwhile) gets another port, twice."""
        pending = list(self.nodes)
        for attempt in range(3):
            for node in pending:
                node.spec = NodeSpec(node.node_id, free_port())
            self.write_node_configs()
            for node in pending:
                await self._spawn_node(node)
            results = await asyncio.gather(*(self._wait_ready(n) for n in pending))
            failed = [n for n, ok in zip(pending, results) if not ok]
            if self.stopping:
                return
            for node in failed:
                if node.proc is not None and node.proc.returncode is None:
                    raise StartupError(f"node {node.node_id} did not answer /readyz with 200 "
                                       f"within {_NODE_READY_TIMEOUT:g} s")
                if node.pump is not None:
                    await node.pump
                rc = node.proc.returncode if node.proc is not None else None
                if rc != 1 or attempt == 2:
                    raise StartupError(f"node {node.node_id} exited with {rc} during start-up "
                                       "(its log lines are above)")
                log.warning("node %s could not start on port %d; trying another port",
                            node.node_id, node.spec.port)
            pending = failed
            if not pending:
                return

    def _terminate(self, node: Node) -> None:
        """SIGTERM to the node's process, once (a second one would end its drain)."""
        proc = node.proc
        if proc is not None and proc.returncode is None and node.termed_pid != proc.pid:
            node.termed_pid = proc.pid
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    async def _stop_node(self, node: Node) -> None:
        """SIGTERM and wait until the node's process exits (SIGKILL after the drain bound)."""
        proc = node.proc
        if proc is None:
            return
        self._terminate(node)
        await self._stop_proc(proc, f"node {node.node_id}", self._stop_wait(), None)

    async def _stop_proc(self, proc: asyncio.subprocess.Process, what: str, timeout: float,
                         sig: int | None = signal.SIGTERM) -> None:
        if proc.returncode is None and sig is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
        except asyncio.TimeoutError:
            log.warning("%s did not stop within %g s: SIGKILL", what, timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _watch_node(self, node: Node) -> None:
        """Start the node again whenever it exits, unless we are stopping."""
        while True:
            proc = node.proc
            assert proc is not None
            rc = await proc.wait()
            if node.pump is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(node.pump), 2)
            self.write_state()
            if self.stopping:
                log.info("node %s (pid %d) exited with %s", node.node_id, proc.pid, rc)
                return
            if node.restarting:
                node.restarting = False
                delay = 0.0
                log.info("node %s (pid %d) exited with %s; starting it again", node.node_id,
                         proc.pid, rc)
            else:
                ran = time.monotonic() - node.started_at
                node.quick_exits = node.quick_exits + 1 if ran < 10 else 1
                delay = min(10.0, 0.25 * 2 ** (node.quick_exits - 1))
                log.warning("node %s (pid %d) exited with %s after %.1f s; starting it again in "
                            "%.2g s", node.node_id, proc.pid, rc, ran, delay)
            while not self.stopping:
                if delay:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.stop_requested.wait(), delay)
                if self.stopping:
                    return
                try:
                    await self._spawn_node(node)
                    if self.stopping:  # the stop came while it was being started
                        self._terminate(node)
                    break
                except OSError as exc:
                    log.error("node %s: cannot start: %s", node.node_id, exc)
                    delay = 5.0
            else:
                return

    async def _spawn_haproxy(self) -> None:
        cmd = [self.haproxy_bin, "-W", "-db", "-f", str(self.haproxy_cfg)]
        self.haproxy = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_child_setup(os.getpid()), limit=1 << 20)
        self.haproxy_pump = asyncio.ensure_future(self._pump("haproxy", self.haproxy.stdout))
        log.info("haproxy started: pid %d (%s)", self.haproxy.pid, " ".join(cmd))
        self.write_state()

    async def _check_haproxy_cfg(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.haproxy_bin, "-c", "-q", "-f", str(self.haproxy_cfg), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise StartupError(f"haproxy -c -f {self.haproxy_cfg} failed:\n"
                               + out.decode(errors="replace").strip())

    async def _start_haproxy(self) -> None:
        text = self.render_haproxy()
        _write_atomic(self.haproxy_cfg, text)
        await self._check_haproxy_cfg()
        await self._spawn_haproxy()
        deadline = time.monotonic() + _HAPROXY_UP_TIMEOUT
        want = {(b, n.node_id) for b in ("bosh_new", "bosh_owner") for n in self.nodes}
        while not self.stopping:
            assert self.haproxy is not None
            if self.haproxy.returncode is not None:
                if self.haproxy_pump is not None:
                    await self.haproxy_pump
                raise StartupError(f"haproxy exited with {self.haproxy.returncode} during start-up "
                                   f"(its messages are above; config {self.haproxy_cfg})")
            if self.stats_socket:
                up = await self.servers_up()
                if up is not None and want <= up:
                    return
            elif await _http_status(self.host.strip("[]") or "127.0.0.1", self.port, "/") is not None:
                return
            if time.monotonic() > deadline:
                raise StartupError(f"haproxy did not see every node up within {_HAPROXY_UP_TIMEOUT:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.haproxy.wait()), 0.1)

    async def _watch_haproxy(self) -> None:
        while True:
            proc = self.haproxy
            assert proc is not None
            rc = await proc.wait()
            if self.haproxy_pump is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.haproxy_pump), 2)
            self.write_state()
            if self.stopping:
                return
            log.error("haproxy (pid %d) exited with %s; starting it again in 1 s", proc.pid, rc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), 1.0)
            if self.stopping:
                return
            try:
                await self._spawn_haproxy()
                if self.stopping and self.haproxy is not None:
                    self.haproxy.send_signal(signal.SIGTERM)
            except OSError as exc:
                log.error("cannot start haproxy: %s", exc)
                return

    # ------------------------------------------------------------------ HAProxy runtime API
    async def admin(self, command: str, timeout: float = 2.0) -> str | None:
        """One command on HAProxy's stats socket; None when it cannot be reached."""
        if not self.stats_socket:
            return None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.stats_socket), timeout)
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), timeout)
            return data.decode(errors="replace")
        except (OSError, asyncio.TimeoutError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def worker_pid(self) -> int | None:
        """The pid of the HAProxy worker that answers the stats socket (``show info``)."""
        text = await self.admin("show info")
        for line in (text or "").splitlines():
            if line.startswith("Pid:"):
                with contextlib.suppress(ValueError):
                    return int(line.split(":", 1)[1])
        return None

    async def servers_up(self) -> set[tuple[str, str]] | None:
        """(backend, node id) of every server HAProxy has UP, from ``show stat``."""
        text = await self.admin("show stat")
        if not text or not text.startswith("# "):
            return None
        lines = text[2:].splitlines()
        head = lines[0].split(",")
        try:
            px, sv, st = head.index("pxname"), head.index("svname"), head.index("status")
        except ValueError:
            return None
        up = set()
        for line in lines[1:]:
            cols = line.split(",")
            if len(cols) > st and cols[st].startswith("UP"):
                up.add((cols[px], cols[sv]))
        return up

    async def _wait_haproxy_sees_up(self, node: Node) -> None:
        if not self.stats_socket:
            return
        deadline = time.monotonic() + _HAPROXY_UP_TIMEOUT
        want = {("bosh_new", node.node_id), ("bosh_owner", node.node_id)}
        while time.monotonic() < deadline and not self.stopping:
            up = await self.servers_up()
            if up is None or want <= up:
                return
            await asyncio.sleep(0.1)
        log.warning("haproxy does not see node %s up after %g s", node.node_id, _HAPROXY_UP_TIMEOUT)

    # ------------------------------------------------------------------ rolling restart
    async def reload_base(self) -> bool:
        """SIGHUP: read BASE again for the restarted nodes (and HAProxy's timeouts)."""
        try:
            new = config_mod.load(self.base_path)
            raw = tomllib.loads(self.base_path.read_text())
        except (ConfigError, OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            log.error("SIGHUP: %s not reloaded, nothing restarted: %s", self.base_path, exc)
            return False
        old = self.base.http
        for key in ("host", "port", "path", "tls_cert", "tls_key"):
            if getattr(new.http, key) != getattr(old, key):
                log.warning("SIGHUP: [http] %s changed; HAProxy keeps %r until %s is restarted",
                            key, getattr(old, key), PROG)
        keep = {k: getattr(old, k) for k in ("host", "port", "path", "tls_cert", "tls_key")}
        new = dataclasses.replace(new, http=dataclasses.replace(new.http, **keep))
        self.base, self.base_raw = new, raw
        self.trusted, self.keep_xff = node_trusted_proxies(new.http.trusted_proxies)
        try:
            self.write_node_configs()
        except ConfigError as exc:
            log.error("SIGHUP: a node config is invalid, nothing restarted: %s", exc)
            return False
        text = self.render_haproxy()
        if text != self.haproxy_cfg.read_text():
            _write_atomic(self.haproxy_cfg, text)
            try:
                await self._check_haproxy_cfg()
            except StartupError as exc:
                log.error("SIGHUP: %s", exc)
                return False
            if self.haproxy is not None and self.haproxy.returncode is None:
                log.info("SIGHUP: haproxy.cfg changed; reloading haproxy (SIGUSR2)")
                before = await self.worker_pid()
                self.haproxy.send_signal(signal.SIGUSR2)
                # The runtime API must reach the new worker (the old one finishes its
                # connections and leaves), or taking a node out of rotation is forgotten.
                deadline = time.monotonic() + _HAPROXY_UP_TIMEOUT
                while time.monotonic() < deadline and self.stats_socket:
                    now = await self.worker_pid()
                    if now is not None and now != before:
                        break
                    await asyncio.sleep(0.1)
                else:
                    if self.stats_socket:
                        log.warning("SIGHUP: haproxy's new worker did not answer within %g s",
                                    _HAPROXY_UP_TIMEOUT)
        return True

    async def rolling_restart(self) -> None:
        started = time.monotonic()
        if not await self.reload_base():
            return
        log.info("rolling restart of %d node(s)", len(self.nodes))
        for node in self.nodes:
            if self.stopping:
                return
            proc = node.proc
            if proc is None or proc.returncode is not None:
                log.info("rolling restart: node %s is not running; the supervisor starts it",
                         node.node_id)
                continue
            # No new sessions for it, while HAProxy still routes its own sids to it.
            await self.admin(f"set server bosh_new/{node.node_id} state maint")
            node.restarting = True
            log.info("rolling restart: draining node %s (pid %d)", node.node_id, proc.pid)
            await self._stop_node(node)
            deadline = time.monotonic() + 30
            while not self.stopping and (node.proc is proc or node.proc is None
                                         or node.proc.returncode is not None):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            ok = await self._wait_ready(node)
            await self.admin(f"set server bosh_new/{node.node_id} state ready")
            if not ok:
                log.error("rolling restart: node %s is not ready again; going on", node.node_id)
                continue
            await self._wait_haproxy_sees_up(node)
            log.info("rolling restart: node %s is back (pid %s)", node.node_id, node.pid)
        log.info("rolling restart done in %.1f s", time.monotonic() - started)

    def on_hup(self) -> None:
        if self.stopping:
            return
        if self.rolling is not None and not self.rolling.done():
            log.warning("SIGHUP: a rolling restart is already running; ignored")
            return
        if not all(n.watcher is not None for n in self.nodes):
            log.warning("SIGHUP during start-up; ignored")
            return
        self.rolling = asyncio.ensure_future(self.rolling_restart())

    def on_stop(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("stop signal: draining %d node(s)", len(self.nodes))
            self.stopping = True
            self.stop_requested.set()
        else:
            log.warning("second stop signal: ending the nodes' drain now")
            for node in self.nodes:
                if node.proc is not None and node.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        node.proc.send_signal(signal.SIGTERM)

    # ------------------------------------------------------------------ run
    async def shutdown(self) -> None:
        self.stopping = True
        self.stop_requested.set()
        if self.rolling is not None and not self.rolling.done():
            self.rolling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.rolling
        # Every node drains at once (HAProxy keeps routing their sids meanwhile).
        async def stop(node: Node) -> None:
            while node.proc is not None and node.proc.returncode is None:
                await self._stop_node(node)
                await asyncio.sleep(0)  # a watcher may just have started it again

        await asyncio.gather(*(stop(n) for n in self.nodes))
        for node in self.nodes:
            if node.watcher is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(node.watcher, 5)
            if node.pump is not None and not node.pump.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(node.pump), 2)
        if self.haproxy is not None and self.haproxy.returncode is None:
            # Soft stop first (it closes idle connections and finishes what is in flight).
            proc = self.haproxy
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), 5)
            except asyncio.TimeoutError:
                await self._stop_proc(proc, "haproxy", 5)
        if self.haproxy_watcher is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.haproxy_watcher, 5)
        if self.haproxy_pump is not None and not self.haproxy_pump.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.haproxy_pump), 2)
        self.write_state()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_stop)
        loop.add_signal_handler(signal.SIGHUP, self.on_hup)
        _load_libc()
        rc = 0
        try:
            self.write_tls_pem()
            await self._start_nodes()
            if not self.stopping:
                if self.stats_port == 0:
                    self.stats_port = free_port()
                await self._start_haproxy()
            if not self.stopping:
                for node in self.nodes:
                    node.watcher = asyncio.ensure_future(self._watch_node(node))
                self.haproxy_watcher = asyncio.ensure_future(self._watch_haproxy())
                if self.stats_port:
                    log.info("haproxy metrics on http://127.0.0.1:%d/haproxy-metrics, stats page "
                             "/haproxy-stats", self.stats_port)
                log.info("state in %s (nodes.json, haproxy.cfg, prometheus-targets.json)", self.run_dir)
                # Launchers and tests wait for this line.
                log.info("listening on %s (%d nodes)", self.public_url, len(self.nodes))
                await self.stop_requested.wait()
        except StartupError as exc:
            log.error("%s", exc)
            rc = 1
        except ConfigError as exc:
            print(f"{PROG}: config error: {exc}", file=sys.stderr)
            rc = 2
        finally:
            await self.shutdown()
        log.info("stopped")
        return rc


# ----------------------------------------------------------------------------- CLI
def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"{n} is out of range; allowed: 1 to 256")
    return n


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n} is out of range; allowed: 0 to 65535")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="N bosh-cm nodes behind HAProxy on one machine (README, 'Scaling out')")
    parser.add_argument("--config", "-c", required=True,
                        help="base TOML config (see conf/bosh-cm.toml); HAProxy takes its [http] "
                             "host/port/path, the nodes every other key")
    parser.add_argument("--nodes", "-n", type=_positive, default=os.cpu_count() or 1,
                        help="number of bosh-cm nodes (default: the number of CPU cores, %(default)s)")
    parser.add_argument("--run-dir", help="directory for haproxy.cfg, nK.toml, nodes.json "
                                          "(default: a new directory under $TMPDIR)")
    parser.add_argument("--stats-port", type=_port, default=0,
                        help="loopback port of HAProxy's Prometheus exporter (/haproxy-metrics) "
                             "and stats page (/haproxy-stats); default: a free port")
    parser.add_argument("--haproxy", default="haproxy", help="the haproxy binary (default: haproxy)")
    args = parser.parse_args(argv)
    base_path = Path(args.config)
    try:
        base = config_mod.load(base_path)
        base_raw = tomllib.loads(base_path.read_text())
    except ConfigError as exc:
        print(f"{PROG}: config error: {exc}", file=sys.stderr)
        return 2
    haproxy_bin = find_haproxy(args.haproxy)
    if haproxy_bin is None:
        print(f"{PROG}: {args.haproxy} not found on PATH or in /usr/sbin ({INSTALL_HINT}; "
              "HAProxy 2.6 or newer)", file=sys.stderr)
        return 1
    logging.basicConfig(level=base.log.level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(min(logging.INFO, logging.getLevelName(base.log.level)))
    if base.cluster.node_id:
        log.warning("%s: [cluster] node_id %r is ignored: the nodes are n1..n%d", base_path,
                    base.cluster.node_id, args.nodes)
    if args.run_dir:
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="bosh-cm-cluster-"))
    cluster = Cluster(base_path.resolve(), base, base_raw, args.nodes, run_dir.resolve(),
                      haproxy_bin, args.stats_port)
    return asyncio.run(cluster.run())


if __name__ == "__main__":
    sys.exit(main())
