"""What a check runs in: the run's context (:class:`Ctx`) and a check's :class:`Scope`."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from conformance.client import BoshResp, Exchange, Fail, Sess, Skip
from conformance.rawhttp import Target


def creation_failed(r: BoshResp) -> str:
    why = f"session creation failed: {r.describe()}"
    if r.is_term("policy-violation"):
        why += (" (a per-client session limit? one run opens about 150 sessions from this address;"
                " allow that for the test client)")
    return why


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
