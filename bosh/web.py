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

from aiohttp import web

from bosh.config import HttpConfig
from bosh.driver import Manager, Reply, error_reply
from bosh.errors import BoshError, Condition
from bosh.session import CODINGS

log = logging.getLogger("bosh.web")

_MIN_COMPRESS = 256  # bytes; smaller bodies are not worth the CPU

MANAGER_KEY = web.AppKey("manager", Manager)
CONFIG_KEY = web.AppKey("http_config", HttpConfig)

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
    offered = {part.split(";")[0].strip().lower() for part in header.split(",")}
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
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit:
        raise BoshError(Condition.POLICY_VIOLATION, "decoded body too large")
    if not inflater.eof:
        raise BoshError(Condition.BAD_REQUEST, "truncated compressed body")
    return out


async def handle_post(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    manager = request.app[MANAGER_KEY]
    length = request.content_length
    if length is not None and length > cfg.max_body_bytes:
        # Refuse without reading it all (checklist REC under §O).
        return _response(request, error_reply(Condition.POLICY_VIOLATION))
    data = await request.content.read(cfg.max_body_bytes + 1)
    if len(data) > cfg.max_body_bytes:
        return _response(request, error_reply(Condition.POLICY_VIOLATION))
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding != "identity":
        if coding not in CODINGS:
            return _response(request, error_reply(Condition.BAD_REQUEST))
        try:
            data = _decode(data, coding, cfg.max_body_bytes)
        except BoshError as exc:
            return _response(request, error_reply(exc.condition))
        except zlib.error:
            return _response(request, error_reply(Condition.BAD_REQUEST))
    transport = request.transport

    def is_closing() -> bool:
        return transport is None or transport.is_closing()

    reply = await manager.handle(data, is_closing)
    return _response(request, reply)


async def handle_get(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    page = _INFO_PAGE.format(url=html.escape(str(request.url)), sessions=len(manager.registry))
    headers = _cors_headers(request, request.app[CONFIG_KEY])
    return web.Response(text=page, content_type="text/html", headers=headers)


async def handle_options(request: web.Request) -> web.Response:
    headers = _cors_headers(request, request.app[CONFIG_KEY])
    return web.Response(status=204 if headers else 403, headers=headers)


def make_app(manager: Manager, cfg: HttpConfig) -> web.Application:
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[MANAGER_KEY] = manager
    app[CONFIG_KEY] = cfg
    app.router.add_post(cfg.path, handle_post)
    app.router.add_get(cfg.path, handle_get)
    app.router.add_route("OPTIONS", cfg.path, handle_options)
    return app

