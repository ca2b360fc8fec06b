"""Pictures of the autograd graph: ``draw_graph(tensor, path)`` writes Graphviz DOT, and SVG/PNG
when Graphviz's ``dot`` program is installed.

    loss = model(x, y)[1]
    minigrad.viz.draw_graph(loss, "gpt.svg", collapse=True, params=model)

Nodes: each op (a Function) is a rounded box with its name, output shape and dtype; parameters
are blue boxes (named when ``params`` is a Module or a name -> Parameter dict); other leaves that
need a gradient are yellow; constants are grey ellipses. Edges run from an input to the op that
used it, so the picture reads top to bottom like the forward pass.

``collapse=True`` folds repeated blocks. The ops are listed in a deterministic topological order
(inputs first) and each op gets a signature: its name, output shape and dtype, and for every input
either ("op", how many places back in the order it is) or ("leaf", shape, kind). Relative
positions make the signature the same in every copy of a block, so a transformer's layers show
up as a run of one signature sequence repeated k times. The longest such runs are found (the
period p and copies k that hide the most ops); the first copy is drawn inside a labelled box and
copies 2..k become one node.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings

from .autograd import _topo_order

__all__ = ["draw_graph", "graph_to_dot"]

_IMAGE_FORMATS = ("svg", "png", "pdf")


class _Node:
    __slots__ = ("fn", "id", "inputs", "kind", "label", "sig", "tensor")

    def __init__(self, id, kind, label):
        self.id, self.kind, self.label = id, kind, label
        self.sig = None
        self.inputs: list = []      # node ids, in argument order
        self.fn = self.tensor = None


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _param_names(params) -> dict:
    if params is None:
        return {}
    if hasattr(params, "named_parameters"):
        params = dict(params.named_parameters())
    if not isinstance(params, dict):
        raise TypeError(f"draw_graph: params must be a Module or a dict of name -> Parameter, got {type(params).__name__}")
    return {id(p): name for name, p in params.items()}


def _collect(tensor, names):
    """Nodes in topological order (inputs first), from the engine's iterative traversal."""
    from .nn.module import Parameter
    from .tensor import Tensor

    if not isinstance(tensor, Tensor):
        raise TypeError(f"draw_graph: expected a minigrad Tensor, got {type(tensor).__name__}")
    order: list[_Node] = []
    index: dict[int, _Node] = {}        # id(Function) or id(leaf Tensor) -> node
    out_of: dict[int, Tensor] = {id(tensor._ctx): tensor} if tensor._ctx is not None else {}

    def leaf(t):
        n = index.get(id(t))
        if n is None:
            if isinstance(t, Parameter):
                kind = "param"
            else:
                kind = "input" if t.requires_grad else "const"
            name = names.get(id(t))
            head = name if name else {"param": "parameter", "input": "input", "const": "constant"}[kind]
            n = _Node(f"t{len(index)}", kind, f"{head}\n{_fmt_shape(t.shape)} {t.dtype}")
            n.sig = ("leaf", kind, tuple(t.shape), str(t.dtype))
            n.tensor = t
            index[id(t)] = n
        return n

    if tensor._ctx is None:
        n = leaf(tensor)
        return [n], n
    try:
        fns = _topo_order([tensor])          # the engine's own traversal: inputs' ops first
    except RuntimeError:
        raise RuntimeError("draw_graph: the graph was freed by backward(); draw it before backward(), "
                           "or call backward(retain_graph=True)") from None
    for fn in fns:                           # each op's output tensor: the one its consumers hold
        for t in fn.inputs:
            if t._ctx is not None:
                out_of.setdefault(id(t._ctx), t)
    for fn in fns:
        out = out_of[id(fn)]
        n = _Node(f"op{len(index)}", "op", f"{type(fn).__name__}\n{_fmt_shape(out.shape)} {out.dtype}")
        n.fn = fn
        index[id(fn)] = n
        order.append(n)
    # inputs and signatures, now that every op has its place in the order
    pos = {n.id: i for i, n in enumerate(order)}
    for i, n in enumerate(order):
        sig = [n.label]
        for t in n.fn.inputs:
            m = index[id(t._ctx)] if t._ctx is not None else leaf(t)
            n.inputs.append(m.id)
            sig.append(("op", i - pos[m.id]) if m.kind == "op" else m.sig)
        n.sig = tuple(sig)
    leaves = [n for n in index.values() if n.kind != "op"]
    return leaves + order, index[id(tensor._ctx)]


def _repeats(sigs, min_period=3, min_copies=2):
    """Non-overlapping tandem repeats in ``sigs``: [(start, period, copies)], largest savings first."""
    n = len(sigs)
    taken = [False] * n
    found = []
    while True:
        best = None                        # (ops hidden, -period, start, period, copies)
        for p in range(min_period, n // 2 + 1):
            run = 0                        # length of the current run of sigs[i] == sigs[i + p]
            for i in range(n - p - 1, -2, -1):
                ok = i >= 0 and sigs[i] == sigs[i + p] and not taken[i] and not taken[i + p]
                if ok:
                    run += 1
                    continue
                if run >= p:               # positions i+1 .. i+run match one period ahead
                    k = 1 + run // p
                    if k >= min_copies:
                        cand = ((k - 1) * p, -p, i + 1, p, k)
                        if best is None or cand > best:
                            best = cand
                run = 0
        if best is None:
            return found
        _, _, start, p, k = best
        found.append((start, p, k))
        for j in range(start, start + p * k):
            taken[j] = True


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_STYLE = {
    "op": 'shape=box style="rounded,filled" fillcolor="#f2f2f2"',
    "param": 'shape=box style=filled fillcolor="#cfe2ff"',
    "input": 'shape=box style=filled fillcolor="#fff3bf"',
    "const": 'shape=ellipse style=filled fillcolor="#e9ecef" fontcolor="#555555"',
    "collapsed": 'shape=box style="rounded,dashed,filled" fillcolor="#ffffff"',
}


def graph_to_dot(tensor, collapse: bool = False, params=None) -> str:
    """The DOT text that ``draw_graph`` writes."""
    nodes, root = _collect(tensor, _param_names(params))
    ops = [n for n in nodes if n.kind == "op"]
    leaves = [n for n in nodes if n.kind != "op"]
    rep = {n.id: n.id for n in nodes}       # node -> node drawn in its place
    clusters = []                           # (label, [op ids of the first copy])
    extra = []                              # collapsed nodes: (id, label)
    if collapse and ops:
        for r, (start, p, k) in enumerate(_repeats([n.sig for n in ops])):
            first = ops[start:start + p]
            hidden = ops[start + p:start + p * k]
            cid = f"rep{r}"
            for n in hidden:
                rep[n.id] = cid
            n_leaf = len({i for n in hidden for i in n.inputs if i.startswith("t")})
            clusters.append((f"block repeated {k}x ({p} ops each); copy 1 of {k}", [n.id for n in first]))
            extra.append((cid, (f"copies 2..{k} of the block above\n{(k - 1) * p} ops, "
                                f"{n_leaf} leaf inputs, hidden")))
    # leaves only used by hidden ops are hidden with them
    used = {}
    for n in ops:
        for i in n.inputs:
            used.setdefault(i, set()).add(rep[n.id])
    for n in leaves:
        if n.id in used and all(u.startswith("rep") for u in used[n.id]):
            rep[n.id] = None
    lines = ["digraph autograd {", '  graph [rankdir=TB fontname="Helvetica" fontsize=11];',
             '  node [fontname="Helvetica" fontsize=10];', '  edge [color="#666666" arrowsize=0.6];']
    in_cluster = {i for _, ids in clusters for i in ids}
    for n in nodes:
        if rep[n.id] != n.id or n.id in in_cluster:
            continue
        bold = " penwidth=2" if n is root else ""
        lines.append(f'  {n.id} [label="{_esc(n.label)}" {_STYLE[n.kind]}{bold}];')
    by_id = {n.id: n for n in nodes}
    for c, (label, ids) in enumerate(clusters):
        lines.append(f'  subgraph cluster_{c} {{\n    label="{_esc(label)}"; style=dashed; color="#888888";')
        for i in ids:
            bold = " penwidth=2" if by_id[i] is root else ""
            lines.append(f'    {i} [label="{_esc(by_id[i].label)}" {_STYLE["op"]}{bold}];')
        lines.append("  }")
    for cid, label in extra:
        lines.append(f'  {cid} [label="{_esc(label)}" {_STYLE["collapsed"]}];')
    edges = []
    seen = set()
    for n in ops:
        dst = rep[n.id]
        for i in n.inputs:
            src = rep[i]
            if src is None or src == dst or (src, dst) in seen:
                continue
            seen.add((src, dst))
            edges.append(f"  {src} -> {dst};")
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_graph(tensor, path, collapse: bool = False, params=None) -> dict:
    """Write the autograd graph that produced ``tensor``.

    ``path`` ending in .dot or .gv: DOT only. Ending in .svg, .png or .pdf: the DOT is written
    beside it (same name, .dot) and rendered with Graphviz's ``dot`` when it is installed;
    otherwise a warning says so and only the DOT is written. Any other name gets ".dot" added.
    Returns {"dot": path of the DOT file, "image": path of the image or None}.
    """
    path = os.fspath(path)
    stem, ext = os.path.splitext(path)
    ext = ext.lower().lstrip(".")
    if ext in ("dot", "gv"):
        dot_path, fmt = path, None
    elif ext in _IMAGE_FORMATS:
        dot_path, fmt = stem + ".dot", ext
    else:
        dot_path, fmt = path + ".dot", None
    text = graph_to_dot(tensor, collapse=collapse, params=params)
    parent = os.path.dirname(os.path.abspath(dot_path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"draw_graph: directory {parent} does not exist")
    with open(dot_path, "w") as f:
        f.write(text)
    image = None
    if fmt is not None:
        exe = shutil.which("dot")
        if exe is None:
            warnings.warn(f"draw_graph: Graphviz's `dot` is not installed (e.g. apt-get install graphviz), "
                          f"so only {dot_path} was written, not {path}", RuntimeWarning, stacklevel=2)
        else:
            r = subprocess.run([exe, f"-T{fmt}", dot_path, "-o", path], capture_output=True, text=True, timeout=120,
                               check=False)
            if r.returncode != 0:
                raise RuntimeError(f"draw_graph: dot failed on {dot_path}: {r.stderr.strip()}")
            image = path
    return {"dot": dot_path, "image": image}
