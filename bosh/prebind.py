"""Prebind: bosh-cm logs a user in and hands a web app a live BOSH session (asyncio, no aiohttp).

A web app that already knows its user (a portal, an intranet page) POSTs the user's JID and
password with an API key. bosh-cm then does what a BOSH client does, through its own BOSH
endpoint (:meth:`bosh.driver.Manager.handle`, with ordinary request bodies): session creation
(XEP-0124 §7, XEP-0206 §3), SASL with the strongest mechanism both sides offer
(:mod:`bosh.sasl`), the stream restart (XEP-0206 §5) and resource binding (RFC 6120 §7), and
answers ``{jid, sid, rid}`` with ``rid`` the next unused request id. The browser attaches
with those (Converse.js ``authentication: 'prebind'``, Strophe.js ``attach()``); the session
core does not know the difference. Whoever sends the next rid first owns the session; if
nobody does, the session's inactivity timer ends it ``[bosh] max_inactivity`` seconds after
the bind answer (XEP-0124 §10), like any session whose client went away.

Failures are :class:`PrebindError` (an HTTP status, a condition, a message), translated into
JSON once, in ``bosh.prebind_web``. A login that fails or times out after the session was
created ends that session with a ``type='terminate'`` request (XEP-0124 §13). Credentials are
never logged, and never put into an error message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import Counter, Histogram

from bosh import sasl, wire, xmlsafe
from bosh.config import UpstreamConfig
from bosh.errors import ConfigError, XmlRefused
from bosh.ports import NS_CLIENT, NS_STREAM
from bosh.prebind_keys import ApiKeys, KeyRates, load_keys, permission_warning
from bosh.xmltext import escape_text

if TYPE_CHECKING:
    from bosh.driver import Manager

__all__ = ["PrebindError", "PrebindRequest", "PrebindResult", "Prebinder", "PrebindService",
           "parse_request", "plain_allowed", "MAX_REQUEST_BYTES"]

log = logging.getLogger("bosh.prebind")

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
_FEATURES = f"{{{NS_STREAM}}}features"
_IQ = f"{{{NS_CLIENT}}}iq"
_SASL_REPLIES = frozenset(f"{{{NS_SASL}}}{n}" for n in ("challenge", "success", "failure"))

MAX_REQUEST_BYTES = 8192  # a JID, a password and a resource
ASK_WAIT = 60   # what Strophe.js asks for; the session gets min(60, [bosh] max_wait) (§7.2)
_END_TIMEOUT = 2.0  # seconds for the terminate request after a failed login
_FIELDS = ("jid", "password", "resource")
_LOCAL_FORBIDDEN = frozenset("\"&'/:<>@")  # RFC 7622 §3.3.1

MechanismFactory = Callable[[str, str, str], sasl.Mechanism]


class PrebindError(Exception):
    """A refused or failed prebind: answered with HTTP ``status`` and JSON
    ``{"error": message, "condition": condition}``."""

    def __init__(self, status: int, condition: str, message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {condition}: {message}")
        self.status = status
        self.condition = condition
        self.message = message
        self.retry_after = retry_after  # seconds, for 429


@dataclass(frozen=True, slots=True)
class PrebindRequest:
    localpart: str
    domain: str
    password: str = field(repr=False)
    resource: str | None = None

    @property
    def bare(self) -> str:
        return f"{self.localpart}@{self.domain}"


@dataclass(frozen=True, slots=True)
class PrebindResult:
    jid: str   # the full JID the server bound
    sid: str
    rid: int   # the next unused rid: the browser's first request carries it
    mechanism: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"jid": self.jid, "sid": self.sid, "rid": self.rid}


def plain_allowed(upstream: UpstreamConfig) -> bool:
    """PLAIN sends the password itself: only over STARTTLS or to a loopback upstream."""
    host = upstream.host.strip("[]").lower()
    return upstream.tls == "required" or host in ("localhost", "::1") or host.startswith("127.")


# ---------------------------------------------------------------------------------------
# The request

def _bad(condition: str, message: str) -> PrebindError:
    return PrebindError(400, condition, message)


def _visible(text: str) -> bool:
    """No control, format or separator characters (spaces included)."""
    return all(unicodedata.category(ch)[0] not in "CZ" for ch in text)


def _encodable(text: str) -> bool:
    """A lone surrogate (JSON allows \\ud800) cannot go into any SASL message."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_request(data: bytes, serves: Callable[[str], bool]) -> PrebindRequest:
    """Check the JSON body ``{"jid": "user@domain", "password": "...", "resource": "..."}``;
    the domain must be one bosh-cm serves (``[upstream] domains``)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None
    if not isinstance(doc, dict):
        raise _bad("bad-request", 'the body must be a JSON object: {"jid": "user@domain", '
                                  '"password": "...", "resource": "..." (optional)}')
    unknown = [k for k in doc if k not in _FIELDS]
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise _bad("bad-request", f"unknown field(s) {names}; allowed: jid, password, resource")
    jid = doc.get("jid")
    if not isinstance(jid, str):
        raise _bad("bad-request", 'jid: a string "user@domain" is required')
    local, at, domain = jid.partition("@")
    domain = domain[:-1] if domain.endswith(".") else domain  # RFC 7622 §3.2
    if (not at or "/" in jid or "@" in domain or not local or not domain
            or len(local.encode()) > 1023 or len(domain.encode()) > 1023
            or not _visible(local) or not _visible(domain) or set(local) & _LOCAL_FORBIDDEN):
        raise _bad("jid-malformed", 'jid must be a bare JID "user@domain" '
                                    '(a resource goes in "resource")')
    domain = domain.lower()
    if not serves(domain):
        raise _bad("host-unknown", f"domain {domain[:100]!r} is not served here "
                                   "([upstream] domains)")
    password = doc.get("password")
    if not isinstance(password, str) or not password or len(password) > 1024 \
            or not _encodable(password):
        raise _bad("bad-request", "password: a non-empty string of at most 1024 characters "
                                  "is required")
    resource = doc.get("resource")
    if resource is not None and (not isinstance(resource, str) or not resource.strip()
                                 or len(resource.encode()) > 1023
                                 or any(unicodedata.category(c) == "Cc" for c in resource)):
        raise _bad("bad-request", "resource: a non-empty string of at most 1023 bytes "
                                  "without control characters, or absent")
    return PrebindRequest(local, domain, password, resource)


# ---------------------------------------------------------------------------------------
# One BOSH client conversation through the endpoint, in process

def _never_closing() -> bool:
    return False  # no HTTP connection behind these requests: nothing can go away


def _localname(tag: str) -> str:
    return xmlsafe.split(tag)[1]


def _terminated(condition: str | None, children: list[Any]) -> PrebindError:
    """A ``type='terminate'`` answer, as the HTTP status and condition of the API."""
    condition = condition or "undefined-condition"
    if condition in ("host-unknown", "improper-addressing"):
        return _bad(condition, "the upstream domain is not served ([upstream] domains)")
    if condition == "remote-connection-failed":
        return PrebindError(502, condition, "the upstream XMPP server is unreachable")
    if condition == "remote-stream-error":
        for child in children:
            if child.tag == f"{{{NS_STREAM}}}error":
                named = [c for c in child if isinstance(c.tag, str)
                         and xmlsafe.split(c.tag) != (NS_STREAM_ERRORS, "text")]
                if named:
                    condition = _localname(named[0].tag)
        return PrebindError(502, condition, "the upstream XMPP server ended the stream")
    if condition in ("system-shutdown", "policy-violation", "see-other-uri"):
        return PrebindError(503, condition, "no new session here now (limits, or this node "
                                            "is draining): try again later or elsewhere")
    return PrebindError(502, condition, "the BOSH session ended during the login")


class _Conversation:
    """The requests of one prebind login, one at a time, in rid order (XEP-0124 §8)."""

    def __init__(self, manager: "Manager", domain: str, client_ip: str, secure: bool) -> None:
        self.manager = manager
        self.domain = domain
        self.client_ip = client_ip
        self.secure = secure
        # §14.1: a random initial rid, far enough below 2^53 for any session's life.
        self.rid = secrets.randbelow(2**31) + 2**20
        self.sid: str | None = None
        self.ended = False
        self.inbox: list[Any] = []

    async def _post(self, attrs: dict[str, str], payload: tuple[bytes, ...] = ()) -> Any:
        reply = await self.manager.handle(wire.render_body(attrs, payload), _never_closing,
                                          self.client_ip, self.secure)
        if reply.status == 503:
            # A draining cluster node (bosh.driver.DRAINING): 503 too, so that HAProxy's
            # retry-on 503 tries another node, as for a browser's creation request.
            raise PrebindError(503, "system-shutdown", "this node is draining")
        if reply.status != 200:
            raise PrebindError(502, "internal-server-error",
                               f"the BOSH endpoint answered HTTP {reply.status}")
        try:
            root = xmlsafe.parse_document(reply.body)
        except XmlRefused:
            raise PrebindError(502, "internal-server-error", "unreadable BOSH answer") from None
        children = [c for c in root if isinstance(c.tag, str)]
        kind = root.get("type")
        if kind == "terminate":
            self.ended = True
            raise _terminated(root.get("condition"), children)
        if kind == "error":  # §17.3: never expected from one in-order request at a time
            raise PrebindError(502, "internal-server-error", "BOSH binding error")
        self.inbox.extend(children)
        return root

    async def create(self) -> Any:
        """Session creation (XEP-0124 §7.1, XEP-0206 §3, as Strophe.js asks); the features."""
        root = await self._post({
            "rid": str(self.rid), "to": self.domain, "xml:lang": "en", "wait": str(ASK_WAIT),
            "hold": "1", "ver": "1.6", "xmpp:version": "1.0"})
        self.sid = root.get("sid")
        if not self.sid:
            raise PrebindError(502, "internal-server-error", "creation answer without sid")
        return await self.wait_for(lambda e: e.tag == _FEATURES)

    async def send(self, payload: bytes | None = None, attrs: dict[str, str] | None = None) -> None:
        assert self.sid is not None
        self.rid += 1
        await self._post({"rid": str(self.rid), "sid": self.sid, **(attrs or {})},
                         (payload,) if payload else ())

    async def restart(self) -> Any:
        """XEP-0206 §5: the stream restart after SASL; the new features."""
        await self.send(attrs={"to": self.domain, "xml:lang": "en", "xmpp:restart": "true"})
        return await self.wait_for(lambda e: e.tag == _FEATURES)

    async def wait_for(self, wanted: Callable[[Any], bool]) -> Any:
        """The first inbox element ``wanted`` accepts; polls (one empty request held at a
        time) until it comes. The caller's deadline bounds this."""
        while True:
            for i, el in enumerate(self.inbox):
                if wanted(el):
                    return self.inbox.pop(i)
            await self.send()

    async def terminate(self) -> None:
        """XEP-0124 §13: end the session (a failed login leaves nothing behind)."""
        if self.sid is None or self.ended:
            return
        self.ended = True
        self.rid += 1
        body = wire.render_body({"rid": str(self.rid), "sid": self.sid, "type": "terminate"})
        await self.manager.handle(body, _never_closing, self.client_ip, self.secure)


def _sasl_element(name: str, data: bytes, **attrs: str) -> bytes:
    # RFC 6120 §6.4.2: an empty initial response is "="; an empty response has no text.
    text = base64.b64encode(data).decode() if data else ("=" if name == "auth" else "")
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return f"<{name} xmlns='{NS_SASL}'{extra}>{text}</{name}>".encode()


def _decode(text: str | None) -> bytes:
    if text is None or text.strip() in ("", "="):
        return b""
    try:
        return base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise PrebindError(502, "bad-server-reply", "SASL data from the server is not base64") from None


def _stanza_error(iq: Any) -> str:
    """The defined condition of an iq error (RFC 6120 §8.3.3)."""
    for err in iq.iter(f"{{{NS_CLIENT}}}error"):
        for child in err:
            if isinstance(child.tag, str):
                ns, name = xmlsafe.split(child.tag)
                if ns == NS_STANZAS and name != "text":
                    return name
    return "undefined-condition"


# ---------------------------------------------------------------------------------------
# The login

class Prebinder:
    """Logs users in through ``manager`` (the BOSH endpoint)."""

    def __init__(self, manager: "Manager", *, plain_allowed: bool, timeout: float = 20.0,
                 mechanisms: MechanismFactory = sasl.client) -> None:
        self.manager = manager
        self.plain_allowed = plain_allowed
        self.timeout = timeout
        self.mechanisms = mechanisms
        self._ending: set[asyncio.Task[None]] = set()

    async def prebind(self, req: PrebindRequest, client_ip: str = "-",
                      secure: bool = False) -> PrebindResult:
        """Create, authenticate and bind a session for ``req``; raises :class:`PrebindError`."""
        conv = _Conversation(self.manager, req.domain, client_ip, secure)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._login(conv, req)
        except TimeoutError:
            await self._end(conv)
            raise PrebindError(504, "remote-timeout", "the upstream did not complete the login "
                               f"within {self.timeout:g} s ([prebind] timeout)") from None
        except PrebindError:
            await self._end(conv)
            raise
        except asyncio.CancelledError:  # the caller went away: nobody will get this session
            task = asyncio.ensure_future(self._end(conv))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
            raise
        except Exception:
            log.exception("prebind for %s: internal error", req.bare)
            await self._end(conv)
            raise PrebindError(500, "internal-server-error", "internal error") from None

    async def _end(self, conv: _Conversation) -> None:
        try:
            async with asyncio.timeout(_END_TIMEOUT):
                await conv.terminate()
        except Exception as exc:  # best effort: the inactivity timer ends it anyway
            log.info("prebind: could not terminate session %s: %r", conv.sid, exc)

    async def _login(self, conv: _Conversation, req: PrebindRequest) -> PrebindResult:
        features = await conv.create()
        offered = [m.text or "" for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        name = sasl.choose(offered, self.plain_allowed)
        if name is None:
            shown = ", ".join(m[:40] for m in offered[:10]) or "none"
            raise PrebindError(502, "invalid-mechanism", "no SASL mechanism in common with the "
                               f"upstream (it offers: {shown}; bosh-cm: SCRAM-SHA-256, "
                               "SCRAM-SHA-1, and PLAIN only over TLS or to a loopback upstream)")
        try:
            mechanism = self.mechanisms(name, req.localpart, req.password)
            await self._authenticate(conv, mechanism)
        except sasl.SaslError as exc:
            status = {"malformed-request": 400, "not-authorized": 403}.get(exc.condition, 502)
            raise PrebindError(status, exc.condition, f"{name}: {exc.detail}") from None
        features = await conv.restart()
        jid = await self._bind(conv, features, req.resource)
        assert conv.sid is not None
        return PrebindResult(jid, conv.sid, conv.rid + 1, name)

    async def _authenticate(self, conv: _Conversation, mechanism: sasl.Mechanism) -> None:
        """RFC 6120 §6.4 through BOSH (XEP-0206 §5)."""
        await conv.send(_sasl_element("auth", mechanism.initial(), mechanism=mechanism.name))
        while True:
            reply = await conv.wait_for(lambda e: e.tag in _SASL_REPLIES)
            kind = _localname(reply.tag)
            if kind == "challenge":
                # PBKDF2 (thousands of HMAC rounds) runs off the event loop.
                answer = await asyncio.to_thread(mechanism.challenge, _decode(reply.text))
                await conv.send(_sasl_element("response", answer))
            elif kind == "success":
                mechanism.success(_decode(reply.text))  # the SCRAM server signature
                return
            else:  # RFC 6120 §6.5: the first child names the condition
                named = [c for c in reply if isinstance(c.tag, str) and _localname(c.tag) != "text"]
                condition = _localname(named[0].tag) if named else "not-authorized"
                raise PrebindError(403, condition, "authentication failed")

    async def _bind(self, conv: _Conversation, features: Any, resource: str | None) -> str:
        """RFC 6120 §7 resource binding, and RFC 3921 §3 session establishment where a
        server still requires it; returns the bound full JID."""
        if features.find(f"{{{NS_BIND}}}bind") is None:
            raise PrebindError(502, "bad-server-reply", "the upstream offered no resource "
                                                        "binding after authentication")
        inner = f"<resource>{escape_text(resource)}</resource>" if resource else ""
        reply = await self._iq(conv, f"<bind xmlns='{NS_BIND}'>{inner}</bind>")
        if reply.get("type") != "result":
            condition = _stanza_error(reply)
            status = 400 if condition in ("bad-request", "jid-malformed") else 403
            raise PrebindError(status, condition, "resource binding refused")
        jid = reply.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        if not jid:
            raise PrebindError(502, "bad-server-reply", "bind result without a JID")
        jid = str(jid)
        session = features.find(f"{{{NS_SESSION}}}session")
        if session is not None and session.find(f"{{{NS_SESSION}}}optional") is None:
            reply = await self._iq(conv, f"<session xmlns='{NS_SESSION}'/>")
            if reply.get("type") != "result":
                raise PrebindError(403, _stanza_error(reply), "session establishment refused")
        return jid

    async def _iq(self, conv: _Conversation, payload: str) -> Any:
        iq_id = "prebind-" + secrets.token_hex(4)
        await conv.send(f"<iq xmlns='{NS_CLIENT}' type='set' id='{iq_id}'>{payload}</iq>".encode())
        return await conv.wait_for(lambda e: e.tag == _IQ and e.get("id") == iq_id)


# ---------------------------------------------------------------------------------------
# The API: key, rate, request, login

class PrebindService:
    """What the HTTP handler calls: checks the key (401) and its rate (429), the request
    (400), then logs the user in. Counts outcomes in ``bosh_prebind_requests_total{status}``
    and successful logins' time in ``bosh_prebind_seconds``."""

    def __init__(self, prebinder: Prebinder, keys: ApiKeys, *, keys_file: str = "",
                 per_key_per_minute: int = 60, path: str = "/prebind") -> None:
        self.prebinder = prebinder
        self.keys = keys
        self.keys_file = keys_file
        self.rates = KeyRates(per_key_per_minute)
        self.path = path
        registry = prebinder.manager.metrics.registry
        self._outcomes = Counter("bosh_prebind_requests", "Prebind API requests by HTTP status",
                                 ["status"], registry=registry)
        self._latency = Histogram("bosh_prebind_seconds", "Time of one successful prebind login",
                                  buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                  registry=registry)

    def authorize(self, authorization: str | None, now: float) -> str:
        """The key id of a valid ``Authorization: Bearer KEY`` within its rate."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise PrebindError(401, "missing-api-key", "an API key is required: "
                                                       "Authorization: Bearer KEY")
        key_id = self.keys.match(token)
        if key_id is None:
            raise PrebindError(401, "bad-api-key", "wrong API key")
        wait = self.rates.admit(key_id, now)
        if wait is not None:
            raise PrebindError(429, "policy-violation",
                               f"over [prebind] per_key_per_minute ({self.rates.per_minute}) "
                               "for this key", retry_after=wait)
        return key_id

    async def handle(self, body: bytes, authorization: str | None, client_ip: str = "-",
                     secure: bool = False) -> PrebindResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        key_id = user = "-"
        try:
            key_id = self.authorize(authorization, self.prebinder.manager.hub.clock.time())
            req = parse_request(body, self.prebinder.manager.hub.serves)
            user = req.bare
            result = await self.prebinder.prebind(req, client_ip, secure)
        except PrebindError as exc:
            self._outcomes.labels(str(exc.status)).inc()
            log.info("prebind %s from %s (key %s) refused: %d %s", user, client_ip, key_id,
                     exc.status, exc.condition)
            raise
        took = loop.time() - started
        self._outcomes.labels("200").inc()
        self._latency.observe(took)
        log.info("prebind %s from %s (key %s): %s, bound %s, session %s, %.3f s", user,
                 client_ip, key_id, result.mechanism, result.jid, result.sid, took)
        return result

    def reload_keys(self) -> None:
        """SIGHUP: read the key file again. A file that cannot be read, is empty or has a bad
        line leaves no key valid (fail closed: a revoked key must stop working)."""
        try:
            keys = load_keys(self.keys_file)
        except ConfigError as exc:
            self.keys = ApiKeys()
            log.error("SIGHUP: %s; every prebind request is refused (401) until the file "
                      "lists valid keys and bosh-cm gets SIGHUP again", exc)
        else:
            self.keys = keys
            log.warning("SIGHUP: reloaded %d prebind API key(s) from %s", len(keys), self.keys_file)
            warning = permission_warning(self.keys_file)
            if warning is not None:
                log.warning("%s", warning)
        self.rates.retain(self.keys.ids())
