"""The WebSocket handshake and its neighbours on the bosh-cm listener: the 'xmpp'
subprotocol (RFC 7395 §3.1), the Origin check (RFC 6455 §10.2), the see-other-uri close of
a draining node (RFC 7395 §3.6.1) and the XEP-0156 host-meta documents.

Hand-written upgrade requests (:func:`raw_handshake`) so that "no upgrade" is seen on the
wire: the status line and headers, no 101.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from lxml import etree

from tests.support.prosody import USERS
from tests.support.wsclient import CLOSE, OPEN, NS_FRAMING, WsClient, raw_handshake

pytestmark = pytest.mark.integration

NS_XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"
REL_WS = "urn:xmpp:alt-connections:websocket"


@pytest.mark.parametrize("offer", [None, "chat", "xmpp-ish, chat"], ids=["none", "chat", "others"])
async def test_handshake_without_xmpp_subprotocol_is_refused(ws_endpoint, offer):
    """No 'xmpp' in Sec-WebSocket-Protocol: HTTP 400, no upgrade (aiohttp alone would upgrade
    without a subprotocol)."""
    if ws_endpoint.is_reference:
        pytest.skip("Prosody refuses with 501, the bosh-cm contract says 400")
    r = await raw_handshake(ws_endpoint.url, protocols=offer)
    assert r.status == 400, (r.status, r.headers)
    assert r.headers.get("upgrade", "").lower() != "websocket"
    assert "sec-websocket-accept" not in r.headers


async def test_handshake_with_xmpp_among_others_echoes_xmpp(ws_endpoint):
    r = await raw_handshake(ws_endpoint.url, protocols="chat, xmpp")
    assert r.status == 101, (r.status, r.headers)
    assert r.headers.get("sec-websocket-protocol") == "xmpp"
    assert "sec-websocket-accept" in r.headers


async def test_any_origin_is_allowed_by_default(boshcm):
    """[websocket] origins = [] follows [http] cors_origins, whose default is ["*"]."""
    r = await raw_handshake(boshcm.ws_url, origin="https://anywhere.example")
    assert r.status == 101, (r.status, r.headers)


@pytest.mark.parametrize("where", ["websocket", "http"])
async def test_origin_not_allowed_is_refused_with_403(prosody, boshcm_factory, ws_client, where):
    """A configured Origin list (``[websocket] origins``, or ``[http] cors_origins`` when the
    former is empty): another Origin gets HTTP 403 and no upgrade; an allowed Origin and a
    request without Origin (not a browser) are upgraded and work."""
    good = "https://chat.example"
    if where == "websocket":
        cm = boshcm_factory(prosody, websocket={"origins": [good]})
    else:
        cm = boshcm_factory(prosody, http={"cors_origins": [good]})
    bad = await raw_handshake(cm.ws_url, origin="https://evil.example")
    assert bad.status == 403, (bad.status, bad.headers)
    assert "sec-websocket-accept" not in bad.headers
    assert bad.headers.get("upgrade", "").lower() != "websocket"
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await ws_client(cm.ws_url, origin="https://evil.example")
    assert exc.value.status == 403

    assert (await raw_handshake(cm.ws_url, origin=good)).status == 101
    assert (await raw_handshake(cm.ws_url, origin=None)).status == 101
    c: WsClient = await ws_client(cm.ws_url, origin=good)
    await c.open(prosody.domain)
    await c.login("carol", USERS["carol"], resource="origin-ok")


async def test_see_other_uri_close_while_draining(prosody, boshcm_factory, ws_client):
    """[bosh] see_other_uri set: a new WebSocket stream is answered (RFC 7395 §3.4: the reply
    to <open/> is an <open/> *or* a <close/>) with exactly
    ``<close xmlns="urn:ietf:params:xml:ns:xmpp-framing" see-other-uri="URI" />``, then the
    socket closes; no features, no stream error."""
    uri = "wss://node2.example/xmpp-websocket"
    cm = boshcm_factory(prosody, bosh={"see_other_uri": uri})
    c: WsClient = await ws_client(cm.ws_url)
    await c.send_open(prosody.domain)
    el = await c.wait_for(lambda e: e.tag == CLOSE, timeout=5, allow_closed=True)
    assert el.get("see-other-uri") == uri
    await c.wait_closed(5)
    assert c.texts() == [f'<close xmlns="{NS_FRAMING}" see-other-uri="{uri}" />'], c.texts()
    assert c.stream_error is None
    assert OPEN not in [f.tag for f in c.frames]


async def test_host_meta_documents(prosody, boshcm_factory):
    """XEP-0156: GET /.well-known/host-meta (XRD, application/xrd+xml) and host-meta.json
    (JRD) list the configured public BOSH and WebSocket URLs; both with
    Access-Control-Allow-Origin: * (fetched cross-origin by web clients)."""
    bosh_url = "https://chat.example/http-bind"
    ws_url = "wss://chat.example/xmpp-websocket"
    cm = boshcm_factory(prosody, discovery={"bosh_url": bosh_url, "websocket_url": ws_url})
    async with aiohttp.ClientSession() as http:
        async with http.get(cm.base_url + "/.well-known/host-meta",
                            headers={"Origin": "https://elsewhere.example"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].split(";")[0].strip() == "application/xrd+xml"
            assert r.headers.get("Access-Control-Allow-Origin") == "*"
            xrd = etree.fromstring(await r.read(), etree.XMLParser(resolve_entities=False, no_network=True))
        async with http.get(cm.base_url + "/.well-known/host-meta.json") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].split(";")[0].strip() == "application/json"
            assert r.headers.get("Access-Control-Allow-Origin") == "*"
            jrd = json.loads(await r.read())
    assert xrd.tag == f"{{{NS_XRD}}}XRD"
    xrd_links = {(l.get("rel"), l.get("href")) for l in xrd.iter(f"{{{NS_XRD}}}Link")}
    assert xrd_links == {(REL_BOSH, bosh_url), (REL_WS, ws_url)}
    jrd_links = {(l["rel"], l["href"]) for l in jrd["links"]}
    assert jrd_links == {(REL_BOSH, bosh_url), (REL_WS, ws_url)}
