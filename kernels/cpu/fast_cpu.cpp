// Native CPU loops for minigrad's hot non-matmul ops (built and loaded by kernels/cpu/native.py).
//
// Every array is C-contiguous; T is float or double; sizes are int64. Plain loops that g++ -O3
// vectorises; reductions use `omp simd reduction` (built with -fopenmp-simd, no threads) and
// accumulate in double. Built with -ffp-contract=off so each expression rounds exactly as the
// NumPy reference does (no fused multiply-adds).
//
//   ln_fwd      x (n, c), w, b (c) or null -> y (n, c), mean, rstd (n)
//   ln_bwd      g, x (n, c), mean, rstd (n), w (c) or null -> dx (n, c); dw, db (c) or null
//   softmax     s (B, H, Tq, Tk) in place: softmax(s·scale) over allowed keys; empty rows -> 0
//   attn_ds     ds (rows, Tk) holding dp, p (rows, Tk): ds = p ∘ (dp − rowsum(dp ∘ p)) · scale
//   cross_entropy   logits (n, c), target (n) -> nll (n), d = softmax − onehot (n, c)
//   scatter_add_rows  out (V, c) += rows v (n, c) at idx (n), in row order
//   adam        w, g, m, v (n): one Adam/AdamW step, scalars precomputed by the caller
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vecmath.h"

typedef int64_t i64;

namespace {
using mg::exp_t;


// ---------------------------------------------------------------- LayerNorm
// xhat = (x - mean) · rstd is never stored: the backward recomputes it from x, mean and rstd with
// the same two roundings, so both passes see the same values.
template <typename T>
void ln_fwd(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, i64 n, i64 c, double eps) {
    for (i64 i = 0; i < n; ++i) {
        const T* xr = x + i * c;
        T* yr = y + i * c;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (i64 j = 0; j < c; ++j) s += (double)xr[j];
        const T mu = (T)(s / (double)c);
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (i64 j = 0; j < c; ++j) {
            T d = xr[j] - mu;
            ss += (double)d * (double)d;
        }
        const T r = (T)(1.0 / std::sqrt(ss / (double)c + eps));
        mean[i] = mu;
        rstd[i] = r;
#pragma omp simd
        for (i64 j = 0; j < c; ++j) {
            T h = (xr[j] - mu) * r;
            T v = w ? h * w[j] : h;
            yr[j] = b ? v + b[j] : v;
        }
    }
}

// dw and db are column sums over all rows, accumulated in double in row order (deterministic).
template <typename T>
void ln_bwd(const T* g, const T* x, const T* mean, const T* rstd, const T* w, T* dx, T* dw, T* db, i64 n, i64 c) {
    std::vector<double> acc_w(dw ? c : 0, 0.0), acc_b(db ? c : 0, 0.0);
    double* aw = acc_w.data();
    double* ab = acc_b.data();
    for (i64 i = 0; i < n; ++i) {
        const T* gr = g + i * c;
        const T* xr = x + i * c;
        T* dr = dx + i * c;
        const T mu = mean[i], r = rstd[i];
        double sa = 0.0, sb = 0.0;
#pragma omp simd reduction(+ : sa, sb)
        for (i64 j = 0; j < c; ++j) {
            T gx = w ? gr[j] * w[j] : gr[j];
            T h = (xr[j] - mu) * r;
            sa += (double)gx;
            sb += (double)gx * (double)h;
        }
        const T ma = (T)(sa / (double)c), mb = (T)(sb / (double)c);
#pragma omp simd
        for (i64 j = 0; j < c; ++j) {
            T gx = w ? gr[j] * w[j] : gr[j];
            T h = (xr[j] - mu) * r;
            dr[j] = (gx - ma - h * mb) * r;
        }
        if (aw) {
#pragma omp simd
            for (i64 j = 0; j < c; ++j) aw[j] += (double)gr[j] * (double)((xr[j] - mu) * r);
        }
        if (ab) {
#pragma omp simd
            for (i64 j = 0; j < c; ++j) ab[j] += (double)gr[j];
        }
    }
    if (dw) for (i64 j = 0; j < c; ++j) dw[j] = (T)aw[j];
    if (db) for (i64 j = 0; j < c; ++j) db[j] = (T)ab[j];
}

// ---------------------------------------------------------------- attention rows
// One row of scores (Tk). Key j is allowed iff j < end (the causal test) and, with KM, km[j] != 0.
template <bool KM, typename T>
void softmax_row(T* row, i64 end, i64 tk, const uint8_t* km, T sc) {
    T m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (i64 j = 0; j < end; ++j) {
        T t = row[j] * sc;
        row[j] = t;
        T cand = (!KM || km[j] != 0) ? t : (T)-INFINITY;
        m = cand > m ? cand : m;
    }
    if (!(m > -INFINITY)) {                        // no allowed key: zeros, or NaN if one is NaN
        T fill = 0;
        for (i64 j = 0; j < end; ++j)
            if ((!KM || km[j] != 0) && row[j] != row[j]) fill = row[j];
        for (i64 j = 0; j < tk; ++j) row[j] = fill;
        return;
    }
    T den = 0;                                     // at most Tk terms in [0, 1], one of them 1
#pragma omp simd reduction(+ : den)
    for (i64 j = 0; j < end; ++j) {
        T e = exp_t((T)(row[j] - m));
        if (KM) e = km[j] != 0 ? e : (T)0;
        row[j] = e;
        den += e;
    }
    const T inv = (T)1 / den;
#pragma omp simd
    for (i64 j = 0; j < end; ++j) row[j] = row[j] * inv;
    for (i64 j = end; j < tk; ++j) row[j] = 0;
}

// s (B, H, Tq, Tk). Key j is allowed for query i iff (!causal || j <= i + Tk - Tq) and
// (!key_mask || key_mask[b, j]). Allowed entries become softmax(s·scale); the rest, and every
// entry of a row with no allowed key, become 0.
template <typename T>
void softmax_rows(T* s, i64 B, i64 H, i64 tq, i64 tk, int causal, const uint8_t* key_mask, double scale) {
    const T sc = (T)scale;
    for (i64 bb = 0; bb < B; ++bb) {
        const uint8_t* km = key_mask ? key_mask + bb * tk : nullptr;
        for (i64 h = 0; h < H; ++h) {
            for (i64 i = 0; i < tq; ++i) {
                T* row = s + ((bb * H + h) * tq + i) * tk;
                i64 end = tk;
                if (causal) {
                    end = i + tk - tq + 1;
                    end = end < 0 ? 0 : (end > tk ? tk : end);
                }
                if (km) softmax_row<true>(row, end, tk, km, sc);
                else softmax_row<false>(row, end, tk, km, sc);
            }
        }
    }
}

template <typename T>
void attn_ds(T* ds, const T* p, i64 rows, i64 tk, double scale) {
    const T sc = (T)scale;
    for (i64 i = 0; i < rows; ++i) {
        T* d = ds + i * tk;
        const T* pr = p + i * tk;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (i64 j = 0; j < tk; ++j) s += (double)d[j] * (double)pr[j];
        const T rs = (T)s;
#pragma omp simd
        for (i64 j = 0; j < tk; ++j) d[j] = ((d[j] - rs) * pr[j]) * sc;
    }
}

// ---------------------------------------------------------------- cross-entropy, embedding rows
// Per row of logits (n, c) with target t (int64): nll = logsumexp(row) − row[t] and
// d = softmax(row) − onehot(t), the gradient of nll. Rows whose target is `ignore` get nll = 0,
// d = 0. Returns the number of rows whose max is not finite (the caller redoes those batches).
template <typename T>
i64 cross_entropy(const T* x, const int64_t* tgt, i64 n, i64 c, int64_t ignore, T* nll, T* d) {
    i64 bad = 0;
    for (i64 i = 0; i < n; ++i) {
        const T* xr = x + i * c;
        T* dr = d + i * c;
        if (tgt[i] == ignore) {
            nll[i] = 0;
            for (i64 j = 0; j < c; ++j) dr[j] = 0;
            continue;
        }
        T m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (i64 j = 0; j < c; ++j) m = xr[j] > m ? xr[j] : m;
        if (!std::isfinite(m)) {
            ++bad;
            continue;
        }
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (i64 j = 0; j < c; ++j) {
            T e = exp_t((T)(xr[j] - m));
            dr[j] = e;
            s += e;
        }
        const T inv = (T)1 / s;
#pragma omp simd
        for (i64 j = 0; j < c; ++j) dr[j] *= inv;
        dr[tgt[i]] -= 1;
        nll[i] = (m + std::log(s)) - xr[tgt[i]];
    }
    return bad;
}

// out[idx[i], :] += v[i, :] for i in order (np.add.at's order: the same sums, bit for bit)
template <typename T>
void scatter_add_rows(T* out, const int64_t* idx, const T* v, i64 n, i64 c) {
    for (i64 i = 0; i < n; ++i) {
        T* o = out + idx[i] * c;
        const T* r = v + i * c;
#pragma omp simd
        for (i64 j = 0; j < c; ++j) o[j] += r[j];
    }
}

// ---------------------------------------------------------------- Adam / AdamW
// mode 0: no weight decay; 1: L2 (g + wd·w); 2: decoupled (w · decay first). Same operation
// order and roundings as minigrad/optim.py's NumPy update.
template <int MODE, typename T>
void adam_loop(T* w, const T* g, T* m, T* v, i64 n, T tdecay, T twd, T tb1, T tc1, T tb2, T tc2, T tss, T tib,
               T teps) {
#pragma omp simd
    for (i64 i = 0; i < n; ++i) {
        T wi = w[i], gi = g[i];
        if (MODE == 2) wi = wi * tdecay;
        if (MODE == 1) gi = gi + twd * wi;
        T mi = m[i] * tb1;
        mi = mi + tc1 * gi;
        T vi = v[i] * tb2;
        vi = vi + tc2 * (gi * gi);
        T den = std::sqrt(vi) * tib;
        den = den + teps;
        m[i] = mi;
        v[i] = vi;
        w[i] = wi - tss * (mi / den);
    }
}

template <typename T>
void adam(T* w, const T* g, T* m, T* v, i64 n, int mode, double decay, double wd, double b1, double c1,
          double b2, double c2, double step_size, double inv_bc2_sqrt, double eps) {
    const T a[9] = {(T)decay, (T)wd, (T)b1, (T)c1, (T)b2, (T)c2, (T)step_size, (T)inv_bc2_sqrt, (T)eps};
    if (mode == 2) adam_loop<2>(w, g, m, v, n, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
    else if (mode == 1) adam_loop<1>(w, g, m, v, n, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
    else adam_loop<0>(w, g, m, v, n, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
}

}  // namespace

#define MG_API extern "C" __attribute__((visibility("default")))

MG_API int mg_abi_version() { return 6; }
MG_API void mg_ln_fwd_f32(const float* x, const float* w, const float* b, float* y, float* m, float* r,
                          i64 n, i64 c, double eps) { ln_fwd(x, w, b, y, m, r, n, c, eps); }
MG_API void mg_ln_fwd_f64(const double* x, const double* w, const double* b, double* y, double* m, double* r,
                          i64 n, i64 c, double eps) { ln_fwd(x, w, b, y, m, r, n, c, eps); }
MG_API void mg_ln_bwd_f32(const float* g, const float* x, const float* m, const float* r, const float* w, float* dx,
                          float* dw, float* db, i64 n, i64 c) { ln_bwd(g, x, m, r, w, dx, dw, db, n, c); }
MG_API void mg_ln_bwd_f64(const double* g, const double* x, const double* m, const double* r, const double* w,
                          double* dx, double* dw, double* db, i64 n, i64 c) { ln_bwd(g, x, m, r, w, dx, dw, db, n, c); }
MG_API void mg_softmax_f32(float* s, i64 B, i64 H, i64 tq, i64 tk, int causal, const uint8_t* km, double scale) {
    softmax_rows(s, B, H, tq, tk, causal, km, scale);
}
MG_API void mg_softmax_f64(double* s, i64 B, i64 H, i64 tq, i64 tk, int causal, const uint8_t* km, double scale) {
    softmax_rows(s, B, H, tq, tk, causal, km, scale);
}
MG_API void mg_attn_ds_f32(float* ds, const float* p, i64 rows, i64 tk, double scale) { attn_ds(ds, p, rows, tk, scale); }
MG_API void mg_attn_ds_f64(double* ds, const double* p, i64 rows, i64 tk, double scale) { attn_ds(ds, p, rows, tk, scale); }
MG_API i64 mg_cross_entropy_f32(const float* x, const int64_t* t, i64 n, i64 c, int64_t ignore, float* nll,
                                float* d) { return cross_entropy(x, t, n, c, ignore, nll, d); }
MG_API i64 mg_cross_entropy_f64(const double* x, const int64_t* t, i64 n, i64 c, int64_t ignore, double* nll,
                                double* d) { return cross_entropy(x, t, n, c, ignore, nll, d); }
MG_API void mg_scatter_add_rows_f32(float* out, const int64_t* idx, const float* v, i64 n, i64 c) {
    scatter_add_rows(out, idx, v, n, c);
}
MG_API void mg_scatter_add_rows_f64(double* out, const int64_t* idx, const double* v, i64 n, i64 c) {
    scatter_add_rows(out, idx, v, n, c);
}
MG_API void mg_adam_f32(float* w, const float* g, float* m, float* v, i64 n, int mode, double decay, double wd,
                        double b1, double c1, double b2, double c2, double ss, double ib, double eps) {
    adam(w, g, m, v, n, mode, decay, wd, b1, c1, b2, c2, ss, ib, eps);
}
MG_API void mg_adam_f64(double* w, const double* g, double* m, double* v, i64 n, int mode, double decay, double wd,
                        double b1, double c1, double b2, double c2, double ss, double ib, double eps) {
    adam(w, g, m, v, n, mode, decay, wd, b1, c1, b2, c2, ss, ib, eps);
}
