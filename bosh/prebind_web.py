"""The prebind API's HTTP side (aiohttp only): ``POST [prebind] path``. Thin on purpose.

The request is read (at most :data:`bosh.prebind.MAX_REQUEST_BYTES`) and handed to
:class:`bosh.prebind.PrebindService`, which checks the key, the rate and the JSON and logs
the user in. Every answer is JSON with ``Cache-Control: no-store`` (a success carries a live
session). No CORS headers: browsers must not call this API, the web app's server does.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from bosh.prebind import MAX_REQUEST_BYTES, PrebindError, PrebindService
from bosh.web import read_body, request_client_ip, request_secure

__all__ = ["PREBIND_KEY", "add_routes", "handle_prebind"]

PREBIND_KEY = web.AppKey("prebind", PrebindService)
_REALM = 'Bearer realm="bosh-cm prebind"'


def add_routes(app: web.Application, service: PrebindService) -> None:
    """``POST service.path``; other methods get 405 from aiohttp."""
    app[PREBIND_KEY] = service
    app.router.add_post(service.path, handle_prebind)


def _json(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(doc).encode(),
                        content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _error(exc: PrebindError) -> web.Response:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = _REALM  # RFC 6750 §3
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))  # RFC 9110 §10.2.3
    return _json(exc.status, {"error": exc.message, "condition": exc.condition}, headers)


async def handle_prebind(request: web.Request) -> web.Response:
    service = request.app[PREBIND_KEY]
    length = request.content_length
    data = b"" if length is not None and length > MAX_REQUEST_BYTES else \
        await read_body(request, MAX_REQUEST_BYTES + 1)
    if length is not None and length > MAX_REQUEST_BYTES or len(data) > MAX_REQUEST_BYTES:
        resp = _error(PrebindError(413, "policy-violation",
                                   f"request body over {MAX_REQUEST_BYTES} bytes"))
        resp.force_close()  # the rest of the body is never read
        return resp
    try:
        result = await service.handle(data, request.headers.get("Authorization"),
                                      request_client_ip(request), request_secure(request))
    except PrebindError as exc:
        return _error(exc)
    return _json(200, result.as_json())
