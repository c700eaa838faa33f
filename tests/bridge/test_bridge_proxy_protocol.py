"""[upstream] proxy_protocol: HAProxy's PROXY protocol header (doc/proxy-protocol.txt §2.1 v1
text, §2.2 v2 binary) with the client's address, first on each upstream TCP connection."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from bosh.config import UpstreamConfig
from bosh.ports import StreamParams
from xmpp_bridge.proxy_protocol import V2_SIGNATURE, proxy_header
from xmpp_bridge.upstream import XmppUpstreamFactory

from bridge_fakes import FEATURES_SASL, FEATURES_TLS, HEADER_RE, WAIT, Cert, FakeServer, RecordingListener

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


# -- the bytes ------------------------------------------------------------------------------

@pytest.mark.parametrize("client,server,expected", [
    ("127.0.0.2", ("127.0.0.1", 5222), b"PROXY TCP4 127.0.0.2 127.0.0.1 0 5222\r\n"),
    ("203.0.113.7", ("192.0.2.1", 65535), b"PROXY TCP4 203.0.113.7 192.0.2.1 0 65535\r\n"),
    ("2001:db8::7", ("2001:db8::1", 5222), b"PROXY TCP6 2001:db8::7 2001:db8::1 0 5222\r\n"),
    ("::1", ("::1", 5222), b"PROXY TCP6 ::1 ::1 0 5222\r\n"),
    # one family per header: the IPv4 end is written IPv4-mapped, in hexadecimal groups
    ("2001:db8::7", ("127.0.0.1", 5222), b"PROXY TCP6 2001:db8::7 ::ffff:7f00:1 0 5222\r\n"),
    ("10.0.0.1", ("::1", 5222), b"PROXY TCP6 ::ffff:a00:1 ::1 0 5222\r\n"),
    ("fe80::1%eth0", ("fe80::2%eth0", 5222), b"PROXY TCP6 fe80::1 fe80::2 0 5222\r\n"),
])
def test_v1_header_is_one_text_line(client: str, server: tuple[str, int], expected: bytes) -> None:
    """§2.1: "PROXY", TCP4/TCP6, source and destination address, source port (0: behind a
    proxy bosh-cm does not know the client's port) and destination port, CRLF; at most 107
    bytes."""
    header = proxy_header("v1", client, server)
    assert header == expected
    assert len(header) <= 107 and header.count(b"\r\n") == 1 and header.endswith(b"\r\n")


def test_v1_mapped_address_has_no_dotted_quad() -> None:
    """§2.1: IPv6 addresses are hexadecimal groups; some Pythons print IPv4-mapped ones
    with a dotted quad, which a strict receiver refuses."""
    header = proxy_header("v1", "::ffff:192.0.2.5", ("2001:db8::1", 5222))
    src = header.split(b" ")[2].decode()
    assert "." not in src and ipaddress.IPv6Address(src) == ipaddress.IPv6Address("::ffff:192.0.2.5")


def _parse_v2(header: bytes) -> tuple[int, int, bytes]:
    assert header[:12] == SIG == V2_SIGNATURE
    ver_cmd, family, length = struct.unpack("!BBH", header[12:16])
    assert len(header) == 16 + length  # §2.2: the length covers exactly what follows
    return ver_cmd, family, header[16:]


def test_v2_ipv4() -> None:
    """§2.2: signature, 0x21 (version 2, PROXY), 0x11 (TCP over IPv4), length 12, then
    source and destination address and port in network byte order."""
    ver_cmd, family, body = _parse_v2(proxy_header("v2", "127.0.0.2", ("127.0.0.1", 5222)))
    assert (ver_cmd, family) == (0x21, 0x11)
    assert body == bytes([127, 0, 0, 2, 127, 0, 0, 1]) + struct.pack("!HH", 0, 5222)


def test_v2_ipv6() -> None:
    """§2.2: 0x21 (TCP over IPv6), length 36."""
    ver_cmd, family, body = _parse_v2(proxy_header("v2", "2001:db8::7", ("2001:db8::1", 443)))
    assert (ver_cmd, family, len(body)) == (0x21, 0x21, 36)
    assert body[:16] == ipaddress.IPv6Address("2001:db8::7").packed
    assert body[16:32] == ipaddress.IPv6Address("2001:db8::1").packed
    assert body[32:] == struct.pack("!HH", 0, 443)


def test_v2_mixed_families_are_ipv6_with_the_ipv4_end_mapped() -> None:
    ver_cmd, family, body = _parse_v2(proxy_header("v2", "2001:db8::7", ("192.0.2.1", 5222)))
    assert family == 0x21
    assert body[16:32] == ipaddress.IPv6Address("::ffff:192.0.2.1").packed


@pytest.mark.parametrize("client", [None, "", "-", "not-an-address", "unix:/run/x.sock"])
def test_unknown_client_address(client: str | None) -> None:
    """No usable address: v1 "PROXY UNKNOWN" (§2.1), v2 the LOCAL command with no address
    (§2.2); either way the server uses the connection's own addresses."""
    assert proxy_header("v1", client, ("127.0.0.1", 5222)) == b"PROXY UNKNOWN\r\n"
    assert proxy_header("v2", client, ("127.0.0.1", 5222)) == SIG + b"\x20\x00\x00\x00"


def test_off_sends_nothing_and_unknown_versions_fail() -> None:
    assert proxy_header("off", "127.0.0.2", ("127.0.0.1", 5222)) == b""
    with pytest.raises(ValueError):
        proxy_header("v3", "127.0.0.2", ("127.0.0.1", 5222))


# -- on the wire ----------------------------------------------------------------------------

def _config(server: FakeServer, **kw: object) -> UpstreamConfig:
    args: dict[str, object] = dict(host="127.0.0.1", port=server.port, tls="none",
                                   keepalive=0.0, connect_timeout=WAIT)
    args.update(kw)
    return UpstreamConfig(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_header_is_the_first_thing_on_the_connection(
        server: FakeServer, listener: RecordingListener, version: str) -> None:
    """The header comes before our stream header, once per TCP connection, with the
    client's address from StreamParams and the server's address and port."""
    params = StreamParams(to="localhost", version="1.0", client_ip="127.0.0.2")
    upstream = XmppUpstreamFactory(_config(server, proxy_protocol=version)).open(params, listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)
    expected = proxy_header(version, "127.0.0.2", ("127.0.0.1", server.port))
    assert conn.received.startswith(expected + b"<?xml version='1.0'?><stream:stream "), \
        conn.received[:120]
    conn.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              f"xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='p1' "
              f"version='1.0'>{FEATURES_SASL}")
    await listener.wait_ready()
    upstream.restart(params)  # a stream restart is no new connection: no second header
    await conn.expect(HEADER_RE)
    assert conn.received.count(expected) == 1
    upstream.close()


async def test_header_precedes_starttls_and_is_not_repeated_after_it(
        server: FakeServer, listener: RecordingListener, cert: Cert) -> None:
    """STARTTLS (RFC 6120 §5.4) restarts the stream on the same connection: the header is
    sent once, in plaintext, at the very start."""
    params = StreamParams(to="localhost", version="1.0", client_ip="2001:db8::7")
    config = _config(server, proxy_protocol="v1", tls="required", ca_file=str(cert.cert))
    upstream = XmppUpstreamFactory(config).open(params, listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)
    expected = f"PROXY TCP6 2001:db8::7 ::ffff:7f00:1 0 {server.port}\r\n".encode()
    assert conn.received.startswith(expected)
    conn.send(f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              f"xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='t1' "
              f"version='1.0'>{FEATURES_TLS}")
    await conn.expect(rb"<starttls [^>]*/>")
    await conn.starttls(cert.server_context())
    await conn.expect(HEADER_RE)  # the post-TLS stream header
    assert conn.received.count(b"PROXY") == 1
    upstream.close()


async def test_off_by_default(server: FakeServer, listener: RecordingListener) -> None:
    assert UpstreamConfig().proxy_protocol == "off"
    params = StreamParams(to="localhost", version="1.0", client_ip="127.0.0.2")
    upstream = XmppUpstreamFactory(_config(server)).open(params, listener)
    conn = await server.accept()
    await conn.expect(HEADER_RE)
    assert conn.received.startswith(b"<?xml") and b"PROXY" not in conn.received
    upstream.close()


def test_header_is_sent_on_uvloop_too() -> None:
    """[server] event_loop = "uvloop": its transports are no asyncio.WriteTransport
    subclasses; the header must be written all the same."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> bytes:
        server = FakeServer()
        await server.start()
        try:
            listener = RecordingListener()
            params = StreamParams(to="localhost", version="1.0", client_ip="127.0.0.2")
            upstream = XmppUpstreamFactory(_config(server, proxy_protocol="v2")).open(params, listener)
            conn = await server.accept()
            await conn.expect(HEADER_RE)
            upstream.close()
            return conn.received
        finally:
            await server.stop()

    received = uvloop.run(scenario())
    assert received.startswith(V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([127, 0, 0, 2]))
