"""Reading a hand-written HTTP/1.1 exchange: the status line and headers of an answer.

Shared by the raw-socket tests (``tests/faults/_ops.py``: :func:`read_response`) and the
WebSocket client's hand-written upgrade (``tests/support/wsclient.py``: ``raw_handshake``).
"""

from __future__ import annotations

import asyncio

__all__ = ["read_head"]


async def read_head(reader: asyncio.StreamReader, what: str = "an HTTP answer"
                    ) -> tuple[int, dict[str, str]]:
    """The status code and the headers (lower-case names) of the next answer on ``reader``,
    which is left at the first byte of the body. ``ConnectionError`` if the peer closes
    before a status line."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError(f"connection closed before {what}")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers
