"""Helpers for the upstream bridge tests: a scripted fake XMPP server and a recording listener.

The fake server is driven step by step from each test (expect this, send that), so tests
state the protocol exchange they check. Nothing sleeps: every wait is on a future or a
stream read with a timeout.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bosh.errors import Condition
from bosh.ports import StreamInfo

WAIT = 5.0  # upper bound for anything that should happen "at once"

NS_STREAM = "http://etherx.jabber.org/streams"
SERVER_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams' from='localhost' "
                 "id='{id}' version='1.0' xml:lang='en'>")
FEATURES_TLS = ("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
                "<required/></starttls></stream:features>")
FEATURES_SASL = ("<stream:features>"
                 "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                 "<mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism>"
                 "<mechanism>PLAIN</mechanism></mechanisms>"
                 "<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>"
                 "<channel-binding type='tls-exporter'/></sasl-channel-binding>"
                 "<compression xmlns='http://jabber.org/features/compress'>"
                 "<method>zlib</method></compression>"
                 "</stream:features>")
FEATURES_SASL_WITH_STARTTLS = FEATURES_SASL.replace(
    "<stream:features>",
    "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
HEADER_RE = rb"<stream:stream [^>]*>"


class ServerConn:
    """The server side of one accepted connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""
        self.received = b""  # everything ever read, for "never sent" assertions

    async def _fill(self) -> bool:
        chunk = await asyncio.wait_for(self.reader.read(65536), WAIT)
        if not chunk:
            return False
        self.buffer += chunk
        self.received += chunk
        return True

    async def expect(self, pattern: bytes) -> re.Match[bytes]:
        """Wait until the unread data matches ``pattern``; consume through the match."""
        regex = re.compile(pattern, re.S)
        while True:
            match = regex.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                return match
            if not await self._fill():
                raise AssertionError(f"EOF while waiting for {pattern!r}; got {self.buffer!r}")

    async def read_to_eof(self) -> bytes:
        """Everything until the client closes the connection."""
        while await self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def send(self, data: str | bytes) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        """Server side of RFC 6120 §5.4.3.3: <proceed/> then the TLS handshake."""
        self.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.writer.drain()
        await asyncio.wait_for(self.writer.start_tls(ctx), WAIT)
        self.buffer = b""

    async def open_stream(self, stream_id: str, features: str) -> re.Match[bytes]:
        """Read the client's header, answer with ours and the features."""
        header = await self.expect(HEADER_RE)
        self.send(SERVER_HEADER.format(id=stream_id) + features)
        return header

    def close(self) -> None:
        self.writer.close()


class FakeServer:
    """A TCP listener on 127.0.0.1 whose accepted connections are handed to the test."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[ServerConn] = asyncio.Queue()
        self.conns: list[ServerConn] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = ServerConn(reader, writer)
            self.conns.append(conn)
            await self.accepted.put(conn)

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def accept(self) -> ServerConn:
        return await asyncio.wait_for(self.accepted.get(), WAIT)

    async def stop(self) -> None:
        for conn in self.conns:
            conn.writer.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class RecordingListener:
    """An ``UpstreamListener`` that records calls and lets tests await them."""

    ready: asyncio.Future[tuple[StreamInfo, bytes]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    closed: asyncio.Future[tuple[Condition, bytes | None]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    batches: list[list[bytes]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    headers: list[StreamInfo] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def upstream_ready(self, info: StreamInfo, features: bytes) -> None:
        self.calls.append("ready")
        assert not self.ready.done(), "upstream_ready called twice"
        self.ready.set_result((info, features))

    def upstream_elements(self, elements: Sequence[bytes]) -> None:
        self.calls.append("elements")
        assert self.ready.done(), "elements before ready"
        self.batches.append(list(elements))
        self._changed.set()

    def upstream_header(self, info: StreamInfo) -> None:
        self.calls.append("header")
        self.headers.append(info)

    def upstream_closed(self, stream_error: bytes | None) -> None:
        self.calls.append("closed")
        assert not self.closed.done(), "upstream_closed called twice"
        # Recorded as the BOSH condition it becomes (bosh.driver), which the tests name.
        condition = (Condition.REMOTE_STREAM_ERROR if stream_error is not None
                     else Condition.REMOTE_CONNECTION_FAILED)
        self.closed.set_result((condition, stream_error))

    @property
    def elements(self) -> list[bytes]:
        return [e for batch in self.batches for e in batch]

    async def wait_ready(self) -> tuple[StreamInfo, bytes]:
        return await asyncio.wait_for(asyncio.shield(self.ready), WAIT)

    async def wait_closed(self, timeout: float = WAIT) -> tuple[Condition, bytes | None]:
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout)

    async def wait_elements(self, count: int) -> list[bytes]:
        async def _wait() -> None:
            while len(self.elements) < count:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(_wait(), WAIT)
        return self.elements


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx
