"""Fuzzing the BOSH endpoint (issue 4, "Bad input"): thousands of generated and mutated
bodies (hypothesis) against a live app. Whatever arrives: never a 5xx, always a well-formed
<body/> answer, no traceback or error in the logs, no session, upstream stream or per-IP
slot left behind, and a normal client works afterwards.

* in-process: the real aiohttp app + Manager on a loopback port, fake upstream;
  BATCHES x BATCH bodies, sent BATCH at a time concurrently (held requests do not serialize).
* real stack: bosh-cm subprocess + Prosody, a smaller run.

The case counts are explicit below; together they run in about 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import Counter
from typing import Any, Iterator

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from bosh import config as config_mod
from bosh.__main__ import build_manager
from bosh.errors import Condition
from bosh.web import make_app
from tests.driver._fakes import FakeUpstreamFactory
from tests.faults._ops import NS, XB, attr, create_body, req_body, serve_app

BATCH = 40
BATCHES = 60          # in-process: 2,400 generated bodies
REAL_BATCHES = 8      # real stack: 8 x BATCH = 320 bodies
ALLOWED_STATUS = {200, 400, 403, 404}  # 400/403/404: legacy clients without 'ver' (§17.1)

# ------------------------------------------------------------------------- body strategies

NASTY = [
    "<!DOCTYPE body [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>]>",
    "<!DOCTYPE body SYSTEM 'http://127.0.0.1:1/x.dtd'>", "&b;", "&#0;", "&#xD800;", "&lt;",
    "<?xml-stylesheet href='x'?>", "<!-- c -->", "<![CDATA[x]]>", "]]>", "\x00", "\xff\xfe",
    "\ud7ff", "</stream:stream>", "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
    "xmlns='jabber:server'", "xmlns:xmpp='urn:xmpp:xbosh'", "<body>", "</body>", "'", '"', "<", ">",
    "<a>" * 80, "rid='1'", "sid=''", "type='terminate'", "xmpp:restart='true'", " " * 30,
    "<?xml version='1.0' encoding='utf-16'?>", "<?xml version='1.1'?>",
    "<message xmlns='jabber:client' to='x@example.com'><body>hi</body></message>",
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>",
    "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", "\u202e", "\U0001f600",
]
ATTR_NAMES = ["rid", "sid", "to", "wait", "hold", "ver", "type", "xmpp:restart", "xmpp:version",
              "pause", "ack", "key", "newkey", "route", "content", "accept", "from", "xml:lang",
              "condition", "secure", "polling", "requests"]
ATTR_VALUES = ["SID", "RID", "RID+1", "RID+2", "RID-1", "", "0", "1", "-1", "60", "65536",
               "99999999999999999999999", "9007199254740992", "abc", "1.6", "1.11", "2.0", "1.",
               "terminate", "error", "true", "false", "xmpp:127.0.0.1:1", "xmpp:[::1]:5222",
               "example.com", "EXAMPLE.COM", "other.org", "gzip", "deflate,gzip", "\u00e9",
               "text/xml; charset=utf-8", "da39a3ee5e6b4b0d3255bfef95601890afd80709"]
PAYLOADS = [
    "", "<message to='b@example.com'><body>x</body></message>",
    "<presence/>", "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<message xmlns='jabber:client'><body>" + "y" * 3000 + "</body></message>",
    "<x xmlns='urn:other' a='1' b='2'/>", "<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>",
    "<foo:bar xmlns:foo='urn:foo'><foo:baz/></foo:bar>", "text", "<a" + "".join(f" a{i}='1'" for i in range(70)) + "/>",
]


def _escape(v: str) -> str:
    return v.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """A <body/> from the pools: mostly plausible, often subtly wrong."""
    names = draw(st.lists(st.sampled_from(ATTR_NAMES), max_size=8, unique=True))
    if draw(st.booleans()):
        names = ["rid", "sid", *[n for n in names if n not in ("rid", "sid")]]
    attrs = " ".join(f"{n}='{_escape(draw(st.sampled_from(ATTR_VALUES) | st.text(max_size=8)))}'"
                     for n in names)
    ns = draw(st.sampled_from([NS, NS, NS, "", "http://jabber.org/protocol/httpbind2", "jabber:client"]))
    xmlns = f" xmlns='{ns}'" if ns else ""
    payload = "".join(draw(st.lists(st.sampled_from(PAYLOADS), max_size=3)))
    root = draw(st.sampled_from(["body", "body", "body", "Body", "stream:stream", "iq"]))
    text = f"<{root}{xmlns} xmlns:xmpp='{XB}' {attrs}"
    text += f">{payload}</{root}>" if payload else "/>"
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request or creation body with byte-level damage or nasty insertions."""
    base = draw(st.sampled_from([
        create_body(1000).decode(),
        req_body("SID", 0, "").decode().replace("rid='0'", "rid='RID'"),
        req_body("SID", 0, PAYLOADS[1]).decode().replace("rid='0'", "rid='RID'"),
        req_body("SID", 0, "", type="terminate").decode().replace("rid='0'", "rid='RID'"),
    ])).encode()
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.sampled_from(NASTY)).encode("utf-8", "surrogatepass")
        elif op == 2:
            del data[pos:pos + draw(st.integers(1, 20))]
        else:
            data = data[:pos]
    return bytes(data)


@st.composite
def plausible(draw: st.DrawFn) -> bytes:
    """Well-formed requests for the batch's live session (or creations): the session paths."""
    if draw(st.integers(0, 4)) == 0:
        attrs = {"rid": str(draw(st.integers(1, 2**53 + 5))),
                 "to": draw(st.sampled_from(["example.com", "example.com", "other.org", ""])),
                 "wait": draw(st.sampled_from(["0", "1", "5", "60", "70000"])),
                 "hold": draw(st.sampled_from(["0", "1", "2", "5"])),
                 "ver": draw(st.sampled_from(["1.6", "1.11", "1.x"])), "xmpp:version": "1.0"}
        for name in draw(st.lists(st.sampled_from(["ack", "route", "accept", "newkey", "content"]),
                                  max_size=2, unique=True)):
            attrs[name] = draw(st.sampled_from(ATTR_VALUES))
    else:
        attrs = {"sid": "SID", "rid": draw(st.sampled_from(["RID", "RID", "RID+1", "RID+2", "RID-1"]))}
        for name in draw(st.lists(st.sampled_from(["type", "xmpp:restart", "pause", "ack", "key",
                                                   "to", "xml:lang"]), max_size=2, unique=True)):
            attrs[name] = draw(st.sampled_from(
                {"type": ["terminate", "error"], "xmpp:restart": ["true", "1", "false"],
                 "pause": ["1", "5", "11", "x"], "ack": ["RID-1", "RID", "1"],
                 "key": ["abc"], "to": ["example.com"], "xml:lang": ["en"]}[name]))
    payload = "".join(draw(st.lists(st.sampled_from(PAYLOADS[:8]), max_size=3)))
    head = f"<body xmlns='{NS}' xmlns:xmpp='{XB}' " + " ".join(f"{k}='{v}'" for k, v in attrs.items())
    return (head + (f">{payload}</body>" if payload else "/>")).encode()


BODIES = st.one_of(plausible(), plausible(), structured(), mutated(), st.binary(max_size=200))


def fill(body: bytes, sid: str, rid: int) -> bytes:
    return (body.replace(b"RID+1", str(rid + 1).encode()).replace(b"RID+2", str(rid + 2).encode())
            .replace(b"RID-1", str(rid - 1).encode()).replace(b"RID", str(rid).encode())
            .replace(b"SID", sid.encode()))


# ------------------------------------------------------------------------- log capture

class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.bad.append(self.format(record))


def check_answer(status: int, data: bytes, sent: bytes) -> str:
    """Assert the answer is acceptable; return a label of the outcome (for coverage)."""
    assert status in ALLOWED_STATUS, (status, data[:300], sent[:300])
    if status != 200 and not data:
        return f"http-{status}"
    root = etree.fromstring(data)
    assert root.tag == f"{{{NS}}}body", (data[:300], sent[:300])
    if root.get("type") == "terminate":
        return root.get("condition") or "terminate"
    return root.get("type") or ("sid" if root.get("sid") else "data" if len(root) else "empty")


# ------------------------------------------------------------------------- in-process run

class LiveApp:
    """The app in a background event loop thread, so hypothesis can drive it synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        cfg = config_mod.from_mapping({
            "http": {"max_body_bytes": 8192},
            "bosh": {"max_wait": 5, "max_inactivity": 30, "max_sessions_per_ip": 0,
                     "new_sessions_per_ip_per_minute": 0, "max_stanza_bytes": 2048, "max_pause": 10},
            "upstream": {"domains": ["example.com"], "routes": ["xmpp:127.0.0.1:1"]}})
        self.factory = FakeUpstreamFactory(auto=True)

        async def setup() -> Any:
            self.manager = build_manager(cfg, self.factory)
            self.served = await serve_app(make_app(self.manager, cfg.http), cfg.http)
            self.http = aiohttp.ClientSession()
        self.run(setup())
        self.url = self.served.url

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def post(self, data: bytes) -> tuple[int, bytes]:
        async with self.http.post(self.url, data=data) as r:
            return r.status, await r.read()

    async def batch(self, bodies: list[bytes]) -> list[tuple[int, bytes, bytes]]:
        status, created = await self.post(create_body(5000))
        sid = attr(created, "sid") or "nosid"
        sent = [fill(b, sid, 5001 + i % 3) for i, b in enumerate(bodies)]
        tasks = [asyncio.ensure_future(self.post(b)) for b in sent]
        await asyncio.wait(tasks, timeout=0.3)
        # Whatever is still held: end every session, as a drain would (system-shutdown).
        for d in self.manager.registry:
            d.end(Condition.SYSTEM_SHUTDOWN)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return [(s, d, b) for (s, d), b in zip(results, sent)]

    def close(self) -> None:
        async def down() -> None:
            await self.http.close()
            await self.manager.shutdown()
            await self.served.close()
        self.run(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveApp]:
    app = LiveApp()
    yield app
    app.close()


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


def test_fuzz_in_process_no_5xx_no_traceback_no_leak(live: LiveApp, capture: Capture) -> None:
    seen = {"n": 0}
    outcomes: Counter[str] = Counter()

    @settings(max_examples=BATCHES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(BODIES, min_size=BATCH, max_size=BATCH))
    def run(bodies: list[bytes]) -> None:
        for status, data, sent in live.run(live.batch(bodies)):
            outcomes[check_answer(status, data, sent)] += 1
            seen["n"] += 1

    run()
    assert seen["n"] >= BATCHES * BATCH * 0.9
    # The bodies reach deep: parse errors, live-session paths and answered requests.
    for label in ("bad-request", "item-not-found", "policy-violation", "other-request",
                  "host-unknown", "sid", "empty", "error"):
        assert outcomes[label] > 0, (label, outcomes)
    assert capture.bad == [], capture.bad[:3]
    m = live.manager
    assert len(m.registry) == 0
    assert live.factory.live == 0, "upstream streams left open"
    assert m.hub.client_limits.open_for("127.0.0.1") == 0, "per-IP slots leaked"
    assert m.held_count() == 0

    async def normal() -> bytes:
        status, created = await live.post(create_body(9000))
        sid = attr(created, "sid")
        assert status == 200 and sid
        msg = "<message to='b@example.com'><body>after the storm</body></message>"
        status, data = await live.post(req_body(sid, 9001, msg))
        if b"after the storm" not in data:
            status, data = await live.post(req_body(sid, 9002))
        await live.post(req_body(sid, 9003, type="terminate"))
        return data
    assert b"after the storm" in live.run(normal())


# ------------------------------------------------------------------------- real stack

@pytest.mark.integration
async def test_fuzz_real_stack_smaller_run(prosody, boshcm_factory, bosh_client) -> None:
    from tests.support.boshclient import is_presence
    from tests.support.prosody import USERS

    cm = boshcm_factory(prosody, bosh={"max_wait": 1, "max_inactivity": 2, "max_sessions_per_ip": 0,
                                       "new_sessions_per_ip_per_minute": 0, "max_stanza_bytes": 2048},
                        http={"max_body_bytes": 8192})
    bodies_all: list[list[bytes]] = []

    @settings(max_examples=REAL_BATCHES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(BODIES, min_size=BATCH, max_size=BATCH))
    def collect(bodies: list[bytes]) -> None:
        bodies_all.append([b.replace(b"example.com", prosody.domain.encode()) for b in bodies])

    collect()
    async with aiohttp.ClientSession() as http:
        async def post(data: bytes) -> tuple[int, bytes, bytes]:
            async with http.post(cm.url, data=data) as r:
                return r.status, await r.read(), data

        for bodies in bodies_all:
            status, created, _ = await post(create_body(5000, to=prosody.domain))
            sid = attr(created, "sid") or "nosid"
            sent = [fill(b, sid, 5001 + i % 3) for i, b in enumerate(bodies)]
            for status, data, body in await asyncio.wait_for(asyncio.gather(*(post(b) for b in sent)), 30):
                check_answer(status, data, body)

        # every session ends by inactivity (2 s); nothing stays behind
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            async with http.get(cm.base_url + "/metrics") as r:
                metrics = await r.text()
            if re.search(r"^bosh_sessions_open 0\.0$", metrics, re.M) and \
                    re.search(r"^bosh_upstreams_open 0\.0$", metrics, re.M):
                break
            assert loop.time() < deadline, [l for l in metrics.splitlines() if "_open " in l]
            await asyncio.sleep(0.2)
    log = cm.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log
    c = await bosh_client(cm.url)
    await c.create(prosody.domain, wait=1)
    jid = await c.login("alice", USERS["alice"], resource="after-fuzz")
    await c.send_presence()
    await c.wait_for(is_presence(from_=jid))
