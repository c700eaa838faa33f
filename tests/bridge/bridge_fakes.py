"""Helpers for the upstream bridge tests: the fake XMPP server, scripted, and a recording listener.

The fake server is the one of the whole suite (:mod:`tests.support.fake_xmpp`), used here
scripted: each accepted connection is driven step by step from the test (expect this, send
that), so tests state the protocol exchange they check. ``FakeServer`` and ``ServerConn`` are
its names in these tests. Nothing sleeps: every wait is on a future or a stream read with a
timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bosh.errors import Condition
from bosh.ports import StreamInfo
from tests.support.fake_xmpp import (FEATURES_SASL, FEATURES_SASL_WITH_STARTTLS, FEATURES_TLS,
                                     HEADER_RE, SERVER_HEADER, WAIT)
from tests.support.fake_xmpp import FakeXmppConn as ServerConn
from tests.support.fake_xmpp import FakeXmppServer as FakeServer

__all__ = ["WAIT", "SERVER_HEADER", "HEADER_RE", "FEATURES_TLS", "FEATURES_SASL",
           "FEATURES_SASL_WITH_STARTTLS", "FakeServer", "ServerConn", "RecordingListener", "Cert"]


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
