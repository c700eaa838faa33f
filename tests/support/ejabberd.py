"""A throwaway ejabberd for tests: the second real upstream next to Prosody.

Debian's ``ejabberd`` package (23.01) runs as a system service that does not start in
containers; this runs a private instance instead, with everything in one work directory:
the generated ``conf/ejabberd.yml`` and ``conf/ejabberdctl.cfg``, a self-signed certificate
(the same kind :mod:`tests.support.prosody` makes), the Mnesia spool and the logs. It is
started with ``ejabberdctl --config-dir ... foreground`` as a child process on free loopback
ports, so it dies with us and never touches the system instance (``/etc/ejabberd``,
``/var/lib/ejabberd``).

    server = EjabberdServer(Path(tmp))
    server.start()
    server.register("alice", "secret")
    ... server.c2s_port, server.cert_path, server.domain ...
    server.session_addresses("alice")   # the client addresses ejabberd reports
    server.stop()          # SIGTERM + wait; server.kill() = SIGKILL ("upstream died")
    server.start()         # restart-capable; keeps its ports, certificate and users

The listeners: c2s on ``c2s_port`` (STARTTLS required) and a second c2s listener on
``proxy_c2s_port`` with ``use_proxy_protocol: true`` (HAProxy's PROXY protocol header
first), both on 127.0.0.1. Modules: what Converse.js needs (mod_blocking + mod_privacy,
XEP-0191: it waits for the blocklist before it shows an incoming chat), XEP-0198
(mod_stream_mgmt), roster, disco, ping, carbons, CSI, private storage, vCard, version;
no mod_fail2ban (the tests fail logins on purpose, all from 127.0.0.1), no mod_offline
(as the test Prosody).

``ejabberdctl`` talks to the node over Erlang distribution. ``ERL_DIST_PORT`` makes that a
fixed loopback port with no ``epmd`` at all (Erlang/OTP 23+), and a random cookie on the
command line keeps the node private to this instance. The script only runs as root or as
the ``ejabberd`` user; as root it would ``su`` to ``ejabberd``, which could not read the
test's work directory, so the private ``ejabberdctl.cfg`` (a shell fragment the script
sources) runs it as the current user instead.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

from scripts.lib.procs import Managed, free_ports, port_open, size_of, spawn, wait_started
from tests.support.prosody import make_self_signed_cert

__all__ = ["EjabberdServer", "EjabberdError", "ejabberd_available", "ejabberd_missing_reason",
           "EJABBERDCTL"]

#: Debian installs it in /usr/sbin, which is not on a normal user's PATH.
EJABBERDCTL = shutil.which("ejabberdctl") or "/usr/sbin/ejabberdctl"


class EjabberdError(RuntimeError):
    """ejabberd could not be started or managed; the message includes its log tail."""


def ejabberd_missing_reason() -> str | None:
    """None when a private ejabberd can run here, else why not."""
    if not os.access(EJABBERDCTL, os.X_OK) or not shutil.which("erl"):
        return "ejabberd not installed (bash scripts/test installs it: apt-get install -y ejabberd)"
    if not shutil.which("openssl"):
        return "openssl not installed"
    if os.geteuid() != 0:
        import pwd

        if pwd.getpwuid(os.geteuid()).pw_name != "ejabberd":
            return "ejabberdctl runs only as root or as the ejabberd user"
    return None


def ejabberd_available() -> bool:
    """True when ``ejabberdctl``, ``erl`` and ``openssl`` are installed and usable by us."""
    return ejabberd_missing_reason() is None


def _wait_pid_exit(pid: int, timeout: float) -> None:
    """Block until process ``pid`` (not necessarily our child) exits, or ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError, AttributeError):
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def _yaml(value: str) -> str:
    """A double-quoted YAML scalar."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EjabberdServer(Managed):
    """One ejabberd instance in ``workdir``: c2s (STARTTLS required) on loopback, plus a c2s
    listener that expects the PROXY protocol header (``proxy_c2s_port``)."""

    #: Which server this is, for tests whose expectations differ between servers.
    kind = "ejabberd"

    def __init__(self, workdir: Path, domain: str = "localhost") -> None:
        self.workdir = Path(workdir).resolve()
        self.domain = domain
        self.host = "127.0.0.1"
        self.c2s_port = 0
        self.proxy_c2s_port = 0
        self.dist_port = 0
        # -sname node; unique per instance so that logs and Mnesia never mix. Kept across
        # restarts: the Mnesia schema in the spool is bound to the node name.
        self.node = f"boshcmtest{secrets.token_hex(4)}@localhost"
        self._cookie = secrets.token_hex(16)
        self.config_dir = self.workdir / "conf"
        self.config_path = self.config_dir / "ejabberd.yml"
        self.ctl_config_path = self.config_dir / "ejabberdctl.cfg"
        self.spool_path = self.workdir / "spool"
        self.logs_path = self.workdir / "logs"
        self.log_path = self.logs_path / "ejabberd.log"
        self.error_log_path = self.logs_path / "error.log"
        self.console_path = self.workdir / "ejabberd.console.log"
        self.cert_path = self.workdir / "certs" / f"{domain}.crt"
        self.key_path = self.workdir / "certs" / f"{domain}.key"
        self.pem_path = self.workdir / "certs" / f"{domain}.pem"  # cert + key, as ejabberd wants
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ setup
    def _make_cert(self) -> None:
        if self.pem_path.exists():
            return
        try:
            make_self_signed_cert(self.cert_path, self.key_path, self.domain)
        except RuntimeError as exc:
            raise EjabberdError(str(exc)) from None
        self.pem_path.write_bytes(self.cert_path.read_bytes() + self.key_path.read_bytes())
        os.chmod(self.pem_path, 0o600)

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        c2s = """    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: c2s
    starttls_required: true"""
        cfg = f"""# generated by tests/support/ejabberd.py; throwaway instance, loopback only
hosts:
  - {_yaml(self.domain)}
loglevel: info
log_rotate_count: 0
language: "en"
certfiles:
  - {_yaml(str(self.pem_path))}
listen:
  -
    port: {self.c2s_port}
{c2s}
  -
    port: {self.proxy_c2s_port}
{c2s}
    use_proxy_protocol: true
auth_method: internal
auth_password_format: scram
disable_sasl_mechanisms:
  - "digest-md5"
  - "X-OAUTH2"
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
shaper_rules:
  # The conformance checker and the load tests open many sessions for a few users.
  max_user_sessions: 10000
modules:
  mod_admin_extra: {{}}
  mod_blocking: {{}}
  mod_caps: {{}}
  mod_carboncopy: {{}}
  mod_client_state: {{}}
  mod_disco: {{}}
  mod_last: {{}}
  mod_ping: {{}}
  mod_privacy: {{}}
  mod_private: {{}}
  mod_roster:
    versioning: true
  mod_stream_mgmt:
    resend_on_timeout: if_offline
  mod_vcard:
    search: false
  mod_version: {{}}
"""
        self.config_path.write_text(cfg)
        # Sourced by ejabberdctl (bash) after its own defaults: every value is ours, so no
        # quoting beyond what is here is needed.
        erl_options = " ".join([
            "-env ERL_CRASH_DUMP_BYTES 0",                 # as Debian's /etc/default/ejabberd
            f"-setcookie {self._cookie}",
            "-kernel inet_dist_use_interface {127,0,0,1}",  # distribution on loopback only
        ])
        self.ctl_config_path.write_text(
            "# generated by tests/support/ejabberd.py\n"
            "EXEC_CMD=as_current_user\n"  # not `su ejabberd`: it cannot read our work dir
            f"ERLANG_NODE={self.node}\n"
            f"ERL_DIST_PORT={self.dist_port}\n"  # fixed distribution port: no epmd
            f'ERL_OPTIONS="{erl_options}"\n'
            "EJABBERD_BYPASS_WARNINGS=true\n")
        # ERL_INETRC is $CONFIG_DIR/inetrc: resolve 'localhost' (the node's host) from it.
        (self.config_dir / "inetrc").write_text(
            '{lookup,["file","native"]}.\n{host,{127,0,0,1}, ["localhost"]}.\n')

    def _ctl_cmd(self, *args: str) -> list[str]:
        return [EJABBERDCTL, "--config-dir", str(self.config_dir), "--spool", str(self.spool_path),
                "--logs", str(self.logs_path), *args]

    def _env(self) -> dict[str, str]:
        # HOME: anything Erlang or ejabberd writes there stays in the work directory.
        return {**os.environ, "HOME": str(self.workdir)}

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30) -> None:
        """Start ejabberd in the foreground and return once both c2s listeners accept
        connections.

        Picks free loopback ports on the first start and keeps them on restarts.
        """
        if self.running:
            raise EjabberdError("already running")
        missing = ejabberd_missing_reason()
        if missing:
            raise EjabberdError(missing)
        for path in (self.workdir, self.spool_path, self.logs_path):
            path.mkdir(parents=True, exist_ok=True)
        self._make_cert()
        if not self.c2s_port:
            self.c2s_port, self.proxy_c2s_port, self.dist_port = free_ports(3, self.host)
        self._write_config()
        log_offset = size_of(self.log_path)
        console_offset = size_of(self.console_path)
        # A new session: ejabberdctl (bash) and the Erlang VM it runs are one process
        # group, ended together by its id.
        self.proc = spawn(self._ctl_cmd("foreground"), self.console_path, cwd=self.workdir,
                          env=self._env())
        ports = [self.c2s_port, self.proxy_c2s_port]
        # A bare connection to the PROXY protocol listener would be logged as an error
        # there: that one is watched for in the console output instead (ejabberd.log is
        # written with a delay of up to seconds).
        proxy_ready = f"Start accepting TCP connections at {self.host}:{self.proxy_c2s_port} ".encode()
        wait_started(self.proc, lambda: proxy_ready in self._console_since(console_offset)
                     and port_open(self.host, self.c2s_port), timeout,
                     error=EjabberdError, exited="ejabberd exited with {code} during startup",
                     late=f"ejabberd did not listen on {ports} within {timeout}s",
                     tail=lambda: self.log_tail(log_offset), on_exit=self.kill, on_late=self.kill)

    @staticmethod
    def _group_members(pgid: int) -> dict[int, int]:
        """pid -> ppid of the live (not zombie) processes in process group ``pgid``."""
        members: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members[int(entry)] = int(fields[1])
        return members

    def _wait_group(self, pgid: int, deadline: float) -> bool:
        """Wait until group ``pgid`` has no live process; True if it emptied in time."""
        assert self.proc is not None
        while True:
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=0.05)  # reap the script (our child) when it exits
                except subprocess.TimeoutExpired:
                    pass
            members = self._group_members(pgid)
            if not members:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.proc.poll() is not None:
                # Only the VM (no longer our child) is left: wait on its exit itself.
                _wait_pid_exit(next(iter(members)), min(remaining, 1.0))

    def _kill_group(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is our child's pid
        # The VM and its helpers first, so that the script reaps the VM and then exits by
        # itself; then whatever is left of the group.
        for pid in self._group_members(pgid):
            if pid != pgid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._wait_group(pgid, time.monotonic() + 5):
            return
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._wait_group(pgid, time.monotonic() + 10)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to the Erlang VM (it stops cleanly: init:stop) and wait for it and the
        script; SIGKILL to the whole group after ``timeout``."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        # The VM is the script's child: signal it, not the script, so that the script
        # reaps it and exits by itself (an orphan would be left to whoever is pid 1).
        for pid, ppid in self._group_members(pgid).items():
            if ppid == pgid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        if not self._wait_group(pgid, time.monotonic() + timeout):
            self._kill_group()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its streams (an 'upstream died' test)."""
        self._kill_group()
        self.proc = None

    # ------------------------------------------------------------------ ejabberdctl
    def ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``ejabberdctl ARGS`` against this node (no check of the exit code)."""
        return subprocess.run(self._ctl_cmd(*args), capture_output=True, text=True,
                              cwd=str(self.workdir), env=self._env(), stdin=subprocess.DEVNULL,
                              timeout=timeout)

    def register(self, user: str, password: str) -> None:
        """Create (or reset) an account with ``ejabberdctl register`` (or ``change_password``)."""
        res = self.ctl("register", user, self.domain, password)
        if res.returncode != 0 and "already registered" in res.stdout + res.stderr:
            res = self.ctl("change_password", user, self.domain, password)
        if res.returncode != 0:
            # never echo the password: the command line is not included
            raise EjabberdError(f"ejabberdctl register {user}@{self.domain} failed ({res.returncode}): "
                                f"{(res.stdout + res.stderr).strip().replace(password, '***')}\n"
                                + self.log_tail(limit=2000))

    def session_addresses(self, user: str) -> dict[str, str]:
        """resource -> the client IP address ejabberd holds for each session of ``user``
        (``ejabberdctl user_sessions_info``: connection, ip, port, priority, node, uptime,
        status, resource, status text, tab-separated)."""
        res = self.ctl("user_sessions_info", user, self.domain)
        if res.returncode != 0:
            raise EjabberdError(f"ejabberdctl user_sessions_info failed ({res.returncode}): "
                                f"{(res.stdout + res.stderr).strip()}")
        out: dict[str, str] = {}
        for line in res.stdout.splitlines():
            fields = line.split("\t")
            if len(fields) >= 8:
                out[fields[7]] = fields[1]
        return out

    # ------------------------------------------------------------------ debugging
    def _console_since(self, offset: int) -> bytes:
        try:
            with open(self.console_path, "rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""

    def log_tail(self, offset: int = 0, limit: int = 4000) -> str:
        parts = []
        for path in (self.log_path, self.error_log_path, self.console_path):
            if path.exists():
                data = path.read_bytes()[offset if path == self.log_path else 0:]
                if data or path == self.log_path:
                    parts.append(f"--- {path.name} ---\n" + data[-limit:].decode(errors="replace"))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return (f"<EjabberdServer {self.domain} c2s={self.c2s_port} proxy={self.proxy_c2s_port} "
                f"{'running' if self.running else 'stopped'} in {self.workdir}>")
