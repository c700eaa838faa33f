from __future__ import annotations

from typing import AsyncIterator

import pytest

from bosh.driver import Manager
from tests.driver._fakes import make_manager, TEST_LIMITS, FakeUpstreamFactory, ManualClock


@pytest.fixture
def fake() -> FakeUpstreamFactory:
    return FakeUpstreamFactory()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def clocked(fake: FakeUpstreamFactory, clock: ManualClock) -> AsyncIterator[Manager]:
    """A BOSH endpoint whose timers only fire when the test advances ``clock``."""
    m = make_manager(TEST_LIMITS, ["example.com"], 100, fake, clock=clock)
    yield m
    await m.shutdown()


@pytest.fixture
async def manager(fake: FakeUpstreamFactory) -> AsyncIterator[Manager]:
    m = make_manager(TEST_LIMITS, ["example.com"], 100, fake)
    yield m
    await m.shutdown()
