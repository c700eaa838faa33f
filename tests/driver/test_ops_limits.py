"""Limits (issue 4, "Abuse and security"): per-address sessions and creation rate, client
address from X-Forwarded-For only via trusted proxies, stanza size, queued bytes per session,
metrics. Limit hits answer HTTP 200 + type='terminate' condition='policy-violation'
(XEP-0124 §17.2)."""

from __future__ import annotations

import asyncio

import pytest

from bosh import config as config_mod
from bosh.__main__ import build_manager
from bosh.driver import Manager, Reply
from bosh.errors import BoshError, Condition
from bosh.limits import ClientLimits, PerIpPolicy, client_address, parse_networks
from tests.driver._fakes import FakeUpstreamFactory
from tests.faults._ops import attr, create_body, req_body

# --------------------------------------------------------------------------- sans-IO limits


def test_per_ip_open_sessions_are_capped_and_released() -> None:
    lim = ClientLimits(PerIpPolicy(max_sessions_per_ip=2))
    lim.admit("192.0.2.1", 0.0)
    lim.admit("192.0.2.1", 0.0)
    with pytest.raises(BoshError) as exc:
        lim.admit("192.0.2.1", 0.0)
    assert exc.value.condition is Condition.POLICY_VIOLATION
    lim.admit("192.0.2.2", 0.0)  # another address is not affected
    lim.release("192.0.2.1")
    lim.admit("192.0.2.1", 1.0)
    assert lim.open_for("192.0.2.1") == 2


def test_new_sessions_per_minute_is_a_sliding_window_on_the_given_clock() -> None:
    lim = ClientLimits(PerIpPolicy(new_sessions_per_ip_per_minute=3))
    for t in (0.0, 10.0, 20.0):
        lim.admit("198.51.100.7", t)
        lim.release("198.51.100.7")  # closing sessions does not refund the rate
    with pytest.raises(BoshError):
        lim.admit("198.51.100.7", 59.9)
    lim.admit("198.51.100.7", 60.0)  # the creation at t=0 left the window
    with pytest.raises(BoshError):
        lim.admit("198.51.100.7", 69.9)
    lim.admit("198.51.100.8", 69.9)


def test_zero_means_unlimited_and_prune_keeps_memory_bounded() -> None:
    lim = ClientLimits(PerIpPolicy(0, 0))
    for i in range(1000):
        lim.admit("203.0.113.5", float(i))
    rated = ClientLimits(PerIpPolicy(0, 10))
    for i in range(500):
        ip = f"10.0.{i // 250}.{i % 250}"
        rated.admit(ip, 0.0)
        rated.release(ip)
    assert rated.tracked == 500
    rated.prune(61.0)
    assert rated.tracked == 0


@pytest.mark.parametrize("peer, xff, trusted, expected", [
    ("192.0.2.10", ["203.0.113.9"], [], "192.0.2.10"),                       # no proxies trusted
    ("192.0.2.10", ["203.0.113.9"], ["127.0.0.1"], "192.0.2.10"),            # peer not a proxy
    ("127.0.0.1", ["203.0.113.9"], ["127.0.0.1"], "203.0.113.9"),
    ("127.0.0.1", ["6.6.6.6, 203.0.113.9"], ["127.0.0.1"], "203.0.113.9"),  # forged left entry
    ("127.0.0.1", ["6.6.6.6", "203.0.113.9, 10.1.2.3"], ["127.0.0.0/8", "10.0.0.0/8"], "203.0.113.9"),
    ("127.0.0.1", ["garbage"], ["127.0.0.1"], "127.0.0.1"),
    ("127.0.0.1", [], ["127.0.0.1"], "127.0.0.1"),
    ("::ffff:127.0.0.1", ["2001:db8::1"], ["127.0.0.1"], "2001:db8::1"),
    ("::1", ["[2001:db8::2]:4711"], ["::1"], "2001:db8::2"),
])
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(peer, xff, trusted, expected) -> None:
    assert client_address(peer, xff, parse_networks(trusted)) == expected


def test_bad_trusted_proxies_and_half_tls_config_are_errors_naming_the_key() -> None:
    with pytest.raises(config_mod.ConfigError, match=r"\[http\] trusted_proxies.*not-an-ip"):
        config_mod.from_mapping({"http": {"trusted_proxies": ["not-an-ip"]}}, "x.toml")
    with pytest.raises(config_mod.ConfigError, match=r"tls_cert and tls_key"):
        config_mod.from_mapping({"http": {"tls_cert": "/etc/c.pem"}}, "x.toml")
    with pytest.raises(config_mod.ConfigError, match=r"\[http\] path.*operations"):
        config_mod.from_mapping({"http": {"path": "/metrics"}}, "x.toml")


# --------------------------------------------------------------------------- through the Manager

def make_manager(factory: FakeUpstreamFactory, **bosh: object) -> Manager:
    cfg = config_mod.from_mapping({"bosh": {"max_wait": 2, **bosh},
                                   "upstream": {"domains": ["example.com"]}})
    return build_manager(cfg, factory)


def never() -> bool:
    return False


async def create(manager: Manager, ip: str, rid: int = 1000) -> Reply:
    return await asyncio.wait_for(manager.handle(create_body(rid), never, ip), 5)


async def test_sessions_per_ip_limit_answers_policy_violation_and_frees_on_end() -> None:
    factory = FakeUpstreamFactory(auto=True)
    m = make_manager(factory, max_sessions_per_ip=2)
    a = await create(m, "192.0.2.1")
    await create(m, "192.0.2.1")
    refused = await create(m, "192.0.2.1")
    assert refused.status == 200 and attr(refused.body, "condition") == "policy-violation"
    assert attr(refused.body, "type") == "terminate"
    assert attr((await create(m, "192.0.2.99")).body, "sid")  # other addresses unaffected
    assert len(factory.opened) == 3  # the refused one never opened an upstream
    sid = attr(a.body, "sid")
    assert sid
    done = await asyncio.wait_for(m.handle(req_body(sid, 1001, type="terminate"), never, "192.0.2.1"), 5)
    assert attr(done.body, "type") == "terminate"
    assert attr((await create(m, "192.0.2.1")).body, "sid")  # the slot came back
    assert m.metrics.limit_hits.labels("per_ip")._value.get() == 1
    await m.shutdown()


async def test_new_sessions_per_ip_per_minute_limit() -> None:
    m = make_manager(FakeUpstreamFactory(auto=True), new_sessions_per_ip_per_minute=2, max_sessions_per_ip=0)
    for _ in range(2):
        r = await create(m, "192.0.2.5")
        sid = attr(r.body, "sid")
        assert sid
        await asyncio.wait_for(m.handle(req_body(sid, 1001, type="terminate"), never, "192.0.2.5"), 5)
    refused = await create(m, "192.0.2.5")
    assert attr(refused.body, "condition") == "policy-violation"
    assert attr((await create(m, "192.0.2.6")).body, "sid")
    await m.shutdown()


async def test_oversized_stanza_ends_the_session_with_policy_violation_before_upstream() -> None:
    factory = FakeUpstreamFactory(auto=True, echo=False)
    m = make_manager(factory, max_stanza_bytes=1024)
    sid = attr((await create(m, "192.0.2.1")).body, "sid")
    assert sid
    first = asyncio.ensure_future(m.handle(req_body(sid, 1001), never, "192.0.2.1"))
    small = "<message to='b@example.com'><body>hi</body></message>"
    held = asyncio.ensure_future(m.handle(req_body(sid, 1002, small), never, "192.0.2.1"))
    await asyncio.wait_for(first, 5)  # hold=1: answered when 1002 arrived
    big = "<message to='b@example.com'><body>" + "x" * 2000 + "</body></message>"
    r = await asyncio.wait_for(m.handle(req_body(sid, 1003, big), never, "192.0.2.1"), 5)
    assert r.status == 200 and attr(r.body, "condition") == "policy-violation"
    assert attr((await asyncio.wait_for(held, 5)).body, "type") == "terminate"
    up = factory.opened[0]
    assert [e.name for e in up.sent] == ["message"] and b"xxxx" not in up.sent[0].data
    assert up.closed
    assert m.registry.get(sid) is None
    # one just below the bound is fine in a fresh session
    sid2 = attr((await create(m, "192.0.2.1", rid=5000)).body, "sid")
    assert sid2
    ok = "<message to='b@example.com'><body>" + "y" * 900 + "</body></message>"
    pending = asyncio.ensure_future(m.handle(req_body(sid2, 5001, ok), never, "192.0.2.1"))
    for _ in range(100):
        if factory.opened[1].sent:
            break
        await asyncio.sleep(0)
    assert b"yyyy" in factory.opened[1].sent[0].data
    await m.shutdown()
    assert attr((await asyncio.wait_for(pending, 5)).body, "condition") == "system-shutdown"


@pytest.mark.parametrize("configured, expect_pause", [(4096, True), (None, False)])
async def test_max_queued_bytes_from_config_pauses_upstream_reading(configured, expect_pause) -> None:
    """[bosh] max_queued_bytes reaches the core: with 4 KiB configured, 8 KiB queued for a
    client that does not poll pauses upstream reading; the next request drains and resumes.
    With the default (1 MiB) the same 8 KiB does not pause."""
    factory = FakeUpstreamFactory(auto=True, echo=False)
    extra = {} if configured is None else {"max_queued_bytes": configured}
    m = make_manager(factory, **extra)
    sid = attr((await create(m, "192.0.2.1")).body, "sid")
    assert sid
    up = factory.opened[0]
    stanza = b"<message xmlns='jabber:client' from='b@example.com'><body>" + b"z" * 1000 + b"</body></message>"
    for _ in range(8):
        up.listener.upstream_elements([stanza])
    assert up.paused is expect_pause
    r = await asyncio.wait_for(m.handle(req_body(sid, 1001), never, "192.0.2.1"), 5)
    assert r.body.count(b"<message") == 8
    assert not up.paused
    assert up.resumes == (1 if expect_pause else 0)
    await m.shutdown()


async def test_metrics_count_sessions_requests_stanzas_and_conditions() -> None:
    m = make_manager(FakeUpstreamFactory(auto=True))
    sid = attr((await create(m, "192.0.2.1")).body, "sid")
    assert sid
    msg = "<message to='b@example.com'><body>hello</body></message>"
    r = await asyncio.wait_for(m.handle(req_body(sid, 1001, msg), never, "192.0.2.1"), 5)
    if b"hello" not in r.body:  # the echo may come with the next request
        r = await asyncio.wait_for(m.handle(req_body(sid, 1002), never, "192.0.2.1"), 5)
        assert b"hello" in r.body
    await asyncio.wait_for(m.handle(b"<body xmlns='nope'/>", never, "192.0.2.1"), 5)
    await asyncio.wait_for(m.handle(req_body("unknown-sid", 5), never, "192.0.2.1"), 5)
    text = m.metrics.render().decode()
    assert "bosh_sessions_open 1.0" in text
    assert "bosh_sessions_created_total 1.0" in text
    assert 'bosh_stanzas_total{direction="in"} 1.0' in text
    assert 'bosh_stanzas_total{direction="out"} 1.0' in text
    assert 'bosh_errors_total{condition="bad-request"} 1.0' in text
    assert 'bosh_errors_total{condition="item-not-found"} 1.0' in text
    assert "bosh_upstream_connect_seconds_count 1.0" in text
    assert "bosh_upstreams_open 1.0" in text
    await m.shutdown()
    text = m.metrics.render().decode()
    assert 'bosh_sessions_ended_total{condition="system-shutdown"} 1.0' in text
    assert "bosh_sessions_open 0.0" in text and "bosh_upstreams_open 0.0" in text


# --------------------------------------------------------------------------- issue 13: defaults

def test_defaults_trust_loopback_proxies_and_leave_room_behind_one_address() -> None:
    cfg = config_mod.Config()
    nets = parse_networks(cfg.http.trusted_proxies)
    # a local proxy's X-Forwarded-For is believed by default; a remote peer's is not
    assert client_address("127.0.0.1", ["198.51.100.7"], nets) == "198.51.100.7"
    assert client_address("::1", ["198.51.100.7"], nets) == "198.51.100.7"
    assert client_address("203.0.113.9", ["198.51.100.7"], nets) == "203.0.113.9"
    assert cfg.bosh.max_sessions_per_ip >= 1000 and cfg.bosh.new_sessions_per_ip_per_minute >= 500


def test_per_ip_refusals_warn_once_per_address_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    from bosh.hub import Hub

    from tests.driver._fakes import ManualClock

    hub = Hub(["example.com"], 100, FakeUpstreamFactory(auto=True),  # type: ignore[arg-type]
              client_limits=ClientLimits(PerIpPolicy(max_sessions_per_ip=1)), clock=ManualClock())
    hub.admit("192.0.2.1", 10.0)
    with caplog.at_level("DEBUG", logger="bosh.hub"):
        for now in (11.0, 12.0, 69.0, 71.0):
            with pytest.raises(BoshError):
                hub.admit("192.0.2.1", now)
        hub.admit("192.0.2.2", 72.0)  # another address is not affected
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings  # at 11.0 and again at 71.0 (>= 60 s later)
    assert "192.0.2.1" in warnings[0] and "[bosh] max_sessions_per_ip = 1" in warnings[0]
    assert 'bosh_limit_hits_total{limit="per_ip"} 4.0' in hub.metrics.render().decode()


def test_start_up_warns_when_listening_on_loopback_without_trusted_proxies() -> None:
    from bosh.__main__ import untrusted_proxy_warning

    assert untrusted_proxy_warning(config_mod.Config()) is None  # the defaults trust loopback
    bare = config_mod.from_mapping({"http": {"trusted_proxies": []}})
    warning = untrusted_proxy_warning(bare)
    assert warning is not None and "trusted_proxies" in warning and "max_sessions_per_ip" in warning
    off = config_mod.from_mapping({"http": {"trusted_proxies": []},
                                   "bosh": {"max_sessions_per_ip": 0, "new_sessions_per_ip_per_minute": 0}})
    assert untrusted_proxy_warning(off) is None
    public = config_mod.from_mapping({"http": {"host": "0.0.0.0", "trusted_proxies": []}})
    assert untrusted_proxy_warning(public) is None
