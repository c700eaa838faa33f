"""Write docs/conformance.md from two checker runs (bosh-cm, Prosody) and the test suite.

    python scripts/conformance/report.py BOSHCM.json PROSODY.json COMMAND > docs/conformance.md

Usually called by ``compare.py --doc docs/conformance.md``. For every checklist item it shows
what bosh-cm does (implemented / declined with the reason / not applicable), the tests that
prove it (test functions under tests/ whose name, docstring or body cites ``#N``, and the
checker's own check) and the side-by-side checker results.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from conformance import checks  # noqa: E402,F401 - registers the checks
from conformance.core import CHECKS  # noqa: E402

TEST_DIRS = ("tests/core", "tests/driver", "tests/web", "tests/bridge", "tests/integration", "tests/browser")

STREAMS = ("declined: §16 multiple streams are not implemented; 'stream' is never advertised, "
           "so clients never use them (#102, #104 verified)")
# What bosh-cm does where it is not simply "implemented".
STATUS: dict[int, str] = {
    9: "n/a: informational (a CM cannot pipeline; aiohttp answers one request per connection at a time)",
    39: "declined: only UTF-8; 'charsets' is never advertised, so no conversion is promised",
    72: "n/a: 'inactivity' is always advertised",
    80: "n/a: 'requests' is always advertised",
    82: "n/a: 'polling' is always advertised",
    98: "n/a: bosh-cm never sends undefined-condition (every failure maps to a defined condition, "
        "internal failures to internal-server-error #92)",
    124: "declined: a transparent CM does not vouch for HTTP-level identities; SASL EXTERNAL would "
         "need a trusted channel to the server",
    127: "deployment: `[http] tls_cert`/`tls_key` serve HTTPS directly "
         "(tests/integration/test_ops_logs_tls.py), or terminate TLS in a proxy in front",
}
for _n in range(103, 114):
    if _n != 104:
        STATUS[_n] = STREAMS
STATUS[102] = "implemented: 'stream' is never advertised (no multiple streams)"
STATUS[104] = "implemented: a 'to' on a later request is ignored (an ordinary empty request)"


def test_index() -> dict[int, list[str]]:
    """item -> ['tests/core/test_x.py::test_y', ...] from names, docstrings and bodies."""
    out: dict[int, list[str]] = defaultdict(list)
    pat = re.compile(r"(?<![&\w])#(\d{1,3})\b")  # not character references like &#10;
    for d in TEST_DIRS:
        for path in sorted((ROOT / d).glob("test_*.py")):
            src = path.read_text()
            tree = ast.parse(src)
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                    seg = ast.get_source_segment(src, node) or ""
                    # decorators (parametrize ids) too
                    for dec in node.decorator_list:
                        seg += ast.get_source_segment(src, dec) or ""
                    for m in set(pat.findall(seg)):
                        n = int(m)
                        if 1 <= n <= 128:
                            out[n].append(f"{rel}::{node.name}")
    return out


def cell(r: dict | None) -> str:
    if r is None:
        return "-"
    why = f": {r['reason']}" if r["status"] != "PASS" and r["reason"] else ""
    text = (r["status"] + why).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def render(a: dict, b: dict, command: str) -> str:
    tests = test_index()
    ra = {r["id"]: r for r in a["results"]}
    rb = {r["id"]: r for r in b["results"]}
    impl = sum(1 for n in range(1, 129) if not STATUS.get(n, "implemented").startswith(("declined", "n/a", "deployment")))
    out = [HEADER.format(impl=impl, a=a, b=b, command=command)]
    out.append("| # | level | item (checker title) | bosh-cm | proved by |")
    out.append("|---|---|---|---|---|")
    for n in range(1, 129):
        c = CHECKS[n]
        status = STATUS.get(n, "implemented")
        proofs = []
        r = ra.get(n)
        if r is not None and r["status"] == "FAIL" and status == "implemented":
            status = "implemented, with a gap the checker finds (reported to the core)"
        if r is not None and r["status"] == "PASS":
            proofs.append(f"checker #{n}")
        t = sorted(set(tests.get(n, [])))
        if t:
            proofs += [f"`{x}`" for x in t[:4]] + ([f"+{len(t) - 4} more"] if len(t) > 4 else [])
        if r is not None and r["status"] == "FAIL":
            proofs.append(f"**checker #{n} FAILS** ({r['reason'][:120]})")
        title = c.title.replace("|", "\\|")
        out.append(f"| {n} | {c.level} | {title} | {status} | {'<br>'.join(proofs) or '-'} |")
    out.append("")
    out.append(RESULTS.format(a=a, b=b, command=command))
    out.append("| # | level | check | bosh-cm | Prosody 0.12 mod_bosh |")
    out.append("|---|---|---|---|---|")
    for n in range(1, 129):
        c = CHECKS[n]
        title = c.title.replace("|", "\\|")
        out.append(f"| {n} | {c.level} | {title} | {cell(ra.get(n))} | {cell(rb.get(n))} |")
    out.append("")
    return "\n".join(out)


HEADER = """# Conformance: XEP-0124 + XEP-0206 checklist, item by item

This page maps every numbered item of the checklist (`../shared/docs/spec-checklist.md` beside the project,
128 items) to what bosh-cm does and to the tests that prove it, and shows a real run of the
black-box checker against bosh-cm and against Prosody 0.12's own mod_bosh.
It is generated by `scripts/conformance/compare.py --doc docs/conformance.md`; edit the
reasons in `scripts/conformance/report.py`, not here.

## The checker

`scripts/bosh-conformance` is a black-box conformance checker that anyone can run against any
BOSH endpoint backed by a real XMPP server. It speaks HTTP + XML only (asyncio streams and
lxml; no bosh-cm code), contacts nothing but the given URL, and runs every checklist item that
can be observed from outside:

    scripts/bosh-conformance --url http://127.0.0.1:5280/http-bind --domain example.com \\
        --user alice --password secret [--user2 bob --password2 secret2] \\
        [--only 47-54,59] [--json out.json] [--wait 4] [--slack 1.0] [--max-idle 15] [-v]

It prints one line per item (`PASS #N  <level> <title>`, `FAIL #N ...: reason`,
`SKIP #N ...: reason`) and the summary `conformance: P passed, F failed, S skipped`; the exit
status is 1 when something failed. Notes:

* Checks run concurrently (`--concurrency`, default 12); each has a deadline. A run takes
  about 20 s against bosh-cm with the test profile below.
* "Immediate" means answered within `--slack` (1 s), "held" means not answered within it.
* The checks that log in use SASL PLAIN (SCRAM-SHA-1 when PLAIN is not offered). Message
  delivery checks use `--user2` as the other party (a second resource of `--user` without it).
  Server data without an account comes from a SASL `<auth/>` with an unknown mechanism: the
  server answers `<failure/>` at once and keeps the stream.
* One run opens about 150 sessions from the client's address within a minute: per-client
  session-creation limits must allow that (bosh-cm: `max_sessions_per_ip = 0`,
  `new_sessions_per_ip_per_minute = 0` for the test client).
* Checks that watch an inactivity timeout idle for up to `--max-idle` seconds (15); endpoints
  with a longer `inactivity` (Prosody: 60 s) SKIP them.
* Whole-run invariants (#3 framing, #4 compression, #6 Content-Type, #8 status codes, #10-#12
  well-formedness, #17 body content, #35 creation-only attributes, #47 every request answered,
  #89 DEAD after every terminal body) are checked over every HTTP exchange of the run.
* SKIPs name their reason: operator setup (#91, #96, #97), fault injection (#92, #98), a fake
  upstream to see the stream header (#20, #28, #29; unit and bridge tests cover them), or an
  optional feature the endpoint does not advertise (§16 streams, 'charsets', acks, keys, pause).

`tests/integration/test_conformance.py` runs the checker against bosh-cm in front of the test
Prosody and requires every MUST-level check to pass, every other non-skipped check to pass,
and exactly the expected checks to skip; it also runs it against Prosody's mod_bosh to make
sure the checker copes with a different implementation.

## Item by item

bosh-cm implements {impl} of the 128 items; the others are declined (with the reason), do not
apply, or are a deployment matter. "proved by" lists the checker check (when it passes against
bosh-cm) and the test functions under `tests/` that cite the item (`#N` in their name,
docstring or body): unit tests of the sans-IO core (`tests/core`), the asyncio driver
(`tests/driver`), the HTTP layer (`tests/web`), the upstream bridge with a fake upstream server
(`tests/bridge`), and end-to-end tests with Prosody (`tests/integration`).

"""

RESULTS = """## Side by side: bosh-cm and Prosody 0.12 mod_bosh

A real run ({a[url]} and {b[url]}; same Prosody 0.12 instance behind both, two registered
users). bosh-cm ran with the checklist's CM test profile (`max_wait = 10`, `max_inactivity = 4`,
`max_hold = 2`, `polling = 2`, `max_pause = 20`, per-client creation limits off); Prosody with
the test fixture's settings (`bosh_max_inactivity = 60`, defaults otherwise).

* bosh-cm: `{a[summary]}` in {a[seconds]:.1f} s ({a[http_requests]} HTTP requests)
* Prosody mod_bosh: `{b[summary]}` in {b[seconds]:.1f} s ({b[http_requests]} HTTP requests)

Command (run from the repository root; it starts a throwaway Prosody and bosh-cm, registers the
users, runs the checker against both and rewrites this page):

    {command}

"""


def main() -> int:
    a = json.loads(Path(sys.argv[1]).read_text())
    b = json.loads(Path(sys.argv[2]).read_text())
    print(render(a, b, sys.argv[3] if len(sys.argv) > 3 else "scripts/conformance/compare.py"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
