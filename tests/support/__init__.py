"""Test support: real components (Prosody, ejabberd, nginx, bosh-cm) and black-box clients.

The pieces the scripts need too (Prosody, bosh-cm as a subprocess, the BOSH client, the XMPP
peer) live in ``scripts/lib/``; the modules of the same name here re-export them, so tests
keep importing ``from tests.support.prosody import ProsodyServer`` and scripts never import
tests (design.md §8 rule 9).
"""

from __future__ import annotations

import os

__all__ = ["require"]


def require(missing: str | None) -> None:
    """Design §7: a test that needs a real component (Prosody, nginx, HAProxy...) fails when
    CI=true, else skips, with ``missing`` (why it cannot run here); None: it can."""
    if missing is None:
        return
    import pytest  # only here: the support modules are also imported outside pytest

    if os.environ.get("CI") == "true":
        pytest.fail(missing, pytrace=False)
    pytest.skip(missing)
