"""bosh-cm-cluster (issue 9): the real launcher, the real HAProxy, 3 real bosh-cm nodes in
front of the real Prosody fixture, all on loopback.

One launcher serves the whole module (started once, about 3 s); the tests run in file order
and the last one stops it. Clients bind to their own loopback addresses (127.0.x.y) so that
the per-IP limit of the base config (max_sessions_per_ip = 3) only bites where a test wants
it to, and so that the nodes must see each client's real address through HAProxy.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from bosh.cluster import find_haproxy
from bosh.haproxy import HaproxyNode, render_haproxy_cfg
from tests.support.boshclient import BoshClient, is_message
from tests.support.boshcm import REPO_ROOT, render_toml
from tests.support.prosody import USERS, ProsodyServer, free_port

pytestmark = pytest.mark.integration

NODES = 3
DRAIN_TIMEOUT = 5.0
_READY = re.compile(r"listening on (http://\S+) \((\d+) nodes\)")


def require_haproxy() -> str:
    """Design §7: fail in CI, skip on a dev box without HAProxy."""
    path = find_haproxy()
    if path is not None:
        return path
    msg = "haproxy not installed (bash scripts/test installs it: apt-get install haproxy)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class Launcher:
    """``python -m bosh.cluster`` as a subprocess, its output in ``run_dir/launcher.log``."""

    def __init__(self, workdir: Path, prosody: ProsodyServer, nodes: int = NODES) -> None:
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/http-bind"
        self.ws_url = f"ws://127.0.0.1:{self.port}/xmpp-websocket"
        self.domain = prosody.domain
        self.nodes = nodes
        self.log_path = workdir / "launcher.log"
        self.base_path = workdir / "base.toml"
        self.base_path.write_text(render_toml({
            "http": {"host": "127.0.0.1", "port": self.port, "path": "/http-bind"},
            "bosh": {"max_wait": 10, "max_inactivity": 10, "max_hold": 1, "polling": 2,
                     "max_sessions_per_ip": 3},
            "upstream": {"domains": [prosody.domain], "host": "127.0.0.1",
                         "port": prosody.c2s_port, "tls": "required",
                         "ca_file": str(prosody.cert_path), "connect_timeout": 5.0},
            "cluster": {"drain_timeout": DRAIN_TIMEOUT},
            "log": {"level": "INFO"},
        }))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 40) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bosh.cluster", "--config", str(self.base_path),
                 "--nodes", str(self.nodes), "--run-dir", str(self.run_dir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=str(REPO_ROOT), env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            m = _READY.search(self.log())
            if m:
                assert m.group(1) == self.url and int(m.group(2)) == self.nodes, m.group(0)
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited with {self.proc.returncode}\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"launcher not listening within {timeout}s\n{self.tail()}")
            try:
                self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace") if self.log_path.exists() else ""

    def tail(self, limit: int = 6000) -> str:
        return "--- launcher.log ---\n" + self.log()[-limit:]

    def nodes_json(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "nodes.json").read_text())

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.nodes_json()["nodes"] if n["node_id"] == node_id)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

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


@pytest.fixture(scope="module")
def launcher(prosody: ProsodyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    require_haproxy()
    cl = Launcher(tmp_path_factory.mktemp("cluster"), prosody)
    cl.start()
    try:
        yield cl
    finally:
        cl.stop()


# ------------------------------------------------------------------ clients
_addresses = itertools.count(10)


def next_ip(net: int) -> str:
    """A fresh loopback source address 127.0.NET.X (a distinct client for the per-IP limit)."""
    return f"127.0.{net}.{next(_addresses) % 250 + 2}"


@dataclass
class Clients:
    """BOSH and WebSocket clients, each from its own loopback address; closed after the test."""

    launcher: Launcher
    made: list[Any] = field(default_factory=list)
    https: list[aiohttp.ClientSession] = field(default_factory=list)

    def http(self, ip: str) -> aiohttp.ClientSession:
        s = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                                  connector=aiohttp.TCPConnector(local_addr=(ip, 0), limit=0))
        self.https.append(s)
        return s

    def bosh(self, ip: str, url: str | None = None) -> BoshClient:
        c = BoshClient(url or self.launcher.url, http=self.http(ip))
        self.made.append(c)
        return c

    async def session(self, ip: str, wait: int = 2) -> BoshClient:
        c = self.bosh(ip)
        resp = await c.create(self.launcher.domain, wait=wait)
        assert resp.status == 200 and not resp.terminated and c.sid, (resp, self.launcher.tail())
        return c

    async def session_on(self, node_id: str, net: int) -> BoshClient:
        """A new session that landed on ``node_id`` (the others are closed again)."""
        for _ in range(4 * NODES):
            c = await self.session(next_ip(net))
            assert c.sid is not None
            if c.sid.startswith(node_id + "."):
                return c
            await c.close()
        raise AssertionError(f"no session landed on {node_id}")

    def ws(self, ip: str) -> Any:
        from tests.support.wsclient import WsClient

        c = WsClient(self.launcher.ws_url, http=self.http(ip))
        self.made.append(c)
        return c

    async def aclose(self) -> None:
        for c in self.made:
            try:
                if isinstance(c, BoshClient):
                    await c.close()
                else:
                    await c.aclose()
            except Exception:  # noqa: BLE001 - cleanup
                pass
        for s in self.https:
            await s.close()


@pytest.fixture
async def clients(launcher: Launcher) -> AsyncIterator[Clients]:
    made = Clients(launcher)
    try:
        yield made
    finally:
        await made.aclose()


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


async def node_metrics(launcher: Launcher) -> dict[str, str]:
    out = {}
    for n in launcher.nodes_json()["nodes"]:
        status, text = await get(f"http://127.0.0.1:{n['port']}/metrics")
        assert status == 200
        out[n["node_id"]] = text
    return out


async def until(cond: Callable[[], Awaitable[bool]], timeout: float, what: str,
                launcher: Launcher) -> None:
    """Poll ``cond`` until it is true; fail with the launcher's log at the deadline."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{launcher.tail()}")
        await asyncio.sleep(0.05)  # a poll step against a deadline, not a wait for time to pass


def node_of(c: BoshClient) -> str:
    assert c.sid is not None
    return c.sid.split(".", 1)[0]


# ------------------------------------------------------------------ configuration checks
def test_config_error_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "base.toml"
    bad.write_text("[bosh]\nmax_wait = 0\n")
    proc = subprocess.run([sys.executable, "-m", "bosh.cluster", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 2, proc.stderr
    assert str(bad) in proc.stderr and "max_wait" in proc.stderr


def test_missing_haproxy_says_how_to_install_it(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text("")
    proc = subprocess.run([sys.executable, "-m", "bosh.cluster", "--config", str(base),
                           "--haproxy", str(tmp_path / "no-haproxy")],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 1
    assert "apt-get install haproxy" in proc.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "bosh-cm-cluster"
    if not script.exists():
        pytest.skip("bosh-cm-cluster not installed in this environment (pip install -e .)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--nodes" in proc.stdout and "--run-dir" in proc.stdout


def _combined_pem(prosody: ProsodyServer, tmp_path: Path) -> Path:
    pem = tmp_path / "site.pem"
    pem.write_text(prosody.cert_path.read_text() + prosody.key_path.read_text())
    return pem


def test_rendered_variants_and_the_example_pass_haproxy_check(prosody: ProsodyServer,
                                                              tmp_path: Path) -> None:
    haproxy = require_haproxy()
    pem = _combined_pem(prosody, tmp_path)
    nodes = [HaproxyNode("n1", "127.0.0.1", 6001), HaproxyNode("n2", "::1", 6002)]
    variants = {
        "tls": render_haproxy_cfg(nodes, host="127.0.0.1", port=8443, tls_pem=str(pem),
                                  stats_port=9101, stats_socket=str(tmp_path / "s.sock")),
        "ipv6": render_haproxy_cfg(nodes, host="::", port=5280, keep_forwarded_for=False),
    }
    example = (REPO_ROOT / "conf" / "haproxy-bosh.cfg").read_text()
    assert "/etc/haproxy/certs/chat.example.org.pem" in example
    variants["example"] = example.replace("/etc/haproxy/certs/chat.example.org.pem", str(pem)) \
        .replace("/run/haproxy/admin.sock", str(tmp_path / "admin.sock"))
    for name, text in variants.items():
        path = tmp_path / f"{name}.cfg"
        path.write_text(text)
        proc = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, (name, proc.stdout + proc.stderr)


# ------------------------------------------------------------------ (a) spreading and routing
async def test_sessions_spread_over_all_nodes_and_every_request_reaches_its_owner(
        launcher: Launcher, clients: Clients) -> None:
    doc = launcher.nodes_json()
    assert doc["haproxy"]["url"] == launcher.url and _alive(doc["haproxy"]["pid"])
    assert [n["node_id"] for n in doc["nodes"]] == [f"n{i}" for i in range(1, NODES + 1)]
    assert len({n["port"] for n in doc["nodes"]}) == NODES
    for n in doc["nodes"]:
        assert _alive(n["pid"]) and n["url"] == f"http://127.0.0.1:{n['port']}/http-bind"
        assert await get(f"http://127.0.0.1:{n['port']}/readyz") == (200, "ready\n")
    # the operations endpoints are not served through the balancer
    assert (await get(f"http://127.0.0.1:{launcher.port}/metrics"))[0] == 404

    # 30 BOSH sessions from 15 addresses, created at once
    ips = [next_ip(10) for _ in range(15)]
    bosh = await asyncio.gather(*(clients.session(ips[i % 15]) for i in range(30)))
    per_node: dict[str, int] = {}
    for c in bosh:
        per_node[node_of(c)] = per_node.get(node_of(c), 0) + 1
    assert set(per_node) == {f"n{i}" for i in range(1, NODES + 1)}, per_node
    assert min(per_node.values()) >= 5, per_node
    # a follow-up of each (held until 'wait' runs out) is answered by its owner
    answers = await asyncio.gather(*(c.send() for c in bosh))
    assert all(r.status == 200 and not r.terminated for r in answers), answers

    # logged-in users chatting across nodes: alice, bob, carol over BOSH and over WebSocket
    users = list(USERS)
    logged = []
    for user in users:
        c = await clients.session(next_ip(10), wait=5)
        await c.login(user, USERS[user], resource="bosh")
        await c.send_presence()
        logged.append(c)
    sockets = []
    for i, user in enumerate(users):
        w = clients.ws(next_ip(10))
        await w.connect()
        await w.login(user, USERS[user], resource="ws", to=launcher.domain)
        await w.send_presence()
        sockets.append(w)
    for i, c in enumerate(logged):
        peer = users[(i + 1) % len(users)]
        await c.send_message(f"{peer}@{launcher.domain}/ws", f"bosh {i} to {peer}")
        await sockets[i].send_message(f"{peer}@{launcher.domain}/bosh", f"ws {i} to {peer}")
    for i, user in enumerate(users):
        sender = (i - 1) % len(users)
        await sockets[i].wait_for(is_message(body=f"bosh {sender} to {user}"), timeout=10)
        await logged[i].wait_for(is_message(body=f"ws {sender} to {user}"), timeout=10)
    # three more WebSocket streams, not logged in
    for _ in range(3):
        w = clients.ws(next_ip(10))
        await w.connect()
        await w.open(launcher.domain)
        sockets.append(w)

    metrics = await node_metrics(launcher)
    ws_open = {n: metric(t, "bosh_transport_sessions_open", transport="websocket")
               for n, t in metrics.items()}
    assert sum(ws_open.values()) == 6 and min(ws_open.values()) >= 1, ws_open
    for node_id, text in metrics.items():
        assert metric(text, "bosh_node_info", node_id=node_id) == 1
        # no request reached a node that did not own its session
        assert metric(text, "bosh_errors_total", condition="item-not-found") == 0, node_id


# ------------------------------------------------------------------ (b) a draining node
async def test_a_draining_node_takes_no_new_sessions_but_serves_its_own(
        launcher: Launcher, clients: Clients) -> None:
    target = "n2"
    own = await clients.session_on(target, 11)
    old = launcher.node(target)
    os.kill(old["pid"], signal.SIGTERM)
    ready = f"http://127.0.0.1:{old['port']}/readyz"

    async def draining() -> bool:
        return (await get(ready))[0] == 503

    await until(draining, 5, f"{target} /readyz 503", launcher)
    # its open session goes on being served: a whole login, through HAProxy
    await own.login("alice", USERS["alice"], resource="drain")
    assert own.jid and own.jid.endswith("/drain")

    async def out_of_rotation() -> bool:
        return ("bosh_new", target) not in await launcher.haproxy_up()

    await until(out_of_rotation, 5, f"HAProxy takes {target} out of bosh_new", launcher)
    assert ("bosh_owner", target) in await launcher.haproxy_up()  # still routed its own sids
    fresh = [await clients.session(next_ip(11)) for _ in range(2 * NODES)]
    assert all(node_of(c) != target for c in fresh), [c.sid for c in fresh]
    iq = await own.iq("<ping xmlns='urn:xmpp:ping'/>", to=launcher.domain)
    assert iq.get("type") == "result"
    # its last session ends: the node exits (drained) and the launcher starts it again
    await own.close()

    async def restarted() -> bool:
        pid = launcher.node(target)["pid"]
        return pid is not None and pid != old["pid"] and (await get(ready))[0] == 200

    await until(restarted, 20, f"{target} started again", launcher)
    assert launcher.node(target)["port"] == old["port"]
    assert not _alive(old["pid"])


# ------------------------------------------------------------------ (c) a node crash
async def test_a_killed_node_is_routed_around_and_started_again(launcher: Launcher,
                                                               clients: Clients) -> None:
    target = "n3"

    async def all_up() -> bool:
        return len(await launcher.haproxy_up()) == 2 * NODES

    await until(all_up, 10, "all nodes up in HAProxy", launcher)
    victim = await clients.session_on(target, 12)
    others = [await clients.session_on(n, 12) for n in ("n1", "n2")]
    held = await victim.post()  # a request held by the node when it dies
    old = launcher.node(target)
    os.kill(old["pid"], signal.SIGKILL)
    killed = time.monotonic()
    resp = await asyncio.wait_for(held, 5)
    assert resp.status == 200 and resp.terminated, resp
    assert resp.condition in ("item-not-found", "remote-connection-failed"), resp
    # the next request naming its sid: answered at once, HTTP 200
    assert victim.sid is not None
    again = await victim.post_raw(victim.build(rid=victim.rid + 1, sid=victim.sid), timeout=5)
    assert again.status == 200 and again.condition in ("item-not-found", "remote-connection-failed")
    assert again.elapsed < 2, again.elapsed
    # creation requests meanwhile: none fails (a refused connection is retried elsewhere)
    made = 0
    while time.monotonic() - killed < 2.5:
        c = await clients.session(next_ip(12))
        made += 1
        await c.close()
    assert made >= 5
    # sessions on the other nodes go on
    answers = await asyncio.gather(*(c.send() for c in others))
    assert all(r.status == 200 and not r.terminated for r in answers), answers

    async def restarted() -> bool:
        pid = launcher.node(target)["pid"]
        return (pid is not None and pid != old["pid"]
                and (await get(f"http://127.0.0.1:{old['port']}/readyz"))[0] == 200)

    await until(restarted, 20, f"{target} started again", launcher)
    assert "node n3 (pid %d) exited with -9" % old["pid"] in launcher.log()


# ------------------------------------------------------------------ (d) per-IP limits
async def test_per_ip_limit_counts_the_real_client_address(launcher: Launcher,
                                                           clients: Clients) -> None:
    async def all_up() -> bool:
        return len(await launcher.haproxy_up()) == 2 * NODES

    await until(all_up, 10, "all nodes up in HAProxy", launcher)
    before = {n: metric(t, "bosh_limit_hits_total", limit="per_ip")
              for n, t in (await node_metrics(launcher)).items()}
    ok: list[BoshClient] = []
    refused = None
    for _ in range(3 * NODES + 3):
        c = clients.bosh("127.0.0.2")
        resp = await c.create(launcher.domain, wait=2)
        if resp.terminated:
            refused = resp
            break
        ok.append(c)
    assert refused is not None and refused.condition == "policy-violation", refused
    assert 3 <= len(ok) <= 3 * NODES
    after = {n: metric(t, "bosh_limit_hits_total", limit="per_ip")
             for n, t in (await node_metrics(launcher)).items()}
    hit = [n for n in after if after[n] > before[n]]
    assert len(hit) == 1, (before, after)
    # the node that refused holds exactly max_sessions_per_ip sessions of that address
    assert sum(1 for c in ok if node_of(c) == hit[0]) == 3
    assert "refusing new sessions from 127.0.0.2 " in launcher.log()
    assert "refusing new sessions from 127.0.0.1 " not in launcher.log()
    # another address is not limited, also on the node that refused 127.0.0.2
    for _ in range(2 * NODES):
        c = await clients.session("127.0.0.3")
        if node_of(c) == hit[0]:
            break
        await c.close()
    else:
        raise AssertionError(f"no session from 127.0.0.3 landed on {hit[0]}")


# ------------------------------------------------------------------ rolling restart (SIGHUP)
async def test_sighup_restarts_every_node_one_at_a_time(launcher: Launcher,
                                                        clients: Clients) -> None:
    assert launcher.proc is not None
    before = {n["node_id"]: n["pid"] for n in launcher.nodes_json()["nodes"]}
    mark = len(launcher.log())
    launcher.proc.send_signal(signal.SIGHUP)
    created = 0
    deadline = time.monotonic() + 40
    while "rolling restart done" not in launcher.log()[mark:]:
        assert time.monotonic() < deadline, launcher.tail()
        # never more than one node down: every creation request succeeds throughout
        c = await clients.session(next_ip(13))
        created += 1
        await c.close()
    after = {n["node_id"]: n["pid"] for n in launcher.nodes_json()["nodes"]}
    assert all(after[n] is not None and after[n] != before[n] for n in before), (before, after)
    assert created >= NODES
    log = launcher.log()[mark:]
    order = [log.index(f"rolling restart: draining node n{i}") for i in range(1, NODES + 1)]
    backs = [log.index(f"rolling restart: node n{i} is back") for i in range(1, NODES + 1)]
    assert order[0] < backs[0] < order[1] < backs[1] < order[2] < backs[2]


# ------------------------------------------------------------------ (e) stopping
async def test_sigterm_drains_and_stops_everything(launcher: Launcher, clients: Clients) -> None:
    assert launcher.proc is not None
    doc = launcher.nodes_json()
    pids = [n["pid"] for n in doc["nodes"]] + [doc["haproxy"]["pid"]]
    assert all(_alive(p) for p in pids)
    open_session = await clients.session(next_ip(14), wait=5)
    held = await open_session.post()
    proc = launcher.proc
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    # the open session's held request is answered (system-shutdown at drain_timeout at the latest)
    resp = await asyncio.wait_for(held, DRAIN_TIMEOUT + 10)
    assert resp.status == 200
    rc = await asyncio.to_thread(proc.wait, DRAIN_TIMEOUT + 20)
    assert rc == 0, launcher.tail()
    assert time.monotonic() - started < DRAIN_TIMEOUT + 15
    assert not any(_alive(p) for p in pids), pids
    run_dir = str(launcher.run_dir)
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if run_dir in cmd and _alive(int(entry.name)):
                left.append(cmd)
    assert not left, left
    final = launcher.nodes_json()
    assert final["haproxy"]["pid"] is None and all(n["pid"] is None for n in final["nodes"])
