"""Optimizers with PyTorch's update math (SGD, Adam, AdamW), a warmup+cosine schedule, clip_grad_norm_.

Updates run in place on the parameters' arrays, outside the graph. On the CPU each update is the
NumPy code below (Adam: one native loop when available); on a GPU it is one fused kernel per
parameter (minigrad/fused_optim.py: the same operations in the same order). clip_grad_norm_ on a
GPU computes the norm and scales on the device: no host sync.
"""
from __future__ import annotations

import math

import numpy as np

from . import dispatch
from .backend import get_array_module, is_device_array, to_host


def _fused(*arrays):
    """minigrad.fused_optim when these arrays are CuPy arrays it takes and the kernels are on
    (not under MINIGRAD_KERNELS=off or MINIGRAD_IMPL=reference), else None."""
    if not type(arrays[0]).__module__.startswith("cupy") or not dispatch.use_kernels("cuda"):
        return None
    from . import fused_optim
    return fused_optim if fused_optim.supports(*[a for a in arrays if a is not None]) else None


class Optimizer:
    """Holds parameter groups (dicts with "params" and hyperparameters) and per-parameter state."""

    defaults: dict = {}

    def __init__(self, params, **defaults):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for g in groups:
            g = {**self.defaults, **defaults, **g}
            g["params"] = list(g["params"])
            for p in g["params"]:
                if not p.requires_grad:
                    raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} does not require grad")
            self.param_groups.append(g)
        self.state: dict[int, dict] = {}     # id(param) -> {"step": int, buffers...}

    def zero_grad(self):
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self):
        """Update every parameter that has a gradient."""
        for p, group in self.params_with_grad():
            self.update(p, group)

    def params_with_grad(self) -> list[tuple]:
        """(parameter, its group) for every parameter that has a gradient, in group order."""
        return [(p, g) for g in self.param_groups for p in g["params"] if p.grad is not None]

    def update(self, p, group) -> None:
        """One parameter's step: count it, then apply the update rule in place. Parameters are
        independent: updating them in any order, or on several threads, gives the same result."""
        state = self.state.setdefault(id(p), {"step": 0})
        state["step"] += 1
        self._update(p.data, p.grad.data, state, group)

    def _update(self, w, grad, state, group):
        raise NotImplementedError

    # ------------------------------------------------------------ checkpointing
    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        """{"groups": [hyperparameters], "state": {param index: {name: host array or int}}}."""
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        state = {}
        for i, p in enumerate(self._params()):
            if id(p) in self.state:
                state[i] = {k: (to_host(v) if hasattr(v, "shape") else v) for k, v in self.state[id(p)].items()}
        return {"groups": groups, "state": state}

    def load_state_dict(self, sd):
        params = self._params()
        if len(sd["groups"]) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(sd['groups'])} parameter groups, this optimizer has "
                             f"{len(self.param_groups)}")
        for g, saved in zip(self.param_groups, sd["groups"]):
            g.update(saved)
        self.state = {}
        for i, st in sd["state"].items():
            i = int(i)
            if i >= len(params):
                raise ValueError(f"optimizer state names parameter {i}, but there are only {len(params)}")
            p = params[i]
            xp = get_array_module(p.data)
            new = {}
            for k, v in st.items():
                if hasattr(v, "shape"):
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"optimizer state {k!r} of parameter {i} has shape {tuple(v.shape)}, "
                                         f"the parameter has shape {p.shape}")
                    v = xp.asarray(v, dtype=p.dtype)
                new[k] = v
            self.state[id(p)] = new


class SGD(Optimizer):
    defaults = dict(lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening 0")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                         weight_decay=weight_decay)

    def _update(self, w, grad, st, g):
        mu = g["momentum"]
        fused = _fused(w, grad)
        if fused is not None:     # one kernel: the lines below in one pass over w, grad, buf
            first = mu and st.get("momentum_buffer") is None
            if first:
                st["momentum_buffer"] = get_array_module(w).empty_like(w)
            fused.launch(*fused.sgd_launch(w, grad, st.get("momentum_buffer") if mu else None, lr=g["lr"],
                                           weight_decay=g["weight_decay"], momentum=mu,
                                           dampening=g["dampening"], nesterov=g["nesterov"], first=first))
            return
        d = grad + g["weight_decay"] * w if g["weight_decay"] else grad
        if mu:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = d.copy()
            else:
                buf *= mu
                buf += (1.0 - g["dampening"]) * d
            d = d + mu * buf if g["nesterov"] else buf
        w -= g["lr"] * d


class Adam(Optimizer):
    """Adam; ``weight_decay`` adds wd·w to the gradient (L2), as torch.optim.Adam."""
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def _update(self, w, grad, st, g):
        xp = get_array_module(w)
        b1, b2 = g["betas"]
        lr, wd, t = g["lr"], g["weight_decay"], st["step"]
        if "exp_avg" not in st:
            st["exp_avg"] = xp.zeros_like(w)
            st["exp_avg_sq"] = xp.zeros_like(w)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        lib = dispatch.cpu_native(w, grad, m, v)
        if lib is not None:   # the same math in one native pass over w, grad, m, v
            lib.adam_(w, grad, m, v, lr=lr, beta1=b1, beta2=b2, eps=g["eps"], weight_decay=wd,
                      decoupled=self.decoupled, step=t)
            return
        fused = _fused(w, grad, m, v)
        if fused is not None:  # the same math in one kernel on the GPU
            fused.launch(*fused.adam_launch(w, grad, m, v, lr=lr, beta1=b1, beta2=b2, eps=g["eps"],
                                            weight_decay=wd, decoupled=self.decoupled, step=t))
            return
        if wd and self.decoupled:
            w *= 1.0 - lr * wd
        elif wd:
            grad = grad + wd * w
        m *= b1
        m += (1.0 - b1) * grad
        v *= b2
        v += (1.0 - b2) * (grad * grad)
        bc1 = 1.0 - b1 ** t
        bc2_sqrt = math.sqrt(1.0 - b2 ** t)
        denom = xp.sqrt(v)
        denom *= 1.0 / bc2_sqrt
        denom += g["eps"]
        w -= (lr / bc1) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay: w <- w (1 - lr·wd) before the Adam step (torch.optim.AdamW)."""
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def warmup_cosine_lr(step, max_lr, min_lr, warmup_steps, total_steps):
    """Linear warmup from 0 to max_lr over warmup_steps, then cosine decay to min_lr at total_steps
    (held at min_lr after). ``step`` counts from 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    span = max(total_steps - warmup_steps, 1)
    ratio = (step - warmup_steps) / span
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


class WarmupCosine:
    """Sets every group's lr from ``warmup_cosine_lr`` each time ``step()`` is called."""

    def __init__(self, optimizer, max_lr, min_lr, warmup_steps, total_steps):
        self.optimizer, self.max_lr, self.min_lr = optimizer, max_lr, min_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.last_step = -1
        self.step()

    def get_lr(self, step):
        return warmup_cosine_lr(step, self.max_lr, self.min_lr, self.warmup_steps, self.total_steps)

    def step(self):
        self.last_step += 1
        lr = self.get_lr(self.last_step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr


def grad_sq_norm(g) -> float:
    """Σ g² of one gradient array as a Python float: one BLAS dot, no temporaries."""
    return float(get_array_module(g).vdot(g.ravel(), g.ravel()))


def clip_grad_norm_(parameters, max_norm, eps=1e-6):
    """Scale all gradients in place so their global L2 norm is at most max_norm; returns the norm before.

    The norm is a Python float for host arrays. For device arrays it stays on the device, a 0-d
    float64 array (as torch returns a tensor): the squares are summed and the gradients scaled
    there, by min(1, max_norm / (norm + eps)) (a product by exactly 1 changes no bit), so clipping
    never waits for the GPU; ``float()`` of the result does."""
    grads = [p.grad.data for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    if is_device_array(grads[0]):
        return _clip_on_device(grads, max_norm, eps)
    total = math.sqrt(sum(grad_sq_norm(g) for g in grads))    # the sum over tensors is in float64
    coef = max_norm / (total + eps)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total


def _clip_on_device(grads, max_norm, eps):
    """clip_grad_norm_ on device arrays: the same float64 sum of each gradient's float32 dot, no sync."""
    xp = get_array_module(grads[0])
    total = xp.zeros((), dtype=np.float64)
    for g in grads:
        total = total + xp.vdot(g.ravel(), g.ravel()).astype(np.float64)
    norm = xp.sqrt(total)
    coef = xp.minimum(max_norm / (norm + eps), 1.0)
    cast = {}
    for g in grads:
        c = cast.get(g.dtype)
        if c is None:
            c = cast[g.dtype] = coef.astype(g.dtype)
        g *= c
    return norm
