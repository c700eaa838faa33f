"""``bosh.ports.UpstreamFactory`` / ``Upstream`` on top of :mod:`xmpp_bridge.stream`.

One :class:`XmppUpstream` per client session (BOSH or WebSocket). :meth:`XmppUpstreamFactory.open` returns at
once; a background task resolves, connects, negotiates STARTTLS and waits for the
post-TLS features, all within ``connect_timeout``. Progress and the end of the stream are
reported through the session's ``UpstreamListener`` exactly as ``bosh/ports.py`` specifies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import ssl
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Sequence

from bosh.config import UpstreamConfig
from bosh.ports import NS_XML, ClientElement, StreamInfo, StreamParams, UpstreamListener
from xmpp_bridge.routing import (DEFAULT_CLIENT_PORT, SRV_SERVICE, RoutePlan, order_srv_answers,
                                 plan_route)
from xmpp_bridge.stream import BridgeStream, build_stream_header
from xmpp_bridge.xml import allowed_upstream, filter_features, is_features, serialize

__all__ = ["SrvLookup", "BridgeStats", "XmppUpstream", "XmppUpstreamFactory", "make_ssl_context"]

log = logging.getLogger(__name__)

#: ``srv_lookup(domain)`` -> ``[(host, port), ...]`` ordered by priority and weight
#: (RFC 2782); an empty list when there is no record.
SrvLookup = Callable[[str], Awaitable[list[tuple[str, int]]]]


def make_ssl_context(config: UpstreamConfig) -> ssl.SSLContext:
    """The one client ``SSLContext`` shared by every upstream stream (design.md section 5).

    Verification is on (``CERT_REQUIRED`` and ``check_hostname`` against the ``to`` domain,
    RFC 6120 §13.7.2.1); ``ca_file`` adds a trust anchor to the system store.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 7590 §3.1 / RFC 9325
    if config.ca_file:
        ctx.load_verify_locations(cafile=config.ca_file)
    return ctx


async def _slixmpp_srv_lookup(domain: str) -> list[tuple[str, int]]:
    """SRV lookup through slixmpp's resolver helpers (needs aiodns; else no records)."""
    from slixmpp.xmlstream.resolver import default_resolver, get_SRV

    loop = asyncio.get_running_loop()
    resolver = default_resolver(loop=loop)
    if resolver is None:
        return []
    answers = await get_SRV(domain, DEFAULT_CLIENT_PORT, [SRV_SERVICE], resolver=resolver)
    return [(host, port) for _service, host, port in answers]


@dataclass(slots=True)
class BridgeStats:
    """Counters for metrics; shared by all upstreams of one factory."""

    opened: int = 0
    ready: int = 0
    failed: int = 0          # ended before ready (connect, TLS, timeout, negotiation)
    ended: int = 0           # ended after ready, not by us
    dropped_elements: int = 0  # client elements refused by allowed_upstream
    listener_errors: int = 0
    over_limit: int = 0      # streams ended: a server element over [upstream] max_stanza_*


class _State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    FINISHING = "finishing"  # finish(): our </stream:stream> sent, still reading
    ENDED = "ended"    # upstream_closed was called
    CLOSED = "closed"  # close() was called


class XmppUpstream:
    """One XMPP stream to the server, owned by one BOSH session (``bosh.ports.Upstream``).

    Created by :meth:`XmppUpstreamFactory.open`; not meant to be built directly.
    """

    def __init__(self, params: StreamParams, listener: UpstreamListener, *,
                 config: UpstreamConfig, ssl_context: ssl.SSLContext,
                 srv_lookup: SrvLookup, stats: BridgeStats,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._params = params
        self._listener = listener
        self._config = config
        self._srv_lookup = srv_lookup
        self._stats = stats
        self._loop = loop
        self._state = _State.CONNECTING
        self._ready: asyncio.Future[bool] = loop.create_future()
        self._stream = BridgeStream(self, params, ssl_context=ssl_context,
                                    use_tls=config.tls == "required",
                                    keepalive=config.keepalive, loop=loop,
                                    proxy_protocol=config.proxy_protocol,
                                    max_stanza_bytes=config.max_stanza_bytes,
                                    max_stanza_depth=config.max_stanza_depth)
        self._task: asyncio.Task[None] | None = None

    def _start(self) -> None:
        self._task = self._loop.create_task(self._connect())

    # -- bosh.ports.Upstream -----------------------------------------------------------

    def send(self, elements: Sequence[ClientElement]) -> None:
        """Write client elements upstream; those :func:`allowed_upstream` refuses are dropped.

        Refusing TLS, stream and compression elements keeps a client from tampering with
        the hop we own (design.md section 5); dropping, rather than failing the session,
        matches what servers do with unknown extensions.
        """
        if self._state is not _State.OPEN:
            if elements and self._state is _State.CONNECTING:
                # The session answers the creation request only after upstream_ready, so a
                # client cannot legitimately send before; say so rather than lose silently.
                log.info("dropped %d client element(s) for %s: stream not open yet",
                         len(elements), self._params.to)
            return
        for element in elements:
            if allowed_upstream(element.namespace, element.name):
                self._stream.send_element(element.data)
            else:
                self._stats.dropped_elements += 1
                log.info("dropped client element {%s}%s for %s (not allowed upstream)",
                         element.namespace, element.name, self._params.to)

    def restart(self, params: StreamParams) -> None:
        """XEP-0206 §5: new parser and stream header on the same TCP connection."""
        if self._state is not _State.OPEN:
            return
        self._params = params
        self._stream.restart(build_stream_header(params))

    def close(self, end_stream: bool = True) -> None:
        """Close the connection, with ``</stream:stream>`` first when ``end_stream`` and the
        stream is open. Without it the server keeps an XEP-0198 session resumable (§5).
        Idempotent; never calls ``upstream_closed``.
        """
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._stream.shutdown(send_footer=end_stream)
        if not self._ready.done():
            self._ready.set_result(False)

    def finish(self) -> None:
        """RFC 6120 §4.4: send ``</stream:stream>`` and read on until the server's closing
        tag; what it sent before seeing ours is still delivered, then ``upstream_closed``."""
        if self._state is not _State.OPEN:
            return
        self._state = _State.FINISHING
        self._stream.finish()

    def pause_reading(self) -> None:
        """Stop reading from the server while the session's outbound queue is too full."""
        self._stream.pause_reading()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        self._stream.resume_reading()

    # -- connecting --------------------------------------------------------------------

    async def _connect(self) -> None:
        reason = "connect timed out"
        try:
            # One deadline for DNS + TCP + TLS + the post-TLS features.
            async with asyncio.timeout(self._config.connect_timeout):
                targets = await self._targets(plan_route(self._config, self._params))
                if not targets:
                    reason = "no upstream address (SRV target '.')"
                    raise LookupError(reason)
                await self._open_tcp(targets)
                await self._ready
                self._task = None  # finished: do not keep the task object per session
                return
        except TimeoutError:
            reason = f"could not open the stream within {self._config.connect_timeout:g} s"
        except asyncio.CancelledError:
            if self._state is _State.CLOSED:
                return  # close() while connecting
            raise
        except LookupError:
            pass
        except OSError as exc:
            reason = f"connect failed: {exc}"
        except Exception as exc:  # never let a bug leave the session waiting forever
            log.exception("unexpected error opening upstream for %s", self._params.to)
            reason = f"internal error: {exc!r}"
        if self._state is _State.CONNECTING:
            self._stream.shutdown(send_footer=False)
            self._report_closed(None, reason)

    async def _targets(self, plan: RoutePlan) -> list[tuple[str, int]]:
        if plan.srv_domain is None:
            return list(plan.fallback)
        try:
            answers = await self._srv_lookup(plan.srv_domain)
        except Exception as exc:  # DNS errors mean "no SRV record": use the fallback
            log.info("SRV lookup for %s failed: %s", plan.srv_domain, exc)
            answers = []
        return order_srv_answers(answers, plan.fallback)

    async def _open_tcp(self, targets: list[tuple[str, int]]) -> None:
        """Try the targets in order (RFC 6120 §3.2.1 step 8); raise the last error."""
        last: OSError | None = None
        for host, port in targets:
            try:
                await self._loop.create_connection(lambda: self._stream, host, port)
                return
            except OSError as exc:
                log.info("upstream %s:%d for %s: %s", host, port, self._params.to, exc)
                last = exc
        assert last is not None
        raise last

    # -- StreamOwner callbacks -----------------------------------------------------------

    def stream_ready(self, header: Mapping[str, str], features: ET.Element | None) -> None:
        if self._state is not _State.CONNECTING:
            return
        self._state = _State.OPEN
        self._stats.ready += 1
        if not self._ready.done():
            self._ready.set_result(True)
        # XEP-0206 §4: from, id (authid) and version of the post-TLS header.
        info = _stream_info(header)
        data = serialize(filter_features(features)) if features is not None else b""
        self._call("upstream_ready", self._listener.upstream_ready, info, data)

    def stream_header(self, header: Mapping[str, str]) -> None:
        if self._state is not _State.OPEN:
            return
        info = _stream_info(header)
        self._call("upstream_header", self._listener.upstream_header, info)

    def stream_elements(self, elements: list[ET.Element]) -> None:
        if self._state not in (_State.OPEN, _State.FINISHING) or not elements:
            return
        # Features after a restart are filtered like the first ones (no -PLUS after SASL
        # either: the client never saw our TLS session).
        data = [serialize(filter_features(e)) if is_features(e) else serialize(e)
                for e in elements]
        self._call("upstream_elements", self._listener.upstream_elements, data)

    def stream_writable(self, writable: bool) -> None:
        if self._state is _State.OPEN or self._state is _State.FINISHING:
            self._call("upstream_writable", self._listener.upstream_writable, writable)

    def stream_ended(self, error: ET.Element | None, reason: str) -> None:
        if self._state in (_State.CLOSED, _State.ENDED):
            return
        if not self._ready.done():
            self._ready.set_result(False)
        if self._stream.over_limit:
            self._stats.over_limit += 1
        # RFC 6120 §4.9: the server's stream error goes to the client as is.
        self._report_closed(serialize(error) if error is not None else None, reason)

    # -- helpers -----------------------------------------------------------------------

    def _report_closed(self, stream_error: bytes | None, reason: str) -> None:
        if self._state in (_State.CLOSED, _State.ENDED):
            return
        if self._state is _State.CONNECTING:
            self._stats.failed += 1
        else:
            self._stats.ended += 1
        self._state = _State.ENDED
        log.info("upstream for %s closed (%s): %s", self._params.to,
                 "stream error" if stream_error is not None else "no stream error", reason)
        self._call("upstream_closed", self._listener.upstream_closed, stream_error)

    def _call(self, name: str, fn: Callable[..., None], *args: object) -> None:
        # An exception escaping into asyncio's data_received path would kill the
        # transport; the session's bug must not take the stream down with it.
        try:
            fn(*args)
        except Exception:
            self._stats.listener_errors += 1
            log.exception("listener %s raised for upstream %s", name, self._params.to)


def _stream_info(header: Mapping[str, str]) -> StreamInfo:
    # XEP-0206 §4 / RFC 7395 §3.4: what the client is told of the server's stream header.
    return StreamInfo(from_=header.get("from"), id=header.get("id"),
                      version=header.get("version"), lang=header.get(_XML_LANG))


_XML_LANG = f"{{{NS_XML}}}lang"


class XmppUpstreamFactory:
    """Opens upstream XMPP streams (``bosh.ports.UpstreamFactory``).

    :param config: the ``[upstream]`` settings.
    :param ssl_context: override the shared context (tests); built from ``config`` otherwise.
    :param srv_lookup: override SRV resolution (tests); slixmpp's resolver otherwise.
    """

    def __init__(self, config: UpstreamConfig, *, ssl_context: ssl.SSLContext | None = None,
                 srv_lookup: SrvLookup | None = None) -> None:
        self._config = config
        # ONE context for every stream: building one per stream costs ~1.15 MiB and a
        # lot of CPU (design.md section 5). Also passed for tls='none' so that slixmpp
        # does not build one per stream.
        self._ssl_context = ssl_context if ssl_context is not None else make_ssl_context(config)
        self._srv_lookup: SrvLookup = srv_lookup if srv_lookup is not None else _slixmpp_srv_lookup
        self.stats = BridgeStats()

    def counters(self) -> dict[str, int]:
        """The bridge's counters for ``/metrics`` (``bosh_bridge_events_total``)."""
        out = dataclasses.asdict(self.stats)
        out["handler_errors"] = BridgeStream.total_handler_errors
        return out

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The shared client context."""
        return self._ssl_context

    def open(self, params: StreamParams, listener: UpstreamListener) -> XmppUpstream:
        """Start connecting in the background; must be called on the running loop."""
        loop = asyncio.get_running_loop()
        upstream = XmppUpstream(params, listener, config=self._config,
                                ssl_context=self._ssl_context, srv_lookup=self._srv_lookup,
                                stats=self.stats, loop=loop)
        self.stats.opened += 1
        upstream._start()
        return upstream
