"""CPU per pushed element through the bridge's read path, without sockets.

    .venv/bin/python scripts/bench/bridge_micro.py

Feeds 50,000 ``<message/>`` stanzas (one per ``data_received``, as in a push) into an open
``BridgeStream`` + ``XmppUpstream`` pair whose listener does nothing, and prints the
microseconds per element: parse, dispatch, serialize (xmpp_bridge/xml.py), hand-over.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bosh.config import UpstreamConfig  # noqa: E402
from bosh.ports import StreamParams  # noqa: E402
from xmpp_bridge.upstream import XmppUpstream, BridgeStats, _State  # noqa: E402
from xmpp_bridge.stream import _State as _SState  # noqa: E402


class _Null:
    def upstream_ready(self, *_: Any) -> None: ...
    def upstream_elements(self, *_: Any) -> None: ...
    def upstream_closed(self, *_: Any) -> None: ...


class _Transport(asyncio.Transport):
    def write(self, data: Any) -> None: ...
    def is_closing(self) -> bool: return False


async def main(n: int = 50_000) -> None:
    loop = asyncio.get_running_loop()
    params = StreamParams(to="localhost", lang="en", from_=None, version="1.0", route=None)
    up = XmppUpstream(params, _Null(), config=UpstreamConfig(keepalive=0), ssl_context=ssl.create_default_context(),
                      srv_lookup=None, stats=BridgeStats(), loop=loop)  # type: ignore[arg-type]
    s = up._stream
    s.transport = _Transport()
    s.init_parser()
    s.data_received(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
                    b"version='1.0' from='localhost' id='x'>")
    s._state = _SState.OPEN
    up._state = _State.OPEN
    chunks = [(f"<message to='u{i}@localhost/bench' from='sender@localhost/bench' type='chat' id='b{i}'>"
               f"<body>m{i}t{time.perf_counter_ns()}</body></message>").encode() for i in range(n)]
    t0 = time.process_time()
    for c in chunks:
        s.data_received(c)
    dt = time.process_time() - t0
    print(f"bridge read path: {dt / n * 1e6:.1f} us CPU per pushed element ({n} elements)")


if __name__ == "__main__":
    asyncio.run(main())
