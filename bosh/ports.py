"""Interfaces between the client transports (BOSH, WebSocket) and the upstream (XMPP) side.

``bosh`` owns these types; ``xmpp_bridge`` implements them. Nothing here does I/O, and
nothing here belongs to one transport: the same upstream serves a BOSH session and a
WebSocket session alike.

Payloads cross the boundary already serialized:

* client -> server: :class:`ClientElement` -- one top-level element from the client (a child
  of a BOSH ``<body/>``, or one WebSocket message), namespace-correct (stanzas that arrived
  without an xmlns are already remapped to ``jabber:client``, XEP-0206 §2 note), serialized
  with its own namespace declarations so it can be written onto the upstream stream as is.
* server -> client: ``bytes`` -- one top-level element of the upstream stream, standalone:
  an explicit ``xmlns`` on the top element (``jabber:client`` for stanzas) and, for elements
  in the streams namespace, the ``stream:`` prefix declared on the element itself
  (``<stream:features xmlns:stream=...>``). So it can be one WebSocket message as is
  (RFC 7395 §3.3.3) or sit inside a BOSH ``<body/>`` (XEP-0206 §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_XML = "http://www.w3.org/XML/1998/namespace"


@dataclass(frozen=True, slots=True)
class ClientElement:
    """One payload element sent by the client, ready to go upstream."""

    namespace: str
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamParams:
    """What the upstream stream header is built from (XEP-0206 §3, §5)."""

    to: str
    lang: str | None = None
    from_: str | None = None
    version: str = "1.0"
    route: tuple[str, int] | None = None  # (host, port) from an allow-listed 'route'
    #: The client's address as bosh-cm believes it (the peer, or X-Forwarded-For from a
    #: trusted proxy), for the upstream's PROXY protocol header; the driver fills it in
    #: when it opens the upstream (the cores do not know addresses). None: unknown.
    client_ip: str | None = None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the server's (post-TLS) stream header told us (XEP-0206 §4)."""

    from_: str | None
    id: str | None
    version: str | None
    lang: str | None = None  # xml:lang of the server's header (RFC 6120 §4.7.4)


class Timer(Protocol):
    def cancel(self) -> None:
        ...


class Clock(Protocol):
    """Where the drivers read the time and set their one timer per session. The running
    asyncio loop is one (``time``, ``call_at``); tests turn a manual one by hand."""

    def time(self) -> float:
        ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        ...


class UpstreamListener(Protocol):
    """Callbacks from an upstream stream into the session that owns it.

    Calls happen on the event loop thread, never re-entrantly from inside an
    ``Upstream`` method.
    """

    def upstream_ready(self, info: StreamInfo, features: bytes) -> None:
        """The stream is open (after STARTTLS when that is used) and its features arrived."""

    def upstream_header(self, info: StreamInfo) -> None:
        """The server's new stream header after a restart (RFC 6120 §4.3.3); its features
        follow through :meth:`upstream_elements`. (A WebSocket session answers the client's
        new ``<open/>`` with it, RFC 7395 §3.7.)"""

    def upstream_elements(self, elements: Sequence[bytes]) -> None:
        """Top-level elements received, in order (after a restart: the new features too)."""

    def upstream_writable(self, writable: bool) -> None:
        """Backpressure toward the client: False when the server reads slower than the
        client sends (what we wrote is piling up), True once it caught up. The session
        stops taking client data in between."""

    def upstream_closed(self, stream_error: bytes | None) -> None:
        """The stream ended. ``stream_error`` is the serialized ``<stream:error/>`` if the
        server sent one; None means the connection failed or was lost, TLS failed, or the
        server closed its stream. Called at most once; each transport maps it to its own
        condition (BOSH: remote-stream-error / remote-connection-failed, XEP-0124 §17.2).
        """


class Upstream(Protocol):
    """One XMPP stream to the server, owned by one client session (any transport)."""

    def send(self, elements: Sequence[ClientElement]) -> None:
        """Write client elements upstream (filtered: see xmpp_bridge.xml)."""

    def restart(self, params: StreamParams) -> None:
        """XEP-0206 §5: reset the parser and send a fresh stream header on the same TCP stream."""

    def close(self, end_stream: bool = True) -> None:
        """Close the connection. Idempotent; does not call ``upstream_closed``.

        ``end_stream``: send ``</stream:stream>`` first (if open). False drops the TCP
        connection without it, so that a server that granted XEP-0198 resumption keeps the
        session for the client to resume (a cleanly closed stream is not resumable,
        XEP-0198 §5).
        """

    def finish(self) -> None:
        """Send ``</stream:stream>`` and go on reading until the server's closing tag
        (RFC 6120 §4.4); elements that arrive meanwhile are delivered as usual, then
        ``upstream_closed(None)``. Nothing more is written. Idempotent."""

    def pause_reading(self) -> None:
        """Stop reading from the server (the session's queue is full); idempotent."""

    def resume_reading(self) -> None:
        """Read from the server again; idempotent."""


class UpstreamFactory(Protocol):
    """Opens upstream streams. ``open`` returns at once; progress arrives via the listener."""

    def open(self, params: StreamParams, listener: UpstreamListener) -> Upstream:
        ...
