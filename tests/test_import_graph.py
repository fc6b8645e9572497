"""Data flows one way: no import cycle through the collection, its rooms, reconcile, text search
or expansion, counting imports inside functions and under TYPE_CHECKING (an AST walk, not
``sys.modules``, so an import hidden in a function body still counts)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "imrs"

#: modules that must sit in no cycle at all (the facade, its rooms, and what used to loop with them)
GUARDED = ("imrs.collection", "imrs.layout", "imrs.protocols", "imrs.vectorstore", "imrs.liveindex",
           "imrs.encoderslot", "imrs.syncpipe", "imrs.namedsnapshots", "imrs.webimages", "imrs.repairport",
           "imrs.active", "imrs.webfiles", "imrs.damaged", "imrs.reconcile", "imrs.textsearch", "imrs.expansion")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the imrs modules it imports anywhere in its source."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - (node.level - 1)] if node.level else []
                prefix = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
            else:
                continue
            edges[mod].update(t for t in targets if t in mods and t != mod)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_the_graph_walk_finds_a_cycle_hidden_in_a_function() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [{"a", "b", "c"}]
    assert "imrs.layout" in import_graph()["imrs.reconcile"]  # a module-level import is seen
    assert "imrs.textsearch" in import_graph()["imrs.query"]  # so is one inside a function


def test_no_cycle_through_the_collection_reconcile_textsearch_or_expansion() -> None:
    bad = [sorted(c) for c in cycles(import_graph())
           if any(m == g or m.startswith(g + ".") for m in c for g in GUARDED)]
    assert bad == []
