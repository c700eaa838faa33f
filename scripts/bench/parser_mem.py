"""RSS per stream parser after a login-like exchange: xml.etree (expat) against lxml (libxml2).

    .venv/bin/python scripts/bench/parser_mem.py [N]      # default 2000 parsers of each kind

Each kind runs in a fresh child process (so one's freed memory does not serve the other):
N pull parsers, each fed a server stream header, features, a bind result, a presence and a
message, with the root cleared after each element as the bridge does; RSS after minus before,
per parser. This is the part of a session's memory that the choice of parser decides
(docs/performance.md, optimisation 8).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import rss_kib  # noqa: E402

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='localhost' "
          b"version='1.0' xml:lang='en'>")
STANZAS = [
    b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind>"
    b"<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>"
    b"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://prosody.im' ver='v'/>"
    b"<sm xmlns='urn:xmpp:sm:3'/><csi xmlns='urn:xmpp:csi:0'/></stream:features>",
    b"<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    b"<jid>u1@localhost/r</jid></bind></iq>",
    b"<presence from='u1@localhost/r' to='u1@localhost/r'><c xmlns='http://jabber.org/protocol/caps'"
    b" hash='sha-1' node='x' ver='y'/></presence>",
    b"<message from='sender@localhost/x' to='u1@localhost/r' type='chat' id='m1'>"
    b"<body>m1t123</body></message>",
]


def one(kind: str) -> Any:
    if kind == "etree":
        import xml.etree.ElementTree as ET
        parser: Any = ET.XMLPullParser(("start", "end"))
    else:
        from lxml import etree
        parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False,
                                     no_network=True, remove_comments=True, remove_pis=True,
                                     load_dtd=False)
    root = None
    for data in [HEADER, *STANZAS]:
        parser.feed(data)
        for event, elem in parser.read_events():
            if root is None:
                root = elem
            elif event == "end" and elem is not root:
                root.clear()
    return parser, root


def child(kind: str, n: int) -> None:
    one(kind)  # imports and first-use allocations outside the measurement
    gc.collect()
    before = rss_kib(os.getpid())
    keep = [one(kind) for _ in range(n)]
    gc.collect()
    print(f"{(rss_kib(os.getpid()) - before) / n:.1f}")
    del keep


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for kind in ("etree", "lxml"):
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)],
                             capture_output=True, text=True, check=True).stdout.strip()
        print(f"{kind:6s}: {out} KiB RSS per stream parser ({n} parsers, after a login)")


if __name__ == "__main__":
    main()
