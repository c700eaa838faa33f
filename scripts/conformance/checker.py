"""bosh-conformance: a black-box XEP-0124 / XEP-0206 conformance checker for BOSH endpoints.

    scripts/bosh-conformance --url http://127.0.0.1:5280/http-bind --domain example.com \\
        --user alice --password secret [--user2 bob --password2 secret2] \\
        [--only 1,6,59] [--json out.json]

It speaks plain HTTP + XML to the given URL (nothing else is contacted), runs the items of
docs/spec-checklist.md that can be observed from outside against a BOSH endpoint backed by
a real XMPP server, and prints one line per check:

    PASS #N  <level> <title>
    FAIL #N  <level> <title>: <reason>
    SKIP #N  <level> <title>: <reason>

then ``conformance: P passed, F failed, S skipped``. Exit status: 0 when nothing failed,
1 when a check failed, 2 on a usage error.

Independent checks run concurrently (``--concurrency``); every check has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [x for x in sys.path if x and Path(x).resolve() != Path(_here)]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    # The repository root, for bosh/sasl.py and scripts/lib/xmpplogin.py only (standard library
    # and lxml, no I/O of their own): the checker's one SCRAM is the product's sans-IO SASL
    # client. An installed bosh-cm comes first.
    sys.path.append(str(Path(__file__).resolve().parents[2]))
    __package__ = "conformance"  # noqa: A001

from conformance.core import CHECKS, Ctx, run_checks  # noqa: E402 - also registers the checks
from conformance.rawhttp import Target  # noqa: E402

def _parse_only(value: str | None) -> set[int] | None:
    if not value:
        return None
    out: set[int] = set()
    for part in value.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.update(range(int(lo.lstrip("#")), int(hi.lstrip("#")) + 1))
        else:
            out.add(int(part.lstrip("#")))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bosh-conformance",
        description="Black-box XEP-0124/XEP-0206 conformance checks against a BOSH endpoint "
                    "backed by a real XMPP server (items of docs/spec-checklist.md).")
    p.add_argument("--url", help="the BOSH endpoint, e.g. http://127.0.0.1:5280/http-bind")
    p.add_argument("--domain", help="the XMPP domain ('to' of the session)")
    p.add_argument("--user", help="an account on that domain (localpart), for the checks that log in")
    p.add_argument("--password", help="its password (or env BOSH_CONFORMANCE_PASSWORD)")
    p.add_argument("--user2", help="a second account, the other side of message delivery checks")
    p.add_argument("--password2", help="its password (or env BOSH_CONFORMANCE_PASSWORD2)")
    p.add_argument("--only", help="comma list of item numbers (ranges allowed: 47-54)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--wait", type=int, default=4, help="'wait' asked for in most sessions (default 4 s)")
    p.add_argument("--slack", type=float, default=1.0,
                   help="seconds that separate 'immediate' from 'held' (default 1.0)")
    p.add_argument("--max-idle", type=float, default=15.0,
                   help="longest idle period a check may spend to watch an inactivity timeout "
                        "(default 15 s; longer 'inactivity' values make those checks SKIP)")
    p.add_argument("--concurrency", type=int, default=12, help="checks run at once (default 12)")
    p.add_argument("--insecure", action="store_true", help="https: do not verify the certificate")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = p.parse_args(argv)

    if args.list:
        for n, c in sorted(CHECKS.items()):
            print(f"#{n:<3} {c.level:<11} {c.title}")
        return 0
    if not args.url or not args.domain:
        p.error("--url and --domain are required")
    try:
        target = Target.parse(args.url, args.insecure)
        only = _parse_only(args.only)
    except ValueError as exc:
        p.error(str(exc))
    password = args.password or os.environ.get("BOSH_CONFORMANCE_PASSWORD")
    password2 = args.password2 or os.environ.get("BOSH_CONFORMANCE_PASSWORD2")
    ctx = Ctx(target, args.domain, args.user, password, args.user2, password2,
              wait=args.wait, slack=args.slack, max_idle=args.max_idle, verbose=args.verbose)
    started = time.monotonic()
    results = asyncio.run(run_checks(ctx, only, max(1, args.concurrency)))
    elapsed = time.monotonic() - started
    for r in results:
        print(r.line())
    counts = {s: sum(1 for r in results if r.status == s) for s in ("PASS", "FAIL", "SKIP")}
    summary = f"conformance: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
    creates = sum(1 for ex in ctx.exchanges if ex.kind == "create")
    print(f"# {args.url}  {elapsed:.1f}s  {len(ctx.exchanges)} HTTP requests, {creates} sessions",
          file=sys.stderr)
    print(summary, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "url": args.url, "domain": args.domain, "seconds": round(elapsed, 2),
            "summary": summary, "passed": counts["PASS"], "failed": counts["FAIL"],
            "skipped": counts["SKIP"], "http_requests": len(ctx.exchanges), "sessions": creates,
            "results": [{"id": r.n, "level": r.level, "title": r.title, "status": r.status,
                         "reason": r.reason, "seconds": round(r.seconds, 2)} for r in results],
        }, indent=2) + "\n")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
