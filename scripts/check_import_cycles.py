"""Fail if any module of the tree takes part in an import cycle.

import-linter's contracts say who may import whom between layers; a cycle can still hide
inside one layer or between two sibling packages, and a lazy (function-level) import that
closes a circle is a circle all the same. This walks grimp's graph of every import, lazy
ones included, and prints each strongly connected component of two or more modules.

    python scripts/check_import_cycles.py service model_store bench
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import grimp


def strongly_connected(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is deep enough to trouble recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def import_edges(packages: list[str]) -> dict[str, set[str]]:
    graph = grimp.build_graph(*packages, cache_dir=None)
    modules = {m for m in graph.modules if m.split(".")[0] in packages}
    edges: dict[str, set[str]] = {}
    for module in modules:
        imported = graph.find_modules_directly_imported_by(module) & modules
        # A package's __init__ importing its own submodules is how packages re-export,
        # not a dependency of the submodule on its parent: leave parent -> child out.
        edges[module] = {m for m in imported if not m.startswith(module + ".")}
    return edges


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("packages", nargs="+", help="top-level packages to scan")
    args = parser.parse_args(argv)
    # The tree in the working directory, not whatever an editable install points at.
    sys.path.insert(0, str(Path.cwd()))
    cycles = strongly_connected(import_edges(args.packages))
    for cycle in cycles:
        print("import cycle: " + " <-> ".join(cycle), file=sys.stderr)
    if cycles:
        return 1
    print(f"no import cycles in {', '.join(args.packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
