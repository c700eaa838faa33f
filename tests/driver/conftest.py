from __future__ import annotations

from typing import AsyncIterator

import pytest

from bosh.driver import Manager
from tests.driver._fakes import make_manager, TEST_LIMITS, FakeUpstreamFactory


@pytest.fixture
def fake() -> FakeUpstreamFactory:
    return FakeUpstreamFactory()


@pytest.fixture
async def manager(fake: FakeUpstreamFactory) -> AsyncIterator[Manager]:
    m = make_manager(TEST_LIMITS, ["example.com"], 100, fake)
    yield m
    await m.shutdown()
