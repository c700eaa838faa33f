"""The sans-IO parts of prebind (issue 10): the SASL client (bosh.sasl) against the RFC 5802
and RFC 7677 test vectors, mechanism choice, SASLprep; the API keys and per-key rate
(bosh.prebind_keys); the request checks (bosh.prebind.parse_request); the [prebind] config."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from bosh import config, sasl
from bosh.errors import ConfigError
from bosh.prebind import PrebindError, parse_request, plain_allowed
from bosh.prebind_keys import ApiKeys, KeyRates, load_keys, permission_warning

ROOT = Path(__file__).resolve().parents[2]

# ---- SCRAM test vectors ------------------------------------------------------------------

# RFC 5802 §5 (SCRAM-SHA-1), user "user", password "pencil".
SHA1_VECTOR = dict(
    mechanism="SCRAM-SHA-1", nonce="fyko+d2lbbFgONRv9qkxdawL",
    client_first=b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    server_first=b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    client_final=b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                 b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    server_final=b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
)
# RFC 7677 §3 (SCRAM-SHA-256), same user and password.
SHA256_VECTOR = dict(
    mechanism="SCRAM-SHA-256", nonce="rOprNGfwEbeRWgbNEkqO",
    client_first=b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    server_first=b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                 b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    client_final=b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                 b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    server_final=b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
)
VECTORS = pytest.mark.parametrize("v", [SHA1_VECTOR, SHA256_VECTOR], ids=["sha1", "sha256"])


def scram(v: dict) -> sasl.Scram:  # type: ignore[type-arg]
    return sasl.Scram(v["mechanism"], "user", "pencil", nonce=v["nonce"])


@VECTORS
def test_scram_client_produces_the_rfc_messages_and_accepts_the_server_signature(v: dict) -> None:  # type: ignore[type-arg]
    """RFC 5802 §5 / RFC 7677 §3: the exact client-first and client-final messages."""
    client = scram(v)
    assert client.initial() == v["client_first"]
    assert client.challenge(v["server_first"]) == v["client_final"]
    client.success(v["server_final"])


@VECTORS
def test_scram_server_final_may_come_as_a_challenge_then_empty_success(v: dict) -> None:  # type: ignore[type-arg]
    """RFC 6120 §6.3.10: the additional data may come in a challenge; the answer is empty."""
    client = scram(v)
    client.initial()
    client.challenge(v["server_first"])
    assert client.challenge(v["server_final"]) == b""
    client.success(b"")


@VECTORS
@pytest.mark.parametrize("final", [b"v=" + base64.b64encode(b"x" * 20), b"", b"v=", b"e=invalid-proof"])
def test_scram_refuses_a_wrong_or_missing_server_signature(v: dict, final: bytes) -> None:  # type: ignore[type-arg]
    """RFC 5802 §3: the client authenticates the server; without that no session is handed out."""
    client = scram(v)
    client.initial()
    client.challenge(v["server_first"])
    with pytest.raises(sasl.SaslError) as info:
        client.success(final)
    assert info.value.condition in ("server-signature-mismatch", "not-authorized")


@pytest.mark.parametrize("server_first, why", [
    (b"r=someone-else,s=QSXCR+Q6sek8bf92,i=4096", "nonce"),
    (b"r=fyko+d2lbbFgONRv9qkxdawL,s=QSXCR+Q6sek8bf92,i=4096", "nonce"),  # not extended
    (b"m=ext,r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92,i=4096", "extension"),
    (b"r=fyko+d2lbbFgONRv9qkxdawLx,s=!!!,i=4096", "base64"),
    (b"r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92,i=0", "range"),
    (b"r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92,i=99999999", "range"),
    (b"r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q6sek8bf92", "r, s, i"),
    (b"\xff\xfe", "UTF-8"),
])
def test_scram_refuses_a_bad_server_first_message(server_first: bytes, why: str) -> None:
    client = scram(SHA1_VECTOR)
    client.initial()
    with pytest.raises(sasl.SaslError) as info:
        client.challenge(server_first)
    assert info.value.condition == "bad-server-reply"
    assert why in info.value.detail


def test_scram_escapes_the_user_name_and_uses_a_fresh_nonce() -> None:
    """RFC 5802 §5.1: ',' and '=' in the user name are sent as =2C and =3D."""
    a = sasl.Scram("SCRAM-SHA-1", "a,b=c", "pw")
    b = sasl.Scram("SCRAM-SHA-1", "a,b=c", "pw")
    first_a, first_b = a.initial(), b.initial()
    assert first_a.startswith(b"n,,n=a=2Cb=3Dc,r=")
    assert first_a != first_b and len(first_a) > len(b"n,,n=a=2Cb=3Dc,r=") + 24


def test_scram_matches_a_server_that_computes_its_keys_like_prosody() -> None:
    """A full exchange against a server side written from RFC 5802 §3 (what Prosody stores)."""
    client = sasl.Scram("SCRAM-SHA-256", "alice", "pässwörd")
    first = client.initial()
    snonce = first.split(b"r=")[1] + b"SERVER"
    salt, iterations = b"salt-1234", 1000
    server_first = b"r=" + snonce + b",s=" + base64.b64encode(salt) + b",i=%d" % iterations
    final = client.challenge(server_first)
    salted = hashlib.pbkdf2_hmac("sha256", "pässwörd".encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored = hashlib.sha256(client_key).digest()
    without_proof, _, proof_b64 = final.rpartition(b",p=")
    auth = first[3:] + b"," + server_first + b"," + without_proof
    recovered = bytes(a ^ b for a, b in zip(base64.b64decode(proof_b64),
                                            hmac.digest(stored, auth, "sha256")))
    assert hashlib.sha256(recovered).digest() == stored  # the server accepts the proof
    server_sig = hmac.digest(hmac.digest(salted, b"Server Key", "sha256"), auth, "sha256")
    client.success(b"v=" + base64.b64encode(server_sig))


def test_sasl_objects_never_show_secrets_in_repr() -> None:
    for mech in (sasl.Scram("SCRAM-SHA-1", "alice", "s3cret-pw"), sasl.Plain("alice", "s3cret-pw")):
        mech.initial()
        assert "s3cret" not in repr(mech) and "s3cret" not in str(vars(mech) if hasattr(mech, "__dict__") else "")


def test_plain_initial_response_and_no_challenges() -> None:
    """RFC 4616 §2: [authzid] NUL authcid NUL passwd."""
    plain = sasl.Plain("alice", "pw")
    assert plain.initial() == b"\0alice\0pw"
    with pytest.raises(sasl.SaslError):
        plain.challenge(b"x")
    plain.success(b"")
    with pytest.raises(sasl.SaslError):
        sasl.Plain("alice", "p\0w")


@pytest.mark.parametrize("offered, plain_ok, chosen", [
    (["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], True, "SCRAM-SHA-256"),
    (["SCRAM-SHA-1", "PLAIN"], True, "SCRAM-SHA-1"),          # what Prosody offers
    (["SCRAM-SHA-1", "PLAIN"], False, "SCRAM-SHA-1"),
    (["PLAIN"], True, "PLAIN"),
    (["PLAIN"], False, None),                                  # never PLAIN in the clear
    (["DIGEST-MD5", "X-OAUTH2"], True, None),
    (["scram-sha-1"], True, "SCRAM-SHA-1"),
    ([], True, None),
])
def test_choose_prefers_scram_sha256_then_sha1_then_plain_when_allowed(
        offered: list[str], plain_ok: bool, chosen: str | None) -> None:
    assert sasl.choose(offered, plain_ok) == chosen


@pytest.mark.parametrize("tls, host, allowed", [
    ("required", "xmpp.example.org", True), ("none", "127.0.0.1", True), ("none", "::1", True),
    ("none", "localhost", True), ("none", "xmpp.example.org", False), ("none", "", False),
])
def test_plain_only_over_tls_or_to_a_loopback_upstream(tls: str, host: str, allowed: bool) -> None:
    assert plain_allowed(config.UpstreamConfig(tls=tls, host=host)) is allowed


@pytest.mark.parametrize("raw, prepared", [
    ("I\u00adX", "IX"),            # RFC 4013 §3 examples: soft hyphen mapped to nothing
    ("user", "user"),
    ("USER", "USER"),              # case preserved
    ("\u00aa", "a"),               # NFKC
    ("\u2168", "IX"),
    ("a\u00a0b", "a b"),           # non-ASCII space -> SPACE
])
def test_saslprep_rfc4013_examples(raw: str, prepared: str) -> None:
    assert sasl.saslprep(raw) == prepared


@pytest.mark.parametrize("raw", ["\u0007", "a\u200eb", "\u0627\u0031"])  # control, C.8, bidi
def test_saslprep_refuses_prohibited_strings_without_echoing_them(raw: str) -> None:
    with pytest.raises(sasl.SaslError) as info:
        sasl.saslprep(raw)
    assert info.value.condition == "malformed-request" and raw not in str(info.value)


# ---- API keys and the per-key rate -------------------------------------------------------

KEY_A = "a" * 16 + "-0123456789abcdef"
KEY_B = "b" * 40


def write(tmp_path: Path, text: str, name: str = "keys") -> str:
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


def test_keys_file_one_per_line_with_comments_and_blank_lines(tmp_path: Path) -> None:
    keys = load_keys(write(tmp_path, f"# portal\n{KEY_A}\n\n  {KEY_B}  \n"))
    assert len(keys) == 2
    assert keys.match(KEY_A) and keys.match(KEY_B) and keys.match(KEY_A) != keys.match(KEY_B)
    assert keys.match(KEY_A + "x") is None and keys.match(KEY_A[:-1]) is None
    assert keys.match("") is None
    assert keys.match(KEY_A).startswith("sha256:") and KEY_A not in keys.match(KEY_A)  # type: ignore[operator]


@pytest.mark.parametrize("text, why", [
    ("", "lists no key"), ("# only a comment\n\n", "lists no key"),
    ("short-key\n", "line 1"), (f"{KEY_A}\nwith space inside key!\n", "line 2"),
])
def test_empty_file_or_bad_line_is_a_config_error_naming_file_and_line_not_the_key(
        tmp_path: Path, text: str, why: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_keys(path)
    message = str(info.value)
    assert path in message and "[prebind] api_keys_file" in message and why in message
    assert "short-key" not in message and "space inside" not in message


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_keys(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(info.value) and "cannot read" in str(info.value)


def test_key_compare_touches_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time: hmac.compare_digest against every stored key, match or not, first or last."""
    import bosh.prebind_keys as pk

    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(a))
        return real(a, b)

    monkeypatch.setattr(pk.hmac, "compare_digest", counting)
    keys = ApiKeys([KEY_A, KEY_B, "c" * 20])
    for presented in (KEY_A, "c" * 20, "nope", "x" * 500):
        calls.clear()
        keys.match(presented)
        assert calls == [32, 32, 32]  # digests: the same work whatever the key's length


def test_permission_warning_for_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = write(tmp_path, KEY_A)
    assert permission_warning(path) is None
    os.chmod(path, 0o644)
    warning = permission_warning(path)
    assert warning is not None and "chmod 600" in warning and path in warning
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_rate_per_key_in_a_sliding_minute() -> None:
    rates = KeyRates(3)
    assert [rates.admit("k1", t) for t in (0.0, 1.0, 2.0)] == [None, None, None]
    assert rates.admit("k1", 3.0) == pytest.approx(57.0)  # until the first leaves the window
    assert rates.admit("k2", 3.0) is None                 # per key
    assert rates.admit("k1", 60.0) is None                # the one at 0.0 has left
    assert rates.admit("k1", 60.5) == pytest.approx(0.5)
    rates.retain({"k2"})
    assert rates.admit("k1", 60.5) is None                # a removed key's window is forgotten
    unlimited = KeyRates(0)
    assert all(unlimited.admit("k", 0.0) is None for _ in range(1000))


# ---- the request -------------------------------------------------------------------------

def serves(domain: str) -> bool:
    return domain == "example.com"


def test_request_with_jid_password_and_optional_resource() -> None:
    req = parse_request(b'{"jid": "Alice@Example.com", "password": "pw", "resource": "web 1"}', serves)
    assert (req.localpart, req.domain, req.password, req.resource) == ("Alice", "example.com", "pw", "web 1")
    assert "pw" not in repr(req)
    assert parse_request(b'{"jid": "a@example.com.", "password": "pw"}', serves).resource is None


@pytest.mark.parametrize("body, condition", [
    (b"not json", "bad-request"), (b"[1]", "bad-request"), (b"\xff", "bad-request"),
    (b'{"jid": "a@example.com"}', "bad-request"),
    (b'{"jid": "a@example.com", "password": ""}', "bad-request"),
    (b'{"jid": "a@example.com", "password": 5}', "bad-request"),
    (b'{"jid": "a@example.com", "password": "pw", "passwd": "x"}', "bad-request"),
    (b'{"jid": "a@example.com", "password": "pw", "resource": ""}', "bad-request"),
    (b'{"jid": "a@example.com", "password": "pw", "resource": "a\\nb"}', "bad-request"),
    (b'{"jid": 7, "password": "pw"}', "bad-request"),
    (b'{"jid": "example.com", "password": "pw"}', "jid-malformed"),
    (b'{"jid": "@example.com", "password": "pw"}', "jid-malformed"),
    (b'{"jid": "a@example.com/res", "password": "pw"}', "jid-malformed"),
    (b'{"jid": "a b@example.com", "password": "pw"}', "jid-malformed"),
    (b'{"jid": "a:b@example.com", "password": "pw"}', "jid-malformed"),
    (b'{"jid": "a@b@example.com", "password": "pw"}', "jid-malformed"),
    (b'{"jid": "a@elsewhere.org", "password": "pw"}', "host-unknown"),
    (b'{"jid": "a@example.com", "password": "pw\\ud800x"}', "bad-request"),  # a lone surrogate
])
def test_bad_requests_are_400_with_a_condition_and_never_echo_the_password(body: bytes, condition: str) -> None:
    with pytest.raises(PrebindError) as info:
        parse_request(body, serves)
    assert (info.value.status, info.value.condition) == (400, condition)
    assert "pw" not in info.value.message.replace("password", "")


# ---- config ------------------------------------------------------------------------------

def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "bosh-cm.toml"
    path.write_text(text)
    return config.load(path)


def test_prebind_is_off_by_default_with_the_documented_defaults() -> None:
    p = config.Config().prebind
    assert (p.enabled, p.path, p.api_keys_file, p.per_key_per_minute, p.timeout) == (
        False, "/prebind", "", 60, 20.0)


@pytest.mark.parametrize("text, words", [
    ('[prebind]\nenabled = true\n', ["api_keys_file", "must name a file"]),
    ('[prebind]\nenabled = true\napi_keys_file = "/k"\npath = "/http-bind"\n', ["[prebind] path"]),
    ('[prebind]\nenabled = true\napi_keys_file = "/k"\npath = "/metrics"\n', ["[prebind] path"]),
    ('[prebind]\npath = "prebind"\n', ["[prebind] path"]),
    ('[prebind]\nper_key_per_minute = -1\n', ["per_key_per_minute", "out of range"]),
])
def test_prebind_config_errors_name_the_file_and_key(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert str(tmp_path / "bosh-cm.toml") in message
    for word in words:
        assert word in message


# ---- layering: sasl and the keys are sans-IO, prebind uses no aiohttp ----------------------

def _imports(name: str) -> set[str]:
    tree = ast.parse((ROOT / "bosh" / name).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", ["sasl.py", "prebind_keys.py"])
def test_sasl_and_keys_do_no_io_and_read_no_clock(module: str) -> None:
    """Design §3/§8 rule 1: calls in, results out; ``now`` is passed in."""
    assert not _imports(module) & {"asyncio", "aiohttp", "slixmpp", "xmpp_bridge", "socket",
                                   "ssl", "time"}


def test_prebind_driver_uses_no_aiohttp_and_only_the_web_layer_does() -> None:
    assert not _imports("prebind.py") & {"aiohttp", "slixmpp", "xmpp_bridge"}
    assert "aiohttp" in _imports("prebind_web.py")

