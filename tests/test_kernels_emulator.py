"""The CPU emulator (kernels/emulate/cuda_emu.h) runs CUDA C with CUDA's block semantics.

Each test kernel below is written so that a wrong emulation gives a wrong answer: a barrier that
does not wait leaves neighbours' values unwritten (dynamic shared memory is poisoned with NaN/0xff
before every block), a shuffle reading the wrong lane gives a different permutation, and so on.
The misuse cases must raise KernelLaunchError naming the kernel, never hang (a watchdog kills the
process after 60 s so a hang fails loudly instead of blocking the suite).
"""

import faulthandler
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the CPU emulator needs a C++ compiler")

SOURCE = r"""
// out[block][t] = value written by thread (t+1) % n before the barrier
__global__ void rotate_block(int* out) {
  __shared__ int s[1024];
  const int n = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  s[t] = 1000 * b + t;
  __syncthreads();
  out[b * n + t] = s[(t + 1) % n];
}

// the same through dynamic shared memory, several rounds reusing the buffer
template <typename T>
__global__ void rotate_dynamic(T* out, int rounds) {
  extern __shared__ __align__(16) unsigned char dyn[];
  T* s = reinterpret_cast<T*>(dyn);
  const int n = blockDim.x, t = threadIdx.x;
  T v = T(t);
  for (int r = 0; r < rounds; ++r) {
    s[t] = v;
    __syncthreads();
    v = s[(t + 1) % n];
    __syncthreads();
  }
  out[blockIdx.x * n + t] = v;
}

// op 0 xor, 1 down, 2 up, 3 idx; every lane of the block's warps takes part
__global__ void shuffles(const float* x, float* out, int op, int arg, int width) {
  const int t = threadIdx.x;
  const float v = x[t];
  float r;
  if (op == 0) r = __shfl_xor_sync(0xffffffffu, v, arg, width);
  else if (op == 1) r = __shfl_down_sync(0xffffffffu, v, arg, width);
  else if (op == 2) r = __shfl_up_sync(0xffffffffu, v, arg, width);
  else r = __shfl_sync(0xffffffffu, v, arg, width);
  out[t] = r;
}

// lanes 0..15 and 16..31 reduce separately with half-warp masks
__global__ void half_warp_sums(const double* x, double* out) {
  const int lane = threadIdx.x & 31;
  double v = x[threadIdx.x];
  const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
  out[threadIdx.x] = v;
}

__global__ void ballot(const int* pred, unsigned* out) {
  out[threadIdx.x] = __ballot_sync(0xffffffffu, pred[threadIdx.x]);
}

__global__ void count_atomics(int* counter, float* fsum) {
  atomicAdd(counter, 1);
  atomicAdd(fsum, 0.5f);
}

__global__ void math_builtins(float* f, double* d) {
  f[0] = __int_as_float(0xff800000);
  f[1] = rsqrtf(4.0f);
  f[2] = fmaxf(-1.0f, 2.0f);
  f[3] = __expf(0.0f) + expf(0.0f);
  f[4] = exp2f(3.0f);
  f[5] = __fdividef(1.0f, 4.0f);
  d[0] = rsqrt(16.0);
  d[1] = fma(2.0, 3.0, 1.0);
  d[2] = sqrt(9.0);
  d[3] = __longlong_as_double(__double_as_longlong(-2.5));
}

// mistakes ------------------------------------------------------------------------------
__global__ void partial_barrier(float* x) {
  if (threadIdx.x >= 16) return;   // half of the block exits, the rest waits
  __syncthreads();
  x[threadIdx.x] = 1.0f;
}

__global__ void divergent_barriers(float* x) {
  if (threadIdx.x < 32) { __syncthreads(); x[threadIdx.x] = 1.0f; }
  else { __syncthreads(); x[threadIdx.x] = 2.0f; }
}

__global__ void mask_leaves_out_lane(float* x) {
  float v = x[threadIdx.x];   // all 32 lanes shuffle, the mask names only lanes 0..15
  v += __shfl_xor_sync(0x0000ffffu, v, 1);
  x[threadIdx.x] = v;
}

__global__ void mask_names_exited_lane(float* x) {
  if (threadIdx.x >= 16) return;   // lanes 16..31 exit; the full mask still names them
  float v = x[threadIdx.x];
  v += __shfl_down_sync(0xffffffffu, v, 1);
  x[threadIdx.x] = v;
}

__global__ void reads_lane_outside_mask(float* x) {
  const unsigned mask = 0x0000ffffu;   // lanes 0..15, but lane 15 reads lane 16
  if (threadIdx.x < 16) x[threadIdx.x] = __shfl_down_sync(mask, x[threadIdx.x], 1);
}

__global__ void shuffle_meets_barrier(float* x) {
  if (threadIdx.x == 0) { __syncthreads(); }
  else { x[threadIdx.x] = __shfl_sync(0xffffffffu, x[threadIdx.x], 0); }
}

__global__ void trap_kernel(float* x) {
  if (threadIdx.x == 3) __trap();
}

__global__ void big_static(float* x) {
  __shared__ float s[8192];   // 32 KiB static
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  x[threadIdx.x] = s[threadIdx.x];
}
"""

NAMES = ["rotate_block", "rotate_dynamic<float>", "rotate_dynamic<double>", "shuffles", "half_warp_sums", "ballot",
         "count_atomics", "math_builtins", "partial_barrier", "divergent_barriers", "mask_leaves_out_lane",
         "mask_names_exited_lane", "reads_lane_outside_mask", "shuffle_meets_barrier", "trap_kernel", "big_static"]


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    from minigrad.kernels.runtime import EmuModule

    path = tmp_path_factory.mktemp("emu") / "emu_test.cu"
    path.write_text(SOURCE)
    return EmuModule(str(path), NAMES)


@pytest.fixture
def watchdog():
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.mark.parametrize("grid,block", [((2, 1, 1), (96, 1, 1)), ((2, 3, 2), (8, 4, 2)), ((1, 1, 1), (1024, 1, 1)),
                                        ((3, 1, 1), (40, 1, 1))])
def test_syncthreads_is_a_block_barrier_and_indices_are_cuda_like(mod, grid, block):
    n, nb = int(np.prod(block)), int(np.prod(grid))
    out = np.full(nb * n, -1, np.int32)
    mod.launch("rotate_block", grid, block, (out,))
    t = np.arange(n)
    expect = np.concatenate([1000 * b + (t + 1) % n for b in range(nb)])
    np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("dtype,ctype", [(np.float32, "float"), (np.float64, "double")])
def test_dynamic_shared_memory_and_repeated_barriers(mod, dtype, ctype):
    n, rounds = 64, 5
    out = np.zeros(2 * n, dtype)
    mod.launch(f"rotate_dynamic<{ctype}>", 2, n, (out, np.int32(rounds)), shared_mem=n * np.dtype(dtype).itemsize)
    expect = np.tile((np.arange(n) + rounds) % n, 2).astype(dtype)
    np.testing.assert_array_equal(out, expect)


def _shuffle_model(x, op, arg, width):
    out = np.empty_like(x)
    for t in range(len(x)):
        lane, warp_base = t % 32, t - t % 32
        base = lane - lane % width
        if op == 0:
            s = lane ^ arg
            s = s if base <= s < base + width else lane
        elif op == 1:
            s = lane + arg if lane + arg < base + width else lane
        elif op == 2:
            s = lane - arg if lane - arg >= base else lane
        else:
            s = base + arg % width
        out[t] = x[warp_base + s]
    return out


@pytest.mark.parametrize("op", [0, 1, 2, 3])
@pytest.mark.parametrize("arg,width", [(1, 32), (5, 32), (16, 32), (3, 8), (1, 16), (7, 4)])
def test_warp_shuffles_match_cuda_semantics(mod, op, arg, width):
    x = np.arange(64, dtype=np.float32) * 1.5 + 0.25
    out = np.zeros(64, np.float32)
    mod.launch("shuffles", 1, 64, (x, out, np.int32(op), np.int32(arg), np.int32(width)))
    np.testing.assert_array_equal(out, _shuffle_model(x, op, arg, width))


def test_half_warp_masks_reduce_independently(mod):
    x = np.random.default_rng(0).standard_normal(64)
    out = np.zeros(64)
    mod.launch("half_warp_sums", 1, 64, (x, out))
    sums = x.reshape(4, 16).sum(axis=1)
    np.testing.assert_allclose(out, np.repeat(sums, 16), rtol=1e-15)


def test_ballot(mod):
    pred = (np.arange(32) % 3 == 0).astype(np.int32)
    out = np.zeros(32, np.uint32)
    mod.launch("ballot", 1, 32, (pred, out))
    assert set(out.tolist()) == {sum(1 << i for i in range(32) if i % 3 == 0)}


def test_atomic_add_across_blocks(mod):
    counter, fsum = np.zeros(1, np.int32), np.zeros(1, np.float32)
    mod.launch("count_atomics", (5, 2), (33, 3), (counter, fsum))
    assert counter[0] == 10 * 99
    assert fsum[0] == 0.5 * 10 * 99


def test_math_builtins(mod):
    f, d = np.zeros(6, np.float32), np.zeros(4)
    mod.launch("math_builtins", 1, 1, (f, d))
    assert np.isneginf(f[0])
    np.testing.assert_allclose(f[1:], [0.5, 2.0, 2.0, 8.0, 0.25], rtol=1e-6)
    np.testing.assert_allclose(d, [0.25, 7.0, 3.0, -2.5], rtol=1e-15)


@pytest.mark.parametrize("kernel,block,message", [
    ("partial_barrier", 32, "__syncthreads reached by only some threads"),
    ("divergent_barriers", 64, "different __syncthreads"),
    ("mask_leaves_out_lane", 32, "calling lane 16 is not in its mask"),
    ("mask_names_exited_lane", 32, "which has exited"),
    ("reads_lane_outside_mask", 32, "reads lane 16, which is not in the mask"),
    ("shuffle_meets_barrier", 32, "waits at __syncthreads"),
    ("trap_kernel", 32, "__trap"),
])
def test_misuse_raises_naming_the_kernel_and_never_hangs(mod, watchdog, kernel, block, message):
    from minigrad.kernels.runtime import KernelLaunchError

    with pytest.raises(KernelLaunchError, match=message) as e:
        mod.launch(kernel, 2, block, (np.zeros(block, np.float32),))
    assert f"kernel {kernel}" in str(e.value)
    # the emulator recovers: the next launch runs normally
    out = np.zeros(32, np.int32)
    mod.launch("rotate_block", 1, 32, (out,))
    np.testing.assert_array_equal(out, (np.arange(32) + 1) % 32)


@pytest.mark.parametrize("block", [1025, (1024, 2), (1, 1, 65), (2048,)])
def test_oversize_block_is_refused(mod, block):
    from minigrad.kernels.runtime import KernelLaunchError

    with pytest.raises(KernelLaunchError, match="exceeds CUDA's limit of 1024 threads"):
        mod.launch("rotate_block", 1, block, (np.zeros(4096, np.int32),))


def test_shared_memory_limit_counts_static_and_dynamic(mod):
    from minigrad.kernels.runtime import KernelLaunchError

    x = np.zeros(64, np.float32)
    mod.launch("big_static", 1, 64, (x,), shared_mem=16 * 1024)  # 32 + 16 KiB = exactly 48 KiB
    np.testing.assert_array_equal(x, 1.0)
    with pytest.raises(KernelLaunchError, match=r"static 32768 \+ dynamic 16388\) exceeds the limit of 49152"):
        mod.launch("big_static", 1, 64, (x,), shared_mem=16 * 1024 + 4)
    mod.launch("big_static", 1, 64, (x,), shared_mem=64 * 1024, max_shared=100 * 1024)  # opted in


def test_arguments_are_type_checked(mod):
    x = np.zeros(64, np.float32)
    out = np.zeros(64, np.float32)
    with pytest.raises(TypeError, match="pass a NumPy scalar"):
        mod.launch("shuffles", 1, 64, (x, out, 0, np.int32(1), np.int32(32)))
    with pytest.raises(TypeError, match="points to f; got an array of float64"):
        mod.launch("shuffles", 1, 64, (x.astype(np.float64), out, np.int32(0), np.int32(1), np.int32(32)))
    with pytest.raises(TypeError, match="takes 5 arguments"):
        mod.launch("shuffles", 1, 64, (x, out))
    with pytest.raises(KeyError, match="not registered"):
        mod.launch("no_such_kernel", 1, 1, ())
