from __future__ import annotations

from typing import AsyncIterator

import pytest

from bosh.driver import Manager
from bosh.session import Limits
from tests.driver._fakes import FakeUpstreamFactory

# max_wait 1 s keeps the timer test short; inactivity is long so it never interferes.
DRIVER_LIMITS = Limits(max_wait=1, max_inactivity=30, max_hold=1, polling=2)


@pytest.fixture
def fake() -> FakeUpstreamFactory:
    return FakeUpstreamFactory()


@pytest.fixture
async def manager(fake: FakeUpstreamFactory) -> AsyncIterator[Manager]:
    m = Manager(DRIVER_LIMITS, ["example.com"], 100, fake)
    yield m
    await m.shutdown()
