"""The prebind API (issue 10) of a real bosh-cm process in front of the real Prosody.

POST /prebind with an API key and a user's JID and password: bosh-cm logs the user in
(SCRAM-SHA-1 against Prosody, which offers SCRAM-SHA-1 and PLAIN), binds, and answers
{jid, sid, rid}; a BOSH client (tests/support/boshclient.py) attaches with those and chats with
a TCP user. Every error of the API; the key file re-read on SIGHUP; refusal to start without
keys; an unattended session ends after the inactivity period (XEP-0124 §10); bosh-cm's DEBUG
log holds no credential.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest

from tests.support.boshclient import BoshClient, is_message
from tests.support.boshcm import REPO_ROOT, BoshCM
from tests.support.fake_xmpp import FEATURES_PLAIN, FakeXmppServer
from tests.support.prosody import USERS, ProsodyServer, free_port

pytestmark = pytest.mark.integration

KEY = "it-portal-key-" + "0123456789abcdef"
RATE_KEY = "it-rate-key-" + "fedcba9876543210"
PER_MINUTE = 20
TIMEOUT = 10.0


def key_file(path: Path, *keys: str) -> str:
    path.write_text("# test keys\n" + "".join(k + "\n" for k in keys))
    os.chmod(path, 0o600)
    return str(path)


def with_prebind(cm: BoshCM, keys: str, **over: Any) -> BoshCM:
    cm.config["prebind"] = {"enabled": True, "api_keys_file": keys,
                            "per_key_per_minute": PER_MINUTE, **over}
    return cm


@pytest.fixture(scope="module")
def cm(prosody: ProsodyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoshCM]:
    """bosh-cm (DEBUG log) with prebind on, in front of the session's Prosody."""
    work = tmp_path_factory.mktemp("prebind-cm")
    server = with_prebind(BoshCM(work, prosody), key_file(work / "keys", KEY, RATE_KEY))
    server.start()
    yield server
    server.stop()


async def prebind(base_url: str, body: Any, key: str | None = KEY,
                  raw: bytes | None = None) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        kw: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with http.post(base_url + "/prebind", headers=headers, **kw) as resp:
            return resp.status, await resp.json(), resp.headers


async def until(pred: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` (a function returning a bool or an awaitable bool) with a deadline
    (a subprocess: real time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


async def sessions_open(cm: BoshCM) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(cm.base_url + "/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith("bosh_sessions_open "):
                    return int(float(line.split()[1]))
    raise AssertionError("no bosh_sessions_open in /metrics")


async def no_sessions(cm: BoshCM) -> bool:
    return await sessions_open(cm) == 0


def attach(url: str, doc: dict[str, Any], to: str = "localhost") -> BoshClient:
    """A BOSH client on a prebound session: its first request carries ``doc['rid']``
    (Strophe.js ``attach()``: ``rid`` is the next one to use)."""
    client = BoshClient(url)
    client.sid, client.to, client.jid = doc["sid"], to, doc["jid"]
    client.rid = doc["rid"] - 1          # post() increments before sending
    client._next_to_deliver = doc["rid"]  # answers are delivered in rid order from there
    client.wait, client.hold, client.requests = 10, 1, 2
    return client


# ---- success: attach and chat ------------------------------------------------------------

async def test_prebound_session_is_attached_by_a_bosh_client_that_chats_with_a_tcp_user(
        cm: BoshCM, prosody: ProsodyServer, xmpp_peer: Any) -> None:
    started = time.monotonic()
    status, doc, headers = await prebind(cm.base_url, {"jid": "alice@localhost",
                                                       "password": USERS["alice"],
                                                       "resource": "portal"})
    took = time.monotonic() - started
    assert status == 200, (doc, cm.log_tail())
    assert set(doc) == {"jid", "sid", "rid"} and doc["jid"] == "alice@localhost/portal"
    assert headers["Cache-Control"] == "no-store"
    print(f"one prebind against the local Prosody: {took * 1000:.0f} ms")
    # Prosody offers SCRAM-SHA-1 and PLAIN: the stronger one is used (the log is written by
    # a reader thread of the test harness: poll it).
    await until(lambda: "SCRAM-SHA-1, bound alice@localhost/portal" in cm.log_tail(20000),
                what="the prebind log line naming SCRAM-SHA-1")

    bob = await xmpp_peer(prosody, "bob")
    async with attach(cm.url, doc) as alice:
        await alice.send_presence()
        await alice.wait_for(lambda e: e.tag == "{jabber:client}presence"
                             and e.get("from") == doc["jid"], timeout=TIMEOUT)
        text = f"from the prebound session {uuid.uuid4().hex[:8]}"
        await alice.send_message("bob@localhost", text)
        msg = await bob.next_message(timeout=TIMEOUT, body=text)
        assert str(msg["from"]) == doc["jid"]
        back = f"back to the portal user {uuid.uuid4().hex[:8]}"
        bob.send_chat(doc["jid"], back)
        await alice.wait_for(is_message(body=back), timeout=TIMEOUT)
        assert alice.terminated is None


# ---- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, body, status, condition", [
    (None, {"jid": "alice@localhost", "password": USERS["alice"]}, 401, "missing-api-key"),
    ("not-the-key-0123456789abcdef", {"jid": "alice@localhost", "password": USERS["alice"]},
     401, "bad-api-key"),
    (KEY, {"jid": "alice@localhost", "password": "wrong-password-123"}, 403, "not-authorized"),
    (KEY, {"jid": "nobody@localhost", "password": "whatever-123"}, 403, "not-authorized"),
    (KEY, {"jid": "alice", "password": USERS["alice"]}, 400, "jid-malformed"),
    (KEY, {"jid": "alice@localhost/res", "password": USERS["alice"]}, 400, "jid-malformed"),
    (KEY, {"jid": "alice@example.org", "password": USERS["alice"]}, 400, "host-unknown"),
    (KEY, {"jid": "alice@localhost"}, 400, "bad-request"),
])
async def test_api_errors_against_prosody(cm: BoshCM, key: str | None, body: dict[str, str],
                                          status: int, condition: str) -> None:
    got, doc, headers = await prebind(cm.base_url, body, key)
    assert (got, doc["condition"]) == (status, condition), (doc, cm.log_tail())
    assert doc["error"] and headers["Content-Type"].startswith("application/json")


async def test_bad_json_is_400(cm: BoshCM) -> None:
    status, doc, _ = await prebind(cm.base_url, None, raw=b"{'jid': nope")
    assert (status, doc["condition"]) == (400, "bad-request")


async def test_failed_logins_leave_no_session_behind(cm: BoshCM) -> None:
    await until(lambda: no_sessions(cm), what="no open session")  # earlier tests' ends
    status, doc, _ = await prebind(cm.base_url, {"jid": "bob@localhost", "password": "nope-nope-1"})
    assert status == 403, (doc, cm.log_tail())
    assert await sessions_open(cm) == 0


async def test_over_the_per_key_rate_is_429_with_retry_after(cm: BoshCM) -> None:
    for _ in range(PER_MINUTE):
        status, _, _ = await prebind(cm.base_url, None, RATE_KEY, raw=b"{")
        assert status == 400  # counted: a key cannot be used for fast password guessing
    status, doc, headers = await prebind(cm.base_url, {"jid": "alice@localhost",
                                                       "password": USERS["alice"]}, RATE_KEY)
    assert (status, doc["condition"]) == (429, "policy-violation")
    assert 1 <= int(headers["Retry-After"]) <= 60
    status, _, _ = await prebind(cm.base_url, None, KEY, raw=b"{")
    assert status == 400  # the other key is not affected


async def test_no_credentials_in_the_debug_log(cm: BoshCM) -> None:
    """bosh-cm runs at [log] level = "DEBUG" here: neither passwords nor their base64 nor the
    keys nor any SASL element appear (the SCRAM proofs travel only inside <response/>)."""
    for password in (USERS["alice"], "wrong-password-456"):
        await prebind(cm.base_url, {"jid": "alice@localhost", "password": password})
    await until(lambda: "refused: 403 not-authorized" in cm.log_tail(3000),
                what="the refused login in the log")  # written by a reader thread
    log = cm.log_path.read_text(errors="replace")
    assert "prebind alice@localhost" in log and " DEBUG " in log
    secrets = [KEY, RATE_KEY, "wrong-password-456", "wrong-password-123"]
    for user, password in USERS.items():
        secrets += [password, base64.b64encode(password.encode()).decode(),
                    base64.b64encode(f"\0{user}\0{password}".encode()).decode()]
    for secret in secrets:
        assert secret not in log
    for marker in ("<auth", "<response", "<challenge", "<success", "urn:ietf:params:xml:ns:xmpp-sasl"):
        assert marker not in log


# ---- an unattended session ends ------------------------------------------------------------

async def test_an_unattended_prebound_session_ends_after_max_inactivity(
        prosody: ProsodyServer, tmp_path: Path) -> None:
    """XEP-0124 §10: no browser attaches, no request comes: the session ends
    [bosh] max_inactivity seconds after the bind answer and its stream is closed."""
    cm = with_prebind(BoshCM(tmp_path, prosody, bosh={"max_inactivity": 2}),
                      key_file(tmp_path / "keys", KEY))
    cm.start()
    try:
        status, doc, _ = await prebind(cm.base_url, {"jid": "bob@localhost", "password": USERS["bob"]})
        assert status == 200
        answered = time.monotonic()
        assert await sessions_open(cm) == 1
        await until(lambda: no_sessions(cm), timeout=15, what="the session's end")
        assert time.monotonic() - answered >= 1.0  # not at once: after the period
        await until(lambda: f"session {doc['sid']} ended (bosh, condition none)" in cm.log_tail(20000),
                    what="the session's end in the log")
        async with attach(cm.url, doc) as late:
            resp = await late.send()
            assert resp.terminated and resp.condition == "item-not-found"
    finally:
        cm.stop()


# ---- upstream unreachable (502) or too slow (504); SIGHUP ---------------------------------

@pytest.fixture
async def slow_cm(tmp_path: Path) -> AsyncIterator[tuple[BoshCM, FakeXmppServer, Path]]:
    """bosh-cm with prebind in front of a fake server that offers PLAIN and then never
    answers (``fake.refuse``: it closes every connection at once instead)."""
    fake = await FakeXmppServer(features=FEATURES_PLAIN).start()
    keys = tmp_path / "keys"
    cm = with_prebind(BoshCM(tmp_path, None, upstream={
        "domains": ["localhost"], "host": "127.0.0.1", "port": fake.port, "tls": "none",
        "connect_timeout": 5.0}), key_file(keys, KEY), timeout=1.5)
    await asyncio.to_thread(cm.start)
    yield cm, fake, keys
    await asyncio.to_thread(cm.stop)
    await fake.stop()


async def test_upstream_too_slow_is_504_and_unreachable_is_502(slow_cm: Any) -> None:
    cm, fake, _ = slow_cm
    body = {"jid": "alice@localhost", "password": USERS["alice"]}
    started = time.monotonic()
    status, doc, _ = await prebind(cm.base_url, body)
    assert (status, doc["condition"]) == (504, "remote-timeout"), doc
    assert fake.auth_seen.is_set() and 1.4 < time.monotonic() - started < 10
    await until(lambda: no_sessions(cm), what="the timed-out session's end")
    fake.refuse = True
    status, doc, _ = await prebind(cm.base_url, body)
    assert (status, doc["condition"]) == (502, "remote-connection-failed"), doc


async def test_sighup_rereads_the_key_file(slow_cm: Any) -> None:
    cm, _, keys = slow_cm
    new = "rotated-key-" + uuid.uuid4().hex
    key_file(keys, new)
    cm.send_signal(signal.SIGHUP)
    await until(lambda: "reloaded 1 prebind API key(s)" in cm.log_tail(20000), what="the reload")
    assert (await prebind(cm.base_url, None, KEY, raw=b"{"))[0] == 401   # revoked
    assert (await prebind(cm.base_url, None, new, raw=b"{"))[0] == 400   # valid now
    keys.write_text("")
    cm.send_signal(signal.SIGHUP)
    await until(lambda: "every prebind request is refused" in cm.log_tail(20000),
                what="the failed reload")
    assert (await prebind(cm.base_url, None, new, raw=b"{"))[0] == 401   # fail closed
    assert new not in cm.log_path.read_text()


# ---- start-up --------------------------------------------------------------------------------

@pytest.mark.parametrize("keys, words", [
    (None, ["[prebind] api_keys_file", "cannot read the key file"]),      # missing file
    ("", ["[prebind] api_keys_file", "lists no key"]),                    # empty file
    ("# a comment only\n", ["[prebind] api_keys_file", "lists no key"]),
    ("too-short\n", ["[prebind] api_keys_file", "line 1"]),
])
def test_prebind_enabled_without_keys_refuses_to_start_with_exit_2(
        tmp_path: Path, keys: str | None, words: list[str]) -> None:
    path = tmp_path / "prebind.keys"
    if keys is not None:
        path.write_text(keys)
    cfg = tmp_path / "bosh-cm.toml"
    cfg.write_text(f'[http]\nport = {free_port()}\n[prebind]\nenabled = true\n'
                   f'api_keys_file = "{path}"\n')
    proc = subprocess.run([sys.executable, "-m", "bosh", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 2, proc.stderr
    assert str(cfg) in proc.stderr and str(path) in proc.stderr
    for word in words:
        assert word in proc.stderr
    assert "too-short" not in proc.stderr
