// layernorm.cu: LayerNorm over the last axis of a C-contiguous (N, C) array, forward and backward.
//
// Header-free CUDA C (NVRTC gets no include paths; the CPU emulator compiles the same text).
// Every kernel is a template on the scalar type T (float or double); all arithmetic is in T.
// Instantiations are listed in KERNELS in kernels/layernorm.py (the list NVRTC, CuPy and the
// emulator compile), next to the launchers, the NumPy reference and the validation cases.
//
// Row groups. A "row group" of G = blockDim.x threads owns one row: G = 32 (one warp per row,
// blockDim.y = R rows per block, grid = ceil(N / R)) for rows up to 1024 wide, or G = 64..1024 (a
// whole block per row, R = 1, grid = N) for wider rows. G is a multiple of 32. Sums over a row are
// warp-shuffle trees (__shfl_xor_sync), then, with G > 32, a fixed-order sum of the per-warp
// results through shared memory, so every thread of the group gets the same, deterministic value.
//
// Row cache. With `cache` != 0 the launcher provides R * C * sizeof(T) (forward) or
// 2 * R * C * sizeof(T) (backward dx) bytes of dynamic shared memory, and x (and dy) are read from
// global memory exactly once, into the cache; later passes over the row read shared memory. Rows
// too wide for 48 KiB run with cache = 0 and re-read global memory (correct, slower).
// Loads/stores are 16-byte vectors (float4 / double2) when C is a multiple of the vector width and
// every row pointer is 16-byte aligned; scalar otherwise (any C works).
//
// Kernels (N rows, C columns):
//   layernorm_forward<T>(x, w, b, y, mean, rstd, N, C, eps, cache)
//       reads x (N*C), w (C, may be null: 1), b (C, may be null: 0)
//       writes y (N*C), mean (N), rstd (N) with rstd = 1/sqrt(var + eps), var the biased variance
//       computed in two passes over the cached row: mean first, then sum((x - mean)^2).
//   layernorm_backward_dx<T>(dy, x, w, mean, rstd, dx, N, C, cache)
//       g = dy * w, xhat = (x - mean) * rstd,
//       dx = rstd * (g - mean_row(g) - xhat * mean_row(g * xhat));
//       reads dy, x (N*C), w (C, may be null), mean, rstd (N); writes dx (N*C).
//   layernorm_backward_partials<T>(dy, x, mean, rstd, pw, pb, N, C, rows_per_chunk)
//       stage 1 of dweight = sum_rows dy * xhat, dbias = sum_rows dy. Grid (ceil(C/32), P),
//       block (32, 8): block (cx, p) sums rows [p*rows_per_chunk, (p+1)*rows_per_chunk) of 32
//       columns, each threadIdx.y a fixed subset of rows, then the 8 subsets in fixed order.
//       writes pw, pb (P*C); pw or pb may be null (not needed).
//   layernorm_backward_reduce<T>(pw, pb, dw, db, P, C)
//       stage 2: dw[j] = sum_{p=0..P-1} pw[p*C+j] in increasing p (same for db); block 256 threads,
//       grid ceil(C/256). No atomics anywhere: the same input gives bit-identical output.
//   layernorm_backward_fused<T>(dy, x, w, mean, rstd, dx, pw, pb, N, C)
//       dx and stage 1 in one kernel (the default backward; see its comment below): reads dy, x
//       (twice per row, the second time from cache), writes dx and P*C partials. Used when its
//       2 * R * C * sizeof(T) bytes of accumulators fit in shared memory; otherwise the launcher
//       runs layernorm_backward_dx + layernorm_backward_partials.

template <typename T> struct Vec16;
template <> struct Vec16<float> { typedef float4 type; static const int n = 4; };
template <> struct Vec16<double> { typedef double2 type; static const int n = 2; };

template <typename T>
__device__ __forceinline__ bool aligned16(const T* p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the row group (blockDim.x threads). `red` holds 32 values; with G > 32 the caller's
// whole block takes part (R == 1), and the trailing barrier lets `red` be reused at once.
template <typename T>
__device__ __forceinline__ T group_sum(T v, T* red) {
  v = warp_sum(v);
  if (blockDim.x == 32) return v;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nwarps ? red[lane] : T(0);
  v = warp_sum(v);
  __syncthreads();
  return v;
}

template <typename T>
__global__ void layernorm_forward(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                  T* __restrict__ y, T* __restrict__ mean, T* __restrict__ rstd, int N, int C,
                                  T eps, int cache) {
  __shared__ T red[32];
  extern __shared__ __align__(16) unsigned char smem[];
  typedef typename Vec16<T>::type V;
  const int VN = Vec16<T>::n;
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= N) return;  // only in warp-per-row mode (grid covers N exactly otherwise)
  const int tid = threadIdx.x, G = blockDim.x;
  const T* xr = x + (long long)row * C;
  T* yr = y + (long long)row * C;
  T* cr = reinterpret_cast<T*>(smem) + (long long)threadIdx.y * C;
  const bool vec = (C % VN == 0) && aligned16(xr) && aligned16(yr) && (!w || aligned16(w)) && (!b || aligned16(b));
  const T* src = cache ? cr : xr;

  // pass 1: the only read of x; fill the cache, sum
  T s = T(0);
  if (vec) {
    for (int i = tid; i < C / VN; i += G) {
      V v = reinterpret_cast<const V*>(xr)[i];
      if (cache) reinterpret_cast<V*>(cr)[i] = v;
      const T* e = reinterpret_cast<const T*>(&v);
      for (int k = 0; k < VN; ++k) s += e[k];
    }
  } else {
    for (int i = tid; i < C; i += G) {
      T v = xr[i];
      if (cache) cr[i] = v;
      s += v;
    }
  }
  const T mu = group_sum(s, red) / T(C);  // group_sum's barriers also order the cache writes

  // pass 2: variance about the mean (each thread rereads what it wrote, so no barrier needed)
  T q = T(0);
  if (vec) {
    for (int i = tid; i < C / VN; i += G) {
      V v = reinterpret_cast<const V*>(src)[i];
      const T* e = reinterpret_cast<const T*>(&v);
      for (int k = 0; k < VN; ++k) { T d = e[k] - mu; q += d * d; }
    }
  } else {
    for (int i = tid; i < C; i += G) { T d = src[i] - mu; q += d * d; }
  }
  const T var = group_sum(q, red) / T(C);
  const T rs = T(1) / sqrt(var + eps);
  if (tid == 0) { mean[row] = mu; rstd[row] = rs; }

  // pass 3: normalise, scale, shift
  if (vec) {
    for (int i = tid; i < C / VN; i += G) {
      V v = reinterpret_cast<const V*>(src)[i];
      V wv, bv, o;
      if (w) wv = reinterpret_cast<const V*>(w)[i];
      if (b) bv = reinterpret_cast<const V*>(b)[i];
      const T* e = reinterpret_cast<const T*>(&v);
      const T* we = reinterpret_cast<const T*>(&wv);
      const T* be = reinterpret_cast<const T*>(&bv);
      T* oe = reinterpret_cast<T*>(&o);
      for (int k = 0; k < VN; ++k) {
        T t = (e[k] - mu) * rs;
        if (w) t *= we[k];
        if (b) t += be[k];
        oe[k] = t;
      }
      reinterpret_cast<V*>(yr)[i] = o;
    }
  } else {
    for (int i = tid; i < C; i += G) {
      T t = (src[i] - mu) * rs;
      if (w) t *= w[i];
      if (b) t += b[i];
      yr[i] = t;
    }
  }
}

template <typename T>
__global__ void layernorm_backward_dx(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                      const T* __restrict__ mean, const T* __restrict__ rstd, T* __restrict__ dx,
                                      int N, int C, int cache) {
  __shared__ T red[32];
  extern __shared__ __align__(16) unsigned char smem[];
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= N) return;  // only in warp-per-row mode
  const int tid = threadIdx.x, G = blockDim.x;
  const long long off = (long long)row * C;
  const T mu = mean[row], rs = rstd[row];
  // cache layout per row group: g (C values) then xhat (C values)
  T* cg = reinterpret_cast<T*>(smem) + 2ll * threadIdx.y * C;
  T* cx = cg + C;

  // pass 1: the only read of dy and x: sums of g and g * xhat
  T sg = T(0), sgx = T(0);
  for (int i = tid; i < C; i += G) {
    const T g = w ? dy[off + i] * w[i] : dy[off + i];
    const T xh = (x[off + i] - mu) * rs;
    if (cache) { cg[i] = g; cx[i] = xh; }
    sg += g;
    sgx += g * xh;
  }
  const T mg = group_sum(sg, red) / T(C);
  const T mgx = group_sum(sgx, red) / T(C);

  // pass 2: dx
  for (int i = tid; i < C; i += G) {
    T g, xh;
    if (cache) { g = cg[i]; xh = cx[i]; }
    else { g = w ? dy[off + i] * w[i] : dy[off + i]; xh = (x[off + i] - mu) * rs; }
    dx[off + i] = rs * (g - mg - xh * mgx);
  }
}

template <typename T>
__global__ void layernorm_backward_partials(const T* __restrict__ dy, const T* __restrict__ x,
                                            const T* __restrict__ mean, const T* __restrict__ rstd,
                                            T* __restrict__ pw, T* __restrict__ pb, int N, int C,
                                            int rows_per_chunk) {
  __shared__ T sw[8][33];
  __shared__ T sb[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int j = blockIdx.x * 32 + tx;
  const int p = blockIdx.y;
  const int r0 = p * rows_per_chunk;
  const int r1 = min(N, r0 + rows_per_chunk);
  T aw = T(0), ab = T(0);
  if (j < C) {
    for (int r = r0 + ty; r < r1; r += 8) {
      const long long k = (long long)r * C + j;
      const T d = dy[k];
      ab += d;
      if (pw) aw += d * ((x[k] - mean[r]) * rstd[r]);
    }
  }
  sw[ty][tx] = aw;
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && j < C) {
    T tw = T(0), tb = T(0);
    for (int k = 0; k < 8; ++k) { tw += sw[k][tx]; tb += sb[k][tx]; }
    if (pw) pw[(long long)p * C + j] = tw;
    if (pb) pb[(long long)p * C + j] = tb;
  }
}

template <typename T>
__global__ void layernorm_backward_reduce(const T* __restrict__ pw, const T* __restrict__ pb, T* __restrict__ dw,
                                          T* __restrict__ db, int P, int C) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= C) return;
  T tw = T(0), tb = T(0);
  for (int p = 0; p < P; ++p) {
    if (pw) tw += pw[(long long)p * C + j];
    if (pb) tb += pb[(long long)p * C + j];
  }
  if (dw) dw[j] = tw;
  if (db) db[j] = tb;
}

// Fused backward: dx and the per-block column partials of dweight/dbias in one pass over the rows.
// Grid P blocks of (G, R) threads; row group gy = blockIdx.x * R + threadIdx.y takes rows
// gy, gy + P*R, gy + 2*P*R, ... in increasing order. Each row group accumulates dy * xhat and dy per
// column in its own slice of dynamic shared memory (2 * R * C * sizeof(T) bytes: accw[R][C] then
// accb[R][C]; each column of a slice is only touched by the thread that owns it), then the block
// adds its R slices in fixed order and writes pw/pb[blockIdx.x * C + j] (pw or pb may be null).
// x and dy are read from global memory once per pass over a row; the second pass re-reads the row
// the same warp/block just read (cache hits on a GPU). layernorm_backward_reduce finishes.
template <typename T>
__global__ void layernorm_backward_fused(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                         const T* __restrict__ mean, const T* __restrict__ rstd, T* __restrict__ dx,
                                         T* __restrict__ pw, T* __restrict__ pb, int N, int C) {
  __shared__ T red[32];
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, G = blockDim.x, R = blockDim.y;
  T* accw = reinterpret_cast<T*>(smem) + (long long)threadIdx.y * C;
  T* accb = accw + (long long)R * C;
  for (int i = tid; i < C; i += G) { accw[i] = T(0); accb[i] = T(0); }

  const int stride = gridDim.x * R;
  // in block-per-row mode (R == 1) every thread of the block runs the same iterations, so the
  // barriers inside group_sum are reached by all of them
  for (int row = blockIdx.x * R + threadIdx.y; row < N; row += stride) {
    const long long off = (long long)row * C;
    const T mu = mean[row], rs = rstd[row];
    T sg = T(0), sgx = T(0);
    for (int i = tid; i < C; i += G) {
      const T d = dy[off + i];
      const T g = w ? d * w[i] : d;
      const T xh = (x[off + i] - mu) * rs;
      sg += g;
      sgx += g * xh;
    }
    const T mg = group_sum(sg, red) / T(C);
    const T mgx = group_sum(sgx, red) / T(C);
    for (int i = tid; i < C; i += G) {
      const T d = dy[off + i];
      const T g = w ? d * w[i] : d;
      const T xh = (x[off + i] - mu) * rs;
      dx[off + i] = rs * (g - mg - xh * mgx);
      accw[i] += d * xh;
      accb[i] += d;
    }
  }
  __syncthreads();
  const T* base = reinterpret_cast<const T*>(smem);
  for (int j = threadIdx.y * G + tid; j < C; j += G * R) {
    T tw = T(0), tb = T(0);
    for (int k = 0; k < R; ++k) { tw += base[(long long)k * C + j]; tb += base[(long long)(R + k) * C + j]; }
    if (pw) pw[(long long)blockIdx.x * C + j] = tw;
    if (pb) pb[(long long)blockIdx.x * C + j] = tb;
  }
}
