"""The library's import graph: no cycle among a package's modules, counting function-local
imports and those under TYPE_CHECKING too (an import hidden in a function to dodge a cycle is
still a cycle), the same rule as the hook's /work/shared/tools/import_cycles.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("snapshots", "manifest", "cli")


def edges(folder: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, anywhere in its source."""
    mods = {p.stem for p in (ROOT / folder).glob("*.py")}
    out: dict[str, set[str]] = {m: set() for m in mods}
    for m in mods:
        tree = ast.parse((ROOT / folder / f"{m}.py").read_text())
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    targets = [node.module.split(".")[0]]
                elif node.level == 1:
                    targets = [a.name for a in node.names]
                elif node.module and node.module.startswith(f"chromasnap.{folder}."):
                    targets = [node.module.split(".")[2]]
                elif node.module == f"chromasnap.{folder}":
                    targets = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [
                    a.name.split(".")[2] for a in node.names if a.name.startswith(f"chromasnap.{folder}.")
                ]
            out[m].update(t for t in targets if t in mods and t != m)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("folder", PACKAGES)
def test_no_import_cycle(folder: str) -> None:
    assert cycles(edges(folder)) == []


def test_the_checker_finds_a_cycle() -> None:
    """The check itself: a cycle through a function-local import is found."""
    graph = {"manager": {"restore"}, "restore": {"manager"}, "layout": set()}
    assert cycles(graph) == [["manager", "restore"]]


def test_restore_and_browse_do_not_import_the_facade() -> None:
    graph = edges("snapshots")
    for mod in ("restore", "browse", "guard", "checker", "capture", "prune", "gc"):
        assert "manager" not in graph[mod], mod


def test_the_hook_agrees() -> None:
    tool = Path("/work/shared/tools/import_cycles.py")
    if not tool.is_file():
        pytest.skip("the hook's checker is not on this machine")
    for folder in PACKAGES:
        out = subprocess.run(
            [sys.executable, str(tool), folder, folder], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert out.stdout.split()[0] == "0", out.stdout


def test_the_package_imports_alone() -> None:
    for mod in ("chromasnap.snapshots", "chromasnap.cli.app", "chromasnap.snapshots.manager"):
        subprocess.run([sys.executable, "-c", f"import {mod}"], check=True)
