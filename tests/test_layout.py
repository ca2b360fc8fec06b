"""The layout the README and the guide describe, checked from the source.

- No import circles between files, except the engine's own: tensor ↔ autograd ↔ ops (and the
  function forms of Tensor methods), where the edges back into tensor are only the Tensor import.
- The arrows point one way: kernels never import models; the engine never imports models, and it
  reaches kernels only through the dispatch point.
- The README's reading-order table gives each teaching-core file's current line count.

Imports are read from the AST of every file, function-local ones included.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"minigrad": ROOT / "minigrad", "minigrad.models": ROOT / "models", "minigrad.kernels": ROOT / "kernels"}
ENGINE = ("minigrad.tensor", "minigrad.autograd", "minigrad.functions", "minigrad.backend", "minigrad.dispatch",
          "minigrad.ops", "minigrad.nn", "minigrad.optim", "minigrad.gradient_check", "minigrad.opinfo")


def _modules():
    mods = {}
    for pkg, folder in FOLDERS.items():
        for p in folder.rglob("*.py"):
            parts = p.relative_to(folder).with_suffix("").parts
            name = ".".join((pkg, *parts)).removesuffix(".__init__")
            mods[name] = p
    return mods


def import_graph():
    """{module: the package's modules it imports}."""
    mods = _modules()
    graph = {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".")[: None if is_pkg else -1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                while n and n not in mods:
                    n = n.rpartition(".")[0]
                if n and n != mod and not (mod.startswith(n + ".") and node_is_parent_only(n, names)):
                    deps.add(n)
        graph[mod] = deps
    return graph


def node_is_parent_only(parent, names):
    """`from . import x` inside a package names its parent only on the way to x: not an edge to it."""
    return all(n != parent for n in names[1:]) and len(names) > 1


def circles(graph):
    """Every set of modules that reach each other (strongly connected components of > 1 module)."""
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for w in graph[todo.pop()]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    reached = {m: reach(m) for m in graph}
    return {frozenset([m, *(w for w in reached[m] if m in reached[w])]) for m in graph if m in reached[m]}


def _engine_core(m):
    """tensor, autograd, the ops, and the Tensor API's function forms (minigrad.where, minigrad.tril...),
    which Tensor methods call."""
    return (m in ("minigrad.tensor", "minigrad.autograd", "minigrad.functions", "minigrad.manipulation")
            or m == "minigrad.ops" or m.startswith("minigrad.ops."))


def test_no_import_circle_but_the_engines_own():
    graph = import_graph()
    found = circles(graph)
    assert all(all(_engine_core(m) for m in c) for c in found), [sorted(c) for c in found if
                                                                 not all(_engine_core(m) for m in c)]
    # inside the engine's circle, what points back into tensor.py is the Tensor import alone
    for m in graph:
        if _engine_core(m) and m != "minigrad.tensor" and "minigrad.tensor" in graph[m]:
            src = _modules()[m].read_text(encoding="utf-8")
            imported = set(re.findall(r"from \.+tensor import ([\w, ]+)", src))
            assert all(set(i.replace(" ", "").split(",")) <= {"Tensor", "_axis", "_axes", "_lift"} for i in imported), m
    # the checker sees a circle when there is one
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}


def test_arrows_point_one_way():
    graph = import_graph()
    for m, deps in graph.items():
        if m.startswith("minigrad.kernels"):
            assert not any(d.startswith("minigrad.models") for d in deps), f"{m} imports models"
        if m.startswith(ENGINE):
            assert not any(d.startswith("minigrad.models") for d in deps), f"the engine's {m} imports models"
            if m != "minigrad.dispatch":
                kernels = sorted(d for d in deps if d.startswith("minigrad.kernels"))
                assert not kernels, f"the engine's {m} reaches kernels ({kernels}) outside the dispatch point"


def test_readme_reading_order_line_counts_are_current():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## How to read minigrad", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| \d+ \| (.+?) \| ([\d, ]+) \|", section, re.M)
    assert len(rows) >= 5
    for files, counts in rows:
        paths = re.findall(r"`([^`]+)`", files)
        first = Path(paths[0])
        full = [first] + [first.parent / p for p in paths[1:]]
        want = [len((ROOT / p).read_text(encoding="utf-8").splitlines()) for p in full]
        got = [int(c) for c in counts.replace(" ", "").split(",")]
        assert got == want, f"README's reading order gives {files} {got} lines; they have {want}"
