"""Run the conformance checker against bosh-cm AND Prosody's own mod_bosh, side by side.

    .venv/bin/python scripts/conformance/compare.py [--markdown out.md] [--only 1-20] [--serve]

Starts a throwaway Prosody (scripts/lib/prosody.py: loopback ports, STARTTLS, two users)
and a bosh-cm process in front of it with the checklist's CM test profile, then runs
``scripts/bosh-conformance`` against bosh-cm's URL and against Prosody's /http-bind, and
prints a table (item, level, bosh-cm, Prosody). ``--serve`` only starts both and prints
the URLs and credentials until Ctrl-C (for running the checker by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from conformance.report import render  # noqa: E402
from scripts.lib.boshcm import BoshCM  # noqa: E402
from scripts.lib.prosody import ProsodyServer  # noqa: E402

USERS = {"conf1": "conf1-pw", "conf2": "conf2-pw"}

# The checklist's "CM test profile" (spec-checklist.md §0.1), with hold 2 allowed so that the
# hold=2 variant of #52 runs too (clients asking hold=1 still get 1).
BOSHCM_PROFILE = {"max_wait": 10, "max_inactivity": 4, "max_hold": 2, "polling": 2, "max_pause": 20}


def boshcm_profile() -> dict:
    """The profile, plus: no per-client session-creation limits (the checker opens ~150
    sessions from one address within a minute). Only keys this bosh-cm version knows."""
    from bosh.config import BoshConfig
    known = set(BoshConfig.__dataclass_fields__)
    extra = {k: 0 for k in ("max_sessions_per_ip", "new_sessions_per_ip_per_minute") if k in known}
    return {**BOSHCM_PROFILE, **extra}


def run_checker(url: str, domain: str, out: Path, only: str | None, extra: list[str]) -> dict:
    cmd = [str(ROOT / "scripts" / "bosh-conformance"), "--url", url, "--domain", domain,
           "--user", "conf1", "--password", USERS["conf1"], "--user2", "conf2",
           "--password2", USERS["conf2"], "--json", str(out), *extra]
    if only:
        cmd += ["--only", only]
    env = {**os.environ, "PYTHON": sys.executable}
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout, end="")
    print(proc.stderr, end="", file=sys.stderr)
    data = json.loads(out.read_text())
    data["wall"] = time.monotonic() - started
    data["command"] = " ".join(c if not c.startswith(str(ROOT)) else c[len(str(ROOT)) + 1:] for c in cmd)
    return data


def table(a: dict, b: dict) -> str:
    rb = {r["id"]: r for r in b["results"]}
    lines = ["| # | level | check | bosh-cm | Prosody mod_bosh |", "|---|---|---|---|---|"]
    for r in a["results"]:
        o = rb.get(r["id"])

        def cell(x: dict | None) -> str:
            if x is None:
                return "-"
            why = f": {x['reason']}" if x["status"] != "PASS" and x["reason"] else ""
            return (x["status"] + why).replace("|", "\\|").replace("\n", " ")[:220]
        lines.append(f"| {r['id']} | {r['level']} | {r['title']} | {cell(r)} | {cell(o)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    ap.add_argument("--markdown", help="write the side-by-side table here")
    ap.add_argument("--doc", help="rewrite docs/conformance.md (item table + results) here")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args, extra = ap.parse_known_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the servers are stopped too
    work = Path(tempfile.mkdtemp(prefix="bosh-conformance-"))
    prosody = ProsodyServer(work / "prosody")
    prosody.start()
    cm = None
    try:
        for u, pw in USERS.items():
            prosody.register(u, pw)
        cm = BoshCM(work / "boshcm", prosody, bosh=boshcm_profile(), log_level="INFO")
        cm.start()
        if args.serve:
            print(f"bosh-cm:  {cm.url}\nprosody:  {prosody.bosh_url}\ndomain:   {prosody.domain}\n"
                  f"users:    conf1/{USERS['conf1']} conf2/{USERS['conf2']}\nwork dir: {work}", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
        print(f"== bosh-cm ({cm.url})", flush=True)
        a = run_checker(cm.url, prosody.domain, work / "boshcm.json", args.only, extra)
        print(f"== Prosody mod_bosh ({prosody.bosh_url})", flush=True)
        b = run_checker(prosody.bosh_url, prosody.domain, work / "prosody.json", args.only, extra)
        md = (f"bosh-cm: `{a['summary']}` in {a['seconds']:.1f} s; "
              f"Prosody: `{b['summary']}` in {b['seconds']:.1f} s\n\n" + table(a, b) + "\n")
        if args.markdown:
            Path(args.markdown).write_text(md)
        print(md)
        if args.doc:
            here = " ".join(["python", "scripts/conformance/compare.py", *sys.argv[1:]])
            cmd = (f"{here}\n\n    # which ran, against each URL:\n    {a['command']}\n    {b['command']}")
            Path(args.doc).write_text(render(a, b, cmd))
        return 0
    finally:
        if cm is not None:
            cm.stop()
        prosody.stop()
        if not args.keep and not args.serve:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
