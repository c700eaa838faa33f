"""The session's one timer (bosh.hub.UpstreamLink.arm_timer), on a clock turned by hand:
a deadline moved later keeps the armed timer (it goes off early once and re-arms), one
moved earlier replaces it; on_timer runs once, at the deadline in force, never early."""

from __future__ import annotations

from bosh.hub import Hub, UpstreamLink
from tests.driver._fakes import FakeUpstreamFactory, ManualClock


class Link(UpstreamLink):
    transport = "test"

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub, "sid1", "192.0.2.1")
        self.fired: list[float] = []

    def on_timer(self) -> None:
        self.fired.append(self._clock.time())


def make() -> tuple[ManualClock, Link]:
    clock = ManualClock(now=0.0)
    return clock, Link(Hub(["example.com"], 10, FakeUpstreamFactory(), clock=clock))


def live(clock: ManualClock) -> list[float]:
    return sorted(t.when for t in clock._timers if not t.cancelled)


async def test_a_later_deadline_keeps_the_armed_timer_and_fires_once_at_the_new_one() -> None:
    clock, link = make()
    link.arm_timer(10.0)
    for deadline in (12.0, 15.0, 20.0):  # each request pushes the deadline later
        link.arm_timer(deadline)
    assert live(clock) == [10.0]          # no cancel + new timer per move
    clock.advance(10.0)
    assert link.fired == [] and live(clock) == [20.0]  # early: re-armed for the deadline
    clock.advance(10.0)
    assert link.fired == [20.0] and live(clock) == []


async def test_an_earlier_deadline_replaces_the_timer_and_none_cancels_it() -> None:
    clock, link = make()
    link.arm_timer(10.0)
    link.arm_timer(5.0)
    assert live(clock) == [5.0]
    clock.advance(5.0)
    assert link.fired == [5.0]
    link.arm_timer(30.0)
    link.arm_timer(None)
    assert live(clock) == []
    clock.advance(60.0)
    assert link.fired == [5.0]
