"""The real upstream XMPP servers the integration tests run against: Prosody and ejabberd.

``UPSTREAMS`` (a comma list, default ``prosody,ejabberd``) picks the servers for the tests
marked ``every_upstream`` (see tests/conftest.py); the other integration tests use Prosody
only. Both server classes offer the same surface (:class:`XmppServer`). pytest is imported
only by the functions that need it. :class:`XmppServer` lives in ``scripts/lib/upstreams.py``
(the scripts type against it too) and is re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

from scripts.lib.upstreams import XmppServer
from tests.support.ejabberd import EjabberdServer, ejabberd_missing_reason
from tests.support.prosody import ProsodyServer, prosody_available

__all__ = ["UPSTREAM_KINDS", "XmppServer", "upstream_names", "require_upstream", "make_server"]

UPSTREAM_KINDS = ("prosody", "ejabberd")


def upstream_names() -> list[str]:
    """The servers named by ``UPSTREAMS`` (default: both), in that order."""
    raw = os.environ.get("UPSTREAMS", ",".join(UPSTREAM_KINDS))
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = sorted(set(names) - set(UPSTREAM_KINDS))
    if bad or not names:
        import pytest  # only here: the support modules are also used by scripts

        raise pytest.UsageError(f"UPSTREAMS: unknown {bad or raw!r}; allowed: a comma list of "
                                + ", ".join(UPSTREAM_KINDS))
    return list(dict.fromkeys(names))


def _missing(kind: str) -> str | None:
    if kind == "prosody":
        return None if prosody_available() else \
            "prosody/prosodyctl/openssl not installed (bash scripts/test installs them)"
    return ejabberd_missing_reason()


def require_upstream(kind: str) -> None:
    """Design §7: a test that needs a real server fails (CI=true) or skips without it."""
    import pytest

    reason = _missing(kind)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def make_server(kind: str, workdir: Path, users: dict[str, str] | None = None) -> XmppServer:
    """A started server of ``kind`` in ``workdir`` with ``users`` registered."""
    server: XmppServer = ProsodyServer(workdir) if kind == "prosody" else EjabberdServer(workdir)
    server.start()
    try:
        for user, password in (users or {}).items():
            server.register(user, password)
    except BaseException:
        server.stop()
        raise
    return server
