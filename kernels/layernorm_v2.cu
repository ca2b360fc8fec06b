// layernorm_v2.cu: LayerNorm over the last axis of a C-contiguous (N, C) array, version 2 of
// kernels/layernorm.cu's ladder: 16-bit storage (float16, bfloat16; float32 too, for comparison
// with version 1), float32 statistics and arithmetic, 16-byte loads and stores, a grid sized to the
// number of SMs, and dweight/dbias finished inside the backward kernel.
//
// Types: X the storage of x, y, dy, dx (mg_half, mg_bf16 or float); W the storage of weight, bias,
// dweight, dbias (X, or float for float32 parameters with half activations). mean and rstd are
// float32 (N,), rstd = 1/sqrt(biased variance + eps). All arithmetic is float32; results are
// rounded to X / W once, to nearest even.
//
// Row groups. G = blockDim.x threads (a multiple of 32) own one row: G = 32 with R = blockDim.y rows
// per block for rows up to 32 * VEC * MAXV elements (VEC = 16 / sizeof(X) elements per 16-byte
// chunk: 8 for 16-bit X, 4 for float), else a whole block per row (R = 1, G the smallest multiple
// of 32 with C <= G * VEC * MAXV, at most 256: rows up to 8192 elements with MAXV = 4 for 16-bit X,
// 8 for float). Thread t of a group owns the chunks t, t + G, ...
// (at most MAXV of them): its share of a row stays in registers between passes, so x and dy are read
// from global memory exactly once. 16-byte loads and stores when C % VEC == 0 and every array is
// 16-byte aligned; 2- or 4-byte accesses otherwise (any C works). Sums over a row: warp shuffles,
// then (G > 32) the per-warp sums through shared memory in fixed order.
// The grid is P blocks (P = min(row groups, a few per SM), from the launcher); row group gy =
// blockIdx.x * R + threadIdx.y takes rows gy, gy + P R, gy + 2 P R, ... (persistent blocks).
//
// Kernels:
//   layernorm_v2_forward<X,W,MAXV>(x, w, b, y, mean, rstd, N, C, eps)
//       reads x (N*C), w and b (C, may be null: 1 and 0); writes y (N*C), mean, rstd (N). Two-pass
//       statistics from the registers: mean, then the mean of (x - mean)^2.
//   layernorm_v2_backward<X,W,MAXV>(dy, x, w, mean, rstd, dx, partials, counter, dw, db, N, C)
//       g = dy w, xhat = (x - mean) rstd, dx = rstd (g - mean_row(g) - xhat mean_row(g xhat));
//       reads dy, x (N*C), w (C, may be null), mean, rstd (N); writes dx (N*C). With partials
//       non-null, each row group also sums dy xhat and dy over its rows per column, in its slice of
//       2 R C floats of dynamic shared memory (a column is only touched by the thread that owns
//       it); a block adds its R slices in fixed order and writes its row of partials (P, 2, C)
//       float32; then the last
//       block to finish (an unsigned atomicAdd on *counter, which starts at 0 and is reset to 0)
//       adds the P rows in increasing block order and writes dw = sum dy xhat, db = sum dy (either
//       may be null) in W. No float atomics: the same input on the same grid gives bit-identical
//       results.
// The only PTX is the platform layer, kernels/ptx_platform.cuh (the conversions).

#include "ptx_platform.cuh"   // the half-precision platform layer: bf16/fp16 storage, cvt, mma, ldmatrix, cp.async

// ---------------------------------------------------------------------------------------------
template <typename X> struct Ln2Vec { static constexpr int n = 16 / (int)sizeof(X); };

__device__ __forceinline__ bool ln2_aligned16(const void* p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}

// Up to N elements of T at p (n of them valid, the rest 0) as floats; vec: 16-byte loads (p aligned,
// n == N).
template <typename T, int N>
__device__ __forceinline__ void ln2_load(const T* __restrict__ p, int n, bool vec, float* f) {
  if (vec) {
#pragma unroll
    for (int c = 0; c < N * (int)sizeof(T) / 16; ++c) {
      const uint4 u = reinterpret_cast<const uint4*>(p)[c];
      const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (sizeof(T) == 4) {
          f[4 * c + j] = __uint_as_float(w[j]);
        } else {
          T lo, hi;
          lo.bits = (unsigned short)(w[j] & 0xffffu);
          hi.bits = (unsigned short)(w[j] >> 16);
          f[8 * c + 2 * j] = mg_float(lo);
          f[8 * c + 2 * j + 1] = mg_float(hi);
        }
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) f[j] = j < n ? mg_float(p[j]) : 0.f;
  }
}

// One 16-byte chunk of X at p as raw bits (n valid elements, the rest 0), and its unpacking to floats:
// the backward keeps its rows as raw bits between passes (half the registers of floats).
template <typename X>
__device__ __forceinline__ void ln2_load_raw(const X* __restrict__ p, int n, bool vec, unsigned* r) {
  if (vec) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    r[0] = u.x;
    r[1] = u.y;
    r[2] = u.z;
    r[3] = u.w;
  } else {
    constexpr int PER = 4 / (int)sizeof(X);  // elements per 32-bit word
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = 0u;
#pragma unroll
    for (int j = 0; j < 16 / (int)sizeof(X); ++j) {
      if (j >= n) break;
      if constexpr (sizeof(X) == 4) r[j] = __float_as_uint(p[j]);
      else r[j / PER] |= (unsigned)p[j].bits << (16 * (j % PER));
    }
  }
}
template <typename X>
__device__ __forceinline__ void ln2_unpack(const unsigned* r, float* f) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (sizeof(X) == 4) {
      f[i] = __uint_as_float(r[i]);
    } else {
      X lo, hi;
      lo.bits = (unsigned short)(r[i] & 0xffffu);
      hi.bits = (unsigned short)(r[i] >> 16);
      f[2 * i] = mg_float(lo);
      f[2 * i + 1] = mg_float(hi);
    }
  }
}

// N floats rounded to T and stored at p (the first n of them; vec: 16-byte stores, n == N).
template <typename T, int N>
__device__ __forceinline__ void ln2_store(T* __restrict__ p, int n, bool vec, const float* f) {
  if (vec) {
#pragma unroll
    for (int c = 0; c < N * (int)sizeof(T) / 16; ++c) {
      unsigned w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (sizeof(T) == 4) w[j] = __float_as_uint(f[4 * c + j]);
        else w[j] = mg_pack2<T>(f[8 * c + 2 * j], f[8 * c + 2 * j + 1]);
      }
      reinterpret_cast<uint4*>(p)[c] = make_uint4(w[0], w[1], w[2], w[3]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j)
      if (j < n) p[j] = mg_round<T>(f[j]);
  }
}

__device__ __forceinline__ float ln2_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the row group (blockDim.x threads; with more than 32 the whole block takes part, R == 1).
__device__ __forceinline__ float ln2_group_sum(float v, float* red) {
  v = ln2_warp_sum(v);
  if (blockDim.x == 32) return v;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nwarps ? red[lane] : 0.f;
  v = ln2_warp_sum(v);
  __syncthreads();  // red is reused at once
  return v;
}

template <typename X, typename W, int MAXV>
__global__ void __launch_bounds__(256) layernorm_v2_forward(const X* __restrict__ x, const W* __restrict__ w, const W* __restrict__ b,
                                     X* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd, int N,
                                     int C, float eps) {
  constexpr int VEC = Ln2Vec<X>::n;
  __shared__ float red[32];
  const int t = threadIdx.x, G = blockDim.x, R = blockDim.y;
  const bool vec = C % VEC == 0 && ln2_aligned16(x) && ln2_aligned16(y) && (!w || ln2_aligned16(w)) &&
                   (!b || ln2_aligned16(b));
  const float inv_c = 1.f / (float)C;
  // in block-per-row mode (R == 1) every thread of the block runs the same iterations, so the
  // barriers inside ln2_group_sum are reached by all of them
  for (int row = blockIdx.x * R + threadIdx.y; row < N; row += gridDim.x * R) {
    const X* xr = x + (long long)row * C;
    float v[MAXV][VEC];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < MAXV; ++k) {
      const int base = (t + k * G) * VEC;
      ln2_load<X, VEC>(xr + base, min(VEC, C - base), vec && base < C, v[k]);  // 0 past the row
#pragma unroll
      for (int j = 0; j < VEC; ++j) s += v[k][j];
    }
    const float mu = ln2_group_sum(s, red) * inv_c;
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < MAXV; ++k) {
      const int base = (t + k * G) * VEC;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float dv = v[k][j] - mu;
        if (base + j < C) q += dv * dv;
      }
    }
    const float rs = 1.f / sqrtf(ln2_group_sum(q, red) * inv_c + eps);
    if (t == 0) {
      mean[row] = mu;
      rstd[row] = rs;
    }
    X* yr = y + (long long)row * C;
#pragma unroll
    for (int k = 0; k < MAXV; ++k) {
      const int base = (t + k * G) * VEC;
      if (base >= C) continue;
      const int n = min(VEC, C - base);
      float wv[VEC], bv[VEC];
      if (w) ln2_load<W, VEC>(w + base, n, vec, wv);
      if (b) ln2_load<W, VEC>(b + base, n, vec, bv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        float o = (v[k][j] - mu) * rs;
        if (w) o *= wv[j];
        if (b) o += bv[j];
        v[k][j] = o;
      }
      ln2_store<X, VEC>(yr + base, n, vec, v[k]);
    }
  }
}

template <typename X, typename W, int MAXV>
__global__ void __launch_bounds__(256, 1)
layernorm_v2_backward(const X* __restrict__ dy, const X* __restrict__ x, const W* __restrict__ w,
                      const float* __restrict__ mean, const float* __restrict__ rstd, X* __restrict__ dx,
                      float* __restrict__ partials, unsigned* __restrict__ counter, W* __restrict__ dw,
                      W* __restrict__ db, int N, int C) {
  constexpr int VEC = Ln2Vec<X>::n;
  __shared__ float red[32];
  __shared__ int last;
  extern __shared__ __align__(16) unsigned char ln2_smem[];  // partials: [R][2][C] floats
  const int t = threadIdx.x, G = blockDim.x, R = blockDim.y, tid = threadIdx.y * G + t;
  const bool vec = C % VEC == 0 && ln2_aligned16(dy) && ln2_aligned16(x) && ln2_aligned16(dx) &&
                   (!w || ln2_aligned16(w));
  const float inv_c = 1.f / (float)C;
  // This row group's sums of dy xhat (accw) and dy (accb) per column; each column of the slice is
  // touched only by the thread that owns it until the barrier before the block's sum.
  float* accw = reinterpret_cast<float*>(ln2_smem) + (long long)threadIdx.y * 2 * C;
  float* accb = accw + C;
  if (partials) {
#pragma unroll
    for (int k = 0; k < MAXV; ++k) {
      const int base = (t + k * G) * VEC;
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        if (base + j < C) accw[base + j] = accb[base + j] = 0.f;
    }
  }

  for (int row = blockIdx.x * R + threadIdx.y; row < N; row += gridDim.x * R) {
    const long long off = (long long)row * C;
    const float mu = mean[row], rs = rstd[row];
    unsigned dyr[MAXV][4], xr[MAXV][4];  // this thread's chunks of the row, raw
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int k = 0; k < MAXV; ++k) {
      const int base = (t + k * G) * VEC, n = base < C ? min(VEC, C - base) : 0;
      ln2_load_raw<X>(dy + off + base, n, vec && n > 0, dyr[k]);  // 0 past the row
      ln2_load_raw<X>(x + off + base, n, vec && n > 0, xr[k]);
    }
#pragma unroll
    for (int k = 0; k < MAXV; ++k) {
      const int base = (t + k * G) * VEC, n = base < C ? min(VEC, C - base) : 0;
      if (n == 0) continue;
      float dv[VEC], xh[VEC], wv[VEC];
      ln2_unpack<X>(dyr[k], dv);
      ln2_unpack<X>(xr[k], xh);
      if (w) ln2_load<W, VEC>(w + base, n, vec, wv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        xh[j] = (xh[j] - mu) * rs;
        const float g = w ? dv[j] * wv[j] : dv[j];
        sg += g;
        sgx += g * xh[j];
        if (partials && j < n) {
          accw[base + j] += dv[j] * xh[j];
          accb[base + j] += dv[j];
        }
      }
    }
    const float mg = ln2_group_sum(sg, red) * inv_c;
    const float mgx = ln2_group_sum(sgx, red) * inv_c;
#pragma unroll
    for (int k = 0; k < MAXV; ++k) {
      const int base = (t + k * G) * VEC;
      if (base >= C) continue;
      const int n = min(VEC, C - base);
      float dv[VEC], xh[VEC], wv[VEC];
      ln2_unpack<X>(dyr[k], dv);
      ln2_unpack<X>(xr[k], xh);
      if (w) ln2_load<W, VEC>(w + base, n, vec, wv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float g = w ? dv[j] * wv[j] : dv[j];
        dv[j] = rs * (g - mg - (xh[j] - mu) * rs * mgx);
      }
      ln2_store<X, VEC>(dx + off + base, n, vec, dv);
    }
  }
  if (!partials) return;  // dx only (every thread of the block leaves here)

  // This block's column sums: its R row groups in fixed order, into partials[blockIdx.x].
  __syncthreads();
  const float* all = reinterpret_cast<const float*>(ln2_smem);
  float* pw = partials + (long long)blockIdx.x * 2 * C;
  for (int j = tid; j < 2 * C; j += G * R) {
    float sum = 0.f;
    for (int r = 0; r < R; ++r) sum += all[(long long)r * 2 * C + j];
    pw[j] = sum;
  }

  // The last block to finish adds the P rows of partials in block order.
  __threadfence();  // this block's partials are visible device-wide before it is counted
  __syncthreads();
  if (tid == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int j = tid; j < C; j += G * R) {
    float sw = 0.f, sb = 0.f;
    for (int p = 0; p < (int)gridDim.x; ++p) {
      sw += __ldcg(partials + (long long)p * 2 * C + j);
      sb += __ldcg(partials + (long long)p * 2 * C + C + j);
    }
    if (dw) dw[j] = mg_round<W>(sw);
    if (db) db[j] = mg_round<W>(sb);
  }
  if (tid == 0) *counter = 0u;  // ready for the next launch
}
