"""The import direction of design.md §2 / docs/architecture.md, checked on the source.

The sans-IO core imports neither asyncio, aiohttp nor slixmpp; ``xmpp_bridge`` knows only
``bosh.ports``, ``bosh.errors`` and ``bosh.config`` from the BOSH side; slixmpp is imported
only by ``xmpp_bridge``; only ``bosh.__main__`` imports both packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ("errors", "wire", "session", "registry", "config", "ports", "limits", "xmlsafe", "events",
        "ws_session", "discovery", "xmltext", "sasl", "prebind_keys", "haproxy")
DRIVERS = ("driver", "hub", "ws_driver", "prebind")  # asyncio glue, no aiohttp
BRIDGE_MAY_USE = {"bosh.ports", "bosh.errors", "bosh.config", "bosh.xmltext"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("module", CORE)
def test_core_module_does_no_io(module: str) -> None:
    used = top(imports(ROOT / "bosh" / f"{module}.py"))
    assert not used & {"asyncio", "aiohttp", "slixmpp", "xmpp_bridge", "socket", "ssl"}, used


@pytest.mark.parametrize("module", DRIVERS)
def test_drivers_use_asyncio_but_not_aiohttp(module: str) -> None:
    used = top(imports(ROOT / "bosh" / f"{module}.py"))
    assert "aiohttp" not in used and "slixmpp" not in used and "xmpp_bridge" not in used


def test_only_the_bridge_imports_slixmpp_and_only_main_imports_the_bridge() -> None:
    for path in (ROOT / "bosh").glob("*.py"):
        used = top(imports(path))
        assert "slixmpp" not in used, path
        if path.name != "__main__.py":
            assert "xmpp_bridge" not in used, path


def test_bridge_knows_only_the_bosh_ports_errors_and_config() -> None:
    for path in (ROOT / "xmpp_bridge").glob("*.py"):
        from_bosh = {n for n in imports(path) if n.split(".")[0] == "bosh"}
        assert from_bosh <= BRIDGE_MAY_USE, (path, from_bosh - BRIDGE_MAY_USE)


def _python_files_under_scripts() -> list[Path]:
    """Every Python source under scripts/: ``*.py`` and the extensionless Python entry points
    (``#!... python`` first line, e.g. scripts/bosh-soak)."""
    out = []
    for path in sorted((ROOT / "scripts").rglob("*")):
        if not path.is_file() or any(p.startswith((".", "__pycache__")) for p in
                                     path.relative_to(ROOT).parts):
            continue
        if path.suffix == ".py":
            out.append(path)
        elif not path.suffix:
            with path.open("rb") as f:
                first = f.readline()
            if first.startswith(b"#!") and b"python" in first:
                out.append(path)
    return out


def test_scripts_do_not_import_the_tests() -> None:
    """Design.md §8 rule 9: scripts stand alone; what they share with the tests lives in
    scripts/lib and tests/support re-exports it. Any import of ``tests`` or ``tests.*``
    anywhere in a file (also inside functions) counts."""
    files = _python_files_under_scripts()
    assert any(p.name == "bosh-soak" for p in files) and len(files) > 20, files
    bad = {str(p.relative_to(ROOT)): sorted(n for n in imports(p) if top({n}) == {"tests"})
           for p in files}
    assert not {k: v for k, v in bad.items() if v}
