"""Data parallelism over the CPU's cores: each thread takes a slice of the micro-batch.

On a 2-core machine, one thread with a two-thread BLAS leaves the cores idle half the time: every
op outside the matmuls (layernorm, GELU, attention, the optimizer's loops) runs on one core, and
each matmul's output is split between the two cores' caches. Here the micro-batch is cut into
row slices instead; each slice's forward and backward runs on its own thread with a one-thread
BLAS, so every op runs on both cores at once. NumPy, BLAS and the native loops release the GIL
while they compute; only the Python between ops is serialised.

Determinism: each slice's loss is scaled by its share of the rows, its gradients come from
minigrad.grad (no shared .grad is touched from a thread), and the slices' gradients are added in
slice order after all threads finish. The result does not depend on thread timing, and running
the slices one after another (``concurrent=False``) gives the same numbers bit for bit.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import minigrad
from minigrad import Tensor
from minigrad.nn.layers import Dropout
from minigrad.optim import balanced


def split_rows(batch, n: int):
    """A tuple of arrays sharing the leading (row) dimension -> n (slice, weight) pairs, weight =
    the slice's share of the rows. Fewer pairs when there are fewer rows than n."""
    rows = len(batch[0])
    bounds = np.linspace(0, rows, min(n, rows) + 1).round().astype(int)
    return [(tuple(a[lo:hi] for a in batch), (hi - lo) / rows) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _blas_controller():
    """A threadpoolctl controller for the loaded BLAS, or None when threadpoolctl is missing."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


class DataParallel:
    """Runs loss_fn(model, slice) and its backward for several slices on ``threads`` threads."""

    def __init__(self, model, loss_fn, threads: int):
        self.model, self.loss_fn, self.threads = model, loss_fn, threads
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="minigrad-dp") if threads > 1 else None
        self._blas = _blas_controller() if threads > 1 else None
        self._dropouts = [m for m in model.modules() if isinstance(m, Dropout)]

    def can_run_concurrently(self) -> bool:
        """False when threads would change the result or the measurement: one thread, no
        threadpoolctl to pin BLAS to one thread per worker, active dropout (one shared random
        stream), or the op profiler recording (it is process-wide)."""
        from minigrad import autograd

        if self.pool is None or self._blas is None or autograd._profiler is not None:
            return False
        return not any(m.p > 0 and m.training for m in self._dropouts)

    def _one(self, part, scale):
        batch, weight = part
        loss = self.loss_fn(self.model, batch)
        root = Tensor._make(loss._xp.asarray(np.array(weight * scale, dtype=loss.dtype)), False)
        return float(loss.item()), minigrad.grad(loss, self.params, grad_outputs=root)

    def step(self, parts, scale: float = 1.0, concurrent: bool | None = None) -> float:
        """Accumulate scale·Σ weight·∇loss(slice) into each parameter's .grad; returns Σ weight·loss."""
        if concurrent is None:
            concurrent = self.can_run_concurrently()
        concurrent = concurrent and len(parts) > 1
        if concurrent:
            with self._blas.limit(limits=1, user_api="blas"):
                results = list(self.pool.map(lambda part: self._one(part, scale), parts))
        else:
            results = [self._one(part, scale) for part in parts]

        def reduce(indices):              # each parameter's slice gradients, added in slice order
            for i in indices:
                grads = [r[1][i].data for r in results if r[1][i] is not None]
                if not grads:
                    continue
                p = self.params[i]
                total = grads[0] + grads[1] if len(grads) > 1 else grads[0].copy()
                for g in grads[2:]:
                    total += g
                if p.grad is None:
                    p.grad = Tensor._make(total, False)
                else:
                    p.grad.data += total

        indices = list(range(len(self.params)))
        if concurrent:
            list(self.pool.map(reduce, balanced(indices, [p.data.size for p in self.params], self.threads)))
        else:
            reduce(indices)
        return float(sum(weight * r[0] for (_, weight), r in zip(parts, results)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
