"""Function (one class per op), the iterative backward engine, no_grad, grad, anomaly mode.

An op is a subclass of ``Function``:

    class Exp(Function):
        def forward(self, x):            # raw arrays in, one raw array out
            self.y = xp_of(x).exp(x)     # keep what backward needs on self
            return self.y
        def backward(self, g):           # g: Tensor (dL/dout); returns one Tensor (or None) per input
            return (g * Tensor(self.y),)

``backward`` is written in Tensor ops, so with ``create_graph=True`` the gradient is itself
a differentiable graph and second derivatives come for free. Without it, backward runs
under ``no_grad`` and those Tensor ops are plain array arithmetic. That pair is the op's
reference; fast variants (native CPU loops, CUDA kernels, a first-order ``backward_arrays``)
are declared beside it and chosen in one place, ``minigrad.dispatch``.

The graph: each non-leaf Tensor keeps ``_ctx``, the Function that made it; the Function
keeps its input Tensors. ``backward`` sorts the graph topologically with an explicit
stack (no recursion, so a 100,000-op chain is fine), then walks it in reverse.
"""
from __future__ import annotations

import contextlib
import os
import threading
import traceback

import numpy as np

from . import dispatch as _dispatch
from .dispatch import backward_of as _backward_of, choose as _choose

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


def _set_grad_enabled(on: bool) -> bool:
    prev = is_grad_enabled()
    _state.grad_enabled = on
    return prev


class _GradMode(contextlib.ContextDecorator):
    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.prev = _set_grad_enabled(self.on)

    def __exit__(self, *exc):
        _set_grad_enabled(self.prev)
        return False


def no_grad():
    """Context (and decorator) in which ops record no graph."""
    return _GradMode(False)


def enable_grad():
    return _GradMode(True)


# ---------------------------------------------------------------- anomaly mode
_anomaly = False
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class AnomalyError(FloatingPointError):
    pass


@contextlib.contextmanager
def detect_anomaly():
    """Raise at the first op whose forward or backward yields NaN/Inf, naming the op and the
    user's line that created it."""
    global _anomaly
    prev, _anomaly = _anomaly, True
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        _anomaly = prev


def _user_frame() -> str:
    """The innermost stack frame outside minigrad itself: where the user created the op."""
    for fr in reversed(traceback.extract_stack()[:-2]):
        if not os.path.abspath(fr.filename).startswith(_PKG_DIR):
            return f'File "{fr.filename}", line {fr.lineno}, in {fr.name}\n    {fr.line}'
    return "<inside minigrad>"


def _nonfinite(a) -> bool:
    from .backend import get_array_module
    return a.dtype.kind in "fc" and not bool(get_array_module(a).isfinite(a).all())


# ---------------------------------------------------------------- profiler hook
# minigrad.profiler sets this to an object with .clock() -> a timestamp (a host time, or on a GPU a
# (host time, CUDA event) pair) and .record(name, phase, t0, t1, fn, inputs, out_array), t0/t1 from clock().
_profiler = None


def _tensor_class():
    """minigrad.tensor.Tensor (imported late: tensor.py imports this module)."""
    global _Tensor
    if _Tensor is None:
        from .tensor import Tensor
        _Tensor = Tensor
    return _Tensor


_Tensor = None


# ---------------------------------------------------------------- Function
class Function:
    """One op: ``forward`` on raw arrays, ``backward`` in Tensor ops. See the module docstring."""

    __slots__ = ("inputs", "needs", "saved", "__dict__")
    differentiable = True      # False for ops whose output never carries grad (comparisons, argmax)
    variants = ()              # fast variants, in order of preference (see minigrad.dispatch)
    backward_arrays = None     # optional first-order backward: grad array -> one array/Tensor/None per input
    op = None                  # the op class (a variant's op is the class it is a variant of)
    kind = "reference"         # a variant's kind: "native", "kernel", "numpy", ...

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.op = cls
        cls.variants = ()

    @classmethod
    def variant(cls, kind):
        """Class decorator declaring a fast variant of this op (a subclass with a static ``takes``)."""
        def register(v):
            assert issubclass(v, cls) and hasattr(v, "takes"), f"{v.__name__} must subclass {cls.__name__} with takes()"
            v.op, v.kind = cls, kind
            cls.variants = cls.variants + (v,)
            return v
        return register

    def forward(self, *arrays, **kwargs):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **kwargs):
        """Run forward on the inputs' arrays and, if any input needs grad, record the node."""
        if _dispatch._autocast is not None and _dispatch.autocast_policy(cls):   # minigrad.amp
            from .ops.autocast import autocast_apply
            return autocast_apply(cls, inputs, kwargs)
        Tensor = _tensor_class()
        if len(inputs) == 1:
            arrays = [inputs[0].data]
        else:
            arrays = []
            device = None
            for t in inputs:
                d = t.device
                if device is None:
                    device = d
                elif d != device:
                    raise RuntimeError(f"{cls.__name__}: inputs are on different devices ({device} and {d}); "
                                       "move them with .to(device) first")
                arrays.append(t.data)
        fn = _choose(cls, arrays, kwargs)() if cls.variants else cls()
        prof = _profiler
        if prof is not None:
            t0 = prof.clock()
        try:
            out = fn.forward(*arrays, **kwargs)
        except ValueError as e:
            if "could not be broadcast" not in str(e):
                raise
            shapes = " and ".join(str(tuple(a.shape)) for a in arrays)
            raise ValueError(f"{cls.__name__}: shapes {shapes} do not broadcast together") from None
        if prof is not None:
            prof.record(cls.__name__, "forward", t0, prof.clock(), fn, arrays, out)
        requires = cls.differentiable and is_grad_enabled() and any(t.requires_grad for t in inputs)
        result = Tensor._make(out, requires)
        if requires:
            fn.inputs = inputs
            result._ctx = fn
        if _anomaly:
            fn._where = _user_frame()
            if _nonfinite(result.data):
                raise AnomalyError(f"{cls.__name__} produced NaN/Inf in its forward; created at\n  {fn._where}")
        return result

    def release(self):
        """Drop saved arrays and inputs once backward has used them (unless retain_graph)."""
        self.__dict__.clear()
        self.inputs = None


# ---------------------------------------------------------------- the engine
def _topo_order(roots):
    """Functions reachable from ``roots`` (Tensors), children before parents, iteratively."""
    order, seen = [], set()
    stack = [(r._ctx, False) for r in roots if r._ctx is not None]
    while stack:
        fn, expanded = stack.pop()
        if expanded:
            order.append(fn)
            continue
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if fn.inputs is None:
            raise RuntimeError(
                f"Trying to backward through the graph a second time (op {fn.op.__name__}): its saved "
                "values were freed after the first backward. Pass retain_graph=True to the first "
                "backward() if you need to backward twice.")
        stack.append((fn, True))
        for t in reversed(fn.inputs):        # reversed: the first input's ops come first in the order
            c = t._ctx
            if c is not None and id(c) not in seen:
                stack.append((c, False))
    return order  # post-order: inputs' functions first


def run_backward(roots, root_grads, retain_graph=False, create_graph=False, inputs=None):
    """Propagate ``root_grads`` (Tensors) back from ``roots``.

    With ``inputs`` None, gradients of leaves accumulate into ``leaf.grad``. Otherwise the
    gradients w.r.t. ``inputs`` are returned (a list, None where unreachable) and no ``.grad``
    is touched.
    """
    from .tensor import Tensor
    prof = _profiler
    order = _topo_order(roots)
    grads: dict[int, Tensor] = {}     # id(tensor) -> its gradient so far
    owned: set[int] = set()           # grads whose array we allocated (safe to add into in place)
    keep: dict[int, Tensor] = {}       # keeps each keyed tensor alive while its id is a key

    def key(t):   # a non-leaf is identified by the Function that made it, a leaf by itself
        c = t._ctx
        return id(c) if c is not None else id(t)

    def accumulate(t, g):
        k = key(t)
        cur = grads.get(k)
        if cur is None:
            grads[k] = g
            keep[k] = t
        elif create_graph:
            grads[k] = cur + g
        else:   # array sums outside any op: the profiler sees them as "AccumulateGrad"
            if prof is not None:
                t0 = prof.clock()
            if k in owned:
                _add_into(cur.data, g)
            else:     # the first sum allocates a buffer we own; later ones add into it in place
                if hasattr(cur, "add_into"):
                    buf = cur.data                   # a SliceGrad builds a fresh dense array
                    _add_into(buf, g)
                elif hasattr(g, "add_into"):
                    buf = cur.data.copy()
                    g.add_into(buf)
                else:
                    buf = cur.data + g.data
                grads[k] = Tensor._make(buf, False)
                owned.add(k)
            if prof is not None:
                added = g.values if hasattr(g, "add_into") else g.data
                prof.record("AccumulateGrad", "backward", t0, prof.clock(), None, (grads[k].data, added),
                            grads[k].data)

    for r, g in zip(roots, root_grads):
        accumulate(r, g)
    want = set() if inputs is None else {key(t) for t in inputs}

    with _GradMode(create_graph):
        for fn in reversed(order):
            k = id(fn)
            out_grad = grads.get(k) if k in want else grads.pop(k, None)
            owned.discard(k)
            if hasattr(out_grad, "add_into"):       # a SliceGrad: ops take dense gradients
                out_grad = Tensor._make(out_grad.data, False)
            if out_grad is None:
                if not retain_graph:
                    fn.release()
                continue
            if prof is not None:
                t0 = prof.clock()
            try:
                in_grads = _backward_of(fn, out_grad, create_graph, Tensor)
            except AnomalyError as e:   # an op inside this backward made the NaN: blame this op
                raise AnomalyError(
                    f"{fn.op.__name__} produced NaN/Inf in its backward (in its {str(e).split(' ')[0]} step); the op "
                    f"was created at\n  {getattr(fn, '_where', '<unknown: enable detect_anomaly before the forward>')}"
                ) from None
            if prof is not None:
                prof.record(fn.op.__name__, "backward", t0, prof.clock(), fn, None, None)
            if _anomaly:
                for ig in in_grads:
                    if ig is not None and _nonfinite(ig.data):
                        raise AnomalyError(
                            f"{fn.op.__name__} produced NaN/Inf in its backward; the op was created at\n"
                            f"  {getattr(fn, '_where', '<unknown: enable detect_anomaly before the forward>')}")
            for t, ig in zip(fn.inputs, in_grads):
                if ig is not None and t.requires_grad:
                    accumulate(t, ig)
            if not retain_graph:
                fn.release()

    if inputs is not None:
        return [None if g is None else Tensor._make(g.data, False) if hasattr(g, "add_into") else g
                for g in (grads.get(key(t)) for t in inputs)]
    if prof is not None:
        t0 = prof.clock()
    for k, g in grads.items():
        t = keep[k]
        if t._ctx is not None or not t.requires_grad:
            continue   # only leaves keep .grad
        if create_graph:
            # a fresh array either way: g itself may be shared with another leaf or be a read-only
            # broadcast view, and a later first-order backward adds into .grad in place
            with _GradMode(True):
                t.grad = g * 1.0 if t.grad is None else t.grad + g
        elif t.grad is None:
            fresh = k in owned or hasattr(g, "add_into")    # a SliceGrad's dense array is new
            t.grad = Tensor._make(g.data if fresh else g.data.copy(), False)
        else:
            _add_into(t.grad.data, g)
    if prof is not None:
        prof.record("AccumulateGrad", "backward", t0, prof.clock(), None, None, None)
    return None


def _add_into(buf, g):
    """buf += g in place; a SliceGrad adds only its slice."""
    if hasattr(g, "add_into"):
        g.add_into(buf)
    else:
        buf += g.data


def grad(outputs, inputs, grad_outputs=None, create_graph=False, retain_graph=None):
    """Gradients of ``outputs`` w.r.t. ``inputs``, returned as a tuple; ``.grad`` is untouched.

    ``outputs``/``inputs`` are Tensors or sequences of them. An input the outputs do not
    depend on gets None.
    """
    from .tensor import Tensor
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    gos = [_root_grad(o, g) for o, g in zip(outs, grad_outputs)]
    if retain_graph is None:
        retain_graph = create_graph
    for t in ins:
        if not t.requires_grad:
            raise RuntimeError("grad(): one of the inputs does not require grad")
    return tuple(run_backward(outs, gos, retain_graph, create_graph, inputs=ins))


def _root_grad(out, g):
    from .tensor import Tensor
    if g is None:
        if out.data.size != 1:
            raise RuntimeError(
                f"grad can be implicitly created only for scalar outputs; this output has shape {out.shape}: "
                "pass a gradient of that shape")
        return Tensor._make(out._xp.ones_like(out.data), False)
    g = g if isinstance(g, Tensor) else Tensor(g, dtype=out.dtype, device=out.device)
    if g.shape != out.shape:
        raise ValueError(f"backward: gradient shape {g.shape} does not match output shape {out.shape}")
    return g
