"""Fixtures for the upstream bridge tests (helpers live in bridge_fakes.py)."""

from __future__ import annotations

import shutil
import subprocess
from typing import AsyncIterator

import pytest

from bridge_fakes import Cert, FakeServer, RecordingListener


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    srv = FakeServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def listener() -> RecordingListener:
    return RecordingListener()


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for 'localhost' (SAN DNS:localhost), made with openssl."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed for the STARTTLS tests"
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return Cert(cert, key)
