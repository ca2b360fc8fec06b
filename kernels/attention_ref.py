"""NumPy reference for the fused attention kernels (kernels/attention.cu).

Same semantics as the kernels and as the NumPy path of F.scaled_dot_product_attention:
  q (B, H, Tq, d), k and v (B, H, Tk, d); o (B, H, Tq, d); lse (B, H, Tq).
  key_mask: None or bool (B, Tk), True = the key may be attended.
  is_causal: bottom-right aligned, query i may attend key j iff j <= i + (Tk - Tq).
  A query row with no attendable key gets o = 0, lse = -inf and zero gradients.
This reference materialises the (Tq, Tk) score matrix; it is for checking, not for speed.
Works on numpy or cupy arrays (the array module is taken from q).
"""


def _xp(a):
    try:
        import cupy
        return cupy.get_array_module(a)
    except ImportError:
        import numpy
        return numpy


def allowed_mask(xp, B, Tq, Tk, key_mask=None, is_causal=False):
    """Bool (B or 1, 1, Tq, Tk): True where query i may attend key j."""
    allowed = xp.ones((1, 1, Tq, Tk), dtype=bool)
    if is_causal:
        i = xp.arange(Tq)[:, None]
        j = xp.arange(Tk)[None, :]
        allowed = allowed & (j <= i + (Tk - Tq))[None, None]
    if key_mask is not None:
        allowed = allowed & xp.asarray(key_mask, dtype=bool)[:, None, None, :]
    return allowed


def attention_probs(q, k, key_mask=None, is_causal=False, scale=None):
    """P (B, H, Tq, Tk), lse (B, H, Tq) and the scale used; fully masked rows give P = 0, lse = -inf."""
    xp = _xp(q)
    B, _, Tq, d = q.shape
    Tk = k.shape[2]
    if scale is None:
        scale = 1.0 / float(d) ** 0.5
    allowed = allowed_mask(xp, B, Tq, Tk, key_mask, is_causal)
    s = xp.where(allowed, (q @ k.swapaxes(-1, -2)) * q.dtype.type(scale), -xp.inf)
    m = s.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    e = xp.where(allowed, xp.exp(s - m), 0)
    total = e.sum(axis=-1, keepdims=True)
    p = e / xp.where(total > 0, total, 1)
    with_keys = total[..., 0] > 0
    lse = xp.where(with_keys, xp.log(xp.where(with_keys, total[..., 0], 1)) + m[..., 0], -xp.inf)
    return p.astype(q.dtype), lse.astype(q.dtype), scale


def attention_forward_ref(q, k, v, key_mask=None, is_causal=False, scale=None):
    """Returns (o, lse)."""
    p, lse, _ = attention_probs(q, k, key_mask, is_causal, scale)
    return p @ v, lse


def attention_backward_ref(q, k, v, o, lse, do, key_mask=None, is_causal=False, scale=None):
    """Returns (dq, dk, dv) for the loss sum(o * do). lse is unused: P is recomputed here."""
    p, _, scale = attention_probs(q, k, key_mask, is_causal, scale)
    dv = p.swapaxes(-1, -2) @ do
    dp = do @ v.swapaxes(-1, -2)
    drow = (do * o).sum(axis=-1, keepdims=True)
    ds = p * (dp - drow)
    dq = (ds @ k) * q.dtype.type(scale)
    dk = (ds.swapaxes(-1, -2) @ q) * q.dtype.type(scale)
    return dq, dk, dv
