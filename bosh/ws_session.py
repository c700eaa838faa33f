"""The XMPP-over-WebSocket session state machine (RFC 7395), sans-IO.

Calls in, events out, time passed in, like ``bosh.session``: nothing here does I/O, reads a
clock or knows asyncio. One :class:`WsSession` per WebSocket connection; its driver
(``bosh.ws_driver``) executes the events and calls :meth:`WsSession.handle_timer` at
:meth:`WsSession.next_deadline`.

Transitions (every other move is a no-op on an ended session, or a stream error)::

    AWAIT_OPEN --<open/> to a served domain--> CONNECTING --upstream ready--> OPEN
    AWAIT_OPEN --bad first message / open timeout---------------------------> ENDED
    CONNECTING, OPEN --client <close/>, stream error, socket lost, shutdown-> ENDED
    OPEN --<open/> (restart, RFC 7395 §3.7)--> OPEN (a new <open/> answers the new header)

Invariants (pinned by tests/core/test_core_ws.py):

* Every message to the client is one standalone element (RFC 7395 §3.3.3); no whitespace
  keepalives ever (§3.8); the server's close is exactly :data:`CLOSE` (Strophe.js matches
  that text).
* A stream error is sent as ``<open/>`` first when the stream was not opened yet (§3.5),
  then the error, then :data:`CLOSE`, then the WebSocket close.
* XEP-0198 is passed through untouched; the session only watches for the server's
  ``<enabled resume='true'/>`` / ``<resumed/>``. Once resumption is granted, losing the
  socket (or a SIGTERM) never sends ``</stream:stream>`` upstream, so the server keeps the
  session for the client to resume (XEP-0198 §5; a cleanly closed stream is not resumable).
* Once ENDED the session emits nothing more.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

from lxml import etree

from bosh import xmlsafe
from bosh.errors import StreamCondition, XmlRefused
from bosh.events import CloseUpstream, FlowControl, OpenUpstream, RestartUpstream, SendUpstream, SessionEnded
from bosh.xmltext import escape_attr
from bosh.ports import NS_STREAM, NS_XML, ClientElement, StreamInfo, StreamParams

__all__ = ["WsSession", "WsLimits", "WsState", "SendText", "SendPing", "CloseSocket", "WsEvent",
           "NS_FRAMING", "CLOSE", "stream_error", "close_code_for"]

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_STREAMS_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_SM = "urn:xmpp:sm:3"
NS_SM_ALL = (NS_SM, "urn:xmpp:sm:2")  # Prosody and ejabberd offer both

#: The server's close, byte for byte: Strophe.js 5 recognises exactly this text (design.md §10).
CLOSE = b'<close xmlns="urn:ietf:params:xml:ns:xmpp-framing" />'

_OPEN_TAG = f"{{{NS_FRAMING}}}open"
_CLOSE_TAG = f"{{{NS_FRAMING}}}close"

# WebSocket close codes (RFC 6455 §7.4.1).
WS_NORMAL = 1000
WS_UNSUPPORTED_DATA = 1003
WS_POLICY = 1008
WS_TOO_BIG = 1009
WS_RESTART = 1012  # "service restart": the client should reconnect (and resume)

#: Client elements that may arrive before the upstream is ready; more is a policy violation.
MAX_EARLY_ELEMENTS = 32


# ---------------------------------------------------------------------------------------
# Events towards the client (the upstream ones come from bosh.events)

@dataclass(frozen=True, slots=True)
class SendText:
    """Send one text message (one standalone element, UTF-8)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a WebSocket ping (RFC 6455 §5.5.2)."""


@dataclass(frozen=True, slots=True)
class CloseSocket:
    """Start the WebSocket closing handshake with ``code`` (RFC 6455 §7.1.2)."""

    code: int


WsEvent = Union[SendText, SendPing, CloseSocket, OpenUpstream, SendUpstream, RestartUpstream,
                CloseUpstream, FlowControl, SessionEnded]


class WsState(enum.Enum):
    AWAIT_OPEN = "await-open"    # socket up, the client's <open/> not seen yet
    CONNECTING = "connecting"    # <open/> seen, upstream not ready yet
    OPEN = "open"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class WsLimits:
    """Per-session bounds of a WebSocket session (from ``[websocket]`` and ``[bosh]``)."""

    max_message_bytes: int = 262_144   # [bosh] max_stanza_bytes: largest client message
    ping_interval: float = 30.0        # seconds; 0 = no pings
    missed_pongs: int = 2              # pings unanswered before the socket counts as lost
    open_timeout: float = 30.0         # seconds for the client's first <open/>


def render_open(from_: str, id_: str, lang: str | None, version: str | None) -> bytes:
    """The server's ``<open/>`` (RFC 7395 §3.4, attributes of RFC 6120 §4.7)."""
    attrs = [("from", from_), ("id", id_)]
    if lang:
        attrs.append(("xml:lang", lang))
    attrs.append(("version", version or "1.0"))
    rendered = "".join(f' {k}="{escape_attr(v)}"' for k, v in attrs)
    return f'<open xmlns="{NS_FRAMING}"{rendered}/>'.encode()


def stream_error(condition: StreamCondition) -> bytes:
    """A standalone ``<stream:error/>`` (RFC 7395 §3.3.3, RFC 6120 §4.9)."""
    return (f'<stream:error xmlns:stream="{NS_STREAM}"><{condition.value} '
            f'xmlns="{NS_STREAMS_ERRORS}"/></stream:error>').encode()


def close_code_for(condition: StreamCondition | None) -> int:
    """The WebSocket close code that goes with a stream error of ours."""
    return {StreamCondition.UNSUPPORTED_ENCODING: WS_UNSUPPORTED_DATA,
            StreamCondition.POLICY_VIOLATION: WS_POLICY}.get(condition, WS_NORMAL) \
        if condition is not None else WS_NORMAL


_XML_REFUSED = {
    XmlRefused.NOT_WELL_FORMED: StreamCondition.NOT_WELL_FORMED,
    XmlRefused.RESTRICTED: StreamCondition.RESTRICTED_XML,
    XmlRefused.TOO_COMPLEX: StreamCondition.POLICY_VIOLATION,
    XmlRefused.INVALID: StreamCondition.INVALID_XML,
}


def _grants_resumption(data: bytes) -> bool | None:
    """True when ``data`` is the server's XEP-0198 grant of resumption (``<enabled
    resume='true'/>`` or ``<resumed/>``), False for ``<failed/>`` or an ``<enabled/>``
    without it, None for anything else. Cheap for the common case: stanzas start with
    ``<message``, ``<presence`` or ``<iq``."""
    if not (data.startswith(b"<enabled") or data.startswith(b"<resumed")
            or data.startswith(b"<failed")):
        return None
    try:
        root = xmlsafe.parse_document(data)
    except XmlRefused:
        return None
    ns, name = xmlsafe.split(root.tag)
    if ns not in NS_SM_ALL:
        return None
    if name == "enabled":
        return root.get("resume") in ("true", "1")  # XML Schema boolean
    if name == "resumed":
        return True
    if any(xmlsafe.split(child.tag)[1] == "unexpected-request" for child in root
           if isinstance(child.tag, str)):
        return None  # a second <enable/> refused: the session that was enabled stays (§4)
    return False  # <failed/>: the old session is gone (XEP-0198 §5)


class WsSession:
    """One RFC 7395 session: the client's WebSocket messages and one upstream stream.

    :param sid: our id for logs and the hub (the ``id`` of the ``<open/>`` before the server's
        own stream id is known).
    :param domains: the served domains (lower case); others get host-unknown.
    :param see_other_uri: when set, the client's ``<open/>`` is answered with a ``<close/>``
        naming it (RFC 7395 §3.6.1: the operator drains this node).
    """

    __slots__ = ("sid", "domains", "limits", "see_other_uri", "state", "domain", "lang", "resumable", "end_condition", "_early", "_pings_out", "_deadline", "_unread")

    def __init__(self, sid: str, domains: frozenset[str], limits: WsLimits, now: float,
                 see_other_uri: str = "") -> None:
        self.sid = sid
        self.domains = domains
        self.limits = limits
        self.see_other_uri = see_other_uri
        self.state = WsState.AWAIT_OPEN
        self.domain: str | None = None
        self.lang: str | None = None
        #: The server granted XEP-0198 resumption for the current stream.
        self.resumable = False
        self.end_condition: StreamCondition | None = None
        self._early: list[ClientElement] = []
        self._pings_out = 0
        self._unread = False  # the client's frames (its pongs too) are not read: backpressure
        self._deadline: float | None = now + limits.open_timeout

    # -- time -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> list[WsEvent]:
        if self.state is WsState.ENDED or self._deadline is None or now < self._deadline:
            return []
        if self.state is WsState.AWAIT_OPEN:
            return self._fail(StreamCondition.CONNECTION_TIMEOUT)  # RFC 6120 §4.9.3.4
        if self.limits.ping_interval <= 0:
            self._deadline = None
            return []
        if self._unread:
            # We are not reading the client (the server does not read what it sent), so its
            # pongs cannot arrive: no verdict on the client until reading resumes.
            self._deadline = now + self.limits.ping_interval
            return []
        if self._pings_out >= self.limits.missed_pongs:
            # The peer is gone without a TCP reset (a phone in a tunnel): as if the socket
            # dropped, so a resumable session stays resumable.
            return self._lost(close_socket=True)
        self._pings_out += 1
        self._deadline = now + self.limits.ping_interval
        return [SendPing()]

    def _arm_ping(self, now: float) -> None:
        self._deadline = now + self.limits.ping_interval if self.limits.ping_interval > 0 else None

    # -- from the client ---------------------------------------------------------------

    def receive_text(self, data: bytes, now: float) -> list[WsEvent]:
        """One text message from the client."""
        if self.state is WsState.ENDED:
            return []
        if len(data) > self.limits.max_message_bytes:
            return self._fail(StreamCondition.POLICY_VIOLATION)
        try:
            root = xmlsafe.parse_document(data)
        except XmlRefused as exc:
            return self._fail(_XML_REFUSED[exc.kind])
        tag = root.tag
        if self.state is WsState.AWAIT_OPEN:
            if tag != _OPEN_TAG:
                # RFC 7395 §3.4: the first message is <open/> in the framing namespace.
                return self._fail(StreamCondition.INVALID_NAMESPACE)
            return self._open(root, now)
        if tag == _OPEN_TAG:
            return self._restart(root)
        if tag == _CLOSE_TAG:
            return self._client_close()
        if xmlsafe.split(tag)[0] == NS_FRAMING:
            return self._fail(StreamCondition.INVALID_XML)  # no other framing elements exist
        try:
            element = xmlsafe.client_element(root, remap="")
        except XmlRefused as exc:
            return self._fail(_XML_REFUSED[exc.kind])
        if self.state is WsState.CONNECTING:
            # Not legitimate before the features, but pipelining clients exist: keep order.
            if len(self._early) >= MAX_EARLY_ELEMENTS:
                return self._fail(StreamCondition.POLICY_VIOLATION)
            self._early.append(element)
            return []
        return [SendUpstream((element,))]

    def receive_binary(self, now: float) -> list[WsEvent]:
        """RFC 7395 §3.2: XMPP frames are text frames only."""
        if self.state is WsState.ENDED:
            return []
        return self._fail(StreamCondition.UNSUPPORTED_ENCODING)

    def message_too_big(self, now: float) -> list[WsEvent]:
        """The WebSocket layer refused a message over the size bound before reading it all:
        policy-violation, so a resuming client does not resend it (design.md §10)."""
        if self.state is WsState.ENDED:
            return []
        return self._fail(StreamCondition.POLICY_VIOLATION)

    def receive_pong(self, now: float) -> list[WsEvent]:
        self._pings_out = 0
        return []

    def client_unread(self, unread: bool, now: float) -> list[WsEvent]:
        """The adapter stops (True) or resumes (False) reading the client's frames while the
        server does not keep up (backpressure); pings unanswered meanwhile do not count."""
        self._unread = unread
        self._pings_out = 0
        return []

    def connection_lost(self, now: float) -> list[WsEvent]:
        """The socket is gone (closed by the client, or broken)."""
        if self.state is WsState.ENDED:
            return []
        return self._lost(close_socket=False)

    # -- from the upstream -------------------------------------------------------------

    def upstream_ready(self, info: StreamInfo, features: bytes, now: float) -> list[WsEvent]:
        if self.state is not WsState.CONNECTING:
            return []
        self.state = WsState.OPEN
        self._arm_ping(now)
        out: list[WsEvent] = [SendText(self._open_reply(info))]
        if features:
            out.append(SendText(features))
        if self._early:
            out.append(SendUpstream(tuple(self._early)))
            self._early = []
        return out

    def upstream_header(self, info: StreamInfo, now: float) -> list[WsEvent]:
        """The server's header after a restart: the answer to the client's new ``<open/>``."""
        if self.state is not WsState.OPEN:
            return []
        return [SendText(self._open_reply(info))]

    def upstream_elements(self, elements: list[bytes], now: float) -> list[WsEvent]:
        if self.state is not WsState.OPEN:
            return []
        out: list[WsEvent] = []
        for data in elements:
            granted = _grants_resumption(data)
            if granted is not None:
                self.resumable = granted
            out.append(SendText(data))
        return out

    def upstream_closed(self, stream_error_bytes: bytes | None, now: float) -> list[WsEvent]:
        """The server ended the stream (its stream error, if any, goes to the client as is),
        or the connection to it failed: the client learns at once (RFC 7395 §3.6)."""
        if self.state is WsState.ENDED:
            return []
        out: list[WsEvent] = []
        if self.state is not WsState.OPEN:
            out.append(SendText(self._placeholder_open()))
        if stream_error_bytes is not None:
            out.append(SendText(stream_error_bytes))
        out += [SendText(CLOSE), CloseSocket(WS_NORMAL)]
        self.resumable = False
        return self._end(out, None)

    # -- from the operator -------------------------------------------------------------

    def shutdown(self, now: float) -> list[WsEvent]:
        """SIGTERM: a session the server keeps resumable is released for resumption
        elsewhere (WebSocket close 1012, no ``<close/>``, upstream dropped without its
        footer); any other gets system-shutdown."""
        if self.state is WsState.ENDED:
            return []
        if self.resumable and self.state is WsState.OPEN:
            return self._end([CloseUpstream(end_stream=False), CloseSocket(WS_RESTART)],
                             StreamCondition.SYSTEM_SHUTDOWN)
        return self._fail(StreamCondition.SYSTEM_SHUTDOWN)

    def end(self, condition: StreamCondition, now: float) -> list[WsEvent]:
        """The operator ends the session with a stream error (e.g. host-gone)."""
        if self.state is WsState.ENDED:
            return []
        return self._fail(condition)

    # -- internals ---------------------------------------------------------------------

    def _open(self, root: etree._Element, now: float) -> list[WsEvent]:
        attrs = xmlsafe.attrs_of(root, {NS_XML: "xml:"})
        to = (attrs.get("to") or "").strip()
        self.lang = attrs.get("xml:lang")
        self.domain = to.lower() if to.lower() in self.domains else None
        if self.see_other_uri:
            uri = escape_attr(self.see_other_uri)
            close = f'<close xmlns="{NS_FRAMING}" see-other-uri="{uri}" />'.encode()
            return self._end([SendText(close), CloseSocket(WS_NORMAL)], None)
        if self.domain is None:
            return self._fail(StreamCondition.HOST_UNKNOWN)  # RFC 6120 §4.9.3.6
        version = attrs.get("version")
        if version is not None and not version.startswith("1."):
            return self._fail(StreamCondition.UNSUPPORTED_VERSION)  # RFC 6120 §4.9.3.25
        self.state = WsState.CONNECTING
        self._deadline = None  # the upstream's connect_timeout bounds this step
        params = StreamParams(to=to, lang=self.lang, from_=attrs.get("from"), version="1.0")
        return [OpenUpstream(params)]

    def _restart(self, root: etree._Element) -> list[WsEvent]:
        """RFC 7395 §3.7: a new ``<open/>`` restarts the stream (after SASL); the answer is
        the server's new header, then its features."""
        if self.state is not WsState.OPEN:
            return self._fail(StreamCondition.POLICY_VIOLATION)
        attrs = xmlsafe.attrs_of(root, {NS_XML: "xml:"})
        to = (attrs.get("to") or self.domain or "").strip()
        if to.lower() != self.domain:
            return self._fail(StreamCondition.HOST_UNKNOWN)  # a restart may not switch domains
        lang = attrs.get("xml:lang") or self.lang
        self.resumable = False  # a new stream; resumption is negotiated again
        return [RestartUpstream(StreamParams(to=to, lang=lang, from_=attrs.get("from"),
                                             version="1.0"))]

    def _client_close(self) -> list[WsEvent]:
        """RFC 7395 §3.6: close the upstream stream, answer ``<close/>``, close the socket."""
        self.resumable = False
        return self._end([CloseUpstream(end_stream=True), SendText(CLOSE), CloseSocket(WS_NORMAL)],
                         None)

    def _lost(self, close_socket: bool) -> list[WsEvent]:
        out: list[WsEvent] = []
        if self.state in (WsState.CONNECTING, WsState.OPEN):
            # XEP-0198 §5: without the footer the server keeps a resumable session.
            out.append(CloseUpstream(end_stream=not self.resumable))
        if close_socket:
            out.append(CloseSocket(WS_NORMAL))
        return self._end(out, StreamCondition.CONNECTION_TIMEOUT if close_socket else None)

    def _fail(self, condition: StreamCondition) -> list[WsEvent]:
        """A stream error of ours (RFC 7395 §3.5): ``<open/>`` first if the stream was not
        open yet, then the error, ``<close/>`` and the WebSocket close; the upstream stream
        is closed cleanly."""
        out: list[WsEvent] = []
        if self.state in (WsState.AWAIT_OPEN, WsState.CONNECTING):
            out.append(SendText(self._placeholder_open()))
        out += [SendText(stream_error(condition)), SendText(CLOSE)]
        if self.state in (WsState.CONNECTING, WsState.OPEN):
            out.append(CloseUpstream(end_stream=True))
        out.append(CloseSocket(close_code_for(condition)))
        self.resumable = False
        return self._end(out, condition)

    def _end(self, out: list[WsEvent], condition: StreamCondition | None) -> list[WsEvent]:
        self.state = WsState.ENDED
        self._deadline = None
        self._early = []
        self.end_condition = condition
        out.append(SessionEnded(condition))
        return out

    def _open_reply(self, info: StreamInfo) -> bytes:
        # RFC 6120 §4.7.4: the server's xml:lang (it MUST send one), else the client's.
        return render_open(info.from_ or self.domain or "", info.id or self.sid,
                           info.lang or self.lang, info.version)

    def _placeholder_open(self) -> bytes:
        # Before the server's header exists: our own values (RFC 7395 §3.5).
        from_ = self.domain or (min(self.domains) if self.domains else "")
        return render_open(from_, self.sid, self.lang, "1.0")
