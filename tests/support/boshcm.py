"""bosh-cm as a subprocess for the tests: re-exported from :mod:`scripts.lib.boshcm`, the one
copy (the scripts use it too and do not import tests; design.md §8 rule 9).

To change module state such as ``_READY`` (the "listening on" pattern), patch
:mod:`scripts.lib.boshcm` itself: this module only holds references.
"""

from __future__ import annotations

from scripts.lib.boshcm import REPO_ROOT, BoshCM, BoshCMError, render_toml

__all__ = ["BoshCM", "BoshCMError", "REPO_ROOT", "render_toml"]
