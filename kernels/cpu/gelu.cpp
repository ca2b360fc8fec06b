// Exact GELU and its slope in one pass, for the CPU (built into the native library by
// kernels/cpu/native.py with -ffp-contract=fast and 512-bit vectors: the loop is arithmetic-bound,
// and fused multiply-adds halve it; results stay within a few ulps of minigrad/ops/special.py).
//
//   gelu   x (n) -> y = x Φ(x), slope = dy/dx = Φ(x) + x φ(x) (the backward multiplies by it:
//          cheaper than recomputing it there, measured in the GPT step)
#include <cmath>
#include <cstdint>

#include "vecmath.h"

typedef int64_t i64;

namespace {

// float32: erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), as minigrad/ops/special.py.
// One point: y = x Φ(x) and slope = Φ(x) + x φ(x).
inline void gelu_point(float xi, float& y, float& slope) {
    const float p = 0.3275911f, a1 = 0.254829592f, a2 = -0.284496736f, a3 = 1.421413741f,
                a4 = -1.453152027f, a5 = 1.061405429f;
    const float inv_sqrt2 = 0.70710678118654752f, inv_sqrt_2pi = 0.39894228040143268f;
    float z = std::fabs(xi * inv_sqrt2);
    float t = 1.0f / (1.0f + p * z);
    float q = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))));
    float e = mg::exp32(-(z * z));                 // exp(-x²/2) = sqrt(2π) φ(x)
    float h = 0.5f - 0.5f * (q * e);               // erf(|z|) / 2
    float cdf = 0.5f + (xi < 0.0f ? -h : (xi > 0.0f ? h : 0.0f));
    y = xi * cdf;
    slope = cdf + (xi * e) * inv_sqrt_2pi;
}

// float64: the exact erf from <cmath>, so float64 gradcheck sees the true derivative.
inline void gelu_point(double xi, double& y, double& slope) {
    const double inv_sqrt2 = 1.0 / std::sqrt(2.0), inv_sqrt_2pi = 1.0 / std::sqrt(2.0 * M_PI);
    double cdf = 0.5 * (1.0 + std::erf(xi * inv_sqrt2));
    y = xi * cdf;
    slope = cdf + xi * std::exp(-0.5 * xi * xi) * inv_sqrt_2pi;
}

template <typename T>
void gelu(const T* x, T* y, T* slope, i64 n) {
#pragma omp simd
    for (i64 i = 0; i < n; ++i) gelu_point(x[i], y[i], slope[i]);
}

}  // namespace

#define MG_API extern "C" __attribute__((visibility("default")))

MG_API void mg_gelu_f32(const float* x, float* y, float* s, i64 n) { gelu(x, y, s, n); }
MG_API void mg_gelu_f64(const double* x, double* y, double* s, i64 n) { gelu(x, y, s, n); }
