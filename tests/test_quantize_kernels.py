"""The native quantized matmuls (kernels/cpu/quant_gemm.cpp) against dequantize-then-matmul references.

Tolerances: a float32 sum of K products, in any order and with fused multiply-adds, is within
γ_K·Σ|x_k w_k| of the exact sum (u = eps/2, γ_K ≈ K·u); the kernels add the per-group sums with one
more rounding each and then the bias, so (K + 2)·eps·(Σ|x||w| + |b|) bounds every path with room to
spare (G <= K). The q8a8 (VNNI) path quantizes x per row: its int8 activations and scales must equal
minigrad.nn.quantize.quantize_rows' bit for bit, and its dot products are exact integers, so only the
G per-group products and the final scale round: (G + 4)·eps.
"""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from minigrad.nn import quantize as Q

EPS = float(np.finfo(np.float32).eps)
# (M, N, K, group): decode rows (M=1), N=1, K off every vector width (16, 32, 64), groups that do
# not divide K, a group past K, and a GPT-2-sized GEMV big enough to use the worker threads.
SHAPES = [(1, 37, 77, None), (3, 5, 1000, 128), (7, 9, 33, 16), (1, 1, 16, None), (5, 13, 130, 40),
          (4, 64, 768, None), (1, 3, 31, None), (6, 11, 65, 200), (2, 1, 1, None), (1, 2304, 768, None),
          (3, 1000, 3072, 128), (2, 7, 128, 100)]   # the last: a group ends inside the final 64-byte step


@pytest.fixture
def lib(native_on):
    from minigrad import dispatch
    return dispatch.cpu_native()


def _isas(lib, want):
    """The paths this CPU and build have, of those wanted (0 portable always)."""
    bits = {1: 1, 2: 2, 4: 4}
    return [i for i in want if i == 0 or lib.quant_isa & bits[i]]


def _data(m, n, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return x, w, b


def _check(y, ref, tol, what):
    err = np.abs(y.astype(np.float64) - ref)
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert (err <= tol).all(), f"{what}: max error {err.max():.3g} past its bound at {np.unravel_index((err - tol).argmax(), err.shape)}"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,n,k,group", SHAPES)
def test_int8_matmul_matches_dequantized_reference(lib, m, n, k, group, threads):
    x, w, b = _data(m, n, k, 1)
    q, s = Q.quantize_int8(w, group)
    g = min(group or k, k)
    wd = q.astype(np.float64) * np.repeat(s.astype(np.float64), g, axis=1)[:, :k]
    ref = x.astype(np.float64) @ wd.T + b
    tol = (k + 2) * EPS * (np.abs(x).astype(np.float64) @ np.abs(wd).T + np.abs(b))
    for isa in _isas(lib, [0, 1]):
        _check(lib.q8_matmul(x, q, s, b, g, isa, threads), ref, tol, f"int8 isa {isa}")
        _check(lib.q8_matmul(x, q, s, None, g, isa, threads), ref - b, tol, f"int8 isa {isa}, no bias")


def _x24_bound(x, wd):
    """q8x24's activation error bound, (M, N): half a step d = 2 max|x| / (2^24 - 1) per input, times
    Σ_k |W[n, k]|, with a 1e-6 relative allowance for the double arithmetic and the final rounding's eps."""
    d = 2.0 * np.abs(x.astype(np.float64)).max(axis=1, keepdims=True) / (2.0 ** 24 - 1)
    return 0.5 * d * np.abs(wd).sum(axis=1) * (1 + 1e-6)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,n,k,group", SHAPES)
def test_int8_x24_matmul_matches_reference_and_its_portable_twin(lib, m, n, k, group, threads):
    """q8x24 (the int8 default on VNNI CPUs): x in 24-bit fixed point per row, exact integer sums. The
    error bound is x's rounding (half a step per input) plus one float32 rounding of the result; the
    portable loops compute the same digits and sums, so the two paths agree bit for bit."""
    x, w, b = _data(m, n, k, 9)
    x[0, 0] *= 1e3                               # a wide row: the step follows the row's largest entry
    q, s = Q.quantize_int8(w, group)
    g = min(group or k, k)
    wd = q.astype(np.float64) * np.repeat(s.astype(np.float64), g, axis=1)[:, :k]
    ref = x.astype(np.float64) @ wd.T + b
    tol = _x24_bound(x, wd) + EPS * np.abs(ref)
    wsum = Q.wsum_int8(q, g)
    outs = []
    for isa in _isas(lib, [0, 2]):
        y, xd = lib.q8x24_matmul(x, q, s, wsum, b, g, isa, threads, keep_xd=True)
        top = np.abs(x.astype(np.float64)).max(axis=1)
        assert np.array_equal(xd[:, 1], top) and np.allclose(xd[:, 0], 2 * top / (2.0 ** 24 - 1), rtol=1e-15)
        _check(y, ref, tol, f"int8 x24 isa {isa}")
        _check(lib.q8x24_matmul(x, q, s, wsum, None, g, isa, threads), ref - b, tol + EPS * np.abs(b), "no bias")
        outs.append(y)
    assert all(np.array_equal(outs[0], o) for o in outs)


def test_int8_x24_zero_rows_and_a_tiny_entry_beside_a_huge_one(lib):
    """An all-zero x row gives the bias exactly; an entry 2^-30 of its row's largest is lost to the
    step (the documented price), and the result still meets the bound."""
    q, s = Q.quantize_int8(np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32))
    wd = Q.dequantize(q, s).astype(np.float64)
    x = np.zeros((2, 64), np.float32)
    x[1, 0], x[1, 1:] = 1.0, 2.0 ** -30
    b = np.arange(8, dtype=np.float32)
    for isa in _isas(lib, [0, 2]):
        y = lib.q8x24_matmul(x, q, s, Q.wsum_int8(q, 64), b, 64, isa, 1)
        assert np.array_equal(y[0], b)
        ref = x[1].astype(np.float64) @ wd.T + b
        _check(y[1:], ref[None], (_x24_bound(x[1:], wd) + EPS * np.abs(ref)), f"isa {isa}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,n,k,group", SHAPES)
def test_float32_matmul_on_the_pool_matches_reference(lib, m, n, k, group, threads):
    """mg_f32_matmul (the decode step's float32 GEMV): the q8 tiles with plain float32 loads."""
    x, w, b = _data(m, n, k, 3)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b
    tol = (k + 2) * EPS * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T + np.abs(b))
    for isa in _isas(lib, [0, 1]):
        _check(lib.f32_matmul(x, w, b, isa, threads), ref, tol, f"float32 isa {isa}")
        _check(lib.f32_matmul(x, w, None, isa, threads), ref - b, tol, f"float32 isa {isa}, no bias")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,n,k,group", SHAPES)
def test_bf16_matmul_matches_reference(lib, m, n, k, group, threads):
    x, w, b = _data(m, n, k, 2)
    wb = Q.quantize_bf16(w)
    wd = wb.astype(np.float64)
    ref = x.astype(np.float64) @ wd.T + b
    tol = (k + 2) * EPS * (np.abs(x).astype(np.float64) @ np.abs(wd).T + np.abs(b))
    for isa in _isas(lib, [0, 1]):
        _check(lib.bf16_matmul(x, wb.view(np.uint16), b, isa, threads), ref, tol, f"bf16 isa {isa}")
    if lib.quant_isa & 4:
        # vdpbf16ps: x rounded to bfloat16 first (then the same bound on the rounded inputs)
        xb = x.astype(wb.dtype).astype(np.float64)
        ref_b = xb @ wd.T + b
        tol_b = (k + 2) * EPS * (np.abs(xb) @ np.abs(wd).T + np.abs(b))
        _check(lib.bf16_matmul(x, wb.view(np.uint16), b, 2, threads), ref_b, tol_b, "bf16 dot")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,n,k,group", SHAPES)
def test_int8_activation_matmul_is_exact_integer_accumulation(lib, m, n, k, group, threads):
    x, w, b = _data(m, n, k, 3)
    x[0, :3] = [0.0, -0.0, 1e-30][:min(3, k)]                # zeros and a tiny value quantize to 0
    q, s = Q.quantize_int8(w, group)
    g = min(group or k, k)
    xq_ref, xs_ref = Q.quantize_rows(x)
    ng = s.shape[1]
    # the exact integer dot product per group, then the G scaled terms in float64
    pad = -(-k // g) * g
    xqp = np.zeros((m, pad), np.int64)
    xqp[:, :k] = xq_ref
    qp = np.zeros((n, pad), np.int64)
    qp[:, :k] = q
    acc = np.einsum("mgk,ngk->mng", xqp.reshape(m, ng, g), qp.reshape(n, ng, g))   # (M, N, G) exact
    ref = xs_ref.astype(np.float64)[:, None] * (acc * s.astype(np.float64)[None]).sum(axis=2) + b
    mag = xs_ref.astype(np.float64)[:, None] * (np.abs(acc) * s.astype(np.float64)[None]).sum(axis=2) + np.abs(b)
    tol = (ng + 4) * EPS * mag
    for isa in _isas(lib, [0, 2]):
        y, xq, xs = lib.q8a8_matmul(x, q, s, Q.wsum_int8(q, g), b, g, isa, threads, keep_xq=True)
        assert np.array_equal(xq, xq_ref) and np.array_equal(xs, xs_ref), f"isa {isa}: x quantized differently"
        _check(y, ref, tol, f"int8 activations isa {isa}")


def test_zero_weights_and_zero_rows(lib):
    x = np.zeros((2, 40), np.float32)
    w = np.zeros((5, 40), np.float32)
    w[1] = 3.0
    q, s = Q.quantize_int8(w)
    assert s[0, 0] == 0 and (q[0] == 0).all()
    for isa in _isas(lib, [0, 1]):
        assert (lib.q8_matmul(x, q, s, None, 40, isa, 1) == 0).all()
    for isa in _isas(lib, [0, 2]):
        y = lib.q8a8_matmul(x, q, s, Q.wsum_int8(q, 40), None, 40, isa, 1)
        assert (y == 0).all()


def test_portable_path_through_the_module_switch(lib, monkeypatch):
    """MINIGRAD_QUANT_ISA=portable sends QuantizedLinear to the plain loops; both paths meet the bound."""
    import minigrad
    from minigrad import dispatch
    x, w, b = _data(3, 50, 200, 4)
    layer = Q.QuantizedLinear.from_float(w, b, "int8", group_size=64)
    wd = layer.dequantized().astype(np.float64)
    ref = x.astype(np.float64) @ wd.T + b
    tol = (200 + 2) * EPS * (np.abs(x).astype(np.float64) @ np.abs(wd).T + np.abs(b))
    # auto on a VNNI CPU: q8x24, whose activations carry up to half a step d = 2 max|x| / (2^24 - 1)
    tol24 = tol + _x24_bound(x, wd)
    outs = {}
    for mode in ("portable", "avx512", "auto"):
        if mode != "portable" and not lib.quant_isa & 1:
            continue
        monkeypatch.setenv("MINIGRAD_QUANT_ISA", mode)
        isa = {"portable": 0, "avx512": 1, "auto": 2 if lib.quant_isa & 2 else 1}[mode]
        assert Q.native_isa(lib, "int8") == isa
        with dispatch.trace() as seen:
            outs[mode] = layer(minigrad.Tensor(x)).numpy()
        assert "QuantizedMatmulNative" in seen
        _check(outs[mode], ref, tol24 if isa == 2 else tol, mode)
    monkeypatch.setenv("MINIGRAD_QUANT_ISA", "sse9")
    with pytest.raises(ValueError, match="MINIGRAD_QUANT_ISA must be one of"):
        layer(minigrad.Tensor(x))


def _child_matmul(args):
    from minigrad import dispatch
    x, q, s = args
    return dispatch.cpu_native().q8_matmul(x, q, s, None, x.shape[1], 1 if dispatch.cpu_native().quant_isa & 1 else 0, 2)


def test_worker_threads_survive_fork(lib):
    """The thread pool is per process: a forked child (as data-parallel workers are) starts its own."""
    x, w, _ = _data(1, 2304, 768, 5)
    q, s = Q.quantize_int8(w)
    isa = 1 if lib.quant_isa & 1 else 0
    here = lib.q8_matmul(x, q, s, None, 768, isa, 2)         # starts the parent's workers
    with mp.get_context("fork").Pool(1) as pool:
        there = pool.apply_async(_child_matmul, ((x, q, s),)).get(timeout=60)
    assert np.array_equal(here, there)


def test_threads_do_not_change_the_result(lib):
    """Each output element is computed by one thread in a fixed order: 1 and 2 threads agree bit for bit."""
    x, w, _ = _data(2, 4096, 512, 6)
    q, s = Q.quantize_int8(w, 128)
    for isa in _isas(lib, [0, 1]):
        assert np.array_equal(lib.q8_matmul(x, q, s, None, 128, isa, 1), lib.q8_matmul(x, q, s, None, 128, isa, 2))
    wsum = Q.wsum_int8(q, 128)
    for isa in _isas(lib, [0, 2]):
        assert np.array_equal(lib.q8x24_matmul(x, q, s, wsum, None, 128, isa, 1),
                              lib.q8x24_matmul(x, q, s, wsum, None, 128, isa, 2))
    wb = Q.quantize_bf16(w).view(np.uint16)
    for isa in _isas(lib, [0, 1]):
        assert np.array_equal(lib.bf16_matmul(x, wb, None, isa, 1), lib.bf16_matmul(x, wb, None, isa, 2))
        assert np.array_equal(lib.f32_matmul(x, w, None, isa, 1), lib.f32_matmul(x, w, None, isa, 2))


def _bound_calls(lib, seed):
    """Bound q8 and bf16 calls whose arrays exist nowhere else, x to refill, and references (N, K) = (40, 70)."""
    x, w, b = _data(2, 40, 70, seed)
    q, s = Q.quantize_int8(w)
    wb = Q.quantize_bf16(w)
    isa = 1 if lib.quant_isa & 1 else 0
    y8, y16 = np.empty((2, 40), np.float32), np.empty((2, 40), np.float32)
    call8 = lib.q8_matmul(x, q, s, b, 70, isa, 2, out=y8, bind=True)
    call16 = lib.bf16_matmul(x, wb.view(np.uint16), b, isa, 2, out=y16, bind=True)
    w8, w16 = Q.dequantize(q, s).astype(np.float64), Q.dequantize(wb).astype(np.float64)
    return x, (call8, y8, w8, b), (call16, y16, w16, b)


def test_bound_calls_recompute_from_the_current_input_and_keep_their_arrays():
    """bind=True: a zero-argument call on fixed pointers (the decode plan). It reads x's contents at
    each call and holds every array it points to (here the weights exist nowhere else)."""
    import gc

    from minigrad import dispatch
    lib = dispatch.cpu_native(np.zeros(1, np.float32))
    if lib is None:
        pytest.skip("the native CPU library is not available here")
    x, *calls = _bound_calls(lib, 11)
    gc.collect()
    for xs in (x.copy(), np.random.default_rng(12).standard_normal(x.shape).astype(np.float32)):
        x[...] = xs
        for call, y, w, b in calls:
            call()
            ref = xs.astype(np.float64) @ w.T + b
            _check(y, ref, (70 + 2) * EPS * (np.abs(xs) @ np.abs(w).T + np.abs(b)), "bound call")


def test_out_arrays_are_written_in_place(lib):
    x, w, b = _data(2, 40, 70, 7)
    q, s = Q.quantize_int8(w)
    wb = Q.quantize_bf16(w).view(np.uint16)
    isa = 1 if lib.quant_isa & 1 else 0
    for fn in (lambda out: lib.q8_matmul(x, q, s, b, 70, isa, 1, out=out),
               lambda out: lib.bf16_matmul(x, wb, b, isa, 1, out=out),
               lambda out: lib.q8a8_matmul(x, q, s, Q.wsum_int8(q, 70), b, 70, 0, 1, out=out)):
        out = np.full((2, 40), np.nan, np.float32)
        assert fn(out) is out and np.array_equal(out, fn(None))
        with pytest.raises(ValueError, match="C-contiguous float32 array of shape"):
            fn(np.empty((40, 2), np.float32).T)


@pytest.mark.parametrize("scheme,group", [("int8", None), ("int8", 48), ("bfloat16", None)])
def test_many_rows_take_dequantized_blocks_and_blas(native_on, scheme, group):
    """From PREFILL_ROWS rows of x on, the native variant multiplies dequantized blocks of W by sgemm:
    same bound as the kernels."""
    import minigrad
    from minigrad import dispatch
    m, n, k = Q.PREFILL_ROWS + 3, 700, 200
    x, w, b = _data(m, n, k, 8)
    layer = Q.QuantizedLinear.from_float(w, b, scheme, group_size=group)
    wd = layer.dequantized().astype(np.float64)
    ref = x.astype(np.float64) @ wd.T + b
    tol = (k + 2) * EPS * (np.abs(x).astype(np.float64) @ np.abs(wd).T + np.abs(b))
    with dispatch.trace() as seen:
        y = layer(minigrad.Tensor(x)).numpy()
    assert "QuantizedMatmulNative" in seen
    _check(y, ref, tol, f"{scheme} blocked")


# ---------------------------------------------------------------- decode attention (quant_gemm.cpp)
def _attention_case(B, nh, block, hs, tk, seed):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, 3 * nh * hs)).astype(np.float32)
    kv = rng.standard_normal((2, B, nh, block, hs)).astype(np.float32)
    return qkv[:, :nh * hs].reshape(B, nh, hs), kv[0], kv[1]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B,nh,block,hs,tk", [(1, 12, 1024, 64, 512), (2, 3, 40, 64, 1), (2, 3, 40, 64, 37),
                                              (1, 12, 600, 64, 600), (2, 5, 64, 48, 33), (1, 2, 16, 16, 16),
                                              (3, 4, 300, 64, 300)])
def test_decode_attention_matches_float64_reference(lib, B, nh, block, hs, tk, threads):
    """out = softmax(scale · q Kᵀ) V against float64. Each score's float32 dot is within
    Δ = (hs + 2)·eps·scale·Σ|q||k| of exact; a probability's relative error is then at most 2Δ plus the
    exp's, the sum's and the division's roundings ((tk + 4)·eps), and Σ p v adds γ_tk: the bound is
    (2Δ + (2·tk + 10)·eps)·Σ p|v|. hs = 64 takes the AVX-512 path under isa 1 (where there is one),
    the portable loop under isa 0, as 48 and 16 always do; 12 heads at 512 keys pass the size at which the heads are shared out over threads."""
    q, K, V = _attention_case(B, nh, block, hs, tk, 3)
    scale = 1.0 / np.sqrt(hs)
    q64, K64, V64 = q.astype(np.float64), K[:, :, :tk].astype(np.float64), V[:, :, :tk].astype(np.float64)
    s = np.einsum("bhd,bhtd->bht", q64, K64) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("bht,bhtd->bhd", p, V64)
    delta = (hs + 2) * EPS * scale * np.einsum("bhd,bhtd->bht", np.abs(q64), np.abs(K64)).max(-1)
    tol = (2 * delta[..., None] + (2 * tk + 10) * EPS) * np.einsum("bht,bhtd->bhd", p, np.abs(V64))
    for isa in _isas(lib, [0, 1]):
        out = np.full((B, nh, 1, hs), np.nan, np.float32)
        lib.decode_attention(q, K, V, tk, scale, threads, out, isa=isa)
        _check(out.reshape(B, nh, hs), ref, tol,
               f"decode attention B{B} nh{nh} hs{hs} tk{tk} threads{threads} isa{isa}")


def test_decode_attention_threads_do_not_change_the_result(lib):
    q, K, V = _attention_case(1, 12, 1024, 64, 700, 4)
    outs = []
    for threads in (1, 2, 3):
        out = np.empty((1, 12, 1, 64), np.float32)
        outs.append(lib.decode_attention(q, K, V, 700, 0.125, threads, out).copy())
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_bound_decode_attention_equals_the_call(lib):
    rng = np.random.default_rng(21)
    B, nh, block, hs = 2, 3, 40, 64
    q = rng.standard_normal((B, nh, hs)).astype(np.float32)
    k, v = (rng.standard_normal((B, nh, block, hs)).astype(np.float32) for _ in range(2))
    out, bound_out = np.empty((B, nh, hs), np.float32), np.empty((B, nh, hs), np.float32)
    attend = lib.decode_attention(q, k, v, 1, 0.125, 2, bound_out, bind=True)
    for tk in (1, 17, block):
        attend(tk)
        assert np.array_equal(bound_out, lib.decode_attention(q, k, v, tk, 0.125, 2, out))


def test_decode_attention_refuses_bad_arguments(lib):
    q, K, V = _attention_case(1, 2, 8, 16, 4, 5)
    out = np.empty((1, 2, 1, 16), np.float32)
    for bad in (dict(tk=9), dict(tk=0), dict(q=q[:, :1]), dict(out=out[..., :8]), dict(V=V.astype(np.float64)),
                dict(K=K[:, :, ::2])):
        args = dict(q=q, k=K, v=V, tk=4, scale=0.25, nthreads=1, out=out)
        args.update({("k" if n == "K" else "v" if n == "V" else n): a for n, a in bad.items()})
        with pytest.raises(ValueError, match="decode_attention"):
            lib.decode_attention(**args)
