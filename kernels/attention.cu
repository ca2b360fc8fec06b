// attention.cu: fused softmax attention (FlashAttention-style), forward and backward.
//
// Semantics (shared with the reference in kernels/attention.py and the NumPy path of
// F.scaled_dot_product_attention):
//   q (B, H, Tq, d), k and v (B, H, Tk, d), o (B, H, Tq, d), lse (B, H, Tq); all C-contiguous,
//   one scalar type T. Query i may attend key j iff
//       key_ok[b, j]            (key padding mask, True = attend; has_mask == 0 means all keys ok)
//   and, when causal,  j <= i + (Tk - Tq)        (bottom-right aligned, as a KV cache needs).
//   o[i] = sum_j softmax_j(scale * q[i].k[j]) v[j],   lse[i] = log sum_j exp(scale * q[i].k[j]).
//   A row with no attendable key gets o = 0, lse = -inf and zero gradients.
//
// Scores are kept in base 2: s2 = (q.k) * scale * log2(e), so exp2 does the exponentials;
// lse is converted back to natural log when stored.
//
// Template parameters (every kernel):
//   T   float (accumulates in float32) or double;
//   D   compile-time head dim, a multiple of G; runtime d <= D, columns d..D-1 are zero-padded
//       in shared memory and never written back;
//   BQ  query rows per tile, BK key rows per tile;
//   G   lanes that share one row (a power of two dividing 32, so a group never straddles a warp);
//   R   rows each lane owns (register blocking: R rows x (tile/G) columns per lane).
//   Threads per block NT = (rows per tile / R) * G, a multiple of 32.
// The shipped instantiations (float and double, D in {16, 32, 64, 128}) are the tile tables
// FORWARD_TILES and BACKWARD_TILES in kernels/attention.py (both backward kernels of one call use
// the same template arguments); all keep static shared memory under 48 KiB.
// Lane g of a group owns key (or query) columns g, g+G, g+2G, ... of the score tile and head
// columns g, g+G, ... of its accumulators, so lanes of a group read consecutive shared words.
// Shared rows are padded to D+1 (and BK+1 / BQ+1) so rows that lanes read in parallel fall in
// different banks.
//
// Kernels:
//   attention_fwd<T,D,BQ,BK,G,R>   grid (B*H*ceil(Tq/BQ)), block NT.
//     One block per (batch*head, query tile); query tiles are visited last-first so the long
//     causal tiles start early. Q tile stays in shared memory; K and V tiles stream through it.
//     Per key tile: S = Q K^T (registers), mask, online softmax (running max m, per-lane partial
//     sum l, acc *= exp2(m_old - m_new)), P to shared memory, acc += P V.
//     Under causal masking the key loop stops at the last key any row of the tile may see, so
//     fully masked tiles are never loaded.
//     Reads q, k, v (each tile once per block), key_mask; writes o, lse. Shared memory:
//     (BQ + 2 BK)(D+1) + BQ(BK+1) elements of T, plus BK ints.
//   attention_bwd_dq<T,D,BQ,BK,G,R>   grid (B*H*ceil(Tq/BQ)), block NT = (BQ/R) G.
//     Per query tile: Drow[i] = sum_c dO[i,c] O[i,c] (written out for the next kernel);
//     for each visible key tile recompute P = exp2(s2 - lse2), dP = dO V^T,
//     dS = P (dP - Drow); dQ += dS K. Writes dq = scale * dQ and Drow (B, H, Tq).
//     Reads q, k, v, o, do, lse, key_mask. Shared: 2(BQ + BK)(D+1) + BQ(BK+1) of T, BK ints.
//   attention_bwd_dkdv<T,D,BQ,BK,G,R>   grid (B*H*ceil(Tk/BK)), block NT = (BK/R) G.
//     One block per (batch*head, key tile), launched after attention_bwd_dq (it reads Drow).
//     K and V tiles stay in shared memory; for each query tile that can see the key tile,
//     recompute P^T and dS^T (keys x queries) and accumulate dV += P^T dO, dK += dS^T Q.
//     Under causal masking the query loop starts at the first tile that can see key k0.
//     Writes dk = scale * dK, dv. Reads q, k, v, do, lse, Drow, key_mask.
//     Shared: 2(BK + BQ)(D+1) + 2 BK(BQ+1) + 2 BQ of T.
// Every output element is written by exactly one thread and every sum runs in a fixed order:
// no atomics, results are bit-identical run to run. Extra global memory: Drow, O(T) per head.
// Header-free on purpose (NVRTC has no headers; the CPU emulator compiles this file as is).

template <typename T> __device__ __forceinline__ T attn_neg_inf() { return T(__int_as_float(0xff800000)); }
__device__ __forceinline__ float attn_exp2(float x) { return exp2f(x); }
__device__ __forceinline__ double attn_exp2(double x) { return exp2(x); }
__device__ __forceinline__ float attn_log2(float x) { return log2f(x); }
__device__ __forceinline__ double attn_log2(double x) { return log2(x); }
template <typename T> __device__ __forceinline__ T attn_max(T a, T b) { return a > b ? a : b; }

#define ATTN_LOG2E 1.4426950408889634
#define ATTN_LN2 0.6931471805599453

// Copy rows [row0, row0 + ROWS) of a (nrows, d) matrix into a (ROWS, D+1) shared tile,
// zero-filling rows >= nrows and columns >= d. All NT threads take part.
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void attn_load_tile(T* __restrict__ dst, const T* __restrict__ src,
                                               int row0, int nrows, int d) {
    for (int idx = threadIdx.x; idx < ROWS * D; idx += NT) {
        const int r = idx / D, c = idx % D;
        dst[r * (D + 1) + c] = (row0 + r < nrows && c < d) ? src[(long long)(row0 + r) * d + c] : T(0);
    }
}

// Sum / max over the G lanes of a row group (all 32 lanes of the warp execute it).
template <typename T, int G> __device__ __forceinline__ T attn_group_sum(T x) {
#pragma unroll
    for (int off = G / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}
template <typename T, int G> __device__ __forceinline__ T attn_group_max(T x) {
#pragma unroll
    for (int off = G / 2; off > 0; off /= 2) x = attn_max(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

template <int D, int BQ, int BK, int G, int R, int TROWS>
struct AttnShape {
    static_assert(G >= 1 && G <= 32 && (32 % G) == 0, "G must be a power of two <= 32");
    static_assert(D % G == 0 && BK % G == 0 && BQ % G == 0, "tile widths must be multiples of G");
    static_assert(TROWS % R == 0, "R must divide the rows of the tile");
    static_assert(((TROWS / R) * G) % 32 == 0, "a block must be whole warps");
    static constexpr int NT = (TROWS / R) * G;
    static constexpr int NRG = TROWS / R;   // row groups per block
    static constexpr int CPL = D / G;       // head columns per lane
    static constexpr int DP = D + 1;        // padded shared row stride
};

// ---------------------------------------------------------------------------------------------
template <typename T, int D, int BQ, int BK, int G, int R>
__global__ void __launch_bounds__(AttnShape<D, BQ, BK, G, R, BQ>::NT)
attention_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
              const bool* __restrict__ key_mask, T* __restrict__ o, T* __restrict__ lse,
              int H, int Tq, int Tk, int d, T scale, int causal, int has_mask) {
    typedef AttnShape<D, BQ, BK, G, R, BQ> S;
    constexpr int KPL = BK / G;  // keys per lane
    __shared__ T Qs[BQ * S::DP];
    __shared__ T Ks[BK * S::DP];
    __shared__ T Vs[BK * S::DP];
    __shared__ T Ps[BQ * (BK + 1)];
    __shared__ int kok[BK];

    const int tid = threadIdx.x, g = tid % G, rg = tid / G;
    const int nqt = (Tq + BQ - 1) / BQ;
    const int bh = blockIdx.x / nqt, b = bh / H;
    const int q0 = (nqt - 1 - (int)(blockIdx.x % nqt)) * BQ;
    const T* qb = q + (long long)bh * Tq * d;
    const T* kb = k + (long long)bh * Tk * d;
    const T* vb = v + (long long)bh * Tk * d;
    const T ninf = attn_neg_inf<T>();
    const T scale2 = scale * T(ATTN_LOG2E);
    const int shift = Tk - Tq;

    attn_load_tile<T, D, BQ, S::NT>(Qs, qb, q0, Tq, d);

    T acc[R][S::CPL], m[R], l[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
        m[i] = ninf;
        l[i] = T(0);
#pragma unroll
        for (int u = 0; u < S::CPL; ++u) acc[i][u] = T(0);
    }
    // Keys at or beyond kend are masked for every row of this tile.
    const int kend = causal ? min(Tk, q0 + BQ + shift) : Tk;

    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();  // the previous tile's K, V, P are no longer read
        attn_load_tile<T, D, BK, S::NT>(Ks, kb, k0, Tk, d);
        attn_load_tile<T, D, BK, S::NT>(Vs, vb, k0, Tk, d);
        for (int j = tid; j < BK; j += S::NT)
            kok[j] = (k0 + j < Tk) && (!has_mask || key_mask[(long long)b * Tk + k0 + j]);
        __syncthreads();

        T s[R][KPL];
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
            for (int t = 0; t < KPL; ++t) s[i][t] = T(0);
        for (int c = 0; c < d; ++c) {
            T qv[R];
#pragma unroll
            for (int i = 0; i < R; ++i) qv[i] = Qs[(rg + i * S::NRG) * S::DP + c];
#pragma unroll
            for (int t = 0; t < KPL; ++t) {
                const T kv = Ks[(g + t * G) * S::DP + c];
#pragma unroll
                for (int i = 0; i < R; ++i) s[i][t] += qv[i] * kv;
            }
        }
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = rg + i * S::NRG, qi = q0 + r;
            T mt = ninf;
#pragma unroll
            for (int t = 0; t < KPL; ++t) {
                const int kj = k0 + g + t * G;
                const bool ok = qi < Tq && kok[g + t * G] && (!causal || kj <= qi + shift);
                s[i][t] = ok ? s[i][t] * scale2 : ninf;
                mt = attn_max(mt, s[i][t]);
            }
            mt = attn_group_max<T, G>(mt);
            const T mnew = attn_max(m[i], mt);
            // mnew == -inf: no key seen yet for this row; keep acc = 0, l = 0.
            const T alpha = mnew == ninf ? T(1) : attn_exp2(m[i] - mnew);
            m[i] = mnew;
            T lsum = T(0);
#pragma unroll
            for (int t = 0; t < KPL; ++t) {
                const T p = s[i][t] == ninf ? T(0) : attn_exp2(s[i][t] - mnew);
                Ps[r * (BK + 1) + g + t * G] = p;
                lsum += p;
            }
            l[i] = l[i] * alpha + lsum;
#pragma unroll
            for (int u = 0; u < S::CPL; ++u) acc[i][u] *= alpha;
        }
        __syncthreads();

        const int jn = min(BK, kend - k0);
        for (int j = 0; j < jn; ++j) {
            T vv[S::CPL];
#pragma unroll
            for (int u = 0; u < S::CPL; ++u) vv[u] = Vs[j * S::DP + g + u * G];
#pragma unroll
            for (int i = 0; i < R; ++i) {
                const T p = Ps[(rg + i * S::NRG) * (BK + 1) + j];
#pragma unroll
                for (int u = 0; u < S::CPL; ++u) acc[i][u] += p * vv[u];
            }
        }
    }

#pragma unroll
    for (int i = 0; i < R; ++i) {
        const T lt = attn_group_sum<T, G>(l[i]);
        const int qi = q0 + rg + i * S::NRG;
        if (qi < Tq) {
            const T inv = lt > T(0) ? T(1) / lt : T(0);
            T* orow = o + ((long long)bh * Tq + qi) * d;
#pragma unroll
            for (int u = 0; u < S::CPL; ++u)
                if (g + u * G < d) orow[g + u * G] = acc[i][u] * inv;
            if (g == 0)
                lse[(long long)bh * Tq + qi] = lt > T(0) ? (m[i] + attn_log2(lt)) * T(ATTN_LN2) : ninf;
        }
    }
}

// ---------------------------------------------------------------------------------------------
template <typename T, int D, int BQ, int BK, int G, int R>
__global__ void __launch_bounds__(AttnShape<D, BQ, BK, G, R, BQ>::NT)
attention_bwd_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                 const T* __restrict__ o, const T* __restrict__ lse, const T* __restrict__ dout,
                 const bool* __restrict__ key_mask, T* __restrict__ dq, T* __restrict__ drow,
                 int H, int Tq, int Tk, int d, T scale, int causal, int has_mask) {
    typedef AttnShape<D, BQ, BK, G, R, BQ> S;
    constexpr int KPL = BK / G;
    __shared__ T Qs[BQ * S::DP];
    __shared__ T dOs[BQ * S::DP];
    __shared__ T Ks[BK * S::DP];
    __shared__ T Vs[BK * S::DP];
    __shared__ T dSs[BQ * (BK + 1)];
    __shared__ int kok[BK];

    const int tid = threadIdx.x, g = tid % G, rg = tid / G;
    const int nqt = (Tq + BQ - 1) / BQ;
    const int bh = blockIdx.x / nqt, b = bh / H;
    const int q0 = (nqt - 1 - (int)(blockIdx.x % nqt)) * BQ;
    const T* kb = k + (long long)bh * Tk * d;
    const T* vb = v + (long long)bh * Tk * d;
    const T ninf = attn_neg_inf<T>();
    const T scale2 = scale * T(ATTN_LOG2E);
    const int shift = Tk - Tq;

    attn_load_tile<T, D, BQ, S::NT>(Qs, q + (long long)bh * Tq * d, q0, Tq, d);
    attn_load_tile<T, D, BQ, S::NT>(dOs, dout + (long long)bh * Tq * d, q0, Tq, d);
    __syncthreads();

    // Per-row Drow = dO . O and lse in base 2 (-inf for rows past Tq or with no key).
    T dr[R], lse2[R], acc[R][S::CPL];
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int r = rg + i * S::NRG, qi = q0 + r;
        T part = T(0);
        if (qi < Tq) {
            const T* orow = o + ((long long)bh * Tq + qi) * d;
#pragma unroll
            for (int u = 0; u < S::CPL; ++u)
                if (g + u * G < d) part += dOs[r * S::DP + g + u * G] * orow[g + u * G];
        }
        dr[i] = attn_group_sum<T, G>(part);
        lse2[i] = qi < Tq ? lse[(long long)bh * Tq + qi] * T(ATTN_LOG2E) : ninf;
        if (qi < Tq && g == 0) drow[(long long)bh * Tq + qi] = dr[i];
#pragma unroll
        for (int u = 0; u < S::CPL; ++u) acc[i][u] = T(0);
    }
    const int kend = causal ? min(Tk, q0 + BQ + shift) : Tk;

    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        attn_load_tile<T, D, BK, S::NT>(Ks, kb, k0, Tk, d);
        attn_load_tile<T, D, BK, S::NT>(Vs, vb, k0, Tk, d);
        for (int j = tid; j < BK; j += S::NT)
            kok[j] = (k0 + j < Tk) && (!has_mask || key_mask[(long long)b * Tk + k0 + j]);
        __syncthreads();

        T s[R][KPL], dp[R][KPL];
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
            for (int t = 0; t < KPL; ++t) s[i][t] = dp[i][t] = T(0);
        for (int c = 0; c < d; ++c) {
            T qv[R], gv[R];
#pragma unroll
            for (int i = 0; i < R; ++i) {
                qv[i] = Qs[(rg + i * S::NRG) * S::DP + c];
                gv[i] = dOs[(rg + i * S::NRG) * S::DP + c];
            }
#pragma unroll
            for (int t = 0; t < KPL; ++t) {
                const T kv = Ks[(g + t * G) * S::DP + c], vv = Vs[(g + t * G) * S::DP + c];
#pragma unroll
                for (int i = 0; i < R; ++i) {
                    s[i][t] += qv[i] * kv;
                    dp[i][t] += gv[i] * vv;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = rg + i * S::NRG, qi = q0 + r;
#pragma unroll
            for (int t = 0; t < KPL; ++t) {
                const int kj = k0 + g + t * G;
                const bool ok = lse2[i] != ninf && kok[g + t * G] && (!causal || kj <= qi + shift);
                const T p = ok ? attn_exp2(s[i][t] * scale2 - lse2[i]) : T(0);
                dSs[r * (BK + 1) + g + t * G] = p * (dp[i][t] - dr[i]);
            }
        }
        __syncthreads();

        const int jn = min(BK, kend - k0);
        for (int j = 0; j < jn; ++j) {
            T kv[S::CPL];
#pragma unroll
            for (int u = 0; u < S::CPL; ++u) kv[u] = Ks[j * S::DP + g + u * G];
#pragma unroll
            for (int i = 0; i < R; ++i) {
                const T ds = dSs[(rg + i * S::NRG) * (BK + 1) + j];
#pragma unroll
                for (int u = 0; u < S::CPL; ++u) acc[i][u] += ds * kv[u];
            }
        }
    }

#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int qi = q0 + rg + i * S::NRG;
        if (qi < Tq) {
            T* row = dq + ((long long)bh * Tq + qi) * d;
#pragma unroll
            for (int u = 0; u < S::CPL; ++u)
                if (g + u * G < d) row[g + u * G] = acc[i][u] * scale;
        }
    }
}

// ---------------------------------------------------------------------------------------------
template <typename T, int D, int BQ, int BK, int G, int R>
__global__ void __launch_bounds__(AttnShape<D, BQ, BK, G, R, BK>::NT)
attention_bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   const T* __restrict__ lse, const T* __restrict__ drow, const T* __restrict__ dout,
                   const bool* __restrict__ key_mask, T* __restrict__ dk, T* __restrict__ dv,
                   int H, int Tq, int Tk, int d, T scale, int causal, int has_mask) {
    typedef AttnShape<D, BQ, BK, G, R, BK> S;
    constexpr int QPL = BQ / G;  // queries per lane
    __shared__ T Ks[BK * S::DP];
    __shared__ T Vs[BK * S::DP];
    __shared__ T Qs[BQ * S::DP];
    __shared__ T dOs[BQ * S::DP];
    __shared__ T Pt[BK * (BQ + 1)];
    __shared__ T dSt[BK * (BQ + 1)];
    __shared__ T lse2s[BQ];
    __shared__ T drs[BQ];

    const int tid = threadIdx.x, g = tid % G, rg = tid / G;
    const int nkt = (Tk + BK - 1) / BK;
    const int bh = blockIdx.x / nkt, b = bh / H;
    const int k0 = (int)(blockIdx.x % nkt) * BK;
    const T* qb = q + (long long)bh * Tq * d;
    const T* gb = dout + (long long)bh * Tq * d;
    const T ninf = attn_neg_inf<T>();
    const T scale2 = scale * T(ATTN_LOG2E);
    const int shift = Tk - Tq;

    attn_load_tile<T, D, BK, S::NT>(Ks, k + (long long)bh * Tk * d, k0, Tk, d);
    attn_load_tile<T, D, BK, S::NT>(Vs, v + (long long)bh * Tk * d, k0, Tk, d);

    bool kok[R];
    T accK[R][S::CPL], accV[R][S::CPL];
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int kj = k0 + rg + i * S::NRG;
        kok[i] = kj < Tk && (!has_mask || key_mask[(long long)b * Tk + kj]);
#pragma unroll
        for (int u = 0; u < S::CPL; ++u) accK[i][u] = accV[i][u] = T(0);
    }
    // Under causal masking query i sees key k0 only if i >= k0 - shift: earlier tiles are skipped.
    const int qstart = causal ? attn_max(0, k0 - shift) / BQ * BQ : 0;

    for (int q0 = qstart; q0 < Tq; q0 += BQ) {
        __syncthreads();
        attn_load_tile<T, D, BQ, S::NT>(Qs, qb, q0, Tq, d);
        attn_load_tile<T, D, BQ, S::NT>(dOs, gb, q0, Tq, d);
        for (int i = tid; i < BQ; i += S::NT) {
            const bool in = q0 + i < Tq;
            lse2s[i] = in ? lse[(long long)bh * Tq + q0 + i] * T(ATTN_LOG2E) : ninf;
            drs[i] = in ? drow[(long long)bh * Tq + q0 + i] : T(0);
        }
        __syncthreads();

        T s[R][QPL], dp[R][QPL];
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
            for (int t = 0; t < QPL; ++t) s[i][t] = dp[i][t] = T(0);
        for (int c = 0; c < d; ++c) {
            T kv[R], vv[R];
#pragma unroll
            for (int i = 0; i < R; ++i) {
                kv[i] = Ks[(rg + i * S::NRG) * S::DP + c];
                vv[i] = Vs[(rg + i * S::NRG) * S::DP + c];
            }
#pragma unroll
            for (int t = 0; t < QPL; ++t) {
                const T qv = Qs[(g + t * G) * S::DP + c], gv = dOs[(g + t * G) * S::DP + c];
#pragma unroll
                for (int i = 0; i < R; ++i) {
                    s[i][t] += kv[i] * qv;
                    dp[i][t] += vv[i] * gv;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int r = rg + i * S::NRG, kj = k0 + r;
#pragma unroll
            for (int t = 0; t < QPL; ++t) {
                const int qi = q0 + g + t * G;
                const T l2 = lse2s[g + t * G];
                const bool ok = kok[i] && l2 != ninf && (!causal || kj <= qi + shift);
                const T p = ok ? attn_exp2(s[i][t] * scale2 - l2) : T(0);
                Pt[r * (BQ + 1) + g + t * G] = p;
                dSt[r * (BQ + 1) + g + t * G] = p * (dp[i][t] - drs[g + t * G]);
            }
        }
        __syncthreads();

        const int in_ = min(BQ, Tq - q0);
        for (int i2 = 0; i2 < in_; ++i2) {
            T qv[S::CPL], gv[S::CPL];
#pragma unroll
            for (int u = 0; u < S::CPL; ++u) {
                qv[u] = Qs[i2 * S::DP + g + u * G];
                gv[u] = dOs[i2 * S::DP + g + u * G];
            }
#pragma unroll
            for (int i = 0; i < R; ++i) {
                const int r = rg + i * S::NRG;
                const T p = Pt[r * (BQ + 1) + i2], ds = dSt[r * (BQ + 1) + i2];
#pragma unroll
                for (int u = 0; u < S::CPL; ++u) {
                    accV[i][u] += p * gv[u];
                    accK[i][u] += ds * qv[u];
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int kj = k0 + rg + i * S::NRG;
        if (kj < Tk) {
            T* krow = dk + ((long long)bh * Tk + kj) * d;
            T* vrow = dv + ((long long)bh * Tk + kj) * d;
#pragma unroll
            for (int u = 0; u < S::CPL; ++u)
                if (g + u * G < d) {
                    krow[g + u * G] = accK[i][u] * scale;
                    vrow[g + u * G] = accV[i][u];
                }
        }
    }
}
