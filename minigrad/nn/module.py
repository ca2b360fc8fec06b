"""Module and Parameter: attribute-registered parameters and submodules, state_dict, train/eval."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..backend import check_device, to_host
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as a trainable parameter (requires_grad=True)."""
    __slots__ = ()

    def __init__(self, data, requires_grad=True, dtype=None, device=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype, device=device)

    def __repr__(self):
        return "Parameter(" + super().__repr__()[len("Tensor("):]


class Module:
    """Base class: assign Parameters, Modules and buffers as attributes; they are found by name."""

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        for d in (self._params, self._modules, self._buffers):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, tensor):
        """A non-trainable tensor saved in the state_dict (e.g. a causal mask)."""
        object.__setattr__(self, name, tensor)
        self._buffers[name] = tensor

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}{name}.")

    def modules(self):
        return (m for _, m in self.named_modules())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix=""):
        seen = set()
        for mprefix, m in self.named_modules(prefix):
            for name, p in m._params.items():
                if id(p) not in seen:          # tied weights are listed once
                    seen.add(id(p))
                    yield mprefix + name, p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        device = check_device(device)
        for m in self.modules():
            for d in (m._params, m._buffers):
                for name, t in d.items():
                    if t.device != device:
                        t.data = t.to(device).data
                        if t.grad is not None:
                            t.grad = t.grad.to(device)
        return self

    # ------------------------------------------------------------ state
    def state_dict(self):
        """name -> host numpy array, for parameters and buffers (tied parameters appear under each name)."""
        out = OrderedDict()
        for mprefix, m in self.named_modules():
            for name, t in list(m._params.items()) + list(m._buffers.items()):
                out[mprefix + name] = to_host(t.data)
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays into parameters/buffers. Shape mismatches always raise; with strict,
        missing and unexpected keys raise too. Errors name the key and both shapes."""
        own = OrderedDict()
        for mprefix, m in self.named_modules():
            for name, t in list(m._params.items()) + list(m._buffers.items()):
                own[mprefix + name] = t
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing keys: " + ", ".join(f"{k} (expected shape {own[k].shape})" for k in missing))
            if unexpected:
                parts.append("unexpected keys: " + ", ".join(
                    f"{k} (shape {tuple(np.shape(state[k]))})" for k in unexpected))
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + "; ".join(parts))
        for k, t in own.items():
            if k not in state:
                continue
            v = state[k]
            v = to_host(v.data) if isinstance(v, Tensor) else np.asarray(v)
            if tuple(v.shape) != t.shape:
                raise ValueError(f"load_state_dict: size mismatch for {k}: the checkpoint has shape {tuple(v.shape)}, "
                                 f"the model has shape {t.shape}")
            t.data = t._xp.array(v, dtype=t.dtype, copy=True)    # never alias the caller's arrays
        return missing, unexpected

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")

    def extra_repr(self):
        return ""


class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m):
        setattr(self, str(len(self._modules)), m)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)
