"""What the tests and scripts use of a throwaway XMPP server (Prosody here, ejabberd in
``tests/support/ejabberd.py``): one :class:`typing.Protocol`, no I/O.

``tests/support/upstreams.py`` re-exports :class:`XmppServer` beside its test-only pieces
(choosing and requiring servers); scripts import it from here (scripts do not import tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["XmppServer"]


class XmppServer(Protocol):
    """What the tests use of a throwaway server (ProsodyServer, EjabberdServer)."""

    domain: str
    host: str
    c2s_port: int
    cert_path: Path

    @property
    def running(self) -> bool: ...

    def start(self, timeout: float = ...) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...

    def kill(self) -> None: ...

    def register(self, user: str, password: str) -> None: ...

    def log_tail(self, offset: int = ..., limit: int = ...) -> str: ...
