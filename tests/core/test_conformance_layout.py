"""Layout of the conformance checker (scripts/conformance/): every module imports, no module
imports another module of the package inside a function (the old core <-> checks cycle was
hidden that way), the package's module-level imports form no cycle, and the checker does not
import the test suite (nor bosh-cm's code, except the pure SASL client bosh.sasl). Static
(ast) checks plus plain imports; no network."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
PKG = SCRIPTS / "conformance"

# Modules of scripts/conformance that import the test suite, and what they import. None any
# more: compare.py starts Prosody and bosh-cm through scripts/lib (design.md §8 rule 9). The
# list may only shrink: the checker itself (scripts/bosh-conformance) must not need tests/
# (test_checker_loads_no_test_or_bosh_code).
KNOWN_TEST_IMPORTS: dict[str, set[str]] = {}

# The only bosh-cm code the checker may load: the sans-IO SASL client (standard library only,
# no I/O, no clock, no state beyond one exchange), so that the checker and the tests share one
# SCRAM with the server-signature check instead of each keeping a copy. Nothing that serves
# BOSH (session, wire, web, driver) may load: the checker must stay black-box.
CHECKER_MAY_LOAD = ["bosh", "bosh.sasl"]


def _modules() -> dict[str, Path]:
    """conformance.<name> -> file, for every module of the package and its subpackages."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(SCRIPTS).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    """Absolute names an import statement brings in (``from a import b`` gives ``a.b`` when
    that is a module of the package, else ``a``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = module.split(".") if is_pkg else module.split(".")[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return subs or [base]


def _is_ours(name: str) -> bool:
    return name == "conformance" or name.startswith(("conformance.", "scripts.conformance"))


def _is_tests(name: str) -> bool:
    return name == "tests" or name.startswith("tests.")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: top level, and inside top-level if/try
    blocks, except ``if TYPE_CHECKING:`` (never run)."""
    out: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for st in body:
            if isinstance(st, (ast.Import, ast.ImportFrom)):
                out.append(st)
            elif isinstance(st, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(st.test):
                    walk(st.body)
                walk(st.orelse)
            elif isinstance(st, ast.Try):
                walk(st.body)
                for h in st.handlers:
                    walk(h.body)
                walk(st.orelse)
                walk(st.finalbody)
    walk(tree.body)
    return out


def test_the_package_has_its_modules() -> None:
    assert "conformance.core" in MODULES and "conformance.checks" in MODULES
    assert not (PKG / "checks.py").exists(), "checks.py and the checks/ package both exist"
    sections = [m for m in MODULES if m.startswith("conformance.checks.")]
    assert len(sections) >= 10, sections
    for name in sections:
        lines = len(MODULES[name].read_text().splitlines())
        assert lines <= 500, f"{MODULES[name].relative_to(ROOT)} has {lines} lines"


def test_every_module_imports_and_all_items_are_registered() -> None:
    saved = list(sys.path)
    sys.path.insert(0, str(SCRIPTS))
    try:
        for name in MODULES:
            importlib.import_module(name)
        registry = importlib.import_module("conformance.registry")
        core = importlib.import_module("conformance.core")
    finally:
        sys.path[:] = saved
    assert sorted(registry.CHECKS) == list(range(1, 129))
    assert core.CHECKS is registry.CHECKS
    assert all(c.level in registry.LEVELS and c.title for c in registry.CHECKS.values())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_level_import_of_the_package(name: str) -> None:
    path = MODULES[name]
    is_pkg = path.name == "__init__.py"
    bad = []
    for fn in ast.walk(_tree(path)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                got = [x for x in _imported(node, name, is_pkg) if _is_ours(x)]
                if got or (isinstance(node, ast.ImportFrom) and node.level):
                    bad.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not bad, f"{path.relative_to(ROOT)} imports the package inside a function:\n" + "\n".join(bad)


def test_no_import_cycle_in_the_package() -> None:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps: set[str] = set()
        for node in _module_level_imports(_tree(path)):
            deps.update(x for x in _imported(node, name, path.name == "__init__.py")
                        if x in MODULES and x != name)
        graph[name] = deps

    state: dict[str, int] = {}   # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [m, d] if d in path else [m, d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, path + [m])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_scripts_conformance_does_not_import_tests() -> None:
    found: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                for x in _imported(node, name, path.name == "__init__.py"):
                    if _is_tests(x):
                        found.setdefault(path.relative_to(PKG).as_posix(), set()).add(x)
    assert found == KNOWN_TEST_IMPORTS, (
        f"modules of scripts/conformance importing tests/: {found} (known: {KNOWN_TEST_IMPORTS})")


def test_checker_loads_no_test_or_bosh_code() -> None:
    """What scripts/bosh-conformance runs is black-box: neither tests/ nor bosh-cm's code,
    except the pure SASL client (CHECKER_MAY_LOAD)."""
    code = ("import runpy, sys\n"
            f"runpy.run_path({str(PKG / 'checker.py')!r}, run_name='not_main')\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tests', 'bosh', 'xmpp_bridge'))\n"
            "print(bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr(CHECKER_MAY_LOAD), proc.stdout
