"""The fake upstream of ``tests.driver._fakes`` with a script: it plays an XMPP server's side
of a login (RFC 6120 §6 SASL with a real SCRAM server computation, §7 bind), so the prebind
driver and the prebind web layer can be tested without Prosody. It answers on the next loop
iteration, never from inside an ``Upstream`` call (``bosh.ports.UpstreamListener``).

    factory = ScriptedFactory(Script(mechanisms=("SCRAM-SHA-1", "PLAIN")))
    manager = make_manager(LIMITS, ["example.com"], 10, factory)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from dataclasses import dataclass, field

from lxml import etree

from bosh.ports import ClientElement, StreamParams, UpstreamListener
from tests.driver._fakes import INFO, FakeUpstream, FakeUpstreamFactory

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
PASSWORD = "correct horse battery staple"
DOMAIN = "example.com"


@dataclass
class Script:
    """How the fake server behaves."""

    mechanisms: tuple[str, ...] = ("SCRAM-SHA-1", "PLAIN")
    password: str = PASSWORD
    iterations: int = 4096
    salt: bytes = b"fake-salt-0123"
    bad_signature: bool = False          # SCRAM: send a wrong server signature
    final_in_challenge: bool = False     # SCRAM: server-final in a challenge, then empty success
    silent_after_features: bool = False  # never answer <auth/>: the login times out
    bind_error: str | None = None        # e.g. "conflict"
    session_required: bool = False       # RFC 3921 <session/> without <optional/>
    lose_at_creation: bool = False       # the connection fails before the features


@dataclass
class ScriptedUpstream(FakeUpstream):
    script: Script = field(default_factory=Script)
    log: list[str] = field(default_factory=list)      # what the client did, in order
    sasl_payloads: list[bytes] = field(default_factory=list)  # raw client SASL data
    _scram: dict[str, bytes] = field(default_factory=dict)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.script.lose_at_creation:
            loop.call_soon(self.lose)
        else:
            loop.call_soon(self.ready, INFO, self._features_before_auth())

    def _features_before_auth(self) -> bytes:
        mechs = "".join(f"<mechanism>{m}</mechanism>" for m in self.script.mechanisms)
        return (f"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"
                f"<mechanisms xmlns='{NS_SASL}'>{mechs}</mechanisms></stream:features>").encode()

    def _features_after_auth(self) -> bytes:
        session = "" if not self.script.session_required else f"<session xmlns='{NS_SESSION}'/>"
        return (f"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"
                f"<bind xmlns='{NS_BIND}'/>{session}</stream:features>").encode()

    # -- the Upstream port, recording and answering ------------------------------------
    def send(self, elements: "list[ClientElement] | tuple[ClientElement, ...]") -> None:  # type: ignore[override]
        super().send(elements)
        for element in elements:
            self._answer(etree.fromstring(element.data))

    def restart(self, params: StreamParams) -> None:
        super().restart(params)
        self.log.append("restart")
        self._later(self._features_after_auth())

    def _later(self, *elements: bytes) -> None:
        asyncio.get_running_loop().call_soon(self.deliver, *elements)

    def _answer(self, el: etree._Element) -> None:
        name = etree.QName(el).localname
        data = base64.b64decode(el.text) if el.text and el.text != "=" else b""
        if name == "auth":
            self.log.append(f"auth {el.get('mechanism')}")
            self.sasl_payloads.append(data)
            if self.script.silent_after_features:
                return
            if el.get("mechanism") == "PLAIN":
                ok = data.split(b"\0")[2:] == [self.script.password.encode()]
                self._later(self._success(b"") if ok else self._failure("not-authorized"))
            else:
                self._server_first(el.get("mechanism") or "", data)
        elif name == "response":
            self.log.append("response")
            self.sasl_payloads.append(data)
            if self._scram.get("final_sent"):
                self._later(self._success(b""))  # after server-final in a challenge
            else:
                self._server_final(data)
        elif name == "iq":
            child = etree.QName(el[0]).localname
            self.log.append(f"iq {child}")
            if child == "bind":
                self._bind(el)
            else:
                self._later(f"<iq xmlns='jabber:client' type='result' id='{el.get('id')}'/>".encode())
        else:
            self.log.append(name)

    @staticmethod
    def _success(data: bytes) -> bytes:
        text = base64.b64encode(data).decode() if data else ""
        return f"<success xmlns='{NS_SASL}'>{text}</success>".encode()

    @staticmethod
    def _failure(condition: str) -> bytes:
        return f"<failure xmlns='{NS_SASL}'><{condition}/></failure>".encode()

    # -- a SCRAM server (RFC 5802 §3) ----------------------------------------------------
    def _server_first(self, mechanism: str, client_first: bytes) -> None:
        h = "sha256" if mechanism == "SCRAM-SHA-256" else "sha1"
        bare = client_first[3:]  # after "n,,"
        nonce = dict(p.split(b"=", 1) for p in bare.split(b","))[b"r"] + b"-server-nonce"
        first = (b"r=" + nonce + b",s=" + base64.b64encode(self.script.salt)
                 + b",i=%d" % self.script.iterations)
        self._scram = {"h": h.encode(), "bare": bare, "first": first}
        self._later(f"<challenge xmlns='{NS_SASL}'>{base64.b64encode(first).decode()}</challenge>".encode())

    def _server_final(self, client_final: bytes) -> None:
        h = self._scram["h"].decode()
        without_proof, _, proof_b64 = client_final.rpartition(b",p=")
        auth = self._scram["bare"] + b"," + self._scram["first"] + b"," + without_proof
        salted = hashlib.pbkdf2_hmac(h, self.script.password.encode(), self.script.salt,
                                     self.script.iterations)
        stored = hashlib.new(h, hmac.digest(salted, b"Client Key", h)).digest()
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof_b64),
                                                 hmac.digest(stored, auth, h)))
        if hashlib.new(h, client_key).digest() != stored:
            self._later(self._failure("not-authorized"))
            return
        signature = hmac.digest(hmac.digest(salted, b"Server Key", h), auth, h)
        if self.script.bad_signature:
            signature = bytes(b ^ 1 for b in signature)
        final = b"v=" + base64.b64encode(signature)
        if self.script.final_in_challenge:
            self._scram["final_sent"] = b"1"
            self._later(f"<challenge xmlns='{NS_SASL}'>{base64.b64encode(final).decode()}</challenge>".encode())
        else:
            self._later(self._success(final))

    def _bind(self, iq: etree._Element) -> None:
        if self.script.bind_error:
            self._later((f"<iq xmlns='jabber:client' type='error' id='{iq.get('id')}'>"
                         f"<error type='cancel'><{self.script.bind_error} xmlns='{NS_STANZAS}'/>"
                         "</error></iq>").encode())
            return
        resource = iq.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}resource") or "generated-1"
        jid = f"user@{DOMAIN}/{resource}"
        escaped = jid.replace("&", "&amp;").replace("<", "&lt;")
        self._later((f"<iq xmlns='jabber:client' type='result' id='{iq.get('id')}'>"
                     f"<bind xmlns='{NS_BIND}'><jid>{escaped}</jid></bind></iq>").encode())


class ScriptedFactory(FakeUpstreamFactory):
    """``FakeUpstreamFactory`` whose upstreams follow ``script``."""

    def __init__(self, script: Script | None = None) -> None:
        super().__init__()
        self.script = script if script is not None else Script()

    def open(self, params: StreamParams, listener: UpstreamListener) -> ScriptedUpstream:  # type: ignore[override]
        up = ScriptedUpstream(params, listener, script=self.script)
        self.opened.append(up)
        self._opened_event.set()
        up.start()
        return up
