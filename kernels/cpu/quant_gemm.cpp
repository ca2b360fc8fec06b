// Weight-only quantized matmuls for inference (minigrad/nn/quantize.py): y (M, N) = x (M, K) · Wᵀ + b,
// x and y float32, W stored small. Built into the native library by kernels/cpu/native.py with
// -ffp-contract=fast and 512-bit vectors.
//
//   q8     W int8 (N, K), s float32 (N, G), G = ceil(K / group): W[n, k] = q[n, k] · s[n, k / group].
//          Dequantize on the fly: 16 int8 -> int32 -> float32 (vpmovsxbd, vcvtdq2ps), then float32
//          FMAs against x; per group, tot += acc · s[n, g]; y = Σ lanes(tot) + b. Activations stay
//          float32, so the only rounding is float32 accumulation (bound: (K + 2)·eps·Σ|x||w|).
//   bf16   W bfloat16 bits as uint16 (N, K), isa 1: a 64-byte load holds 32 weights; (v << 16) and
//          (v & 0xffff0000) are the even and odd ones as exact float32, multiplied by x's even and odd
//          elements (split once per call) with float32 FMAs: the same bound as q8. isa 2 uses
//          AVX512-BF16 vdpbf16ps instead: x is rounded to bfloat16 once per call and the instruction
//          sums pairs of products (an extra 2^-9 relative error per activation: opt-in, measured).
//   q8a8   W as q8, x quantized per row on the fly: sx = max|x| / 127, xq = rint(x / sx) in int8.
//          The dot products are exact int32 sums: VNNI vpdpbusd multiplies unsigned bytes by signed
//          bytes, so it runs on xq + 128 and subtracts 128 · Σ_k q[n, k] (wsum (N, G), from the
//          caller); y = sx · Σ_g s[n, g] · float(acc_g) + b. Integer accumulation is exact while
//          group · 255 · 127 < 2^31 (minigrad.nn.quantize refuses larger groups).
//   q8x24  W as q8, x rounded per row to 24-bit fixed point on its own range, so that VNNI's exact
//          integer dot products do the work: M = max|x|, d = 2M / (2^24 - 1), X[k] = round((x[k] + M) / d)
//          in [0, 2^24 - 1], |x[k] - (d X[k] - M)| <= d / 2 ~ M 2^-24. X's bytes D2 D1 D0 (X = D2 2^16 +
//          D1 2^8 + D0) are unsigned, as vpdpbusd wants: per group three exact int32 sums
//          S_j = Σ_k D_j[k] q[n, k] (exact while group · 255 · 127 < 2^31), then in double (exact:
//          |Σ_k X[k] q[n, k]| < 2^24 · 127 · K < 2^53) y = Σ_g s[n, g] (d (S2 2^16 + S1 2^8 + S0) - M wsum[n, g])
//          + b, rounded once to float32. Three vpdpbusd per 64 weights against twelve convert and FMA
//          instructions (measured with quant_bench: 1.3x the q8 FMA path on one core from L3, 1.1-1.2x
//          on two cores from memory, where the wait for memory dominates). The price: an absolute
//          activation error of M 2^-24 instead of float32's relative one (an entry far below the
//          row's largest keeps fewer bits); the tests bound both.
//   f32    W float32 (N, K): the q8 tiles with a plain load (a decode step's float32 GEMVs, so the
//          whole step runs on this pool: see mg_f32_matmul).
//   decode attention (mg_decode_attention, models/decode.py): one query per head against the KV
//          cache, softmax(scale · q Kᵀ) V, float32 throughout; heads shared out over the same pool.
//
// isa: 0 = portable loops (no intrinsics; -march=native may still vectorise them), 1 = AVX-512,
// 2 = AVX-512 plus VNNI (q8a8, q8x24) or BF16 (bf16). The caller asks mg_quant_isa() what this build
// and this CPU support. Register tiles: 4 weight rows x up to 3 (q8), 2 (bf16) or 4 (q8a8) rows of x,
// so each weight byte is loaded once per call for M <= 3 and converted once per x tile; q8x24 takes
// one x row at a time (three accumulators per weight row), re-reading the 4 rows from L1 per x row. Weight rows
// are prefetched PF bytes ahead. Output rows are shared out in runs of consecutive rows (guided:
// half, a quarter, ... of W, multiples of 4 rows) to `nthreads` threads of a persistent pool (each
// row of W is read once, by one thread; x is shared and read-only); small problems run on the
// calling thread. Every array is C-contiguous; sizes are
// int64. Deterministic: each y element is computed by one thread in a fixed order, whatever nthreads.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

#include "vecmath.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define MG_Q_AVX512 1
#endif

typedef int64_t i64;

namespace {
// Software prefetch distance along each weight row (bytes). Rows are short (768 B of int8 at D=768)
// and read four at a time, which the hardware prefetcher follows poorly: one thread read the
// 768x50257 int8 head at 4.4 GB/s without it and 13.5 GB/s with 6-12 KB (quant_bench, cold).
constexpr i64 PF = 8192;

struct Args {
    const float* x;
    const void* w;
    const float* s;       // q8: (N, G) scales; bf16: unused
    const int32_t* wsum;  // q8a8: (N, G) Σ_k q[n, k] per group
    const float* b;       // (N,) or null
    float* y;
    i64 M, N, K, group, G;
    const void* xq;       // q8a8: quantized x (M, Kp) uint8 (xq + 128); bf16 isa 2: x as bf16 (M, Kp)
    const float* xs;      // q8a8: per-row scale of x (M,)
    i64 Kp;               // row stride of xq (or of xe/xo)
    const float* xe;      // bf16 isa 1: x at even k of each 32-chunk (M, Kp), Kp = K / 32 · 16
    const float* xo;      //   ... and at odd k
    const double* xd;     // q8x24: (d, M) per row of x (M, 2)
};

// ---------------------------------------------------------------- portable
void q8_rows_portable(const Args& a, i64 n0, i64 n1) {
    const int8_t* w = (const int8_t*)a.w;
    for (i64 n = n0; n < n1; ++n)
        for (i64 m = 0; m < a.M; ++m) {
            const float* x = a.x + m * a.K;
            const int8_t* wr = w + n * a.K;
            float tot = 0.0f;
            for (i64 g = 0; g < a.G; ++g) {
                i64 k0 = g * a.group, k1 = k0 + a.group < a.K ? k0 + a.group : a.K;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (i64 k = k0; k < k1; ++k) acc += x[k] * (float)wr[k];
                tot += acc * a.s[n * a.G + g];
            }
            a.y[m * a.N + n] = tot + (a.b ? a.b[n] : 0.0f);
        }
}

void f32_rows_portable(const Args& a, i64 n0, i64 n1) {
    const float* w = (const float*)a.w;
    for (i64 n = n0; n < n1; ++n)
        for (i64 m = 0; m < a.M; ++m) {
            const float* x = a.x + m * a.K;
            const float* wr = w + n * a.K;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (i64 k = 0; k < a.K; ++k) acc += x[k] * wr[k];
            a.y[m * a.N + n] = acc + (a.b ? a.b[n] : 0.0f);
        }
}

inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

void bf16_rows_portable(const Args& a, i64 n0, i64 n1) {
    const uint16_t* w = (const uint16_t*)a.w;
    for (i64 n = n0; n < n1; ++n)
        for (i64 m = 0; m < a.M; ++m) {
            const float* x = a.x + m * a.K;
            const uint16_t* wr = w + n * a.K;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (i64 k = 0; k < a.K; ++k) acc += x[k] * bf16_to_f32(wr[k]);
            a.y[m * a.N + n] = acc + (a.b ? a.b[n] : 0.0f);
        }
}

void q8a8_rows_portable(const Args& a, i64 n0, i64 n1) {
    const int8_t* w = (const int8_t*)a.w;
    const uint8_t* xq = (const uint8_t*)a.xq;
    for (i64 n = n0; n < n1; ++n)
        for (i64 m = 0; m < a.M; ++m) {
            const uint8_t* xr = xq + m * a.Kp;
            const int8_t* wr = w + n * a.K;
            float tot = 0.0f;
            for (i64 g = 0; g < a.G; ++g) {
                i64 k0 = g * a.group, k1 = k0 + a.group < a.K ? k0 + a.group : a.K;
                int32_t acc = 0;
#pragma omp simd reduction(+ : acc)
                for (i64 k = k0; k < k1; ++k) acc += ((int32_t)xr[k] - 128) * (int32_t)wr[k];
                tot += a.s[n * a.G + g] * (float)acc;
            }
            a.y[m * a.N + n] = a.xs[m] * tot + (a.b ? a.b[n] : 0.0f);
        }
}

// x row -> xq + 128 (uint8, padded with 128 = zero to Kp), returns sx. Shared by both q8a8 paths,
// so the quantized activations are the same bytes whichever path runs.
float quantize_row(const float* x, i64 K, uint8_t* out, i64 Kp) {
    float amax = 0.0f;
    for (i64 k = 0; k < K; ++k) amax = std::fabs(x[k]) > amax ? std::fabs(x[k]) : amax;
    float sx = amax / 127.0f;
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (i64 k = 0; k < K; ++k) {
        float q = std::nearbyint(x[k] * inv);
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        out[k] = (uint8_t)((int32_t)q + 128);
    }
    for (i64 k = K; k < Kp; ++k) out[k] = 128;
    return sx;
}

#ifdef MG_Q_AVX512
// ---------------------------------------------------------------- AVX-512
inline __mmask16 tail16(i64 n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

// A weight type for tile<>: 16 weights at k as float32 lanes, and the row pointer. STEP: weights per
// 64-byte line (one prefetch each).
struct LoadQ8 {
    static constexpr i64 STEP = 64;
    static __m512 full(const void* p, i64 k) {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)((const int8_t*)p + k))));
    }
    static __m512 part(const void* p, i64 k, __mmask16 m) {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, (const int8_t*)p + k)));
    }
    static const void* row(const void* w, i64 n, i64 K) { return (const int8_t*)w + n * K; }
};

struct LoadF32 {
    static constexpr i64 STEP = 16;
    static __m512 full(const void* p, i64 k) { return _mm512_loadu_ps((const float*)p + k); }
    static __m512 part(const void* p, i64 k, __mmask16 m) { return _mm512_maskz_loadu_ps(m, (const float*)p + k); }
    static const void* row(const void* w, i64 n, i64 K) { return (const float*)w + n * K; }
};

// R rows of W (from n) against MB rows of x (from m): y[m + j, n + r]. s null means scale 1 (bf16).
template <class L, int R, int MB>
void tile(const Args& a, i64 n, i64 m) {
    const void* wr[R];
    for (int r = 0; r < R; ++r) wr[r] = L::row(a.w, n + r, a.K);
    const float* xr[MB];
    for (int j = 0; j < MB; ++j) xr[j] = a.x + (m + j) * a.K;
    __m512 tot[R][MB];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < MB; ++j) tot[r][j] = _mm512_setzero_ps();
    for (i64 g = 0; g < a.G; ++g) {
        i64 k0 = g * a.group, k1 = k0 + a.group < a.K ? k0 + a.group : a.K;
        __m512 acc[R][MB];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < MB; ++j) acc[r][j] = _mm512_setzero_ps();
        i64 k = k0;
        for (; k + 16 <= k1; k += 16) {
            __m512 xv[MB];
            for (int j = 0; j < MB; ++j) xv[j] = _mm512_loadu_ps(xr[j] + k);
            if (k % L::STEP == 0)
                for (int r = 0; r < R; ++r) _mm_prefetch((const char*)wr[r] + k * (64 / L::STEP) + PF, _MM_HINT_T0);
            for (int r = 0; r < R; ++r) {
                __m512 wv = L::full(wr[r], k);
                for (int j = 0; j < MB; ++j) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);
            }
        }
        if (k < k1) {
            __mmask16 mk = tail16(k1 - k);
            __m512 xv[MB];
            for (int j = 0; j < MB; ++j) xv[j] = _mm512_maskz_loadu_ps(mk, xr[j] + k);
            for (int r = 0; r < R; ++r) {
                __m512 wv = L::part(wr[r], k, mk);
                for (int j = 0; j < MB; ++j) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);
            }
        }
        if (a.s) {
            for (int r = 0; r < R; ++r) {
                __m512 sv = _mm512_set1_ps(a.s[(n + r) * a.G + g]);
                for (int j = 0; j < MB; ++j) tot[r][j] = _mm512_fmadd_ps(acc[r][j], sv, tot[r][j]);
            }
        } else {
            for (int r = 0; r < R; ++r)
                for (int j = 0; j < MB; ++j) tot[r][j] = _mm512_add_ps(acc[r][j], tot[r][j]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < MB; ++j)
            a.y[(m + j) * a.N + n + r] = _mm512_reduce_add_ps(tot[r][j]) + (a.b ? a.b[n + r] : 0.0f);
}

// Rows [n0, n1) of the output, all M rows of x: blocks of 4 weight rows (read from memory once,
// then from L1 for each x row); x rows in threes (register tile 4 x 3 = 12 accumulators + 12 totals).
template <class L>
void rows_avx512(const Args& a, i64 n0, i64 n1) {
    i64 n = n0;
    for (; n + 4 <= n1; n += 4) {
        i64 m = 0;
        for (; m + 3 <= a.M; m += 3) tile<L, 4, 3>(a, n, m);
        for (; m < a.M; ++m) tile<L, 4, 1>(a, n, m);
    }
    for (; n < n1; ++n) {
        i64 m = 0;
        for (; m + 3 <= a.M; m += 3) tile<L, 1, 3>(a, n, m);
        for (; m < a.M; ++m) tile<L, 1, 1>(a, n, m);
    }
}
// bf16, isa 1: a 64-byte load holds 32 weights as 16 dwords, weight 2i in the low half of dword i
// and 2i + 1 in the high half; (v << 16) and (v & 0xffff0000) are both exact float32 vectors, so
// x is split once per call into its even and odd elements of each 32-chunk (xe, xo) and each
// chunk costs one load, a shift, an and, and two FMAs per weight row. The k tail past the last
// full chunk is summed in scalar.
template <int R, int MB>
void bf16_tile(const Args& a, i64 n, i64 m) {
    const uint16_t* w = (const uint16_t*)a.w;
    const __m512i himask = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 ae[R][MB], ao[R][MB];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < MB; ++j) ae[r][j] = ao[r][j] = _mm512_setzero_ps();
    const i64 chunks = a.K / 32;
    for (i64 c = 0; c < chunks; ++c) {
        __m512 xe[MB], xo[MB];
        for (int j = 0; j < MB; ++j) {
            xe[j] = _mm512_loadu_ps(a.xe + (m + j) * a.Kp + 16 * c);
            xo[j] = _mm512_loadu_ps(a.xo + (m + j) * a.Kp + 16 * c);
        }
        for (int r = 0; r < R; ++r) {
            _mm_prefetch((const char*)(w + (n + r) * a.K + 32 * c) + PF, _MM_HINT_T0);
            __m512i v = _mm512_loadu_si512(w + (n + r) * a.K + 32 * c);
            __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(v, himask));
            for (int j = 0; j < MB; ++j) {
                ae[r][j] = _mm512_fmadd_ps(lo, xe[j], ae[r][j]);
                ao[r][j] = _mm512_fmadd_ps(hi, xo[j], ao[r][j]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < MB; ++j) {
            float t = _mm512_reduce_add_ps(_mm512_add_ps(ae[r][j], ao[r][j]));
            const float* x = a.x + (m + j) * a.K;
            const uint16_t* wr = w + (n + r) * a.K;
            for (i64 k = chunks * 32; k < a.K; ++k) t += x[k] * bf16_to_f32(wr[k]);
            a.y[(m + j) * a.N + n + r] = t + (a.b ? a.b[n + r] : 0.0f);
        }
}

void bf16_rows_avx512(const Args& a, i64 n0, i64 n1) {
    i64 n = n0;
    for (; n + 4 <= n1; n += 4) {
        i64 m = 0;
        for (; m + 2 <= a.M; m += 2) bf16_tile<4, 2>(a, n, m);
        for (; m < a.M; ++m) bf16_tile<4, 1>(a, n, m);
    }
    for (; n < n1; ++n)
        for (i64 m = 0; m < a.M; ++m) bf16_tile<1, 1>(a, n, m);
}
#endif

#if defined(MG_Q_AVX512) && defined(__AVX512BF16__)
// vdpbf16ps: 32 bf16 products per instruction, summed in pairs into 16 float32 lanes. x (M, Kp)
// already bfloat16 (rounded to nearest even by vcvtne2ps2bf16, zero-padded to Kp, a multiple of 32).
template <int R>
void bf16dp_tile(const Args& a, i64 n, i64 m) {
    const uint16_t* w = (const uint16_t*)a.w;
    const uint16_t* xr = (const uint16_t*)a.xq + m * a.Kp;
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    i64 k = 0;
    for (; k + 32 <= a.K; k += 32) {
        __m512i xv = _mm512_loadu_si512(xr + k);
        for (int r = 0; r < R; ++r) {
            _mm_prefetch((const char*)(w + (n + r) * a.K + k) + PF, _MM_HINT_T0);
            __m512i wv = _mm512_loadu_si512(w + (n + r) * a.K + k);
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)xv, (__m512bh)wv);
        }
    }
    if (k < a.K) {
        i64 t = a.K - k;
        __mmask32 mk = t >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << t) - 1);
        __m512i xv = _mm512_maskz_loadu_epi16(mk, xr + k);
        for (int r = 0; r < R; ++r) {
            __m512i wv = _mm512_maskz_loadu_epi16(mk, w + (n + r) * a.K + k);
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)xv, (__m512bh)wv);
        }
    }
    for (int r = 0; r < R; ++r) a.y[m * a.N + n + r] = _mm512_reduce_add_ps(acc[r]) + (a.b ? a.b[n + r] : 0.0f);
}

void bf16dp_rows(const Args& a, i64 n0, i64 n1) {
    i64 n = n0;
    for (; n + 4 <= n1; n += 4)
        for (i64 m = 0; m < a.M; ++m) bf16dp_tile<4>(a, n, m);
    for (; n < n1; ++n)
        for (i64 m = 0; m < a.M; ++m) bf16dp_tile<1>(a, n, m);
}
#endif

#if defined(MG_Q_AVX512) && defined(__AVX512VNNI__)
// vpdpbusd: 64 byte products per instruction, summed in fours into 16 int32 lanes (exact).
// Tile: R weight rows x MB x rows; per group, an int32 accumulator per (r, j), then the float sum.
template <int R, int MB>
void q8a8_tile(const Args& a, i64 n, i64 m) {
    const int8_t* w = (const int8_t*)a.w;
    const uint8_t* xq = (const uint8_t*)a.xq;
    float tot[R][MB] = {};
    for (i64 g = 0; g < a.G; ++g) {
        i64 k0 = g * a.group, k1 = k0 + a.group < a.K ? k0 + a.group : a.K;
        __m512i acc[R][MB];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < MB; ++j) acc[r][j] = _mm512_setzero_si512();
        for (i64 k = k0; k < k1; k += 64) {
            i64 t = k1 - k;
            __mmask64 mk = t >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << t) - 1);
            __m512i xv[MB];
            // masked like the weights: a group that ends inside a 64-byte step must not read past the row
            for (int j = 0; j < MB; ++j) xv[j] = _mm512_maskz_loadu_epi8(mk, xq + (m + j) * a.Kp + k);
            for (int r = 0; r < R; ++r) {
                _mm_prefetch((const char*)(w + (n + r) * a.K + k) + PF, _MM_HINT_T0);
                __m512i wv = _mm512_maskz_loadu_epi8(mk, w + (n + r) * a.K + k);   // outside [k, k1): 0
                for (int j = 0; j < MB; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], xv[j], wv);
            }
        }
        for (int r = 0; r < R; ++r) {
            int32_t off = 128 * a.wsum[(n + r) * a.G + g];
            float sg = a.s[(n + r) * a.G + g];
            for (int j = 0; j < MB; ++j) tot[r][j] += sg * (float)(_mm512_reduce_add_epi32(acc[r][j]) - off);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < MB; ++j)
            a.y[(m + j) * a.N + n + r] = a.xs[m + j] * tot[r][j] + (a.b ? a.b[n + r] : 0.0f);
}

void q8a8_rows_vnni(const Args& a, i64 n0, i64 n1) {
    i64 n = n0;
    for (; n + 4 <= n1; n += 4) {
        i64 m = 0;
        for (; m + 4 <= a.M; m += 4) q8a8_tile<4, 4>(a, n, m);
        for (; m < a.M; ++m) q8a8_tile<4, 1>(a, n, m);
    }
    for (; n < n1; ++n) {
        i64 m = 0;
        for (; m + 4 <= a.M; m += 4) q8a8_tile<1, 4>(a, n, m);
        for (; m < a.M; ++m) q8a8_tile<1, 1>(a, n, m);
    }
}
#endif

#if defined(MG_Q_AVX512) && defined(__AVX512VNNI__)
// q8x24: R weight rows against one x row's three digit rows (xq: (M, 3, Kp) uint8, D0 D1 D2).
template <int R>
void q8x24_tile(const Args& a, i64 n, i64 m) {
    const int8_t* w = (const int8_t*)a.w;
    const uint8_t* d0 = (const uint8_t*)a.xq + m * 3 * a.Kp;
    const uint8_t* d1 = d0 + a.Kp;
    const uint8_t* d2 = d1 + a.Kp;
    const double step = a.xd[2 * m], top = a.xd[2 * m + 1];     // d and M of this x row
    double tot[R] = {};
    for (i64 g = 0; g < a.G; ++g) {
        i64 k0 = g * a.group, k1 = k0 + a.group < a.K ? k0 + a.group : a.K;
        __m512i acc[R][3];
        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = acc[r][2] = _mm512_setzero_si512();
        for (i64 k = k0; k < k1; k += 64) {
            i64 t = k1 - k;
            __mmask64 mk = t >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << t) - 1);
            __m512i x0 = _mm512_maskz_loadu_epi8(mk, d0 + k), x1 = _mm512_maskz_loadu_epi8(mk, d1 + k),
                    x2 = _mm512_maskz_loadu_epi8(mk, d2 + k);                  // not past the row (see q8a8)
            for (int r = 0; r < R; ++r) {
                _mm_prefetch((const char*)(w + (n + r) * a.K + k) + PF, _MM_HINT_T0);
                __m512i wv = _mm512_maskz_loadu_epi8(mk, w + (n + r) * a.K + k);   // outside [k, k1): 0
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], x0, wv);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], x1, wv);
                acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], x2, wv);
            }
        }
        for (int r = 0; r < R; ++r) {
            double sx = 65536.0 * _mm512_reduce_add_epi32(acc[r][2]) + 256.0 * _mm512_reduce_add_epi32(acc[r][1]) +
                        (double)_mm512_reduce_add_epi32(acc[r][0]);
            tot[r] += (double)a.s[(n + r) * a.G + g] * (step * sx - top * a.wsum[(n + r) * a.G + g]);
        }
    }
    for (int r = 0; r < R; ++r) a.y[m * a.N + n + r] = (float)(tot[r] + (a.b ? (double)a.b[n + r] : 0.0));
}

void q8x24_rows_vnni(const Args& a, i64 n0, i64 n1) {
    i64 n = n0;
    for (; n + 4 <= n1; n += 4)
        for (i64 m = 0; m < a.M; ++m) q8x24_tile<4>(a, n, m);
    for (; n < n1; ++n)
        for (i64 m = 0; m < a.M; ++m) q8x24_tile<1>(a, n, m);
}
#endif

// The q8x24 reference: the same digits and the same double arithmetic, one product at a time.
void q8x24_rows_portable(const Args& a, i64 n0, i64 n1) {
    const int8_t* w = (const int8_t*)a.w;
    for (i64 n = n0; n < n1; ++n)
        for (i64 m = 0; m < a.M; ++m) {
            const uint8_t* d0 = (const uint8_t*)a.xq + m * 3 * a.Kp;
            double tot = 0.0;
            for (i64 g = 0; g < a.G; ++g) {
                i64 k0 = g * a.group, k1 = k0 + a.group < a.K ? k0 + a.group : a.K;
                int32_t S[3] = {0, 0, 0};
                for (int j = 0; j < 3; ++j)
                    for (i64 k = k0; k < k1; ++k) S[j] += (int32_t)d0[j * a.Kp + k] * (int32_t)w[n * a.K + k];
                double sx = 65536.0 * S[2] + 256.0 * S[1] + (double)S[0];
                tot += (double)a.s[n * a.G + g] * (a.xd[2 * m] * sx - a.xd[2 * m + 1] * a.wsum[n * a.G + g]);
            }
            a.y[m * a.N + n] = (float)(tot + (a.b ? (double)a.b[n] : 0.0));
        }
}

// x row (K) -> its three digit rows D0, D1, D2 (each Kp bytes, zero past K) and (d, M).
void digits_row(const float* x, i64 K, uint8_t* out, i64 Kp, double* dm) {
    double top = 0.0;
    for (i64 k = 0; k < K; ++k) top = std::fabs((double)x[k]) > top ? std::fabs((double)x[k]) : top;
    const double full = 16777215.0;                          // 2^24 - 1
    double step = top > 0.0 ? 2.0 * top / full : 1.0;
    double inv = top > 0.0 ? full / (2.0 * top) : 0.0;
    for (i64 k = 0; k < K; ++k) {
        double v = ((double)x[k] + top) * inv + 0.5;          // >= 0.5: floor(v) rounds to nearest
        int64_t X = (int64_t)v;
        X = X > 16777215 ? 16777215 : X;
        out[k] = (uint8_t)(X & 0xFF);
        out[Kp + k] = (uint8_t)((X >> 8) & 0xFF);
        out[2 * Kp + k] = (uint8_t)(X >> 16);
    }
    for (int j = 0; j < 3; ++j)
        for (i64 k = K; k < Kp; ++k) out[j * Kp + k] = 0;
    dm[0] = step;
    dm[1] = top;
}

typedef void (*RowsFn)(const Args&, i64, i64);
typedef void (*TaskFn)(const void* ctx, i64 r0, i64 r1);   // what the pool runs: rows [r0, r1) of a job

// A persistent pool that shares out rows [0, N) dynamically: one 64-bit counter holds
// (generation << 32 | next row); the caller and the workers claim rows from it with a
// compare-and-swap, and the caller returns when the rows done reach N. Claims are guided (as
// OpenMP's schedule(guided)): a claim takes the rows left / nt, rounded down to a multiple of
// `grain`, but at least `chunk` rows. With 2 threads the first claim takes half of W, the second a
// quarter, then eighths..., so each thread streams long runs of consecutive rows, which the
// prefetchers follow; fixed chunks of 64 KB handed out alternately ran the GPT-2 decode GEMVs
// (0.6-2.4 MB of int8) at 17-22 GB/s, halves at 22-31 (quant_bench --arena). The caller works from
// the start, so a worker that is slow to wake or has no core (a shared 2-core machine: another
// process holds it) costs at most its claimed rows: the caller claims the rest. A static split
// made the caller wait for such a worker (measured: gpt2/512 int8 decode 17.6-21 ms with 2 threads
// against 16.1 ms with 1; the GEMVs alone summed to 12.6 ms). Workers spin SPIN_US for the next
// call (decode issues dozens of GEMVs per token back to back), then sleep on a condition variable.
// A job's description (fn, args, N, chunk, grain, nt) lives in a ring of 4 slots indexed by
// generation and is written before the counter is published; a worker reads the slot of the
// generation it saw and only runs it if its CAS on that same generation succeeds, so a stale worker
// never runs another call's rows, and the caller's Args stay alive until every claimed row is done.
// One call at a time (a mutex); a forked child starts its own workers. Deterministic: a row's
// result does not depend on which thread computes it.
constexpr i64 CHUNK_BYTES = 64 * 1024;
// How long an idle worker spins before it sleeps. A decode step's gaps between GEMVs (the
// attention, LayerNorms) last up to ~0.3 ms at a 512 context; waking a sleeping worker (a futex
// and, in a VM, an interrupt to its core) cost ~50 µs per call, more than the 768x768 GEMV itself.
constexpr int SPIN_US = 1000;

class Pool {
  public:
    // fn(ctx, r0, r1) over rows [0, N) on the caller and nt - 1 workers: guided claims of at least
    // `chunk` rows, each a multiple of `grain` rows except the last.
    void run(TaskFn fn, const void* ctx, i64 N, i64 nt, i64 chunk, i64 grain = 1) {
        std::lock_guard<std::mutex> one(call_mu_);
        if (pid_ != getpid()) {            // fresh process (or a fork: the parent's workers are not here)
            pid_ = getpid();
            workers_ = 0;
            ctr_.store(0);
            gen_ = 0;
        }
        while (workers_ < nt - 1) {
            workers_++;
            std::thread([this, c = ctr_.load()] { work(c >> 32); }).detach();
        }
        chunk = chunk < 1 ? 1 : chunk;
        uint64_t g = ++gen_ & 0xFFFFFFFFu;
        Job& j = jobs_[g & 3];
        j.fn = fn;
        j.ctx = ctx;
        j.N = N;
        j.chunk = chunk;
        j.grain = grain < 1 ? 1 : grain;
        j.nt = nt < 1 ? 1 : nt;
        done_.store(0, std::memory_order_relaxed);
        ctr_.store(g << 32, std::memory_order_release);
        {
            std::lock_guard<std::mutex> lk(mu_);   // a worker between its check and its wait sees ctr_ now
        }
        if (sleepers_.load(std::memory_order_acquire) > 0) cv_.notify_all();
        help(g);
        for (int spin = 0; done_.load(std::memory_order_acquire) < N; ++spin) {
            if (spin < 4000) pause();
            else std::this_thread::yield();   // a worker holding a claimed chunk without a core: give it ours
        }
    }

  private:
    struct Job {
        TaskFn fn;
        const void* ctx;
        i64 N, chunk, grain, nt;
    };

    static void pause() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#else
        std::this_thread::yield();
#endif
    }

    // Claims and runs chunks of generation `g` until none is left (or a newer generation started).
    void help(uint64_t g) {
        uint64_t v = ctr_.load(std::memory_order_acquire);
        for (;;) {
            if ((v >> 32) != g) return;
            const Job& j = jobs_[g & 3];
            i64 r = (i64)(v & 0xFFFFFFFFu), N = j.N;
            if (r >= N) return;
            i64 take = (N - r) / j.nt / j.grain * j.grain;    // guided: a share of what is left
            take = take > j.chunk ? take : j.chunk;
            TaskFn fn = j.fn;
            const void* ctx = j.ctx;
            if (!ctr_.compare_exchange_weak(v, v + (uint64_t)take, std::memory_order_acq_rel,
                                            std::memory_order_acquire))
                continue;                     // v reloaded: another claim (or a new generation) won
            i64 r1 = r + take < N ? r + take : N;
            fn(ctx, r, r1);
            done_.fetch_add(r1 - r, std::memory_order_release);
            v = ctr_.load(std::memory_order_acquire);
        }
    }

    void work(uint64_t seen) {
        for (;;) {
            uint64_t g;
            auto t0 = std::chrono::steady_clock::now();
            for (int spin = 0; (g = ctr_.load(std::memory_order_acquire) >> 32) == seen; ++spin) {
                if (spin < 256) {
                    pause();
                } else if ((spin & 15) != 0 || std::chrono::steady_clock::now() - t0 < std::chrono::microseconds(SPIN_US)) {
                    std::this_thread::yield();   // spin politely: another process wanting this core gets it
                } else {
                    std::unique_lock<std::mutex> lk(mu_);
                    sleepers_.fetch_add(1, std::memory_order_acq_rel);
                    cv_.wait(lk, [&] { return (ctr_.load(std::memory_order_acquire) >> 32) != seen; });
                    sleepers_.fetch_sub(1, std::memory_order_acq_rel);
                }
            }
            seen = g;
            help(g);
        }
    }

    std::mutex call_mu_, mu_;
    std::condition_variable cv_;
    std::atomic<uint64_t> ctr_{0};
    std::atomic<i64> done_{0};
    std::atomic<int> sleepers_{0};
    Job jobs_[4] = {};
    uint64_t gen_ = 0;
    int workers_ = 0;
    pid_t pid_ = 0;
};

Pool& pool() {
    static Pool* p = new Pool;   // never destroyed: detached workers may still be waiting at exit
    return *p;
}

struct RowsTask {
    RowsFn fn;
    const Args* a;
};
void rows_task(const void* ctx, i64 r0, i64 r1) {
    const RowsTask& t = *(const RowsTask*)ctx;
    t.fn(*t.a, r0, r1);
}

// Guided claims of multiples of 4 rows (the register tile), at least ~CHUNK_BYTES of W each.
void run_rows(RowsFn fn, const Args& a, int nthreads, i64 wbytes) {
    i64 nt = nthreads < 1 ? 1 : nthreads;
    i64 max_by_size = wbytes / (256 * 1024);
    if (nt > max_by_size) nt = max_by_size < 1 ? 1 : max_by_size;
    i64 blocks = (a.N + 3) / 4;
    if (nt > blocks) nt = blocks;
    if (nt > 64) nt = 64;
    if (nt <= 1 || a.N >= ((i64)1 << 31)) {
        fn(a, 0, a.N);
        return;
    }
    i64 row_bytes = wbytes / a.N > 0 ? wbytes / a.N : 1;
    i64 chunk = CHUNK_BYTES / row_bytes / 4 * 4;
    RowsTask t{fn, &a};
    pool().run(rows_task, &t, a.N, nt, chunk < 4 ? 4 : chunk, 4);
}

// ---------------------------------------------------------------- decode attention
// One query per (b, h) against tk cached keys (a decode step): rows r = b·nh + h of
//   s[t] = scale · q·K[r, t]  (t < tk),  p = softmax(s),  out[r] = Σ_t p[t] V[r, t]
// q (B, nh, hs) at row stride qs per b (a view into qkv); K, V (B·nh, block, hs) cache buffers;
// out (B·nh, hs). Each head streams its K and V once (2·tk·hs·4 bytes); heads are shared out over
// the pool (guided claims of whole heads), which the cold cache at a long context needs: one core alone reads
// memory at about half the machine's bandwidth. The exp is vecmath.h's exp32, as in the softmax loop.
struct AttnArgs {
    const float* q;
    i64 qs;
    const float* K;
    const float* V;
    float* out;
    i64 nh, tk, hs, block;
    float scale;
    int isa;              // 1: the AVX-512 loop where hs = 64 and the CPU has it; 0: the portable loop
};

#ifdef MG_Q_AVX512
// hs = 16·HV (64 at GPT-2 size): q and the output row stay in HV registers each; scores four keys
// at a time (independent chains), the p·V sum in registers. K and V rows are prefetched PFA bytes
// ahead: as with the weight rows, the hardware prefetcher alone left each core well short of its
// share of the bandwidth.
constexpr i64 PFA = 4096;
template <int HV>
void attn_head_avx512(const AttnArgs& a, const float* q, const float* Kh, const float* Vh, float* o, float* s) {
    __m512 qv[HV];
    for (int v = 0; v < HV; ++v) qv[v] = _mm512_loadu_ps(q + 16 * v);
    const __m512 sc = _mm512_set1_ps(a.scale);
    __m512 mv = _mm512_set1_ps(-INFINITY);
    i64 t = 0;
    for (; t + 16 <= a.tk; t += 16) {
        float d[16];
        for (int u = 0; u < 16; u += 4) {
            __m512 acc[4];
            for (int j = 0; j < 4; ++j) {
                const float* kr = Kh + (t + u + j) * 16 * HV;
                for (int v = 0; v < HV; ++v) _mm_prefetch((const char*)(kr + 16 * v) + PFA, _MM_HINT_T0);
                acc[j] = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kr));
                for (int v = 1; v < HV; ++v) acc[j] = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(kr + 16 * v), acc[j]);
            }
            for (int j = 0; j < 4; ++j) d[u + j] = _mm512_reduce_add_ps(acc[j]);
        }
        __m512 dv = _mm512_mul_ps(_mm512_loadu_ps(d), sc);
        _mm512_storeu_ps(s + t, dv);
        mv = _mm512_max_ps(mv, dv);
    }
    float m = _mm512_reduce_max_ps(mv);
    for (; t < a.tk; ++t) {
        const float* kr = Kh + t * 16 * HV;
        __m512 acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kr));
        for (int v = 1; v < HV; ++v) acc = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(kr + 16 * v), acc);
        s[t] = _mm512_reduce_add_ps(acc) * a.scale;
        m = s[t] > m ? s[t] : m;
    }
    float den = 0.0f;
#pragma omp simd reduction(+ : den)
    for (i64 k = 0; k < a.tk; ++k) {
        float e = mg::exp32(s[k] - m);
        s[k] = e;
        den += e;
    }
    __m512 ov[HV];
    for (int v = 0; v < HV; ++v) ov[v] = _mm512_setzero_ps();
    for (t = 0; t < a.tk; ++t) {
        __m512 pv = _mm512_set1_ps(s[t]);
        const float* vr = Vh + t * 16 * HV;
        for (int v = 0; v < HV; ++v) _mm_prefetch((const char*)(vr + 16 * v) + PFA, _MM_HINT_T0);
        for (int v = 0; v < HV; ++v) ov[v] = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vr + 16 * v), ov[v]);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / den);
    for (int v = 0; v < HV; ++v) _mm512_storeu_ps(o + 16 * v, _mm512_mul_ps(ov[v], inv));
}
#endif

void attn_rows(const void* ctx, i64 r0, i64 r1) {
    const AttnArgs& a = *(const AttnArgs*)ctx;
    std::vector<float> s(a.tk);
    const i64 hs = a.hs;
#ifdef MG_Q_AVX512
    if (a.isa == 1 && hs == 64 && __builtin_cpu_supports("avx512f")) {
        for (i64 r = r0; r < r1; ++r)
            attn_head_avx512<4>(a, a.q + (r / a.nh) * a.qs + (r % a.nh) * hs, a.K + r * a.block * hs,
                                a.V + r * a.block * hs, a.out + r * hs, s.data());
        return;
    }
#endif
    for (i64 r = r0; r < r1; ++r) {
        const float* q = a.q + (r / a.nh) * a.qs + (r % a.nh) * hs;
        const float* Kh = a.K + r * a.block * hs;
        const float* Vh = a.V + r * a.block * hs;
        float* o = a.out + r * hs;
        float m = -INFINITY;
        for (i64 t = 0; t < a.tk; ++t) {
            const float* kr = Kh + t * hs;
            float d = 0.0f;
#pragma omp simd reduction(+ : d)
            for (i64 i = 0; i < hs; ++i) d += q[i] * kr[i];
            d *= a.scale;
            s[t] = d;
            m = d > m ? d : m;
        }
        float den = 0.0f;
#pragma omp simd reduction(+ : den)
        for (i64 t = 0; t < a.tk; ++t) {
            float e = mg::exp32(s[t] - m);
            s[t] = e;
            den += e;
        }
        const float inv = 1.0f / den;
        for (i64 i = 0; i < hs; ++i) o[i] = 0.0f;
        for (i64 t = 0; t < a.tk; ++t) {
            const float p = s[t] * inv;
            const float* vr = Vh + t * hs;
#pragma omp simd
            for (i64 i = 0; i < hs; ++i) o[i] += p * vr[i];
        }
    }
}

}  // namespace

#define MG_API extern "C" __attribute__((visibility("default")))

// Bit 0: AVX-512 (F, BW) compiled in and present; bit 1: VNNI; bit 2: AVX512-BF16.
MG_API int mg_quant_isa() {
    int isa = 0;
#ifdef MG_Q_AVX512
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        isa |= 1;
#ifdef __AVX512VNNI__
        if (__builtin_cpu_supports("avx512vnni")) isa |= 2;
#endif
#ifdef __AVX512BF16__
        if (__builtin_cpu_supports("avx512bf16")) isa |= 4;
#endif
    }
#endif
    return isa;
}

// isa 0 portable, 1 AVX-512. Returns 0, or -1 if the requested path is not compiled in.
MG_API int mg_q8_matmul(const float* x, const int8_t* w, const float* s, const float* b, float* y, i64 M, i64 N,
                        i64 K, i64 group, int isa, int nthreads) {
    Args a{x, w, s, nullptr, b, y, M, N, K, group, (K + group - 1) / group, nullptr, nullptr, 0, nullptr, nullptr};
    RowsFn fn = q8_rows_portable;
    if (isa == 1) {
#ifdef MG_Q_AVX512
        fn = rows_avx512<LoadQ8>;
#else
        return -1;
#endif
    }
    run_rows(fn, a, nthreads, N * K);
    return 0;
}

// float32 weights on the same pool and tiles (a decode step's GEMVs without BLAS: its threads, still
// spinning after a call, took the second core from this pool's attention). isa 0 portable, 1 AVX-512.
MG_API int mg_f32_matmul(const float* x, const float* w, const float* b, float* y, i64 M, i64 N, i64 K, int isa,
                         int nthreads) {
    Args a{x, w, nullptr, nullptr, b, y, M, N, K, K, 1, nullptr, nullptr, 0, nullptr, nullptr};
    RowsFn fn = f32_rows_portable;
    if (isa == 1) {
#ifdef MG_Q_AVX512
        fn = rows_avx512<LoadF32>;
#else
        return -1;
#endif
    }
    run_rows(fn, a, nthreads, N * K * 4);
    return 0;
}

// isa 0 portable, 1 AVX-512 (exact bf16 -> f32 and f32 FMAs), 2 AVX512-BF16 vdpbf16ps (x rounded to bf16).
MG_API int mg_bf16_matmul(const float* x, const uint16_t* w, const float* b, float* y, i64 M, i64 N, i64 K, int isa,
                          int nthreads) {
    Args a{x, w, nullptr, nullptr, b, y, M, N, K, K, 1, nullptr, nullptr, 0, nullptr, nullptr};
    RowsFn fn = bf16_rows_portable;
    std::vector<uint16_t> xb;
    std::vector<float> xeo;
    if (isa == 1) {
#ifdef MG_Q_AVX512
        a.Kp = K / 32 * 16;
        xeo.resize(2 * M * a.Kp);
        for (i64 m = 0; m < M; ++m)
            for (i64 i = 0; i < a.Kp; ++i) {
                i64 c = i / 16, l = i % 16;
                xeo[m * a.Kp + i] = x[m * K + 32 * c + 2 * l];
                xeo[(M + m) * a.Kp + i] = x[m * K + 32 * c + 2 * l + 1];
            }
        a.xe = xeo.data();
        a.xo = xeo.data() + M * a.Kp;
        fn = bf16_rows_avx512;
#else
        return -1;
#endif
    } else if (isa == 2) {
#if defined(MG_Q_AVX512) && defined(__AVX512BF16__)
        a.Kp = (K + 31) / 32 * 32;
        xb.assign(M * a.Kp, 0);
        for (i64 m = 0; m < M; ++m)
            for (i64 k = 0; k < a.Kp; k += 32) {
                i64 t = K - k;
                __m512 lo = _mm512_maskz_loadu_ps(tail16(t), x + m * K + k);
                __m512 hi = t > 16 ? _mm512_maskz_loadu_ps(tail16(t - 16), x + m * K + k + 16) : _mm512_setzero_ps();
                _mm512_storeu_si512(xb.data() + m * a.Kp + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            }
        a.xq = xb.data();
        fn = bf16dp_rows;
#else
        return -1;
#endif
    }
    run_rows(fn, a, nthreads, N * K * 2);
    return 0;
}

// x quantized per row to int8 (written to xq_out (M, K) int8 and xs_out (M,) for the caller to check),
// then exact int32 dot products. isa 0 portable, 2 VNNI.
MG_API int mg_q8a8_matmul(const float* x, const int8_t* w, const float* s, const int32_t* wsum, const float* b,
                          float* y, i64 M, i64 N, i64 K, i64 group, int isa, int nthreads, int8_t* xq_out,
                          float* xs_out) {
    Args a{x,  w, s, wsum, b, y, M, N, K, group, (K + group - 1) / group, nullptr, xs_out, (K + 63) / 64 * 64,
           nullptr, nullptr};
    std::vector<uint8_t> xq(M * a.Kp);
    for (i64 m = 0; m < M; ++m) {
        xs_out[m] = quantize_row(x + m * K, K, xq.data() + m * a.Kp, a.Kp);
        if (xq_out)
            for (i64 k = 0; k < K; ++k) xq_out[m * K + k] = (int8_t)((int32_t)xq[m * a.Kp + k] - 128);
    }
    a.xq = xq.data();
    RowsFn fn = q8a8_rows_portable;
    if (isa == 2) {
#if defined(MG_Q_AVX512) && defined(__AVX512VNNI__)
        fn = q8a8_rows_vnni;
#else
        return -1;
#endif
    }
    run_rows(fn, a, nthreads, N * K);
    return 0;
}

// x rounded per row to 24-bit fixed point (q8x24 in the header), then exact int32 dot products of its
// three digit rows; wsum int32 (N, G) as for q8a8. isa 0 portable (the same digits and arithmetic),
// 2 VNNI. xd_out (M, 2), if given, receives each row's (d, M) for the caller to check.
MG_API int mg_q8x24_matmul(const float* x, const int8_t* w, const float* s, const int32_t* wsum, const float* b,
                           float* y, i64 M, i64 N, i64 K, i64 group, int isa, int nthreads, double* xd_out) {
    Args a{x,  w, s, wsum, b, y, M, N, K, group, (K + group - 1) / group, nullptr, nullptr, (K + 63) / 64 * 64,
           nullptr, nullptr, nullptr};
    std::vector<uint8_t> xq(M * 3 * a.Kp);
    std::vector<double> xd(2 * M);
    for (i64 m = 0; m < M; ++m) digits_row(x + m * K, K, xq.data() + m * 3 * a.Kp, a.Kp, xd.data() + 2 * m);
    if (xd_out)
        for (i64 i = 0; i < 2 * M; ++i) xd_out[i] = xd[i];
    a.xq = xq.data();
    a.xd = xd.data();
    RowsFn fn = q8x24_rows_portable;
    if (isa == 2) {
#if defined(MG_Q_AVX512) && defined(__AVX512VNNI__)
        fn = q8x24_rows_vnni;
#else
        return -1;
#endif
    }
    run_rows(fn, a, nthreads, N * K);
    return 0;
}

// Decode attention (see attn_rows): q (B, nh, hs) at batch stride qs; K, V (B·nh, block, hs);
// out (B·nh, hs); tk <= block keys. Heads are split over up to nthreads threads when the keys and
// values read pass 512 KB. isa 1: the AVX-512 loop (hs = 64, where compiled in and present), 0: the
// portable loop. Returns 0, or -1 for sizes out of range.
MG_API int mg_decode_attention(const float* q, i64 qs, const float* K, const float* V, float* out, i64 B, i64 nh,
                               i64 tk, i64 hs, i64 block, float scale, int nthreads, int isa) {
    if (B < 1 || nh < 1 || hs < 1 || tk < 1 || tk > block) return -1;
    AttnArgs a{q, qs, K, V, out, nh, tk, hs, block, scale, isa};
    i64 rows = B * nh, nt = nthreads < 1 ? 1 : nthreads;
    if (nt > rows) nt = rows;
    if (nt <= 1 || rows * tk * hs * 8 < 512 * 1024) {
        attn_rows(&a, 0, rows);
        return 0;
    }
    pool().run(attn_rows, &a, rows, nt, 1);
    return 0;
}
