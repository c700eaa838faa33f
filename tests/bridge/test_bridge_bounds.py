"""Bounds on what the server may make the bridge hold (issue 11): one element's size and its
nesting depth, ``[upstream] max_stanza_bytes`` / ``max_stanza_depth``. Past either, the
server gets ``<policy-violation/>`` (RFC 6120 §4.9.3.12) and the session ends as when the
server is lost; what the server completed before still reaches the client."""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest

from bosh.config import UpstreamConfig
from bosh.errors import Condition
from bosh.ports import ClientElement, StreamParams
from xmpp_bridge.upstream import XmppUpstream, XmppUpstreamFactory

from bridge_fakes import (FEATURES_SASL, FEATURES_TLS, WAIT, Cert, FakeServer, RecordingListener,
                          ServerConn)

PARAMS = StreamParams(to="localhost", lang="en", version="1.0")
POLICY_VIOLATION = (rb"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                    rb"</stream:error></stream:stream>")


async def open_bounded(server: FakeServer, listener: RecordingListener, **bounds: int
                       ) -> tuple[XmppUpstreamFactory, XmppUpstream, ServerConn]:
    factory = XmppUpstreamFactory(UpstreamConfig(
        host="127.0.0.1", port=server.port, tls="none", keepalive=0.0, connect_timeout=WAIT,
        **bounds))  # type: ignore[arg-type]
    upstream = factory.open(PARAMS, listener)
    conn = await server.accept()
    await conn.open_stream("s1", FEATURES_SASL)
    await listener.wait_ready()
    return factory, upstream, conn


def message(n: int, body: str) -> str:
    return f"<message id='m{n}'><body>{body}</body></message>"


async def test_elements_within_the_bound_pass_however_many_arrive_in_one_read(
        server: FakeServer, listener: RecordingListener) -> None:
    """The bound is per element: 20 elements of ~1.5 KB in one write, 30 KB in all, pass a
    2 KB bound."""
    factory, upstream, conn = await open_bounded(server, listener, max_stanza_bytes=2048)
    conn.send("".join(message(i, "x" * 1500) for i in range(20)))
    assert len(await listener.wait_elements(20)) == 20
    assert not listener.closed.done()
    assert factory.counters()["over_limit"] == 0
    upstream.close()


@pytest.mark.parametrize("split", [False, True])
async def test_an_element_over_max_stanza_bytes_ends_the_stream_with_policy_violation(
        server: FakeServer, listener: RecordingListener, split: bool) -> None:
    """An element that never ends (in one read, or trickled over many) is cut off past the
    bound, not buffered; the element completed before it is delivered first."""
    factory, upstream, conn = await open_bounded(server, listener, max_stanza_bytes=2048)
    conn.send(message(1, "before") + "<message id='big'><body>")
    if split:
        for _ in range(10):
            conn.send("y" * 300)
            await conn.writer.drain()
    else:
        conn.send("y" * 3000)
    condition, stream_error = await listener.wait_closed()
    assert (condition, stream_error) == (Condition.REMOTE_CONNECTION_FAILED, None)
    assert listener.elements == [b'<message xmlns="jabber:client" id="m1"><body>before</body></message>']
    await conn.expect(POLICY_VIOLATION)
    assert factory.counters()["over_limit"] == 1
    upstream.close()


async def test_text_between_elements_counts_toward_the_bound(
        server: FakeServer, listener: RecordingListener) -> None:
    """Character data at stream level is held by the parser too: 3,000 spaces with no element
    after them break a 2 KB bound (a keepalive space now and then does not)."""
    factory, upstream, conn = await open_bounded(server, listener, max_stanza_bytes=2048)
    conn.send(" " * 1000)
    conn.send(message(1, "ok"))
    await listener.wait_elements(1)
    conn.send(" " * 3000)
    await listener.wait_closed()
    await conn.expect(POLICY_VIOLATION)
    assert factory.counters()["over_limit"] == 1
    upstream.close()


async def test_nesting_past_max_stanza_depth_ends_the_stream(
        server: FakeServer, listener: RecordingListener) -> None:
    """Depth 4 passes a bound of 4; depth 5 ends the stream."""
    factory, upstream, conn = await open_bounded(server, listener, max_stanza_depth=4)
    conn.send("<message><a><b><c/></b></a></message>")  # message=1 ... c=4
    assert len(await listener.wait_elements(1)) == 1
    conn.send("<message><a><b><c><d/></c></b></a></message>")
    condition, _ = await listener.wait_closed()
    assert condition is Condition.REMOTE_CONNECTION_FAILED
    assert len(listener.elements) == 1
    await conn.expect(POLICY_VIOLATION)
    assert factory.counters()["over_limit"] == 1
    upstream.close()


async def test_a_malformed_stream_is_not_counted_as_over_the_bound(
        server: FakeServer, listener: RecordingListener) -> None:
    factory, upstream, conn = await open_bounded(server, listener)
    conn.send("<message><body>x</msg>")
    await listener.wait_closed()
    assert factory.counters()["over_limit"] == 0
    assert b"policy-violation" not in await conn.read_to_eof()
    upstream.close()


# -- backpressure: a server that reads slower than the client writes -----------------------

class WritableListener(RecordingListener):
    """Also records ``upstream_writable`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writable: list[bool] = []
        self.flipped = asyncio.Event()

    def upstream_writable(self, writable: bool) -> None:
        self.writable.append(writable)
        self.flipped.set()


async def fill_until_paused(upstream: XmppUpstream, listener: WritableListener) -> int:
    """Write 64 KB elements (a bounded number: 1 GB at most) until the bridge says the server
    does not keep up; returns the bytes written."""
    chunk = ClientElement("jabber:client", "message",
                          b"<message><body>" + b"z" * 65536 + b"</body></message>")
    written = 0
    for _ in range(16384):
        if listener.writable:
            return written
        upstream.send([chunk])
        written += len(chunk.data)
        await asyncio.sleep(0)  # one loop turn: let the transport write what it can
    raise AssertionError(f"never paused after {written} bytes")


@pytest.mark.parametrize("tls", [False, True])
async def test_a_server_that_stops_reading_pauses_the_client_side_until_it_reads_again(
        server: FakeServer, cert: Cert, tls: bool) -> None:
    """Write-side high-water mark: while the server reads nothing, the bridge says so once
    (False), with what it holds bounded; once the server reads, it says True. Over TLS the
    SSL layer's own backlog counts."""
    listener = WritableListener()
    factory = XmppUpstreamFactory(UpstreamConfig(
        host="127.0.0.1", port=server.port, tls="required" if tls else "none",
        ca_file=str(cert.cert) if tls else "", keepalive=0.0, connect_timeout=WAIT))
    upstream = factory.open(PARAMS, listener)
    conn = await server.accept()
    if tls:
        await conn.open_stream("s0", FEATURES_TLS)
        await conn.expect(rb"<starttls[^>]*/>")
        await conn.starttls(cert.server_context())
    await conn.open_stream("s1", FEATURES_SASL)
    await listener.wait_ready()
    conn.writer.transport.pause_reading()  # the server stops reading
    written = await fill_until_paused(upstream, listener)
    assert listener.writable == [False]
    assert upstream._stream.transport is not None
    held = upstream._stream.transport.get_write_buffer_size()
    assert 0 < held <= 2 * 65600 + 65536, held  # about one element past the high-water mark
    conn.writer.transport.resume_reading()
    while sum(map(len, (conn.received, conn.buffer))) < written and not listener.writable[1:]:
        await conn._fill()
    await asyncio.wait_for(_until(lambda: listener.writable == [False, True]), WAIT)
    assert not listener.closed.done()
    upstream.close()


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


# -- what the parser (lxml) must refuse or keep, as expat did ------------------------------

async def test_elements_before_a_syntax_error_in_the_same_read_are_delivered_first(
        server: FakeServer, listener: RecordingListener) -> None:
    _, upstream, conn = await open_bounded(server, listener)
    conn.send(message(1, "ok") + "<message><body>x</msg>")
    condition, _ = await listener.wait_closed()
    assert condition is Condition.REMOTE_CONNECTION_FAILED
    assert listener.elements == [b'<message xmlns="jabber:client" id="m1"><body>ok</body></message>']
    upstream.close()


@pytest.mark.parametrize("bad", [
    "<message><body>a&foo;b</body></message>",   # undefined entity: an error, not a stall
    "<message><foo:bar/></message>",             # unbound element prefix
    "<message a:b='1'/>",                        # unbound attribute prefix
])
async def test_what_expat_refused_ends_the_stream_and_nothing_of_it_is_forwarded(
        server: FakeServer, listener: RecordingListener, bad: str) -> None:
    _, upstream, conn = await open_bounded(server, listener)
    conn.send(bad)
    condition, _ = await listener.wait_closed()
    assert condition is Condition.REMOTE_CONNECTION_FAILED
    assert listener.elements == []
    upstream.close()
