"""bosh-cm-cluster under chat load (issue 9): the real launcher, the real HAProxy, 3 real
bosh-cm nodes in front of the real Prosody fixture, all on loopback.

What test_cluster.py does not cover yet:

1. a few hundred BOSH and WebSocket sessions chatting through HAProxy: every request reaches
   its owner (every BOSH response is checked; no node counts an item-not-found), every
   message arrives exactly once;
2. a node SIGKILLed while a TCP user keeps sending numbered messages: its WebSocket sessions
   (XEP-0198, resume='true') reconnect through HAProxy, land on another node, resume and get
   every message exactly once; the sessions on the other nodes lose nothing; its BOSH
   sessions get HTTP 200 item-not-found/remote-connection-failed on their next request;
3. a rolling restart (SIGHUP to the launcher) under the same load: WebSocket sessions are
   released with close 1012 and resume on another node with nothing lost or duplicated; a
   BOSH session is served through its node's drain until ``drain_timeout`` (never ended
   younger than that), then gets system-shutdown, and every message sent to it is either
   delivered exactly once or comes back to the sender as an error (XEP-0206 §7), never
   silently lost; every node gets a new pid; no creation request fails meanwhile.

A draining node taking no new sessions and the per-IP limits seeing real client addresses
through HAProxy are tested in test_cluster.py; here the base config's
``max_sessions_per_ip = 2`` with every client on its own loopback address (127.0.4x.y) makes
every test depend on the nodes believing HAProxy's ``X-Forwarded-For`` as well.

One launcher serves the module; the tests run in file order (each first waits until every
node is up in HAProxy). The TCP user paces itself by its receivers: it sends round i+1 once
round i-WINDOW has arrived (or bounced) everywhere, so messages are always in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import time
from collections import Counter, defaultdict
from typing import Any, AsyncIterator, Iterator, Sequence

import aiohttp
import pytest
from lxml import etree

from tests.support.boshclient import NS_CLIENT, BoshClient, BoshResponse, BoshTerminated
from tests.support.cluster import (AddressPool, ClusterLauncher, alive, client_http, metric,
                                   require_haproxy, until)
from tests.support.prosody import ProsodyServer
from tests.support.wsclient import CLOSE, NS_SM, STREAM_ERROR, WsClient

pytestmark = pytest.mark.integration

NODES = 3
NODE_IDS = [f"n{i}" for i in range(1, NODES + 1)]
DRAIN_TIMEOUT = 4.0
PASSWORD = "cluster-load-pw-1"
N_ACCOUNTS = 160
WINDOW = 3
GATE = 5.0  # seconds the sender waits for round i-WINDOW before it goes on regardless
MESSAGE = f"{{{NS_CLIENT}}}message"
BODY = f"{{{NS_CLIENT}}}body"

_accounts = itertools.count()
ADDRESSES = AddressPool(first_net=40)


def account() -> str:
    n = next(_accounts)
    assert n < N_ACCOUNTS, "raise N_ACCOUNTS"
    return f"cl{n:03d}"


def node_of(c: BoshClient) -> str:
    assert c.sid is not None
    return c.sid.split(".", 1)[0]


@pytest.fixture(scope="module")
def cluster(prosody: ProsodyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLauncher]:
    require_haproxy()
    prosody.register_many([(f"cl{i:03d}", PASSWORD) for i in range(N_ACCOUNTS)])
    cl = ClusterLauncher(tmp_path_factory.mktemp("cluster-load"), prosody, NODES, base={
        "http": {"shutdown_grace": 3.0},
        "bosh": {"max_sessions_per_ip": 2, "max_inactivity": 60},
        "cluster": {"drain_timeout": DRAIN_TIMEOUT},
    })
    with cl:
        yield cl


# ------------------------------------------------------------------ clients
class Pool:
    """Every HTTP client session and XMPP client of a test, closed after it."""

    def __init__(self, cl: ClusterLauncher) -> None:
        self.cl = cl
        self.https: list[aiohttp.ClientSession] = []
        self.made: list[BoshClient | WsClient] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Any) -> "asyncio.Task[Any]":
        """A background task of the test, cancelled after it (if a failure left it running)."""
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    def http(self, ip: str) -> aiohttp.ClientSession:
        s = client_http(ip)
        self.https.append(s)
        return s

    def bosh(self, http: aiohttp.ClientSession) -> BoshClient:
        c = BoshClient(self.cl.url, http=http)
        self.made.append(c)
        return c

    def ws(self, http: aiohttp.ClientSession) -> WsClient:
        c = WsClient(self.cl.ws_url, http=http)
        self.made.append(c)
        return c

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

        async def one(c: BoshClient | WsClient) -> None:
            if isinstance(c, BoshClient):
                await c.close()
            else:
                await c.aclose()
        await asyncio.gather(*(one(c) for c in self.made), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self.https), return_exceptions=True)


@pytest.fixture
async def pool(cluster: ClusterLauncher) -> AsyncIterator[Pool]:
    async with contextlib.aclosing(Pool(cluster)) as made:
        yield made


class BoshUser:
    """One BOSH user from its own address: a session (logged in when ``user`` is set) kept
    polling by a task. A session that ends with a condition in ``relogin`` is replaced by a
    new one (as Converse.js does); every session and every response is kept."""

    def __init__(self, pool: Pool, user: str | None, wait: int = 5) -> None:
        self.pool = pool
        self.user = user
        self.wait = wait
        self.ip = ADDRESSES()
        self.http = pool.http(self.ip)
        self.sessions: list[BoshClient] = []
        self.created: list[float] = []
        self.ends: list[tuple[float, BoshClient, BoshResponse]] = []
        self.relogin: frozenset[str] = frozenset()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    @property
    def c(self) -> BoshClient:
        return self.sessions[-1]

    @property
    def name(self) -> str:
        return self.user or f"anonymous-{self.ip}"

    @property
    def jid(self) -> str:
        return f"{self.user}@{self.pool.cl.domain}/bosh"

    @property
    def live(self) -> bool:
        return bool(self.sessions) and self.c.terminated is None and (
            self.user is None or self.c.jid is not None)

    async def create(self) -> BoshClient:
        c = self.pool.bosh(self.http)
        started = time.monotonic()
        resp = await c.create(self.pool.cl.domain, wait=self.wait)
        assert resp.status == 200 and not resp.terminated and c.sid, (resp, self.pool.cl.tail())
        self.sessions.append(c)
        self.created.append(started)
        return c

    async def open(self) -> None:
        c = await self.create()
        if self.user is not None:
            await c.login(self.user, PASSWORD, resource="bosh")
            await c.send_presence()

    def start(self) -> None:
        self.task = self.pool.spawn(self._poll())

    async def _poll(self) -> None:
        # Like Strophe.js: an empty request only when none is in flight (BoshClient.wait_for
        # keeps exactly one held); the short deadline only re-checks `stopping`.
        while not self.stopping:
            c = self.c
            try:
                await c.wait_for(lambda e: False, timeout=0.5)
            except TimeoutError:
                continue
            except BoshTerminated:
                pass
            end = c.terminated
            if end is None or self.stopping:
                continue
            self.ends.append((time.monotonic(), c, end))
            if end.condition not in self.relogin:
                return
            await self.open()

    def check(self) -> None:
        if self.task is not None and self.task.done():
            self.task.result()

    async def stop(self) -> None:
        """Stop polling (a terminate answers the held request); raises what the task raised."""
        self.stopping = True
        if self.sessions and self.c.terminated is None:
            await self.c.terminate()
        if self.task is not None:
            await asyncio.wait_for(self.task, self.wait + 10)

    def bodies(self, prefix: str) -> list[str]:
        out = []
        for c in self.sessions:
            for r in c.responses:
                for el in r.children:
                    if el.tag == MESSAGE and el.get("type") != "error":
                        body = el.findtext(BODY) or ""
                        if body.startswith(prefix):
                            out.append(body)
        return out

    def responses(self) -> list[BoshResponse]:
        return [r for c in self.sessions for r in c.responses]

    def received_at(self, body: str) -> BoshClient | None:
        for c in self.sessions:
            for r in c.responses:
                for el in r.children:
                    if el.tag == MESSAGE and el.findtext(BODY) == body:
                        return c
        return None


class WsUser:
    """One WebSocket user from its own address; with ``sm`` it enables XEP-0198 resumption
    and, once :meth:`start` ran, resumes on a new connection through HAProxy whenever its
    connection closes (until :meth:`stop`)."""

    def __init__(self, pool: Pool, user: str, sm: bool) -> None:
        self.pool = pool
        self.cl = pool.cl
        self.user = user
        self.sm = sm
        self.ip = ADDRESSES()
        self.http = pool.http(self.ip)
        self.conns: list[WsClient] = []
        self.nodes: list[str] = []                      # node of each connection
        self.closes: list[tuple[float, int | None]] = []
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    @property
    def c(self) -> WsClient:
        return self.conns[-1]

    @property
    def name(self) -> str:
        return self.user

    @property
    def jid(self) -> str:
        return f"{self.user}@{self.cl.domain}/ws"

    @property
    def live(self) -> bool:
        return bool(self.conns) and not self.c.closed.is_set() and self.c.sm_counting == self.sm

    async def login(self) -> None:
        mark = self.cl.log_size()
        c = self.pool.ws(self.http)
        await c.connect()
        await c.open(self.cl.domain)
        await c.login(self.user, PASSWORD, resource="ws")
        if self.sm:
            enabled = await c.enable(resume=True)
            assert enabled.get("resume") in ("true", "1") and c.sm_id, enabled.attrib
        self.conns.append(c)
        self.nodes.append(await self.cl.session_node(self.ip, mark))

    async def resume(self) -> None:
        old = self.c
        assert old.sm_id is not None
        mark = self.cl.log_size()
        new = self.pool.ws(self.http)
        await new.connect()
        await new.open(self.cl.domain)
        features = await new.authenticate(self.user, PASSWORD)
        assert features.find(f"{{{NS_SM}}}sm") is not None, "no XEP-0198 after the restart"
        handled = sum(c.h_out for c in self.conns)
        resumed = await new.resume(old.sm_id, old.h_in)
        assert resumed.tag == f"{{{NS_SM}}}resumed", (self.user, etree.tostring(resumed))
        # the server handled exactly what we sent: nothing injected, nothing dropped
        assert int(resumed.get("h") or "-1") == handled, (resumed.get("h"), handled)
        self.conns.append(new)
        self.nodes.append(await self.cl.session_node(self.ip, mark))

    def start(self) -> None:
        self.task = self.pool.spawn(self._keep())

    async def _keep(self) -> None:
        while True:
            await self.c.closed.wait()
            if self.stopping:
                return
            self.closes.append((time.monotonic(), self.c.close_code))
            await self.resume()

    def check(self) -> None:
        if self.task is not None and self.task.done() and not self.task.cancelled():
            exc = self.task.exception()
            if exc is not None:
                raise exc

    async def stop(self) -> None:
        self.check()
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def bodies(self, prefix: str) -> list[str]:
        return [b for c in self.conns for b in c.message_bodies() if b.startswith(prefix)]

    def bad_frames(self) -> list[str]:
        """``<close/>`` or ``<stream:error/>`` on any connection (a resumable session must get
        neither: only close 1012, or nothing when its node died)."""
        return [f"{i}: {f.data!r}" for i, c in enumerate(self.conns) for f in c.frames
                if f.tag in (CLOSE, STREAM_ERROR)]


Target = BoshUser | WsUser


class Sender:
    """The TCP user (slixmpp) who sends numbered messages, each with its body as its id; it
    records every error reply (a bounce) by id and every message it gets."""

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self.sent_at: dict[str, float] = {}
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.got: Counter[str] = Counter()
        peer.add_event_handler("message_error", self._on_error)
        peer.add_event_handler("message", self._on_message)

    def _on_error(self, msg: Any) -> None:
        self.errors[msg["id"]].append(msg["error"]["condition"])

    def _on_message(self, msg: Any) -> None:
        if msg["type"] != "error":
            self.got[msg["body"]] += 1

    @property
    def jid(self) -> str:
        return str(self.peer.boundjid)

    def send(self, to: str, body: str) -> None:
        msg = self.peer.make_message(mto=to, mbody=body, mtype="chat")
        msg["id"] = body
        msg.send()
        self.sent_at[body] = time.monotonic()

    async def round_trip(self) -> None:
        """Once answered, Prosody has routed everything sent before."""
        await self.peer.make_iq_get(queryxmlns="jabber:iq:version",
                                    ito=self.peer.boundjid.domain).send(timeout=10)


class Chat:
    """Rounds of numbered messages from the sender to every target, paced by the targets:
    round i+1 goes out once round i-WINDOW has arrived (or bounced) everywhere."""

    def __init__(self, cl: ClusterLauncher, sender: Sender, targets: Sequence[Target], tag: str) -> None:
        self.cl = cl
        self.sender = sender
        self.targets = list(targets)
        self.tag = tag
        self.sent: dict[str, list[str]] = defaultdict(list)
        self.rounds = 0
        self.stalls: list[int] = []        # rounds that did not arrive within GATE seconds
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def body(self, t: Target, i: int | str) -> str:
        return f"{self.tag}.{t.name}.{i:05d}" if isinstance(i, int) else f"{self.tag}.{t.name}.{i}"

    def settled(self, bodies: Sequence[str], pacing: bool = False) -> bool:
        """Every one of ``bodies`` arrived or bounced. For ``pacing`` also one sent to a BOSH
        session that has ended since (it may yet bounce; the accounting decides), so that the
        sender never waits on a message that will never come."""
        by_user = {t.name: t for t in self.targets}
        have: dict[str, set[str]] = {}

        def done(b: str) -> bool:
            user = b.split(".")[1]
            if user not in have:
                have[user] = set(by_user[user].bodies(self.tag))
            if b in have[user] or b in self.sender.errors:
                return True
            t = by_user[user]
            return pacing and isinstance(t, BoshUser) and any(
                at >= self.sender.sent_at[b] for at, _, _ in t.ends)

        return all(done(b) for b in bodies)

    def missing(self, bodies: Sequence[str]) -> str:
        """Which of ``bodies`` neither arrived nor bounced, and what their targets went through."""
        by_user = {t.name: t for t in self.targets}
        lines = []
        for b in bodies:
            t = by_user[b.split(".")[1]]
            if b not in t.bodies(self.tag) and b not in self.sender.errors:
                at = self.sender.sent_at[b]  # queued for sending (written a little later)
                timeline = ""
                if isinstance(t, BoshUser):
                    ends = {id(c): e for e, c, _ in t.ends}
                    timeline = "; relative to its sending, sessions " + ", ".join(
                        f"{c.sid} created {t.created[i] - at:+.3f} s ended "
                        + (f"{ends[id(c)] - at:+.3f} s" if id(c) in ends else "-")
                        + " last responses " + ", ".join(
                            f"rid {r.rid} after {r.elapsed:.3f} s with {len(r.children)} "
                            f"children {r.condition or ''}" for r in c.responses[-3:])
                        for i, c in enumerate(t.sessions))
                lines.append(f"{b} (sent {time.monotonic() - at:.1f} s ago){timeline}"
                             if timeline else f"{b} (sent {time.monotonic() - at:.1f} s ago): "
                             + describe(t))
        return "\n".join(lines)

    def start(self, pool: Pool) -> None:
        self.task = pool.spawn(self._run())

    async def _run(self) -> None:
        while not self.stop.is_set():
            for t in self.targets:
                b = self.body(t, self.rounds)
                self.sender.send(t.jid, b)
                self.sent[t.name].append(b)
            self.rounds += 1
            k = self.rounds - 1 - WINDOW
            if k >= 0:
                want = [self.body(t, k) for t in self.targets]

                async def arrived() -> bool:
                    return self.settled(want, pacing=True)

                try:
                    await until(arrived, GATE, f"round {k} delivered", step=0.1)
                except AssertionError:
                    # lost (or very late): go on; the accounting at the end reports it
                    self.stalls.append(k)

    async def until_rounds(self, n: int, timeout: float = 30) -> None:
        async def reached() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()
            return self.rounds >= n
        await until(reached, timeout, f"{n} chat rounds", self.cl)

    async def finish(self, timeout: float = 20) -> None:
        """Stop the rounds; a last message to everyone, after all the others; wait for it."""
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)
        last = []
        for t in self.targets:
            b = self.body(t, "end")
            self.sender.send(t.jid, b)
            self.sent[t.name].append(b)
            last.append(b)

        async def arrived() -> bool:
            return self.settled(last, pacing=True)

        await until(arrived, timeout, "the last messages", self.cl, step=0.1)

    def problems(self) -> tuple[dict[str, Any], int]:
        """:meth:`accounting` of every target: ({user: problems}, number bounced)."""
        out, bounced = {}, 0
        for t in self.targets:
            p, n = self.accounting(t)
            bounced += n
            if p:
                out[t.name] = p
        return out, bounced

    def report(self, problems: dict[str, Any]) -> str:
        """The problems, and for every message lost its target's sessions relative to it."""
        lost = [b for ps in problems.values() for b, what in ps if what == "delivered 0x, bounced 0x"]
        return f"{problems}\nstalled rounds {self.stalls}\n{self.missing(lost)}"

    def accounting(self, t: Target) -> tuple[list[Any], int]:
        """Every message sent to ``t``: delivered exactly once or bounced exactly once, never
        both, never neither, nothing unknown. Returns (problems, number bounced)."""
        got = Counter(t.bodies(self.tag))
        problems: list[Any] = []
        bounced = 0
        for b in self.sent[t.name]:
            n, e = got.pop(b, 0), len(self.sender.errors.get(b, ()))
            bounced += e
            if n + e != 1:
                problems.append((b, f"delivered {n}x, bounced {e}x"))
        problems += [(b, "never sent") for b in got]
        return problems, bounced


async def stop_all(users: Sequence[BoshUser | WsUser]) -> None:
    await asyncio.gather(*(u.stop() for u in users))


# ------------------------------------------------------------------ 1. load
async def test_a_few_hundred_sessions_chat_through_haproxy_each_request_reaching_its_owner(
        cluster: ClusterLauncher, pool: Pool, xmpp_peer: Any, prosody: ProsodyServer) -> None:
    """150 BOSH sessions (100 created and polling, 50 logged in) and 40 logged-in WebSocket
    sessions through HAProxy; a TCP user sends 5 messages to each of the 90 users, each
    user sends one back."""
    cl = cluster
    await cl.all_up()
    tag = f"load{secrets.token_hex(2)}"
    before = {n: (metric(t, "bosh_errors_total", condition="item-not-found"),
                  metric(t, "bosh_limit_hits_total", limit="per_ip"))
              for n, t in (await cl.node_metrics()).items()}
    started = time.monotonic()
    pollers = [BoshUser(pool, None, wait=2) for _ in range(100)]
    await asyncio.gather(*(u.open() for u in pollers))
    for u in pollers:
        u.start()
    created = time.monotonic()
    talkers = [BoshUser(pool, account(), wait=5) for _ in range(50)]
    sockets = [WsUser(pool, account(), sm=False) for _ in range(40)]
    await asyncio.gather(*(u.open() for u in talkers), *(u.login() for u in sockets))
    logged_in = time.monotonic()
    for u in talkers:
        u.start()

    bob = await xmpp_peer(prosody, "bob", resource=f"tcp-{tag}")
    sender = Sender(bob)
    chat = Chat(cl, sender, [*talkers, *sockets], tag)
    hellos = [f"{tag}.hello.{t.name}" for t in chat.targets]
    for u in talkers:
        await u.c.send_message(sender.jid, f"{tag}.hello.{u.user}")
    for w in sockets:
        await w.c.send_message(sender.jid, f"{tag}.hello.{w.user}")
    for i in range(5):
        for t in chat.targets:
            b = chat.body(t, i)
            sender.send(t.jid, b)
            chat.sent[t.name].append(b)
    everything = [b for bs in chat.sent.values() for b in bs]

    async def delivered() -> bool:
        return chat.settled(everything) and all(sender.got[h] for h in hellos)

    await until(delivered, 30, "every message", cl, step=0.1)
    chatted = time.monotonic()
    # one more round of polls for every poller (each answered by its owner)
    polls = {id(u): len(u.c.responses) for u in pollers}

    async def polled_again() -> bool:
        return all(len(u.c.responses) > polls[id(u)] for u in pollers)

    await until(polled_again, 10, "another poll of every session", cl)
    await stop_all([*pollers, *talkers])

    # every BOSH response: HTTP 200, the owner's answer (no terminate with a condition)
    bad = [(u.c.sid, r) for u in pollers + talkers for r in u.responses()
           if r.status != 200 or (r.terminated and r.condition is not None)]
    assert not bad, bad[:5]
    assert all(not u.ends for u in pollers + talkers)
    assert all(len(u.c.responses) >= 2 for u in pollers)  # creation + at least one poll
    # exactly once, both ways
    problems, _ = chat.problems()
    assert not problems, chat.report(problems)
    assert not sender.errors, dict(sender.errors)
    assert {h: sender.got[h] for h in hellos} == {h: 1 for h in hellos}
    # spread over the nodes
    bosh_nodes = Counter(node_of(u.c) for u in pollers + talkers)
    ws_nodes = Counter(w.nodes[0] for w in sockets)
    assert set(bosh_nodes) == set(NODE_IDS) and min(bosh_nodes.values()) >= 25, bosh_nodes
    assert set(ws_nodes) == set(NODE_IDS) and min(ws_nodes.values()) >= 5, ws_nodes
    # no node answered a request for a session it does not own; and the per-IP limit
    # (2 per node) never bit: the nodes saw 190 distinct real addresses, not HAProxy's
    after = await cl.node_metrics()
    for n, text in after.items():
        assert metric(text, "bosh_errors_total", condition="item-not-found") == before[n][0], n
        assert metric(text, "bosh_limit_hits_total", limit="per_ip") == before[n][1], n
    for w in sockets:
        assert w.c.close_element is None and not w.c.closed.is_set()
    print(f"\n100 BOSH sessions created in {created - started:.1f} s, 50 BOSH + 40 WebSocket "
          f"logins in {logged_in - created:.1f} s, {len(everything)} + {len(hellos)} messages "
          f"in {chatted - logged_in:.1f} s; BOSH per node {dict(bosh_nodes)}, WebSocket per "
          f"node {dict(ws_nodes)}")


# ------------------------------------------------------------------ 2. a node crash
async def test_a_node_crash_under_chat_load(cluster: ClusterLauncher, pool: Pool, xmpp_peer: Any,
                                            prosody: ProsodyServer) -> None:
    """9 WebSocket users with XEP-0198 resumption and 9 logged-in BOSH users spread over the
    nodes; the TCP user keeps sending them numbered messages; the node with most of them is
    SIGKILLed (pid from nodes.json) mid-stream."""
    cl = cluster
    await cl.all_up()
    tag = f"crash{secrets.token_hex(2)}"
    ws = [WsUser(pool, account(), sm=True) for _ in range(9)]
    bosh = [BoshUser(pool, account(), wait=5) for _ in range(9)]
    await asyncio.gather(*(u.login() for u in ws), *(u.open() for u in bosh))

    def pick() -> str | None:
        on_ws = Counter(u.nodes[0] for u in ws)
        on_bosh = Counter(node_of(u.c) for u in bosh)
        ok = [n for n in NODE_IDS if on_ws[n] >= 1 and on_bosh[n] >= 1
              and sum(on_ws[m] for m in NODE_IDS if m != n) >= 2
              and sum(on_bosh[m] for m in NODE_IDS if m != n) >= 2]
        return max(ok, key=lambda n: (on_ws[n], on_bosh[n])) if ok else None

    for _ in range(6):  # leastconn spreads them; make sure the victim has both kinds
        if pick() is not None:
            break
        extra_w, extra_b = WsUser(pool, account(), sm=True), BoshUser(pool, account(), wait=5)
        await asyncio.gather(extra_w.login(), extra_b.open())
        ws.append(extra_w)
        bosh.append(extra_b)
    victim = pick()
    assert victim is not None, ([u.nodes for u in ws], [node_of(u.c) for u in bosh])
    everyone: list[BoshUser | WsUser] = [*ws, *bosh]
    hit_ws = [u for u in ws if u.nodes[0] == victim]
    hit_bosh = [u for u in bosh if node_of(u.c) == victim]
    safe_bosh = [u for u in bosh if node_of(u.c) != victim]

    bob = await xmpp_peer(prosody, "bob", resource=f"tcp-{tag}")
    sender = Sender(bob)
    for u in bosh:
        u.start()
    for w in ws:
        w.start()
    chat = Chat(cl, sender, [*ws, *safe_bosh], tag)  # the crashed node's BOSH sessions are not sent to
    chat.start(pool)
    await chat.until_rounds(WINDOW + 5)

    old = cl.node(victim)
    os.kill(old["pid"], signal.SIGKILL)
    mark_rounds = chat.rounds

    async def resumed() -> bool:
        for w in ws:
            w.check()
        return all(len(w.conns) >= 2 and w.live for w in hit_ws)

    await until(resumed, 20, f"the WebSocket sessions of {victim} resumed", cl)
    await chat.until_rounds(chat.rounds + 5)
    assert chat.rounds > mark_rounds + WINDOW  # messages were in flight throughout

    async def bosh_ended() -> bool:
        return all(u.ends for u in hit_bosh)

    await until(bosh_ended, 15, f"the BOSH sessions of {victim} answered", cl)
    await chat.finish()
    await stop_all(everyone)

    # WebSocket: those of the dead node resumed through another node; the others never moved
    for w in hit_ws:
        assert len(w.conns) == 2 and len(w.closes) == 1, (w.user, w.closes, w.nodes)
        assert w.nodes[1] != victim, (w.user, w.nodes)
        assert not w.bad_frames(), w.bad_frames()
    for w in ws:
        if w not in hit_ws:
            assert len(w.conns) == 1 and not w.closes, (w.user, w.closes, w.nodes)
    # nothing lost, nothing twice, nothing bounced: for every WebSocket user and for every
    # BOSH user of the other nodes
    problems, _ = chat.problems()
    assert not problems, chat.report(problems)
    assert not sender.errors, dict(sender.errors)
    # BOSH on the other nodes: every response 200 and none ended
    for u in safe_bosh:
        assert not u.ends
        assert all(r.status == 200 and not (r.terminated and r.condition) for r in u.responses())
    # BOSH on the dead node: HTTP 200 and item-not-found/remote-connection-failed, never a 5xx
    for u in hit_bosh:
        assert all(r.status == 200 for r in u.responses()), [r for r in u.responses() if r.status != 200]
        (_, _, end), = u.ends
        assert end.status == 200 and end.condition in ("item-not-found", "remote-connection-failed"), end
    # the launcher starts the node again
    await cl.all_up(20)
    new_pid = cl.node(victim)["pid"]
    assert new_pid != old["pid"] and alive(new_pid) and not alive(old["pid"])
    print(f"\n{victim} killed: {len(hit_ws)} WebSocket session(s) resumed on "
          f"{[w.nodes[1] for w in hit_ws]}, {len(hit_bosh)} BOSH session(s) ended "
          f"({Counter(u.ends[0][2].condition for u in hit_bosh)}); {chat.rounds} rounds to "
          f"{len(chat.targets)} users")


# ------------------------------------------------------------------ 3. rolling restart
class DrainWatch:
    """When each node's /readyz turned 503 (the drain began), seen by polling it."""

    def __init__(self, cl: ClusterLauncher, pool: Pool) -> None:
        self.cl = cl
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.stop = asyncio.Event()
        self.task = pool.spawn(self._run())

    async def _run(self) -> None:
        ports = {n["node_id"]: n["port"] for n in self.cl.nodes_json()["nodes"]}
        state = {n: 200 for n in ports}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
            while not self.stop.is_set():
                for n, port in ports.items():
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                            status = r.status
                    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                        status = 0
                    if status == 503 and state[n] != 503:
                        self.starts[n].append(time.monotonic())
                    state[n] = status
                try:  # a poll step, ended at once by stop
                    await asyncio.wait_for(self.stop.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass

    def began(self, node: str, before: float) -> float:
        """The start of ``node``'s latest drain before ``before``."""
        starts = [t for t in self.starts[node] if t < before]
        assert starts, (node, dict(self.starts))
        return starts[-1]

    async def close(self) -> None:
        self.stop.set()
        await self.task


async def test_rolling_restart_under_chat_load_loses_nothing(
        cluster: ClusterLauncher, pool: Pool, xmpp_peer: Any, prosody: ProsodyServer) -> None:
    """SIGHUP to the launcher (drain_timeout 4 s) while the TCP user keeps sending numbered
    messages to 6 WebSocket users (XEP-0198) and 6 polling BOSH users, which log in again
    when their session ends; 3 quiet BOSH sessions (one a node) and a stream of creation
    requests besides. The issue asks that the restart "loses no message of a BOSH session
    ... and ends no BOSH session younger than drain_timeout"; that is checked here as: a
    BOSH session is served until its node's drain_timeout (it gets messages sent in the
    second half of the drain), is never ended younger than drain_timeout, and every message
    sent to a BOSH user is delivered exactly once or bounced to the sender exactly once."""
    cl = cluster
    await cl.all_up()
    tag = f"roll{secrets.token_hex(2)}"
    before = cl.pids()
    # First (while no node is busier than the others: leastconn spreads them), quiet BOSH
    # sessions, one on each node: logged in, then they send no request, so what is sent to
    # one while its node drains waits there (nobody collects it).
    quiet: dict[str, BoshUser] = {}
    for _ in range(4):
        batch = [BoshUser(pool, None, wait=1) for _ in range(2 * NODES)]
        await asyncio.gather(*(q.create() for q in batch))
        for q in batch:
            if node_of(q.c) not in quiet:
                quiet[node_of(q.c)] = q
            else:
                await q.c.close()
        if len(quiet) == NODES:
            break
    assert set(quiet) == set(NODE_IDS), sorted(quiet)
    for q in quiet.values():
        q.user = account()
    await asyncio.gather(*(q.c.login(q.user or "", PASSWORD, resource="bosh") for q in quiet.values()))

    ws = [WsUser(pool, account(), sm=True) for _ in range(6)]
    bosh = [BoshUser(pool, account(), wait=5) for _ in range(6)]
    await asyncio.gather(*(u.login() for u in ws), *(u.open() for u in bosh))
    everyone: list[BoshUser | WsUser] = [*ws, *bosh]

    bob = await xmpp_peer(prosody, "bob", resource=f"tcp-{tag}")
    sender = Sender(bob)
    for u in bosh:
        # system-shutdown when the drain ends; item-not-found when the drain ended while the
        # session held no request (its last answer had just left): checked below
        u.relogin = frozenset({"system-shutdown", "item-not-found"})
        u.start()
    for w in ws:
        w.start()
    chat = Chat(cl, sender, everyone, tag)
    chat.start(pool)
    drains = DrainWatch(cl, pool)

    # creation requests throughout (a new session from a new address every other round)
    creations: list[Any] = []
    probing = asyncio.Event()

    async def probe() -> None:
        while not probing.is_set():
            c = pool.bosh(pool.http(ADDRESSES()))
            try:
                resp = await c.create(cl.domain, wait=1)
                creations.append(resp)
                if resp.status == 200 and not resp.terminated:
                    await c.close()
            except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                creations.append(exc)
            await chat.until_rounds(chat.rounds + 2)

    prober = pool.spawn(probe())
    await chat.until_rounds(WINDOW + 3)
    # the quiet sessions hold no request now (their last ones were answered)
    for q in quiet.values():
        await until(lambda: _no_request(q.c), 5, "a quiet session idle", cl)

    mark = cl.log_size()
    cl.signal(signal.SIGHUP)
    quiet_bodies = {n: [f"{tag}.quiet{n}.{i}" for i in range(3)] for n in quiet}

    async def to_quiet(node: str) -> None:
        """Once the node drains: 3 messages to its quiet session (they wait in the node)."""
        await until(lambda: _true(bool(drains.starts[node])), 30 + NODES * (DRAIN_TIMEOUT + 10),
                    f"{node} draining", cl)
        for b in quiet_bodies[node]:
            sender.send(quiet[node].jid, b)
        await sender.round_trip()

    quieting = [pool.spawn(to_quiet(n)) for n in quiet]

    async def restarted() -> bool:
        for w in everyone:
            w.check()
        if chat.task is not None and chat.task.done():
            chat.task.result()
        return "rolling restart done" in cl.log_since(mark)

    await until(restarted, 30 + NODES * (DRAIN_TIMEOUT + 10), "the rolling restart", cl, step=0.1)
    probing.set()
    await asyncio.wait_for(prober, 30)
    await asyncio.wait_for(asyncio.gather(*quieting), 10)

    async def everyone_back() -> bool:
        for w in everyone:
            w.check()
        return all(u.live for u in everyone)

    try:
        await until(everyone_back, 20, "every user connected again", cl)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(describe(u) for u in everyone if not u.live)) from None
    await chat.until_rounds(chat.rounds + 3)
    await chat.finish()
    await drains.close()
    await stop_all(everyone)
    log = cl.log_since(mark)

    # every node restarted: new pid, alive
    after = cl.pids()
    assert all(after[n] is not None and after[n] != before[n] and alive(after[n]) for n in before), \
        (before, after)
    # no creation request failed during the restart (probes and BOSH users' new logins)
    failed = [r for r in creations if not isinstance(r, BoshResponse) or r.status != 200 or r.terminated]
    assert not failed and len(creations) >= NODES, (failed, len(creations))
    # WebSocket: released with 1012 (never <close/> or a stream error), resumed on another node
    for w in ws:
        assert w.closes and all(code == 1012 for _, code in w.closes), (w.user, w.closes)
        assert len(w.conns) == len(w.closes) + 1
        assert all(a != b for a, b in zip(w.nodes, w.nodes[1:])), (w.user, w.nodes)
        assert not w.bad_frames(), (w.user, w.bad_frames())
    # WebSocket: every message exactly once, none bounced
    problems, bounced = chat.problems()
    ws_problems = {w.name: chat.accounting(w) for w in ws if chat.accounting(w) != ([], 0)}
    assert not ws_problems, chat.report({u: p for u, (p, _) in ws_problems.items()})
    # BOSH: every response HTTP 200; sessions end only at their node's drain_timeout, with
    # system-shutdown, after being served through the drain
    for u in bosh:
        assert all(r.status == 200 for r in u.responses()), [r for r in u.responses() if r.status != 200]
        assert u.ends, (u.user, "never ended, but every node restarted")
        for t_end, c, end in u.ends:
            age = t_end - u.created[u.sessions.index(c)]
            node = node_of(c)
            began = drains.began(node, t_end)
            assert end.condition in ("system-shutdown", "item-not-found"), (u.user, c.sid, end)
            assert age >= DRAIN_TIMEOUT, (u.user, c.sid, age)
            assert t_end - began >= DRAIN_TIMEOUT - 0.25, (u.user, c.sid, t_end - began)
            late = [b for b in u.bodies(tag) if u.received_at(b) is c
                    and sender.sent_at[b] >= began + DRAIN_TIMEOUT / 2]
            assert late, (u.user, c.sid, "got nothing in the second half of its node's drain")
    # the quiet sessions: what waited in their node came back to the sender at the node's
    # drain_timeout (recipient-unavailable, XEP-0206 §7); their next request gets HTTP 200
    # item-not-found (the node that answers it does not know them)
    all_quiet = [b for bs in quiet_bodies.values() for b in bs]
    await until(lambda: _true(all(b in sender.errors for b in all_quiet)), 10,
                "the quiet sessions' messages bounced", cl)
    assert {b: sender.errors[b] for b in all_quiet} == {b: ["recipient-unavailable"] for b in all_quiet}
    for q in quiet.values():
        assert all(r.status == 200 and not r.terminated for r in q.c.responses)
        assert not q.bodies(tag)
        nxt = await q.c.send()
        assert nxt.status == 200 and nxt.terminated and nxt.condition == "item-not-found", nxt
    order = [log.index(f"rolling restart: draining node {n}") for n in NODE_IDS]
    assert order == sorted(order)
    print(f"\nrolling restart: {chat.rounds} rounds to {len(chat.targets)} users, "
          f"{sum(len(w.closes) for w in ws)} WebSocket resumptions, "
          f"BOSH sessions ended {dict(Counter(e.condition for u in bosh for _, _, e in u.ends))} "
          f"({bounced} message(s) bounced to the sender: "
          f"{dict(Counter(e for b, es in sender.errors.items() if b not in all_quiet for e in es))}), "
          f"{len(creations)} creations")
    # BOSH: every message delivered exactly once or bounced back to the sender exactly once
    # (XEP-0206 §7), never both, never neither: "loses no message of a BOSH session"
    lost = sum(1 for ps in problems.values() for _, what in ps if what == "delivered 0x, bounced 0x")
    assert not problems, f"{lost} message(s) lost: " + chat.report(problems)


def describe(u: BoshUser | WsUser) -> str:
    """What a user's clients went through (for a failure message)."""
    task = "none" if u.task is None else ("running" if not u.task.done() else repr(
        u.task.exception() if not u.task.cancelled() else "cancelled"))
    if isinstance(u, BoshUser):
        return (f"BOSH {u.user} {u.ip}: task {task}; sessions {[c.sid for c in u.sessions]}; "
                f"ends {[(c.sid, e.condition) for _, c, e in u.ends]}; current jid {u.c.jid} "
                f"terminated {u.c.terminated!r} error {u.c.error!r} in flight "
                f"{[s.rid for s in u.c._inflight]}; last {u.c.responses[-2:]}")  # noqa: SLF001
    return (f"WS {u.user} {u.ip}: task {task}; nodes {u.nodes}; closes {u.closes}; current "
            f"closed {u.c.closed.is_set()} code {u.c.close_code} sm {u.c.sm_counting} "
            f"reader_error {u.c.reader_error!r}; last frames {u.c.texts()[-3:]}")


def _no_request(c: BoshClient) -> Any:
    async def idle() -> bool:
        return not c._inflight  # noqa: SLF001 - the test client's own bookkeeping
    return idle()


def _true(value: bool) -> Any:
    async def f() -> bool:
        return value
    return f()
