"""NumPy references for the kernel families (the definitions the kernels are validated against).

Each works for numpy and cupy arrays alike (the array module is taken from the input).
"""

from __future__ import annotations


def _xp(a):
    from minigrad.kernels.launch import array_module

    return array_module(a)


def layernorm_forward(x, weight, bias, eps):
    """x (N, C); weight/bias (C,) or None -> y (N, C), mean (N,), rstd (N,) = 1/sqrt(biased var + eps)."""
    xp = _xp(x)
    mean = x.mean(axis=1)
    xc = x - mean[:, None]
    var = (xc * xc).mean(axis=1)
    rstd = 1.0 / xp.sqrt(var + x.dtype.type(eps))
    y = xc * rstd[:, None]
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, mean, rstd


def layernorm_backward(dy, x, weight, mean, rstd, bias=True):
    """Gradients of layernorm_forward: dx (N, C); dweight (C,) or None if weight is None;
    dbias (C,) = dy summed over rows, or None if bias is False."""
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy * weight if weight is not None else dy
    mg = g.mean(axis=1, keepdims=True)
    mgx = (g * xhat).mean(axis=1, keepdims=True)
    dx = rstd[:, None] * (g - mg - xhat * mgx)
    dweight = (dy * xhat).sum(axis=0) if weight is not None else None
    dbias = dy.sum(axis=0) if bias else None
    return dx, dweight, dbias


def layernorm_forward_unfused(x, weight, bias, eps):
    """The unfused array-library composition the fused kernel is benchmarked against."""
    return layernorm_forward(x, weight, bias, eps)


def layernorm_backward_unfused(dy, x, weight, mean, rstd):
    return layernorm_backward(dy, x, weight, mean, rstd)
