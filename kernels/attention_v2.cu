// attention_v2.cu: fused softmax attention on tensor cores (version 2 of kernels/attention.cu's
// ladder), bf16 or fp16 operands with float32 accumulation, FlashAttention-2's structure. sm_80+.
//
// Semantics: those of version 1 (kernels/attention.cu, and the reference in kernels/attention.py):
//   q (B, H, Tq, d), k and v (B, H, Tk, d), o (B, H, Tq, d) in X (mg_bf16 or mg_half), lse (B, H, Tq)
//   float32; query i may attend key j iff key_ok[b, j] (key padding mask; has_mask == 0: all keys)
//   and, when causal, j <= i + (Tk - Tq) (bottom-right aligned). A row with no attendable key gets
//   o = 0, lse = -inf and zero gradients. Any Tq, Tk >= 1; any d <= 128: the head dim is padded to
//   D = 64 (d <= 64) or 128 with zero columns in shared memory, so d = 64 and 128 run at full
//   speed and others compute on the padding. 16-byte global accesses (cp.async, vector stores) when
//   d % 8 == 0 and the arrays are 16-byte aligned; 2-byte accesses otherwise.
//
// Algorithm (FlashAttention-2, Dao 2023):
//   * Work is split over queries: a warp owns 16 query rows (one m16 tile) for the whole key loop,
//     a block NW warps (BQ = 16 NW rows). S = Q K^T and P live in registers as mma accumulators
//     (the C fragment layout: lane (g = lane/4, t = lane%4) holds rows g, g+8 at columns 2t, 2t+1
//     of every 8-column block), and the C layout of two 8-key blocks of P is the A layout of one
//     16-key k-step, so P V needs no shared memory: P is rounded to X in registers (mg_pack2).
//   * Online softmax in base 2 (s2 = s scale log2 e, exp2f): running row max m and per-lane partial
//     sums l (summed over the quad at the end), acc *= exp2(m_old - m_new) per tile.
//   * K and V tiles (BK keys) stream through shared memory double-buffered: while a tile is used,
//     cp.async brings the next into the other stage (commit_group, wait_group 1); one
//     __syncthreads after the wait, one before a stage is refilled. Fragments come from shared
//     memory by ldmatrix (x4: 4 8x8 matrices per instruction; .trans for the operands stored
//     k-major: V in P V, K in dS K, dO and Q in the dK/dV products). Shared rows are padded to
//     D + 8 elements (16 bytes), so the 8 row addresses of an ldmatrix hit 8 different bank groups.
//   * Outputs are rounded to X and staged through the warp's own rows of a finished shared tile,
//     then written with 16-byte stores.
//   * Backward, deterministic and atomic-free: P is recomputed from the saved lse. Two kernels,
//     one over query tiles (dQ; it also writes Drow = rowsum(dO o O)) and one over key tiles
//     (dK, dV; it reads Drow), instead of FlashAttention-2's single key-parallel kernel with
//     float atomics for dQ: every output element is written by one thread after a sum in a fixed
//     order, so results are bit-identical run to run, at the price of computing S and dP twice.
//   Causal masking skips tiles no row can see (key loop bound; query loop start), and a warp skips
//   the mma work of a tile none of its rows sees.
//
// Template parameters: X (mg_bf16, mg_half), D (64, 128), then the tile: BK keys per tile and NW
// warps (fwd, dq), BQ queries per tile and NW warps (dkdv). The shipped instantiations are
// V2_TILES in kernels/attention.py. Launch configuration (dynamic shared memory, opt-in above 48 KiB):
//   attention_v2_fwd<X,D,BK,NW>      grid B*H*ceil(Tq/BQ), block 32 NW, BQ = 16 NW;
//       shared (BQ + 4 BK)(D + 8) X: Q tile, 2 stages of K and V.
//       Reads q, k, v (each tile once per block), key_mask; writes o, lse.
//   attention_v2_bwd_dq<X,D,BK,NW>   grid B*H*ceil(Tq/BQ), block 32 NW;
//       shared (2 BQ + 4 BK)(D + 8) X: Q, dO tiles, 2 stages of K and V.
//       Reads q, k, v, o, lse, dout, key_mask; writes dq = scale dS K and drow (B, H, Tq) float32.
//   attention_v2_bwd_dkdv<X,D,BQ,NW> grid B*H*ceil(Tk/BK), block 32 NW, BK = 16 NW keys per block
//       (a warp owns 16 keys); shared (2 BK + 4 BQ)(D + 8) X + 4 BQ floats: K, V tiles, 2 stages of
//       Q, dO, lse, Drow. Launched after attention_v2_bwd_dq (it reads Drow).
//       Reads q, k, v, lse, drow, dout, key_mask; writes dk = scale dS^T Q, dv = P^T dO.
// The only PTX is the platform layer, kernels/ptx_platform.cuh.

#include "ptx_platform.cuh"   // the half-precision platform layer: bf16/fp16 storage, cvt, mma, ldmatrix, cp.async

// ---------------------------------------------------------------------------------------------
// Shared pieces.
#define A2_LOG2E 1.4426950408889634f
#define A2_LN2 0.6931471805599453f

__device__ __forceinline__ float a2_neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ bool a2_aligned16(const void* p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}
__device__ __forceinline__ float a2_quad_sum(float x) {  // over the 4 lanes holding one row
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float a2_quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// Rows [row0, row0 + ROWS) of an (nrows, d) matrix into a (ROWS, D + 8) shared tile, zero-filled
// past nrows and d. vec: 16-byte cp.async chunks (d % 8 == 0, 16-byte aligned matrix; completed by
// the caller's wait_group); otherwise 2-byte loads and stores, done when this returns.
template <typename X, int D, int ROWS, int NT>
__device__ __forceinline__ void a2_load_tile(X* __restrict__ dst, const X* __restrict__ src, int row0, int nrows,
                                             int d, bool vec) {
  constexpr int DS = D + 8, CH = D / 8;
  if (vec) {
    for (int i = threadIdx.x; i < ROWS * CH; i += NT) {
      const int r = i / CH, c = (i % CH) * 8;
      const bool in = row0 + r < nrows && c < d;
      mg_cp_async_16(dst + r * DS + c, in ? src + (long long)(row0 + r) * d + c : src, in ? 16 : 0);
    }
  } else {
    for (int i = threadIdx.x; i < ROWS * D; i += NT) {
      const int r = i / D, c = i % D;
      X x;
      x.bits = 0;
      if (row0 + r < nrows && c < d) x = src[(long long)(row0 + r) * d + c];
      dst[r * DS + c] = x;
    }
  }
}

// A warp's 16 x D float accumulator tile (mma C layout, acc[n][i]: rows g, g+8 at columns 8n + 2t,
// 8n + 2t + 1) times `mul`, rounded to X and stored to rows [row0, row0 + 16) of an (nrows, d)
// matrix, staged through `stage` (16 rows of D + 8, this warp's own) for 16-byte stores.
template <typename X, int D>
__device__ __forceinline__ void a2_store_rows(X* __restrict__ dst, X* __restrict__ stage, float (*acc)[4],
                                              float mul_lo, float mul_hi, int row0, int nrows, int d) {
  constexpr int DS = D + 8, ND = D / 8;
  const int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int n = 0; n < ND; ++n) {
    *reinterpret_cast<unsigned*>(stage + g * DS + n * 8 + 2 * t4) = mg_pack2<X>(acc[n][0] * mul_lo, acc[n][1] * mul_lo);
    *reinterpret_cast<unsigned*>(stage + (g + 8) * DS + n * 8 + 2 * t4) =
        mg_pack2<X>(acc[n][2] * mul_hi, acc[n][3] * mul_hi);
  }
  __syncwarp();
  if (d % 8 == 0 && a2_aligned16(dst)) {
    for (int i = lane; i < 16 * ND; i += 32) {
      const int r = i / ND, c = (i % ND) * 8;
      if (row0 + r < nrows && c < d)
        *reinterpret_cast<uint4*>(dst + (long long)(row0 + r) * d + c) = *reinterpret_cast<const uint4*>(stage + r * DS + c);
    }
  } else {
    for (int i = lane; i < 16 * D; i += 32) {
      const int r = i / D, c = i % D;
      if (row0 + r < nrows && c < d) dst[(long long)(row0 + r) * d + c] = stage[r * DS + c];
    }
  }
}

// The A fragments (16 rows x 16 columns, row-major tile) of a warp's rows, columns kk*16.. from a
// (rows, D + 8) shared tile: matrices (rows 0-7 | 8-15) x (columns 0-7 | 8-15) in a0a1, a2a3, a4a5, a6a7 order.
template <int D, typename X>
__device__ __forceinline__ void a2_ldsm_a(unsigned* r, const X* tile, int row0, int kk) {
  const int lane = threadIdx.x & 31;
  mg_ldsm_x4(r, tile + (row0 + (lane & 15)) * (D + 8) + kk * 16 + (lane >> 4) * 8);
}
// B fragments of two 8-column blocks (n0..n0+7, n0+8..n0+15) for k = kk*16.., from a tile stored
// (n, k) row-major (keys x head dim for S = Q K^T): b for block n0 in r[0..1], for n0+8 in r[2..3].
template <int D, typename X>
__device__ __forceinline__ void a2_ldsm_b(unsigned* r, const X* tile, int n0, int kk) {
  const int lane = threadIdx.x & 31;
  mg_ldsm_x4(r, tile + (n0 + (lane & 7) + (lane >> 4) * 8) * (D + 8) + kk * 16 + ((lane >> 3) & 1) * 8);
}
// B fragments from a tile stored (k, n) row-major (keys x head dim for O = P V): transposed loads.
template <int D, typename X>
__device__ __forceinline__ void a2_ldsm_bt(unsigned* r, const X* tile, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  mg_ldsm_x4_trans(r, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * (D + 8) + n0 + (lane >> 4) * 8);
}
// The A fragment (16 x 16, k = 16 columns kb*16..) made of two 8-column accumulator blocks.
template <typename X>
__device__ __forceinline__ void a2_pack_a(unsigned* a, const float* lo, const float* hi) {
  a[0] = mg_pack2<X>(lo[0], lo[1]);
  a[1] = mg_pack2<X>(lo[2], lo[3]);
  a[2] = mg_pack2<X>(hi[0], hi[1]);
  a[3] = mg_pack2<X>(hi[2], hi[3]);
}

// ---------------------------------------------------------------------------------------------
template <typename X, int D, int BK, int NW>
__global__ void __launch_bounds__(NW * 32)
attention_v2_fwd(const X* __restrict__ q, const X* __restrict__ k, const X* __restrict__ v,
                 const bool* __restrict__ key_mask, X* __restrict__ o, float* __restrict__ lse, int H, int Tq,
                 int Tk, int d, float scale, int causal, int has_mask) {
  constexpr int BQ = 16 * NW, NT = 32 * NW, DS = D + 8, NB = BK / 8, ND = D / 8;
  static_assert(D % 16 == 0 && BK % 16 == 0, "tiles are whole 16 x 16 fragments");
  extern __shared__ __align__(16) unsigned char a2_smem[];
  X* Qs = reinterpret_cast<X*>(a2_smem);  // [BQ][DS]
  X* Ks = Qs + BQ * DS;                   // [2][BK][DS]
  X* Vs = Ks + 2 * BK * DS;               // [2][BK][DS]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int nqt = (Tq + BQ - 1) / BQ;
  const int bh = blockIdx.x / nqt, b = bh / H;
  const int q0 = (nqt - 1 - (int)(blockIdx.x % nqt)) * BQ;  // last tiles first: the long causal ones
  const X* kb = k + (long long)bh * Tk * d;
  const X* vb = v + (long long)bh * Tk * d;
  const bool vec = d % 8 == 0 && a2_aligned16(q) && a2_aligned16(k) && a2_aligned16(v);
  const float ninf = a2_neg_inf(), scale2 = scale * A2_LOG2E;
  const int shift = Tk - Tq;
  const int kend = causal ? min(Tk, q0 + BQ + shift) : Tk;  // keys >= kend are hidden from every row
  const int ntiles = kend > 0 ? (kend + BK - 1) / BK : 0;
  const int w0 = q0 + warp * 16, row_lo = w0 + g, row_hi = row_lo + 8;

  a2_load_tile<X, D, BQ, NT>(Qs, q + (long long)bh * Tq * d, q0, Tq, d, vec);
  if (ntiles > 0) {
    a2_load_tile<X, D, BK, NT>(Ks, kb, 0, Tk, d, vec);
    a2_load_tile<X, D, BK, NT>(Vs, vb, 0, Tk, d, vec);
  }
  mg_cp_async_commit();

  float acc[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float m_lo = ninf, m_hi = ninf, l_lo = 0.f, l_hi = 0.f;  // running max (base 2), per-lane partial sums
  unsigned qf[D / 16][4];

  for (int it = 0; it < ntiles; ++it) {
    const int k0 = it * BK, st = it & 1;
    if (it + 1 < ntiles) {  // prefetch the next K, V tile into the other stage, then wait for this one
      a2_load_tile<X, D, BK, NT>(Ks + (st ^ 1) * BK * DS, kb, k0 + BK, Tk, d, vec);
      a2_load_tile<X, D, BK, NT>(Vs + (st ^ 1) * BK * DS, vb, k0 + BK, Tk, d, vec);
      mg_cp_async_commit();
      mg_cp_async_wait<1>();
    } else {
      mg_cp_async_wait<0>();
    }
    __syncthreads();
    const X* Kt = Ks + st * BK * DS;
    const X* Vt = Vs + st * BK * DS;
    if (it == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) a2_ldsm_a<D>(qf[kk], Qs, warp * 16, kk);
    }
    // Warp-uniform: some row of this warp may see a key of this tile.
    if (w0 < Tq && (!causal || k0 <= w0 + 15 + shift)) {
      float s[NB][4];
#pragma unroll
      for (int n = 0; n < NB; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
        for (int n2 = 0; n2 < NB / 2; ++n2) {
          unsigned kf[4];
          a2_ldsm_b<D>(kf, Kt, n2 * 16, kk);
          mg_mma_16816<X>(s[2 * n2], qf[kk], kf);
          mg_mma_16816<X>(s[2 * n2 + 1], qf[kk], kf + 2);
        }
      float mx_lo = ninf, mx_hi = ninf;
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int key = k0 + n * 8 + 2 * t4 + j;
          const bool kok = key < Tk && (!has_mask || key_mask[(long long)b * Tk + key]);
          const bool ok_lo = kok && (!causal || key <= row_lo + shift);
          const bool ok_hi = kok && (!causal || key <= row_hi + shift);
          s[n][j] = ok_lo ? s[n][j] * scale2 : ninf;
          s[n][j + 2] = ok_hi ? s[n][j + 2] * scale2 : ninf;
          mx_lo = fmaxf(mx_lo, s[n][j]);
          mx_hi = fmaxf(mx_hi, s[n][j + 2]);
        }
      const float mn_lo = fmaxf(m_lo, a2_quad_max(mx_lo)), mn_hi = fmaxf(m_hi, a2_quad_max(mx_hi));
      // mn == -inf: no key seen yet by the row; acc and l stay 0
      const float al_lo = mn_lo == ninf ? 1.f : exp2f(m_lo - mn_lo);
      const float al_hi = mn_hi == ninf ? 1.f : exp2f(m_hi - mn_hi);
      m_lo = mn_lo;
      m_hi = mn_hi;
      float ls_lo = 0.f, ls_hi = 0.f;
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          s[n][j] = s[n][j] == ninf ? 0.f : exp2f(s[n][j] - mn_lo);
          s[n][j + 2] = s[n][j + 2] == ninf ? 0.f : exp2f(s[n][j + 2] - mn_hi);
          ls_lo += s[n][j];
          ls_hi += s[n][j + 2];
        }
      l_lo = l_lo * al_lo + ls_lo;
      l_hi = l_hi * al_hi + ls_hi;
#pragma unroll
      for (int n = 0; n < ND; ++n) {
        acc[n][0] *= al_lo;
        acc[n][1] *= al_lo;
        acc[n][2] *= al_hi;
        acc[n][3] *= al_hi;
      }
      // O += P V, P from registers (rounded to X)
#pragma unroll
      for (int kb16 = 0; kb16 < BK / 16; ++kb16) {
        unsigned pa[4];
        a2_pack_a<X>(pa, s[2 * kb16], s[2 * kb16 + 1]);
#pragma unroll
        for (int n2 = 0; n2 < ND / 2; ++n2) {
          unsigned vf[4];
          a2_ldsm_bt<D>(vf, Vt, kb16 * 16, n2 * 16);
          mg_mma_16816<X>(acc[2 * n2], pa, vf);
          mg_mma_16816<X>(acc[2 * n2 + 1], pa, vf + 2);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  mg_cp_async_wait<0>();  // with no key tile, the Q tile's copies are still in flight
  __syncthreads();
  l_lo = a2_quad_sum(l_lo);
  l_hi = a2_quad_sum(l_hi);
  a2_store_rows<X, D>(o + (long long)bh * Tq * d, Qs + warp * 16 * DS, acc, l_lo > 0.f ? 1.f / l_lo : 0.f,
                      l_hi > 0.f ? 1.f / l_hi : 0.f, w0, Tq, d);
  if (t4 == 0) {
    if (row_lo < Tq) lse[(long long)bh * Tq + row_lo] = l_lo > 0.f ? (m_lo + log2f(l_lo)) * A2_LN2 : ninf;
    if (row_hi < Tq) lse[(long long)bh * Tq + row_hi] = l_hi > 0.f ? (m_hi + log2f(l_hi)) * A2_LN2 : ninf;
  }
}

// ---------------------------------------------------------------------------------------------
// Drow = sum_c dO[row, c] O[row, c] for rows row_lo, row_hi (the 4 lanes of a quad split the row).
template <typename X>
__device__ __forceinline__ float a2_row_dot(const X* a, const X* b, int row, int nrows, int d) {
  float s = 0.f;
  if (row < nrows)
    for (int c = threadIdx.x & 3; c < d; c += 4) s += mg_float(a[(long long)row * d + c]) * mg_float(b[(long long)row * d + c]);
  return a2_quad_sum(s);
}

template <typename X, int D, int BK, int NW>
__global__ void __launch_bounds__(NW * 32)
attention_v2_bwd_dq(const X* __restrict__ q, const X* __restrict__ k, const X* __restrict__ v,
                    const X* __restrict__ o, const float* __restrict__ lse, const X* __restrict__ dout,
                    const bool* __restrict__ key_mask, X* __restrict__ dq, float* __restrict__ drow, int H, int Tq,
                    int Tk, int d, float scale, int causal, int has_mask) {
  constexpr int BQ = 16 * NW, NT = 32 * NW, DS = D + 8, NB = BK / 8, ND = D / 8;
  static_assert(D % 16 == 0 && BK % 16 == 0, "tiles are whole 16 x 16 fragments");
  extern __shared__ __align__(16) unsigned char a2_smem[];
  X* Qs = reinterpret_cast<X*>(a2_smem);  // [BQ][DS]
  X* dOs = Qs + BQ * DS;                  // [BQ][DS]
  X* Ks = dOs + BQ * DS;                  // [2][BK][DS]
  X* Vs = Ks + 2 * BK * DS;               // [2][BK][DS]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int nqt = (Tq + BQ - 1) / BQ;
  const int bh = blockIdx.x / nqt, b = bh / H;
  const int q0 = (nqt - 1 - (int)(blockIdx.x % nqt)) * BQ;
  const X* kb = k + (long long)bh * Tk * d;
  const X* vb = v + (long long)bh * Tk * d;
  const bool vec = d % 8 == 0 && a2_aligned16(q) && a2_aligned16(k) && a2_aligned16(v) && a2_aligned16(dout);
  const float ninf = a2_neg_inf(), scale2 = scale * A2_LOG2E;
  const int shift = Tk - Tq;
  const int kend = causal ? min(Tk, q0 + BQ + shift) : Tk;
  const int ntiles = kend > 0 ? (kend + BK - 1) / BK : 0;
  const int w0 = q0 + warp * 16, row_lo = w0 + g, row_hi = row_lo + 8;

  a2_load_tile<X, D, BQ, NT>(Qs, q + (long long)bh * Tq * d, q0, Tq, d, vec);
  a2_load_tile<X, D, BQ, NT>(dOs, dout + (long long)bh * Tq * d, q0, Tq, d, vec);
  if (ntiles > 0) {
    a2_load_tile<X, D, BK, NT>(Ks, kb, 0, Tk, d, vec);
    a2_load_tile<X, D, BK, NT>(Vs, vb, 0, Tk, d, vec);
  }
  mg_cp_async_commit();

  // Drow (written for every row: the dkdv kernel reads it) and lse in base 2 (-inf: no key)
  const X* ob = o + (long long)bh * Tq * d;
  const X* gb = dout + (long long)bh * Tq * d;
  const float dr_lo = a2_row_dot(gb, ob, row_lo, Tq, d), dr_hi = a2_row_dot(gb, ob, row_hi, Tq, d);
  if (t4 == 0) {
    if (row_lo < Tq) drow[(long long)bh * Tq + row_lo] = dr_lo;
    if (row_hi < Tq) drow[(long long)bh * Tq + row_hi] = dr_hi;
  }
  const float l2_lo = row_lo < Tq ? lse[(long long)bh * Tq + row_lo] * A2_LOG2E : ninf;
  const float l2_hi = row_hi < Tq ? lse[(long long)bh * Tq + row_hi] * A2_LOG2E : ninf;

  float acc[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  unsigned qf[D / 16][4], df[D / 16][4];

  for (int it = 0; it < ntiles; ++it) {
    const int k0 = it * BK, st = it & 1;
    if (it + 1 < ntiles) {
      a2_load_tile<X, D, BK, NT>(Ks + (st ^ 1) * BK * DS, kb, k0 + BK, Tk, d, vec);
      a2_load_tile<X, D, BK, NT>(Vs + (st ^ 1) * BK * DS, vb, k0 + BK, Tk, d, vec);
      mg_cp_async_commit();
      mg_cp_async_wait<1>();
    } else {
      mg_cp_async_wait<0>();
    }
    __syncthreads();
    const X* Kt = Ks + st * BK * DS;
    const X* Vt = Vs + st * BK * DS;
    if (it == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        a2_ldsm_a<D>(qf[kk], Qs, warp * 16, kk);
        a2_ldsm_a<D>(df[kk], dOs, warp * 16, kk);
      }
    }
    if (w0 < Tq && (!causal || k0 <= w0 + 15 + shift)) {
      float s[NB][4], dp[NB][4];
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[n][i] = dp[n][i] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
        for (int n2 = 0; n2 < NB / 2; ++n2) {
          unsigned kf[4], vf[4];
          a2_ldsm_b<D>(kf, Kt, n2 * 16, kk);
          a2_ldsm_b<D>(vf, Vt, n2 * 16, kk);
          mg_mma_16816<X>(s[2 * n2], qf[kk], kf);
          mg_mma_16816<X>(s[2 * n2 + 1], qf[kk], kf + 2);
          mg_mma_16816<X>(dp[2 * n2], df[kk], vf);
          mg_mma_16816<X>(dp[2 * n2 + 1], df[kk], vf + 2);
        }
      // dS = P (dP - Drow), P recomputed from the saved lse (0 where hidden), into s
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int key = k0 + n * 8 + 2 * t4 + j;
          const bool kok = key < Tk && (!has_mask || key_mask[(long long)b * Tk + key]);
          const bool ok_lo = kok && l2_lo != ninf && (!causal || key <= row_lo + shift);
          const bool ok_hi = kok && l2_hi != ninf && (!causal || key <= row_hi + shift);
          const float p_lo = ok_lo ? exp2f(s[n][j] * scale2 - l2_lo) : 0.f;
          const float p_hi = ok_hi ? exp2f(s[n][j + 2] * scale2 - l2_hi) : 0.f;
          s[n][j] = p_lo * (dp[n][j] - dr_lo);
          s[n][j + 2] = p_hi * (dp[n][j + 2] - dr_hi);
        }
      // dQ += dS K
#pragma unroll
      for (int kb16 = 0; kb16 < BK / 16; ++kb16) {
        unsigned da[4];
        a2_pack_a<X>(da, s[2 * kb16], s[2 * kb16 + 1]);
#pragma unroll
        for (int n2 = 0; n2 < ND / 2; ++n2) {
          unsigned kf[4];
          a2_ldsm_bt<D>(kf, Kt, kb16 * 16, n2 * 16);
          mg_mma_16816<X>(acc[2 * n2], da, kf);
          mg_mma_16816<X>(acc[2 * n2 + 1], da, kf + 2);
        }
      }
    }
    __syncthreads();
  }

  mg_cp_async_wait<0>();
  __syncthreads();
  a2_store_rows<X, D>(dq + (long long)bh * Tq * d, Qs + warp * 16 * DS, acc, scale, scale, w0, Tq, d);
}

// ---------------------------------------------------------------------------------------------
template <typename X, int D, int BQ, int NW>
__global__ void __launch_bounds__(NW * 32)
attention_v2_bwd_dkdv(const X* __restrict__ q, const X* __restrict__ k, const X* __restrict__ v,
                      const float* __restrict__ lse, const float* __restrict__ drow, const X* __restrict__ dout,
                      const bool* __restrict__ key_mask, X* __restrict__ dk, X* __restrict__ dv, int H, int Tq,
                      int Tk, int d, float scale, int causal, int has_mask) {
  constexpr int BK = 16 * NW, NT = 32 * NW, DS = D + 8, NB = BQ / 8, ND = D / 8;
  static_assert(D % 16 == 0 && BQ % 16 == 0, "tiles are whole 16 x 16 fragments");
  extern __shared__ __align__(16) unsigned char a2_smem[];
  X* Ks = reinterpret_cast<X*>(a2_smem);  // [BK][DS]
  X* Vs = Ks + BK * DS;                   // [BK][DS]
  X* Qs = Vs + BK * DS;                   // [2][BQ][DS]
  X* dOs = Qs + 2 * BQ * DS;              // [2][BQ][DS]
  float* L2s = reinterpret_cast<float*>(dOs + 2 * BQ * DS);  // [2][BQ] lse in base 2
  float* Drs = L2s + 2 * BQ;                                  // [2][BQ] Drow

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int nkt = (Tk + BK - 1) / BK;
  const int bh = blockIdx.x / nkt, b = bh / H;
  const int k0 = (int)(blockIdx.x % nkt) * BK;
  const X* qb = q + (long long)bh * Tq * d;
  const X* gb = dout + (long long)bh * Tq * d;
  const bool vec = d % 8 == 0 && a2_aligned16(q) && a2_aligned16(k) && a2_aligned16(v) && a2_aligned16(dout);
  const float ninf = a2_neg_inf(), scale2 = scale * A2_LOG2E;
  const int shift = Tk - Tq;
  // Under causal masking query i sees key k0 only if i >= k0 - shift: earlier query tiles are skipped.
  const int qstart = causal ? max(0, k0 - shift) / BQ * BQ : 0;
  const int ntiles = qstart < Tq ? (Tq - qstart + BQ - 1) / BQ : 0;
  const int kw = k0 + warp * 16, key_lo = kw + g, key_hi = key_lo + 8;
  const bool kok_lo = key_lo < Tk && (!has_mask || key_mask[(long long)b * Tk + key_lo]);
  const bool kok_hi = key_hi < Tk && (!has_mask || key_mask[(long long)b * Tk + key_hi]);

  a2_load_tile<X, D, BK, NT>(Ks, k + (long long)bh * Tk * d, k0, Tk, d, vec);
  a2_load_tile<X, D, BK, NT>(Vs, v + (long long)bh * Tk * d, k0, Tk, d, vec);
  if (ntiles > 0) {
    a2_load_tile<X, D, BQ, NT>(Qs, qb, qstart, Tq, d, vec);
    a2_load_tile<X, D, BQ, NT>(dOs, gb, qstart, Tq, d, vec);
    for (int i = threadIdx.x; i < BQ; i += NT) {
      const int qi = qstart + i;
      L2s[i] = qi < Tq ? lse[(long long)bh * Tq + qi] * A2_LOG2E : ninf;
      Drs[i] = qi < Tq ? drow[(long long)bh * Tq + qi] : 0.f;
    }
  }
  mg_cp_async_commit();

  float accK[ND][4], accV[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) accK[n][i] = accV[n][i] = 0.f;

  for (int it = 0; it < ntiles; ++it) {
    const int qt0 = qstart + it * BQ, st = it & 1;
    if (it + 1 < ntiles) {
      const int nq0 = qt0 + BQ, ns = st ^ 1;
      a2_load_tile<X, D, BQ, NT>(Qs + ns * BQ * DS, qb, nq0, Tq, d, vec);
      a2_load_tile<X, D, BQ, NT>(dOs + ns * BQ * DS, gb, nq0, Tq, d, vec);
      for (int i = threadIdx.x; i < BQ; i += NT) {
        const int qi = nq0 + i;
        L2s[ns * BQ + i] = qi < Tq ? lse[(long long)bh * Tq + qi] * A2_LOG2E : ninf;
        Drs[ns * BQ + i] = qi < Tq ? drow[(long long)bh * Tq + qi] : 0.f;
      }
      mg_cp_async_commit();
      mg_cp_async_wait<1>();
    } else {
      mg_cp_async_wait<0>();
    }
    __syncthreads();
    const X* Qt = Qs + st * BQ * DS;
    const X* dOt = dOs + st * BQ * DS;
    const float* L2t = L2s + st * BQ;
    const float* Drt = Drs + st * BQ;
    // Warp-uniform: some key of this warp is visible to some query of this tile.
    if (kw < Tk && (!causal || kw <= qt0 + BQ - 1 + shift)) {
      float s[NB][4], dp[NB][4];  // S^T and dP^T: this warp's 16 keys x BQ queries
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[n][i] = dp[n][i] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        unsigned kf[4], vf[4];
        a2_ldsm_a<D>(kf, Ks, warp * 16, kk);
        a2_ldsm_a<D>(vf, Vs, warp * 16, kk);
#pragma unroll
        for (int n2 = 0; n2 < NB / 2; ++n2) {
          unsigned qf[4], df[4];
          a2_ldsm_b<D>(qf, Qt, n2 * 16, kk);
          a2_ldsm_b<D>(df, dOt, n2 * 16, kk);
          mg_mma_16816<X>(s[2 * n2], kf, qf);
          mg_mma_16816<X>(s[2 * n2 + 1], kf, qf + 2);
          mg_mma_16816<X>(dp[2 * n2], vf, df);
          mg_mma_16816<X>(dp[2 * n2 + 1], vf, df + 2);
        }
      }
      // P^T into s, dS^T = P^T (dP^T - Drow) into dp
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int c = n * 8 + 2 * t4 + j, qi = qt0 + c;
          const float l2 = L2t[c], dr = Drt[c];
          const bool vis = l2 != ninf;
          const bool ok_lo = kok_lo && vis && (!causal || key_lo <= qi + shift);
          const bool ok_hi = kok_hi && vis && (!causal || key_hi <= qi + shift);
          const float p_lo = ok_lo ? exp2f(s[n][j] * scale2 - l2) : 0.f;
          const float p_hi = ok_hi ? exp2f(s[n][j + 2] * scale2 - l2) : 0.f;
          s[n][j] = p_lo;
          s[n][j + 2] = p_hi;
          dp[n][j] = p_lo * (dp[n][j] - dr);
          dp[n][j + 2] = p_hi * (dp[n][j + 2] - dr);
        }
      // dV += P^T dO, dK += dS^T Q
#pragma unroll
      for (int kb16 = 0; kb16 < BQ / 16; ++kb16) {
        unsigned pa[4], da[4];
        a2_pack_a<X>(pa, s[2 * kb16], s[2 * kb16 + 1]);
        a2_pack_a<X>(da, dp[2 * kb16], dp[2 * kb16 + 1]);
#pragma unroll
        for (int n2 = 0; n2 < ND / 2; ++n2) {
          unsigned gf[4], qf[4];
          a2_ldsm_bt<D>(gf, dOt, kb16 * 16, n2 * 16);
          a2_ldsm_bt<D>(qf, Qt, kb16 * 16, n2 * 16);
          mg_mma_16816<X>(accV[2 * n2], pa, gf);
          mg_mma_16816<X>(accV[2 * n2 + 1], pa, gf + 2);
          mg_mma_16816<X>(accK[2 * n2], da, qf);
          mg_mma_16816<X>(accK[2 * n2 + 1], da, qf + 2);
        }
      }
    }
    __syncthreads();
  }

  mg_cp_async_wait<0>();
  __syncthreads();
  a2_store_rows<X, D>(dk + (long long)bh * Tk * d, Ks + warp * 16 * DS, accK, scale, scale, kw, Tk, d);
  a2_store_rows<X, D>(dv + (long long)bh * Tk * d, Vs + warp * 16 * DS, accV, 1.f, 1.f, kw, Tk, d);
}
