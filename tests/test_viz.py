"""minigrad.viz: DOT text for the autograd graph, parameters drawn apart, repeated blocks folded,
rendering through Graphviz when it is installed."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import minigrad
from minigrad import viz
from minigrad.nn import Parameter


def _nodes(dot):
    """{node id: label} for the node statements of a DOT text."""
    return {m.group(1): m.group(2) for m in re.finditer(r'^\s*(\w+) \[label="((?:[^"\\]|\\.)*)"', dot, re.MULTILINE)}


def _edges(dot):
    return set(re.findall(r"^\s*(\w+) -> (\w+);", dot, re.MULTILINE))


def test_dot_has_one_node_per_op_and_leaf_with_shapes_and_dtype(tmp_path):
    w = Parameter(np.ones((3, 4), np.float32))
    x = minigrad.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    c = minigrad.Tensor(np.ones((2, 4), np.float32))
    y = ((x @ w) * c).tanh().sum()
    out = viz.draw_graph(y, tmp_path / "g.dot", params={"fc.weight": w})
    assert out == {"dot": str(tmp_path / "g.dot"), "image": None}
    dot = (tmp_path / "g.dot").read_text()
    nodes = _nodes(dot)
    labels = sorted(v.split("\\n")[0] for v in nodes.values())
    assert labels == sorted(["MatMul", "Mul", "Tanh", "Sum", "fc.weight", "input", "constant"])
    by_head = {v.split("\\n")[0]: k for k, v in nodes.items()}
    assert nodes[by_head["MatMul"]] == "MatMul\\n(2, 4) float32"
    assert nodes[by_head["fc.weight"]] == "fc.weight\\n(3, 4) float32"
    assert nodes[by_head["Sum"]] == "Sum\\n() float32"
    # leaves are drawn apart: a parameter, an input that needs grad, a constant each look different
    styles = {h: re.search(rf"^\s*{by_head[h]} \[label=\"[^\"]*\" (.*)\];", dot, re.MULTILINE).group(1)
              for h in ("MatMul", "fc.weight", "input", "constant")}
    assert len(set(styles.values())) == 4
    edges = _edges(dot)
    expect = {("input", "MatMul"), ("fc.weight", "MatMul"), ("MatMul", "Mul"), ("constant", "Mul"),
              ("Mul", "Tanh"), ("Tanh", "Sum")}
    assert edges == {(by_head[a], by_head[b]) for a, b in expect}


def _tiny_gpt_loss(n_layer):
    from minigrad.models.gpt import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=n_layer, n_head=2, n_embd=8), seed=0)
    x = np.random.default_rng(0).integers(0, 11, (2, 8))
    return model, model(x, np.roll(x, 1, axis=1))[1]


def test_collapse_folds_the_transformer_layers():
    model, loss = _tiny_gpt_loss(3)
    full = viz.graph_to_dot(loss, params=model)
    small = viz.graph_to_dot(loss, collapse=True, params=model)
    n_full = sum(1 for v in _nodes(full).values() if "float32" in v)
    per_layer = sum(1 for v in _nodes(full).values() if v.startswith(("LayerNorm", "Attention", "QKVAttention", "Gelu")))
    assert per_layer == 3 * 4 + 1          # ln_1, attention, ln_2, gelu per layer, and ln_f
    assert "block repeated 3x" in small
    assert "copies 2..3 of the block above" in small
    # only the first layer's parameters remain; layers 1 and 2 are hidden inside the folded node
    assert "h.0.attn.c_attn.weight" in small and "h.1." not in small and "h.2." not in small
    assert len(_nodes(small)) < len(_nodes(full)) and n_full == len(_nodes(full))
    # the picture stays connected: the folded node has an edge in and an edge out
    edges = _edges(small)
    rep = next(k for k, v in _nodes(small).items() if v.startswith("copies"))
    assert any(b == rep for _, b in edges) and any(a == rep for a, _ in edges)


def test_collapse_leaves_a_graph_without_repeats_alone():
    x = minigrad.Tensor(np.ones((3,), np.float32), requires_grad=True)
    y = (x.exp() * 2.0).sum()
    assert _nodes(viz.graph_to_dot(y, collapse=True)) == _nodes(viz.graph_to_dot(y))


def test_repeat_finder_picks_the_period_that_hides_most():
    seq = list("xABCABCABCy")
    assert viz._repeats(seq) == [(1, 3, 3)]
    assert viz._repeats(list("abcdef")) == []


def test_bad_input_is_named():
    x = minigrad.Tensor(np.ones(3, np.float32), requires_grad=True)
    y = (x * x).sum()
    with pytest.raises(TypeError, match="Tensor"):
        viz.draw_graph(np.ones(3), "g.dot")
    with pytest.raises(TypeError, match="params"):
        viz.graph_to_dot(y, params=[x])
    y.backward()
    with pytest.raises(RuntimeError, match="freed by backward"):
        viz.graph_to_dot(y)


def test_image_without_graphviz_writes_dot_and_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    x = minigrad.Tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.warns(RuntimeWarning, match="graphviz"):
        out = viz.draw_graph((x * x).sum(), tmp_path / "g.svg")
    assert out["image"] is None and (tmp_path / "g.dot").is_file() and not (tmp_path / "g.svg").exists()


def test_svg_is_rendered_when_graphviz_is_installed(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")
    model, loss = _tiny_gpt_loss(2)
    out = viz.draw_graph(loss, tmp_path / "gpt.svg", collapse=True, params=model)
    svg = (tmp_path / "gpt.svg").read_text()
    assert out["image"] == str(tmp_path / "gpt.svg") and "<svg" in svg and "Attention" in svg
