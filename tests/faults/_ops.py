"""Helpers for the operations tests (limits, faults, signals, fuzz): fakes at the edges only.

* the fake upstream is the one of the driver tests: ``FakeUpstreamFactory(auto=True)`` in
  ``tests/driver/_fakes.py`` (ready on the next loop turn, echoes ``<message/>``, counts
  the streams still open).
* :func:`serve_app` - the real aiohttp app on a real loopback port (raw-socket tests).
* :func:`raw_http` - one hand-written HTTP/1.1 exchange on a fresh TCP connection.
* the fake XMPP server (one for the whole suite) is :class:`tests.support.fake_xmpp.FakeXmppServer`.

Imported as ``tests.faults._ops``. Nothing here sleeps: every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from aiohttp import web

from bosh.config import HttpConfig
from bosh.web import make_runner
from bosh.ports import NS_HTTPBIND, NS_XBOSH
from tests.support.prosody import free_port  # the one copy (scripts/lib/prosody.py)
from tests.support.rawhttp import read_head

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
        status, headers = await read_head(reader, "a response")
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
