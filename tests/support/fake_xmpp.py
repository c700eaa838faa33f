"""The one fake XMPP server of the tests: a plaintext listener on 127.0.0.1.

Two ways to use it, per server:

* scripted (``FakeXmppServer()``): every accepted connection is handed to the test
  (:meth:`FakeXmppServer.accept`), which drives it step by step with
  :meth:`FakeXmppConn.expect` / :meth:`~FakeXmppConn.send` /
  :meth:`~FakeXmppConn.open_stream` / :meth:`~FakeXmppConn.starttls`, so the test states
  the protocol exchange it checks (tests/bridge);
* self-answering (``FakeXmppServer(features=...)``): the server answers every stream header
  of every connection with its own header and ``features``, and nothing else: no SASL
  answer, no stanza (a bosh-cm session is held, a prebind login never completes).

Either way every connection records what the client wrote (:attr:`FakeXmppConn.received`)
and sets events the tests wait on: :attr:`FakeXmppConn.footer` (``</stream:stream>`` seen),
:attr:`FakeXmppConn.gone` (the client closed), :attr:`FakeXmppServer.auth_seen` (a SASL
``<auth/>`` on any connection). With :attr:`FakeXmppServer.refuse` set, new connections are
closed at once, unrecorded.

Nothing sleeps: every wait is a stream read or an event with a deadline.
"""

from __future__ import annotations

import asyncio
import re
import ssl

__all__ = ["WAIT", "SERVER_HEADER", "HEADER_RE", "FEATURES_NONE", "FEATURES_PLAIN",
           "FEATURES_TLS", "FEATURES_SASL", "FEATURES_SASL_WITH_STARTTLS",
           "FakeXmppConn", "FakeXmppServer"]

WAIT = 5.0  # upper bound for anything that should happen "at once"

SERVER_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams' from='localhost' "
                 "id='{id}' version='1.0' xml:lang='en'>")
HEADER_RE = rb"<stream:stream [^>]*>"

FEATURES_NONE = "<stream:features/>"
FEATURES_PLAIN = ("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                  "<mechanism>PLAIN</mechanism></mechanisms></stream:features>")
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

_HEADER = re.compile(HEADER_RE)


class FakeXmppConn:
    """The server side of one accepted connection."""

    def __init__(self, server: "FakeXmppServer", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.buffer = b""    # read, not yet consumed by expect()
        self.received = b""  # everything ever read, for "sent" / "never sent" assertions
        self.footer = asyncio.Event()  # the client sent </stream:stream>
        self.gone = asyncio.Event()    # the client closed the connection (or it broke)

    async def _fill(self, timeout: float | None = WAIT) -> bool:
        """Read once; False at EOF. Records the bytes and sets the events."""
        try:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
        except ConnectionError:
            chunk = b""
        if not chunk:
            self.gone.set()
            return False
        self.buffer += chunk
        self.received += chunk
        if b"</stream:stream>" in self.received:
            self.footer.set()
        if b"<auth" in self.received:
            self.server.auth_seen.set()
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

    async def answer(self, stream_id: str, features: str) -> None:
        """Self-answering: our header and ``features`` for every header the client sends
        (the first and each restart), until the client goes; nothing else is answered."""
        while True:
            while self.buffer and _HEADER.search(self.buffer):
                await self.open_stream(stream_id, features)
            if not await self._fill(timeout=None):
                return

    def close(self) -> None:
        self.writer.close()


class FakeXmppServer:
    """A TCP listener on 127.0.0.1: scripted (``features=None``: connections are handed to
    the test through :meth:`accept`) or self-answering with ``features`` (see the module)."""

    def __init__(self, features: str | None = None) -> None:
        self.features = features
        self.refuse = False            # close new connections at once (upstream unreachable)
        self.auth_seen = asyncio.Event()
        self.accepted: asyncio.Queue[FakeXmppConn] = asyncio.Queue()
        self.conns: list[FakeXmppConn] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._answering: set[asyncio.Task[None]] = set()

    async def start(self) -> "FakeXmppServer":
        self.server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        conn = FakeXmppConn(self, reader, writer)
        self.conns.append(conn)
        await self.accepted.put(conn)
        if self.features is None:
            return  # scripted: the test has it
        task = asyncio.current_task()
        assert task is not None
        self._answering.add(task)
        try:
            await conn.answer(f"fake-{len(self.conns)}", self.features)
        finally:
            self._answering.discard(task)
            writer.close()

    async def accept(self) -> FakeXmppConn:
        """The next accepted connection (within :data:`WAIT`)."""
        return await asyncio.wait_for(self.accepted.get(), WAIT)

    async def stop(self) -> None:
        """Drop every connection (no footer) and stop listening."""
        for conn in self.conns:
            conn.writer.transport.abort()
        if self._answering:
            await asyncio.wait(list(self._answering), timeout=WAIT)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
