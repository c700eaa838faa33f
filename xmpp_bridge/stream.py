"""A raw client-to-server XMPP stream on slixmpp's ``XMLStream``, used as a pipe.

``ClientXMPP``/``BaseXMPP`` act on the user's behalf (feature negotiation, automatic
replies to iqs and subscriptions, see-other-host); a transparent bridge must not, so this
is a thin subclass of the bare :class:`slixmpp.xmlstream.XMLStream` (design.md section 5).

What this layer does itself:

* writes the PROXY protocol header with the client's address first, when configured
  (:mod:`xmpp_bridge.proxy_protocol`);
* writes our stream header (RFC 6120 §4.7) and captures every server header;
* STARTTLS on the hop to the server (RFC 6120 §5.4), with one shared ``SSLContext``;
* parses top-level elements and hands the ones parsed from one ``data_received`` call to
  its owner as one batch;
* whitespace keepalives (RFC 6120 §4.6.1), which slixmpp only starts on ``session_start``,
  an event that never fires at this layer;
* exactly one "ended" notification, whatever mix of stream error, ``</stream:stream>``,
  EOF, TLS failure and ``disconnected`` events (which slixmpp can fire twice) happens.

It does not know about BOSH: :mod:`xmpp_bridge.upstream` turns its callbacks into the
``bosh.ports.UpstreamListener`` contract.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import ssl
import threading
import xml.etree.ElementTree as ET
from typing import Any, Mapping, Protocol, cast

from lxml import etree as _lxml_etree
from slixmpp.xmlstream import XMLStream

from bosh.ports import NS_CLIENT, NS_STREAM, StreamParams
from xmpp_bridge.proxy_protocol import proxy_header
from xmpp_bridge.xml import NS_TLS, escape_attr, is_features, is_stream_error, offers_starttls

__all__ = ["StreamOwner", "BridgeStream", "build_stream_header", "is_pre_xmpp_1_0", "STREAM_FOOTER"]

log = logging.getLogger(__name__)

# slixmpp logs every stanza it sends and receives at DEBUG, SASL payloads (which carry
# passwords for PLAIN) included. Keep its logger at INFO or above even when the operator
# turns on DEBUG for everything else (design.md section 5, section 9 "Never log SASL
# payloads").
_slixmpp_log = logging.getLogger("slixmpp")
if _slixmpp_log.level < logging.INFO:  # NOTSET (0) inherits from the root: pin it
    _slixmpp_log.setLevel(logging.INFO)

STREAM_FOOTER = b"</stream:stream>"
_POLICY_VIOLATION = (b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                     b"</stream:error>")

#: Plaintext read size per TLS connection (``SSLObject.read`` chunk). A TLS record carries
#: at most 16 KiB of plaintext (RFC 8446 §5.1), so 32 KiB loses nothing (design.md
#: section 5).
TLS_READ_BUFFER = 32 * 1024

#: The ciphertext receive buffer asyncio's SSLProtocol hands to ``sock.recv_into``. asyncio
#: allocates one per connection (256 KiB by default, ``max_size``), but it is only used
#: between ``get_buffer()`` and ``buffer_updated()``, which copies the bytes into the
#: connection's MemoryBIO at once, both inside one synchronous ``_read_ready`` call. So one
#: buffer per thread serves every stream. Measured (docs/performance.md, 1,000 real
#: STARTTLS streams to Prosody in one process): 96.8 KiB RSS per stream with a 32 KiB
#: buffer each, 64.9 KiB with this shared one.
SHARED_RECV_BUFFER = 256 * 1024

#: Bytes written upstream and not yet taken by the server past which the client side pauses
#: (``pause_writing``); asyncio's plaintext default, applied to TLS too.
WRITE_HIGH_WATER = 64 * 1024

_per_thread = threading.local()


def _shared_recv_view() -> memoryview:
    view: memoryview | None = getattr(_per_thread, "view", None)
    if view is None:
        view = _per_thread.view = memoryview(bytearray(SHARED_RECV_BUFFER))
    return view


try:
    from asyncio import sslproto as _sslproto

    class _SmallBufferSSLProtocol(_sslproto.SSLProtocol):
        max_size = TLS_READ_BUFFER

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Drop the per-connection buffer the base class just allocated.
            self._ssl_buffer_view = _shared_recv_view()
            self._ssl_buffer = self._ssl_buffer_view.obj

        def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
            super()._on_handshake_complete(handshake_exc)
            # asyncio keeps the server certificate decoded into a dict per connection
            # (get_extra_info("peercert"): ~1.3 KiB and ~20 GC-tracked objects per stream,
            # tracemalloc, docs/performance.md). The check is done and nothing here reads it;
            # the DER stays reachable through the ssl_object.
            self._extra.pop("peercert", None)

        def get_buffer(self, n: int) -> memoryview:
            # The base class would re-allocate when its buffer is smaller than asked;
            # ours is never smaller than max_size, and buffer_updated reads the same view.
            view = _shared_recv_view()
            self._ssl_buffer_view = view
            return view

    _HAVE_SMALL_BUFFER = all(hasattr(_sslproto.SSLProtocol, a)
                             for a in ("max_size", "get_buffer", "buffer_updated"))
except (ImportError, AttributeError):  # another Python: fall back to loop.start_tls
    _HAVE_SMALL_BUFFER = False


async def _upgrade_to_tls(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
                          protocol: asyncio.BaseProtocol, ctx: ssl.SSLContext,
                          server_hostname: str) -> asyncio.Transport | None:
    """``loop.start_tls`` with a smaller read buffer (see :data:`TLS_READ_BUFFER`).

    Mirrors ``asyncio.BaseEventLoop.start_tls`` of CPython 3.11-3.13 but builds the
    ``SSLProtocol`` subclass above. Any other loop or transport (uvloop, a future CPython
    whose internals differ) takes the public ``loop.start_tls`` path.
    """
    if (not _HAVE_SMALL_BUFFER or type(loop).start_tls is not asyncio.BaseEventLoop.start_tls
            or not getattr(transport, "_start_tls_compatible", False)):
        return await loop.start_tls(transport, protocol, ctx, server_hostname=server_hostname)
    waiter = loop.create_future()
    ssl_protocol = _SmallBufferSSLProtocol(loop, protocol, ctx, waiter, False, server_hostname,
                                           call_connection_made=False)
    # As in asyncio: pause so that no data reaches the SSL protocol before connection_made.
    transport.pause_reading()
    transport.set_protocol(ssl_protocol)
    conmade_cb = loop.call_soon(ssl_protocol.connection_made, transport)
    resume_cb = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        conmade_cb.cancel()
        resume_cb.cancel()
        raise
    app_transport: asyncio.Transport | None = ssl_protocol._app_transport
    return app_transport
_STREAM_TAG = f"{{{NS_STREAM}}}stream"
_TLS_PROCEED = f"{{{NS_TLS}}}proceed"
_TLS_FAILURE = f"{{{NS_TLS}}}failure"
_KEEPALIVE_EVENT = "bosh-cm whitespace keepalive"
_VERSION_RE = re.compile(r"([0-9]+)\.([0-9]+)")


def is_pre_xmpp_1_0(version: str | None) -> bool:
    """Does a server header with this ``version`` mean a pre-1.0 stream (no features)?

    RFC 6120 §4.7.5: no 'version' is treated as "0.9"; major and minor are integers compared
    separately ("1.10" is after "1.9"). A value that is not "major.minor" cannot promise 1.0
    behaviour either, so it counts as missing.
    """
    match = _VERSION_RE.fullmatch(version or "")
    return match is None or int(match.group(1)) < 1


def build_stream_header(params: StreamParams) -> bytes:
    """The initial stream header we send for ``params`` (RFC 6120 §4.7, XEP-0206 §3).

    Values come from the client's session-creation body, so they are escaped: a crafted
    ``to`` must not be able to add attributes or close the tag.
    """
    attrs = [
        ("xmlns", NS_CLIENT),
        ("xmlns:stream", NS_STREAM),
        ("to", params.to),
    ]
    if params.version:
        attrs.append(("version", params.version))
    if params.lang:
        attrs.append(("xml:lang", params.lang))
    if params.from_:
        # RFC 6120 §4.7.1: 'from' is optional on the initiating entity's header.
        attrs.append(("from", params.from_))
    rendered = " ".join(f"{name}='{escape_attr(value)}'" for name, value in attrs)
    return f"<?xml version='1.0'?><stream:stream {rendered}>".encode("utf-8")


class StreamOwner(Protocol):
    """Callbacks from :class:`BridgeStream`; all run on the event loop thread."""

    def stream_ready(self, header: Mapping[str, str], features: ET.Element | None) -> None:
        """The first usable stream is open: ``header`` is the (post-TLS) server header.

        ``features`` is None only for a pre-1.0 server that sends no features
        (RFC 6120 §4.7.5).
        """

    def stream_header(self, header: Mapping[str, str]) -> None:
        """A new server stream header after :meth:`stream_ready` (a restart)."""

    def stream_elements(self, elements: list[ET.Element]) -> None:
        """Top-level elements after :meth:`stream_ready`, one batch per read."""

    def stream_writable(self, writable: bool) -> None:
        """False: the server reads slower than we write (the TCP buffer is over its
        high-water mark); True: it caught up. Alternates, starting with False."""

    def stream_ended(self, error: ET.Element | None, reason: str) -> None:
        """The stream ended not by our :meth:`BridgeStream.shutdown`; called at most once.

        ``error`` is the ``<stream:error/>`` element when the server sent one.
        """


class _NoSendQueue:
    """Stands in for slixmpp's per-stream send queue, which the bridge never uses.

    slixmpp only reads it on disconnect (``_reset_sendq``: "while not empty()"); anything
    that tried to queue a stanza through it would be a bug here, so that fails loudly.
    """

    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0

    def put_nowait(self, item: object) -> None:
        raise RuntimeError("BridgeStream writes with send_raw(); slixmpp's send queue is unused")

    def get_nowait(self) -> object:
        raise asyncio.QueueEmpty


_NO_SEND_QUEUE = _NoSendQueue()


def _unbound_prefix(elem: ET.Element) -> bool:
    """A name with a prefix but no namespace: libxml2 passes ``<foo:bar/>`` and ``a:b='1'``
    through when ``foo``/``a`` is not declared."""
    tag = elem.tag
    if isinstance(tag, str) and tag[0] != "{" and ":" in tag:
        return True
    return any(key[0] != "{" and ":" in key for key in elem.attrib)


class _State(enum.Enum):
    CONNECTING = "connecting"          # no TCP yet
    AWAIT_FEATURES = "await-features"  # header sent, waiting for the first features
    STARTTLS_SENT = "starttls-sent"    # waiting for <proceed/>
    TLS_HANDSHAKE = "tls-handshake"
    OPEN = "open"                      # ready reported; elements flow
    CLOSED = "closed"                  # ended or shut down: no more callbacks


class BridgeStream(XMLStream):
    """One raw XMPP client stream to a server, owned by one upstream.

    :param owner: receives the callbacks (see :class:`StreamOwner`).
    :param params: what our stream header is built from.
    :param ssl_context: the factory's shared context (also passed when ``use_tls`` is
        False, so that slixmpp does not build a private one per stream).
    :param use_tls: negotiate STARTTLS, and refuse a server that does not offer it.
    :param keepalive: seconds between whitespace keepalives once open; 0 disables them.
    :param loop: the running event loop.
    :param proxy_protocol: "v1" or "v2": send the PROXY protocol header with
        ``params.client_ip`` before anything else; "off" (the default): none.
    :param max_stanza_bytes: bytes one top-level element from the server may take
        (``[upstream] max_stanza_bytes``); past it the stream ends with policy-violation.
    :param max_stanza_depth: how deep elements may nest below ``<stream:stream>``
        (``[upstream] max_stanza_depth``); past it, the same.
    """

    #: Exceptions raised by handlers or owner callbacks, summed over all streams.
    total_handler_errors: int = 0

    def __init__(self, owner: StreamOwner, params: StreamParams, *,
                 ssl_context: ssl.SSLContext, use_tls: bool, keepalive: float,
                 loop: asyncio.AbstractEventLoop, proxy_protocol: str = "off",
                 max_stanza_bytes: int = 1_048_576, max_stanza_depth: int = 64) -> None:
        super().__init__(ssl_context=ssl_context, loop=loop)
        self._owner = owner
        self._max_stanza_bytes = max_stanza_bytes
        self._max_stanza_depth = max_stanza_depth
        #: Bytes read since the last top-level element ended (see :meth:`data_received`).
        self._unfinished = 0
        #: The stream ended because the server broke one of the two bounds above.
        self.over_limit = False
        self._write_paused = False  # the owner was told the server does not keep up
        self._proxy_protocol = proxy_protocol
        self._client_ip = params.client_ip
        self._use_tls = use_tls
        self._keepalive = keepalive
        self._state = _State.CONNECTING
        self._tls_done = False
        self._tls_task: asyncio.Task[bool] | None = None
        self._batch: list[ET.Element] | None = None
        self._stop_reading = False
        self._footer_sent = False  # finish(): nothing more is written
        #: Attributes of the most recent server stream header (RFC 6120 §4.7).
        self.server_header: dict[str, str] = {}

        # Names slixmpp uses when it writes headers/footers itself (connection_made).
        self.default_ns = NS_CLIENT
        self.stream_ns = NS_STREAM
        self.default_domain = params.to  # server_hostname for certificate checks
        self.stream_header = build_stream_header(params).decode("utf-8")
        self.stream_footer = STREAM_FOOTER.decode("utf-8")
        # slixmpp's own keepalive hangs off session_start; ours is scheduled in _go_open.
        self.whitespace_keepalive = False

        self.add_event_handler("disconnected", self._on_disconnected)
        # We never use slixmpp's send queue (send_raw only): drop the per-stream
        # asyncio.Queue (3 deques and an Event; ~3 KiB and 8 GC-tracked objects per stream).
        self.waiting_queue = _NO_SEND_QUEUE  # type: ignore[assignment]

    # -- introspection -----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Ready was reported and the stream has not ended."""
        return self._state is _State.OPEN

    @property
    def is_closed(self) -> bool:
        """The stream ended or was shut down."""
        return self._state is _State.CLOSED

    # -- slixmpp hooks -----------------------------------------------------------------

    def start_stream_handler(self, xml: ET.Element) -> None:
        """Capture every server stream header; the post-TLS one feeds ``StreamInfo``."""
        self.server_header = {key: value for key, value in xml.attrib.items()}
        if self._state is _State.OPEN:
            # The answer to a restart (RFC 6120 §4.3.3): elements parsed before it in this
            # read go first, so the owner sees header and features in stream order.
            if self._batch:
                self._deliver(self._batch)
                self._batch.clear()
            try:
                self._owner.stream_header(dict(self.server_header))
            except Exception as exc:
                self._count_error(exc, "stream_header")
            return
        if self._state is _State.AWAIT_FEATURES and is_pre_xmpp_1_0(self.server_header.get("version")):
            # RFC 6120 §4.7.5: no version, or one below 1.0 (ejabberd answers a client's
            # version='0.9' with version='0.9'), means a pre-1.0 stream: no features follow.
            # Nothing to negotiate; TLS cannot be had, so refuse it when required.
            if self._use_tls and not self._tls_done:
                self._end(None, "server has no stream features (pre-XMPP-1.0), TLS required")
                return
            self._go_open(None)

    def exception(self, exception: Exception) -> None:
        """slixmpp swallows exceptions from event handlers and schedules: log and count."""
        self._count_error(exception, "slixmpp callback")

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        """Parse what arrived; hand the resulting top-level elements over as one batch.

        Replaces slixmpp's version, which on malformed input would ``send()`` a stream error
        (held back forever at this layer, see design.md section 5) and which logs the raw
        payload.
        """
        if self.parser is None or self._state is _State.CLOSED:
            return
        batch: list[ET.Element] = []
        self._batch = batch
        self._stop_reading = False
        end_reason: str | None = None
        # A hostile or broken server must not grow our memory without limit: count what it
        # sends since the last top-level element ended (text at stream level included; the
        # parser and tree builder hold all of it) and end the stream past the bound. A read
        # that completes an element restarts the count at its last '>', a lower bound of
        # what the open element holds, so the bound holds to within one read.
        self._unfinished += len(data)
        completed = False
        syntax_error: str | None = None
        try:
            self.parser.feed(data)
        except _lxml_etree.XMLSyntaxError as exc:
            # lxml raises here, in feed() (read_events() never does), but keeps the events
            # parsed before the error: what the server completed first is still delivered,
            # then the stream ends.
            # Never log the data: it may be a SASL exchange.
            syntax_error = f"malformed XML from server: {exc.code}"
        try:
            for event, item in self.parser.read_events():  # type: ignore[misc]  # slixmpp types
                xml = cast(ET.Element, item)  # only "start"/"end" events were requested
                if event == "start":
                    if _unbound_prefix(xml):
                        # expat refused these; libxml2 only warns. Forwarded, no client
                        # could parse them (Namespaces in XML §5).
                        end_reason = "malformed XML from server: unbound namespace prefix"
                        break
                    if self.xml_depth > self._max_stanza_depth:
                        # Nesting bound (xml_depth counts <stream:stream> itself): deep trees
                        # cost memory and the recursive serializer its stack.
                        end_reason = (f"server element nested deeper than {self._max_stanza_depth} "
                                      "levels ([upstream] max_stanza_depth)")
                        self.over_limit = True
                        break
                    if self.xml_depth == 0:
                        if xml.tag != _STREAM_TAG:
                            # RFC 6120 §4.9.3.9 (invalid-namespace) / not XMPP at all.
                            end_reason = "server root element is not <stream:stream>"
                            break
                        self.xml_root = xml
                        self.start_stream_handler(xml)
                        if self._ended():
                            break
                    self.xml_depth += 1
                else:
                    self.xml_depth -= 1
                    if self.xml_depth == 0:
                        # RFC 6120 §4.4: the server closed its stream.
                        end_reason = "server closed the stream"
                        break
                    if self.xml_depth == 1:
                        completed = True
                        # A direct child of <stream:stream> (RFC 6120 §4.1). Dispatched
                        # directly: slixmpp's _spawn_event would wrap it in a StanzaBase and
                        # match it against a handler list only to reach the same place.
                        self._on_element(xml)
                        if self.xml_root is not None:
                            self.xml_root.clear()  # keep the root from growing
                        if self._stop_reading or self._ended():
                            break
        finally:
            self._batch = None
        if end_reason is None:
            end_reason = syntax_error
        if completed:
            self._unfinished = len(data) - 1 - data.rfind(b">")
        if end_reason is None and self._unfinished > self._max_stanza_bytes:
            end_reason = (f"server element over {self._max_stanza_bytes} bytes "
                          "([upstream] max_stanza_bytes)")
            self.over_limit = True
        if self.over_limit:
            self._refuse_oversized()
        if batch and self._state is _State.OPEN:
            self._deliver(batch)
        if end_reason is not None and not self._ended():
            self._end(None, end_reason)

    def connection_made(self, transport: asyncio.BaseTransport,
                        send_event: bool = True) -> None:
        """TCP is up: slixmpp initializes the parser and writes our header (RFC 6120 §4.2)."""
        if self._state is _State.CLOSED:
            # close() won the race against create_connection.
            transport.close()
            return
        self._state = _State.AWAIT_FEATURES
        if self._proxy_protocol != "off":
            # Before slixmpp writes our stream header: the PROXY header must be the first
            # bytes on the connection (proxy-protocol.txt §2). A cast, not isinstance:
            # uvloop's transports are not asyncio.WriteTransport subclasses.
            peer = transport.get_extra_info("peername")
            server = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None
            cast(asyncio.WriteTransport, transport).write(
                proxy_header(self._proxy_protocol, self._client_ip, server))
        super().connection_made(transport, send_event)

    def connection_lost(self, exception: BaseException | None) -> None:
        """TCP (or TLS) connection gone; slixmpp then fires ``disconnected``."""
        super().connection_lost(exception)
        # slixmpp only fires 'disconnected' from here; call our handler directly too, in
        # case a future version stops doing so. _on_disconnected is idempotent.
        self._on_disconnected(exception)

    # -- element dispatch --------------------------------------------------------------

    def _on_element(self, elem: ET.Element) -> None:
        try:
            self._handle_element(elem)
        except Exception as exc:  # a bug here must not kill the transport
            self._count_error(exc, "element handler")

    def _handle_element(self, elem: ET.Element) -> None:
        state = self._state
        if state is _State.OPEN:
            if is_stream_error(elem):
                # RFC 6120 §4.9: fatal. Elements before it are delivered first.
                self._stop_reading = True
                if self._batch:
                    self._deliver(self._batch)
                    self._batch.clear()
                self._end(elem, "stream error")
                return
            if self._batch is not None:
                self._batch.append(elem)
            else:
                self._deliver([elem])
            return
        if is_stream_error(elem):
            self._stop_reading = True
            self._end(elem, "stream error during negotiation")
            return
        if state is _State.AWAIT_FEATURES and is_features(elem):
            if self._use_tls and not self._tls_done:
                if offers_starttls(elem):
                    # RFC 6120 §5.4.2.1
                    self._state = _State.STARTTLS_SENT
                    self._write(f"<starttls xmlns='{NS_TLS}'/>".encode("ascii"))
                else:
                    self._end(None, "TLS required but the server does not offer STARTTLS")
                return
            self._go_open(elem)
            return
        if state is _State.STARTTLS_SENT:
            if elem.tag == _TLS_PROCEED:
                # RFC 6120 §5.4.3.3: nothing more arrives on the plaintext layer.
                self._stop_reading = True
                self._state = _State.TLS_HANDSHAKE
                self._tls_task = self.loop.create_task(self.start_tls())
            elif elem.tag == _TLS_FAILURE:
                self._end(None, "server refused STARTTLS")  # RFC 6120 §5.4.2.2
            else:
                self._end(None, f"unexpected {elem.tag!r} while waiting for <proceed/>")
            return
        self._end(None, f"unexpected {elem.tag!r} during stream negotiation")

    def _go_open(self, features: ET.Element | None) -> None:
        self._state = _State.OPEN
        if self._keepalive > 0:
            # slixmpp annotates seconds as int; loop.call_later underneath takes a float.
            self.schedule(_KEEPALIVE_EVENT, self._keepalive,  # type: ignore[arg-type]
                          self._send_keepalive, repeat=True)
        try:
            self._owner.stream_ready(dict(self.server_header), features)
        except Exception as exc:
            self._count_error(exc, "stream_ready")

    def _deliver(self, elements: list[ET.Element]) -> None:
        try:
            self._owner.stream_elements(list(elements))
        except Exception as exc:
            self._count_error(exc, "stream_elements")

    # -- TLS ---------------------------------------------------------------------------

    async def start_tls(self) -> bool:
        """Upgrade the connection after ``<proceed/>`` (RFC 6120 §5.4.3.3).

        Replaces slixmpp's version, which on failure calls ``disconnect()`` (writing a
        footer on a dead transport and lingering two seconds) and never reports the
        failure to us: a failed handshake here ends the stream at once. On success the
        stream restarts on the TLS layer (RFC 6120 §5.4.3.3): fresh parser, fresh header.
        """
        transport = self.transport
        if transport is None:
            return False
        try:
            new_transport = await _upgrade_to_tls(self.loop, transport, self, self.ssl_context,
                                                  self.default_domain)
        except asyncio.CancelledError:
            transport.abort()
            raise
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            # The handshake failed; asyncio closed the transport but, as the handshake never
            # completed, will not call our connection_lost.
            transport.abort()
            self._end(None, f"TLS handshake with the server failed: {exc}")
            return False
        if new_transport is None or self._state is not _State.TLS_HANDSHAKE:
            if new_transport is not None:
                new_transport.abort()
            return False
        self._tls_done = True
        self._tls_task = None  # done: do not keep the finished task alive per stream
        # asyncio lets 512 KiB pile up over TLS before pause_writing (64 KiB in plaintext):
        # the same mark for both, so a stalled server holds as little here either way.
        new_transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.transport = new_transport
        self._state = _State.AWAIT_FEATURES
        self.init_parser()
        self._write(self.stream_header.encode("utf-8"))
        return True

    # -- called by the upstream --------------------------------------------------------

    def send_element(self, data: bytes) -> None:
        """Write one already-serialized client element (slixmpp ``send_raw``)."""
        if self._state is _State.OPEN and not self._footer_sent:
            self._write(data)

    def finish(self) -> None:
        """Send our ``</stream:stream>`` and keep reading (RFC 6120 §4.4): the stream ends,
        with the owner's ``stream_ended``, when the server's closing tag arrives."""
        if self._state is not _State.OPEN or self._footer_sent:
            return
        self._footer_sent = True
        self._cancel_timers()  # no keepalives after the footer
        self._write(STREAM_FOOTER)

    def init_parser(self) -> None:
        """A fresh parser (connect, after TLS, restart); the byte count starts again too.

        lxml's pull parser instead of slixmpp's ``xml.etree`` one: the elements have the same
        API, but libxml2 interns names in one dictionary per thread where expat and
        ElementTree keep tables and a name cache per parser: 11.5 against 18.3 KiB per
        stream after a login (docs/performance.md). Only internal entities resolve (an
        undefined one is an error: with none resolved, libxml2 swallows it and stalls), no
        DTD or network loads; comments and processing instructions (RFC 6120 §11.1 forbids
        them) dropped.
        """
        self.xml_depth = 0
        self.xml_root = None
        self.parser = _lxml_etree.XMLPullParser(
            events=("start", "end"), resolve_entities="internal", no_network=True,
            remove_comments=True, remove_pis=True, load_dtd=False)
        self._unfinished = 0

    def _refuse_oversized(self) -> None:
        """RFC 6120 §4.9.3.12: tell the server why we leave (policy-violation, "e.g., a
        size limit"); :meth:`_end` then closes without a second footer."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self._footer_sent:
            self._footer_sent = True
            self._write(_POLICY_VIOLATION + STREAM_FOOTER)

    # -- write-side flow control (asyncio protocol callbacks) ----------------------------------

    def pause_writing(self) -> None:
        """The server reads slower than its clients write: tell the owner, which stops
        reading from the client until :meth:`resume_writing` (backpressure, issue 11)."""
        if not self._write_paused and self._state is not _State.CLOSED:
            self._write_paused = True
            self._notify_writable(False)

    def resume_writing(self) -> None:
        """What we wrote drained to the low-water mark: the client may send again. (Over TLS
        the SSL protocol calls both, counting its own backlog; in plaintext the TCP
        transport does.)"""
        if self._write_paused and self._state is not _State.CLOSED:
            self._write_paused = False
            self._notify_writable(True)

    def _notify_writable(self, writable: bool) -> None:
        try:
            self._owner.stream_writable(writable)
        except Exception as exc:
            self._count_error(exc, "stream_writable")

    def restart(self, header: bytes) -> None:
        """XEP-0206 §5 / RFC 6120 §4.3.3: new parser, new header, same TCP stream."""
        if self._state is not _State.OPEN or self._footer_sent:
            return
        self.init_parser()
        self._write(header)

    def pause_reading(self) -> None:
        """Stop reading from the server (backpressure toward a slow BOSH client)."""
        if self.transport is not None and self._state is _State.OPEN:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        if self.transport is not None and self._state is _State.OPEN:
            self.transport.resume_reading()

    def shutdown(self, send_footer: bool = True) -> None:
        """Our side ends the stream; no owner callbacks after this. Idempotent.

        RFC 6120 §4.4 lets us close the TCP connection after our ``</stream:stream>``
        without waiting for the server's; ``close()`` still flushes what is buffered.
        """
        was = self._state
        self._state = _State.CLOSED
        self._cancel_timers()
        if self._tls_task is not None and not self._tls_task.done():
            self._tls_task.cancel()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if send_footer and not self._footer_sent \
                and was in (_State.OPEN, _State.AWAIT_FEATURES, _State.STARTTLS_SENT):
            try:
                transport.write(STREAM_FOOTER)
            except Exception:  # transport in a state where it refuses writes
                pass
        transport.close()

    # -- internals ---------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the loss is reported by connection_lost
        self.send_raw(data)

    def _send_keepalive(self) -> None:
        # RFC 6120 §4.6.1: whitespace between top-level elements keeps NATs and the
        # server's idle timers happy; only on an open stream (never mid-TLS-handshake).
        if self._state is _State.OPEN:
            self._write(b" ")

    def _cancel_timers(self) -> None:
        self.cancel_schedule(_KEEPALIVE_EVENT)

    def _on_disconnected(self, reason: Any) -> None:
        if self._state is _State.CLOSED:
            return  # our own shutdown, or already reported: slixmpp may fire twice
        detail = f": {reason}" if isinstance(reason, BaseException) else ""
        self._end(None, f"connection to the server lost{detail}")

    def _ended(self) -> bool:
        # A method rather than an inline comparison: callbacks change the state under the
        # caller's feet, which static narrowing cannot see.
        return self._state is _State.CLOSED

    def _end(self, error: ET.Element | None, reason: str) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._cancel_timers()
        log.info("upstream stream to %s ended: %s", self.default_domain, reason)
        try:
            self._owner.stream_ended(error, reason)
        except Exception as exc:
            self._count_error(exc, "stream_ended")
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if (error is not None or reason == "server closed the stream") and not self._footer_sent:
                # RFC 6120 §4.4: answer the server's closing tag with ours.
                try:
                    transport.write(STREAM_FOOTER)
                except Exception:
                    pass
            transport.close()

    def _count_error(self, exc: BaseException, where: str) -> None:
        BridgeStream.total_handler_errors += 1  # slixmpp would swallow these silently
        log.error("exception in %s for upstream %s", where, self.default_domain,
                  exc_info=(type(exc), exc, exc.__traceback__))
