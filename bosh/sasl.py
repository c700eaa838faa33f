"""SASL client mechanisms for the prebind API (sans-IO: calls in, results out).

Used only by ``bosh.prebind``, the one place where bosh-cm authenticates on a user's behalf;
every other session's SASL passes through untouched (design.md §1).

* SCRAM-SHA-256 (RFC 7677) and SCRAM-SHA-1 (RFC 5802), without channel binding (gs2 header
  ``n,,``): the ``*-PLUS`` variants would bind to bosh-cm's own TLS session, and the bridge
  hides them anyway (design.md §5). The server's signature is verified: a server that cannot
  prove it knows the stored key does not get the session handed to a browser.
* PLAIN (RFC 4616), which :func:`choose` picks only when the caller says the upstream path is
  encrypted or on loopback.

Each mechanism is an object with ``initial() -> bytes`` (the initial response),
``challenge(data) -> bytes`` (the answer to a server challenge) and ``success(data)`` (the
additional data of ``<success/>``); payloads are raw bytes, the caller does the base64 of
RFC 6120 §6.4. Failures raise :class:`SaslError`. Nothing here logs, and no message or
exception carries a password, a proof or a salted key.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from typing import Iterable, Protocol

__all__ = ["MECHANISMS", "SaslError", "Mechanism", "Scram", "Plain", "choose", "client",
           "saslprep"]

#: Preference order: the strongest mechanism both sides offer wins (issue 10).
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
_SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}
GS2_HEADER = b"n,,"  # RFC 5802 §7: no channel binding, no authzid
#: A server asking for more PBKDF2 rounds than this is refused (it would burn our CPU).
MAX_ITERATIONS = 1_000_000


class SaslError(Exception):
    """The exchange failed on our side; ``condition`` names why in RFC 6120 §6.5 terms where
    one fits (``malformed-request``), or ``server-signature-mismatch``/``bad-server-reply``
    when the server did not behave."""

    def __init__(self, condition: str, detail: str) -> None:
        super().__init__(f"{condition}: {detail}")
        self.condition = condition
        self.detail = detail


class Mechanism(Protocol):
    name: str

    def initial(self) -> bytes:
        """The initial response, sent inside ``<auth/>``."""

    def challenge(self, data: bytes) -> bytes:
        """The response to one server challenge."""

    def success(self, data: bytes) -> None:
        """Check the additional data of ``<success/>``; raise :class:`SaslError` if wrong."""


def choose(offered: Iterable[str], plain_allowed: bool) -> str | None:
    """The strongest of :data:`MECHANISMS` the server offers; PLAIN only if ``plain_allowed``
    (the upstream path is encrypted or loopback: RFC 4616 §6 sends the password itself)."""
    names = {m.strip().upper() for m in offered}
    for name in MECHANISMS:
        if name in names and (name != "PLAIN" or plain_allowed):
            return name
    return None


def client(mechanism: str, username: str, password: str) -> Mechanism:
    """A fresh client for ``mechanism`` (one of :data:`MECHANISMS`)."""
    if mechanism in _SCRAM_HASHES:
        return Scram(mechanism, username, password)
    if mechanism == "PLAIN":
        return Plain(username, password)
    raise ValueError(f"unsupported mechanism {mechanism!r}")


# ---------------------------------------------------------------------------------------
# SASLprep (RFC 4013), on the stdlib's stringprep tables (RFC 3454)

def saslprep(value: str) -> str:
    """RFC 4013 SASLprep, query profile (unassigned code points allowed, as Prosody and
    libidn do by default). Raises :class:`SaslError` (malformed-request) for a string it
    prohibits; the message never contains the string."""
    mapped = []
    for ch in value:
        if stringprep.in_table_c12(ch):
            mapped.append(" ")  # §2.1: non-ASCII space -> SPACE
        elif not stringprep.in_table_b1(ch):  # §2.1: commonly mapped to nothing
            mapped.append(ch)
    out = unicodedata.normalize("NFKC", "".join(mapped))  # §2.2
    for ch in out:  # §2.3
        if (stringprep.in_table_c12(ch) or stringprep.in_table_c21_c22(ch)
                or stringprep.in_table_c3(ch) or stringprep.in_table_c4(ch)
                or stringprep.in_table_c5(ch) or stringprep.in_table_c6(ch)
                or stringprep.in_table_c7(ch) or stringprep.in_table_c8(ch)
                or stringprep.in_table_c9(ch)):
            raise SaslError("malformed-request", "a character SASLprep prohibits (RFC 4013 §2.3)")
    if any(stringprep.in_table_d1(ch) for ch in out):  # §2.4, RFC 3454 §6
        if any(stringprep.in_table_d2(ch) for ch in out) or not (
                stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            raise SaslError("malformed-request", "mixed-direction text (RFC 3454 §6)")
    return out


# ---------------------------------------------------------------------------------------
# SCRAM (RFC 5802, RFC 7677)

class _Step(enum.Enum):
    START = "start"
    FIRST_SENT = "first-sent"   # client-first sent, server-first expected
    FINAL_SENT = "final-sent"   # client-final sent, server-final expected
    VERIFIED = "verified"       # server signature checked; only an empty success may follow
    DONE = "done"


def _attributes(message: bytes) -> list[tuple[str, str]]:
    """``a=value,b=value`` (RFC 5802 §7); values may contain '='."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("bad-server-reply", "SCRAM message is not UTF-8") from None
    out = []
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if len(key) != 1 or not eq:
            raise SaslError("bad-server-reply", "malformed SCRAM attribute")
        out.append((key, value))
    return out


def _escape_username(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")  # RFC 5802 §5.1 'n'


class Scram:
    """One SCRAM-SHA-1 or SCRAM-SHA-256 client exchange (RFC 5802 §3, §5; RFC 7677)."""

    __slots__ = ("name", "_hash", "_password", "_nonce", "_first_bare", "_expected", "_step")

    def __init__(self, mechanism: str, username: str, password: str,
                 nonce: str | None = None) -> None:
        if mechanism not in _SCRAM_HASHES:
            raise ValueError(f"not a SCRAM mechanism: {mechanism!r}")
        self.name = mechanism
        self._hash = _SCRAM_HASHES[mechanism]
        user = _escape_username(saslprep(username))
        self._password: bytes | None = saslprep(password).encode("utf-8")
        # RFC 5802 §5.1 'r': printable, no ','; token_urlsafe gives [A-Za-z0-9_-].
        self._nonce = nonce if nonce is not None else secrets.token_urlsafe(24)
        self._first_bare = f"n={user},r={self._nonce}".encode("utf-8")
        self._expected: bytes | None = None
        self._step = _Step.START

    def __repr__(self) -> str:  # never the password, the keys or the proof
        return f"<Scram {self.name} {self._step.value}>"

    def initial(self) -> bytes:
        if self._step is not _Step.START:
            raise SaslError("bad-server-reply", "SCRAM exchange already started")
        self._step = _Step.FIRST_SENT
        return GS2_HEADER + self._first_bare

    def challenge(self, data: bytes) -> bytes:
        if self._step is _Step.FIRST_SENT:
            return self._client_final(data)
        if self._step is _Step.FINAL_SENT:
            # Some servers send server-final as a challenge and expect an empty response
            # before <success/> (RFC 6120 §6.3.10 allows either).
            self._verify(data)
            self._step = _Step.VERIFIED
            return b""
        raise SaslError("bad-server-reply", "unexpected SCRAM challenge")

    def success(self, data: bytes) -> None:
        if self._step is _Step.FINAL_SENT:
            if not data:
                raise SaslError("server-signature-mismatch",
                                "the server sent no signature (RFC 5802 §3)")
            self._verify(data)
        elif self._step is not _Step.VERIFIED or data:
            raise SaslError("bad-server-reply", "unexpected SCRAM success")
        self._step = _Step.DONE

    def _client_final(self, server_first: bytes) -> bytes:
        attrs = _attributes(server_first)
        if attrs and attrs[0][0] == "m":
            raise SaslError("bad-server-reply", "mandatory SCRAM extension not supported")
        if len(attrs) < 3 or [k for k, _ in attrs[:3]] != ["r", "s", "i"]:
            raise SaslError("bad-server-reply", "server-first message needs r, s, i")
        nonce, salt_b64, iterations_s = (v for _, v in attrs[:3])
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise SaslError("bad-server-reply", "server nonce does not extend ours")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
        except ValueError:
            raise SaslError("bad-server-reply", "salt is not base64") from None
        if not (iterations_s.isascii() and iterations_s.isdigit() and len(iterations_s) <= 9):
            raise SaslError("bad-server-reply", "iteration count is not a number")
        iterations = int(iterations_s)
        if not 0 < iterations <= MAX_ITERATIONS:
            raise SaslError("bad-server-reply", f"iteration count {iterations} out of range "
                            f"(1 to {MAX_ITERATIONS})")
        assert self._password is not None
        h = self._hash
        salted = hashlib.pbkdf2_hmac(h, self._password, salt, iterations)  # Hi()
        self._password = None  # not needed any more
        client_key = hmac.digest(salted, b"Client Key", h)
        stored_key = hashlib.new(h, client_key).digest()
        without_proof = b"c=" + base64.b64encode(GS2_HEADER) + b",r=" + nonce.encode()
        auth_message = self._first_bare + b"," + server_first + b"," + without_proof
        signature = hmac.digest(stored_key, auth_message, h)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", h)
        self._expected = hmac.digest(server_key, auth_message, h)
        self._step = _Step.FINAL_SENT
        return without_proof + b",p=" + base64.b64encode(proof)

    def _verify(self, server_final: bytes) -> None:
        attrs = dict(_attributes(server_final))
        if "e" in attrs:
            # RFC 5802 §7 server-error; the value is a fixed token, safe to report.
            raise SaslError("not-authorized", f"server-error {attrs['e'][:64]!r}")
        try:
            got = base64.b64decode(attrs.get("v", ""), validate=True)
        except ValueError:
            got = b""
        assert self._expected is not None
        if not got or not hmac.compare_digest(got, self._expected):
            raise SaslError("server-signature-mismatch",
                            "the server's signature is wrong (RFC 5802 §3)")


# ---------------------------------------------------------------------------------------
# PLAIN (RFC 4616)

class Plain:
    """SASL PLAIN: authcid and password in the initial response, no authzid."""

    __slots__ = ("name", "_message", "_step")

    def __init__(self, username: str, password: str) -> None:
        self.name = "PLAIN"
        if "\0" in username or "\0" in password:
            raise SaslError("malformed-request", "NUL in the user name or password (RFC 4616 §2)")
        self._message: bytes | None = b"\0" + username.encode() + b"\0" + password.encode()
        self._step = _Step.START

    def __repr__(self) -> str:
        return f"<Plain {self._step.value}>"

    def initial(self) -> bytes:
        if self._message is None:
            raise SaslError("bad-server-reply", "PLAIN exchange already started")
        message, self._message = self._message, None
        self._step = _Step.FINAL_SENT
        return message

    def challenge(self, data: bytes) -> bytes:
        raise SaslError("bad-server-reply", "PLAIN has no challenges (RFC 4616)")

    def success(self, data: bytes) -> None:
        if self._step is not _Step.FINAL_SENT or data:
            raise SaslError("bad-server-reply", "unexpected PLAIN success")
        self._step = _Step.DONE
