"""A plain XMPP-over-TCP test client (slixmpp.ClientXMPP) for the "other side" of a chat.

    peer = await XmppPeer.connect_to(prosody, "bob", "pw", resource="tcp")
    peer.send_chat("alice@localhost", "hello")
    msg = await peer.next_message(timeout=10)     # a slixmpp Message stanza
    await peer.close()

STARTTLS is real; the test server's (Prosody or ejabberd) self-signed certificate is the
only trust anchor.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import slixmpp

from scripts.lib.upstreams import XmppServer

__all__ = ["XmppPeer"]

# slixmpp's DEBUG output contains SASL payloads: keep it quiet in test logs.
logging.getLogger("slixmpp").setLevel(logging.WARNING)


class XmppPeer(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str, cafile: str) -> None:
        super().__init__(jid, password)
        self.ssl_context = ssl.create_default_context(cafile=cafile)
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.presences: asyncio.Queue[Any] = asyncio.Queue()
        self.stream_errors: asyncio.Queue[Any] = asyncio.Queue()
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gone: asyncio.Event = asyncio.Event()
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_all_auth", self._on_fail)
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))
        self.add_event_handler("presence", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("stream_error", lambda e: self.stream_errors.put_nowait(e))
        self.add_event_handler("disconnected", lambda *_: self.gone.set())

    def _on_start(self, _event: Any) -> None:
        self.send_presence()
        if not self.started.done():
            self.started.set_result(None)

    def _on_fail(self, _event: Any) -> None:
        if not self.started.done():
            self.started.set_exception(RuntimeError(f"authentication failed for {self.boundjid.bare}"))

    @classmethod
    async def connect_to(cls, prosody: XmppServer, user: str, password: str,
                         resource: str = "tcp", timeout: float = 10) -> "XmppPeer":
        """Log in over TCP (STARTTLS + SASL + bind) and send initial presence."""
        peer = cls(f"{user}@{prosody.domain}/{resource}", password, str(prosody.cert_path))
        peer.connect("127.0.0.1", prosody.c2s_port)
        try:
            await asyncio.wait_for(asyncio.shield(peer.started), timeout)
        except BaseException:
            peer.abort()
            raise
        return peer

    def send_chat(self, to: str, body: str) -> None:
        self.send_message(mto=to, mbody=body, mtype="chat")

    async def next_message(self, timeout: float = 10, body: str | None = None) -> Any:
        """The next incoming message with a body (optionally with exactly this body)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await asyncio.wait_for(self.messages.get(), max(0.0, deadline - loop.time()))
            if msg["body"] and (body is None or msg["body"] == body):
                return msg

    async def close(self, timeout: float = 5) -> None:
        if self.gone.is_set():
            return
        self.disconnect(wait=1)
        try:
            await asyncio.wait_for(self.gone.wait(), timeout)
        except asyncio.TimeoutError:
            self.abort()
