"""Helpers for the operations tests (limits, faults, signals, fuzz): fakes at the edges only.

* the fake upstream is the one of the driver tests: ``FakeUpstreamFactory(auto=True)`` in
  ``tests/driver/_fakes.py`` (ready on the next loop turn, echoes ``<message/>``, counts
  the streams still open).
* :func:`serve_app` - the real aiohttp app on a real loopback port (raw-socket tests).
* :func:`raw_http` - one hand-written HTTP/1.1 exchange on a fresh TCP connection.
* :class:`FakeXmppServer` - a plaintext XMPP server that records what bosh-cm writes
  (e.g. the ``</stream:stream>`` sent on SIGTERM).

Imported as ``tests.faults._ops``. Nothing here sleeps: every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from aiohttp import web

from bosh.config import HttpConfig
from bosh.web import make_runner
from bosh.ports import NS_HTTPBIND, NS_XBOSH
from tests.support.prosody import free_port  # the one copy (scripts/lib/prosody.py)

NS = NS_HTTPBIND
XB = NS_XBOSH
DEADLINE = 5.0



@dataclass
class Served:
    runner: web.AppRunner
    port: int
    path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_app(app: web.Application, cfg: HttpConfig) -> Served:
    """The app on a real 127.0.0.1 port, with the runner ``bosh.__main__`` uses."""
    runner = make_runner(app, 2.0)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return Served(runner, port, cfg.path)


def create_body(rid: int = 1000, to: str = "example.com", **extra: str) -> bytes:
    attrs = {"rid": str(rid), "to": to, "xml:lang": "en", "ver": "1.11", "wait": "5",
             "hold": "1", "xmpp:version": "1.0", **extra}
    return (f"<body xmlns='{NS}' xmlns:xmpp='{XB}' "
            + " ".join(f"{k}='{v}'" for k, v in attrs.items()) + "/>").encode()


def req_body(sid: str, rid: int, payload: str = "", **attrs: str) -> bytes:
    extra = "".join(f" {k.replace('xmpp_', 'xmpp:')}='{v}'" for k, v in attrs.items())
    head = f"<body xmlns='{NS}' xmlns:xmpp='{XB}' sid='{sid}' rid='{rid}'{extra}"
    return (head + (f">{payload}</body>" if payload else "/>")).encode()


def attr(body: bytes, name: str) -> str | None:
    m = re.search(rb"\s" + re.escape(name.encode()) + rb"='([^']*)'", body)
    return m.group(1).decode() if m else None


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = False  # the server closed the connection after answering


def http_request(path: str, body: bytes, headers: dict[str, str] | None = None,
                 host: str = "127.0.0.1") -> bytes:
    hdrs = {"Host": host, "Content-Type": "text/xml; charset=utf-8",
            "Content-Length": str(len(body)), **(headers or {})}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader, timeout: float = DEADLINE) -> HttpResult:
    async def go() -> HttpResult:
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("connection closed before a response")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        data = await reader.readexactly(n)
        return HttpResult(status, headers, data)
    return await asyncio.wait_for(go(), timeout)


async def raw_http(port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
                   timeout: float = DEADLINE) -> HttpResult:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(http_request(path, body, headers))
        await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()


async def eof_within(reader: asyncio.StreamReader, timeout: float = DEADLINE) -> bool:
    """True once the peer closes the connection (anything it still sends is discarded)."""
    async def go() -> bool:
        while await reader.read(65536):
            pass
        return True
    try:
        return await asyncio.wait_for(go(), timeout)
    except (asyncio.TimeoutError, ConnectionError):
        return False


# --------------------------------------------------------------------------- fake XMPP server

STREAM_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' id='fake-%d' "
                 b"from='localhost' version='1.0'>")


@dataclass
class FakeConn:
    data: bytearray = field(default_factory=bytearray)
    footer: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None


class FakeXmppServer:
    """A plaintext XMPP 'server': answers every stream header with features, echoes
    ``<message/>`` elements verbatim and records all bytes per connection."""

    def __init__(self) -> None:
        self.conns: list[FakeConn] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.connected = asyncio.Event()

    async def start(self) -> "FakeXmppServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FakeConn(writer=writer)
        self.conns.append(conn)
        self.connected.set()
        headers = 0
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                conn.data += chunk
                text = bytes(conn.data)
                n = text.count(b"<stream:stream ")
                while headers < n:
                    headers += 1
                    writer.write(STREAM_HEADER % len(self.conns) + b"<stream:features/>")
                if b"</stream:stream>" in text:
                    conn.footer.set()
        except ConnectionError:
            pass
        finally:
            conn.gone.set()
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for c in self.conns:
                if c.writer is not None:
                    c.writer.close()
