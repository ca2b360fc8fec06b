"""Version 2 of the kernel ladder in half precision (issue 15): the tensor-core platform layer the
emulator implements (conversions, mma.sync m16n8k16 fragments, ldmatrix, cp.async groups), then
attention_v2.cu and layernorm_v2.cu against float64 references on odd shapes.

Tolerances. Inputs are exact float16/bfloat16 values, so the float64 reference on the same values is
exact to float64 rounding; each kernel output is checked element by element against a first-order
bound derived from the half type's unit roundoff u = eps/2 (2^-11 float16, 2^-8 bfloat16) and the
reduction lengths (float32 sums of n terms: n 2^-24 per unit of sum |terms|, twice that for mma
sums, which GPUs truncate): kernels/attention.py attention_v2_bounds and kernels/layernorm.py
layernorm_v2_bounds state every term. The factor (1 + 8u) below covers second-order terms.

The emulator is slow: the shapes are the fewest that reach every path (one query row; Tq < Tk and
Tq > Tk with causal bottom-right alignment, so rows with no visible key; several key and query
tiles; d = 64 and 128 and padded head dims, with and without the 16-byte path; a key mask that
hides a whole batch row).
"""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from minigrad.kernels import attention as A
from minigrad.kernels import dtypes, emulate
from minigrad.kernels import layernorm as L

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the CPU emulator needs a C++ compiler")

HALF = [pytest.param(dtypes.FLOAT16, id="float16"), pytest.param(dtypes.BFLOAT16, id="bfloat16")]
KERNEL_DIR = Path(A.__file__).parent
SECOND_ORDER = 8   # bound * (1 + SECOND_ORDER * u)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def _f64(a):
    return dtypes.to_float64(np.asarray(a))


# ---------------------------------------------------------------------------------------------
# The platform layer in the emulator (kernels/emulate/cuda_emu.h), as the PTX ISA defines it.

CONVERT = r"""
__global__ void convert(const float* x, mg_half* h, mg_bf16* b, float* hf, float* bf, const mg_half* hin,
                        const mg_bf16* bin, float* hout, float* bout, unsigned* packed, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  h[i] = mg_round<mg_half>(x[i]);
  b[i] = mg_round<mg_bf16>(x[i]);
  hf[i] = mg_float(h[i]);
  bf[i] = mg_float(b[i]);
  hout[i] = mg_float(hin[i]);
  bout[i] = mg_float(bin[i]);
  packed[2 * i] = mg_pack2<mg_half>(x[i], -x[i]);
  packed[2 * i + 1] = mg_pack2<mg_bf16>(x[i], -x[i]);
}
"""


def _conversion_inputs():
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 65536.0, 2.0 ** -24,
                        2.0 ** -25, 2.0 ** -25 * 1.0000001, 1.5 * 2.0 ** -24, 2.0 ** -14, 2.0 ** -14 * (1 - 2 ** -11),
                        3.4e38, 1e-40, -1e-45, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8],
                       dtype=np.float32)
    # ties: halfway between neighbouring halves / bfloat16s, both parities
    h = np.arange(0, 0x7C00, 97, dtype=np.uint16).view(np.float16).astype(np.float32)
    ties_h = (h[:-1].astype(np.float64) + h[1:].astype(np.float64)) / 2
    b = (np.arange(0, 0x7F80, 89, dtype=np.uint32) << 16).view(np.float32)
    ties_b = ((b[:-1].astype(np.float64) + b[1:].astype(np.float64)) / 2).astype(np.float32)
    wide = (rng.standard_normal(3000) * np.exp(rng.uniform(-30, 30, 3000))).astype(np.float32)
    return np.concatenate([special, ties_h.astype(np.float32), ties_b, wide, -wide[:500]]).astype(np.float32)


def test_conversions_round_to_nearest_even_as_ptx_cvt_rn():
    x = _conversion_inputs()
    n = x.size
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    m = max(n, every.size)
    xs = np.zeros(m, np.float32)
    xs[:n] = x
    h, b = np.zeros(m, np.float16), np.zeros(m, np.uint16)
    hf, bf, hout, bout = (np.zeros(m, np.float32) for _ in range(4))
    packed = np.zeros(2 * m, np.uint32)
    emulate.launch(CONVERT, "convert", -(-m // 256), 256,
                   (xs, h, b, hf, bf, every.view(np.float16), every.copy(), hout, bout, packed, np.int32(m)),
                   check=False)
    with np.errstate(over="ignore"):
        want_h = xs.astype(np.float16)                      # NumPy rounds float32 -> float16 to nearest even
    nan = np.isnan(xs)
    assert np.array_equal(h.view(np.uint16)[~nan], want_h.view(np.uint16)[~nan])
    assert np.all(h.view(np.uint16)[nan] == 0x7FFF) and np.all(b[nan] == 0x7FFF)   # PTX's canonical NaN
    want_b = dtypes._float32_to_bf16_bits(xs, np)
    assert np.array_equal(b, want_b)
    if dtypes.ML_BFLOAT16 is not None:                      # an independent rounding: ml_dtypes
        assert np.array_equal(b[~nan], xs.astype(dtypes.ML_BFLOAT16).view(np.uint16)[~nan])
    assert np.array_equal(hf[~nan], want_h.astype(np.float32)[~nan])
    # widening every one of the 65536 bit patterns, exactly (NaN stays NaN)
    ref_h = every.view(np.float16).astype(np.float32)
    ref_b = (every.astype(np.uint32) << 16).view(np.float32)
    for got, ref in ((hout, ref_h), (bout, ref_b)):
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        assert np.array_equal(got[~np.isnan(ref)].view(np.uint32), ref[~np.isnan(ref)].view(np.uint32))
    # mg_pack2: the low element in bits 0-15
    ok = ~nan[:n]
    with np.errstate(over="ignore"):
        neg_h = (-xs[:n]).astype(np.float16)
    assert np.array_equal((packed[0:2 * n:2] & 0xFFFF)[ok], want_h.view(np.uint16)[:n][ok])
    assert np.array_equal((packed[0:2 * n:2] >> 16)[ok], neg_h.view(np.uint16)[ok])
    assert np.array_equal((packed[1:2 * n:2] >> 16)[ok], dtypes._float32_to_bf16_bits(-xs[:n], np)[ok])


MMA = r"""
// Fragments built from global memory by the PTX ISA's formulas ("Matrix fragments for
// mma.m16n8k16 with floating point type"), then one mma: D = A B + C.
template <typename X>
__global__ void mma_from_formulas(const X* A, const X* B, const float* C, float* D) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  unsigned a[4], b[2];
  for (int r = 0; r < 4; ++r) {                 // a_i: row g (+8 for i in 2,3,6,7), column 2t + i%2 (+8 for i >= 4)
    const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
    a[r] = A[row * 16 + col].bits | ((unsigned)A[row * 16 + col + 1].bits << 16);
  }
  for (int r = 0; r < 2; ++r) {                 // b_i: row 2t + i%2 (+8 for i >= 2), column g
    const int k = 2 * t + 8 * r;
    b[r] = B[k * 8 + g].bits | ((unsigned)B[(k + 1) * 8 + g].bits << 16);
  }
  float d[4];                                   // c_i: row g (+8 for i >= 2), column 2t + i%2
  for (int i = 0; i < 4; ++i) d[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  mg_mma_16816<X>(d, a, b);
  for (int i = 0; i < 4; ++i) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
}

// The same product from shared memory through ldmatrix, as attention_v2.cu loads its operands:
// A (16x16) row-major by ldmatrix.x4, B (16x8) stored k-major (16 rows of 8) by ldmatrix.x4.trans
// (two 8-column blocks: B and B2), and B stored n-major (8 rows of 16) by ldmatrix.x4.
template <typename X>
__global__ void mma_from_ldmatrix(const X* A, const X* B, const X* Bn, const float* C, float* D, float* Dn) {
  __shared__ __align__(16) X As[16 * 24];
  __shared__ __align__(16) X Bs[16 * 24];
  __shared__ __align__(16) X Bns[16 * 24];
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  for (int i = lane; i < 256; i += 32) {
    As[(i / 16) * 24 + i % 16] = A[i];
    Bs[(i / 16) * 24 + i % 16] = B[i];          // B: 16 (k) x 16 (n), two 8-column blocks
    Bns[(i / 16) * 24 + i % 16] = Bn[i];        // Bn: 16 (n) x 16 (k)
  }
  __syncwarp();
  unsigned a[4], bt[4], bn[4];
  mg_ldsm_x4(a, As + (lane & 15) * 24 + (lane >> 4) * 8);
  mg_ldsm_x4_trans(bt, Bs + ((lane & 7) + ((lane >> 3) & 1) * 8) * 24 + (lane >> 4) * 8);
  mg_ldsm_x4(bn, Bns + ((lane & 7) + (lane >> 4) * 8) * 24 + ((lane >> 3) & 1) * 8);
  for (int blk = 0; blk < 2; ++blk) {
    float d[4], dn[4];
    for (int i = 0; i < 4; ++i) d[i] = dn[i] = C[(g + 8 * (i >> 1)) * 16 + blk * 8 + 2 * t + (i & 1)];
    mg_mma_16816<X>(d, a, bt + 2 * blk);
    mg_mma_16816<X>(dn, a, bn + 2 * blk);
    for (int i = 0; i < 4; ++i) {
      D[(g + 8 * (i >> 1)) * 16 + blk * 8 + 2 * t + (i & 1)] = d[i];
      Dn[(g + 8 * (i >> 1)) * 16 + blk * 8 + 2 * t + (i & 1)] = dn[i];
    }
  }
}

// Each lane's ldmatrix registers, raw: out[lane][4] (plain) and out[32 + lane][4] (.trans).
__global__ void ldmatrix_raw(const unsigned short* M, unsigned* out) {
  __shared__ __align__(16) unsigned short S[4 * 8 * 8];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) S[i] = M[i];
  __syncwarp();
  unsigned r[4];
  mg_ldsm_x4(r, S + lane * 8);                  // lane l gives row l%8 of matrix l/8
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
  mg_ldsm_x4_trans(r, S + lane * 8);
  for (int i = 0; i < 4; ++i) out[128 + lane * 4 + i] = r[i];
}
"""


@pytest.mark.parametrize("dtype", HALF)
def test_mma_fragment_layout_matches_a_plain_matrix_product(dtype):
    ct = "mg_half" if dtypes.kind(dtype) == "half" else "mg_bf16"
    rng = np.random.default_rng(1)
    # small integers: every product and sum is exact, so D must equal A B + C element by element
    A = dtypes.from_float(rng.integers(-8, 9, (16, 16)).astype(np.float32), dtype)
    B = dtypes.from_float(rng.integers(-8, 9, (16, 8)).astype(np.float32), dtype)
    C = rng.integers(-50, 51, (16, 8)).astype(np.float32)
    D = np.zeros((16, 8), np.float32)
    emulate.launch(MMA, f"mma_from_formulas<{ct}>", 1, 32, (A, B, C, D), check=True)
    assert np.array_equal(D, _f64(A) @ _f64(B) + C)
    # random values: the product rounded once to float32
    A = dtypes.from_float(rng.standard_normal((16, 16), dtype=np.float32), dtype)
    B = dtypes.from_float(rng.standard_normal((16, 8), dtype=np.float32), dtype)
    emulate.launch(MMA, f"mma_from_formulas<{ct}>", 1, 32, (A, B, C, D), check=True)
    ref = _f64(A) @ _f64(B) + C
    assert np.all(np.abs(D - ref) <= 2.0 ** -24 * np.abs(ref) + 2.0 ** -48 * (np.abs(_f64(A)) @ np.abs(_f64(B))))


@pytest.mark.parametrize("dtype", HALF)
def test_ldmatrix_fragments_feed_mma_as_the_kernels_use_them(dtype):
    ct = "mg_half" if dtypes.kind(dtype) == "half" else "mg_bf16"
    rng = np.random.default_rng(2)
    A = dtypes.from_float(rng.integers(-8, 9, (16, 16)).astype(np.float32), dtype)
    B = dtypes.from_float(rng.integers(-8, 9, (16, 16)).astype(np.float32), dtype)   # k x n
    C = rng.integers(-50, 51, (16, 16)).astype(np.float32)
    Bn = np.ascontiguousarray(B.T)                                                    # n x k
    D, Dn = np.zeros((16, 16), np.float32), np.zeros((16, 16), np.float32)
    emulate.launch(MMA, f"mma_from_ldmatrix<{ct}>", 1, 32, (A, B, Bn, C, D, Dn), check=True)
    ref = _f64(A) @ _f64(B) + C
    assert np.array_equal(D, ref) and np.array_equal(Dn, ref)


def test_ldmatrix_registers_follow_the_ptx_layout():
    M = np.arange(256, dtype=np.uint16)                # matrix i, row r, column c holds 64 i + 8 r + c
    out = np.zeros(256, np.uint32)
    emulate.launch(MMA, "ldmatrix_raw", 1, 32, (M, out), check=True)
    plain, trans = out[:128].reshape(32, 4), out[128:].reshape(32, 4)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(4):
            # lane l holds row l/4, columns 2(l%4) and 2(l%4)+1; .trans: rows 2(l%4), 2(l%4)+1 of column l/4
            assert plain[lane, i] == (64 * i + 8 * g + 2 * t) | (64 * i + 8 * g + 2 * t + 1) << 16
            assert trans[lane, i] == (64 * i + 8 * (2 * t) + g) | (64 * i + 8 * (2 * t + 1) + g) << 16


CP_ASYNC = r"""
// Thread t copies 16 bytes of src into row t of S, in two groups; reads before and after waits.
__global__ void groups(const float* src, float* out, int src_bytes) {
  __shared__ __align__(16) float S[2][32][4];
  const int t = threadIdx.x;
  mg_cp_async_16(&S[0][t][0], src + 4 * t, 16);
  mg_cp_async_commit();
  mg_cp_async_16(&S[1][t][0], src + 128 + 4 * t, src_bytes);
  mg_cp_async_commit();
  out[t] = S[0][t][0];                 // in flight: the emulator's poison
  mg_cp_async_wait<1>();
  out[32 + t] = S[0][t][0];            // the older group is complete
  out[64 + t] = S[1][t][0];            // the newer one is not
  mg_cp_async_wait<0>();
  for (int j = 0; j < 4; ++j) out[96 + 4 * t + j] = S[1][t][j];
}

// Thread t reads the row thread t+1 copied: needs the wait and a barrier.
__global__ void neighbour(const float* src, float* out, int barrier) {
  __shared__ __align__(16) float S[64][4];
  const int t = threadIdx.x;
  mg_cp_async_16(&S[t][0], src + 4 * t, 16);
  mg_cp_async_commit();
  mg_cp_async_wait<0>();
  if (barrier) __syncthreads();
  out[t] = S[(t + 1) % blockDim.x][0];
}

__global__ void misaligned(const float* src, float* out) {
  __shared__ __align__(16) float S[8];
  mg_cp_async_16(&S[1], src, 16);
  mg_cp_async_commit();
  mg_cp_async_wait<0>();
  out[0] = S[1];
}
"""


def test_cp_async_commit_and_wait_groups():
    src = np.arange(256, dtype=np.float32) + 1
    out = np.zeros(32 * 7, np.float32)
    emulate.launch(CP_ASYNC, "groups", 1, 32, (src, out, np.int32(8)), check=False)
    assert np.all(np.isnan(out[:32]))                       # read before the wait: 0xff bytes
    assert np.array_equal(out[32:64], src[0:128:4])
    assert np.all(np.isnan(out[64:96]))
    rows = out[96:].reshape(32, 4)                          # 8 bytes copied, 8 zero-filled
    assert np.array_equal(rows[:, :2], src[128:].reshape(32, 4)[:, :2]) and np.all(rows[:, 2:] == 0)


def test_cp_async_misuse_is_reported():
    src = np.arange(256, dtype=np.float32)
    out = np.zeros(64, np.float32)
    emulate.launch(CP_ASYNC, "neighbour", 1, 64, (src, out, np.int32(1)), check=True)
    assert np.array_equal(out, src[0:256:4][np.r_[1:64, 0]])
    with pytest.raises(emulate.RaceError, match="read-after-write hazard"):
        emulate.launch(CP_ASYNC, "neighbour", 1, 64, (src, out, np.int32(0)), check=True, schedule="reverse")
    with pytest.raises(emulate.OutOfBoundsError, match="not 16-byte aligned"):
        emulate.launch(CP_ASYNC, "misaligned", 1, 32, (src, out), check=True)


def test_a_lane_skipping_mma_fails_the_launch():
    src = MMA.replace("  mg_mma_16816<X>(d, a, b);\n  for (int i = 0; i < 4; ++i) D[",
                      "  if (lane != 5) mg_mma_16816<X>(d, a, b);\n  for (int i = 0; i < 4; ++i) D[")
    A, B = np.ones((16, 16), np.float16), np.ones((16, 8), np.float16)
    C, D = np.zeros((16, 8), np.float32), np.zeros((16, 8), np.float32)
    with pytest.raises(emulate.ShuffleError, match="has exited|mma"):
        emulate.launch(src, "mma_from_formulas<mg_half>", 1, 32, (A, B, C, D), check=False)


def test_both_v2_files_take_the_platform_layer_from_one_header_and_carry_no_ptx_of_their_own():
    header = (KERNEL_DIR / "ptx_platform.cuh").read_text()
    assert "mma.sync.aligned.m16n8k16" in header and "#ifndef MINIGRAD_EMULATE" in header
    for name in ("attention_v2.cu", "layernorm_v2.cu"):
        text = (KERNEL_DIR / name).read_text()
        assert re.search(r'^#include "ptx_platform.cuh"', text, re.MULTILINE), name
        assert "asm(" not in text and "asm volatile(" not in text, f"{name} has PTX outside the platform layer"


def test_the_spliced_text_keeps_every_line_where_errors_name_it():
    """What NVRTC and g++ compile: the header under `#line 1 "<header>"`, then the .cu's own lines
    resuming at their own numbers; a second include of the same header adds nothing."""
    from minigrad.kernels import includes

    path = KERNEL_DIR / "layernorm_v2.cu"
    source = path.read_text()
    doubled = source.replace('#include "ptx_platform.cuh"', '#include "ptx_platform.cuh"\n#include "ptx_platform.cuh"', 1)
    for text in (source, doubled):
        out = includes.expand(text, path).splitlines()
        header = (KERNEL_DIR / "ptx_platform.cuh").read_text().splitlines()
        start = out.index(f'#line 1 "{KERNEL_DIR / "ptx_platform.cuh"}"')
        assert out[start + 1:start + 1 + len(header)] == header
        m = re.fullmatch(r'#line (\d+) "(.*)"', out[start + 1 + len(header)])
        assert m and m.group(2) == str(path)
        own = text.splitlines()
        rest = ["" if ln.startswith('#include "ptx_platform.cuh"') else ln for ln in own[int(m.group(1)) - 1:]]
        assert out[start + 2 + len(header):] == rest          # a repeated include: an empty line
        assert out[:start] == own[:start]
        assert "#include" not in "\n".join(out[start:]).replace("#include <", "")


def test_the_emulator_cache_key_follows_the_header(tmp_path):
    """A copy of a v2 file finds the header beside it first, else kernels/'s: changing the header it
    uses changes the library's cache key (the key is the spliced text), as does the .cu's text."""
    from minigrad.kernels.emulate import build

    cu = tmp_path / "layernorm_v2.cu"
    cu.write_text((KERNEL_DIR / "layernorm_v2.cu").read_text())
    names = ["layernorm_v2_forward<float,float,4>"]
    shipped = build.library_path(cu, names)                  # the header from kernels/
    beside = tmp_path / "ptx_platform.cuh"
    beside.write_text((KERNEL_DIR / "ptx_platform.cuh").read_text())
    copied = build.library_path(cu, names)
    beside.write_text((KERNEL_DIR / "ptx_platform.cuh").read_text() + "// changed\n")
    assert build.library_path(cu, names) not in (copied, shipped)
    beside.unlink()
    assert build.library_path(cu, names) == shipped
    cu.write_text(cu.read_text() + "// changed\n")
    assert build.library_path(cu, names) != shipped


# ---------------------------------------------------------------------------------------------
# Attention version 2 against the float64 reference.

ATTN_CASES = [   # (B, H, Tq, Tk, d, causal, masked)
    (1, 1, 1, 7, 64, False, False),       # one query row
    (1, 1, 7, 200, 128, True, True),      # Tq < Tk: causal bottom-right, masked, several key tiles
    (1, 1, 200, 65, 64, True, False),     # Tq > Tk: rows 0..134 see no key; several query tiles
    (1, 2, 65, 65, 128, False, True),     # T = 65 both ways, masked
    (2, 1, 7, 7, 100, True, True),        # d = 100: padded to 128, 2-byte path; batch 1 fully masked
    (1, 1, 65, 7, 40, False, False),      # d = 40: padded to 64, 16-byte path
]


def _attn_inputs(case, dtype, seed=0):
    i = A.backward_inputs_v2(np, np.random.default_rng(seed), case, dtype)
    if case[0] == 2 and case[6]:
        i["key_mask"][1] = False                          # every row of batch 1 sees no key
        o, lse = A.attention_forward_ref(*(_f64(i[n]) for n in ("q", "k", "v")), i["key_mask"], i["is_causal"])
        i["o"], i["lse"] = dtypes.from_float(np.nan_to_num(o).astype(np.float32), dtype), lse.astype(np.float32)
    return i


def _within(out, ref, bound, u, what):
    err = np.abs(_f64(out) - ref)
    limit = bound * (1 + SECOND_ORDER * u)
    worst = np.unravel_index(np.argmax(err / np.maximum(limit, 1e-300)), err.shape)
    assert np.all(err <= limit), (f"{what}: |err| {err[worst]:.3e} > bound {limit[worst]:.3e} at {worst} "
                                  f"(max ratio {(err / np.maximum(limit, 1e-300)).max():.2f})")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", ATTN_CASES, ids=A.describe)
def test_attention_v2_matches_float64_within_derived_bounds(case, dtype):
    i = _attn_inputs(case, dtype)
    i64 = {n: (_f64(v) if isinstance(v, np.ndarray) else v) for n, v in i.items()}
    u = dtypes.eps(dtype) / 2
    q, k, v, km, causal = i["q"], i["k"], i["v"], i["key_mask"], i["is_causal"]

    o, lse = A.attention_forward(q, k, v, km, causal)
    assert o.dtype == q.dtype and lse.dtype == np.float32
    o_ref, lse_ref = A.attention_forward_ref(i64["q"], i64["k"], i64["v"], km, causal)
    empty = ~np.isfinite(lse_ref)                          # rows with no visible key
    bounds = A.attention_v2_bounds(i64, dtype)
    _within(o, np.where(empty[..., None], 0, o_ref), bounds["o"], u, "o")
    assert np.all(_f64(o)[empty] == 0) and np.all(np.isneginf(lse[empty]))
    assert np.all(np.abs(lse[~empty] - lse_ref[~empty]) <= bounds["lse"][~empty])
    assert empty.any() == (case[2] > case[3] and causal or case[0] == 2)

    dq, dk, dv = A.attention_backward(q, k, v, i["o"], i["lse"], i["do"], km, causal)
    refs = dict(zip(("dq", "dk", "dv"), A.attention_backward_ref(i64["q"], i64["k"], i64["v"], i64["o"],
                                                                 i64["lse"], i64["do"], km, causal)))
    bounds = A.attention_v2_bounds(i64, dtype, backward=True)
    for name, got in zip(("dq", "dk", "dv"), (dq, dk, dv)):
        assert got.dtype == q.dtype
        _within(got, refs[name], bounds[name], u, name)
    assert np.all(_f64(dq)[empty] == 0)                   # no visible key: zero gradient


@pytest.mark.parametrize("dtype", HALF)
def test_attention_v2_repeats_bit_for_bit_under_every_schedule(dtype):
    case = (1, 2, 65, 200, 64, True, True)
    i = _attn_inputs(case, dtype, seed=3)
    args = (i["q"], i["k"], i["v"])

    def run():
        o, lse = A.attention_forward(*args, i["key_mask"], True)
        grads = A.attention_backward(*args, o, lse, i["do"], i["key_mask"], True)
        return [_bits(a) for a in (o, lse, *grads)]
    first = run()
    assert run() == first
    for schedule in ("reverse", "random:5"):                # blocks and threads in other orders
        with emulate.settings(schedule=schedule):
            assert run() == first, schedule


def test_uint16_bits_are_bfloat16_and_give_the_same_bits():
    if dtypes.ML_BFLOAT16 is None:
        pytest.skip("ml_dtypes is not installed: bfloat16 arrays exist only as uint16 bits here")
    i = A.make_inputs_v2(np, np.random.default_rng(4), (1, 1, 9, 20, 64, True, False), dtypes.ML_BFLOAT16)
    o1, l1 = A.attention_forward(i["q"], i["k"], i["v"], is_causal=True)
    o2, l2 = A.attention_forward(*(i[n].view(np.uint16) for n in ("q", "k", "v")), is_causal=True)
    assert o2.dtype == np.uint16 and _bits(o1) == _bits(o2) and _bits(l1) == _bits(l2)


def test_attention_versions_follow_the_dtype(monkeypatch):
    from minigrad.kernels import runtime

    launched = []
    monkeypatch.setattr(runtime.Program, "launch", lambda self, name, *a, **k: launched.append(name))
    q = np.zeros((1, 1, 4, 64), np.float16)
    A.attention_forward(q, q, q)
    assert launched[-1].startswith("attention_v2_fwd<mg_half, 64")
    A.attention_forward(q[..., :16].astype(np.float32), q[..., :16].astype(np.float32), q[..., :16].astype(np.float32))
    assert launched[-1].startswith("attention_fwd<float")
    with pytest.raises(TypeError, match="version 1 takes float32 and float64, got float16"):
        A.attention_forward(q, q, q, version=1)
    with pytest.raises(TypeError, match="version 2 takes float16 and bfloat16, got float32"):
        A.attention_forward(*(q.astype(np.float32),) * 3, version=2)
    with pytest.raises(TypeError, match="lse has dtype float16 but version 2's lse is float32"):
        A.attention_backward(q, q, q, q, np.zeros((1, 1, 4), np.float16), q)
    with pytest.raises(ValueError, match="head dims 1..128, got d=130"):
        A.attention_forward(*(np.zeros((1, 1, 4, 130), np.float16),) * 3)
    assert len(launched) == 2


# ---------------------------------------------------------------------------------------------
# Layernorm version 2 against the float64 reference.

LN_CASES = [   # (N, C, affine, params)
    (1, 1, True, "x"),            # one element: dx is exactly 0
    (13, 5, False, "x"),          # 2-byte path, no affine; 13 rows over 3 blocks of 4 row groups
    (37, 768, True, "x"),         # a warp per row, 4 rows per block, 16-byte path, several rows per group
    (6, 1000, True, "float32"),   # float32 parameters with half activations
    (3, 2051, True, "x"),         # a block of 96 threads per row, odd width
    (5, 8192, False, "x"),        # the widest row, 256 threads
]


@pytest.mark.parametrize("dtype", HALF + [pytest.param(np.dtype(np.float32), id="float32")])
@pytest.mark.parametrize("case", LN_CASES, ids=L._v2_describe)
def test_layernorm_v2_matches_float64_within_derived_bounds(case, dtype):
    i = L._v2_bwd_inputs(np, np.random.default_rng(0), case, dtype)
    i64 = {n: (_f64(v) if isinstance(v, np.ndarray) else v) for n, v in i.items()}
    u = dtypes.eps(dtype) / 2
    y, mean, rstd = L.layernorm_forward(i["x"], i["weight"], i["bias"], i["eps"], version=2)
    assert y.dtype == i["x"].dtype and mean.dtype == rstd.dtype == np.float32
    ref = dict(zip(("y", "mean", "rstd"), L.layernorm_forward_ref(i64["x"], i64["weight"], i64["bias"], i["eps"])))
    bounds = L.layernorm_v2_bounds(i64, dtype)
    for name, got in (("y", y), ("mean", mean), ("rstd", rstd)):
        _within(got, ref[name], bounds[name], u, name)

    dx, dw, db = L.layernorm_backward(i["dy"], i["x"], i["weight"], i["mean"], i["rstd"], version=2)
    pdt = i["weight"].dtype if i["weight"] is not None else i["x"].dtype
    assert dx.dtype == i["x"].dtype and db.dtype == pdt and (dw is None) == (i["weight"] is None)
    ref = dict(zip(("dx", "dweight", "dbias"), L.layernorm_backward_ref(i64["dy"], i64["x"], i64["weight"],
                                                                         i64["mean"], i64["rstd"])))
    bounds = L.layernorm_v2_bounds(i64, dtype, backward=True)
    for name, got in (("dx", dx), ("dweight", dw), ("dbias", db)):
        if got is not None:
            _within(got, ref[name], bounds[name], u, name)


@pytest.mark.parametrize("dtype", HALF)
def test_layernorm_v2_repeats_bit_for_bit_under_every_schedule(dtype):
    i = L._v2_bwd_inputs(np, np.random.default_rng(5), (29, 300, True, "x"), dtype)

    def run():
        outs = L.layernorm_forward(i["x"], i["weight"], i["bias"], 1e-5) + \
            L.layernorm_backward(i["dy"], i["x"], i["weight"], i["mean"], i["rstd"])
        return [_bits(a) for a in outs]
    first = run()
    assert run() == first
    for schedule in ("reverse", "random:7"):   # another block finishes last and adds the partials
        with emulate.settings(schedule=schedule):
            assert run() == first, schedule


def test_layernorm_v2_leaves_its_counter_at_zero_for_the_next_launch():
    i = L._v2_bwd_inputs(np, np.random.default_rng(6), (40, 64, True, "x"), dtypes.FLOAT16)
    N, C = i["x"].shape
    grid, block, R = L._v2_config(np, N, C, 2)
    counter = np.zeros(1, np.uint32)
    results = []
    for _ in range(2):
        dx = np.empty_like(i["x"])
        dw, db = np.zeros(C, np.float16), np.zeros(C, np.float16)
        partials = np.full((grid[0], 2, C), np.nan, np.float32)
        L.PROGRAM_V2.launch("layernorm_v2_backward<mg_half, mg_half, 4>", grid, block,
                            (i["dy"], i["x"], i["weight"], i["mean"], i["rstd"], dx, partials, counter, dw, db,
                             np.int32(N), np.int32(C)), shared_mem=R * 2 * C * 4)
        assert counter[0] == 0
        results.append(_bits(dw) + _bits(db))
    assert grid[0] > 1 and results[0] == results[1]
    ref = L.layernorm_backward_ref(*(_f64(i[n]) for n in ("dy", "x", "weight", "mean", "rstd")))
    assert np.abs(_f64(db) - ref[2]).max() <= 2 * dtypes.eps(np.float16) * np.abs(ref[2]).max()


def test_layernorm_versions_follow_the_dtype_and_refuse_bad_parameters():
    x = np.zeros((4, 8), np.float16)
    with pytest.raises(TypeError, match="weight must have x's dtype \\(float16\\) or float32, got float64"):
        L.layernorm_forward(x, np.ones(8), None, 1e-5)
    with pytest.raises(TypeError, match="weight and bias must have one dtype"):
        L.layernorm_forward(x, np.ones(8, np.float16), np.ones(8, np.float32), 1e-5)
    with pytest.raises(TypeError, match="version 2 takes float16, bfloat16 or float32 x, got float64"):
        L.layernorm_forward(x.astype(np.float64), None, None, 1e-5, version=2)
    with pytest.raises(TypeError, match="mean must have dtype float32"):
        L.layernorm_backward(x, x, None, np.zeros(4, np.float16), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="at most 8192 elements"):
        L.layernorm_forward(np.zeros((1, 8193), np.float16), None, None, 1e-5)
    y, mean, _ = L.layernorm_forward(x.astype(np.float32), None, None, 1e-5)       # float32: version 1
    assert mean.dtype == np.float32 and y.dtype == np.float32
    _, mean, _ = L.layernorm_forward(np.ones((2, 8), np.float64), None, None, 1e-5)
    assert mean.dtype == np.float64


# ---------------------------------------------------------------------------------------------
# The workbench sees the ladder.

def test_registry_check_and_validate_cover_every_version_and_dtype():
    from minigrad.kernels import registry
    from minigrad.kernels.check import occupancy
    from minigrad.kernels.validate import validate

    versions = {k.name: (k.version, tuple(dtypes.name(d) for d in k.op.dtypes)) for k in registry.KERNELS}
    assert versions["attention_forward_v2"] == (2, ("float16", "bfloat16"))
    assert versions["layernorm_backward_v2"] == (2, ("float32", "float16", "bfloat16"))
    assert versions["attention_forward"] == (1, ("float32", "float64"))
    assert {"attention_v2.cu", "layernorm_v2.cu"} <= set(registry.cu_files())
    # 255 registers: 8192 per warp, so 8 warps (2 blocks of 128 threads) of the SM's 64
    assert occupancy("sm_90", 255, 0, 128, 0) == (2, 0.125)
    assert occupancy("sm_80", 32, 0, 256, 100 * 1024) == (1, 0.125)      # shared memory bound
    assert occupancy("sm_80", 32, 0, 128, 200 * 1024) == (0, 0.0)        # does not fit
    results = validate(["layernorm_forward_v2"], dtypes=[dtypes.BFLOAT16])
    assert results and all(r.ok and r.dtype == "bfloat16" for r in results)


def test_bench_harness_runs_version_2_on_the_emulator():
    from minigrad.kernels import attention_bench as AB
    from minigrad.kernels import bench as B
    from test_kernels_bench import fake_cupy

    cp = fake_cupy()
    info = B.device_info(cp)
    assert info["peak_tensor16"] == pytest.approx(4096 * 132 * 1.98e9)
    lines = []
    rows = AB.run(cp, [(1, 1, 9, 20, 64, True, True)], dtypes.BFLOAT16, warmup=1, repeat=2, out=lines.append,
                  info=info, gemm=1e15)
    assert [(r["version"], r["dtype"], r["pass_"]) for r in rows] == [(2, "bfloat16", "fwd"), (2, "bfloat16", "fwd+bwd")]
    assert all(r["check_ok"] and r["pct_gemm"] > 0 and r["unfused_s"] > 0 for r in rows)
    rows = B.run(cp, names=["layernorm_backward_v2"], dtypes=(dtypes.BFLOAT16,), warmup=1, repeat=2,
                 out=lines.append, info=info, copy_bw=1e12, cases=[(6, 40, True)])
    assert len(rows) == 1 and rows[0]["check_ok"] and rows[0]["dtype"] == "bfloat16" and rows[0]["version"] == 2


# ---------------------------------------------------------------------------------------------
# The sanitizer sees the pipeline's hazards: bugs planted in copies of the shipped files, run
# through the real launchers.

def _planted(name, old, new):
    text = (KERNEL_DIR / name).read_text()
    assert text.count(old) == 1, f"{name}: the text to replace is not there exactly once"
    return text.replace(old, new)


def test_a_stage_refilled_before_every_warp_is_done_is_a_race():
    src = _planted("attention_v2.cu", "    __syncthreads();  // this stage is refilled by the next iteration's prefetch\n",
                   "")
    i = A.make_inputs_v2(np, np.random.default_rng(8), (1, 1, 40, 200, 64, False, False), dtypes.FLOAT16)
    with emulate.substitute("attention_v2.cu", src), emulate.settings(check=True), \
            pytest.raises(emulate.RaceError, match="write-after-read hazard .* attention_v2.cu:"):
        A.attention_forward(i["q"], i["k"], i["v"])


def test_a_tile_used_before_its_copies_complete_reads_the_in_flight_poison():
    text = (KERNEL_DIR / "attention_v2.cu").read_text()
    fwd = text.index("attention_v2_fwd(")
    first_wait = text.index("      mg_cp_async_wait<1>();\n", fwd)
    src = text[:first_wait] + text[first_wait:].replace("      mg_cp_async_wait<1>();\n", "", 1)
    i = A.make_inputs_v2(np, np.random.default_rng(9), (1, 1, 16, 200, 64, False, False), dtypes.FLOAT16)
    with emulate.substitute("attention_v2.cu", src):
        o, _ = A.attention_forward(i["q"], i["k"], i["v"])
    assert np.isnan(_f64(o)).any()


def test_summing_the_row_groups_without_a_barrier_is_a_race():
    src = _planted("layernorm_v2.cu", "  // This block's column sums: its R row groups in fixed order, into partials[blockIdx.x].\n"
                   "  __syncthreads();\n", "")
    i = L._v2_bwd_inputs(np, np.random.default_rng(10), (12, 64, True, "x"), dtypes.FLOAT16)
    with emulate.substitute("layernorm_v2.cu", src), emulate.settings(check=True), \
            pytest.raises(emulate.RaceError, match="read-after-write hazard .* layernorm_v2.cu:"):
        L.layernorm_backward(i["dy"], i["x"], i["weight"], i["mean"], i["rstd"])
