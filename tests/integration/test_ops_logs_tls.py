"""Logs and HTTPS (issue 4): one log line per session event carrying the sid, SASL payloads
never logged (even at DEBUG); optional HTTPS serving with [http] tls_cert/tls_key
(XEP-0124 §19.1), tested with a self-signed certificate; /metrics of the real process."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import subprocess

import aiohttp
import pytest

import scripts.lib.boshcm as boshcm_mod  # its _READY pattern is read there (the one copy)
from tests.support.boshclient import BoshClient, is_presence
from tests.support.prosody import USERS

pytestmark = pytest.mark.integration


async def test_plain_password_never_reaches_the_log_and_session_events_carry_the_sid(
        prosody, boshcm_factory, bosh_client) -> None:
    cm = boshcm_factory(prosody, log_level="DEBUG")
    c: BoshClient = await bosh_client(cm.url)
    await c.create(prosody.domain, wait=5)
    jid = await c.login("carol", USERS["carol"], mechanism="PLAIN", resource="logcheck")
    await c.send_presence()
    await c.wait_for(is_presence(from_=jid))
    sid = c.sid
    await c.terminate()
    async with aiohttp.ClientSession() as http:
        async with http.get(cm.base_url + "/metrics") as r:
            metrics = await r.text()
    cm.stop()
    log = cm.log_path.read_text()
    secret = USERS["carol"]
    token = base64.b64encode(f"\0carol\0{secret}".encode()).decode()
    assert secret not in log and token not in log and token[:16] not in log
    events = [line for line in log.splitlines() if sid and sid in line]
    assert any("created" in e for e in events) and any("ended" in e for e in events), events
    assert any("upstream ready" in e for e in events)
    assert "Traceback" not in log
    # the process's own counters saw the session
    assert re.search(r"^bosh_sessions_created_total 1\.0$", metrics, re.M)
    assert re.search(r'^bosh_sessions_ended_total\{condition="none"\} 1\.0$', metrics, re.M)
    assert re.search(r'^bosh_stanzas_total\{direction="in"\} [1-9]', metrics, re.M)
    assert re.search(r"^bosh_upstream_connect_seconds_count 1\.0$", metrics, re.M)
    # the bridge's own counters (issue 11): one stream opened and ready, no handler error
    assert re.search(r'^bosh_bridge_events_total\{event="ready"\} 1\.0$', metrics, re.M)
    assert re.search(r'^bosh_bridge_events_total\{event="handler_errors"\} 0\.0$', metrics, re.M)


def self_signed(tmp_path):
    cert, key = tmp_path / "https.crt", tmp_path / "https.key"
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
                    "-addext", "extendedKeyUsage=serverAuth"], check=True, capture_output=True)
    return cert, key


async def test_https_serving_with_a_self_signed_certificate(
        prosody, boshcm_factory, monkeypatch, tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setattr(boshcm_mod, "_READY", re.compile(r"listening on (https://\S+)"))
    cm = boshcm_factory(prosody, http={"tls_cert": str(cert), "tls_key": str(key)})
    assert cm.announced_url and cm.announced_url.startswith("https://")
    url = f"https://127.0.0.1:{cm.port}{cm.path}"
    ctx = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        c = BoshClient(url, http=http)
        await c.create(prosody.domain, wait=5)
        jid = await c.login("bob", USERS["bob"], resource="https")
        assert jid.startswith("bob@")
        await c.close()
        # RFC 7395 §3.1 / README: with tls_cert the WebSocket endpoint is wss:// on the same port
        async with http.ws_connect(f"wss://127.0.0.1:{cm.port}/xmpp-websocket",
                                   protocols=("xmpp",)) as ws:
            await ws.send_str('<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" '
                              f'to="{prosody.domain}" version="1.0"/>')
            opened = await asyncio.wait_for(ws.receive(), 10)
            assert str(opened.data).startswith('<open xmlns="urn:ietf:params:xml:ns:xmpp-framing"')
    assert f"websocket on wss://127.0.0.1:{cm.port}/xmpp-websocket" in cm.log_path.read_text()
    # plain HTTP on the HTTPS port gets no BOSH answer
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.post(cm.url, data=b"<body/>") as r:
                assert r.status >= 400
                raise aiohttp.ClientError("refused as expected")
