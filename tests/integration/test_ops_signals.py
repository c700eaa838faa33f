"""Signals (issue 4, "Faults"): SIGTERM drains and exits 0 within [http] shutdown_grace,
answering every held request with system-shutdown (XEP-0124 §17.2) and closing every
upstream stream with </stream:stream>; SIGHUP reloads [log] and [bosh] without dropping
sessions. The upstream is a plaintext fake XMPP server that records what it receives."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.support.boshclient import BoshClient
from tests.support.boshcm import render_toml
from tests.support.fake_xmpp import FEATURES_NONE, FakeXmppServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def fake_xmpp():
    """Answers every stream header with empty features, and nothing else."""
    server = await FakeXmppServer(features=FEATURES_NONE).start()
    yield server
    await server.stop()


def fake_upstream(server: FakeXmppServer) -> dict:
    return {"domains": ["localhost"], "host": "127.0.0.1", "port": server.port, "tls": "none",
            "connect_timeout": 3.0}


async def until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``pred`` with a deadline (the subprocess and the fake need real time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


async def held_at_cm(cm, n: int, timeout: float = 5.0) -> None:
    """Poll GET /metrics until bosh_requests_held is ``n``."""
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(cm.base_url + "/metrics") as r:
                if f"bosh_requests_held {n}.0" in await r.text():
                    return
            if loop.time() > deadline:
                raise AssertionError(f"{n} held requests not reached")
            await asyncio.sleep(0.02)


async def test_sigterm_answers_held_requests_closes_upstreams_and_exits_0(
        fake_xmpp, boshcm_factory, bosh_client) -> None:
    cm = boshcm_factory(None, upstream=fake_upstream(fake_xmpp), http={"shutdown_grace": 3.0},
                        bosh={"max_wait": 30})
    clients: list[BoshClient] = []
    for _ in range(3):
        c: BoshClient = await bosh_client(cm.url)
        await c.create("localhost", wait=30)
        await c.post()  # held: nothing will come from the fake server
        clients.append(c)
    await until(lambda: len(fake_xmpp.conns) == 3, what="3 upstream connections")
    await held_at_cm(cm, 3)
    assert cm.proc is not None
    proc = cm.proc
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    answers = await asyncio.gather(*(c.wait_terminate(timeout=5) for c in clients))
    assert [a.condition for a in answers] == ["system-shutdown"] * 3, [a.raw for a in answers]
    for conn in fake_xmpp.conns:
        await asyncio.wait_for(conn.footer.wait(), 5)  # </stream:stream> on every stream
    await until(lambda: proc.poll() is not None, timeout=5, what="exit")
    assert proc.returncode == 0
    assert time.monotonic() - started < 3.0 + 1.0
    log = cm.log_path.read_text()
    assert "shutting down: draining 3 session(s)" in log and "Traceback" not in log


async def test_sigterm_exits_within_grace_even_with_a_client_that_never_reads(
        fake_xmpp, boshcm_factory) -> None:
    """A drain does not wait longer than shutdown_grace for a stuck connection."""
    cm = boshcm_factory(None, upstream=fake_upstream(fake_xmpp), http={"shutdown_grace": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", cm.port)
    # Half a request: the handler is stuck reading the body.
    writer.write(f"POST {cm.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n<body".encode())
    await writer.drain()
    proc = cm.proc
    assert proc is not None
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await until(lambda: proc.poll() is not None, timeout=5, what="exit")
    assert proc.returncode == 0
    assert time.monotonic() - started < 1.0 + 1.5
    writer.close()


async def test_sighup_reloads_limits_and_log_level_without_dropping_sessions(
        fake_xmpp, boshcm_factory, bosh_client) -> None:
    cm = boshcm_factory(None, upstream=fake_upstream(fake_xmpp), log_level="INFO",
                        bosh={"max_wait": 30, "max_sessions_per_ip": 10})
    first: BoshClient = await bosh_client(cm.url)
    await first.create("localhost", wait=30)
    held = await first.post()
    await until(lambda: len(fake_xmpp.conns) == 1, what="upstream connection")
    await held_at_cm(cm, 1)

    config = dict(cm.config)
    config["bosh"] = {**config["bosh"], "max_sessions_per_ip": 1}
    config["log"] = {"level": "WARNING"}
    Path(cm.config_path).write_text(render_toml(config))
    assert cm.proc is not None
    cm.proc.send_signal(signal.SIGHUP)
    await until(lambda: "SIGHUP: reloaded" in cm.log_path.read_text(), what="reload logged")

    second: BoshClient = await bosh_client(cm.url)
    r = await second.create("localhost", wait=30)
    assert r.terminated and r.condition == "policy-violation", r.raw  # the new per-IP limit
    # the old session lives on: its held request is still held, it can still send
    assert not held.done()
    await first.send_message("bob@localhost", "after reload")
    await until(lambda: b"after reload" in fake_xmpp.conns[0].received, what="message upstream")
    assert first.terminated is None
    # The new level (WARNING) silences the INFO line for the session ending.
    await first.terminate()
    marker = cm.log_path.read_text()
    assert "session " + (first.sid or "?") + " ended" not in marker.split("SIGHUP: reloaded")[1]
    assert cm.running


async def test_sighup_with_a_broken_file_keeps_running_with_the_old_config(
        fake_xmpp, boshcm_factory, bosh_client) -> None:
    cm = boshcm_factory(None, upstream=fake_upstream(fake_xmpp))
    Path(cm.config_path).write_text("[bosh]\nmax_wait = 'soon'\n")
    assert cm.proc is not None
    cm.proc.send_signal(signal.SIGHUP)
    await until(lambda: "config not reloaded" in cm.log_path.read_text(), what="error logged")
    c: BoshClient = await bosh_client(cm.url)
    r = await c.create("localhost", wait=5)
    assert r.get("sid") and cm.running
