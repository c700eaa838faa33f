from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bosh.config import HttpConfig
from bosh.driver import Manager
from bosh.web import make_app
from tests.driver._fakes import make_manager, PATH, TEST_LIMITS, FakeUpstreamFactory


@pytest.fixture
def fake() -> FakeUpstreamFactory:
    return FakeUpstreamFactory()


@pytest.fixture
async def make_client(fake: FakeUpstreamFactory) -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
    """``await make_client(**httpconfig)`` -> a TestClient on the real app + fake upstream."""
    made: list[tuple[TestClient, Manager]] = []

    async def factory(**cfg: object) -> TestClient:
        manager = make_manager(TEST_LIMITS, ["example.com"], 100, fake)
        client = TestClient(TestServer(make_app(manager, HttpConfig(path=PATH, **cfg))))  # type: ignore[arg-type]
        await client.start_server()
        made.append((client, manager))
        return client

    yield factory
    for client, manager in made:
        await manager.shutdown()
        await client.close()


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[TestClient]]) -> TestClient:
    return await make_client()
