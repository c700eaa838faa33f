"""Nothing is lost when the client's connection drops (issue 4, "Faults"; design.md §4;
XEP-0124 §14.3 broken connections): a raw HTTP/1.1 client over real sockets drops its TCP
connection while a request is held and while a large response is being written (small
receive buffer, RST), then resends the same rid like Strophe.js does. Every message a
slixmpp user sent arrives exactly once."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections import Counter

import pytest
from lxml import etree

from tests.faults._ops import http_request, read_response
from tests.support.boshclient import NS_CLIENT, NS_HTTPBIND, BoshClient, is_presence
from tests.support.prosody import USERS

pytestmark = pytest.mark.integration

N_BURSTS = 12
BURST = 8
FILLER = "x" * 3000  # ~3 KB per message: a burst is far more than the client's receive buffer


class RawBosh:
    """A hand-written BOSH client: one TCP connection per request."""

    def __init__(self, port: int, path: str, sid: str) -> None:
        self.port, self.path, self.sid = port, path, sid
        self.drops = Counter[str]()

    def body(self, rid: int) -> bytes:
        return f"<body xmlns='{NS_HTTPBIND}' sid='{self.sid}' rid='{rid}'/>".encode()

    async def _connect(self, small_buffer: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if small_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        return await asyncio.open_connection(sock=sock, limit=2**20)

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:  # RST instead of FIN: the server's write fails mid-way
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def exchange(self, rid: int, mode: str) -> bytes | None:
        """Send rid; ``mode`` 'normal' reads the answer, 'drop_held' drops the connection if
        no answer came within 50 ms (so it is held), 'drop_mid' reads 200 bytes of the
        answer and resets. Returns the body, or None when we dropped."""
        reader, writer = await self._connect(small_buffer=mode == "drop_mid")
        try:
            writer.write(http_request(self.path, self.body(rid)))
            await writer.drain()
            if mode == "drop_held":
                try:
                    first = await asyncio.wait_for(reader.read(1), 0.05)
                except asyncio.TimeoutError:
                    self.drops[mode] += 1
                    self._reset(writer)
                    return None
                rest = await read_response(_Prefixed(first, reader), timeout=20)
                return rest.body
            if mode == "drop_mid":
                got = await asyncio.wait_for(reader.read(200), 20)
                assert got, "connection closed without an answer"
                self.drops[mode] += 1
                self._reset(writer)
                return None
            return (await read_response(reader, timeout=20)).body
        finally:
            if not writer.transport.is_closing():
                writer.close()


class _Prefixed:
    """A StreamReader with some bytes already read put back in front."""

    def __init__(self, prefix: bytes, reader: asyncio.StreamReader) -> None:
        self._buf = prefix
        self._reader = reader

    async def readline(self) -> bytes:
        if b"\n" in self._buf:
            line, _, self._buf = self._buf.partition(b"\n")
            return line + b"\n"
        line = self._buf + await self._reader.readline()
        self._buf = b""
        return line

    async def readexactly(self, n: int) -> bytes:
        head, self._buf = self._buf[:n], self._buf[n:]
        return head + await self._reader.readexactly(n - len(head))


def messages(raw: bytes) -> list[str]:
    root = etree.fromstring(raw)
    assert root.tag == f"{{{NS_HTTPBIND}}}body", raw[:200]
    assert root.get("type") != "terminate", raw[:300]
    return [m.findtext(f"{{{NS_CLIENT}}}body") or "" for m in root.iter(f"{{{NS_CLIENT}}}message")
            if (m.findtext(f"{{{NS_CLIENT}}}body") or "").startswith("drop-")]


async def test_dropped_connections_lose_no_message_and_duplicate_none(
        prosody, boshcm_factory, bosh_client, xmpp_peer) -> None:
    cm = boshcm_factory(prosody, bosh={"max_wait": 2, "max_inactivity": 30, "max_hold": 1})
    c: BoshClient = await bosh_client(cm.url)
    await c.create(prosody.domain, wait=2)
    jid = await c.login("alice", USERS["alice"], resource="dropper")
    await c.send_presence()
    await c.wait_for(is_presence(from_=jid))
    # Let the BoshClient's own requests finish; from here on the raw client owns the rids.
    pending = [s.task for s in c._inflight]
    await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
    raw = RawBosh(cm.port, cm.path, c.sid or "")
    c.sid = None  # the fixture must not terminate a session it no longer drives
    bob = await xmpp_peer(prosody, "bob")

    rng = random.Random(4)
    expected = [f"drop-{b}-{i} {FILLER}" for b in range(N_BURSTS) for i in range(BURST)]
    got: Counter[str] = Counter()
    rid = c.rid
    sent_bursts = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    modes = ["drop_mid", "drop_held", "normal", "drop_mid", "drop_held"]
    while sum(got.values()) < len(expected):
        assert loop.time() < deadline, f"only {sum(got.values())}/{len(expected)} arrived; {raw.drops}"
        mode = modes[(rid - c.rid) % len(modes)]
        burst_first = mode != "drop_held"  # held drops: the burst arrives after the drop
        if burst_first and sent_bursts < N_BURSTS:
            for i in range(BURST):
                bob.send_chat(jid, f"drop-{sent_bursts}-{i} {FILLER}")
            sent_bursts += 1
        rid += 1
        body = await raw.exchange(rid, mode)
        if not burst_first and sent_bursts < N_BURSTS:
            for i in range(BURST):
                bob.send_chat(jid, f"drop-{sent_bursts}-{i} {FILLER}")
            sent_bursts += 1
        attempts = 0
        while body is None:  # no answer read: resend the same rid (§14.3), maybe drop again
            attempts += 1
            body = await raw.exchange(rid, "normal" if attempts > 2 else rng.choice(["normal", "drop_mid"]))
        got.update(m for m in messages(body))
    # Deterministic held drops: with everything delivered, a request is surely held; drop
    # it, then let messages arrive; the resent rid (or the next one) must carry them.
    extra = 0
    while raw.drops["drop_held"] < 2:
        assert extra < 10, raw.drops
        rid += 1
        body = await raw.exchange(rid, "drop_held")
        if body is None:
            for i in range(BURST):
                text = f"drop-h{extra}-{i} {FILLER}"
                expected.append(text)
                bob.send_chat(jid, text)
            extra += 1
            body = await raw.exchange(rid, "normal")  # the same rid, resent
        got.update(messages(body))
    while sum(got.values()) < len(expected):
        assert loop.time() < deadline, f"only {sum(got.values())}/{len(expected)} arrived"
        rid += 1
        got.update(messages(await raw.exchange(rid, "normal")))
    assert raw.drops["drop_mid"] >= 3 and raw.drops["drop_held"] >= 2, raw.drops
    assert sorted(got) == sorted(expected)
    assert max(got.values()) == 1, [m[:12] for m, n in got.items() if n > 1]
    # the session is still healthy: terminate it cleanly
    end = await read_terminate(raw, rid + 1)
    assert end == "terminate"


async def read_terminate(raw: RawBosh, rid: int) -> str | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", raw.port)
    body = f"<body xmlns='{NS_HTTPBIND}' sid='{raw.sid}' rid='{rid}' type='terminate'/>".encode()
    writer.write(http_request(raw.path, body))
    await writer.drain()
    res = await read_response(reader, timeout=10)
    writer.close()
    return etree.fromstring(res.body).get("type")
