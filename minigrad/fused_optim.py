"""The optimizers' updates on a GPU: one fused CUDA kernel per parameter (minigrad/optim.py calls it).

On "cuda" the NumPy-style update of optim.py would launch about ten elementwise kernels per
parameter (and Adam's temporaries); here each parameter's update is one launch that reads and
writes each element once. The CPU never runs this: NumPy arrays keep the NumPy path (or the native
loop), bit for bit as before. Off under MINIGRAD_KERNELS=off and MINIGRAD_IMPL=reference.

The kernels repeat the NumPy path's operations in its order, in the parameter's type T (float or
double), with the hyperparameters computed on the host in double as optim.py computes them, then
rounded to T. They are compiled with --fmad=false (no multiply-add contraction); division and sqrt
are IEEE-rounded by default, so the result equals the NumPy path's bit for bit, except that CuPy
flushes denormals to zero (-ftz=true). The source is header-free, so the CPU emulator of
minigrad.kernels runs it too (tests/test_fused_optim.py compares it with the NumPy path there).
"""
from __future__ import annotations

import math

import numpy as np

SOURCE = r"""
// adam_step<T>: Adam / AdamW on n elements. Reads w, g, m, v; writes w, m, v (g is left as it is).
//   mode 1 (AdamW):  w = w * decay                 decay = 1 - lr*wd
//   mode 2 (Adam):   g = g + wd * w                (L2 term)
//   m = m * beta1;  m = m + omb1 * g               omb1 = 1 - beta1
//   v = v * beta2;  v = v + omb2 * (g * g)         omb2 = 1 - beta2
//   w = w - step * (m / (sqrt(v) * inv_bc2 + eps)) step = lr / (1 - beta1^t), inv_bc2 = 1 / sqrt(1 - beta2^t)
// sgd_step<T>: SGD on n elements. Reads w, g and buf (null: no momentum); writes w and buf.
//   d = g + wd * w    (when wd != 0)
//   buf = first ? d : buf * mu + omd * d           omd = 1 - dampening
//   d = nesterov ? d + mu * buf : buf
//   w = w - lr * d
// Launch: 1-D grid-stride loop over n (any grid and block); no shared memory, no atomics.
template <typename T>
__global__ void adam_step(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                          long long n, int mode, T decay, T wd, T beta1, T omb1, T beta2, T omb2,
                          T inv_bc2, T eps, T step)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T wi = w[i], gi = g[i];
        if (mode == 1) wi = wi * decay;
        if (mode == 2) gi = gi + wd * wi;
        T mi = m[i] * beta1;
        mi = mi + omb1 * gi;
        T vi = v[i] * beta2;
        vi = vi + omb2 * (gi * gi);
        T denom = sqrt(vi) * inv_bc2;
        denom = denom + eps;
        m[i] = mi;
        v[i] = vi;
        w[i] = wi - step * (mi / denom);
    }
}

template <typename T>
__global__ void sgd_step(T* __restrict__ w, const T* __restrict__ g, T* __restrict__ buf, long long n,
                         T lr, T wd, T mu, T omd, int nesterov, int first)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T wi = w[i];
        T d = g[i];
        if (wd != T(0)) d = d + wd * wi;
        if (buf != nullptr) {
            T b;
            if (first) {
                b = d;
            } else {
                b = buf[i] * mu;
                b = b + omd * d;
            }
            buf[i] = b;
            d = nesterov ? d + mu * b : b;
        }
        w[i] = wi - lr * d;
    }
}
"""
NAMES = ("adam_step<float>", "adam_step<double>", "sgd_step<float>", "sgd_step<double>")
OPTIONS = ("--std=c++17", "--fmad=false")
BLOCK = 256
MAX_BLOCKS = 4096
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def supports(*arrays) -> bool:
    """Whether the kernels take these arrays: one dtype, float32 or float64, C-contiguous."""
    d = arrays[0].dtype
    return np.dtype(d) in _CTYPE and all(a.dtype == d and a.flags.c_contiguous for a in arrays)


def _grid(n: int) -> int:
    return max(1, min(-(-n // BLOCK), MAX_BLOCKS))


def adam_launch(w, g, m, v, *, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """(kernel name, grid, block, args) for one Adam/AdamW update (the scalars as optim.Adam computes them)."""
    T = np.dtype(w.dtype).type
    mode = 0 if not weight_decay else (1 if decoupled else 2)
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
    args = (w, g, m, v, np.int64(w.size), np.int32(mode), T(1.0 - lr * weight_decay), T(weight_decay),
            T(beta1), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(1.0 / bc2_sqrt), T(eps), T(lr / bc1))
    return f"adam_step<{_CTYPE[np.dtype(w.dtype)]}>", _grid(w.size), BLOCK, args


def sgd_launch(w, g, buf, *, lr, weight_decay, momentum, dampening, nesterov, first):
    """(kernel name, grid, block, args) for one SGD update; buf None without momentum."""
    T = np.dtype(w.dtype).type
    args = (w, g, buf, np.int64(w.size), T(lr), T(weight_decay), T(momentum), T(1.0 - dampening),
            np.int32(bool(nesterov)), np.int32(bool(first)))
    return f"sgd_step<{_CTYPE[np.dtype(w.dtype)]}>", _grid(w.size), BLOCK, args


_module = None


def launch(name, grid, block, args) -> None:
    """Run one kernel of SOURCE on CuPy arrays (compiled once per process by CuPy's NVRTC)."""
    global _module
    import cupy

    if _module is None:
        _module = cupy.RawModule(code=SOURCE, options=OPTIONS, name_expressions=list(NAMES))
    # a null pointer as a 64-bit zero (what kernels/runtime.py does for every CuPy launch)
    args = tuple(np.uint64(0) if a is None else a for a in args)
    _module.get_function(name)((grid,), (block,), args)
