"""A deliberately small HTTP/1.x client on asyncio streams, for black-box BOSH checks.

Why not aiohttp's client: the checks need to see the response exactly as it went over the
wire (Content-Length vs chunked framing, Content-Encoding, HTTP/1.0 without keep-alive) and
to control every request header (aiohttp adds ``Accept-Encoding`` and decompresses behind our
back). One TCP connection per request unless a :class:`Conn` is passed in.

It only ever connects to the host and port of the URL it is given.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
import zlib
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

__all__ = ["Target", "HttpResponse", "HttpError", "Conn", "request"]

MAX_RESPONSE = 16 * 1024 * 1024


class HttpError(Exception):
    """The connection failed or the response was not valid HTTP/1.x."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str
    insecure: bool = False

    @classmethod
    def parse(cls, url: str, insecure: bool = False) -> "Target":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(url, parts.scheme, parts.hostname, port, path, insecure)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.scheme != "https":
            return None
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass
class HttpResponse:
    status: int
    reason: str
    version: str                       # "HTTP/1.1"
    headers: list[tuple[str, str]]     # names lower-cased, in order
    wire: bytes                        # the entity body as framed on the wire (after de-chunking)
    body: bytes                        # ``wire`` with Content-Encoding undone
    chunked: bool
    content_length: int | None
    closed_after: bool                 # the server closed the connection after this response
    sent_at: float
    done_at: float
    decode_error: str | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def elapsed(self) -> float:
        return self.done_at - self.sent_at


@dataclass
class Conn:
    """A reusable (keep-alive) connection."""

    target: Target
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    requests: int = field(default=0)

    async def open(self, timeout: float = 5.0) -> None:
        if self.writer is not None:
            return
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.target.host, self.target.port,
                                        ssl=self.target.ssl_context(),
                                        server_hostname=self.target.host if self.target.scheme == "https" else None),
                timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise HttpError(f"cannot connect to {self.target.host}:{self.target.port}: {exc!r}") from None

    async def at_eof(self, timeout: float) -> bool:
        """True if the server closes the connection within ``timeout`` (reads nothing else)."""
        assert self.reader is not None
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except asyncio.TimeoutError:
            return False
        except (ConnectionError, OSError):
            return True
        return data == b""

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass
        self.reader = self.writer = None


def _decode(data: bytes, coding: str | None) -> bytes:
    if not coding or coding == "identity":
        return data
    if coding == "gzip" or coding == "x-gzip":
        return gzip.decompress(data)
    if coding == "deflate":
        try:
            return zlib.decompress(data)
        except zlib.error:
            return zlib.decompress(data, -zlib.MAX_WBITS)  # raw deflate, seen in the wild
    raise ValueError(f"unknown content coding {coding!r}")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(out) > MAX_RESPONSE:
            raise HttpError("response too large")


async def request(target: Target, body: bytes, headers: Mapping[str, str] | None = None, *,
                  method: str = "POST", version: str = "1.1", timeout: float = 30.0,
                  conn: Conn | None = None, keep_alive: bool = False) -> HttpResponse:
    """Send one request and read its response completely.

    Without ``conn`` a fresh connection is used and closed afterwards (HTTP/1.1 requests
    then say ``Connection: close``). The whole exchange is bounded by ``timeout``.
    """
    own = conn is None
    c = conn or Conn(target)
    try:
        return await asyncio.wait_for(
            _exchange(c, body, headers or {}, method, version, keep_alive or not own), timeout)
    except asyncio.TimeoutError:
        c.close()
        raise HttpError(f"no complete response within {timeout:.1f}s") from None
    except asyncio.CancelledError:
        c.close()
        raise
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError, ValueError) as exc:
        c.close()
        raise HttpError(f"broken response: {exc!r}") from None
    finally:
        if own:
            c.close()


async def _exchange(c: Conn, body: bytes, headers: Mapping[str, str], method: str, version: str,
                    keep_alive: bool) -> HttpResponse:
    await c.open()
    assert c.reader is not None and c.writer is not None
    lines = [f"{method} {c.target.path} HTTP/{version}", f"Host: {c.target.host_header}"]
    lower = {k.lower() for k in headers}
    for k, v in headers.items():
        lines.append(f"{k}: {v}")
    if "content-length" not in lower and (body or method == "POST"):
        lines.append(f"Content-Length: {len(body)}")
    if "connection" not in lower:
        if version == "1.1" and not keep_alive:
            lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    sent_at = time.monotonic()
    c.writer.write(head + body)
    await c.writer.drain()
    c.requests += 1

    status_line = (await c.reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {status_line!r}")
    resp_version, status = parts[0], int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    hdrs: list[tuple[str, str]] = []
    while True:
        line = (await c.reader.readuntil(b"\r\n")).decode("latin-1")
        if line == "\r\n":
            break
        name, _, value = line.partition(":")
        hdrs.append((name.strip().lower(), value.strip()))
    get = {k: v for k, v in reversed(hdrs)}
    te = get.get("transfer-encoding", "").lower()
    chunked = "chunked" in te
    clen = get.get("content-length")
    content_length = int(clen) if clen is not None and clen.isdigit() else None
    conn_hdr = get.get("connection", "").lower()
    will_close = ("close" in conn_hdr) or (resp_version == "HTTP/1.0" and "keep-alive" not in conn_hdr)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        wire = b""
    elif chunked:
        wire = await _read_chunked(c.reader)
    elif content_length is not None:
        if content_length > MAX_RESPONSE:
            raise HttpError("response too large")
        wire = await c.reader.readexactly(content_length)
    else:
        wire = await c.reader.read(MAX_RESPONSE)  # until EOF
        will_close = True
    done_at = time.monotonic()
    decode_error = None
    try:
        decoded = _decode(wire, get.get("content-encoding", "").lower() or None)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        decoded, decode_error = wire, f"cannot undo Content-Encoding: {exc!r}"
    # A caller-owned connection stays open even when the server announced a close, so the
    # caller can observe the close itself (Conn.at_eof).
    return HttpResponse(status, reason, resp_version, hdrs, wire, decoded, chunked, content_length,
                        will_close, sent_at, done_at, decode_error)
