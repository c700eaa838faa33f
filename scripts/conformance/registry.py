"""The check registry and the result record: what the check modules and the runner share.

``@check(n, level, title)`` registers a check under its checklist item number in
:data:`CHECKS`; the modules of :mod:`conformance.checks` do that when imported, and
:mod:`conformance.core` runs them and turns each outcome into a :class:`Result`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from conformance.scope import Scope

LEVELS = ("MUST", "SHOULD", "MAY", "DEF", "client-rule")

CheckFn = Callable[[Scope], Awaitable[str | None]]


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
