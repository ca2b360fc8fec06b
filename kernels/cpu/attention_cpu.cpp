// Fused multi-head self-attention on a packed q|k|v projection, forward and backward, for the CPU.
// Built with kernels/cpu/fast_cpu.cpp into one library by kernels/cpu/native.py, but with
// -ffp-contract=fast: the small GEMMs below want fused multiply-adds.
//
// Layout (C = H·D, rows r = b·T + t):
//   qkv  (B·T, 3C): q of head h at [r, h·D + d], k at [r, C + h·D + d], v at [r, 2C + h·D + d]
//   y    (B·T, C):  y of head h at [r, h·D + d]
//   lse  (B, H, T): log Σ_j exp(s_ij) of each query row, s = q kᵀ · scale (causal: j <= i)
//
// Algorithm, per (b, h), one after another (single-threaded: the data-parallel workers of
// models/data_parallel.py give each core its own slice of the batch):
//   forward   Q, K, V (T, D) read in place (gathered only when D is not a whole number of
//             vectors) and Kᵀ (D, T); S = Q Kᵀ; P = softmax(S·scale) row by row (causal rows stop
//             at the diagonal, so masked blocks are never computed); O = P V.
//   backward  recompute P = exp(S·scale − lse) from the saved lse (FlashAttention's trick: no
//             T×T array is kept between the passes); Δ_i = Σ_d dO_id O_id;
//             dP = dO Vᵀ; dS = P ∘ (dP − Δ) · scale; dQ = dS K; dK = dSᵀ Q; dV = Pᵀ dO.
// Every product is one register-blocked micro-GEMM (gemm below): 8 rows × two vectors of columns
// per step, the k loop bounded by the causal structure.
//
// Memory: reads qkv (and y, dy, lse in the backward) once; writes y and lse (forward) or dqkv
// (backward) once. Scratch is O(T·D + T²) per call, reused over the B·H heads.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vecmath.h"

typedef int64_t i64;

namespace {

template <typename T> struct Vec;
template <> struct Vec<float> { typedef float type __attribute__((vector_size(64))); };
template <> struct Vec<double> { typedef double type __attribute__((vector_size(64))); };

template <typename T> using V = typename Vec<T>::type;

template <typename T> constexpr i64 width() { return 64 / (i64)sizeof(T); }   // lanes per vector
inline i64 round_up(i64 n, i64 w) { return (n + w - 1) / w * w; }
template <typename T> inline V<T> splat(T a) { return V<T>{} + a; }
template <typename T> inline V<T> load(const T* p) { V<T> v; std::memcpy(&v, p, sizeof v); return v; }
template <typename T> inline void store(T* p, V<T> v) { std::memcpy(p, &v, sizeof v); }

// C[r, c:c+NV·W] = Σ_{k in [k0, k1)} A[r, k] B[k, c:c+NV·W] for the R rows of one block, where
// A[r, k] is a[r·lda + k] or, with TA (A transposed in memory), a[k·lda + r]. Each broadcast of
// A feeds NV vector FMAs (R·NV accumulators stay in registers).
template <int R, int NV, bool TA, typename T>
inline void gemm_tile(const T* a, i64 lda, const T* B, i64 ldb, T* C, i64 ldc, i64 k0, i64 k1) {
    constexpr i64 W = width<T>();
    V<T> acc[R][NV];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = V<T>{};
    for (i64 k = k0; k < k1; ++k) {
        V<T> b[NV];
        for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + v * W);
        for (int r = 0; r < R; ++r) {
            const T x = TA ? a[k * lda + r] : a[r * lda + k];
            for (int v = 0; v < NV; ++v) acc[r][v] += x * b[v];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) store(C + r * ldc + v * W, acc[r][v]);
}

// The R rows of one block over ncols columns (B and C rows are padded so ncols is a multiple of
// the vector width): two vectors at a time, then one.
template <int R, bool TA, typename T>
inline void gemm_block(const T* a, i64 lda, const T* B, i64 ldb, T* C, i64 ldc, i64 k0, i64 k1, i64 ncols) {
    constexpr i64 W = width<T>();
    i64 c = 0;
    for (; c + 2 * W <= ncols; c += 2 * W) gemm_tile<R, 2, TA>(a, lda, B + c, ldb, C + c, ldc, k0, k1);
    for (; c < ncols; c += W) gemm_tile<R, 1, TA>(a, lda, B + c, ldb, C + c, ldc, k0, k1);
}

// C (M, ncols) = A (M, ·) B (·, ncols), in blocks of 8 rows; kr(i0, rows, k0, k1) sets the block's
// k range and nc(i0, rows) its column count (a multiple of the width), so causal zeros are skipped.
template <bool TA, typename T, typename KRange, typename NCols>
void gemm(const T* a, i64 lda, const T* B, i64 ldb, T* C, i64 ldc, i64 M, KRange kr, NCols nc) {
    constexpr int R = 8;
    auto at = [=](i64 i0) { return TA ? a + i0 : a + i0 * lda; };
    i64 i0 = 0, k0, k1;
    for (; i0 + R <= M; i0 += R) {
        kr(i0, R, k0, k1);
        gemm_block<R, TA>(at(i0), lda, B, ldb, C + i0 * ldc, ldc, k0, k1, nc(i0, R));
    }
    for (; i0 < M; ++i0) {
        kr(i0, 1, k0, k1);
        gemm_block<1, TA>(at(i0), lda, B, ldb, C + i0 * ldc, ldc, k0, k1, nc(i0, 1));
    }
}

template <typename T>
inline void copy(T* dst, const T* src, i64 n) {   // a loop, not memcpy: rows are short (D)
#pragma omp simd
    for (i64 j = 0; j < n; ++j) dst[j] = src[j];
}

// One batch element's heads, each a (T, D) matrix with row stride ld. When D is a whole number of
// vectors, a head is used in place in the packed rows (every vector load or store of a row stays
// inside its head); otherwise it is gathered into, or scattered from, scratch padded to DP columns
// with zeros. Scratch rows are gathered and scattered in token order, walking the strided
// (B·T, ·) array front to back.
template <typename T>
struct Heads {
    i64 H, t, d, DP, ld = 0;
    bool direct;
    T* rows = nullptr;           // this batch element's packed rows, row stride rows_ld
    i64 rows_ld = 0;
    std::vector<T> buf;          // (H, T, DP) when not direct; padding columns stay 0
    Heads(i64 h, i64 t_, i64 d_) : H(h), t(t_), d(d_), DP(round_up(d_, width<T>())), direct(d_ % width<T>() == 0),
                                   buf(direct ? 0 : h * t_ * DP, 0) {}
    void bind(const T* r, i64 r_ld) {
        rows = const_cast<T*>(r);             // inputs are only read: gather() never writes rows
        rows_ld = r_ld;
        ld = direct ? r_ld : DP;
    }
    T* head(i64 h) { return direct ? rows + h * d : buf.data() + h * t * DP; }
    void gather() {
        if (!direct)
            for (i64 i = 0; i < t; ++i)
                for (i64 h = 0; h < H; ++h) copy(head(h) + i * DP, rows + i * rows_ld + h * d, d);
    }
    void scatter() {
        if (!direct)
            for (i64 i = 0; i < t; ++i)
                for (i64 h = 0; h < H; ++h) copy(rows + i * rows_ld + h * d, head(h) + i * DP, d);
    }
};

// Ask for [p, p + bytes) ahead of use, a cache line at a time. A batch element's rows are one
// contiguous block, but each head reads a 1/H slice of every row: strided, so the hardware
// prefetcher would not fetch them in time (measured: the cold kernel ran at 60% of the warm one).
inline void prefetch(const void* p, i64 bytes, bool write = false) {
    const char* c = static_cast<const char*>(p);
    for (i64 o = 0; o < bytes; o += 64) {
        if (write) __builtin_prefetch(c + o, 1, 3);
        else __builtin_prefetch(c + o, 0, 3);
    }
}

// (T, D) with row stride ld -> its transpose (D, TP); padding columns of dst stay 0
template <typename T>
void transpose(const T* src, i64 ld, i64 t, i64 d, T* dst, i64 TP) {
    for (i64 j = 0; j < d; ++j)
        for (i64 i = 0; i < t; ++i) dst[j * TP + i] = src[i * ld + j];
}

// S = A Bᵀ (T, TP) from A (T, D; row stride lda) and Bᵀ (D, TP); with causal, rows [i0, i0+n)
// need columns < i0+n only.
template <typename T>
void scores(const T* a, i64 lda, const T* bt, T* s, i64 t, i64 d, i64 TP, bool causal) {
    constexpr i64 W = width<T>();
    gemm<false>(a, lda, bt, TP, s, TP, t, [d](i64, i64, i64& k0, i64& k1) { k0 = 0; k1 = d; },
                [=](i64 i0, i64 n) { return causal ? round_up(i0 + n, W) : TP; });
}

// ---------------------------------------------------------------- rows of scores, a vector at a time
template <typename T> inline V<T> lanes() {        // {0, 1, …, W-1}
    V<T> v;
    for (i64 l = 0; l < width<T>(); ++l) v[l] = (T)l;
    return v;
}
template <typename T> inline T hsum(V<T> v) { T s = 0; for (i64 l = 0; l < width<T>(); ++l) s += v[l]; return s; }
template <typename T> inline T hmax(V<T> v) { T m = v[0]; for (i64 l = 1; l < width<T>(); ++l) m = v[l] > m ? v[l] : m; return m; }

// exp of each lane: mg::exp32's algorithm on a float vector (exp(x) < 2^-126 and exp(-inf) give 0);
// float64 lanes use std::exp.
inline V<float> vexp(V<float> x) {
    typedef int32_t VI __attribute__((vector_size(64)));
    const V<float> lo = splat(-87.3f), hi = splat(88.3f);
    V<float> xc = x < lo ? lo : (x > hi ? hi : x);
    V<float> kf = xc * 1.44269504088896341f + 12582912.0f;
    kf = kf - 12582912.0f;
    V<float> r = xc - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    V<float> p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    V<float> y = p * (r * r) + r + 1.0f;
    VI bits = (__builtin_convertvector(kf, VI) + 127) << 23;
    y = y * (V<float>)bits;
    return x < lo ? splat(0.0f) : y;
}
inline V<double> vexp(V<double> x) {
    for (i64 l = 0; l < width<double>(); ++l) x[l] = std::exp(x[l]);
    return x;
}

// Softmax of row·scale over keys [0, end) in place, whole vectors at a time; entries [end, TP)
// become 0. Returns the row's log-sum-exp. end >= 1.
template <typename T>
T softmax_row(T* row, i64 end, i64 TP, T scale) {
    constexpr i64 W = width<T>();
    const i64 stop = round_up(end, W);
    const V<T> idx = lanes<T>(), minf = splat((T)-INFINITY);
    V<T> m = minf;
    for (i64 j = 0; j < stop; j += W) {
        V<T> x = load(row + j) * scale;
        x = idx + (T)j < (T)end ? x : minf;
        store(row + j, x);
        m = x > m ? x : m;
    }
    const T mx = hmax<T>(m);
    V<T> den = V<T>{};
    for (i64 j = 0; j < stop; j += W) {
        V<T> e = vexp(load(row + j) - mx);
        store(row + j, e);
        den += e;
    }
    const T sum = hsum<T>(den), inv = (T)1 / sum;
    for (i64 j = 0; j < stop; j += W) store(row + j, load(row + j) * inv);
    for (i64 j = stop; j < TP; j += W) store(row + j, V<T>{});
    return mx + std::log(sum);
}

// Backward of one row: p = exp(s·scale − lse) and ds = p ∘ (dp − Δ) · scale over keys [0, end),
// in place in s and dp; entries [end, TP) of both become 0.
template <typename T>
void softmax_row_grad(T* s, T* dp, i64 end, i64 TP, T scale, T lse, T delta) {
    constexpr i64 W = width<T>();
    const i64 stop = round_up(end, W);
    const V<T> idx = lanes<T>(), zero = V<T>{};
    for (i64 j = 0; j < stop; j += W) {
        V<T> p = vexp(load(s + j) * scale - lse);
        p = idx + (T)j < (T)end ? p : zero;
        store(s + j, p);
        store(dp + j, p * (load(dp + j) - delta) * scale);
    }
    for (i64 j = stop; j < TP; j += W) {
        store(s + j, zero);
        store(dp + j, zero);
    }
}

template <typename T>
void attn_fwd(const T* qkv, T* y, T* lse, i64 B, i64 H, i64 t, i64 d, int causal, double scale_d) {
    const i64 C = H * d, ld = 3 * C;
    const T scale = (T)scale_d;
    Heads<T> q(H, t, d), k(H, t, d), v(H, t, d), o(H, t, d);
    const i64 TP = round_up(t, width<T>()), DP = q.DP;
    std::vector<T> kt(d * TP, 0), s(t * TP, 0);
    const i64 bytes = t * ld * (i64)sizeof(T), obytes = t * C * (i64)sizeof(T);
    prefetch(qkv, bytes);
    for (i64 b = 0; b < B; ++b) {
        const T* rows = qkv + b * t * ld;
        q.bind(rows, ld);
        k.bind(rows + C, ld);
        v.bind(rows + 2 * C, ld);
        o.bind(y + b * t * C, C);
        q.gather();
        k.gather();
        v.gather();
        for (i64 h = 0; h < H; ++h) {
            if (b + 1 < B) {               // a 1/H share of the next batch element's rows per head
                prefetch((const char*)(rows + t * ld) + h * bytes / H, bytes / H);
                prefetch((const char*)(y + (b + 1) * t * C) + h * obytes / H, obytes / H, true);
            }
            transpose(k.head(h), k.ld, t, d, kt.data(), TP);
            scores(q.head(h), q.ld, kt.data(), s.data(), t, d, TP, causal);
            T* l = lse + (b * H + h) * t;
            for (i64 i = 0; i < t; ++i) l[i] = softmax_row(s.data() + i * TP, causal ? i + 1 : t, TP, scale);
            gemm<false>(s.data(), TP, v.head(h), v.ld, o.head(h), o.ld, t,
                        [=](i64 i0, i64 n, i64& k0, i64& k1) { k0 = 0; k1 = causal ? i0 + n : t; },
                        [=](i64, i64) { return DP; });
        }
        o.scatter();
    }
}

template <typename T>
void attn_bwd(const T* qkv, const T* y, const T* lse, const T* dy, T* dqkv, i64 B, i64 H, i64 t, i64 d, int causal,
              double scale_d) {
    const i64 C = H * d, ld = 3 * C;
    const T scale = (T)scale_d;
    Heads<T> q(H, t, d), k(H, t, d), v(H, t, d), o(H, t, d), dout(H, t, d), dq(H, t, d), dk(H, t, d), dv(H, t, d);
    const i64 TP = round_up(t, width<T>()), DP = q.DP;
    std::vector<T> kt(d * TP, 0), vt(d * TP, 0), p(t * TP, 0), ds(t * TP, 0), delta(t);
    auto all_cols = [=](i64, i64) { return DP; };
    // rows of Pᵀ and dSᵀ, i.e. columns j of P and dS, are zero before row j (causal)
    auto from_diag = [=](i64 j0, i64, i64& k0, i64& k1) { k0 = causal ? j0 : 0; k1 = t; };
    auto to_diag = [=](i64 i0, i64 n, i64& k0, i64& k1) { k0 = 0; k1 = causal ? (i0 + n < t ? i0 + n : t) : t; };
    const i64 bytes = t * ld * (i64)sizeof(T), obytes = t * C * (i64)sizeof(T);
    prefetch(qkv, bytes);
    prefetch(y, obytes);
    prefetch(dy, obytes);
    for (i64 b = 0; b < B; ++b) {
        const T* rows = qkv + b * t * ld;
        T* out = dqkv + b * t * ld;

        q.bind(rows, ld);
        k.bind(rows + C, ld);
        v.bind(rows + 2 * C, ld);
        o.bind(y + b * t * C, C);
        dout.bind(dy + b * t * C, C);
        dq.bind(out, ld);
        dk.bind(out + C, ld);
        dv.bind(out + 2 * C, ld);
        for (Heads<T>* m : {&q, &k, &v, &o, &dout}) m->gather();
        for (i64 h = 0; h < H; ++h) {
            if (b + 1 < B) {               // a 1/H share of the next batch element's rows per head
                const i64 qo = h * bytes / H, oo = h * obytes / H;
                prefetch((const char*)(rows + t * ld) + qo, bytes / H);
                prefetch((const char*)(y + (b + 1) * t * C) + oo, obytes / H);
                prefetch((const char*)(dy + (b + 1) * t * C) + oo, obytes / H);
                prefetch((const char*)(out + t * ld) + qo, bytes / H, true);
            }
            const T* l = lse + (b * H + h) * t;
            const T* oh = o.head(h);
            const T* gh = dout.head(h);
            for (i64 i = 0; i < t; ++i) {                 // Δ_i = dO_i · O_i
                T acc = 0;
#pragma omp simd reduction(+ : acc)
                for (i64 j = 0; j < d; ++j) acc += gh[i * dout.ld + j] * oh[i * o.ld + j];
                delta[i] = acc;
            }
            transpose(k.head(h), k.ld, t, d, kt.data(), TP);
            transpose(v.head(h), v.ld, t, d, vt.data(), TP);
            scores(q.head(h), q.ld, kt.data(), p.data(), t, d, TP, causal);     // S, then P in place
            scores(gh, dout.ld, vt.data(), ds.data(), t, d, TP, causal);        // dP, then dS in place
            for (i64 i = 0; i < t; ++i)
                softmax_row_grad(p.data() + i * TP, ds.data() + i * TP, causal ? i + 1 : t, TP, scale, l[i], delta[i]);
            gemm<true>(p.data(), TP, gh, dout.ld, dv.head(h), dv.ld, t, from_diag, all_cols);         // dV = Pᵀ dO
            gemm<true>(ds.data(), TP, q.head(h), q.ld, dk.head(h), dk.ld, t, from_diag, all_cols);    // dK = dSᵀ Q
            gemm<false>(ds.data(), TP, k.head(h), k.ld, dq.head(h), dq.ld, t, to_diag, all_cols);     // dQ = dS K
        }
        for (Heads<T>* m : {&dq, &dk, &dv}) m->scatter();
    }
}

}  // namespace

#define MG_API extern "C" __attribute__((visibility("default")))

MG_API void mg_qkv_attn_fwd_f32(const float* qkv, float* y, float* lse, i64 B, i64 H, i64 t, i64 d, int causal,
                                double scale) { attn_fwd(qkv, y, lse, B, H, t, d, causal, scale); }
MG_API void mg_qkv_attn_fwd_f64(const double* qkv, double* y, double* lse, i64 B, i64 H, i64 t, i64 d, int causal,
                                double scale) { attn_fwd(qkv, y, lse, B, H, t, d, causal, scale); }
MG_API void mg_qkv_attn_bwd_f32(const float* qkv, const float* y, const float* lse, const float* dy, float* dqkv,
                                i64 B, i64 H, i64 t, i64 d, int causal, double scale) {
    attn_bwd(qkv, y, lse, dy, dqkv, B, H, t, d, causal, scale);
}
MG_API void mg_qkv_attn_bwd_f64(const double* qkv, const double* y, const double* lse, const double* dy, double* dqkv,
                                i64 B, i64 H, i64 t, i64 d, int causal, double scale) {
    attn_bwd(qkv, y, lse, dy, dqkv, B, H, t, d, causal, scale);
}
