"""The HTTP layer (aiohttp only): routes, CORS, status codes, Content-Type. Thin on purpose.

Every BOSH answer is a complete ``web.Response`` with Content-Length and no chunked coding
(XEP-0124 §5). The request's Content-Type is ignored and the body is read as raw bytes,
never form-decoded (§5, checklist #5).
"""

from __future__ import annotations

import gzip
import html
import logging
import zlib
from typing import TYPE_CHECKING

from aiohttp import web

from bosh import discovery
from bosh.config import DiscoveryConfig, HttpConfig, WebSocketConfig
from bosh.driver import DROP, Manager, Reply
from bosh.errors import BoshError, Condition
from bosh.limits import client_address, forwarded_secure, parse_networks
from bosh.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bosh.session import CODINGS

if TYPE_CHECKING:
    from bosh.prebind import PrebindService
    from bosh.ws_driver import WsEndpoint

log = logging.getLogger("bosh.web")

_MIN_COMPRESS = 256  # bytes; smaller bodies are not worth the CPU

MANAGER_KEY = web.AppKey("manager", Manager)
CONFIG_KEY = web.AppKey("http_config", HttpConfig)
TRUSTED_KEY = web.AppKey("trusted_proxies", tuple)

# Fixed operational paths (documented in README "Operations" and conf/bosh-cm.toml).
HEALTHZ_PATH = "/healthz"   # 200 while the process runs
READYZ_PATH = "/readyz"     # 200 while accepting new sessions, 503 while draining
METRICS_PATH = "/metrics"   # Prometheus text format
OPS_PATHS = (HEALTHZ_PATH, READYZ_PATH, METRICS_PATH)
HOST_META_PATH = "/.well-known/host-meta"            # XEP-0156 §3 (XRD)
HOST_META_JSON_PATH = "/.well-known/host-meta.json"  # XEP-0156 §3 (JRD)
DISCOVERY_KEY = web.AppKey("discovery", DiscoveryConfig)

_INFO_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>bosh-cm</title></head>
<body><h1>bosh-cm</h1>
<p>This is a BOSH endpoint (XEP-0124 / XEP-0206) for XMPP clients. Point a web chat client
such as Converse.js or a Strophe.js application at <code>{url}</code>.</p>
<p>Sessions open now: {sessions}.</p></body></html>
"""


def _cors_headers(request: web.Request, cfg: HttpConfig) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if "*" in cfg.cors_origins:
        allow = "*"
    elif origin is not None and origin in cfg.cors_origins:
        allow = origin  # echo the allowed origin back
    else:
        return {}
    headers = {
        "Access-Control-Allow-Origin": allow,
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": "86400",
    }
    if allow != "*":
        headers["Vary"] = "Origin"
    return headers


def _accepted_coding(request: web.Request, reply: Reply) -> str | None:
    """§5/§7.1: compress only with a coding both the session's 'accept' attribute and the
    request's Accept-Encoding header allow (checklist #4)."""
    if not reply.codings or len(reply.body) < _MIN_COMPRESS:
        return None
    header = request.headers.get("Accept-Encoding", "")
    offered = set()
    for part in header.split(","):
        coding, _, params = part.partition(";")
        q = params.replace(" ", "").lower()
        if q.startswith("q=") and q[2:].strip("0.") == "":
            continue  # "gzip;q=0" means not acceptable (RFC 9110 §12.5.3)
        offered.add(coding.strip().lower())
    return next((c for c in reply.codings if c in offered), None)


def _response(request: web.Request, reply: Reply) -> web.Response:
    headers = _cors_headers(request, request.app[CONFIG_KEY])
    headers["Content-Type"] = reply.content_type
    headers["Cache-Control"] = "no-store"
    body = reply.body
    coding = _accepted_coding(request, reply)
    if coding is not None:
        body = gzip.compress(body, 6) if coding == "gzip" else zlib.compress(body, 6)
        headers["Content-Encoding"] = coding
        headers["Vary"] = "Accept-Encoding" if "Vary" not in headers else "Origin, Accept-Encoding"
    # A complete body: aiohttp sends Content-Length, never chunked (§5, checklist #3).
    return web.Response(status=reply.status, body=body, headers=headers)


def _decode(data: bytes, coding: str, limit: int) -> bytes:
    """Undo a request Content-Encoding we advertised in 'accept' (§7.2), bounded by the
    body size limit so a compression bomb costs nothing."""
    if coding == "identity":
        return data
    if coding not in CODINGS:
        raise BoshError(Condition.BAD_REQUEST, f"content coding not offered: {coding!r}")
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise BoshError(Condition.BAD_REQUEST, "corrupt compressed body") from None
    if len(out) > limit:
        raise BoshError(Condition.POLICY_VIOLATION, "decoded body too large")
    if not inflater.eof:
        raise BoshError(Condition.BAD_REQUEST, "truncated compressed body")
    return out


def _peer(request: web.Request) -> str | None:
    transport = request.transport
    if transport is not None:
        peername = transport.get_extra_info("peername")
        if isinstance(peername, (tuple, list)) and peername:
            return str(peername[0])
    return None


def request_client_ip(request: web.Request) -> str:
    """The client address for limits and logs: X-Forwarded-For only from trusted proxies."""
    return client_address(_peer(request), request.headers.getall("X-Forwarded-For", []),
                          request.app[TRUSTED_KEY])


def request_secure(request: web.Request) -> bool:
    """https directly, or X-Forwarded-Proto: https from a trusted proxy (§19.1)."""
    return forwarded_secure(request.secure, _peer(request),
                            request.headers.getall("X-Forwarded-Proto", []), request.app[TRUSTED_KEY])


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or its first ``limit`` bytes. ``StreamReader.read(n)`` returns what
    is buffered so far, so a body split over several TCP segments needs a loop."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await request.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _too_large(request: web.Request) -> web.Response:
    """policy-violation for an oversized body; the connection is closed afterwards so
    the rest of the body is never read (aiohttp would otherwise drain it)."""
    manager = request.app[MANAGER_KEY]
    log.info("request body over %d bytes from %s refused", request.app[CONFIG_KEY].max_body_bytes,
             request_client_ip(request))
    resp = _response(request, manager.limit_hit("body_size"))
    resp.force_close()
    return resp


async def handle_post(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    manager = request.app[MANAGER_KEY]
    length = request.content_length
    if length is not None and length > cfg.max_body_bytes:
        # Refuse without reading it all (checklist REC under §O).
        return _too_large(request)
    # Chunked uploads have no Content-Length: read one byte past the bound, no more.
    data = await read_body(request, cfg.max_body_bytes + 1)
    if len(data) > cfg.max_body_bytes:
        return _too_large(request)
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    try:
        data = _decode(data, coding, cfg.max_body_bytes)
    except BoshError as exc:
        return _response(request, manager.error(exc.condition))
    transport = request.transport

    def is_closing() -> bool:
        return transport is None or transport.is_closing()

    reply = await manager.handle(data, is_closing, request_client_ip(request),
                                 secure=request_secure(request))
    if reply is DROP:
        # XEP-0124 §19.1: a session that began encrypted is never continued in the clear;
        # close this connection without an answer and leave the session running (#128).
        if transport is not None:
            transport.abort()
        raise web.HTTPBadRequest()  # never written: the connection is gone
    return _response(request, reply)


async def handle_host_meta(request: web.Request) -> web.Response:
    """XEP-0156 discovery; any origin may read it (Converse.js fetches it cross-origin)."""
    d = request.app[DISCOVERY_KEY]
    as_json = request.path == HOST_META_JSON_PATH
    body = (discovery.render_jrd if as_json else discovery.render_xrd)(d.bosh_url, d.websocket_url)
    resp = web.Response(body=body, headers={"Access-Control-Allow-Origin": "*",
                                            "Cache-Control": "max-age=3600"})
    resp.headers["Content-Type"] = discovery.JRD_TYPE if as_json else discovery.XRD_TYPE
    return resp


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


async def handle_readyz(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    if manager.hub.accepting:
        return web.Response(text="ready\n", headers={"Cache-Control": "no-store"})
    return web.Response(status=503, text="draining\n", headers={"Cache-Control": "no-store"})


async def handle_metrics(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    resp = web.Response(body=manager.metrics.render(), headers={"Cache-Control": "no-store"})
    resp.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return resp


async def handle_get(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    page = _INFO_PAGE.format(url=html.escape(str(request.url)), sessions=len(manager.hub.registry))
    headers = _cors_headers(request, request.app[CONFIG_KEY])
    return web.Response(text=page, content_type="text/html", headers=headers)


async def handle_options(request: web.Request) -> web.Response:
    headers = _cors_headers(request, request.app[CONFIG_KEY])
    return web.Response(status=204 if headers else 403, headers=headers)


def make_app(manager: Manager, cfg: HttpConfig, *, websocket: "WsEndpoint | None" = None,
             ws_config: WebSocketConfig | None = None,
             discovery_config: DiscoveryConfig | None = None,
             prebind: "PrebindService | None" = None) -> web.Application:
    """One listener for every transport: BOSH at ``cfg.path``, WebSocket (when ``websocket``
    is given) at ``ws_config.path``, the prebind API (when ``prebind`` is given) at its
    path, discovery and the operations endpoints."""
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[MANAGER_KEY] = manager
    app[CONFIG_KEY] = cfg
    app[TRUSTED_KEY] = parse_networks(cfg.trusted_proxies)
    app[DISCOVERY_KEY] = discovery_config if discovery_config is not None else DiscoveryConfig()
    if websocket is not None:
        from bosh import ws_web

        wcfg = ws_config if ws_config is not None else WebSocketConfig()
        app[ws_web.WS_ENDPOINT_KEY] = websocket
        app[ws_web.WS_CONFIG_KEY] = wcfg
        # [] = the BOSH CORS origins: one list of trusted pages for both transports.
        app[ws_web.ALLOWED_ORIGINS_KEY] = wcfg.origins or cfg.cors_origins
        app.router.add_get(wcfg.path, ws_web.handle_websocket)
    if prebind is not None:
        from bosh import prebind_web

        prebind_web.add_routes(app, prebind)
    app.router.add_get(HOST_META_PATH, handle_host_meta)
    app.router.add_get(HOST_META_JSON_PATH, handle_host_meta)
    app.router.add_get(HEALTHZ_PATH, handle_healthz)
    app.router.add_get(READYZ_PATH, handle_readyz)
    app.router.add_get(METRICS_PATH, handle_metrics)
    app.router.add_post(cfg.path, handle_post)
    app.router.add_get(cfg.path, handle_get)
    app.router.add_route("OPTIONS", cfg.path, handle_options)
    return app


def make_runner(app: web.Application, shutdown_grace: float) -> web.AppRunner:
    """The runner bosh-cm serves ``app`` with.

    * handler cancellation: a client that drops a held request is noticed at once;
    * ``lingering_time=0``: after refusing an oversized body the connection is closed
      instead of aiohttp reading and discarding the rest for up to 10 s;
    * ``shutdown_timeout``: how long a drain waits for answers to be written;
    * ``auto_decompress=False``: request Content-Encoding is undone by ``_decode`` alone,
      bounded by ``max_body_bytes`` (§7.2 'accept'; aiohttp would inflate it first).
    """
    return web.AppRunner(app, handler_cancellation=True, access_log=None,
                         shutdown_timeout=shutdown_grace, lingering_time=0,
                         auto_decompress=False)
