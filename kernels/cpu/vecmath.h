// Scalar math helpers shared by the native CPU sources. Branch-free, so loops that call them vectorise.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mg {

// exp for float32 without libm: Cody–Waite reduction by ln 2 and Cephes' degree-6 polynomial
// (about 1 ulp). Branch-free, so loops calling it vectorise. exp(x) < 2^-126 flushes to 0.
inline float exp32(float x) {
    float xc = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    float kf = xc * 1.44269504088896341f + 12582912.0f;   // round to nearest via 1.5·2^23
    kf = kf - 12582912.0f;
    float r = xc - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)kf + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    y = y * scale;
    y = x < -87.3f ? 0.0f : y;
    return x != x ? x : y;
}

inline double exp_t(double x) { return std::exp(x); }
inline float exp_t(float x) { return exp32(x); }

}  // namespace mg
