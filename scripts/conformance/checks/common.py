"""Helpers shared by the check modules: session creation, the shared default-CREATE profile,
timing helpers, and the registration of checks that can only SKIP."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from lxml import etree

from conformance.client import BoshResp, Fail, Sess, Skip
from conformance.registry import check
from conformance.scope import Scope, creation_failed


async def created(sc: Scope, **kw: Any) -> tuple[Sess, BoshResp]:
    s = sc.sess()
    r = await s.create(**kw)
    if r.terminated:
        raise Fail(creation_failed(r))
    return s, r


async def profile(sc: Scope) -> dict[str, Any]:
    """What a default CREATE gets (shared by all checks): limits used to plan the others."""
    async def run(scope: Scope) -> dict[str, Any]:
        s, r = await created(scope, wait=scope.ctx.wait)
        return {"attrs": dict(r.attrs), "wait": s.wait, "hold": s.hold, "requests": s.requests,
                "polling": s.polling, "inactivity": s.inactivity,
                "maxpause": _num(r.get("maxpause")), "stream": r.get("stream"),
                "accept": r.get("accept"), "charsets": r.get("charsets")}
    return await sc.ctx.once("profile", run)


def _num(v: str | None) -> int | None:
    return int(v) if v is not None and v.isdigit() else None


async def spaced(s: Sess, since: float) -> None:
    """Sleep until 'polling' + 0.3 s after ``since``: a new empty request then cannot be
    "too frequent" (§11/§12), so a check can test something else."""
    delay = since + (s.polling or 0) + 0.3 - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def spacing_wait(p: dict[str, Any], slack: float) -> int:
    """A 'wait' long enough to keep a request held across a polling-spaced second request."""
    return int(math.ceil((p["polling"] or 0) + slack + 3))


def c14n(el: etree._Element) -> bytes:
    return etree.tostring(el, method="c14n")


def localnames(els: list[etree._Element]) -> list[str]:
    return [etree.QName(e).localname for e in els]


def need_idle(sc: Scope, seconds: float, what: str) -> None:
    if seconds > sc.ctx.max_idle:
        raise Skip(f"{what} needs {seconds:.0f}s idle, more than --max-idle {sc.ctx.max_idle:.0f}s")


def result_or_none(task: "asyncio.Task[BoshResp]") -> BoshResp | None:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return None


def desc(task: "asyncio.Task[BoshResp]") -> str:
    """What happened to a background request, for a failure message."""
    if not task.done():
        return "still held"
    if task.cancelled():
        return "cancelled"
    if task.exception() is not None:
        return f"failed: {task.exception()}"
    return task.result().describe()


def fail_reasons(reasons: list[str]) -> None:
    if reasons:
        raise Fail("; ".join(reasons))


def always_skip(n: int, level: str, title: str, why: str) -> None:
    async def fn(sc: Scope) -> str | None:
        raise Skip(why)
    fn.__name__ = f"c{n}"
    check(n, level, title)(fn)
