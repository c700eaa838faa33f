"""bosh-bench: bosh-cm side by side with Prosody's own BOSH (or WebSocket), same workload.

Run it with ``scripts/bosh-bench`` (which prepares .venv); ``--help`` lists the knobs.
For each session count it starts a fresh throwaway Prosody (users pre-created), then:

1. setup   N full logins (creation, SASL PLAIN, restart, bind, presence), C at a time;
2. idle    every session holds one request; RSS per session, CPU while idle;
3. push    M messages at R msg/s from a TCP (STARTTLS) user to random BOSH users,
           latency from the send until the held response carrying it has been read;
4. burst   B messages as fast as the sender can write: delivered msg/s, messages per
           HTTP response, server CPU per delivered message;

once against bosh-cm in front of that Prosody (STARTTLS upstream) and once against
Prosody's /http-bind. Every message sent must arrive: a lost one fails the run (exit 1).
Loopback only. Writes a JSON result and a PNG chart.

--transport websocket: the same four phases over XMPP-over-WebSocket (RFC 7395) instead,
against bosh-cm's ws://.../xmpp-websocket and Prosody's own mod_websocket (/xmpp-websocket
on its HTTP port): a login is the handshake (subprotocol xmpp), <open/>, SASL PLAIN, a new
<open/>, bind and presence; every stanza is one WebSocket message, so "messages per
response" becomes messages per WebSocket message. The summary adds the issue's WebSocket
targets (set at 1,000 sessions).

--nodes N: bosh-cm also through the launcher (``python -m bosh.cluster``, i.e. bosh-cm-cluster:
HAProxy + N nodes), target "bosh-cm-cluster", run first, then one bosh-cm reached directly
("bosh-cm", the column of the default mode) and Prosody, same four phases, same run. The
table has three columns; "server" CPU of the cluster column is every node + HAProxy (master
and worker), "server" RSS the nodes' sum; a split table shows each node, HAProxy, the
launcher's log pump (counted in no total), sessions per node (each node's /metrics) and the
descriptors each process holds against its RLIMIT_NOFILE. Then what the HAProxy hop adds
(push p50/p99, CPU per message: via HAProxy minus direct) and the issue's cluster targets.
A request that misses its owner (item-not-found on any node) or a node restarted during the
run fails the run like a lost message. Both transports.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procstat import (  # noqa: E402
    cpu_seconds, nofile_limit, open_fds, raise_nofile, rss_kib, self_cpu_seconds,
)
from servers import PASSWORD, REPO, BenchBoshCM, BenchCluster, BenchProsody, node_metrics  # noqa: E402
from loadgen import BoshLoad, WsLoad  # noqa: E402

from scripts.lib.xmppclient import XmppPeer  # noqa: E402

TARGETS = ("bosh-cm", "prosody")
# --nodes N: bosh-cm through bosh-cm-cluster (HAProxy + N nodes), beside the two above.
CLUSTER = "bosh-cm-cluster"
ALL_TARGETS = (CLUSTER, "bosh-cm", "prosody")
TRANSPORTS = ("bosh", "websocket")
LABELS = {"bosh": {"bosh-cm": "bosh-cm", "prosody": "Prosody BOSH"},
          "websocket": {"bosh-cm": "bosh-cm", "prosody": "Prosody WebSocket"}}
LABEL = LABELS["bosh"]

# The issue's WebSocket targets, at 1,000 sessions (bosh-cm's figures; the last is a ratio).
WS_TARGET_SESSIONS = 1000
WS_RSS_KIB = 56.0           # bosh-cm RSS per session, the upstream TLS stream included
WS_CPU_MS_PER_MSG = 0.08    # bosh-cm CPU per pushed message (burst phase)
WS_PUSH_P99_MS = 10.0       # push p99 at 100 msg/s

# The issue's cluster targets (issue 9): sessions through HAProxy within the fd limit.
CLUSTER_TARGET_SESSIONS = 9000


def label_of(kind: str, transport: str, nodes: int = 0) -> str:
    if kind == CLUSTER:
        return f"bosh-cm via HAProxy ({nodes} nodes)"
    if kind == "bosh-cm" and nodes:
        return "bosh-cm, 1 node direct"
    return LABELS[transport][kind]


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def lat_summary(ns: list[int]) -> dict[str, Any]:
    ms = [v / 1e6 for v in ns]
    return {"count": len(ms), "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99),
            "max_ms": max(ms) if ms else None}


def _cpu(pids: int | list[int]) -> float:
    return cpu_seconds(pids) if isinstance(pids, int) else sum(cpu_seconds(p) for p in pids)


def _rss(pids: int | list[int]) -> int:
    return rss_kib(pids) if isinstance(pids, int) else sum(rss_kib(p) for p in pids)


class CpuWindow:
    """CPU seconds of some processes (and of ourselves) over a window; a name may stand for
    several processes (a cluster's nodes + HAProxy), whose CPU is summed."""

    def __init__(self, pids: dict[str, int | list[int]]) -> None:
        self.pids = pids
        self.t0 = time.perf_counter()
        self.c0 = {k: _cpu(p) for k, p in pids.items()}
        self.g0 = self_cpu_seconds()

    def read(self) -> dict[str, float]:
        out = {k: _cpu(p) - self.c0[k] for k, p in self.pids.items()}
        out["loadgen"] = self_cpu_seconds() - self.g0
        out["wall"] = time.perf_counter() - self.t0
        return out


async def run_target(kind: str, n: int, args: argparse.Namespace, prosody: BenchProsody,
                     workdir: Path, seq0: int) -> dict[str, Any]:
    ws = args.transport == "websocket"
    label = label_of(kind, args.transport, args.nodes)
    res: dict[str, Any] = {"target": kind, "transport": args.transport, "sessions": n}
    prosody.start()
    cm: BenchBoshCM | None = None
    cluster: BenchCluster | None = None
    load: BoshLoad | WsLoad | None = None
    sender: XmppPeer | None = None
    try:
        if kind == "bosh-cm":
            cm = BenchBoshCM(workdir / "bosh-cm", prosody, log_level=args.log_level,
                             event_loop=args.cm_loop, max_wait=max(args.wait, 10),
                             gc_threshold=args.cm_gc_threshold, websocket=ws)
            cm.start()
            url, server_pid = (cm.ws_url if ws else cm.url), cm.pid
        elif kind == CLUSTER:
            cluster = BenchCluster(workdir / "cluster", prosody, args.nodes, log_level=args.log_level,
                                   event_loop=args.cm_loop, max_wait=max(args.wait, 10), websocket=ws)
            cluster.start()
            url, server_pid = (cluster.ws_url if ws else cluster.url), 0
        else:
            if ws:
                prosody.check_websocket()
            url, server_pid = (prosody.ws_url if ws else prosody.bosh_url), prosody.pid
        # CPU: "server" is every process serving the clients (a cluster's nodes + HAProxy);
        # RSS: "server" is bosh-cm's processes (a cluster's nodes; HAProxy's shown apart).
        cpu_pids: dict[str, int | list[int]]
        rss_pids: dict[str, int | list[int]]
        if cluster is not None:
            nodes = list(cluster.node_pids.values())
            per_node: dict[str, int | list[int]] = {f"node:{k}": v for k, v in cluster.node_pids.items()}
            cpu_pids = {"server": nodes + cluster.haproxy_pids, "prosody": prosody.pid,
                        "nodes": nodes, "haproxy": cluster.haproxy_pids, "launcher": cluster.pid,
                        **per_node}
            rss_pids = {"server": nodes, "prosody": prosody.pid, "haproxy": cluster.haproxy_pids,
                        **per_node}
            res["cluster"] = {"nodes": args.nodes, "node_pids": dict(cluster.node_pids),
                              "node_ports": dict(cluster.node_ports),
                              "haproxy_pids": list(cluster.haproxy_pids),
                              "haproxy_maxconn": cluster.haproxy_maxconn}
        else:
            cpu_pids = {"server": server_pid, "prosody": prosody.pid}
            rss_pids = dict(cpu_pids)
        pids = cpu_pids
        server_rss = rss_pids["server"]
        sender = await XmppPeer.connect_to(prosody, "sender", PASSWORD, resource="bench", timeout=30)
        await asyncio.sleep(0.5)
        base = {k: _rss(v) for k, v in rss_pids.items()}
        res["rss_base_kib"] = base
        loadgen_rss0 = rss_kib(os.getpid())
        load = WsLoad(url, prosody.domain) if ws else BoshLoad(url, prosody.domain, wait=args.wait)

        # ---- 1. setup ------------------------------------------------------------------
        say(f"{label}: logging in {n} sessions, {args.concurrency} at a time")
        samples: list[tuple[int, int, int]] = [(0, base["server"], base["prosody"])]
        logged = [0]

        async def sampler() -> None:
            while True:
                await asyncio.sleep(0.25)
                samples.append((logged[0], _rss(server_rss), rss_kib(prosody.pid)))

        def on_done(count: int) -> None:
            logged[0] = count

        sampler_task = asyncio.get_running_loop().create_task(sampler())
        cpu = CpuWindow(pids)
        try:
            durations = await load.login_all(n, args.concurrency, on_done)
        finally:
            sampler_task.cancel()
        c = cpu.read()
        samples.append((len(load.sessions), _rss(server_rss), rss_kib(prosody.pid)))
        res["setup"] = {
            "sessions_per_s": n / c["wall"], "wall_s": c["wall"],
            "p50_ms": pct(durations, 50) * 1000, "p99_ms": pct(durations, 99) * 1000,  # type: ignore[operator]
            "server_cpu_ms_per_session": c["server"] * 1000 / n,
            "prosody_cpu_ms_per_session": c["prosody"] * 1000 / n,
            "loadgen_cpu_ms_per_session": c["loadgen"] * 1000 / n,
        }
        if cluster is not None:
            res["setup"].update(_split(c, cluster, n, "_ms_per_session", 1000))
        res["rss_samples"] = samples
        say(f"{label}: {n} sessions in {c['wall']:.1f} s ({n / c['wall']:.0f}/s)")

        # ---- 2. idle -------------------------------------------------------------------
        await asyncio.sleep(2)  # let the last answers settle
        # Keep the load generator's own cyclic-GC pauses (thousands of live sessions) out
        # of the latency figures: move what exists now out of the collector's sight.
        gc.collect()
        gc.freeze()
        cpu = CpuWindow(pids)
        await asyncio.sleep(args.idle)
        c = cpu.read()
        rss = {k: _rss(v) for k, v in rss_pids.items()}
        res["idle"] = {
            "alive": load.alive(), "seconds": c["wall"],
            "server_rss_kib": rss["server"], "prosody_rss_kib": rss["prosody"],
            "server_rss_per_session_kib": (rss["server"] - base["server"]) / n,
            "prosody_rss_per_session_kib": (rss["prosody"] - base["prosody"]) / n,
            "server_cpu_pct": 100 * c["server"] / c["wall"],
            "prosody_cpu_pct": 100 * c["prosody"] / c["wall"],
            "loadgen_cpu_pct": 100 * c["loadgen"] / c["wall"],
            "loadgen_rss_per_session_kib": (rss_kib(os.getpid()) - loadgen_rss0) / n,
            "fds": fd_usage(rss_pids, cluster),
        }
        if cluster is not None:
            idle = res["idle"]
            idle.update(_split(c, cluster, c["wall"] / 100, "_cpu_pct", 1, cpu=""))
            idle["haproxy_rss_kib"] = rss["haproxy"]
            idle["haproxy_rss_per_session_kib"] = (rss["haproxy"] - base["haproxy"]) / n
            idle["per_node_rss_per_session_kib"] = {
                k: (rss[f"node:{k}"] - base[f"node:{k}"]) / n for k in cluster.node_pids}
            idle["sessions_per_node"] = cluster_sessions(cluster, args.transport)
            idle["haproxy"] = _haproxy_stats(cluster)
        if load.alive() != n:
            raise RuntimeError(f"only {load.alive()} of {n} sessions alive after idle: "
                               f"{load.counters.errors[:3]}")

        rng = random.Random(n)
        domain = prosody.domain

        def message(seq: int, to: int) -> str:
            return (f"<message to='u{to}@{domain}' type='chat' id='b{seq}'>"
                    f"<body>m{seq}t{time.perf_counter_ns()}</body></message>")

        # ---- 3. push latency at a fixed rate -------------------------------------------
        m = max(1, min(args.messages, int(args.rate * args.duration)))
        say(f"{label}: pushing {m} messages at {args.rate:g} msg/s")
        seqs = range(seq0, seq0 + m)
        cpu = CpuWindow(pids)
        start = time.perf_counter()
        for i, seq in enumerate(seqs):
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sender.send_raw(message(seq, rng.randrange(n)))
        await wait_for_seqs(load, seqs, args.settle)
        c = cpu.read()
        push_lat = [load.seen[s] for s in seqs if s in load.seen]
        res["push"] = {"sent": m, "rate": args.rate, **lat_summary(push_lat),
                       "lost": m - len(push_lat),
                       "server_cpu_pct": 100 * c["server"] / c["wall"],
                       "prosody_cpu_pct": 100 * c["prosody"] / c["wall"],
                       # the whole phase's CPU (idle costs such as pings included) per message
                       "server_cpu_ms_per_msg": c["server"] * 1000 / max(1, len(push_lat))}
        if cluster is not None:
            res["push"].update(_split(c, cluster, max(1, len(push_lat)), "_ms_per_msg", 1000))
        res["push_latencies_ms"] = [v / 1e6 for v in push_lat]
        seq0 += m

        # ---- 4. burst ------------------------------------------------------------------
        b = args.burst
        say(f"{label}: burst of {b} messages")
        bseqs = range(seq0, seq0 + b)
        responses0 = load.counters.msg_responses
        http0 = load.counters.responses
        cpu = CpuWindow(pids)
        t0 = time.perf_counter_ns()
        chunk = 200
        for off in range(0, b, chunk):
            sender.send_raw("".join(message(s, rng.randrange(n))
                                    for s in range(seq0 + off, seq0 + min(b, off + chunk))))
            await asyncio.sleep(0)
        await wait_for_seqs(load, bseqs, args.settle)
        c = cpu.read()
        got = [s for s in bseqs if s in load.seen]
        elapsed = max(c["wall"], 1e-9)
        burst_lat = [load.seen[s] for s in got]
        # first write -> the last message read by a client
        delivered_elapsed = (load.last_recv_ns - t0) / 1e9 if got else elapsed
        msg_responses = load.counters.msg_responses - responses0
        frames = load.counters.responses - http0
        res["burst"] = {
            "sent": b, "lost": b - len(got),
            "delivered_per_s": len(got) / max(delivered_elapsed, 1e-9),
            "seconds": delivered_elapsed,
            "msgs_per_response": len(got) / msg_responses if msg_responses else None,
            # WebSocket: messages per WebSocket message read, no HTTP responses
            "http_responses": None if ws else frames,
            **({"ws_messages": frames} if ws else {}),
            "server_cpu_ms_per_msg": c["server"] * 1000 / max(1, len(got)),
            "prosody_cpu_ms_per_msg": c["prosody"] * 1000 / max(1, len(got)),
            "loadgen_cpu_ms_per_msg": c["loadgen"] * 1000 / max(1, len(got)),
            **{f"latency_{k}": v for k, v in lat_summary(burst_lat).items()},
        }
        if cluster is not None:
            res["burst"].update(_split(c, cluster, max(1, len(got)), "_ms_per_msg", 1000))
        seq0 += b
        res["lost"] = res["push"]["lost"] + res["burst"]["lost"]
        res["duplicates"] = load.counters.duplicates
        res["session_errors"] = load.counters.errors[:10]
        res["ok"] = res["lost"] == 0 and not load.counters.errors
        if cluster is not None:
            # Every request reached its owner (a node answers item-not-found to a sid it does
            # not own), and no node died and came back during the run.
            inf = cluster_item_not_found(cluster)
            restarted = cluster.restarted()
            res["cluster"].update(item_not_found=inf, restarted=restarted,
                                  haproxy=_haproxy_stats(cluster))
            if inf or restarted:
                res["ok"] = False
                res["session_errors"].append(
                    f"cluster: {inf} item-not-found answer(s), restarted nodes {restarted}")
        res["next_seq"] = seq0
        return res
    finally:
        gc.unfreeze()
        if load is not None:
            await load.close()
        if sender is not None:
            await sender.close()
            # slixmpp leaves its send-filter task pending after a disconnect: reap it here
            # rather than have asyncio complain when it is garbage-collected.
            task = getattr(sender, "_run_out_filters", None)
            if isinstance(task, asyncio.Task) and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if cm is not None:
            cm.stop()
        if cluster is not None:
            cluster.stop()
        prosody.stop()


def _split(c: dict[str, float], cluster: BenchCluster, denom: float, suffix: str, scale: float,
           cpu: str = "cpu") -> dict[str, Any]:
    """A cluster's CPU split: every node together, HAProxy (master + worker), the launcher
    (its log pump: not in "server"), and each node; ``c[...] * scale / denom`` each."""
    key = f"{cpu}{suffix}" if cpu else suffix.lstrip("_")
    out: dict[str, Any] = {f"{who}_{key}": c[who] * scale / denom
                           for who in ("nodes", "haproxy", "launcher")}
    out[f"per_node_{key}"] = {k: c[f"node:{k}"] * scale / denom for k in cluster.node_pids}
    return out


def fd_usage(rss_pids: dict[str, int | list[int]], cluster: BenchCluster | None) -> dict[str, Any]:
    """Open file descriptors and the soft RLIMIT_NOFILE of every process in the run."""
    procs: dict[str, int] = {"loadgen": os.getpid()}
    for name, pids in rss_pids.items():
        for i, pid in enumerate([pids] if isinstance(pids, int) else pids):
            label = name.removeprefix("node:")
            if name == "server" and cluster is not None:
                continue  # the nodes are listed one by one
            if name == "haproxy":
                label = "haproxy master" if i == 0 else f"haproxy worker{'' if i == 1 else i}"
            procs[label] = pid
    out: dict[str, Any] = {}
    for name, pid in procs.items():
        try:
            out[name] = {"pid": pid, "open": open_fds(pid), "limit": nofile_limit(pid)}
        except OSError:
            out[name] = {"pid": pid, "open": None, "limit": None}
    return out


def _metric_sum(cluster: BenchCluster, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for node_id, port in cluster.node_ports.items():
        try:
            out[node_id] = node_metrics(port).get(name, 0.0)
        except OSError as exc:
            say(f"cluster: /metrics of {node_id} unreadable: {exc!r}")
            out[node_id] = float("nan")
    return out


def _haproxy_stats(cluster: BenchCluster) -> dict[str, Any]:
    try:
        return cluster.haproxy_stats()
    except OSError as exc:
        say(f"cluster: HAProxy's stats socket unreadable: {exc!r}")
        return {}


def cluster_sessions(cluster: BenchCluster, transport: str) -> dict[str, int | None]:
    """Open sessions per node (each node's /metrics)."""
    got = _metric_sum(cluster, f'bosh_transport_sessions_open{{transport="{transport}"}}')
    return {k: (None if v != v else int(v)) for k, v in got.items()}


def cluster_item_not_found(cluster: BenchCluster) -> int:
    """item-not-found answers, all nodes (a request that did not reach its session's owner)."""
    got = _metric_sum(cluster, 'bosh_errors_total{condition="item-not-found"}')
    return int(sum(v for v in got.values() if v == v))


async def wait_for_seqs(load: BoshLoad | WsLoad, seqs: range, settle: float) -> None:
    """Until every seq in ``seqs`` arrived, or ``settle`` seconds pass without progress."""
    missing = [s for s in seqs if s not in load.seen]
    while missing:
        load.progress.clear()
        try:
            await asyncio.wait_for(load.progress.wait(), settle)
        except asyncio.TimeoutError:
            return
        missing = [s for s in missing if s not in load.seen]


def fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    return format(v, spec)


def ratio(a: Any, b: Any) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


ROWS: list[tuple[str, str, str, str]] = [
    # label, section, key, format
    ("setup rate (sessions/s)", "setup", "sessions_per_s", ".0f"),
    ("setup p50 (ms)", "setup", "p50_ms", ".1f"),
    ("setup p99 (ms)", "setup", "p99_ms", ".1f"),
    ("server CPU per setup (ms)", "setup", "server_cpu_ms_per_session", ".2f"),
    ("Prosody CPU per setup (ms)", "setup", "prosody_cpu_ms_per_session", ".2f"),
    ("server RSS per session (KiB)", "idle", "server_rss_per_session_kib", ".1f"),
    ("Prosody extra RSS per session (KiB)", "idle", "prosody_rss_per_session_kib", ".1f"),
    ("server CPU idle (% of a core)", "idle", "server_cpu_pct", ".2f"),
    ("push p50 (ms)", "push", "p50_ms", ".2f"),
    ("push p90 (ms)", "push", "p90_ms", ".2f"),
    ("push p99 (ms)", "push", "p99_ms", ".2f"),
    ("push max (ms)", "push", "max_ms", ".1f"),
    ("burst delivered (msg/s)", "burst", "delivered_per_s", ".0f"),
    ("burst msgs per HTTP response", "burst", "msgs_per_response", ".2f"),
    ("server CPU per burst msg (ms)", "burst", "server_cpu_ms_per_msg", ".3f"),
    ("Prosody CPU per burst msg (ms)", "burst", "prosody_cpu_ms_per_msg", ".3f"),
    ("lost messages", "", "lost", "d"),
]


def table(n: int, runs: dict[str, dict[str, Any]], transport: str = "bosh") -> str:
    """One markdown table: rows are metrics, columns bosh-cm | Prosody BOSH | ratio
    (Prosody WebSocket with ``transport="websocket"``)."""
    a, b = runs.get("bosh-cm"), runs.get("prosody")
    lab = LABELS[transport]
    title = f"### {n:,} sessions" + (", WebSocket (RFC 7395)" if transport == "websocket" else "")
    lines = [title, "",
             f"| metric | bosh-cm | {lab['prosody']} | bosh-cm / Prosody |", "|---|---|---|---|"]

    def val(r: dict[str, Any] | None, sec: str, key: str) -> Any:
        if r is None or "error" in r:
            return None
        return r.get(key) if not sec else r.get(sec, {}).get(key)

    for label, sec, key, spec in ROWS:
        if transport == "websocket" and key == "msgs_per_response":
            label = "burst msgs per WebSocket message"
        va, vb = val(a, sec, key), val(b, sec, key)
        lines.append(f"| {label} | {fmt(va, spec)} | {fmt(vb, spec)} | {ratio(va, vb) if key != 'lost' else ''} |")
    for r in (a, b):
        if r is not None and "error" in r:
            lines.append(f"\n{lab[r['target']]} failed: {r['error']}")
    if b is None:
        lines.append(f"\n({lab['prosody']} not run at this size)")
    return "\n".join(lines)


def _val(r: dict[str, Any] | None, sec: str, key: str) -> Any:
    if r is None or "error" in r:
        return None
    return r.get(key) if not sec else r.get(sec, {}).get(key)


def cluster_table(n: int, runs: dict[str, dict[str, Any]], transport: str, nodes: int) -> str:
    """--nodes N: one markdown table, columns bosh-cm via HAProxy (N nodes) | bosh-cm, one
    node direct | Prosody's own BOSH (or WebSocket) | the two ratios of the first."""
    c, a, b = runs.get(CLUSTER), runs.get("bosh-cm"), runs.get("prosody")
    lab = {k: label_of(k, transport, nodes) for k in ALL_TARGETS}
    title = f"### {n:,} sessions" + (", WebSocket (RFC 7395)" if transport == "websocket" else "")
    lines = [title, "",
             f"| metric | {lab[CLUSTER]} | {lab['bosh-cm']} | {lab['prosody']} "
             "| HAProxy + nodes / 1 node | HAProxy + nodes / Prosody |",
             "|---|---|---|---|---|---|"]
    for label, sec, key, spec in ROWS:
        if transport == "websocket" and key == "msgs_per_response":
            label = "burst msgs per WebSocket message"
        vc, va, vb = _val(c, sec, key), _val(a, sec, key), _val(b, sec, key)
        r1, r2 = ("", "") if key == "lost" else (ratio(vc, va), ratio(vc, vb))
        lines.append(f"| {label} | {fmt(vc, spec)} | {fmt(va, spec)} | {fmt(vb, spec)} | {r1} | {r2} |")
    lines.append("")
    lines.append(f"In the {lab[CLUSTER]} column \"server\" CPU is all {nodes} nodes + HAProxy, "
                 "\"server\" RSS the nodes' sum (HAProxy's apart, below).")
    for kind in ALL_TARGETS:
        r = runs.get(kind)
        if r is not None and "error" in r:
            lines.append(f"\n{lab[kind]} failed: {r['error']}")
        elif r is None:
            lines.append(f"\n({lab[kind]} not run at this size)")
    return "\n".join(lines)


def cluster_split_table(n: int, r: dict[str, Any] | None, nodes: int) -> str:
    """Where the cluster column's CPU, memory and file descriptors go: each node, HAProxy."""
    if r is None or "error" in r:
        return ""
    ids = list(r.get("cluster", {}).get("node_pids", {}))
    idle, setup, push, burst = (r.get(k, {}) for k in ("idle", "setup", "push", "burst"))
    fds = idle.get("fds", {})
    hap = [v for k, v in fds.items() if k.startswith("haproxy worker")] or \
        [v for k, v in fds.items() if k.startswith("haproxy")]
    spn = idle.get("sessions_per_node", {})
    maxconn = r.get("cluster", {}).get("haproxy_maxconn")

    def fd(v: dict[str, Any] | None) -> str:
        if not v or v.get("open") is None:
            return "-"
        return f"{v['open']:,} / {v['limit']:,}" if v.get("limit") else f"{v['open']:,} / unlimited"

    def row(label: str, sec: dict[str, Any], key: str, spec: str) -> str:
        per = sec.get(f"per_node_{key}", {})
        cells = [fmt(per.get(i), spec) for i in ids]
        return (f"| {label} | " + " | ".join(cells) + f" | {fmt(sec.get(f'nodes_{key}'), spec)} | "
                f"{fmt(sec.get(f'haproxy_{key}'), spec)} | {fmt(sec.get(f'launcher_{key}'), spec)} |")

    head = " | ".join(ids)
    lines = [f"#### {n:,} sessions: bosh-cm via HAProxy ({nodes} nodes), split", "",
             f"| per process | {head} | all nodes | HAProxy | launcher (log pump, in no total) |",
             "|---|" + "---|" * (len(ids) + 3),
             "| sessions open (idle) | " + " | ".join(fmt(spn.get(i), ",d") for i in ids)
             + f" | {fmt(sum(v for v in spn.values() if v is not None), ',d') if spn else '-'} | | |",
             row("CPU per setup (ms)", setup, "cpu_ms_per_session", ".2f"),
             "| RSS per session (KiB) | "
             + " | ".join(fmt(idle.get("per_node_rss_per_session_kib", {}).get(i)) for i in ids)
             + f" | {fmt(idle.get('server_rss_per_session_kib'))} | "
               f"{fmt(idle.get('haproxy_rss_per_session_kib'))} | |",
             row("CPU idle (% of a core)", idle, "cpu_pct", ".2f"),
             row("CPU per push msg (ms, pings included)", push, "cpu_ms_per_msg", ".3f"),
             row("CPU per burst msg (ms)", burst, "cpu_ms_per_msg", ".3f"),
             "| fds open / limit (idle) | " + " | ".join(fd(fds.get(i)) for i in ids)
             + f" | | {' + '.join(fd(v) for v in hap) or '-'} (maxconn {fmt(maxconn, ',d')}) | "
               f"{fd(fds.get('loadgen'))} (load generator) |",
             ]
    inf = r.get("cluster", {}).get("item_not_found")
    hs = r.get("cluster", {}).get("haproxy") or {}
    fe = hs.get("frontend") or {}
    if fe:
        retries = sum((hs.get(b) or {}).get("wretr") or 0 for b in ("bosh_owner", "bosh_new"))
        redisp = sum((hs.get(b) or {}).get("wredis") or 0 for b in ("bosh_owner", "bosh_new"))
        errs = sum(((hs.get(b) or {}).get("econ") or 0) + ((hs.get(b) or {}).get("eresp") or 0)
                   for b in ("bosh_owner", "bosh_new"))
        lines.append("")
        conns = sum((hs.get(b) or {}).get("connect") or 0 for b in ("bosh_owner", "bosh_new"))
        reused = sum((hs.get(b) or {}).get("reuse") or 0 for b in ("bosh_owner", "bosh_new"))
        requests = sum((hs.get(b) or {}).get("stot") or 0 for b in ("bosh_owner", "bosh_new"))
        lines.append(f"HAProxy client connections: {fmt(idle.get('haproxy', {}).get('frontend', {}).get('scur'), ',d')} "
                     f"at idle, peak {fmt(fe.get('smax'), ',d')} of {fmt(fe.get('slim'), ',d')} (frontend "
                     f"limit = global maxconn); {fmt(fe.get('hrsp_5xx'), ',d')} 5xx answers, "
                     f"{retries:,} retries, {redisp:,} redispatches, {errs:,} connection/response errors; "
                     f"to the nodes: {requests:,} requests, {conns:,} connections opened, {reused:,} reused")
    lines.append("")
    lines.append(f"item-not-found answers (a request that missed its owner), all nodes: "
                 f"{fmt(inf, 'd')}; nodes restarted during the run: "
                 f"{', '.join(r.get('cluster', {}).get('restarted') or []) or 'none'}")
    return "\n".join(lines)


def _diff(a: Any, b: Any, unit: str, spec: str) -> str:
    if a is None or b is None:
        return "-"
    rel = f" ({(a / b - 1) * 100:+.0f} %)" if b else ""
    return f"{a - b:+{spec}} {unit}{rel}"


def hop_table(n: int, runs: dict[str, dict[str, Any]], nodes: int) -> str:
    """What the HAProxy hop adds, same run: via HAProxy (N nodes) against one node direct."""
    c, a = runs.get(CLUSTER), runs.get("bosh-cm")
    rows = [("push p50 (ms)", "push", "p50_ms", ".2f", "ms"),
            ("push p99 (ms)", "push", "p99_ms", ".2f", "ms"),
            ("CPU per push msg (ms, pings included)", "push", "server_cpu_ms_per_msg", ".3f", "ms"),
            ("CPU per burst msg (ms)", "burst", "server_cpu_ms_per_msg", ".3f", "ms"),
            ("burst delivered (msg/s)", "burst", "delivered_per_s", ".0f", "msg/s"),
            ("setup rate (sessions/s)", "setup", "sessions_per_s", ".0f", "/s")]
    lines = [f"What the HAProxy hop adds at {n:,} sessions (same run; CPU via HAProxy = all "
             f"{nodes} nodes + HAProxy):", "",
             f"| metric | via HAProxy ({nodes} nodes) | 1 node direct | difference | of which HAProxy |",
             "|---|---|---|---|---|"]
    for label, sec, key, spec, unit in rows:
        vc, va = _val(c, sec, key), _val(a, sec, key)
        hap = "-"
        if key == "server_cpu_ms_per_msg":
            hap = fmt(_val(c, sec, "haproxy_cpu_ms_per_msg"), spec)
        lines.append(f"| {label} | {fmt(vc, spec)} | {fmt(va, spec)} | {_diff(vc, va, unit, spec)} | {hap} |")
    return "\n".join(lines)


def cluster_target_checks(n: int, runs: dict[str, dict[str, Any]], nodes: int) -> list[dict[str, Any]]:
    """The issue's cluster targets against one size's results (``met`` None: not measured)."""
    c, a = runs.get(CLUSTER), runs.get("bosh-cm")

    def check(name: str, value: Any, limit: Any, met: bool | None, shown: str) -> dict[str, Any]:
        return {"target": name, "value": value, "limit": limit, "met": met,
                "shown": shown if value is not None else "-"}

    sc, sa = _val(c, "setup", "sessions_per_s"), _val(a, "setup", "sessions_per_s")
    bc, ba = _val(c, "burst", "delivered_per_s"), _val(a, "burst", "delivered_per_s")
    out = [
        check(f"{nodes} nodes set up at least as fast as one node (same run)", sc, sa,
              None if sc is None or sa is None else sc >= sa,
              f"{fmt(sc, '.0f')} vs {fmt(sa, '.0f')} sessions/s ({ratio(sc, sa)})"),
        check(f"{nodes} nodes burst at least as fast as one node (same run)", bc, ba,
              None if bc is None or ba is None else bc >= ba,
              f"{fmt(bc, '.0f')} vs {fmt(ba, '.0f')} msg/s ({ratio(bc, ba)})"),
    ]
    # Sessions within the fd limit: every process of the cluster column under its own limit.
    alive = _val(c, "idle", "alive")
    fds = _val(c, "idle", "fds") or {}
    spn = _val(c, "idle", "sessions_per_node") or {}
    worst = None
    for name, v in fds.items():
        if v.get("open") is not None and v.get("limit"):
            share = v["open"] / v["limit"]
            if worst is None or share > worst[1]:
                worst = (name, share, v["open"], v["limit"])
    big = CLUSTER_TARGET_SESSIONS
    fe = ((c or {}).get("cluster", {}).get("haproxy") or {}).get("frontend") or {}
    fits = worst is not None and worst[1] < 1 and alive == n
    if fe.get("smax") is not None and fe.get("slim"):
        fits = fits and fe["smax"] < fe["slim"]
    per_node = ", ".join(f"{k} {fmt(v, ',d')}" for k, v in spn.items())
    shown = (f"{fmt(alive, ',d')} alive ({per_node}); "
             + (f"most fds: {worst[0]} {worst[2]:,} of {worst[3]:,}" if worst else "fds unknown")
             + (f"; HAProxy peak {fe['smax']:,} client connections of maxconn {fe['slim']:,}"
                if fe.get("smax") is not None and fe.get("slim") else ""))
    out.append(check(f"{big:,} sessions through HAProxy ({big // max(1, nodes):,} a node) within "
                     "the fd limit", alive, big,
                     None if alive is None or n < big else fits and alive >= big,
                     shown + ("" if n >= big else f" (this run has {n:,}: not judged)")))
    lost, errs = _val(c, "", "lost"), _val(c, "", "session_errors")
    inf = (c or {}).get("cluster", {}).get("item_not_found")
    out.append(check("nothing lost through HAProxy (messages, sessions, item-not-found)", lost, 0,
                     None if lost is None else lost == 0 and not errs and not inf,
                     f"{fmt(lost, 'd')} lost, {len(errs or [])} session error(s), "
                     f"{fmt(inf, 'd')} item-not-found"))
    return out


def cluster_targets_table(n: int, checks: list[dict[str, Any]], nodes: int) -> str:
    verdict = {True: "met", False: "**NOT met**", None: "not measured"}
    lines = [f"Targets (issue 9, {nodes} nodes on this machine; the session target is set at "
             f"{CLUSTER_TARGET_SESSIONS:,} sessions):", "",
             f"| target | bosh-cm via HAProxy ({nodes} nodes) | verdict |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['shown']} | {verdict[c['met']]} |" for c in checks]
    return "\n".join(lines)


def ws_target_checks(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's WebSocket targets against one size's results (``met`` None: not measured)."""
    a, b = runs.get("bosh-cm"), runs.get("prosody")

    def get(r: dict[str, Any] | None, sec: str, key: str) -> Any:
        return None if r is None or "error" in r else r.get(sec, {}).get(key)

    def check(name: str, value: Any, limit: Any, met: bool | None, shown: str) -> dict[str, Any]:
        return {"target": name, "value": value, "limit": limit, "met": met,
                "shown": shown if value is not None else "-"}

    rss = get(a, "idle", "server_rss_per_session_kib")
    cpu = get(a, "burst", "server_cpu_ms_per_msg")
    cpu_push = get(a, "push", "server_cpu_ms_per_msg")
    p99 = get(a, "push", "p99_ms")
    ba, bb = get(a, "burst", "delivered_per_s"), get(b, "burst", "delivered_per_s")
    return [
        check(f"bosh-cm RSS per session <= {WS_RSS_KIB:g} KiB (upstream TLS stream included)",
              rss, WS_RSS_KIB, None if rss is None else rss <= WS_RSS_KIB, f"{fmt(rss)} KiB"),
        check(f"bosh-cm CPU per pushed message <= {WS_CPU_MS_PER_MSG:g} ms (burst phase)",
              cpu, WS_CPU_MS_PER_MSG, None if cpu is None else cpu <= WS_CPU_MS_PER_MSG,
              f"{fmt(cpu, '.3f')} ms (push phase, pings included: {fmt(cpu_push, '.3f')} ms)"),
        check(f"push p99 <= {WS_PUSH_P99_MS:g} ms", p99, WS_PUSH_P99_MS,
              None if p99 is None else p99 <= WS_PUSH_P99_MS, f"{fmt(p99, '.2f')} ms"),
        check("burst delivered >= Prosody WebSocket's (same run)", ba, bb,
              None if ba is None or bb is None else ba >= bb,
              f"{fmt(ba, '.0f')} vs {fmt(bb, '.0f')} msg/s ({ratio(ba, bb)})"),
    ]


def targets_table(n: int, checks: list[dict[str, Any]]) -> str:
    verdict = {True: "met", False: "**NOT met**", None: "not measured"}
    lines = [f"Targets (issue 8, set at {WS_TARGET_SESSIONS:,} sessions)"
             + ("" if n == WS_TARGET_SESSIONS else f"; this run has {n:,}, so indicative only") + ":",
             "", "| target | bosh-cm | verdict |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['shown']} | {verdict[c['met']]} |" for c in checks]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    transport = results.get("transport") or results["params"].get("transport") or "bosh"
    nodes = results["params"].get("nodes") or 0
    lab = {k: label_of(k, transport, nodes) for k in ALL_TARGETS}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"bosh-cm": "tab:blue", "prosody": "tab:orange", CLUSTER: "tab:purple"}
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(results["runs"]):
        n = run["sessions"]
        for kind in ALL_TARGETS:
            r = run["targets"].get(kind)
            if not r or "error" in r:
                continue
            lat = sorted(r.get("push_latencies_ms") or [])
            if lat:
                ys = [100 * (k + 1) / len(lat) for k in range(len(lat))]
                ax1.plot(lat, ys, styles[i % 4], color=colors[kind], label=f"{lab[kind]}, {n:,} sessions")
            s = r.get("rss_samples") or []
            if s:
                base = s[0]
                what = "nodes" if kind == CLUSTER else "process"
                ax2.plot([x[0] for x in s], [(x[1] - base[1]) / 1024 for x in s], styles[i % 4],
                         color=colors[kind], label=f"{lab[kind]} {what}, {n:,} run")
                if kind == "bosh-cm":
                    ax2.plot([x[0] for x in s], [(x[2] - base[2]) / 1024 for x in s], styles[i % 4],
                             color="tab:green", alpha=0.7, label=f"Prosody behind bosh-cm, {n:,} run")
    biggest = max((run["sessions"] for run in results["runs"]), default=0)
    target_kib = WS_RSS_KIB if transport == "websocket" else 64
    if biggest:
        ax2.plot([0, biggest], [0, biggest * target_kib / 1024], color="gray", linewidth=0.8,
                 linestyle=(0, (1, 3)), label=f"target: {target_kib:g} KiB per session")
    ax1.set_xscale("log")
    ax1.set_xlabel("push latency (ms, log scale)")
    ax1.set_ylabel("% of messages delivered within")
    ax1.set_title(f"Push latency CDF at {results['params']['rate']:g} msg/s"
                  + (" (WebSocket)" if transport == "websocket" else ""))
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.set_xlabel(("WebSocket" if transport == "websocket" else "BOSH") + " sessions logged in")
    ax2.set_ylabel("RSS growth (MiB)")
    ax2.set_title("RSS vs sessions")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _git_describe() -> str:
    """The checkout being measured (bosh-cm runs from it), '-dirty' with local changes."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bosh-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default="1000",
                   help="comma-separated session counts, each a full run (default 1000)")
    p.add_argument("--transport", choices=TRANSPORTS, default="bosh",
                   help="bosh (default): bosh-cm's /http-bind vs Prosody's; websocket: "
                        "bosh-cm's /xmpp-websocket vs Prosody's mod_websocket (RFC 7395)")
    p.add_argument("--concurrency", type=int, default=50, help="logins in flight (default 50)")
    p.add_argument("--messages", type=int, default=1000, help="push-phase messages (default 1000)")
    p.add_argument("--rate", type=float, default=100, help="push-phase msg/s (default 100)")
    p.add_argument("--duration", type=float, default=30,
                   help="upper bound of the push phase in seconds (messages <= rate x duration)")
    p.add_argument("--burst", type=int, default=5000, help="burst-phase messages (default 5000)")
    p.add_argument("--idle", type=float, default=10, help="idle-phase seconds (default 10)")
    p.add_argument("--wait", type=int, default=60, help="BOSH 'wait' the clients ask for (default 60; BOSH only)")
    p.add_argument("--settle", type=float, default=15,
                   help="seconds without any delivery before missing messages count as lost")
    p.add_argument("--targets", default=None,
                   help="which servers (default both: bosh-cm,prosody; with --nodes "
                        f"{CLUSTER},bosh-cm,prosody)")
    p.add_argument("--nodes", type=int, default=0, metavar="N",
                   help="also run bosh-cm through the launcher bosh-cm-cluster (HAProxy + N "
                        f"nodes, target {CLUSTER!r}) and compare it with one node reached "
                        "directly and with Prosody, same run (default 0: no launcher)")
    p.add_argument("--prosody-max-sessions", type=int, default=0,
                   help="skip Prosody's BOSH (or WebSocket) above this many sessions (0 = never skip)")
    p.add_argument("--log-level", default="INFO", help="bosh-cm [log] level (default INFO, its default)")
    p.add_argument("--cm-loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="event loop for bosh-cm ([server] event_loop; a launcher on older checkouts)")
    p.add_argument("--cm-gc-threshold", default="",
                   help="e.g. 100000,50,1000: gc.set_threshold in bosh-cm (bench-only launcher)")
    p.add_argument("--loadgen-loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    p.add_argument("--scram-iterations", type=int, default=4096)
    p.add_argument("--json", type=Path, default=None, help="result file (default OUT/bench.json)")
    p.add_argument("--chart", type=Path, default=None, help="PNG chart (default OUT/bench.png)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default a new /tmp folder)")
    p.add_argument("--keep", action="store_true", help="keep the Prosody/bosh-cm work folder")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--replot", type=Path, default=None, metavar="JSON",
                   help="only redraw the chart (--chart, default next to it) from a result file")
    args = p.parse_args(argv)
    args.session_counts = [int(x) for x in str(args.sessions).split(",") if x.strip()]
    if args.nodes < 0 or args.nodes > 256:
        p.error(f"--nodes {args.nodes}: 1 to 256 (0 = no launcher)")
    if args.targets is None:
        args.targets = f"{CLUSTER},bosh-cm,prosody" if args.nodes else "bosh-cm,prosody"
    args.target_list = [t for t in args.targets.split(",") if t]
    for t in args.target_list:
        if t not in ALL_TARGETS:
            p.error(f"unknown target {t!r}; choose from {', '.join(ALL_TARGETS)}")
    if CLUSTER in args.target_list:
        if not args.nodes:
            p.error(f"target {CLUSTER} needs --nodes N")
        if args.cm_gc_threshold:
            p.error("--cm-gc-threshold does not apply to --nodes: the launcher starts "
                    "`python -m bosh` itself (leave it out, or --targets bosh-cm,prosody)")
        from bosh.cluster import find_haproxy

        if find_haproxy() is None:
            p.error("--nodes needs haproxy (2.6 or newer): apt-get install haproxy "
                    "(scripts/bosh-bench installs it)")
    return args


async def main_async(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    biggest = max(args.session_counts)
    prosody = BenchProsody(workdir / "prosody")
    prosody.workdir.mkdir(parents=True, exist_ok=True)
    say(f"creating {biggest} users")
    prosody.create_users(biggest, args.scram_iterations)
    results: dict[str, Any] = {"params": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(args).items()},
                               "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "commit": _git_describe(), "transport": args.transport, "runs": []}
    seq = 0
    for n in args.session_counts:
        run: dict[str, Any] = {"sessions": n, "targets": {}}
        results["runs"].append(run)
        for kind in args.target_list:
            if kind == "prosody" and args.prosody_max_sessions and n > args.prosody_max_sessions:
                say(f"skipping {LABELS[args.transport]['prosody']} at {n} sessions (--prosody-max-sessions)")
                continue
            try:
                r = await run_target(kind, n, args, prosody, workdir, seq)
                seq = r.pop("next_seq")
            except Exception as exc:
                say(f"{label_of(kind, args.transport, args.nodes)} at {n} sessions failed: {exc!r}")
                r = {"target": kind, "transport": args.transport, "sessions": n,
                     "error": repr(exc)[:1000], "ok": False}
            run["targets"][kind] = r
        if args.nodes:
            print(cluster_table(n, run["targets"], args.transport, args.nodes), flush=True)
            print(flush=True)
            split = cluster_split_table(n, run["targets"].get(CLUSTER), args.nodes)
            if split:
                print(split, flush=True)
                print(flush=True)
            print(hop_table(n, run["targets"], args.nodes), flush=True)
            print(flush=True)
            run["cluster_checks"] = cluster_target_checks(n, run["targets"], args.nodes)
            print(cluster_targets_table(n, run["cluster_checks"], args.nodes), flush=True)
            print(flush=True)
        else:
            print(table(n, run["targets"], args.transport), flush=True)
            print(flush=True)
        if args.transport == "websocket":
            run["target_checks"] = ws_target_checks(run["targets"])
            print(targets_table(n, run["target_checks"]), flush=True)
            print(flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot is not None:
        target = args.chart or args.replot.with_suffix(".png")
        chart(json.loads(args.replot.read_text()), target)
        say(f"chart: {target}")
        return 0
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("slixmpp").setLevel(logging.ERROR)
    biggest = max(args.session_counts)
    # Each BOSH session: one HTTP connection here, one at bosh-cm, one upstream at bosh-cm,
    # one c2s at Prosody (plus Prosody's HTTP side for its own BOSH): ask for plenty.
    limit = raise_nofile(max(65536, 4 * biggest + 1024))
    if limit < 2 * biggest + 256:
        say(f"warning: RLIMIT_NOFILE is {limit}; {biggest} sessions need about {2 * biggest + 256}")
    if CLUSTER in args.target_list:
        # The launcher inherits this limit and sizes HAProxy's maxconn from it (two
        # descriptors per proxied connection); every client connection counts.
        from bosh.haproxy import maxconn_for_fd_limit

        maxconn = maxconn_for_fd_limit(limit, args.nodes)
        if maxconn < biggest + args.concurrency + 16:
            say(f"warning: with RLIMIT_NOFILE {limit} the launcher gives HAProxy maxconn {maxconn}; "
                f"{biggest} sessions + {args.concurrency} logins in flight need about "
                f"{biggest + args.concurrency + 16} client connections")
    out = args.out or Path(tempfile.mkdtemp(prefix="bosh-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    json_path = args.json or out / "bench.json"
    chart_path = args.chart or out / "bench.png"
    workdir = Path(tempfile.mkdtemp(prefix="bosh-bench-work-"))
    loop_kind = args.loadgen_loop
    if loop_kind in ("auto", "uvloop"):
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            loop_kind = "uvloop"
        except ImportError:
            if loop_kind == "uvloop":
                raise
            loop_kind = "asyncio"
    say(f"RLIMIT_NOFILE {limit}, load generator loop {loop_kind}, work dir {workdir}, "
        f"checkout {_git_describe()}")
    try:
        results = asyncio.run(main_async(args, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["params"]["loadgen_loop_used"] = loop_kind
    lost = sum(r.get("lost", 0) for run in results["runs"] for r in run["targets"].values())
    failed = [f"{r['target']}@{run['sessions']}" for run in results["runs"]
              for r in run["targets"].values() if not r.get("ok")]
    results["lost_total"] = lost
    results["ok"] = not failed
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    say(f"JSON: {json_path}")
    if not args.no_chart:
        try:
            chart(results, chart_path)
            say(f"chart: {chart_path}")
        except ImportError:
            say("matplotlib missing: no chart (pip install -e '.[bench]')")
    if failed:
        say(f"FAILED: {', '.join(failed)}; lost messages: {lost}")
        return 1
    say("OK: every message sent was received")
    return 0


if __name__ == "__main__":
    sys.exit(main())
