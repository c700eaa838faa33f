"""Checklist O. Security behaviour (§19): items #127, #128."""

from __future__ import annotations

from conformance.client import Skip
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import always_skip, created


@check(127, "SHOULD", "client traffic encrypted at the HTTP layer (https)")
async def c127(sc: Scope) -> str | None:
    if sc.ctx.target.scheme == "https":
        s, _ = await created(sc, wait_features=False)
        return "served over https"
    raise Skip("the URL is http://; run against the deployment's https URL")


always_skip(128, "MUST", "a session started over https is not continued over http",
            "needs the same endpoint over both https and http")
