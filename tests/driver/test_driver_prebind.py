"""bosh.prebind driven against the BOSH endpoint (a real Manager) and a scripted fake server
(tests/driver/_prebind_fakes.py): the login is the ordinary BOSH conversation of a client
(XEP-0124 §7, XEP-0206 §3-5, RFC 6120 §6-7), failures end the session they created, an
unattended session ends with the inactivity timer (XEP-0124 §10), and no credential ever
reaches a log record, even at DEBUG."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from typing import AsyncIterator, Callable

import pytest

from bosh import sasl
from bosh.driver import Manager
from bosh.prebind import Prebinder, PrebindError, PrebindRequest, PrebindService
from bosh.prebind_keys import ApiKeys
from bosh.session import Limits
from tests.driver._fakes import ManualClock, make_manager, never_closing, req_body, within
from tests.driver._prebind_fakes import DOMAIN, PASSWORD, Script, ScriptedFactory, ScriptedUpstream

LIMITS = Limits(max_wait=5, max_inactivity=30, max_hold=1, polling=2)
KEY = "portal-key-0123456789abcdef"


def request(password: str = PASSWORD, resource: str | None = None) -> PrebindRequest:
    return PrebindRequest("user", DOMAIN, password, resource)


@pytest.fixture
async def build() -> AsyncIterator[Callable[..., tuple[Manager, ScriptedFactory]]]:
    made: list[Manager] = []

    def factory(script: Script | None = None, **hub: object) -> tuple[Manager, ScriptedFactory]:
        upstreams = ScriptedFactory(script)
        manager = make_manager(LIMITS, [DOMAIN], 10, upstreams, **hub)
        made.append(manager)
        return manager, upstreams

    yield factory
    for manager in made:
        await manager.shutdown()


def upstream(factory: ScriptedFactory) -> ScriptedUpstream:
    assert len(factory.opened) == 1
    up = factory.opened[0]
    assert isinstance(up, ScriptedUpstream)
    return up


# ---- success ---------------------------------------------------------------------------

@pytest.mark.parametrize("offered, chosen", [
    (("SCRAM-SHA-1", "PLAIN"), "SCRAM-SHA-1"),            # what Prosody offers
    (("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1"), "SCRAM-SHA-256"),
    (("PLAIN",), "PLAIN"),                                 # the upstream path is TLS
])
async def test_prebind_logs_in_with_the_strongest_mechanism_and_hands_out_the_next_rid(
        build, offered: tuple[str, ...], chosen: str) -> None:
    manager, factory = build(Script(mechanisms=offered))
    result = await within(Prebinder(manager, plain_allowed=True).prebind(request(resource="web")))
    up = upstream(factory)
    assert result.mechanism == chosen
    assert result.jid == f"user@{DOMAIN}/web"
    # Exactly what a client does: SASL, restart (XEP-0206 §5), bind (RFC 6120 §7).
    steps = ["auth " + chosen] + (["response"] if chosen != "PLAIN" else []) + ["restart", "iq bind"]
    assert up.log == steps
    assert not up.closed and result.sid in {s.sid for s in manager.hub.registry}

    # The browser attaches with the next rid: its stanza goes up, the session is its own.
    msg = "<message xmlns='jabber:client' to='bob@example.com'><body>hi</body></message>"
    held = asyncio.ensure_future(manager.handle(req_body(result.sid, result.rid, msg), never_closing))
    await within(up.sent_event.wait())
    assert any(b"<body>hi</body>" in d for d in up.sent_data)
    up.deliver(b"<message xmlns='jabber:client' from='bob@example.com/x'><body>yo</body></message>")
    reply = await within(held)
    assert reply.status == 200 and b"<body>yo</body>" in reply.body and b"terminate" not in reply.body


async def test_scram_server_final_in_a_challenge_is_accepted(build) -> None:
    manager, factory = build(Script(final_in_challenge=True))
    result = await within(Prebinder(manager, plain_allowed=False).prebind(request()))
    assert upstream(factory).log == ["auth SCRAM-SHA-1", "response", "response", "restart", "iq bind"]
    assert result.jid == f"user@{DOMAIN}/generated-1"


async def test_session_establishment_is_done_when_the_server_still_requires_it(build) -> None:
    """RFC 3921 §3: old servers want <session/> after bind; the browser will not send it."""
    manager, factory = build(Script(session_required=True))
    await within(Prebinder(manager, plain_allowed=False).prebind(request()))
    assert upstream(factory).log[-2:] == ["iq bind", "iq session"]


async def test_the_resource_is_escaped_into_the_bind_request(build) -> None:
    manager, factory = build()
    result = await within(Prebinder(manager, plain_allowed=False).prebind(request(resource="a<b&c")))
    assert result.jid == f"user@{DOMAIN}/a<b&c"
    assert any(b"<resource>a&lt;b&amp;c</resource>" in d for d in upstream(factory).sent_data)


# ---- failures end the session they created -----------------------------------------------

def ended(manager: Manager, up: ScriptedUpstream) -> bool:
    return not len(manager.hub.registry) and up.closed >= 1


@pytest.mark.parametrize("script, status, condition", [
    (Script(password="other"), 403, "not-authorized"),                       # wrong password
    (Script(password="other", mechanisms=("PLAIN",)), 403, "not-authorized"),
    (Script(bad_signature=True), 502, "server-signature-mismatch"),          # RFC 5802 §3
    (Script(mechanisms=("PLAIN",)), 502, "invalid-mechanism"),               # PLAIN in the clear: no
    (Script(mechanisms=("DIGEST-MD5",)), 502, "invalid-mechanism"),
    (Script(bind_error="conflict"), 403, "conflict"),
    (Script(bind_error="bad-request"), 400, "bad-request"),
])
async def test_a_failed_login_is_an_error_and_its_session_is_terminated(
        build, script: Script, status: int, condition: str) -> None:
    manager, factory = build(script)
    with pytest.raises(PrebindError) as info:
        await within(Prebinder(manager, plain_allowed=script.password == "other").prebind(request()))
    assert (info.value.status, info.value.condition) == (status, condition)
    assert ended(manager, upstream(factory))  # XEP-0124 §13 terminate: nothing left behind


async def test_unreachable_upstream_is_502(build) -> None:
    manager, factory = build(Script(lose_at_creation=True))
    with pytest.raises(PrebindError) as info:
        await within(Prebinder(manager, plain_allowed=False).prebind(request()))
    assert (info.value.status, info.value.condition) == (502, "remote-connection-failed")
    assert not len(manager.hub.registry)


async def test_an_upstream_that_stops_answering_is_504_and_the_session_ends(build) -> None:
    manager, factory = build(Script(silent_after_features=True))
    prebinder = Prebinder(manager, plain_allowed=False, timeout=0.3)
    with pytest.raises(PrebindError) as info:
        await within(prebinder.prebind(request()))
    assert (info.value.status, info.value.condition) == (504, "remote-timeout")
    assert ended(manager, upstream(factory))


async def test_a_caller_that_goes_away_mid_login_leaves_no_session(build) -> None:
    manager, factory = build(Script(silent_after_features=True))
    task = asyncio.ensure_future(Prebinder(manager, plain_allowed=False).prebind(request()))
    await within(factory.next_open(1))
    up = upstream(factory)
    while "auth SCRAM-SHA-1" not in up.log:
        await within(up.sent_event.wait())
        up.sent_event.clear()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await within(up.closed_event.wait())
    assert ended(manager, up)


async def test_an_unattended_prebound_session_ends_after_the_inactivity_period(build) -> None:
    """XEP-0124 §10: nobody attaches, so no request comes: the session ends 'inactivity'
    seconds after the last answer (the bind result), and its stream is closed."""
    clock = ManualClock()
    manager, factory = build(clock=clock)
    result = await within(Prebinder(manager, plain_allowed=False).prebind(request()))
    up = upstream(factory)
    clock.advance(LIMITS.max_inactivity - 0.5)
    assert result.sid in {s.sid for s in manager.hub.registry}  # still waiting for its browser
    clock.advance(1.0)
    assert ended(manager, up)
    late = await within(manager.handle(req_body(result.sid, result.rid), never_closing))
    assert b"item-not-found" in late.body  # too late to attach


# ---- no credential in any log record, at DEBUG ---------------------------------------------

class Recorder:
    """Wraps bosh.sasl.client to keep every message our side produced."""

    def __init__(self) -> None:
        self.produced: list[bytes] = []

    def __call__(self, name: str, user: str, password: str) -> sasl.Mechanism:
        mech = sasl.client(name, user, password)
        produced = self.produced
        initial, challenge = mech.initial, mech.challenge

        class Spy:
            def __init__(self) -> None:
                self.name = mech.name

            def initial(self) -> bytes:
                produced.append(initial())
                return produced[-1]

            def challenge(self, data: bytes) -> bytes:
                produced.append(challenge(data))
                return produced[-1]

            def success(self, data: bytes) -> None:
                mech.success(data)

        return Spy()


@pytest.mark.parametrize("script", [Script(), Script(mechanisms=("PLAIN",)),
                                    Script(password="other")], ids=["scram", "plain", "failed"])
async def test_no_password_or_sasl_payload_in_the_logs_at_debug(
        build, caplog: pytest.LogCaptureFixture, script: Script) -> None:
    from bosh.__main__ import apply_log_level

    apply_log_level("DEBUG")  # what [log] level = "DEBUG" does (slixmpp stays at INFO)
    caplog.set_level(logging.DEBUG)
    manager, factory = build(script)
    recorder = Recorder()
    prebinder = Prebinder(manager, plain_allowed=True, mechanisms=recorder)
    service = PrebindService(prebinder, ApiKeys([KEY]))
    body = ('{"jid": "user@%s", "password": "%s"}' % (DOMAIN, PASSWORD)).encode()
    try:
        await within(service.handle(body, f"Bearer {KEY}", "192.0.2.7"))
    except PrebindError:
        pass
    up = upstream(factory)
    assert recorder.produced and up.sasl_payloads
    secrets = {PASSWORD, base64.b64encode(PASSWORD.encode()).decode(), KEY}
    for data in recorder.produced + up.sasl_payloads:
        secrets.add(base64.b64encode(data).decode())
        secrets.add(data.decode(errors="replace"))
        proof = re.search(rb"p=([A-Za-z0-9+/=]+)", data)
        if proof:
            secrets.add(proof.group(1).decode())
    text = caplog.text + "".join(repr(r.args) + str(r.msg) for r in caplog.records)
    assert "prebind user@example.com" in text  # the log does speak of the login
    for secret in secrets:
        if len(secret) >= 6:
            assert secret not in text


# ---- the service: key, rate, outcome counters ----------------------------------------------

async def test_service_refuses_missing_and_wrong_keys_and_limits_the_rate_per_key(build) -> None:
    clock = ManualClock()
    manager, _ = build(clock=clock)
    other = "other-portal-key-0123456789"
    service = PrebindService(Prebinder(manager, plain_allowed=False), ApiKeys([KEY, other]),
                             per_key_per_minute=2)
    bad_json = b"{"
    for header, status, condition in [(None, 401, "missing-api-key"), ("Basic abc", 401, "missing-api-key"),
                                      ("Bearer", 401, "missing-api-key"),
                                      ("Bearer wrong-key-0123456789", 401, "bad-api-key"),
                                      (f"Bearer {KEY}", 400, "bad-request"),
                                      (f"bearer {KEY}", 400, "bad-request"),
                                      (f"Bearer {KEY}", 429, "policy-violation"),
                                      (f"Bearer {other}", 400, "bad-request")]:
        with pytest.raises(PrebindError) as info:
            await service.handle(bad_json, header)
        assert (info.value.status, info.value.condition) == (status, condition), header
    with pytest.raises(PrebindError) as info:
        await service.handle(bad_json, f"Bearer {KEY}")
    assert info.value.retry_after == pytest.approx(60.0)
    clock.advance(61)
    with pytest.raises(PrebindError) as info:
        await service.handle(bad_json, f"Bearer {KEY}")
    assert info.value.status == 400  # a new minute
    metrics = manager.metrics.render().decode()
    assert 'bosh_prebind_requests_total{status="401"} 4.0' in metrics
    assert 'bosh_prebind_requests_total{status="429"} 2.0' in metrics


async def test_reload_reads_the_key_file_again_and_fails_closed(build, tmp_path, caplog) -> None:
    manager, _ = build()
    path = tmp_path / "keys"
    path.write_text(KEY + "\n")
    service = PrebindService(Prebinder(manager, plain_allowed=False), ApiKeys([KEY]),
                             keys_file=str(path))
    new = "rotated-key-0123456789abcdef"
    path.write_text(new + "\n")
    service.reload_keys()
    assert service.keys.match(new) and not service.keys.match(KEY)  # revoked at once
    path.write_text("")
    with caplog.at_level(logging.ERROR):
        service.reload_keys()
    assert len(service.keys) == 0 and "lists no key" in caplog.text and new not in caplog.text
