"""Fuzzing the WebSocket endpoint through the real stack (issue 8; the BOSH counterpart is
test_faults_fuzz.py): a bosh-cm subprocess in front of Prosody gets generated WebSocket
messages on many connections, most after a good ``<open/>``, some after a real login:
garbled and plausible text frames (several elements in one message, restricted XML, SM and
SASL elements, framing elements at the wrong time, empty and whitespace-only messages),
text frames that are not UTF-8, binary frames and frames far over ``max_stanza_bytes``.

Whatever arrives: the process stays up (/healthz 200), every message bosh-cm sends is one
well-formed element, every connection ends (the server's error, or our ``<close/>``
answered), no traceback in the log, no session left behind, and a bystander WebSocket
session that logged in before the storm still exchanges messages with a TCP user.

The case counts are explicit below: N_CONNS connections x FRAMES frames, CONCURRENCY at a time.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.prosody import USERS
from tests.support.wsclient import NS_FRAMING, NS_SASL, NS_SM, WsClient, is_message

pytestmark = pytest.mark.integration

N_CONNS = 120
FRAMES = 5           # up to 600 frames; a stream error ends a connection early
CONCURRENCY = 6
MAX_STANZA = 8192

C = "xmlns='jabber:client'"
PLAUSIBLE = [
    f"<open xmlns='{NS_FRAMING}' to='localhost' version='1.0'/>",
    f"<open xmlns='{NS_FRAMING}' to='other.example' version='1.0'/>",
    f"<open xmlns='{NS_FRAMING}'/>", f"<open xmlns='{NS_FRAMING}' version='2.0' to='localhost'/>",
    f"<close xmlns='{NS_FRAMING}'/>", f"<close xmlns='{NS_FRAMING}' see-other-uri='ws://x/'/>",
    "<open to='localhost' version='1.0'/>", "<close/>",
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>",
    "</stream:stream>", "<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>",
    f"<message {C} to='bob@localhost' type='chat'><body>fuzz</body></message>",
    f"<message {C} to='nobody@other.example'><body>x</body></message>",
    f"<message {C}><body>&amp;&lt;&#x1F600;</body></message>", "<message><body>no ns</body></message>",
    f"<presence {C}/>", f"<presence {C} type='unavailable'/>",
    f"<iq {C} type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    f"<iq {C} type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
    f"<iq {C} type='result' id='zz'/>", f"<iq {C} type='bogus'/>",
    f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGFsaWNlAHdyb25n</auth>",
    f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>!!not base64!!</auth>",
    f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>biwsbj1hbGljZSxyPWFiYw==</auth>",
    f"<auth xmlns='{NS_SASL}' mechanism='NOPE'/>", f"<response xmlns='{NS_SASL}'>eD0x</response>",
    f"<abort xmlns='{NS_SASL}'/>", "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    f"<enable xmlns='{NS_SM}' resume='true'/>", f"<r xmlns='{NS_SM}'/>", f"<a xmlns='{NS_SM}' h='99'/>",
    f"<a xmlns='{NS_SM}' h='-1'/>", f"<resume xmlns='{NS_SM}' previd='nope' h='0'/>",
    "<x xmlns='urn:other' a='1'/>", "<foo:bar xmlns:foo='urn:foo'><foo:baz/></foo:bar>",
]
BAD = [
    "<a" + "".join(f" a{i}='1'" for i in range(60)) + "/>", "<a>" * 60 + "</a>" * 60,
    "<!DOCTYPE m [<!ENTITY a 'aaaa'>]><m>&a;</m>", "<?xml version='1.0'?><presence xmlns='jabber:client'/>",
    "<!-- c --><presence xmlns='jabber:client'/>", "<![CDATA[x]]>", "&#0;", "]]>", "<", ">", "'", "text",
    "<message xmlns='jabber:client'><body>unclosed", "</message>", "<m xmlns='jabber:client' a='1' a='2'/>",
    "\u202e", "\U0001f600", "\x00", "\ufeff<presence xmlns='jabber:client'/>",
]
POOL = PLAUSIBLE + BAD


@st.composite
def mutated(draw: st.DrawFn) -> str:
    data = bytearray(draw(st.sampled_from(POOL)).encode())
    for _ in range(draw(st.integers(1, 3))):
        op, pos = draw(st.integers(0, 2)), draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.sampled_from(POOL)).encode()
        else:
            del data[pos:pos + draw(st.integers(1, 12))]
    return data.decode("utf-8", "replace")


def _huge(n: int) -> str:
    return f"<message {C} to='bob@localhost'><body>" + "y" * n + "</body></message>"


GOOD = st.sampled_from(PLAUSIBLE).map(lambda t: ("text", t))
BAD_TEXT = st.one_of(
    st.sampled_from(BAD), mutated(), st.lists(st.sampled_from(POOL), min_size=2, max_size=4).map("".join),
    st.text(max_size=100), st.sampled_from(["", " ", "\n", "\t \r\n"]),
)
# mostly plausible elements (they keep the stream alive and reach Prosody), now and then
# something that must end the stream
FRAME = st.one_of(
    GOOD, GOOD, GOOD, GOOD, GOOD, GOOD, BAD_TEXT.map(lambda t: ("text", t)),
    st.binary(max_size=80).map(lambda b: ("binary", b)),
    st.binary(min_size=1, max_size=40).map(lambda b: ("raw-text", b + b"\xff\xfe")),  # not UTF-8
    st.sampled_from([MAX_STANZA - 100, MAX_STANZA + 1, 70_000, 400_000]).map(lambda n: ("text", _huge(n))),
)
CONN = st.tuples(st.sampled_from(["open", "open", "open", "login", "none"]),
                 st.lists(FRAME, min_size=FRAMES, max_size=FRAMES))


async def _one(url: str, start: str, frames: list[tuple[str, Any]], n: int, stats: Counter[str]) -> list[str]:
    """One connection; returns the problems found (empty = fine)."""
    problems: list[str] = []
    c = WsClient(url)
    try:
        await c.connect()
        if start in ("open", "login"):
            await c.open("localhost", timeout=10)
        if start == "login":
            await c.login("carol", USERS["carol"], resource=f"fuzz-{n}")
        for kind, data in frames:
            if c.closed.is_set() or c.close_element is not None:
                break
            try:
                if kind == "text":
                    await c.send_raw(data)
                elif kind == "binary":
                    await c.send_binary(data)
                else:
                    assert c.ws is not None
                    await c.ws.send_frame(data, aiohttp.WSMsgType.TEXT)
                stats["sent"] += 1
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                break
        if not c.closed.is_set():
            try:
                await c.send_raw(f'<close xmlns="{NS_FRAMING}" />')
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                pass
            try:
                await c.wait_closed(8)
            except TimeoutError:
                problems.append(f"conn {n}: still open 8 s after <close/>; last sent {frames[-1][1]!r:.100}")
        stats["error:" + (c.stream_error_condition or "none")] += 1
        stats[f"code:{c.close_code}"] += 1
        for f in c.frames:
            if f.kind != "text" or f.element is None or not f.data.strip():
                problems.append(f"conn {n}: bad server message {f.kind} {f.error} {f.data[:120]!r}")
    except Exception as exc:  # noqa: BLE001 - a failure of the set-up is a finding too
        problems.append(f"conn {n} ({start}): {exc!r}")
    finally:
        await c.aclose()
    return problems


def _ws_sessions_open(metrics: str) -> float | None:
    # contract: bosh_sessions_open{transport="websocket"}; bosh-cm also has bosh_transport_sessions_open
    m = re.search(r'^bosh_(?:transport_)?sessions_open\{[^}]*transport="websocket"[^}]*\} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else None


async def test_ws_fuzz_real_stack(prosody, boshcm_factory, ws_client, xmpp_peer) -> None:
    cm = boshcm_factory(prosody, bosh={"max_stanza_bytes": MAX_STANZA, "max_sessions_per_ip": 0,
                                       "new_sessions_per_ip_per_minute": 0})
    cases: list[tuple[str, list[tuple[str, Any]]]] = []

    @settings(max_examples=N_CONNS, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(CONN)
    def collect(case: tuple[str, list[tuple[str, Any]]]) -> None:
        cases.append(case)

    collect()
    assert len(cases) >= N_CONNS * 0.8

    # the bystander: logged in before the storm, must not notice it
    alice: WsClient = await ws_client(cm.ws_url)
    await alice.open(prosody.domain)
    alice_jid = await alice.login("alice", USERS["alice"], "SCRAM-SHA-1", resource="bystander")
    await alice.send_presence()
    bob = await xmpp_peer(prosody, "bob", resource="fuzz-peer")

    stats: Counter[str] = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def run(n: int, case: tuple[str, list[tuple[str, Any]]]) -> list[str]:
        async with gate:
            return await _one(cm.ws_url, case[0], case[1], n, stats)

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results = await asyncio.wait_for(asyncio.gather(*(run(i, c) for i, c in enumerate(cases))), 60)
    elapsed = loop.time() - t0
    problems = [p for r in results for p in r]
    assert not problems, problems[:5]
    assert stats["sent"] >= 150, stats
    # the frames reached deep: several different stream errors came back
    assert len([k for k in stats if k.startswith("error:") and k != "error:none"]) >= 3, stats

    assert cm.running, cm.log_tail()
    async with aiohttp.ClientSession() as http:
        async with http.get(cm.base_url + "/healthz") as r:
            assert r.status == 200
        deadline = loop.time() + 10
        while True:  # everything the fuzz opened is gone again; only the bystander is left
            async with http.get(cm.base_url + "/metrics") as r:
                left = _ws_sessions_open(await r.text())
            if left in (None, 1.0):
                break
            assert loop.time() < deadline, f"{left} WebSocket sessions open after the fuzz (1 expected)"
            await asyncio.sleep(0.1)  # polling /metrics with a deadline
    log = cm.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]
    assert " CRITICAL " not in log

    assert not alice.closed.is_set() and alice.stream_error is None
    bob.send_chat(alice_jid, "after the storm")
    await alice.wait_for(is_message(body="after the storm"), timeout=10)
    await alice.send_message(str(bob.boundjid), "still here")
    await bob.next_message(timeout=10, body="still here")
    print(f"ws fuzz: {len(cases)} connections, {stats['sent']} frames in {elapsed:.1f}s: {dict(stats)}")
