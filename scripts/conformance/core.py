"""The concurrent runner of the conformance checker.

The pieces it runs live in modules of their own, so that nothing imports in a circle:
:mod:`conformance.scope` (``Ctx``, ``Scope``), :mod:`conformance.registry` (``@check``,
``CHECKS``, ``Result``) and :mod:`conformance.checks` (the checks, one module per checklist
section, registered when imported). They are re-exported here.
"""

from __future__ import annotations

import asyncio
import time
import traceback

from conformance import checks  # noqa: F401 - registers the checks
from conformance.client import Fail, Skip
from conformance.registry import CHECKS, LEVELS, Check, CheckFn, Result, check
from conformance.scope import Ctx, Scope

__all__ = ["CHECKS", "LEVELS", "Check", "CheckFn", "Ctx", "Result", "Scope", "check", "run_checks"]


async def _run_one(ctx: Ctx, c: Check, sem: asyncio.Semaphore) -> Result:
    async with sem:
        scope = Scope(ctx, f"#{c.n}")
        started = time.monotonic()
        ctx.log(f"start #{c.n}")
        try:
            note = await asyncio.wait_for(c.fn(scope), c.deadline)
            res = Result(c.n, c.level, c.title, "PASS", note or "")
        except Fail as exc:
            res = Result(c.n, c.level, c.title, "FAIL", str(exc))
        except Skip as exc:
            res = Result(c.n, c.level, c.title, "SKIP", str(exc))
        except asyncio.TimeoutError:
            res = Result(c.n, c.level, c.title, "FAIL", f"deadline of {c.deadline:.0f}s exceeded")
        except Exception as exc:  # noqa: BLE001 - a checker bug must not hide the others
            if ctx.verbose:
                traceback.print_exc()
            res = Result(c.n, c.level, c.title, "FAIL", f"checker error: {exc!r}")
        try:
            await scope.close()
        except Exception:  # noqa: BLE001
            pass
        res.seconds = time.monotonic() - started
        ctx.log(f"done  #{c.n} {res.status} {res.seconds:.1f}s")
        return res


async def run_checks(ctx: Ctx, only: set[int] | None, concurrency: int) -> list[Result]:
    selected = [c for n, c in sorted(CHECKS.items()) if only is None or n in only]
    sem = asyncio.Semaphore(concurrency)
    # The slow ones first, so they overlap with everything else.
    phase1 = sorted((c for c in selected if c.phase == 1), key=lambda c: -c.deadline)
    results = list(await asyncio.gather(*(_run_one(ctx, c, sem) for c in phase1)))
    results += await asyncio.gather(*(_run_one(ctx, c, sem) for c in selected if c.phase == 2))
    return sorted(results, key=lambda r: r.n)
