"""HAProxy configuration for N bosh-cm nodes (issue 9), as a pure function.

``bosh-cm-cluster`` writes the output of :func:`render_haproxy_cfg` to ``RUN_DIR/haproxy.cfg``;
``conf/haproxy-bosh.cfg`` is the same structure, commented, for nodes on several hosts.
Checked against Debian's HAProxy 2.6 (``haproxy -c`` and real traffic, see
``tests/integration/test_cluster.py``).

Routing. A BOSH request names its session in the ``sid`` attribute of ``<body/>``, and a
cluster node's sids start with its node id and a dot (``n2.Xk3...``, ``bosh.registry``). With
``option http-buffer-request`` HAProxy reads the body before choosing a server, cuts
everything up to ``sid=`` and its quote off, and keeps what comes before the next ``.``:

    req.body,regsub(^[^>]*[[:space:]]sid=.,),field(1,.)

(no ``(`` and no ``,`` inside the unquoted converter arguments: design.md §10). Two backends
over the same nodes:

* ``bosh_owner`` gets every POST that names a sid; ``use-server nK`` picks the owner. It is
  health-checked on ``/healthz``, so a draining node (``/readyz`` 503) still gets its own
  sessions' requests. When the owner is down the request falls back to normal balancing and
  a live node answers ``item-not-found`` (HTTP 200) at once.
* ``bosh_new`` gets creation requests (a POST without sid), WebSocket upgrades and anything
  else; ``balance leastconn``, health-checked on ``/readyz``, so a draining node gets no new
  sessions.

A connection refused (a node that just died, before two failed checks mark it down) and a
request whose server closed without an answer (it died holding the request) are retried on
another node (``retry-on conn-failure empty-response``, ``option redispatch 1``): the client
gets ``item-not-found`` rather than a 502/503, which Strophe would retry for about 100 s. So is
a creation request or WebSocket upgrade that reached a node which has begun draining before
its health check failed: the node answers 503 before creating anything (``retry-on ... 503``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["HaproxyNode", "render_haproxy_cfg", "maxconn_for_fd_limit", "bind_address",
           "SID_NODE_FETCH", "SID_PRESENT", "CHECK_INTER_MS", "CHECK_FALL", "CHECK_RISE"]

_NODE_ID = re.compile(r"[a-z0-9]{1,16}")

#: The node id of the sid in a POSTed ``<body/>`` (HAProxy sample expression).
SID_NODE_FETCH = r"req.body,regsub(^[^>]*[[:space:]]sid=.,),field(1,.)"
#: True when the ``<body>`` start tag has a ``sid`` attribute (HAProxy ACL).
SID_PRESENT = r"req.body -m reg ^[^>]*[[:space:]]sid="

#: Health checks: a node that stops answering is down after CHECK_FALL * CHECK_INTER_MS
#: (1 s), one that answers again is up after CHECK_RISE * CHECK_INTER_MS.
CHECK_INTER_MS = 500
CHECK_FALL = 2
CHECK_RISE = 2

#: Paths of a node's operations endpoints: meaningless through the balancer (a random node
#: answers) and not for the public, so the frontend answers them 404.
_OPS_PATHS = ("/healthz", "/readyz", "/metrics")


@dataclass(frozen=True, slots=True)
class HaproxyNode:
    """One bosh-cm node as HAProxy reaches it."""

    node_id: str
    host: str
    port: int


def bind_address(host: str, port: int) -> str:
    """``host:port`` as HAProxy's ``bind``/``server`` lines want it (IPv6 in brackets)."""
    h = host.strip("[]")
    if ":" in h:
        return f"[{h}]:{port}"
    return f"{h or '0.0.0.0'}:{port}"


def maxconn_for_fd_limit(fd_limit: int, nodes: int, cap: int = 100_000) -> int:
    """The largest global ``maxconn`` HAProxy accepts under ``fd_limit`` open files.

    Each proxied connection takes two descriptors (client side and server side), and
    HAProxy keeps some for its listeners, health checks, logs and the stats socket; with
    a ``maxconn`` that does not fit it refuses to start (design.md §10).
    """
    reserve = 100 + 4 * nodes
    return max(64, min(cap, (fd_limit - reserve) // 2))


def _check_nodes(nodes: Sequence[HaproxyNode]) -> None:
    if not nodes:
        raise ValueError("at least one node is needed")
    seen: set[str] = set()
    for n in nodes:
        if not _NODE_ID.fullmatch(n.node_id):
            raise ValueError(f"node id {n.node_id!r}: 1 to 16 characters a-z and 0-9")
        if n.node_id in seen:
            raise ValueError(f"node id {n.node_id!r} appears twice")
        seen.add(n.node_id)
        if not 1 <= n.port <= 65535:
            raise ValueError(f"node {n.node_id}: port {n.port} out of range")
        if not n.host or any(c.isspace() for c in n.host):
            raise ValueError(f"node {n.node_id}: bad host {n.host!r}")


def _check_path(name: str, path: str) -> None:
    if not path.startswith("/") or any(c.isspace() or c in "#'\"\\{}" for c in path):
        raise ValueError(f"{name} {path!r}: must start with '/' and hold no spaces, quotes or '#'")


def render_haproxy_cfg(nodes: Sequence[HaproxyNode], *, host: str, port: int,
                       path: str = "/http-bind", max_wait: int = 60, maxconn: int = 4096, tls_pem: str = "",
                       stats_host: str = "127.0.0.1", stats_port: int = 0,
                       stats_socket: str = "", prometheus: bool = True,
                       keep_forwarded_for: bool = True, tunnel_timeout: int = 3600,
                       private_paths: Sequence[str] = ()) -> str:
    """The HAProxy 2.6 configuration in front of ``nodes``.

    ``host``/``port``: the public listener (``[http] host``/``port`` of the base config);
    ``tls_pem`` (certificate chain and key in one PEM file) makes it HTTPS. ``max_wait``:
    ``[bosh] max_wait``; the client and server timeouts are above it, so a held request is
    never cut. ``stats_port`` (0 = none): a loopback frontend with HAProxy's own Prometheus
    exporter at ``/haproxy-metrics`` (when ``prometheus``) and its stats page at
    ``/haproxy-stats``. ``stats_socket``: a UNIX socket for the runtime API (level admin),
    used by ``bosh-cm-cluster`` to take a node out of the creation backend before a rolling
    restart. ``keep_forwarded_for=False`` drops a client's own ``X-Forwarded-For`` before
    HAProxy appends the peer address (when nothing in front of HAProxy is trusted).
    ``tunnel_timeout``: seconds an upgraded WebSocket may stay silent (bosh-cm pings every
    ``[websocket] ping_interval``). WebSocket upgrades need no rule of their own: they name
    no sid, so they go to ``bosh_new`` like creation requests. ``private_paths`` (e.g.
    ``[prebind] path``) are refused on the public listener like the operations endpoints:
    call them on a node directly, from the web app's own host.
    """
    _check_nodes(nodes)
    _check_path("path", path)
    for private in private_paths:
        _check_path("private path", private)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    if max_wait < 1:
        raise ValueError(f"max_wait {max_wait} must be at least 1")
    if maxconn < 1:
        raise ValueError(f"maxconn {maxconn} must be at least 1")
    for name, value in (("tls_pem", tls_pem), ("stats_socket", stats_socket)):
        if any(c.isspace() or c in "#'\"\\" for c in value):
            raise ValueError(f"{name} {value!r}: no spaces, quotes or '#' allowed")
    # A held BOSH request lasts up to max_wait; leave room for the network and the node's
    # answer. The same bound covers an idle keep-alive connection between two requests.
    hold = max_wait + 30
    proto = "https" if tls_pem else "http"
    check = f"check inter {CHECK_INTER_MS}ms fall {CHECK_FALL} rise {CHECK_RISE}"
    tls = f" ssl crt {tls_pem}" if tls_pem else ""
    out: list[str] = [
        "# Generated by bosh-cm-cluster (bosh/haproxy.py); rewritten at every start.",
        "# Commented version for nodes on several hosts: conf/haproxy-bosh.cfg.",
        "global",
        f"    maxconn {maxconn}",
        # Every BOSH session holds connections to its node: with the defaults (20 %/25 % of the
        # descriptors) HAProxy stops reusing idle node connections past ~2,000 sessions and
        # opens one per request (measured: 2,687 opened / 278 reused at 300 sessions under a
        # low fd limit, 479 / 2,538 with these ratios).
        "    tune.pool-low-fd-ratio 95",
        "    tune.pool-high-fd-ratio 99",
    ]
    if stats_socket:
        out.append(f"    stats socket {stats_socket} mode 600 level admin")
    out += [
        f"    hard-stop-after {2 * hold}s",
        "",
        "defaults",
        "    mode http",
        "    option forwardfor",
        "    option redispatch 1",
        "    retries 3",
        "    retry-on conn-failure empty-response 503",
        "    timeout connect 2s",
        f"    timeout client {hold}s",
        f"    timeout server {hold}s",
        f"    timeout http-keep-alive {hold}s",
        "    timeout http-request 10s",
        "    timeout queue 5s",
        f"    timeout tunnel {tunnel_timeout}s",
        "    timeout client-fin 30s",
        "    timeout check 2s",
        "",
        "frontend bosh",
        f"    bind {bind_address(host, port)}{tls}",
        "    option http-buffer-request",
        # Decoded before the match: the nodes route on the decoded path, so /%6Detrics must
        # not slip through.
        "    http-request deny deny_status 404 if { path,url_dec -m str "
        + " ".join((*_OPS_PATHS, *private_paths)) + " }",
    ]
    if not keep_forwarded_for:
        out.append("    http-request del-header X-Forwarded-For")
    out += [
        f"    http-request set-header X-Forwarded-Proto {proto}",
        f"    http-request set-var(txn.node) {SID_NODE_FETCH} if {{ method POST }} "
        f"{{ path {path} }} {{ {SID_PRESENT} }}",
        "    use_backend bosh_owner if { var(txn.node) -m found }",
        "    default_backend bosh_new",
        "",
        "backend bosh_owner",
        "    balance leastconn",
        "    option httpchk GET /healthz",
        "    http-check expect status 200",
    ]
    out += [f"    use-server {n.node_id} if {{ var(txn.node) -m str {n.node_id} }}" for n in nodes]
    out += [f"    server {n.node_id} {bind_address(n.host, n.port)} {check}" for n in nodes]
    out += [
        "",
        "backend bosh_new",
        "    balance leastconn",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
    ]
    out += [f"    server {n.node_id} {bind_address(n.host, n.port)} {check}" for n in nodes]
    if stats_port:
        out += [
            "",
            "frontend stats",
            f"    bind {bind_address(stats_host, stats_port)}",
        ]
        if prometheus:
            out.append("    http-request use-service prometheus-exporter if { path /haproxy-metrics }")
        out += [
            "    stats enable",
            "    stats uri /haproxy-stats",
            "    stats refresh 10s",
        ]
    return "\n".join(out) + "\n"
