"""The import graph of finetune/, counting imports inside functions (a lazy import is still a
dependency): prints its circles (strongly connected components) and every `_private` name imported
from another module (a package's own common.py excepted). Exit 1 when either exists.

Run: python bench/import_graph.py [--json]
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "finetune"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    private: list[tuple[str, str, str]] = []
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [(_resolve(mod, is_pkg, node), [a.name for a in node.names])]
            for target, names in targets:
                if not target.startswith("finetune"):
                    continue
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in files]
                for t in subs or [target]:
                    if t in files and t != mod:
                        edges[mod].add(t)
                for n in names:
                    dunder = n.startswith("__") and n.endswith("__")
                    if n.startswith("_") and not dunder and f"{target}.{n}" not in files and target != mod:
                        own_common = target.endswith(".common") and target.rsplit(".", 1)[0] == mod.rsplit(".", 1)[0]
                        if not own_common:
                            private.append((mod, target, n))
    return edges, private


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    edges, private = graph()
    found = circles(edges)
    if "--json" in sys.argv:
        print(json.dumps({"circles": found, "private_imports": private}))
    else:
        for c in found:
            print(f"circle of {len(c)}: {', '.join(c)}")
        for mod, target, name in private:
            print(f"private: {mod} imports {name} from {target}")
        print(f"{len(found)} circle(s), {len(private)} private import(s)")
    return 1 if found or private else 0


if __name__ == "__main__":
    raise SystemExit(main())
