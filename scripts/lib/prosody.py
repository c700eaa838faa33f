"""A throwaway Prosody for tests, the demo launcher and benchmarks.

The one copy: ``tests/support/prosody.py`` re-exports it (scripts do not import tests).

Everything lives in one work directory: the generated ``prosody.cfg.lua``, a self-signed
certificate (CN/SAN ``localhost`` and ``127.0.0.1``), the pid file, the data store and the
log. Prosody runs in the foreground as a child process on free loopback ports, so it dies
with us and never touches the system instance (``/etc/prosody``, ``/var/lib/prosody``).

    server = ProsodyServer(Path(tmp))
    server.start()
    server.register("alice", "secret")
    ... server.c2s_port, server.http_port, server.cert_path, server.bosh_url ...
    server.stop()          # SIGTERM + wait; server.kill() = SIGKILL ("upstream died")
    server.start()         # restart-capable; keeps its ports, cert and users

Users: :meth:`register` runs ``prosodyctl register``; :meth:`register_many` writes the
``internal_hashed`` account store directly (SCRAM-SHA-1 keys), for thousands of users.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Iterable

from scripts.lib.procs import (Managed, free_port, kill_process, port_open, size_of, spawn,
                               stop_process, wait_started)

__all__ = ["ProsodyServer", "ProsodyError", "prosody_available", "free_port", "USERS",
           "make_self_signed_cert", "lua", "port_open", "encode_store_name",
           "scram_account_text"]

#: The accounts the shared ``prosody`` test fixture creates (user -> password).
USERS: dict[str, str] = {"alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3"}


class ProsodyError(RuntimeError):
    """Prosody could not be started or managed; the message includes its log tail."""


def prosody_available() -> bool:
    """True when the ``prosody`` and ``prosodyctl`` binaries and ``openssl`` are on PATH."""
    return all(shutil.which(b) for b in ("prosody", "prosodyctl", "openssl"))


def lua(value: str) -> str:
    """A Lua string literal (long brackets would be fine too; keep it simple and escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def make_self_signed_cert(cert_path: Path, key_path: Path, domain: str) -> None:
    """A self-signed EC certificate for ``domain`` (SAN also ``localhost``, ``127.0.0.1``),
    made with openssl; raises RuntimeError with openssl's message on failure.

    It also validates as its own trust anchor under strict X.509 checking (critical
    basicConstraints, key usage, SAN), so a client can use it as its ``ca_file``.
    """
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    names = ["DNS:localhost", "IP:127.0.0.1"]
    if domain != "localhost":
        names.insert(0, f"DNS:{domain}")
    cmd = [
        "openssl", "req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-days", "3650", "-subj", f"/CN={domain}",
        "-keyout", str(key_path), "-out", str(cert_path),
        "-addext", "subjectAltName=" + ",".join(names),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
        "-addext", "extendedKeyUsage=serverAuth",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"openssl failed ({res.returncode}): {res.stderr.strip()}")
    os.chmod(key_path, 0o600)


def encode_store_name(name: str) -> str:
    # Prosody's util.datamanager encodes path components: every non-alphanumeric -> %XX.
    return "".join(c if c.isalnum() else "%%%02x" % ord(c) for c in name)


def scram_account_text(password: str, salt: str, iterations: int) -> str:
    """One ``internal_hashed`` account file as Prosody writes it (SCRAM-SHA-1 keys in hex)."""
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha1).digest()
    stored_key = hashlib.sha1(client_key).hexdigest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha1).hexdigest()
    return (f"return {{\n\t[\"iteration_count\"] = {iterations};\n\t[\"salt\"] = {lua(salt)};\n"
            f"\t[\"stored_key\"] = {lua(stored_key)};\n\t[\"server_key\"] = {lua(server_key)};\n}};\n")


class ProsodyServer(Managed):
    """One Prosody instance in ``workdir``, c2s (STARTTLS required) + HTTP (mod_bosh) on loopback."""

    #: Which server this is, for tests whose expectations differ between servers.
    kind = "prosody"

    def __init__(self, workdir: Path, domain: str = "localhost", bosh: bool = True) -> None:
        self.workdir = Path(workdir).resolve()
        self.domain = domain
        self.bosh = bosh
        self.host = "127.0.0.1"
        self.c2s_port = 0
        self.http_port = 0
        self.config_path = self.workdir / "prosody.cfg.lua"
        self.cert_path = self.workdir / "certs" / f"{domain}.crt"
        self.key_path = self.workdir / "certs" / f"{domain}.key"
        self.data_path = self.workdir / "data"
        self.log_path = self.workdir / "prosody.log"
        self.console_path = self.workdir / "prosody.console.log"
        self.pid_path = self.workdir / "prosody.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def bosh_url(self) -> str:
        """Prosody's own mod_bosh endpoint: the reference implementation to compare with."""
        return f"http://{self.host}:{self.http_port}/http-bind"

    @property
    def ws_url(self) -> str:
        """Prosody's own mod_websocket endpoint (RFC 7395): the WebSocket reference."""
        return f"ws://{self.host}:{self.http_port}/xmpp-websocket"

    # ------------------------------------------------------------------ setup
    def _make_cert(self) -> None:
        if self.cert_path.exists() and self.key_path.exists():
            return
        try:
            make_self_signed_cert(self.cert_path, self.key_path, self.domain)
        except RuntimeError as exc:
            raise ProsodyError(str(exc)) from None

    def _write_config(self) -> None:
        w = self.workdir
        modules = ["roster", "saslauth", "tls", "disco", "ping", "presence", "message", "iq",
                   "posix", "time", "version", "uptime", "carbons", "blocklist", "private", "vcard"]
        if self.bosh:
            # Prosody's own mod_bosh and mod_websocket: the references to compare with.
            modules += ["bosh", "websocket", "http"]
        # XEP-0198 (built into 0.12): sessions resumable after a dropped connection.
        modules += ["smacks"]
        mods = ", ".join(lua(m) for m in modules)
        cfg = f"""-- generated by scripts/lib/prosody.py; throwaway instance, loopback only
-- foreground: started with -F (the "daemonize" option is deprecated in 0.12)
run_as_root = true
pidfile = {lua(str(self.pid_path))}
data_path = {lua(str(self.data_path))}
certificates = {lua(str(self.cert_path.parent))}
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = {lua(str(self.log_path))} }} }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
s2s_direct_tls_ports = {{ }}
component_ports = {{ }}
http_ports = {{ {self.http_port if self.bosh else ""} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
https_interfaces = {{ }}
http_default_host = {lua(self.domain)}
modules_enabled = {{ {mods} }}
modules_disabled = {{ "s2s", "s2s_auth_certs", "s2s_bidi", "dialback", "admin_telnet", "admin_shell", "admin_socket", "offline" }}
s2s_require_encryption = false
c2s_require_encryption = true
allow_unencrypted_plain_auth = false
authentication = "internal_hashed"
storage = "internal"
allow_registration = false
consider_bosh_secure = true
-- cross_domain_bosh is obsolete in 0.12; CORS for mod_bosh:
http_cors_override = {{ bosh = {{ enabled = true }}, websocket = {{ enabled = true }} }}
consider_websocket_secure = true
cross_domain_websocket = true
bosh_max_inactivity = 60
ssl = {{ certificate = {lua(str(self.cert_path))}, key = {lua(str(self.key_path))} }}

VirtualHost {lua(self.domain)}
    ssl = {{ certificate = {lua(str(self.cert_path))}, key = {lua(str(self.key_path))} }}
"""
        self.config_path.write_text(cfg)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 20) -> None:
        """Start Prosody in the foreground and return once its c2s port accepts connections.

        Picks free loopback ports on the first start and keeps them on restarts.
        """
        if self.running:
            raise ProsodyError("already running")
        if not prosody_available():
            raise ProsodyError("prosody/prosodyctl/openssl not installed (apt-get install -y prosody openssl)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_path.mkdir(parents=True, exist_ok=True)
        self._make_cert()
        if not self.c2s_port:
            self.c2s_port = free_port(self.host)
        if self.bosh and not self.http_port:
            self.http_port = free_port(self.host)
            while self.http_port == self.c2s_port:
                self.http_port = free_port(self.host)
        self._write_config()
        log_offset = size_of(self.log_path)
        self.proc = spawn(["prosody", "--config", str(self.config_path), "-F"],
                          self.console_path, cwd=self.workdir)
        ports = [self.c2s_port] + ([self.http_port] if self.bosh else [])
        wait_started(self.proc, lambda: all(port_open(self.host, p) for p in ports), timeout,
                     error=ProsodyError, exited="prosody exited with {code} during startup",
                     late=f"prosody did not listen on {ports} within {timeout}s",
                     tail=lambda: self.log_tail(log_offset), on_late=self.kill)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM and wait (escalates to SIGKILL after ``timeout``)."""
        if self.proc is not None:
            stop_process(self.proc, timeout)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its streams (an 'upstream died' test)."""
        if self.proc is not None:
            kill_process(self.proc)
            self.proc = None

    # ------------------------------------------------------------------ users
    def register(self, user: str, password: str) -> None:
        """Create (or reset) an account with ``prosodyctl register``."""
        if not self.config_path.exists():
            self._make_cert()
            self._write_config()
        res = subprocess.run(
            ["prosodyctl", "--config", str(self.config_path), "register", user, self.domain, password],
            capture_output=True, text=True, cwd=str(self.workdir), stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            # never echo the password: the command line is not included
            raise ProsodyError(f"prosodyctl register {user}@{self.domain} failed ({res.returncode}): "
                               f"{(res.stdout + res.stderr).strip().replace(password, '***')}")

    def register_many(self, users: Iterable[tuple[str, str]], iterations: int = 4096) -> None:
        """Write ``internal_hashed`` accounts straight into the data store (fast, for many users).

        Same format prosodyctl writes: SCRAM-SHA-1 stored_key/server_key in hex, salt, count.
        Safe while Prosody runs: the internal store reads the file at each login.
        """
        folder = self.data_path / encode_store_name(self.domain) / "accounts"
        folder.mkdir(parents=True, exist_ok=True)
        for user, password in users:
            text = scram_account_text(password, secrets.token_hex(16), iterations)
            target = folder / (encode_store_name(user.lower()) + ".dat")
            tmp = target.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(target)

    # ------------------------------------------------------------------ debugging
    def log_tail(self, offset: int = 0, limit: int = 4000) -> str:
        parts = []
        for path in (self.log_path, self.console_path):
            if path.exists():
                data = path.read_bytes()[offset if path == self.log_path else 0:]
                parts.append(f"--- {path.name} ---\n" + data[-limit:].decode(errors="replace"))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return (f"<ProsodyServer {self.domain} c2s={self.c2s_port} http={self.http_port} "
                f"{'running' if self.running else 'stopped'} in {self.workdir}>")

