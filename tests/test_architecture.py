"""The architecture of docs/architecture.md, checked: the import graph of `src/tcpulse` has no
cycle, every arrow between packages runs the way the map allows, the sans-I/O core stays pure,
and no module reaches into another object's underscore names.

The graph counts every import: module level, inside functions and under `TYPE_CHECKING`, absolute
and relative.  A type-only import is still a dependency a reader must hold in mind.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "tcpulse"

#: Which packages each layer may import (besides itself).  `cli` may import everything, and
#: nothing imports `cli`; the top-level `tcpulse` module is the public facade.
ALLOWED: dict[str, set[str]] = {
    "version": set(),
    "errors": set(),
    "i18n": set(),
    "protocol": set(),
    "policy": {"protocol"},
    "security": {"protocol", "errors"},
    "store": {"protocol", "errors"},
    "server": {"protocol", "policy", "store", "security", "version", "errors"},
    "client": {"protocol", "policy", "security", "version", "errors"},
    # Several nodes as one (issue 12): a backend plugged into server/cluster.py's seam.
    "cluster": {"server", "policy", "protocol", "version", "errors"},
    "admin": {"server", "store", "security", "policy", "protocol", "i18n", "version", "errors"},
    # Alerts read the server's events and reuse the backoff policy; the command line translates
    # what they report, so no i18n (issue 13).
    "alerts": {"server", "policy", "version", "errors"},
    "bench": {"protocol", "policy", "security", "i18n", "version", "errors"},
    "cli": {"server", "client", "admin", "alerts", "cluster", "store", "security", "policy", "protocol", "i18n",
            "bench", "version", "errors"},
    "__main__": {"cli"},
    "": {"server", "client", "store", "protocol", "policy", "security", "version", "errors"},
}

#: The sans-I/O core imports none of these (STYLE.md: no clock, no network, no files, no language).
#: (`random` is allowed: policy/backoff.py takes its source of randomness as an argument and only
#: defaults to it.)
IMPURE = {"asyncio", "socket", "sqlite3", "time", "selectors", "ssl", "threading", "trio", "aiohttp",
          "gettext", "os", "subprocess", "datetime", "resource", "tcpulse.i18n"}
PURE_PACKAGES = ("protocol", "policy")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """Every module of the package that `name` imports, with the line: absolute and relative,
    at any depth of the file; `from pkg import mod` counts as importing `pkg.mod`."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "tcpulse" or a.name.startswith("tcpulse."):
                    yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_pkg:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "tcpulse" or target.startswith("tcpulse.")):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                yield (sub if sub in known else target), node.lineno


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g: dict[str, set[str]] = {}
    for name, path in mods.items():
        g[name] = {t for t, _line in imports_of(name, path, known) if t in known and t != name}
    return g


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_relative_and_type_only_imports(tmp_path: Path) -> None:
    # The checker itself: a relative import, one inside a function and one under TYPE_CHECKING
    # all count, so that none of them can hide a cycle.
    pkg = tmp_path / "tcpulse" / "server"
    pkg.mkdir(parents=True)
    f = pkg / "a.py"
    f.write_text("from typing import TYPE_CHECKING\nfrom .b import X\nif TYPE_CHECKING:\n"
                 "    from ..client.c import Y\ndef f():\n    from tcpulse.store import d\n")
    global PKG
    saved = PKG
    PKG = tmp_path / "tcpulse"
    try:
        known = {"tcpulse.server.b", "tcpulse.client.c", "tcpulse.store.d"}
        got = {t for t, _ in imports_of("tcpulse.server.a", f, known)}
    finally:
        PKG = saved
    assert got == known
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles in src/tcpulse:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_arrows_run_one_way() -> None:
    mods = modules()
    known = set(mods)
    wrong = []
    for name, path in mods.items():
        src = layer(name)
        allowed = ALLOWED.get(src)
        assert allowed is not None, f"{name}: package {src!r} is not on the map in docs/architecture.md"
        for target, line in imports_of(name, path, known):
            dst = layer(target)
            if dst != src and dst not in allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {src or 'tcpulse'} -> {dst or 'tcpulse'} ({target})")
    assert not wrong, "imports against the map of docs/architecture.md:\n" + "\n".join(wrong)


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_the_core_is_pure(package: str) -> None:
    files = sorted((PKG / package).rglob("*.py"))
    assert len(files) >= 3
    bad = []
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                if n.split(".")[0] in IMPURE or n in IMPURE:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {n}")
    assert not bad, "\n".join(bad)


def test_every_package_says_what_it_holds_and_may_import() -> None:
    for init in sorted(PKG.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
        assert "import" in doc.lower(), f"{init.relative_to(ROOT)}: the docstring must say what the package may import"
    assert {p.parent.name for p in PKG.glob("*/__init__.py")} == set(ALLOWED) - {"version", "errors", "__main__", ""}


def test_no_reach_ins() -> None:
    # ruff's SLF001 (private member access) over src/: no object touches another's underscore
    # names.  Run here too, so that the rule cannot be dropped from the config unnoticed.
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), "check", "--select", "SLF001", "--output-format", "concise",
                          "--no-cache", str(PKG)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_tree_matches_the_map() -> None:
    # docs/architecture.md's map names every package and every module in it, and nothing that
    # is not there: a module added without its place on the map fails here.
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = doc.split("## The map", 1)[1].split("```", 2)[1]
    sections: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        head = line[2:].split(" ", 1)[0] if line.startswith("  ") and not line.startswith("   ") else ""
        if head.endswith("/") or head.endswith(".py"):
            current = head.rstrip("/") if head.endswith("/") else ""
            sections.setdefault(current, "")
        sections[current] = sections.get(current, "") + line + "\n"
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert set(sections) - {""} == packages, "packages on the map and in the tree differ"
    missing = []
    for path in sorted(PKG.glob("*/*.py")):
        if path.name == "__init__.py":
            continue
        if path.name not in sections.get(path.parent.name, ""):
            missing.append(str(path.relative_to(PKG)))
    for path in sorted(PKG.glob("*.py")):
        if path.name not in ("__init__.py", "__main__.py") and path.name not in block:
            missing.append(path.name)
    assert not missing, "modules not on the map of docs/architecture.md: " + ", ".join(missing)
