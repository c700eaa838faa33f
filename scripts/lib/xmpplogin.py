"""The login steps of a client stream, one copy for every test client and transport.

SASL (RFC 6120 §6.4) with a mechanism of the product's sans-IO :mod:`bosh.sasl` (the one
SCRAM/PLAIN implementation), resource binding (RFC 6120 §7) and the old session step
(RFC 3921), plus the few XML helpers the clients share. The BOSH client
(:mod:`scripts.lib.boshclient`) and the WebSocket client (``tests/support/wsclient.py``)
take the steps through :class:`LoginSteps`; the conformance checker
(``scripts/conformance/client.py``) through :func:`sasl_exchange` and :func:`bind_resource`.

No I/O of its own and nothing beyond the standard library, lxml and :mod:`bosh.sasl`, so the
black-box conformance checker may load it. Passwords are never logged or put into
exception messages.
"""

from __future__ import annotations

import base64
import secrets
from typing import Awaitable, Callable, Iterator

from lxml import etree

from bosh import sasl

__all__ = [
    "NS_STREAM", "NS_CLIENT", "NS_SASL", "NS_BIND", "NS_SESSION", "NS_XBOSH", "NS_XML",
    "SaslFailure", "strict_parser", "attr_name", "b64", "unb64", "offered_mechanisms",
    "sasl_exchange", "bind_resource", "LoginSteps",
]

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_XBOSH = "urn:xmpp:xbosh"
NS_XML = "http://www.w3.org/XML/1998/namespace"

Predicate = Callable[[etree._Element], bool]


class SaslFailure(Exception):
    """The server answered ``<failure/>``."""

    def __init__(self, element: etree._Element) -> None:
        names = [etree.QName(c).localname for c in element]
        super().__init__(f"SASL failure: {names}")
        self.element = element


def strict_parser(huge_tree: bool = False) -> etree.XMLParser:
    """Namespace-aware, non-recovering, no DTD, no entities, no network."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           recover=False, huge_tree=huge_tree, remove_comments=False,
                           remove_pis=False)


def attr_name(name: str) -> str:
    """The Clark name of an attribute written with a shorthand: ``xmpp:restart`` (XEP-0206's
    ``urn:xmpp:xbosh``), ``xml:lang``; any other name as it is."""
    if name.startswith("xmpp:"):
        return f"{{{NS_XBOSH}}}{name[5:]}"
    if name.startswith("xml:"):
        return f"{{{NS_XML}}}{name[4:]}"
    return name


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else "="  # RFC 6120 §6.4.2: '=' is empty


def unb64(text: str | None) -> bytes:
    text = (text or "").strip()
    return b"" if text in ("", "=") else base64.b64decode(text)


def offered_mechanisms(features: etree._Element | None) -> list[str]:
    """The SASL mechanisms ``<stream:features/>`` offers, in its order."""
    if features is None:
        return []
    return [m.text or "" for m in features.iter(f"{{{NS_SASL}}}mechanism")]


async def sasl_exchange(mechanism: sasl.Mechanism, send: Callable[[str], Awaitable[object]],
                        reply: Callable[[], Awaitable[etree._Element]],
                        error: type[Exception]) -> None:
    """One SASL exchange over any transport (RFC 6120 §6.4): ``<auth/>`` with the initial
    response, a ``<response/>`` to each ``<challenge/>``, then the data of ``<success/>``
    checked by the mechanism (SCRAM verifies the server signature, RFC 5802 §3).

    ``reply()`` returns the next ``<challenge/>``/``<success/>`` (and raises on ``<failure/>``);
    anything else raises ``error``. A bad server answer raises :class:`bosh.sasl.SaslError`.
    """
    await send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism.name}'>"
               f"{b64(mechanism.initial())}</auth>")
    while True:
        el = await reply()
        if el.tag == f"{{{NS_SASL}}}challenge":
            answer = mechanism.challenge(unb64(el.text))
            await send(f"<response xmlns='{NS_SASL}'>{b64(answer)}</response>")
        elif el.tag == f"{{{NS_SASL}}}success":
            mechanism.success(unb64(el.text))
            return
        else:
            raise error(f"unexpected SASL reply {el.tag}")


async def bind_resource(iq: Callable[..., Awaitable[etree._Element]],
                        features: etree._Element | None, resource: str | None, timeout: float,
                        error: type[Exception]) -> str | None:
    """Resource binding (RFC 6120 §7) over any transport's ``iq(payload, type_, timeout=)``;
    then RFC 3921 session establishment, only when ``features`` offer it as mandatory (old
    servers). Returns the bound full JID."""
    inner = f"<resource>{resource}</resource>" if resource else ""
    res = await iq(f"<bind xmlns='{NS_BIND}'>{inner}</bind>", "set", timeout=timeout)
    if res.get("type") != "result":
        raise error(f"bind failed: {etree.tostring(res)!r}")
    jid = res.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
    sess = features.find(f"{{{NS_SESSION}}}session") if features is not None else None
    if sess is not None and sess.find(f"{{{NS_SESSION}}}optional") is None:
        await iq(f"<session xmlns='{NS_SESSION}'/>", "set")
    return jid


class LoginSteps:
    """SASL, restart, bind, and the stanzas a test sends, for a client of any transport.

    The client provides what differs per transport: :meth:`send_element` (one element to
    the server), :meth:`wait_for` (an inbound element matching a predicate, with a
    deadline), :meth:`restart` (the stream restart after SASL; it sets and returns the new
    features), the attributes ``features``, ``jid`` and ``_ids`` (an ``itertools.count``),
    and as class attributes ``protocol_error`` (raised for answers that break the protocol)
    and ``iq_prefix`` (of its iq ids).
    """

    protocol_error: type[Exception] = AssertionError
    iq_prefix = "i"
    features: etree._Element | None
    jid: str | None
    _ids: Iterator[int]

    async def send_element(self, data: str) -> object:
        raise NotImplementedError

    async def wait_for(self, pred: Predicate, timeout: float = 10.0) -> etree._Element:
        raise NotImplementedError

    async def restart(self, timeout: float = 10) -> etree._Element:
        raise NotImplementedError

    # ------------------------------------------------------------------ features
    def mechanisms(self) -> list[str]:
        return offered_mechanisms(self.features)

    def has_feature(self, ns: str, name: str) -> bool:
        return self.features is not None and self.features.find(f"{{{ns}}}{name}") is not None

    # ------------------------------------------------------------------ SASL
    async def _sasl_result(self, timeout: float) -> etree._Element:
        want = {f"{{{NS_SASL}}}{n}" for n in ("success", "failure", "challenge")}
        el = await self.wait_for(lambda e: e.tag in want, timeout)
        if el.tag == f"{{{NS_SASL}}}failure":
            raise SaslFailure(el)
        return el

    async def auth(self, user: str, password: str, mechanism: str = "PLAIN",
                   timeout: float = 10) -> None:
        """SASL with a :mod:`bosh.sasl` mechanism (PLAIN, SCRAM-SHA-1, SCRAM-SHA-256);
        SCRAM verifies the server signature. Raises :class:`SaslFailure` on ``<failure/>``."""
        await sasl_exchange(sasl.client(mechanism, user, password), self.send_element,
                            lambda: self._sasl_result(timeout), self.protocol_error)

    async def auth_plain(self, user: str, password: str, timeout: float = 10) -> None:
        """SASL PLAIN (RFC 4616)."""
        await self.auth(user, password, "PLAIN", timeout)

    async def auth_scram_sha1(self, user: str, password: str, timeout: float = 10) -> None:
        """SASL SCRAM-SHA-1 (RFC 5802), no channel binding; verifies the server signature."""
        await self.auth(user, password, "SCRAM-SHA-1", timeout)

    async def authenticate(self, user: str, password: str, mechanism: str = "PLAIN",
                           timeout: float = 10) -> etree._Element:
        """SASL and the stream restart; returns the post-auth features."""
        if mechanism not in sasl.MECHANISMS:
            raise ValueError(mechanism)
        await self.auth(user, password, mechanism, timeout)
        return await self.restart(timeout)

    # ------------------------------------------------------------------ bind, stanzas
    async def iq(self, payload: str, type_: str = "get", to: str | None = None,
                 timeout: float = 10) -> etree._Element:
        """Send an iq and wait for its result/error (matched by id)."""
        iq_id = f"{self.iq_prefix}{next(self._ids)}-{secrets.token_hex(3)}"
        to_attr = f" to='{to}'" if to else ""
        await self.send_element(
            f"<iq xmlns='{NS_CLIENT}' type='{type_}' id='{iq_id}'{to_attr}>{payload}</iq>")
        return await self.wait_for(
            lambda e: e.tag == f"{{{NS_CLIENT}}}iq" and e.get("id") == iq_id, timeout)

    async def bind(self, resource: str | None = None, timeout: float = 10) -> str:
        """Resource binding (RFC 6120 §7) after the restart; returns the full JID."""
        self.jid = await bind_resource(self.iq, self.features, resource, timeout,
                                       self.protocol_error)
        return self.jid or ""

    async def login(self, user: str, password: str, mechanism: str = "PLAIN",
                    resource: str | None = None, *, timeout: float = 10) -> str:
        """SASL + restart + bind; returns the bound full JID."""
        await self.authenticate(user, password, mechanism, timeout)
        return await self.bind(resource, timeout)

    async def send_presence(self, payload: str = "") -> None:
        await self.send_element(f"<presence xmlns='{NS_CLIENT}'>{payload}</presence>"
                                if payload else f"<presence xmlns='{NS_CLIENT}'/>")

    async def send_message(self, to: str, body: str, type_: str = "chat") -> None:
        text = body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        await self.send_element(f"<message xmlns='{NS_CLIENT}' to='{to}' type='{type_}'>"
                                f"<body>{text}</body></message>")
