"""The PROXY protocol header: the client's address, sent first on an upstream connection.

HAProxy's "The PROXY protocol", versions 1 (text, §2.1) and 2 (binary, §2.2): its
doc/proxy-protocol.txt (Debian's haproxy: /usr/share/doc/haproxy/proxy-protocol.txt.gz).
Behind a connection manager an XMPP server sees every user coming from the manager's
address; with ``[upstream] proxy_protocol = "v1"`` or ``"v2"`` each upstream TCP connection
starts with this header, before the stream header, so the server's per-address rules, logs
and abuse tools see the client (ejabberd: ``use_proxy_protocol: true`` on the c2s listener;
Prosody: mod_net_proxy).

What is sent, per connection:

* source: the client's address as bosh-cm believes it (the HTTP peer, or X-Forwarded-For
  from a trusted proxy), port 0: behind a proxy the client's port is not known;
* destination: the server's address and port on this connection (what the client would
  have connected to without us);
* IPv4 and IPv6 mixed: the IPv4 one is written IPv4-mapped (``::ffff:a.b.c.d``), as HAProxy
  does, since both ends of one header share a family (§2.1, §2.2);
* no usable client address: v1 ``PROXY UNKNOWN``, v2 the LOCAL command; the server then
  uses the connection's own addresses (§2.1, §2.2).
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = ["PROXY_PROTOCOL_VERSIONS", "V2_SIGNATURE", "proxy_header"]

#: ``[upstream] proxy_protocol`` values; "off" sends nothing.
PROXY_PROTOCOL_VERSIONS = ("off", "v1", "v2")

#: §2.2: the 12-byte signature that starts every v2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_V2_TCP4 = 0x11   # AF_INET, STREAM
_V2_TCP6 = 0x21   # AF_INET6, STREAM

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(address: str | None) -> _Address | None:
    if not address:
        return None
    try:
        # An IPv6 zone ("fe80::1%eth0") has no place in either header format.
        return ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None


def _same_family(a: _Address, b: _Address) -> tuple[_Address, _Address]:
    if a.version == b.version:
        return a, b

    def mapped(x: _Address) -> _Address:
        return ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x

    return mapped(a), mapped(b)


def _v1_text(address: _Address) -> str:
    # §2.1: IPv6 as hexadecimal groups; Python writes an IPv4-mapped one with a dotted
    # quad ("::ffff:127.0.0.1"), so write that one in full.
    text = str(address)
    return address.exploded if "." in text and address.version == 6 else text


def proxy_header(version: str, client_ip: str | None, server: tuple[str, int] | None) -> bytes:
    """The header for ``version`` ("v1" or "v2"; "off" gives ``b""``).

    ``client_ip`` is the client's address (None or not an IP address: unknown), ``server``
    the (host, port) this connection goes to (its ``peername``).
    """
    if version == "off":
        return b""
    if version not in PROXY_PROTOCOL_VERSIONS:
        raise ValueError(f"unknown PROXY protocol version {version!r}")
    src = _parse(client_ip)
    dst = _parse(server[0]) if server is not None else None
    if src is None or dst is None or server is None:
        if version == "v1":
            return b"PROXY UNKNOWN\r\n"  # §2.1: the receiver uses the real addresses
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0x00, 0)  # §2.2: LOCAL, UNSPEC
    src, dst = _same_family(src, dst)
    src_port, dst_port = 0, int(server[1])
    if version == "v1":
        family = "TCP4" if src.version == 4 else "TCP6"
        return (f"PROXY {family} {_v1_text(src)} {_v1_text(dst)} {src_port} {dst_port}\r\n"
                .encode("ascii"))
    body = src.packed + dst.packed + struct.pack("!HH", src_port, dst_port)
    family_byte = _V2_TCP4 if src.version == 4 else _V2_TCP6
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family_byte, len(body)) + body
