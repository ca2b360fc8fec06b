"""erf, which NumPy lacks: exact (math.erf) in float64, a fast polynomial in float32."""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Function
from ..backend import to_host
from ._util import xp_of

# Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7, below float32's resolution of erf's range
_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_erf64 = np.vectorize(math.erf, otypes=[np.float64])


def erf_array(x):
    """erf elementwise, in x's dtype (integers and bools in float64, as scipy.special.erf).

    CuPy: cupyx.scipy.special.erf, CUDA's erff/erf (float32 in float32, float64 in float64; within
    a few ulps of the exact value). NumPy float64: math.erf element by element (exact to rounding).
    Otherwise the A&S 7.1.26 polynomial (|error| <= 1.5e-7, float32's resolution)."""
    xp = xp_of(x)
    if x.dtype.kind not in "f":
        x = x.astype(np.float64)
    if xp.__name__.startswith("cupy"):
        from cupyx.scipy.special import erf as cupy_erf
        return cupy_erf(x)
    if x.dtype == np.float64:
        return xp.asarray(_erf64(x if type(x) is np.ndarray else to_host(x)))
    ax = xp.abs(x)
    t = 1.0 / (1.0 + _P * ax)
    poly = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4]))))
    y = 1.0 - poly * xp.exp(-ax * ax)
    return (xp.sign(x) * y).astype(x.dtype, copy=False)


def gelu_and_slope(x):
    """Exact GELU y = x Φ(x) and its slope dy/dx = Φ(x) + x φ(x), on any array module.
    Returns (y, slope), both shaped like x."""
    xp = xp_of(x)
    cdf = 0.5 * (1.0 + erf_array(x * (1.0 / math.sqrt(2.0))))
    return x * cdf, cdf + x * xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))


def gelu_and_slope_blocked(x, block=32768):
    """gelu_and_slope for a float32 NumPy array, in one blocked pass over x: A&S 7.1.26 erf
    evaluated in place on cache-sized blocks (about 20 cheap ufunc passes per block, no full-size
    temporaries)."""
    f = np.float32
    xf = np.ascontiguousarray(x).reshape(-1)
    y, slope = np.empty_like(xf), np.empty_like(xf)
    n = xf.size
    bsz = max(min(block, n), 1)
    z, t, q, e = (np.empty(bsz, f) for _ in range(4))
    for s in range(0, n, bsz):
        xb = xf[s:s + bsz]
        m = xb.size
        if m != bsz:
            z, t, q, e = z[:m], t[:m], q[:m], e[:m]
        np.multiply(xb, f(1.0 / math.sqrt(2.0)), out=z)
        np.abs(z, out=z)                                  # |z|, z = x / sqrt(2)
        np.multiply(z, f(_P), out=t)
        t += f(1.0)
        np.reciprocal(t, out=t)                           # t = 1 / (1 + p|z|)
        np.multiply(t, f(_A[4]), out=q)
        for c in _A[3::-1]:                               # Horner: q = t (a1 + t (a2 + ...))
            q += f(c)
            q *= t
        np.multiply(z, z, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)                                  # e = exp(-x²/2) = sqrt(2π) φ(x)
        q *= e
        np.subtract(f(0.5), q * f(0.5), out=q)            # q = erf(|z|) / 2
        np.sign(xb, out=z)
        q *= z
        q += f(0.5)                                       # q = Φ(x)
        np.multiply(xb, q, out=y[s:s + m])
        np.multiply(xb, e, out=t)
        t *= f(1.0 / math.sqrt(2.0 * math.pi))
        np.add(t, q, out=slope[s:s + m])                  # Φ(x) + x φ(x)
    return y.reshape(x.shape), slope.reshape(x.shape)


class Erf(Function):
    def forward(self, x):
        return erf_array(x)

    def backward(self, g):
        x = self.inputs[0]
        return (g * ((x * x) * -1.0).exp() * (2.0 / math.sqrt(math.pi)),)


def erf(x):
    return Erf.apply(x)


__all__ = ["erf", "erf_array", "Erf", "gelu_and_slope", "gelu_and_slope_blocked"]
