"""Memory of N real upstream streams (STARTTLS to a throwaway Prosody) in this process.

    .venv/bin/python scripts/bench/mem_upstream.py 1000          # RSS per stream
    .venv/bin/python scripts/bench/mem_upstream.py 1000 --trace  # + tracemalloc top lines
    .venv/bin/python scripts/bench/mem_upstream.py 1000 --plain  # no STARTTLS: what TLS costs

What it opens is exactly what bosh-cm opens per BOSH session upstream
(``XmppUpstreamFactory.open``: TCP, header, STARTTLS, post-TLS features); no BOSH side.
RSS minus the traced Python allocations is mostly OpenSSL's per-connection state.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import rss_kib  # noqa: E402
from servers import BenchProsody  # noqa: E402

from bosh.config import UpstreamConfig  # noqa: E402
from bosh.ports import StreamParams  # noqa: E402
from xmpp_bridge.upstream import XmppUpstreamFactory  # noqa: E402


class _Listener:
    def __init__(self) -> None:
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def upstream_ready(self, *_: Any) -> None:
        self.ready.set_result(True)

    def upstream_elements(self, *_: Any) -> None:
        pass

    def upstream_closed(self, *args: Any) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"upstream closed: {args}"))


async def measure(prosody: BenchProsody, n: int, trace: bool) -> None:
    cfg = UpstreamConfig(domains=("localhost",), host="127.0.0.1", port=prosody.c2s_port,
                         ca_file=str(prosody.cert_path),
                         tls="none" if "--plain" in sys.argv else "required")
    factory = XmppUpstreamFactory(cfg)
    params = StreamParams(to="localhost", lang="en", from_=None, version="1.0", route=None)
    first = _Listener()
    ups = [factory.open(params, first)]  # warm-up: imports, shared buffers, first allocations
    await first.ready
    gc.collect()
    rss0 = rss_kib(os.getpid())
    objs0 = len(gc.get_objects())
    if trace:
        tracemalloc.start(10)
        snap0 = tracemalloc.take_snapshot()
    cpu0 = time.process_time()
    for _ in range(0, n, 50):
        batch = [_Listener() for _ in range(50)]
        ups += [factory.open(params, x) for x in batch]
        await asyncio.gather(*(x.ready for x in batch))
    cpu_ms = (time.process_time() - cpu0) * 1000 / n
    await asyncio.sleep(1)
    gc.collect()
    print(f"RSS per upstream stream: {(rss_kib(os.getpid()) - rss0) / n:.1f} KiB ({n} streams)")
    print(f"CPU per stream opened (TCP, header, STARTTLS, post-TLS features): {cpu_ms:.2f} ms"
          + (" (tracemalloc on: inflated)" if trace else ""))
    # Every tracked object is visited by each full collection of the cyclic GC.
    print(f"GC-tracked objects per upstream stream: {(len(gc.get_objects()) - objs0) / n:.0f}")
    if "--types" in sys.argv:
        from collections import Counter
        before = Counter(type(o).__name__ for o in gc.get_objects())
        print("   most common types now:", before.most_common(25))
    if trace:
        stats = tracemalloc.take_snapshot().compare_to(snap0, "lineno")
        print(f"traced Python allocations per stream: {sum(s.size_diff for s in stats) / n / 1024:.1f} KiB")
        for s in stats[:15]:
            print(f"{s.size_diff / n:8.0f} B {s.count_diff / n:5.1f} blocks  {s.traceback}")
        print("by file:")
        for s in tracemalloc.take_snapshot().compare_to(snap0, "filename")[:12]:
            print(f"{s.size_diff / n:8.0f} B {s.count_diff / n:5.1f} blocks  {s.traceback}")
    for u in ups:
        u.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    prosody = BenchProsody(Path(tempfile.mkdtemp(prefix="bosh-mem-")))
    prosody.start()
    try:
        asyncio.run(measure(prosody, n, "--trace" in sys.argv))
    finally:
        prosody.stop()


if __name__ == "__main__":
    main()
