"""Checklist M. Key sequencing (§15, optional): items #114-#117."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from conformance.client import Skip, ensure
from conformance.registry import check
from conformance.scope import Scope
from conformance.checks.common import created


def _chain(n: int) -> list[str]:
    k = [secrets.token_hex(20)]
    for _ in range(n - 1):
        k.append(hashlib.sha1(k[-1].encode()).hexdigest())
    return k  # k[i+1] = sha1(k[i]); the client uses them backwards


async def keys_scenario(sc: Scope) -> dict[str, Any]:
    async def run(scope: Scope) -> dict[str, Any]:
        ks = _chain(5)   # ks[4] = K5 goes first as newkey, then K4, K3...
        s, _ = await created(scope, wait=1, newkey=ks[4], wait_features=False)
        out: dict[str, Any] = {}
        r1 = await s.req(key=ks[3])
        out["ok1"] = r1
        r2 = await s.req(key=ks[3])  # the same key again: wrong
        out["bad"] = r2
        s2, _ = await created(scope, wait=1, newkey=ks[4], wait_features=False)
        out["nokey"] = await s2.req()
        # #116 switching chains, #117 upper case
        old = _chain(2)
        new = _chain(5)
        s3, _ = await created(scope, wait=1, newkey=old[1], wait_features=False)
        out["switch1"] = await s3.req(key=old[0], newkey=new[4])
        out["switch2"] = await s3.req(key=new[3])
        out["upper"] = await s3.req(key=new[2].upper())
        out["switch_bad"] = await s3.req(key=new[3])
        return out
    return await sc.ctx.once("keys", run)


async def _keys_checked(sc: Scope) -> dict[str, Any]:
    o = await keys_scenario(sc)
    if not o["ok1"].terminated and not o["bad"].terminated and not o["nokey"].terminated:
        raise Skip("the CM does not check keys (§15 is optional)")
    return o


@check(114, "MAY", "a correct 'key' is accepted")
async def c114(sc: Scope) -> str | None:
    o = await keys_scenario(sc)
    ensure(not o["ok1"].terminated, f"REQ with the right key: {o['ok1'].describe()}")
    if not o["bad"].terminated:
        raise Skip("the CM does not check keys (§15 is optional)")
    return None


@check(115, "MUST", "a wrong or missing key -> item-not-found")
async def c115(sc: Scope) -> str | None:
    o = await _keys_checked(sc)
    ensure(o["bad"].is_term("item-not-found"), f"repeated key: {o['bad'].describe()}")
    ensure(o["nokey"].is_term("item-not-found"), f"missing key: {o['nokey'].describe()}")
    return None


@check(116, "MUST", "switching key chains with key + newkey")
async def c116(sc: Scope) -> str | None:
    o = await _keys_checked(sc)
    ensure(not o["switch1"].terminated, f"key=K1 newkey=J5: {o['switch1'].describe()}")
    ensure(not o["switch2"].terminated, f"key=J4: {o['switch2'].describe()}")
    ensure(o["switch_bad"].is_term("item-not-found"), f"J4 again after J3: {o['switch_bad'].describe()}")
    return None


@check(117, "SHOULD", "keys compared without regard to case")
async def c117(sc: Scope) -> str | None:
    o = await _keys_checked(sc)
    ensure(not o["upper"].terminated, f"upper-case key: {o['upper'].describe()}")
    return None
