"""bosh-cm-cluster (issue 9): the real launcher, the real HAProxy, 3 real bosh-cm nodes in
front of the real Prosody fixture, all on loopback.

One launcher serves the whole module (started once, about 3 s); the tests run in file order
and the last one stops it. Clients bind to their own loopback addresses (127.0.x.y) so that
the per-IP limit of the base config (max_sessions_per_ip = 3) only bites where a test wants
it to, and so that the nodes must see each client's real address through HAProxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest

from bosh.haproxy import HaproxyNode, render_haproxy_cfg
from tests.support.boshclient import BoshClient, is_message
from tests.support.boshcm import REPO_ROOT
from tests.support.cluster import (ClusterLauncher, alive, client_http, get, metric,
                                   require_haproxy, until)
from tests.support.prosody import USERS, ProsodyServer

pytestmark = pytest.mark.integration

NODES = 3
DRAIN_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def launcher(prosody: ProsodyServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLauncher]:
    require_haproxy()
    cl = ClusterLauncher(tmp_path_factory.mktemp("cluster"), prosody, NODES, base={
        "bosh": {"max_sessions_per_ip": 3},
        "cluster": {"drain_timeout": DRAIN_TIMEOUT},
    })
    with cl:
        yield cl


# ------------------------------------------------------------------ clients
_addresses = itertools.count(10)


def next_ip(net: int) -> str:
    """A fresh loopback source address 127.0.NET.X (a distinct client for the per-IP limit)."""
    return f"127.0.{net}.{next(_addresses) % 250 + 2}"


@dataclass
class Clients:
    """BOSH and WebSocket clients, each from its own loopback address; closed after the test."""

    launcher: ClusterLauncher
    made: list[Any] = field(default_factory=list)
    https: list[aiohttp.ClientSession] = field(default_factory=list)

    def http(self, ip: str) -> aiohttp.ClientSession:
        s = client_http(ip)
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
async def clients(launcher: ClusterLauncher) -> AsyncIterator[Clients]:
    async with contextlib.aclosing(Clients(launcher)) as made:
        yield made


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
        launcher: ClusterLauncher, clients: Clients) -> None:
    doc = launcher.nodes_json()
    assert doc["haproxy"]["url"] == launcher.url and alive(doc["haproxy"]["pid"])
    assert [n["node_id"] for n in doc["nodes"]] == [f"n{i}" for i in range(1, NODES + 1)]
    assert len({n["port"] for n in doc["nodes"]}) == NODES
    for n in doc["nodes"]:
        assert alive(n["pid"]) and n["url"] == f"http://127.0.0.1:{n['port']}/http-bind"
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

    metrics = await launcher.node_metrics()
    ws_open = {n: metric(t, "bosh_transport_sessions_open", transport="websocket")
               for n, t in metrics.items()}
    assert sum(ws_open.values()) == 6 and min(ws_open.values()) >= 1, ws_open
    for node_id, text in metrics.items():
        assert metric(text, "bosh_node_info", node_id=node_id) == 1
        # no request reached a node that did not own its session
        assert metric(text, "bosh_errors_total", condition="item-not-found") == 0, node_id


# ------------------------------------------------------------------ (b) a draining node
async def test_a_draining_node_takes_no_new_sessions_but_serves_its_own(
        launcher: ClusterLauncher, clients: Clients) -> None:
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
    assert not alive(old["pid"])


# ------------------------------------------------------------------ (c) a node crash
async def test_a_killed_node_is_routed_around_and_started_again(launcher: ClusterLauncher,
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
async def test_per_ip_limit_counts_the_real_client_address(launcher: ClusterLauncher,
                                                           clients: Clients) -> None:
    async def all_up() -> bool:
        return len(await launcher.haproxy_up()) == 2 * NODES

    await until(all_up, 10, "all nodes up in HAProxy", launcher)
    before = {n: metric(t, "bosh_limit_hits_total", limit="per_ip")
              for n, t in (await launcher.node_metrics()).items()}
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
             for n, t in (await launcher.node_metrics()).items()}
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
async def test_sighup_restarts_every_node_one_at_a_time(launcher: ClusterLauncher,
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
async def test_sigterm_drains_and_stops_everything(launcher: ClusterLauncher,
                                                   clients: Clients) -> None:
    assert launcher.proc is not None
    doc = launcher.nodes_json()
    pids = [n["pid"] for n in doc["nodes"]] + [doc["haproxy"]["pid"]]
    assert all(alive(p) for p in pids)
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
    assert not any(alive(p) for p in pids), pids
    run_dir = str(launcher.run_dir)
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if run_dir in cmd and alive(int(entry.name)):
                left.append(cmd)
    assert not left, left
    final = launcher.nodes_json()
    assert final["haproxy"]["pid"] is None and all(n["pid"] is None for n in final["nodes"])
