"""Which way imports point (ARCHITECTURE.md): the import-linter contracts in pyproject.toml hold, and no
package has an import cycle between its modules beyond the known ones listed here, which only shrink."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("splitmesh", "splitmesh_cli", "client_sdk", "node", "coordinator")


@dataclass(frozen=True)
class KnownCycle:
    """A cycle left to remove: its modules (a name covers the module and everything under it)."""

    modules: frozenset[str]
    removed_by: str  # the change that breaks it, and then deletes this entry

    def covers(self, cycle: Iterable[str]) -> bool:
        return all(any(m == k or m.startswith(k + ".") for k in self.modules) for m in cycle)


# The list to shrink. A new cycle fails the test; so does an entry whose cycle is gone (delete it).
KNOWN_CYCLES: dict[str, list[KnownCycle]] = {}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Imports under TYPE_CHECKING count: a cycle there is still two modules that know each other.
    return grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)


def module_cycles(graph: grimp.ImportGraph, package: str) -> list[frozenset[str]]:
    """The strongly connected components (more than one module) of the package's own import graph."""
    modules = {m for m in graph.modules if m == package or m.startswith(package + ".")}
    edges = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[frozenset[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while (w := stack.pop()) != v:
                component.add(w)
            component.add(v)
            if len(component) > 1:
                cycles.append(frozenset(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for m in sorted(modules):
        if m not in index:
            visit(m)
    return cycles


def test_the_import_linter_contracts_hold() -> None:
    # The layers: splitmesh_cli > client_sdk | node | coordinator (independent) > splitmesh.
    # In a subprocess: import-linter configures logging in-process (disabling every existing logger),
    # which silenced later tests' log assertions.
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("lint-imports")),
            "--config",
            str(ROOT / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_but_the_known_ones(graph: grimp.ImportGraph, package: str) -> None:
    known = KNOWN_CYCLES.get(package, [])
    cycles = module_cycles(graph, package)
    new = [sorted(c) for c in cycles if not any(k.covers(c) for k in known)]
    assert not new, f"import cycles in {package}: {new}; break them (ARCHITECTURE.md says how)"
    for k in known:
        visible = all(any(m == n or m.startswith(n + ".") for m in graph.modules) for n in k.modules)
        if visible:
            assert any(k.covers(c) for c in cycles), (
                f"the cycle {sorted(k.modules)} is gone: delete its entry from KNOWN_CYCLES"
            )
