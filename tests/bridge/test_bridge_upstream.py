"""XmppUpstream against a scripted fake XMPP server on 127.0.0.1 (plain and STARTTLS)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from typing import Sequence

import pytest
from lxml import etree

from bosh.config import UpstreamConfig
from bosh.errors import Condition
from bosh.ports import ClientElement, StreamInfo, StreamParams
from xmpp_bridge.stream import TLS_READ_BUFFER, _shared_recv_view
from xmpp_bridge.upstream import XmppUpstream, XmppUpstreamFactory

from bridge_fakes import (FEATURES_SASL, FEATURES_SASL_WITH_STARTTLS, FEATURES_TLS, HEADER_RE,
                      SERVER_HEADER, WAIT, Cert, FakeServer, RecordingListener, ServerConn)

PARAMS = StreamParams(to="localhost", lang="en", version="1.0")
BODY_OPEN = (b"<body xmlns='http://jabber.org/protocol/httpbind' "
             b"xmlns:stream='http://etherx.jabber.org/streams'>")


def plain_config(server: FakeServer, **kw: object) -> UpstreamConfig:
    args: dict[str, object] = dict(host="127.0.0.1", port=server.port, tls="none",
                                   keepalive=0.0, connect_timeout=WAIT)
    args.update(kw)
    return UpstreamConfig(**args)  # type: ignore[arg-type]


def tls_config(server: FakeServer, cert: Cert | None, **kw: object) -> UpstreamConfig:
    return plain_config(server, tls="required", ca_file=str(cert.cert) if cert else "", **kw)


def header_attrs(match: "re.Match[bytes]") -> dict[str, str]:
    root = etree.fromstring(match.group(0) + b"</stream:stream>")
    return {str(k): str(v) for k, v in root.attrib.items()} | {"xmlns": root.nsmap[None]}


async def open_plain(server: FakeServer, listener: RecordingListener,
                     features: str = FEATURES_SASL, **kw: object
                     ) -> tuple[XmppUpstream, ServerConn]:
    factory = XmppUpstreamFactory(plain_config(server, **kw))
    upstream = factory.open(PARAMS, listener)
    conn = await server.accept()
    await conn.open_stream("s1", features)
    await listener.wait_ready()
    return upstream, conn


# -- opening --------------------------------------------------------------------------------

async def test_open_returns_at_once_and_sends_header(server: FakeServer,
                                                     listener: RecordingListener) -> None:
    """RFC 6120 §4.7 / XEP-0206 §3: header carries to, version, xml:lang; ready follows."""
    factory = XmppUpstreamFactory(plain_config(server))
    params = StreamParams(to="localhost", lang="de", from_="user@localhost", version="1.0")
    upstream = factory.open(params, listener)
    assert not listener.calls  # nothing synchronous
    conn = await server.accept()
    header = await conn.open_stream("abc123", FEATURES_SASL)
    attrs = header_attrs(header)
    assert attrs["to"] == "localhost"
    assert attrs["version"] == "1.0"
    assert attrs["{http://www.w3.org/XML/1998/namespace}lang"] == "de"
    assert attrs["from"] == "user@localhost"
    assert attrs["xmlns"] == "jabber:client"
    info, features = await listener.wait_ready()
    assert (info.from_, info.id, info.version) == ("localhost", "abc123", "1.0")
    # Features relayed without -PLUS, channel binding and compression.
    assert features.startswith(b'<stream:features xmlns:stream="http://etherx.jabber.org/streams">')
    assert b"-PLUS" not in features and b"sasl-channel-binding" not in features
    assert b"compression" not in features
    assert b"<mechanism>PLAIN</mechanism>" in features
    etree.fromstring(BODY_OPEN + features + b"</body>")
    upstream.close()


async def test_plaintext_mode_ignores_offered_starttls(server: FakeServer,
                                                       listener: RecordingListener) -> None:
    """tls='none': STARTTLS is neither negotiated nor shown to the client."""
    upstream, conn = await open_plain(server, listener, FEATURES_SASL_WITH_STARTTLS)
    _, features = await listener.wait_ready()
    assert b"starttls" not in features
    upstream.close()
    rest = await conn.read_to_eof()
    assert b"starttls" not in conn.received
    assert rest.endswith(b"</stream:stream>")


# -- client -> server ---------------------------------------------------------------------

async def test_client_elements_forwarded_byte_exact_and_filtered(
        server: FakeServer, listener: RecordingListener) -> None:
    upstream, conn = await open_plain(server, listener)
    auth = (b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
            b"AGFsaWNlAHNlY3JldA==</auth>")
    msg = b'<message xmlns="jabber:client" to="b@localhost"><body>x &amp; y</body></message>'
    upstream.send([
        ClientElement("urn:ietf:params:xml:ns:xmpp-tls", "starttls",
                      b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        ClientElement("urn:ietf:params:xml:ns:xmpp-sasl", "auth", auth),
        ClientElement("http://etherx.jabber.org/streams", "stream", b"</stream:stream>"),
        ClientElement("jabber:client", "message", msg),
    ])
    await conn.expect(b"</message>")
    after_header = re.split(HEADER_RE, conn.received, maxsplit=1)[1]
    assert after_header == auth + msg
    assert b"starttls" not in conn.received
    upstream.close()


async def test_restart_sends_new_header_on_same_socket(server: FakeServer,
                                                       listener: RecordingListener) -> None:
    """XEP-0206 §5: after SASL success, a fresh header on the same TCP stream."""
    upstream, conn = await open_plain(server, listener)
    conn.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    elements = await listener.wait_elements(1)
    assert elements == [b'<success xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/>']
    upstream.restart(PARAMS)
    second = await conn.expect(HEADER_RE)
    assert header_attrs(second)["to"] == "localhost"
    assert b"</stream:stream>" not in conn.received
    assert len(server.conns) == 1
    # The server's new stream: its features reach the client via upstream_elements,
    # filtered like the first ones.
    conn.send(SERVER_HEADER.format(id="s2") + "<stream:features><bind "
              "xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><sasl-channel-binding "
              "xmlns='urn:xmpp:sasl-cb:0'/></stream:features>")
    elements = await listener.wait_elements(2)
    assert elements[1] == (b'<stream:features xmlns:stream="http://etherx.jabber.org/streams"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/>'
                           b"</stream:features>")
    assert listener.calls.count("ready") == 1
    upstream.close()


# -- server -> client ---------------------------------------------------------------------

async def test_elements_from_one_read_arrive_as_one_batch(server: FakeServer,
                                                          listener: RecordingListener) -> None:
    upstream, conn = await open_plain(server, listener)
    conn.send("<message from='a@localhost'><body>1</body></message>"
              "<presence from='b@localhost'/>\n<iq type='get' id='x'/>")
    await listener.wait_elements(3)
    # The three elements came in one TCP segment on loopback, so in one data_received.
    assert len(listener.batches) == 1
    assert listener.batches[0][0].startswith(b'<message xmlns="jabber:client" ')
    assert listener.batches[0][1] == b'<presence xmlns="jabber:client" from="b@localhost"/>'
    upstream.close()


async def test_element_split_across_reads(server: FakeServer,
                                          listener: RecordingListener) -> None:
    upstream, conn = await open_plain(server, listener)
    conn.send("<message><body>hel")
    await conn.writer.drain()
    conn.send("lo</body></message>")
    elements = await listener.wait_elements(1)
    assert elements == [b'<message xmlns="jabber:client"><body>hello</body></message>']
    upstream.close()


async def test_stream_error_after_stanzas(server: FakeServer,
                                          listener: RecordingListener) -> None:
    """RFC 6120 §4.9 -> XEP-0124 remote-stream-error; earlier stanzas delivered first."""
    upstream, conn = await open_plain(server, listener)
    conn.send("<message><body>before</body></message>"
              "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
              "</stream:error></stream:stream>")
    condition, error = await listener.wait_closed()
    assert condition is Condition.REMOTE_STREAM_ERROR
    assert error is not None and b"<conflict " in error
    assert error.startswith(b'<stream:error xmlns:stream="http://etherx.jabber.org/streams">')
    assert listener.elements == [b'<message xmlns="jabber:client"><body>before</body></message>']
    assert listener.calls == ["ready", "elements", "closed"]
    # We answer with our closing tag (RFC 6120 §4.4) and close.
    assert (await conn.read_to_eof()).endswith(b"</stream:stream>")
    upstream.close()  # after the end: harmless, no second callback
    assert listener.calls.count("closed") == 1


async def test_server_closing_stream_is_connection_failed(server: FakeServer,
                                                          listener: RecordingListener) -> None:
    upstream, conn = await open_plain(server, listener)
    conn.send("</stream:stream>")
    condition, error = await listener.wait_closed()
    assert (condition, error) == (Condition.REMOTE_CONNECTION_FAILED, None)
    upstream.close()


async def test_server_dropping_tcp_is_connection_failed_quickly(
        server: FakeServer, listener: RecordingListener) -> None:
    upstream, conn = await open_plain(server, listener)
    started = time.monotonic()
    conn.writer.transport.abort()
    condition, error = await listener.wait_closed(timeout=1.0)
    assert (condition, error) == (Condition.REMOTE_CONNECTION_FAILED, None)
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(0)  # let a possible second 'disconnected' run
    assert listener.calls.count("closed") == 1
    upstream.close()


async def test_malformed_xml_from_server_is_connection_failed(
        server: FakeServer, listener: RecordingListener) -> None:
    upstream, conn = await open_plain(server, listener)
    conn.send("<message><body>x</msg>")
    condition, _ = await listener.wait_closed()
    assert condition is Condition.REMOTE_CONNECTION_FAILED
    upstream.close()


async def test_listener_exception_does_not_kill_stream(server: FakeServer,
                                                       listener: RecordingListener) -> None:
    upstream, conn = await open_plain(server, listener)
    original = listener.upstream_elements
    fail = [True]

    def flaky(elements: Sequence[bytes]) -> None:
        if fail[0]:
            fail[0] = False
            raise RuntimeError("bug in the session")
        original(elements)

    listener.upstream_elements = flaky  # type: ignore[method-assign]
    conn.send("<presence/>")
    await conn.writer.drain()
    # Force a separate read so the second element is a new batch.
    upstream.send([ClientElement("jabber:client", "presence", b"<presence/>")])
    await conn.expect(b"<presence/>")
    conn.send("<message/>")
    elements = await listener.wait_elements(1)
    assert elements == [b'<message xmlns="jabber:client"/>']
    assert not listener.closed.done()
    upstream.close()


# -- closing --------------------------------------------------------------------------------

async def test_close_sends_stream_footer_and_is_idempotent(
        server: FakeServer, listener: RecordingListener) -> None:
    upstream, conn = await open_plain(server, listener)
    upstream.close()
    upstream.close()
    rest = await conn.read_to_eof()
    assert rest == b"</stream:stream>"
    # Our own close never reports upstream_closed, not even when the TCP loss arrives.
    await asyncio.sleep(0)
    assert not listener.closed.done()
    upstream.send([ClientElement("jabber:client", "message", b"<message/>")])  # no error


async def test_close_while_connecting(server: FakeServer, listener: RecordingListener) -> None:
    factory = XmppUpstreamFactory(plain_config(server))
    upstream = factory.open(PARAMS, listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)
    upstream.close()
    await conn.read_to_eof()
    assert not listener.ready.done() and not listener.closed.done()


# -- connection failures ------------------------------------------------------------------

async def test_connection_refused(listener: RecordingListener) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    cfg = UpstreamConfig(host="127.0.0.1", port=port, tls="none", connect_timeout=WAIT)
    XmppUpstreamFactory(cfg).open(PARAMS, listener)
    assert await listener.wait_closed() == (Condition.REMOTE_CONNECTION_FAILED, None)
    assert not listener.ready.done()


async def test_connect_timeout_when_server_never_answers(server: FakeServer,
                                                         listener: RecordingListener) -> None:
    factory = XmppUpstreamFactory(plain_config(server, connect_timeout=0.3))
    factory.open(PARAMS, listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)  # and never answer
    assert await listener.wait_closed() == (Condition.REMOTE_CONNECTION_FAILED, None)
    assert factory.stats.failed == 1
    await conn.read_to_eof()  # the connection was closed


async def test_srv_lookup_used_without_fixed_host(server: FakeServer,
                                                  listener: RecordingListener) -> None:
    looked_up: list[str] = []

    async def srv(domain: str) -> list[tuple[str, int]]:
        looked_up.append(domain)
        return [("127.0.0.1", server.port)]

    cfg = UpstreamConfig(host="", tls="none", keepalive=0, connect_timeout=WAIT)
    upstream = XmppUpstreamFactory(cfg, srv_lookup=srv).open(PARAMS, listener)
    conn = await server.accept()
    await conn.open_stream("srv", FEATURES_SASL)
    await listener.wait_ready()
    assert looked_up == ["localhost"]
    upstream.close()


async def test_route_overrides_configured_host(server: FakeServer,
                                               listener: RecordingListener) -> None:
    cfg = UpstreamConfig(host="192.0.2.1", port=1, tls="none", keepalive=0, connect_timeout=WAIT)
    params = StreamParams(to="localhost", route=("127.0.0.1", server.port))
    upstream = XmppUpstreamFactory(cfg).open(params, listener)
    conn = await server.accept()
    await conn.open_stream("r", FEATURES_SASL)
    await listener.wait_ready()
    upstream.close()


async def test_whitespace_keepalive(server: FakeServer, listener: RecordingListener) -> None:
    """RFC 6120 §4.6.1: a single space between elements once the stream is open."""
    upstream, conn = await open_plain(server, listener, keepalive=0.05)
    await conn.expect(rb"^ ")
    upstream.close()


# -- STARTTLS -------------------------------------------------------------------------------

async def starttls_requested(conn: ServerConn) -> None:
    """Server side: header and features offering STARTTLS; the client asks for it."""
    await conn.open_stream("pre-tls", FEATURES_TLS)
    await conn.expect(rb"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")


async def negotiate_tls(conn: ServerConn, cert: Cert) -> None:
    """Server side up to the post-TLS header: header, features(starttls), proceed, TLS."""
    await starttls_requested(conn)
    await conn.starttls(cert.server_context())


async def test_starttls_then_ready_with_post_tls_header(
        server: FakeServer, listener: RecordingListener, cert: Cert) -> None:
    """RFC 6120 §5.4: ready carries the post-TLS header; starttls never shown to the client."""
    upstream = XmppUpstreamFactory(tls_config(server, cert)).open(PARAMS, listener)
    conn = await server.accept()
    await negotiate_tls(conn, cert)
    header = await conn.expect(HEADER_RE)  # the client restarts the stream over TLS
    assert header_attrs(header)["to"] == "localhost"
    conn.send(SERVER_HEADER.format(id="post-tls") + FEATURES_SASL_WITH_STARTTLS)
    info, features = await listener.wait_ready()
    assert info.id == "post-tls"
    # Design §5: the TLS layer uses the small read buffer, not asyncio's 256 KiB.
    ssl_protocol = upstream._stream.transport._ssl_protocol  # type: ignore[union-attr]
    assert ssl_protocol.max_size == TLS_READ_BUFFER
    # ... and no receive buffer of its own: the per-thread shared one (docs/performance.md).
    assert ssl_protocol._ssl_buffer_view is _shared_recv_view()
    assert b"starttls" not in features and b"-PLUS" not in features
    # And stanzas flow over TLS.
    upstream.send([ClientElement("jabber:client", "presence", b"<presence/>")])
    await conn.expect(b"<presence/>")
    conn.send("<message><body>tls</body></message>")
    assert await listener.wait_elements(1) == [
        b'<message xmlns="jabber:client"><body>tls</body></message>']
    upstream.close()
    assert (await conn.read_to_eof()).endswith(b"</stream:stream>")


async def test_untrusted_certificate_fails(server: FakeServer, listener: RecordingListener,
                                           cert: Cert) -> None:
    """Verification is on by default: a self-signed cert without ca_file is refused."""
    XmppUpstreamFactory(tls_config(server, None)).open(PARAMS, listener)
    conn = await server.accept()
    await starttls_requested(conn)
    conn.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    with pytest.raises((OSError, asyncio.TimeoutError)):
        await asyncio.wait_for(conn.writer.start_tls(cert.server_context()), WAIT)
    assert await listener.wait_closed() == (Condition.REMOTE_CONNECTION_FAILED, None)
    assert not listener.ready.done()


async def test_tls_required_but_not_offered(server: FakeServer, listener: RecordingListener,
                                            cert: Cert) -> None:
    XmppUpstreamFactory(tls_config(server, cert)).open(PARAMS, listener)
    conn = await server.accept()
    await conn.open_stream("no-tls", FEATURES_SASL)
    assert await listener.wait_closed() == (Condition.REMOTE_CONNECTION_FAILED, None)
    assert not listener.ready.done()
    assert b"<auth" not in conn.received


async def test_tls_failure_element(server: FakeServer, listener: RecordingListener,
                                   cert: Cert) -> None:
    """RFC 6120 §5.4.2.2: <failure/> instead of <proceed/>."""
    XmppUpstreamFactory(tls_config(server, cert)).open(PARAMS, listener)
    conn = await server.accept()
    await conn.open_stream("pre-tls", FEATURES_TLS)
    await conn.expect(rb"<starttls ")
    conn.send("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>")
    assert await listener.wait_closed() == (Condition.REMOTE_CONNECTION_FAILED, None)


async def test_connect_timeout_covers_post_tls_features(
        server: FakeServer, listener: RecordingListener, cert: Cert) -> None:
    factory = XmppUpstreamFactory(tls_config(server, cert, connect_timeout=1.0))
    factory.open(PARAMS, listener)
    conn = await server.accept()
    await negotiate_tls(conn, cert)
    await conn.expect(HEADER_RE)  # then silence: no post-TLS header
    assert await listener.wait_closed() == (Condition.REMOTE_CONNECTION_FAILED, None)
    assert not listener.ready.done()


async def test_factory_shares_one_ssl_context(server: FakeServer, cert: Cert) -> None:
    factory = XmppUpstreamFactory(tls_config(server, cert))
    a, b = RecordingListener(), RecordingListener()
    up_a, up_b = factory.open(PARAMS, a), factory.open(PARAMS, b)
    assert up_a._stream.ssl_context is up_b._stream.ssl_context is factory.ssl_context
    up_a.close()
    up_b.close()


# -- negotiation edge cases -----------------------------------------------------------------

async def test_pre_xmpp_1_0_server_without_version(server: FakeServer,
                                                   listener: RecordingListener) -> None:
    """RFC 6120 §4.7.5: no 'version' on the server header -> no features will come."""
    upstream = XmppUpstreamFactory(plain_config(server)).open(PARAMS, listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)
    conn.send(SERVER_HEADER.format(id="old").replace("' version='1.0'", "'"))
    info, features = await listener.wait_ready()
    assert (info.id, info.version, features) == ("old", None, b"")
    upstream.close()


async def test_pre_xmpp_1_0_server_refused_when_tls_required(
        server: FakeServer, listener: RecordingListener, cert: Cert) -> None:
    XmppUpstreamFactory(tls_config(server, cert)).open(PARAMS, listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)
    conn.send(SERVER_HEADER.format(id="old").replace("' version='1.0'", "'"))
    assert await listener.wait_closed() == (Condition.REMOTE_CONNECTION_FAILED, None)


@pytest.mark.parametrize("version", ["0.9", "0.99", "0.10", "junk", ""])
async def test_server_version_below_1_0_is_pre_xmpp_1_0_at_once(
        server: FakeServer, listener: RecordingListener, version: str) -> None:
    """RFC 6120 §4.7.5: a server header with a version below 1.0 (ejabberd answers a client's
    version='0.9' with version='0.9') means no features will come: ready at once, with no
    features, instead of waiting out connect_timeout (a value that is not major.minor counts
    as missing)."""
    params = StreamParams(to="localhost", lang="en", version="0.9")
    started = time.monotonic()
    upstream = XmppUpstreamFactory(plain_config(server, connect_timeout=30.0)).open(params, listener)
    conn = await server.accept()
    assert header_attrs(await conn.expect(HEADER_RE))["version"] == "0.9"
    # The stream's version only (trailing space), not the XML declaration's.
    conn.send(SERVER_HEADER.format(id="old").replace("version='1.0' ", f"version='{version}' "))
    info, features = await listener.wait_ready()
    assert (info.id, info.version, features) == ("old", version, b"")
    assert time.monotonic() - started < WAIT
    upstream.close()


@pytest.mark.parametrize("version", ["0.9", "0.0"])
async def test_server_version_below_1_0_refused_at_once_when_tls_required(
        server: FakeServer, listener: RecordingListener, cert: Cert, version: str) -> None:
    """The same with STARTTLS required: TLS cannot be had on a pre-1.0 stream, so the
    session fails at once (remote-connection-failed), not after connect_timeout."""
    XmppUpstreamFactory(tls_config(server, cert, connect_timeout=30.0)).open(
        StreamParams(to="localhost", version="0.9"), listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)
    conn.send(SERVER_HEADER.format(id="old").replace("version='1.0' ", f"version='{version}' "))
    assert await listener.wait_closed() == (Condition.REMOTE_CONNECTION_FAILED, None)


@pytest.mark.parametrize("version", ["1.0", "1.1", "2.0", "01.0", "1.10"])
async def test_server_version_1_0_or_later_waits_for_features(
        server: FakeServer, listener: RecordingListener, version: str) -> None:
    """RFC 6120 §4.7.5: 1.0 and later (numbers compared as integers) negotiate features."""
    upstream = XmppUpstreamFactory(plain_config(server)).open(PARAMS, listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)
    conn.send(SERVER_HEADER.format(id="new").replace("version='1.0' ", f"version='{version}' "))
    conn.send(FEATURES_SASL)
    info, features = await listener.wait_ready()
    # Pre-1.0 handling would have reported ready on the header, with no features.
    assert info.version == version and b"mechanisms" in features
    upstream.close()


async def test_stream_error_before_features(server: FakeServer,
                                            listener: RecordingListener) -> None:
    """A stream error during negotiation is still remote-stream-error (host-unknown etc.)."""
    XmppUpstreamFactory(plain_config(server)).open(PARAMS, listener)
    conn = await server.accept()
    await conn.open_stream("e", "<stream:error><host-unknown "
                                "xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    condition, error = await listener.wait_closed()
    assert condition is Condition.REMOTE_STREAM_ERROR
    assert error is not None and b"host-unknown" in error
    assert not listener.ready.done()


async def test_non_xmpp_server(server: FakeServer, listener: RecordingListener) -> None:
    XmppUpstreamFactory(plain_config(server)).open(PARAMS, listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)
    conn.send("<html><body>not xmpp</body></html>")
    assert await listener.wait_closed() == (Condition.REMOTE_CONNECTION_FAILED, None)


# -- hooks and hygiene ------------------------------------------------------------------------

async def test_pause_and_resume_reading(server: FakeServer, listener: RecordingListener) -> None:
    upstream, conn = await open_plain(server, listener)
    transport = upstream._stream.transport
    assert transport is not None and transport.is_reading()
    upstream.pause_reading()
    assert not transport.is_reading()
    conn.send("<message/>")
    upstream.resume_reading()
    assert transport.is_reading()
    assert await listener.wait_elements(1) == [b'<message xmlns="jabber:client"/>']
    upstream.close()


async def test_listener_errors_are_counted(server: FakeServer) -> None:
    class Broken(RecordingListener):
        def upstream_ready(self, info: StreamInfo, features: bytes) -> None:
            super().upstream_ready(info, features)
            raise RuntimeError("session bug")

    broken = Broken()
    factory = XmppUpstreamFactory(plain_config(server))
    upstream = factory.open(PARAMS, broken)
    conn = await server.accept()
    await conn.open_stream("x", FEATURES_SASL)
    await broken.wait_ready()
    upstream.send([ClientElement("jabber:client", "presence", b"<presence/>")])
    await conn.expect(b"<presence/>")  # the stream is open although the listener raised
    assert factory.stats.listener_errors == 1
    upstream.close()


def test_slixmpp_logger_kept_at_info_or_above() -> None:
    """Design §5/§9: slixmpp's DEBUG output contains SASL payloads (passwords)."""
    import logging

    import xmpp_bridge.stream  # noqa: F401  (pins the level on import)

    assert logging.getLogger("slixmpp").getEffectiveLevel() >= logging.INFO
