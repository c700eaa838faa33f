"""Check registry, scopes and the concurrent runner of the conformance checker."""

from __future__ import annotations

import asyncio
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from conformance.client import Exchange, Fail, Sess, Skip
from conformance.rawhttp import Target

LEVELS = ("MUST", "SHOULD", "MAY", "DEF", "client-rule")

CheckFn = Callable[["Scope"], Awaitable[str | None]]


@dataclass
class Check:
    n: int
    level: str
    title: str
    fn: CheckFn
    phase: int = 1           # 2 = runs after every phase-1 check (whole-run invariants)
    deadline: float = 45.0
    needs_login: bool = False


CHECKS: dict[int, Check] = {}


def check(n: int, level: str, title: str, *, phase: int = 1, deadline: float = 45.0,
          login: bool = False) -> Callable[[CheckFn], CheckFn]:
    assert level in LEVELS, level

    def deco(fn: CheckFn) -> CheckFn:
        assert n not in CHECKS, f"duplicate check #{n}"
        CHECKS[n] = Check(n, level, title, fn, phase, deadline, login)
        return fn
    return deco


@dataclass
class Result:
    n: int
    level: str
    title: str
    status: str          # PASS | FAIL | SKIP
    reason: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        head = f"{self.status} #{self.n:<3} {self.level} {self.title}"
        return f"{head}: {self.reason}" if self.reason and self.status != "PASS" else (
            f"{head} ({self.reason})" if self.reason else head)


@dataclass
class Ctx:
    target: Target
    domain: str
    user: str | None
    password: str | None
    user2: str | None
    password2: str | None
    wait: int = 4
    slack: float = 1.0
    max_idle: float = 15.0
    sasl_timeout: float = 10.0
    verbose: bool = False
    probe_after_term: bool = True
    exchanges: list[Exchange] = field(default_factory=list)
    dead_probes: list[tuple[str, bool, str]] = field(default_factory=list)
    _once: dict[str, "asyncio.Future[Any]"] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    async def once(self, name: str, fn: Callable[["Scope"], Awaitable[Any]]) -> Any:
        """Run a shared scenario once; every check that needs it awaits the same result."""
        fut = self._once.get(name)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._once[name] = fut

            async def run() -> None:
                scope = Scope(self, name)
                try:
                    fut.set_result(await fn(scope))
                except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                    fut.set_exception(exc)
                finally:
                    await scope.close()
            asyncio.ensure_future(run())
        return await asyncio.shield(fut)


class Scope:
    """What a check (or a shared scenario) gets: sessions it opens are closed afterwards."""

    def __init__(self, ctx: Ctx, tag: str) -> None:
        self.ctx = ctx
        self.tag = tag
        self.sessions: list[Sess] = []

    def sess(self) -> Sess:
        s = Sess(self.ctx, self.tag)
        self.sessions.append(s)
        return s

    def need_login(self) -> None:
        if not (self.ctx.user and self.ctx.password):
            raise Skip("needs --user/--password")

    async def login(self, resource: str | None = None, **create: Any) -> Sess:
        """A new session logged in as --user (SASL, restart, bind)."""
        self.need_login()
        s = self.sess()
        r = await s.create(**create)
        if r.terminated:
            from conformance.checks import creation_failed
            raise Fail(creation_failed(r))
        await s.login(self.ctx.user or "", self.ctx.password or "", resource)
        return s

    async def peer(self) -> Sess:
        """A second logged-in session to send from: --user2 if given, else --user again
        with another resource."""
        self.need_login()
        s = self.sess()
        r = await s.create()
        if r.terminated:
            from conformance.checks import creation_failed
            raise Fail(creation_failed(r))
        if self.ctx.user2 and self.ctx.password2:
            await s.login(self.ctx.user2, self.ctx.password2)
        else:
            await s.login(self.ctx.user or "", self.ctx.password or "")
        return s

    async def close(self) -> None:
        if self.sessions:
            await asyncio.wait_for(
                asyncio.gather(*(s.close() for s in self.sessions), return_exceptions=True), 20)


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
    from conformance import checks  # noqa: F401 - registers the checks

    selected = [c for n, c in sorted(CHECKS.items()) if only is None or n in only]
    sem = asyncio.Semaphore(concurrency)
    # The slow ones first, so they overlap with everything else.
    phase1 = sorted((c for c in selected if c.phase == 1), key=lambda c: -c.deadline)
    results = list(await asyncio.gather(*(_run_one(ctx, c, sem) for c in phase1)))
    results += await asyncio.gather(*(_run_one(ctx, c, sem) for c in selected if c.phase == 2))
    return sorted(results, key=lambda r: r.n)
