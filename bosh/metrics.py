"""Prometheus metrics for one bosh-cm process (prometheus-client; no asyncio, no aiohttp).

Each :class:`Metrics` has its own ``CollectorRegistry`` so that several managers (tests)
never share counters. ``GET /metrics`` renders :meth:`Metrics.render`.

Names (all prefixed ``bosh_``):

====================================  =========  ==============================================
bosh_sessions_open                    gauge      sessions open now
bosh_sessions_created_total           counter    sessions created
bosh_sessions_ended_total{condition}  counter    sessions ended; condition "none" = normal end
bosh_requests_total                   counter    BOSH POSTs handled
bosh_requests_held                    gauge      requests held open right now
bosh_upstreams_open                   gauge      upstream XMPP streams open or connecting
bosh_stanzas_total{direction}         counter    payload elements, direction "in" (client to
                                                 server) or "out" (server to client)
bosh_bytes_total{direction}           counter    bytes of those elements
bosh_upstream_connect_seconds         histogram  upstream connect + TLS + features time
bosh_response_seconds                 histogram  request arrival to answer ready
bosh_errors_total{condition}          counter    terminal error answers by XEP-0124 condition
bosh_limit_hits_total{limit}          counter    requests refused by a limit
bosh_transport_sessions_open          gauge      sessions open now, by transport
  {transport}
bosh_transport_sessions_created_total counter    sessions created, by transport
  {transport}
bosh_transport_sessions_ended_total   counter    sessions ended, by transport and condition
  {transport,condition}                          (a stream error condition for websocket)
bosh_transport_stanzas_total          counter    elements passed, by transport and direction
  {transport,direction}
bosh_node_info{node_id}               gauge      1, labelled with [cluster] node_id ("" standalone)
bosh_bridge_events_total{event}       counter    upstream bridge: opened, ready, failed, ended,
                                                 dropped_elements, listener_errors, handler_errors,
                                                 over_limit (a server element over
                                                 [upstream] max_stanza_bytes/_depth)
bosh_websocket_closes_total{code}     counter    WebSocket connections closed by bosh-cm, by
                                                 close code (1012 = released for resumption)
====================================  =========  ==============================================

The unlabelled series count every transport together (their names and meaning predate the
WebSocket transport); ``transport`` is ``bosh`` or ``websocket``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _BridgeCollector(Collector):
    def __init__(self, counters: Callable[[], Mapping[str, int]]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("bosh_bridge_events", "Upstream bridge events by kind",
                                     labels=["event"])
        for event, value in sorted(self._counters().items()):
            family.add_metric([event], value)
        yield family


class Flow(NamedTuple):
    """The children of the per-direction counters for one transport."""

    stanzas: Any
    bytes: Any
    transport_stanzas: Any

    def add(self, n: int, size: int) -> None:
        self.stanzas.inc(n)
        self.bytes.inc(size)
        self.transport_stanzas.inc(n)


class Metrics:
    """The process's counters; the driver and the web layer update them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.sessions_open = Gauge("bosh_sessions_open", "Sessions open now", registry=r)
        self.sessions_created = Counter("bosh_sessions_created", "Sessions created", registry=r)
        self.sessions_ended = Counter("bosh_sessions_ended", "Sessions ended by condition",
                                      ["condition"], registry=r)
        self.requests = Counter("bosh_requests", "BOSH requests handled", registry=r)
        self.requests_held = Gauge("bosh_requests_held", "Requests held open now", registry=r)
        self.upstreams_open = Gauge("bosh_upstreams_open", "Upstream streams open or connecting",
                                    registry=r)
        self.stanzas = Counter("bosh_stanzas", "Payload elements passed", ["direction"], registry=r)
        self.bytes = Counter("bosh_bytes", "Bytes of payload elements passed", ["direction"],
                             registry=r)
        self.upstream_connect = Histogram("bosh_upstream_connect_seconds",
                                          "Upstream connect, TLS and features time",
                                          buckets=_CONNECT_BUCKETS, registry=r)
        self.response_latency = Histogram("bosh_response_seconds",
                                          "Time from request arrival to its answer",
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.errors = Counter("bosh_errors", "Terminal error answers by condition", ["condition"],
                              registry=r)
        self.limit_hits = Counter("bosh_limit_hits", "Requests refused by a limit", ["limit"],
                                  registry=r)
        self.transport_sessions_open = Gauge(
            "bosh_transport_sessions_open", "Sessions open now by transport", ["transport"], registry=r)
        self.transport_sessions_created = Counter(
            "bosh_transport_sessions_created", "Sessions created by transport", ["transport"],
            registry=r)
        self.transport_sessions_ended = Counter(
            "bosh_transport_sessions_ended", "Sessions ended by transport and condition",
            ["transport", "condition"], registry=r)
        self.transport_stanzas = Counter(
            "bosh_transport_stanzas", "Elements passed by transport and direction",
            ["transport", "direction"], registry=r)
        self.node_info = Gauge("bosh_node_info", "This node's [cluster] node_id", ["node_id"],
                               registry=r)
        self.websocket_closes = Counter(
            "bosh_websocket_closes", "WebSocket connections closed by bosh-cm by close code",
            ["code"], registry=r)
        self._flows: dict[tuple[str, str], Flow] = {}
        for d in ("in", "out"):  # export zeros from the start: rate() needs a first sample
            self.stanzas.labels(d)
            self.bytes.labels(d)
            for t in ("bosh", "websocket"):
                self.transport_stanzas.labels(t, d)
        for t in ("bosh", "websocket"):
            self.transport_sessions_created.labels(t)

    def flow(self, transport: str, direction: str) -> "Flow":
        """The counters one passed element updates, looked up once: ``labels()`` costs about
        3 us a call, and this runs for every stanza (docs/performance.md)."""
        key = (transport, direction)
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = Flow(self.stanzas.labels(direction),
                                           self.bytes.labels(direction),
                                           self.transport_stanzas.labels(transport, direction))
        return flow

    def track_bridge(self, counters: Callable[[], Mapping[str, int]]) -> None:
        """Export the upstream bridge's own counters (read at scrape time) as
        ``bosh_bridge_events_total{event}``: streams opened/ready/failed/ended, client
        elements dropped by the filter, and handler errors slixmpp would otherwise swallow."""
        self.registry.register(_BridgeCollector(counters))

    def render(self) -> bytes:
        return generate_latest(self.registry)
