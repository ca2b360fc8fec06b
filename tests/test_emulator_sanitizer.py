"""The CPU emulator as a sanitizer (minigrad.kernels.emulate): racecheck, memcheck, initcheck, schedules.

1. Small kernels with one bug each raise the KernelError subclass of their class, naming what
   compute-sanitizer would: kernel, block, threads, array or argument, offset or distance, hazard.
2. Correct kernels of each pattern (shared-memory tree reduction, warp-shuffle reduction, tiled
   transpose, __syncwarp exchange) raise nothing under every schedule and give the right numbers.
3. Mutation tests: one bug at a time planted in a copy of a shipped kernel (emulate.substitute runs
   the copy through the real launchers) is reported by its class under two schedules.
4. The shipped kernels, every registered version, run clean under the checks and three schedules
   and stay within the validate tolerances.

A watchdog ends the process if a test hangs; an out-of-bounds write under the checks never lands,
so the process survives every planted bug.
"""

import dataclasses
import faulthandler
import re
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the CPU emulator needs a C++ compiler")

from minigrad.kernels import emulate

SCHEDULES = ["forward", "reverse", "random:1", "random:2"]


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ----------------------------------------------------------------------------- 1. one bug per kernel

BUGS = r"""
// out[k] = the k-th thread (global index) to record itself: the order threads and blocks ran in
__global__ void record_order(int* order, int* counter) {
  order[atomicAdd(counter, 1)] = threadIdx.x + blockDim.x * blockIdx.x;
}

__global__ void raw(float* out) {            // reads a neighbour's slot with no barrier
  __shared__ float s[64];
  s[threadIdx.x] = threadIdx.x;
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

__global__ void war(float* out) {            // reads a neighbour's slot, then overwrites its own
  __shared__ float s[64];
  s[threadIdx.x] = threadIdx.x;
  __syncthreads();
  const float v = s[(threadIdx.x + 1) % 64];
  s[threadIdx.x] = v + 1.0f;
  out[threadIdx.x] = v;
}

__global__ void waw(float* out) {            // every thread writes slot 0
  __shared__ float s[64];
  s[threadIdx.x] = 0.0f;
  __syncthreads();
  s[0] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = s[0];
}

// lanes exchange through shared memory: mode 0 no synchronisation, 1 __syncwarp, 2 a shuffle
__global__ void warp_exchange(int* out, int mode) {
  __shared__ int s[32];
  s[threadIdx.x] = threadIdx.x * 10;
  if (mode == 1) __syncwarp();
  if (mode == 2) (void)__shfl_sync(0xffffffffu, 0, 0);
  out[threadIdx.x] = s[31 - threadIdx.x];
}

__global__ void read_past_end(const float* x, float* y, int n) {
  y[threadIdx.x] = x[threadIdx.x + n];     // thread 0 reads x[n]
}

__global__ void write_before_start(const float* x, float* y, int n) {
  y[(int)threadIdx.x - 1] = x[threadIdx.x];  // thread 0 writes y[-1]
}

__global__ void scale_into(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 2.0f * x[i];
}

__global__ void write_far_away(float* y, long long offset) {
  y[offset] = 1.0f;                          // would crash the process if it landed
}

__global__ void through_null(const float* w, float* y) {
  y[threadIdx.x] = w[threadIdx.x];           // w is null
}

__global__ void dynamic_overrun(float* out) {
  extern __shared__ float dyn[];             // the launch asks for blockDim.x floats
  dyn[threadIdx.x + 1] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = dyn[threadIdx.x];
}

__global__ void uninit_static(float* out) {
  __shared__ float s[64];
  if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];         // threads 32..63 read unwritten slots
}

__global__ void uninit_dynamic(double* out) {
  extern __shared__ double dd[];
  if (threadIdx.x != 5) dd[threadIdx.x] = 2.0;
  __syncthreads();
  out[threadIdx.x] = dd[(threadIdx.x + 1) % blockDim.x];
}

__global__ void shared_atomics(int* out, int init) {
  __shared__ int count;
  if (init && threadIdx.x == 0) count = 0;
  __syncthreads();
  atomicAdd(&count, 1);                      // atomics do not race with each other
  __syncthreads();
  out[threadIdx.x] = count;
}

// correct under the forward schedule only: the last thread assumes thread 0 already ran
__global__ void flag_then_check(int* out) {
  __shared__ int flag;
  if (threadIdx.x == 0) flag = 7;
  if (threadIdx.x == blockDim.x - 1) {
    if (flag != 7) __trap();
    out[0] = flag;
  }
}

__global__ void divergent(float* x) {
  if (threadIdx.x < 32) __syncthreads();
  x[threadIdx.x] = 1.0f;
}

__global__ void bad_mask(float* x) {
  x[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, x[threadIdx.x], 1);
}
"""


def _launch(name, grid, block, args, **kw):
    emulate.launch(BUGS, name, grid, block, args, **kw)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kernel,hazard", [("raw", "read-after-write"), ("war", "write-after-read"),
                                           ("waw", "write-after-write")])
def test_shared_memory_races_are_named(kernel, hazard, schedule):
    with pytest.raises(emulate.RaceError) as e:
        _launch(kernel, 1, 64, (np.zeros(64, np.float32),), schedule=schedule)
    msg = str(e.value)
    # which access comes second, and so the hazard's name, depends on the order the threads ran in
    named = hazard if schedule == "forward" else "(read-after-write|write-after-read|write-after-write)"
    assert re.match(f"kernel {kernel}, block \\(0,0,0\\): {named} hazard in shared memory", msg), msg
    threads = re.findall(r"thread \((\d+),0,0\)", msg)
    assert len(threads) == 2 and threads[0] != threads[1], msg
    assert re.search(r"shared array s \(256 bytes\) at byte \d+", msg), msg
    assert re.search(r"at source.cu:\d+\).*at source.cu:\d+\)", msg), msg  # both source lines
    assert msg.endswith(f"[schedule {schedule}]")
    assert e.value.kernel == kernel and e.value.schedule == schedule


def test_warp_sharing_needs_syncwarp_and_shuffles_do_not_order_memory():
    out = np.zeros(32, np.int32)
    _launch("warp_exchange", 1, 32, (out, np.int32(1)), schedule="reverse")
    np.testing.assert_array_equal(out, (31 - np.arange(32)) * 10)
    for mode in (0, 2):
        with pytest.raises(emulate.RaceError, match="no __syncthreads \\(or __syncwarp naming both lanes\\)"):
            _launch("warp_exchange", 1, 32, (out, np.int32(mode)))


def test_out_of_bounds_names_the_argument_and_the_distance():
    x, y = np.arange(8, dtype=np.float32), np.zeros(8, np.float32)
    with pytest.raises(emulate.OutOfBoundsError, match=r"thread \(0,0,0\) reads 4 bytes at element 8 of argument 0 x "
                                                       r"\(float32, 8 elements\): 4 bytes past its end"):
        _launch("read_past_end", 1, 8, (x, y, np.int32(8)))
    with pytest.raises(emulate.OutOfBoundsError, match=r"writes 4 bytes at element -1 of argument 1 y "
                                                       r"\(float32, 8 elements\): 4 bytes before its start"):
        _launch("write_before_start", 1, 8, (x, y, np.int32(8)))
    np.testing.assert_array_equal(y, 0)  # the launch stopped at the first bad access


def test_an_overrun_into_a_neighbouring_argument_is_still_out_of_bounds():
    # x and y are adjacent views of one buffer: x[8] *is* y[0]. Checked launches run on copies of
    # the arguments with unowned gaps between them, so the overrun is caught all the same.
    buf = np.arange(16, dtype=np.float32)
    x, y = buf[:8], buf[8:]
    with pytest.raises(emulate.OutOfBoundsError, match=r"element 8 of argument 0 x \(float32, 8 elements\): 4 bytes "
                                                       r"past its end"):
        _launch("read_past_end", 1, 8, (x, y, np.int32(8)))
    # arguments that share memory share it in the copies too, and results land in the originals
    _launch("scale_into", 1, 16, (buf, buf, np.int32(16)))
    np.testing.assert_array_equal(buf, 2 * np.arange(16))


def test_a_wild_write_is_reported_and_never_lands():
    y = np.zeros(4, np.float32)
    with pytest.raises(emulate.OutOfBoundsError, match="argument 0 y"):
        _launch("write_far_away", 1, 1, (y, np.int64(1 << 40)))
    with pytest.raises(emulate.OutOfBoundsError, match="a null pointer \\(null arguments: argument 0 w\\)"):
        _launch("through_null", 1, 4, (None, y))


def test_dynamic_shared_memory_is_bounded_by_the_launch():
    with pytest.raises(emulate.OutOfBoundsError, match=r"thread \(63,0,0\) writes 4 bytes at byte 256 of dynamic "
                                                       r"shared memory dyn, past the 256 bytes the launch asked for"):
        _launch("dynamic_overrun", 1, 64, (np.zeros(64, np.float32),), shared_mem=256, schedule="reverse")


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_uninitialised_shared_reads_static_and_dynamic(schedule):
    with pytest.raises(emulate.UninitializedReadError,
                       match=r"thread \((3[2-9]|[4-5]\d|6[0-3]),0,0\) reads 4 bytes of shared array s \(256 bytes\) at "
                             r"byte \d+ that no thread of this block has written"):
        _launch("uninit_static", 1, 64, (np.zeros(64, np.float32),), schedule=schedule)
    with pytest.raises(emulate.UninitializedReadError,
                       match=r"thread \(4,0,0\) reads 8 bytes of dynamic shared memory dd \(512 bytes at this launch\) "
                             r"at byte 40"):
        _launch("uninit_dynamic", 1, 64, (np.zeros(64),), shared_mem=512, schedule=schedule)


def test_without_checks_unwritten_shared_memory_reads_as_poison():
    out = np.zeros(64, np.float32)
    _launch("uninit_static", 2, 64, (out,), check=False)  # a second block cannot see the first's values
    assert np.all(out[:32] == 1) and np.all(np.isnan(out[32:]))
    dd = np.zeros(64)
    _launch("uninit_dynamic", 1, 64, (dd,), shared_mem=512, check=False)
    assert np.isnan(dd[4]) and np.all(np.delete(dd, 4) == 2)


def test_atomics_on_shared_memory_are_not_races_but_need_initialisation():
    out = np.zeros(96, np.int32)
    _launch("shared_atomics", 1, 96, (out, np.int32(1)), schedule="random:3")
    np.testing.assert_array_equal(out, 96)
    with pytest.raises(emulate.UninitializedReadError, match="atomically updates 4 bytes of shared array count"):
        _launch("shared_atomics", 1, 96, (out, np.int32(0)))


def test_an_order_dependent_bug_names_the_schedule_and_seed_that_exposed_it():
    out = np.zeros(1, np.int32)
    _launch("flag_then_check", 1, 64, (out,), check=False)  # forward: thread 0 ran first, by luck
    assert out[0] == 7
    with pytest.raises(emulate.TrapError, match=r"__trap\(\) called by thread \(63,0,0\).*\[schedule reverse\]$"):
        _launch("flag_then_check", 1, 64, (out,), schedule="reverse", check=False)
    failing = []
    for seed in range(8):
        try:
            _launch("flag_then_check", 1, 64, (out,), schedule=f"random:{seed}", check=False)
        except emulate.TrapError as e:
            assert str(e).endswith(f"[schedule random:{seed}]")
            failing.append(seed)
    assert 0 < len(failing) < 8  # the order matters; the seed reproduces it:
    with pytest.raises(emulate.TrapError):
        _launch("flag_then_check", 1, 64, (out,), schedule=f"random:{failing[0]}", check=False)
    for schedule in ("forward", "reverse"):  # racecheck needs no lucky order
        with pytest.raises(emulate.RaceError, match="read-after-write hazard in shared memory: thread \\(0,0,0\\) wrote "
                                                    "shared array flag"):
            _launch("flag_then_check", 1, 64, (out,), schedule=schedule)


def test_schedules_order_threads_and_blocks():
    def order(schedule):
        o, c = np.full(4 * 64, -1, np.int32), np.zeros(1, np.int32)
        _launch("record_order", 4, 64, (o, c), schedule=schedule)
        assert c[0] == 256 and sorted(o) == list(range(256))
        return o

    np.testing.assert_array_equal(order("forward"), np.arange(256))
    np.testing.assert_array_equal(order("reverse"), np.arange(256)[::-1])
    r1, r2 = order("random:1"), order("random:2")
    assert not np.array_equal(r1, np.arange(256)) and not np.array_equal(r1, r2)
    np.testing.assert_array_equal(order("random:1"), r1)  # a seed reproduces its order
    blocks = r1 // 64
    assert not np.array_equal(blocks, np.sort(blocks))  # blocks too


def test_the_environment_sets_the_schedule_and_the_checks(monkeypatch):
    module = emulate.module_for(BUGS)
    o, c = np.zeros(64, np.int32), np.zeros(1, np.int32)
    monkeypatch.setenv("MINIGRAD_EMU_SCHEDULE", "reverse")
    module.launch("record_order", 1, 64, (o, c))
    np.testing.assert_array_equal(o, np.arange(64)[::-1])
    monkeypatch.setenv("MINIGRAD_EMU_CHECK", "1")
    with pytest.raises(emulate.RaceError, match=r"\[schedule reverse\]$"):
        module.launch("raw", 1, 64, (np.zeros(64, np.float32),))
    with emulate.settings(schedule="forward", check=False):  # the innermost setting wins
        module.launch("raw", 1, 64, (np.zeros(64, np.float32),))
        assert emulate.current() == (emulate.Schedule("forward"), False)
    monkeypatch.setenv("MINIGRAD_EMU_SCHEDULE", "sideways")
    with pytest.raises(ValueError, match="MINIGRAD_EMU_SCHEDULE='sideways': expected forward, reverse or random:SEED"):
        module.launch("record_order", 1, 64, (o, c))


def test_barrier_shuffle_compile_and_configuration_errors_are_kernel_errors():
    with pytest.raises(emulate.BarrierError, match="__syncthreads reached by only some threads"):
        _launch("divergent", 1, 64, (np.zeros(64, np.float32),))
    with pytest.raises(emulate.ShuffleError, match="not in its mask 0x0000ffff"):
        _launch("bad_mask", 1, 32, (np.zeros(32, np.float32),))
    with pytest.raises(emulate.LaunchConfigError, match="exceeds CUDA's limit of 1024 threads"):
        _launch("divergent", 1, 2048, (np.zeros(64, np.float32),))
    with pytest.raises(emulate.CompileError) as e:
        emulate.launch("__global__ void k(float* x) { x[0] = undeclared; }", "k", 1, 1, (np.zeros(1, np.float32),))
    assert "undeclared" in e.value.output and "source.cu:1" in e.value.output
    assert all(issubclass(c, emulate.KernelError) for c in (emulate.RaceError, emulate.OutOfBoundsError,
                                                            emulate.UninitializedReadError, emulate.CompileError))


# ----------------------------------------------------------------------------- 2. correct patterns

PATTERNS = r"""
// tree reduction in shared memory: out[block] = sum of the block's grid-stride share of x
template <typename T>
__global__ void block_sum(const T* x, T* out, int n) {
  __shared__ T s[256];
  const int t = threadIdx.x;
  T v = T(0);
  for (int i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) v += x[i];
  s[t] = v;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (t < w) s[t] += s[t + w];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// warp shuffles, then one value per warp through shared memory, then warp 0 shuffles again
template <typename T>
__global__ void warp_sum(const T* x, T* out, int n) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  T v = i < n ? x[i] : T(0);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? partial[lane] : T(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

// 32x32 tiles through a padded shared tile, block (32, 8)
__global__ void transpose(const float* in, float* out, int rows, int cols) {
  __shared__ float tile[32][33];
  int x = blockIdx.x * 32 + threadIdx.x, y = blockIdx.y * 32 + threadIdx.y;
  for (int j = 0; j < 32; j += 8)
    if (x < cols && y + j < rows) tile[threadIdx.y + j][threadIdx.x] = in[(y + j) * cols + x];
  __syncthreads();
  x = blockIdx.y * 32 + threadIdx.x;
  y = blockIdx.x * 32 + threadIdx.y;
  for (int j = 0; j < 32; j += 8)
    if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x][threadIdx.y + j];
}
"""


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_correct_kernels_of_each_pattern_raise_nothing(schedule):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000)
    out = np.zeros(3)
    emulate.launch(PATTERNS, "block_sum<double>", 3, 256, (x, out, np.int32(1000)), schedule=schedule)
    np.testing.assert_allclose(out.sum(), x.sum(), rtol=1e-13)
    xf = x.astype(np.float32)
    outf = np.zeros(4, np.float32)
    emulate.launch(PATTERNS, "warp_sum<float>", 4, 256, (xf, outf, np.int32(1000)), schedule=schedule)
    np.testing.assert_allclose(outf, [xf[256 * b:256 * (b + 1)].sum() for b in range(4)], rtol=1e-5, atol=1e-5)
    a = rng.standard_normal((45, 70)).astype(np.float32)
    t = np.zeros((70, 45), np.float32)
    emulate.launch(PATTERNS, "transpose", (3, 2), (32, 8), (a, t, np.int32(45), np.int32(70)), schedule=schedule)
    np.testing.assert_array_equal(t, a.T)


# ----------------------------------------------------------------------------- 3. mutation tests

@dataclasses.dataclass(frozen=True)
class Plant:
    what: str      # the bug, in words
    cu: str        # the shipped file it goes into
    kernel: str    # the registered kernel version whose launch hits it
    case: tuple    # a validate case of that kernel (float32)
    expected: type
    edits: tuple   # (text of the shipped file, replacement), each found exactly once


GROUP_SUM_TAIL = "  v = lane < nwarps ? red[lane] : T(0);\n  v = warp_sum(v);\n  __syncthreads();\n  return v;\n"
GROUP_SUM_BROADCAST = (  # group_sum as "thread 0 sums the warps' partials, the others read the total"
    "  if (threadIdx.x == 0) { T t = T(0); for (int k = 0; k < nwarps; ++k) t += red[k]; red[0] = t; }\n"
    "  {BARRIER}\n  v = red[0];\n  __syncthreads();\n  return v;\n")
KOK_LOOP = ("        for (int j = tid; {BOUND}; j += S::NT)\n"
            "            kok[j] = (k0 + j < Tk) && (!has_mask || key_mask[(long long)b * Tk + k0 + j]);\n"
            "        __syncthreads();\n\n        T s[R][KPL];\n")
LN_WIDE, LN_ROWS, LN_FUSED = (2, 1025, True), (7, 5, False), (9, 40, True)  # block per row; warp per row; fused bwd
ATTN = (1, 1, 7, 7, 16, False, False)
PLANTS = [
    Plant("broadcast barrier removed (thread 0 sums, others read)", "layernorm.cu", "layernorm_forward", LN_WIDE,
          emulate.RaceError, ((GROUP_SUM_TAIL, GROUP_SUM_BROADCAST.replace("{BARRIER}", "// no barrier")),)),
    Plant("four warps += into one shared slice (lost update)", "layernorm.cu", "layernorm_backward", LN_FUSED,
          emulate.RaceError,
          (("  T* accw = reinterpret_cast<T*>(smem) + (long long)threadIdx.y * C;\n",
            "  T* accw = reinterpret_cast<T*>(smem);\n"),
           ("for (int k = 0; k < R; ++k) { tw +=", "for (int k = 0; k < 1; ++k) { tw +="))),
    Plant("no barrier between the red writes and reads", "layernorm.cu", "layernorm_forward", LN_WIDE,
          emulate.RaceError,
          (("  if (lane == 0) red[warp] = v;\n  __syncthreads();\n", "  if (lane == 0) red[warp] = v;\n"),)),
    Plant("no barrier after the K/V tile load", "attention.cu", "attention_forward", ATTN, emulate.RaceError,
          ((KOK_LOOP.format(BOUND="j < BK"), KOK_LOOP.format(BOUND="j < BK").replace("        __syncthreads();\n", "")),)),
    Plant("no barrier between P and P.V", "attention.cu", "attention_forward", ATTN, emulate.RaceError,
          (("            for (int u = 0; u < S::CPL; ++u) acc[i][u] *= alpha;\n        }\n        __syncthreads();\n",
            "            for (int u = 0; u < S::CPL; ++u) acc[i][u] *= alpha;\n        }\n"),)),
    Plant("a write one row past the end", "layernorm.cu", "layernorm_forward", LN_ROWS, emulate.OutOfBoundsError,
          (("  if (row >= N) return;  // only in warp-per-row mode (grid",
            "  if (row > N) return;  // only in warp-per-row mode (grid"),)),
    Plant("a write one query past the end", "attention.cu", "attention_forward", ATTN, emulate.OutOfBoundsError,
          (("        if (qi < Tq) {\n            const T inv", "        if (qi <= Tq) {\n            const T inv"),)),
    Plant("a read of unwritten static shared memory", "layernorm.cu", "layernorm_forward", LN_WIDE,
          emulate.UninitializedReadError, (("  v = lane < nwarps ? red[lane] : T(0);\n", "  v = red[lane];\n"),)),
    Plant("a tail of static shared memory never written", "attention.cu", "attention_forward", ATTN,
          emulate.UninitializedReadError,
          ((KOK_LOOP.format(BOUND="j < BK"), KOK_LOOP.format(BOUND="j < min(BK, Tk - k0)")),)),
    Plant("a dynamic shared accumulator not zeroed", "layernorm.cu", "layernorm_backward", LN_FUSED,
          emulate.UninitializedReadError, (("{ accw[i] = T(0); accb[i] = T(0); }", "{ accw[i] = T(0); }"),)),
    Plant("a barrier only the first warp reaches", "attention.cu", "attention_forward", ATTN, emulate.BarrierError,
          (("        __syncthreads();  // the previous tile's K, V, P are no longer read\n",
            "        if (tid < 32) __syncthreads();\n"),)),
    Plant("a half-warp mask in a full-warp reduction", "layernorm.cu", "layernorm_forward", LN_ROWS,
          emulate.ShuffleError,
          (("v += __shfl_xor_sync(0xffffffffu, v, o);", "v += __shfl_xor_sync(0x0000ffffu, v, o);"),)),
    Plant("a group max with an unshifted group mask", "attention.cu", "attention_forward", ATTN, emulate.ShuffleError,
          (("x = attn_max(x, __shfl_xor_sync(0xffffffffu, x, off));",
            "x = attn_max(x, __shfl_xor_sync((1u << G) - 1u, x, off));"),)),
]


def _planted(cu, edits):
    from minigrad.kernels.runtime import KERNEL_DIR

    text = (KERNEL_DIR / cu).read_text()
    for old, new in edits:
        assert text.count(old) == 1, f"the planted edit no longer applies to {cu}: {old!r}"
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
@pytest.mark.parametrize("plant", PLANTS, ids=[p.what for p in PLANTS])
def test_planted_bug_is_reported_by_its_class(plant, schedule):
    from minigrad.kernels.emulate.sanitize import run_case

    expected = plant.expected
    with emulate.substitute(plant.cu, _planted(plant.cu, plant.edits)), \
            emulate.settings(schedule=schedule, check=True), pytest.raises(expected) as e:
        run_case(plant.kernel, plant.case, np.float32)
    assert type(e.value) is expected
    msg = str(e.value)
    assert re.match(r"kernel (layernorm|attention)_\w+<float[^>]*>, block \(\d+,\d+,\d+\): ", msg), msg
    assert msg.endswith(f"[schedule {schedule}]")
    if expected is emulate.RaceError:
        assert re.search(r"(read-after-write|write-after-read|write-after-write) hazard in shared memory: "
                         r"thread \(\d+,\d+,\d+\) \w+ .* and thread \(\d+,\d+,\d+\)", msg), msg
    if expected is emulate.OutOfBoundsError:
        assert re.search(r"argument \d \w+ \(float32, \d+ elements\): \d+ bytes past its end \(at \w+\.cu:\d+\)", msg)
    if expected is emulate.UninitializedReadError:
        assert re.search(r"(shared array \w+|dynamic shared memory \w+) .* that no thread of this block has written", msg)


def test_planted_divergent_barrier_in_a_helper_is_a_race_first_then_a_barrier_error():
    # threads that skip group_sum's trailing barrier run into the next group_sum and overwrite `red`
    # while the others still read it: racecheck reports that first; without the checks the
    # mismatched barrier is what shows.
    from minigrad.kernels.emulate.sanitize import run_case

    src = _planted("layernorm.cu", [("  v = warp_sum(v);\n  __syncthreads();\n  return v;\n",
                                     "  v = warp_sum(v);\n  if (threadIdx.x < 32) __syncthreads();\n  return v;\n")])
    with emulate.substitute("layernorm.cu", src):
        with emulate.settings(check=True), pytest.raises(emulate.RaceError, match="write-after-read"):
            run_case("layernorm_forward", LN_WIDE, np.float32)
        with emulate.settings(check=False), pytest.raises(emulate.BarrierError, match="different __syncthreads"):
            run_case("layernorm_forward", LN_WIDE, np.float32)


def test_a_legal_but_wrong_shuffle_width_is_left_to_validation():
    # width G/2 is a legal shuffle that sums the wrong lanes: no check can know; the reference can
    from minigrad.kernels.emulate.sanitize import run_case

    src = _planted("attention.cu", [("x += __shfl_xor_sync(0xffffffffu, x, off);",
                                     "x += __shfl_xor_sync(0xffffffffu, x, off, G / 2);")])
    with emulate.substitute("attention.cu", src), emulate.settings(check=True):
        errors = run_case("attention_forward", ATTN, np.float32)
    assert any(rel > tol for rel, tol in errors.values())


def test_the_correct_broadcast_form_of_the_planted_race_is_clean():
    from minigrad.kernels.emulate.sanitize import run_case

    src = _planted("layernorm.cu", [(GROUP_SUM_TAIL, GROUP_SUM_BROADCAST.replace("{BARRIER}", "__syncthreads();"))])
    with emulate.substitute("layernorm.cu", src):
        for schedule in ("forward", "reverse"):
            with emulate.settings(schedule=schedule, check=True):
                for rel, tol in run_case("layernorm_forward", LN_WIDE, np.float32).values():
                    assert rel <= tol


# ----------------------------------------------------------------------------- 4. the shipped kernels

def _shipped():
    from minigrad.kernels import registry

    return [k.name for k in registry.KERNELS]


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random:1"])
@pytest.mark.parametrize("kernel", _shipped())
def test_shipped_kernels_are_clean_under_the_checks(kernel, schedule):
    from minigrad.kernels import registry
    from minigrad.kernels.emulate.sanitize import _operation, run_case

    k = next(k for k in registry.KERNELS if k.name == kernel)
    op = _operation(k)
    dtype = op.dtypes[-1] if schedule == "forward" else op.dtypes[0]   # version 1: float64, float32
    with emulate.settings(schedule=schedule, check=True):
        for case in op.cases:
            for output, (rel, tol) in run_case(k, case, dtype).items():
                assert rel <= tol, f"{kernel} {op.describe(case)} {output}: rel error {rel:.2e} > {tol:.0e}"


def test_sanitize_command_prints_a_clean_table(capsys):
    from minigrad.kernels.cli import main

    assert main(["sanitize", "layernorm_forward", "--schedule", "reverse", "--schedule", "random:4"]) == 0
    out = capsys.readouterr().out
    for schedule in ("reverse", "random:4"):
        assert re.search(rf"layernorm_forward\s+{schedule}\s+(\d+)/\1\s+clean", out), out
    assert "2/2 (kernel, schedule) runs clean" in out
