// cuda_emu.h: run header-free CUDA C kernels on the CPU with CUDA's block semantics, optionally as a
// sanitizer (races in shared memory, out-of-bounds accesses, uninitialised shared reads).
//
// How it is used (kernels/emulate/build.py does all of this; nothing in a .cu file changes):
//   plain library, one translation unit (the fast path: everything below inlines into the kernels):
//     g++ -std=c++17 -O2 -fPIC -shared -U_FORTIFY_SOURCE -DMINIGRAD_EMULATE wrapper.cpp dynsmem.cpp
//   checked library (MGEMU_CHECK), two translation units:
//     wrapper.cpp  -DMGEMU_CHECK -fsanitize=thread: the kernels. GCC's ThreadSanitizer pass calls
//                  __tsan_readN(addr) / __tsan_writeN(addr) before every memory access the
//                  optimiser kept; no TSan runtime is linked, the hooks are ours (below).
//     runtime.cpp  -DMGEMU_CHECK -DMGEMU_RUNTIME, not instrumented: the fibers, the scheduler, the
//                  hooks and their shadow memory.
//   wrapper.cpp is `#include "cuda_emu.h"`, the .cu source, then one line per instantiation:
//       MGEMU_KERNEL(layernorm_forward<float>)
//   MGEMU_KERNEL registers the instantiation under its name expression (the same string CuPy's
//   RawModule gets in name_expressions), its arity and a type code per parameter.
//
// C entry points (called through ctypes by kernels/emulate/module.py):
//   int mgemu_launch_ex(name, gx,gy,gz, bx,by,bz, dyn_smem, static_smem, smem_limit,
//                       void** args, int nargs, const mgemu_options* opts, char* err, size_t errlen)
//       -> 0 ok, else an error class (MGEMU_E_*), message in err
//   int mgemu_launch(...same without opts...)   forward schedule, no checks (older callers)
//   int mgemu_signature(name, char* out, size_t len)  -> "*f,*f,i32,f" (pointer to float, ..., int, float)
//   int mgemu_names(char* out, size_t len)            -> registered names, one per line
//   int mgemu_checked()                               -> 1 in a checked library
//   void mgemu_set_shared_symbols(n, offsets, sizes, names, dynamic)   (checked: names for messages)
//   int mgemu_layout(uint64_t out[5])  -> where the library's shared memory (TLS block) and image are
//
// What is emulated:
//   * threadIdx/blockIdx/blockDim/gridDim (uint3/dim3), warpSize, float2/float4/double2/int2/int4.
//   * Each CUDA thread of a block is a fiber: its own stack (64 KiB, or $MINIGRAD_EMU_STACK_KB) above
//     a guard page, entered once with makecontext, then switched with _setjmp/_longjmp. Blocks run
//     one after another; fibers are reused across blocks and launches.
//   * Schedules (mgemu_options.schedule): the order in which runnable threads are resumed on every
//     pass of the scheduler, and the order of the blocks: forward (0, 1, ...), reverse, or random
//     (a fresh permutation per pass, seeded from the seed and the kernel name, so a failure
//     reproduces). A thread runs until it waits (barrier, warp operation) or exits.
//   * __shared__ expands to thread_local: one instance per OS thread, shared by every fiber of the
//     block (launches are serialised by a mutex). `extern __shared__ T name[]` (dynamic shared
//     memory) is defined by build.py in a generated unit as a 227 KiB buffer. Before every block the
//     launched kernel's static __shared__ arrays (their offsets come from the caller, see
//     mgemu_options.poison) and the requested bytes of dynamic shared memory are filled with 0xff
//     (NaN for floats, -1 for integers), so a read of unwritten shared memory shows.
//   * __syncthreads(): a real barrier. It releases when every thread of the block waits at the same
//     __syncthreads call site. Threads that exited, or that wait at a different call site or in a
//     warp operation while others wait at the barrier, make the launch fail with an error naming
//     the kernel and block (never a hang).
//   * Warp operations __shfl_sync/__shfl_xor_sync/__shfl_down_sync/__shfl_up_sync, __syncwarp,
//     __ballot_sync/__any_sync/__all_sync meet the lanes named in the mask. Errors (the launch
//     fails, naming kernel, block, warp and lanes): calling lane not in its own mask; lanes of one
//     meeting passing different masks; a mask naming a lane that exited, is outside the block, or
//     waits at __syncthreads; a shuffle reading a source lane outside the mask.
//   * atomicAdd/atomicMax/atomicMin/atomicExch/atomicCAS (fibers never preempt each other, so a
//     plain read-modify-write is atomic), __threadfence* (no-ops), __trap() (fails the launch).
//   * Math builtins: __int_as_float, __float_as_int, __longlong_as_double, __double_as_longlong,
//     rsqrtf, rsqrt, __expf, __logf, __fdividef, __frcp_rn, __saturatef, fmaxf... (from <cmath>),
//     min/max overloads, __ldg. Results are IEEE on the host (no -ftz, exact expf for __expf);
//     tolerances in tests must allow for the GPU's approximate intrinsics.
//   * Limits checked at launch, as CUDA would: block <= 1024 threads (x,y <= 1024, z <= 64), grid
//     y,z <= 65535, static + dynamic shared memory <= smem_limit (48 KiB unless the caller opts in).
//
// The checks (a checked library and mgemu_options.check = 1). Every access the kernel makes goes
// through access() below, which classifies its address:
//   * the running fiber's own stack (locals): nothing to check;
//   * this module's TLS block (all of it is shared memory: static __shared__ arrays and the dynamic
//     buffers): racecheck and initcheck against a shadow cell per byte, and bounds (an access that
//     is not inside one shared array, or past the dynamic bytes the launch asked for, fails);
//   * inside one of the launch's pointer arguments (the caller passes each array's extent): fine;
//   * the library's own image (constant tables): fine;
//   * anything else: OutOfBounds, naming the argument it ran past (or before) and by how much.
//   The access is checked before it happens, so an out-of-bounds write never lands.
// Racecheck, per shadow byte: the last writer (thread, barrier interval) and up to two readers of
// the current interval. A barrier interval ends at every __syncthreads. Two different threads touch
// the same byte in one interval, at least one writing, and nothing orders them: read-after-write,
// write-after-read or write-after-write. Inside a warp only __syncwarp orders memory (its lanes, from
// the call on): the CUDA programming guide promises memory ordering for __syncwarp and for nothing
// else in a warp, and with independent thread scheduling (Volta and later) lanes of one warp do not
// run in lock step, so warp-synchronous sharing without __syncwarp is a race. Shuffles and votes
// move register values; they order no memory. Atomics are checked for bounds and initialisation
// but take no part in race detection (atomics do not race with each other). Limits: a third reader
// of one byte in one interval replaces the second (a hazard can be missed, never invented);
// explicit memcpy/memset calls in kernel code are not seen; accesses the optimiser removed (a value
// kept in a register) are not seen.
// Initcheck: a shared byte no thread of this block has written (since the block started) is read.
//
// The tensor-core platform layer of the version-2 kernels (attention_v2.cu, layernorm_v2.cu): their
// header kernels/ptx_platform.cuh defines these names with inline PTX under #ifndef MINIGRAD_EMULATE;
// this header defines them for the CPU, following the PTX ISA:
//   * mg_half, mg_bf16: 16-bit storage ({unsigned short bits}); mg_float(x) widens exactly,
//     mg_round<X>(float) and mg_pack2<X>(lo, hi) round to nearest, ties to even (cvt.rn; NaN becomes
//     the canonical 0x7fff), subnormals kept.
//   * mg_mma_16816<X>(d[4], a[4], b[2]): mma.sync.aligned.m16n8k16.row.col.f32.X.X.f32, d += a b,
//     with the PTX ISA's fragment layouts ("Matrix fragments for mma.m16n8k16 with floating point
//     type"): groupID g = lane >> 2, t = lane % 4; A (16x16): a0,a1 = (g, 2t..2t+1), a2,a3 = (g+8,
//     2t..), a4,a5 = (g, 2t+8..), a6,a7 = (g+8, 2t+8..), two elements per 32-bit register, the lower
//     column in the low half; B (16x8): b0,b1 = (k 2t..2t+1, n g), b2,b3 = (k 2t+8.., n g); C/D:
//     c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..). The warp's lanes meet (all 32 must call it) and
//     exchange fragments; each lane computes its four outputs: the 16 products exactly (in double),
//     summed in k order, plus c, rounded once to float. A GPU's tensor core adds in its own order
//     and precision (at least single precision, PTX says): results differ by float32 rounding.
//   * mg_ldsm_x4(r[4], p) / mg_ldsm_x4_trans(r[4], p): ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16.
//     Lanes 8i..8i+7 give the row addresses (16-byte aligned, in shared memory) of 8x8 matrix i;
//     lane l receives in r[i] row l/4, columns 2(l%4) and 2(l%4)+1 of matrix i (.trans: rows 2(l%4)
//     and 2(l%4)+1 of column l/4). The reads are the receiving lane's (racecheck, initcheck).
//   * mg_cp_async_16(dst, src, src_bytes), mg_cp_async_commit(), mg_cp_async_wait<N>():
//     cp.async.cg.shared.global with zero fill past src_bytes, commit_group, wait_group N. The
//     source is read at issue (bounds-checked); the 16 destination bytes are written at issue with
//     0xff (what a read before the wait sees: NaN) and with the data when a wait_group completes the
//     copy's group (racecheck sees both writes, by the issuing thread). Copies never waited for are
//     dropped when the block ends.
//   Misuse fails the launch: lanes of one warp at different collective operations, a lane missing
//   (exited, at a barrier), a misaligned or non-shared ldmatrix/cp.async address.
//
// Not emulated: memory ordering between blocks (blocks run sequentially), cooperative groups,
// textures, the cuda_fp16.h API, clock(). A stack overflow in a fiber hits the guard page (SIGSEGV).
#pragma once
#undef _FORTIFY_SOURCE
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

// The three ways this header is compiled.
#if defined(MGEMU_CHECK) && !defined(MGEMU_RUNTIME)
#define MGEMU_CHECKED_KERNELS 1  // kernels, instrumented; the runtime is only declared
#else
#define MGEMU_HAS_RUNTIME 1      // plain (runtime inline, with the kernels) or the checked runtime unit
#include <csetjmp>
#include <cstdarg>
#include <mutex>
#include <string>
#include <vector>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#endif
#if defined(MGEMU_CHECK) && defined(MGEMU_RUNTIME)
#define MGEMU_FN                 // external: called from the instrumented unit
#else
#define MGEMU_FN inline
#endif
// Functions of the instrumented unit whose own loads and stores are the emulator's, not the kernel's.
#define MGEMU_NOSAN __attribute__((no_sanitize_thread))

// ---------------------------------------------------------------- CUDA keywords
#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ thread_local
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#ifndef __restrict__
#define __restrict__ __restrict
#endif

struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
static constexpr int warpSize = 32;
// Vector types with CUDA's alignment (used for 8/16-byte loads).
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
// 16-bit floats as raw storage: the platform layer's types (see the header comment).
struct __attribute__((aligned(2))) mg_half { unsigned short bits; };
struct __attribute__((aligned(2))) mg_bf16 { unsigned short bits; };

// Error classes returned by mgemu_launch_ex (kernels/emulate/errors.py maps them to exceptions).
#define MGEMU_E_CONFIG 1   // refused before running: configuration, limits, unknown kernel
#define MGEMU_E_BARRIER 2  // __syncthreads misuse, deadlock
#define MGEMU_E_WARP 3     // shuffle / __syncwarp / vote misuse
#define MGEMU_E_RACE 4     // racecheck hazard in shared memory
#define MGEMU_E_BOUNDS 5   // access outside every argument / shared array
#define MGEMU_E_UNINIT 6   // read of shared memory no thread of the block wrote
#define MGEMU_E_TRAP 7     // __trap()

// Launch options (mirrored by ctypes in kernels/emulate/module.py).
struct mgemu_arg {       // one pointer argument of the launch
  uint64_t base, nbytes;
  uint32_t index, itemsize;
  const char* name;      // parameter name from the source ("" if unknown)
  const char* dtype;     // e.g. "float32"
};
struct mgemu_options {
  int32_t schedule;      // 0 forward, 1 reverse, 2 random
  int32_t check;         // 1: run the checks (needs a checked library)
  uint64_t seed;         // random schedule
  int32_t nargs;
  const mgemu_arg* args; // pointer arguments (null pointers included, nbytes 0)
  int32_t npoison;
  const uint64_t* poison;  // npoison (TLS offset, size) pairs: the kernel's static __shared__ arrays
  const char* schedule_name;  // for messages
};

namespace mgemu {

enum WarpOp : int { OP_IDX = 0, OP_XOR = 1, OP_DOWN = 2, OP_UP = 3, OP_SYNC = 4, OP_BALLOT = 5, OP_XCHG = 6 };
// What a warp exchange (OP_XCHG) serves: lanes of one meeting must agree on it.
enum XchgTag : int { XCHG_MMA = 1, XCHG_LDSM = 2, XCHG_LDSM_TRANS = 3 };
enum Access : int { READ = 0, WRITE = 1, ATOMIC = 2 };
typedef void (*Invoker)(void* kernel, void** args);

#ifdef MGEMU_CHECKED_KERNELS
// The runtime unit defines these; the kernels call them (no inlining across the two units).
void register_kernel(const char* name, void* fn, Invoker invoke, const char* sig, int nargs);
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
void syncthreads_at(const char* file, int line);
uint64_t warp_op(int op, unsigned mask, uint64_t value, int param, int width);
[[noreturn]] void trap();
void check_atomic(const void* p, unsigned size, void* pc);
void warp_exchange(unsigned mask, int tag, const uint64_t* vals, int n, uint64_t* out);
void ldmatrix(int num, int trans, const void* p, unsigned* r);
void cp_async(void* dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);
#endif

#ifdef MGEMU_HAS_RUNTIME
enum State : int { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP = 2, DONE = 3 };

struct Fiber {
  jmp_buf jb;
  ucontext_t uc;
  char* stack = nullptr;  // mapping base (guard page first)
  bool fresh = false;     // true once entered and parked at its loop start
  int state = DONE;
  uint3 tid{0, 0, 0};
  unsigned linear = 0, lane = 0, warp = 0;
  const char* site = nullptr;  // __syncthreads call site (file, line)
  int line = 0;
  // warp meeting
  int op = 0;
  unsigned mask = 0;
  int param = 0, width = 32;
  uint64_t value = 0, result = 0;
  // warp exchange (mma, ldmatrix): this lane's values, and where its copy of every lane's goes
  uint64_t xv[4] = {0, 0, 0, 0};
  uint64_t* xout = nullptr;
  // cp.async copies in flight: destination, data read at issue, group (-1: not committed yet)
  struct Copy { uintptr_t dst; unsigned char data[16]; int group; void* pc; };
  std::vector<Copy> copies;
  int groups = 0;  // commit_group calls so far in this block
};

struct KernelInfo {
  std::string name;
  void* fn;
  Invoker invoke;
  std::string sig;
  int nargs;
};

inline std::vector<KernelInfo>& registry() { static std::vector<KernelInfo> r; return r; }
MGEMU_FN void register_kernel(const char* name, void* fn, Invoker invoke, const char* sig, int nargs) {
  std::string n;
  for (const char* c = name; *c; ++c)
    if (*c != ' ') n += *c;
  registry().push_back(KernelInfo{n, fn, invoke, sig, nargs});
}

// ---- launch state (one launch at a time: g_mutex)
inline std::mutex g_mutex;
inline uint3 g_blockIdx{0, 0, 0};
inline dim3 g_blockDim, g_gridDim;
inline Fiber* g_cur = nullptr;
inline std::vector<Fiber*> g_pool;
inline unsigned g_nthreads = 0;
inline jmp_buf g_sched_jb;
inline jmp_buf g_init_jb;
inline Fiber* g_init_fiber = nullptr;
inline const KernelInfo* g_kernel = nullptr;
inline void** g_args = nullptr;
inline bool g_error = false;
inline int g_error_class = 0;
inline char g_msg[1536];
inline const char* g_schedule_name = "forward";
// schedule
inline int g_schedule = 0;
inline uint64_t g_rng = 1;
inline std::vector<unsigned> g_order;
// Fiber stack size: $MINIGRAD_EMU_STACK_KB KiB (default 64), read when the first fiber is made.
inline size_t stack_bytes() {
  static size_t n = [] {
    const char* e = getenv("MINIGRAD_EMU_STACK_KB");
    long kb = e ? atol(e) : 64;
    return (size_t)(kb >= 16 ? kb : 64) * 1024;
  }();
  return n;
}

inline size_t page_size() { static size_t p = (size_t)sysconf(_SC_PAGESIZE); return p; }

// Fail the launch from inside a fiber: record the message and go back to the scheduler.
[[noreturn]] inline void fail_class(int cls, const char* fmt, ...) {
  char body[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  snprintf(g_msg, sizeof g_msg, "kernel %s, block (%u,%u,%u): %s", g_kernel ? g_kernel->name.c_str() : "?",
           g_blockIdx.x, g_blockIdx.y, g_blockIdx.z, body);
  g_error = true;
  g_error_class = cls;
  _longjmp(g_sched_jb, 1);
}

inline void yield() {
  if (_setjmp(g_cur->jb) == 0) _longjmp(g_sched_jb, 1);
}

// Fiber body: park at the loop start, then run the kernel once per block it is resumed for.
inline void trampoline() {
  if (_setjmp(g_init_fiber->jb) == 0) _longjmp(g_init_jb, 1);
  for (;;) {
    g_kernel->invoke(g_kernel->fn, g_args);
    g_cur->state = DONE;
    yield();
  }
}

inline void enter_fresh(Fiber* f) {
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack + page_size();
  f->uc.uc_stack.ss_size = stack_bytes();
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, (void (*)())trampoline, 0);
  g_init_fiber = f;
  if (_setjmp(g_init_jb) == 0) setcontext(&f->uc);
  f->fresh = true;
}

inline bool ensure_pool(unsigned n) {
  while (g_pool.size() < n) {
    Fiber* f = new Fiber();
    size_t len = stack_bytes() + page_size();
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { delete f; return false; }
    mprotect(p, page_size(), PROT_NONE);  // guard page below the stack
    f->stack = (char*)p;
    g_pool.push_back(f);
  }
  for (unsigned i = 0; i < n; ++i)
    if (!g_pool[i]->fresh) enter_fresh(g_pool[i]);
  return true;
}

// ---- the checks' state (used by the checked runtime; compiled, and idle, in a plain library)
struct Cell {             // shadow of one shared-memory byte
  uint32_t w_epoch;       // barrier interval of the last write (< g_block_epoch: not written in this block)
  uint32_t r_epoch;       // interval of the readers below
  uint16_t w_tid, w_ws;   // last writer, and its warp's __syncwarp count at the write
  uint16_t r_tid[2], r_ws[2];  // up to two distinct readers in r_epoch (0xffff: none)
  uint32_t w_pc, r_pc[2]; // code offsets, for the message
};
struct SharedSym { uint64_t off, size; std::string name; bool dynamic; };
constexpr uint16_t NO_THREAD = 0xffff;
constexpr unsigned WARP_LOG = 64;  // __syncwarp events remembered per warp and barrier interval
struct WarpLog { unsigned n; unsigned masks[WARP_LOG]; };

inline bool g_check = false;       // this launch runs the checks
inline bool g_active = false;      // ... and a fiber is running kernel code now
inline uintptr_t g_stack_lo = 0, g_stack_len = 0;  // the running fiber's stack mapping
inline uintptr_t g_tls_lo = 0, g_tls_len = 0;      // this module's TLS block (all shared memory)
inline uintptr_t g_image_lo = 0, g_image_hi = 0;   // this library's mapped image (constants)
inline uintptr_t g_load_base = 0;                  // for code offsets (addr2line)
// Shadow cells: one per 4-byte granule while every access to it covers the whole granule (float,
// int, float4, double...), one per byte once an access touches part of it (the granule's cell is
// copied into its four byte cells and g_split marks it).
inline Cell* g_gshadow = nullptr;   // per granule
inline Cell* g_bshadow = nullptr;   // per byte
inline uint8_t* g_split = nullptr;  // per granule
inline size_t g_shadow_bytes = 0;   // TLS bytes covered
inline uint16_t* g_sym_of = nullptr;               // per TLS byte: 1 + index into g_syms (| 0x8000 if dynamic), 0 = none
inline std::vector<SharedSym> g_syms;
inline bool g_syms_dirty = true;
inline uint32_t g_epoch = 1, g_block_epoch = 1;
inline WarpLog g_wlog[32];
inline const mgemu_options* g_opts = nullptr;
inline size_t g_dyn_smem = 0;
inline int g_last_arg = -1;

inline unsigned warp_sync_count(unsigned warp) {
  unsigned n = g_wlog[warp].n;
  return n < 0xfffe ? n : 0xfffe;
}
inline void record_syncwarp(unsigned warp, unsigned mask) {
  WarpLog& L = g_wlog[warp];
  if (L.n < WARP_LOG) L.masks[L.n] = mask;
  ++L.n;
}
inline void new_interval() {
  ++g_epoch;
  for (auto& L : g_wlog) L.n = 0;
}

// ---- warp meetings
inline Fiber* lane_fiber(unsigned warp, unsigned lane) {
  unsigned t = warp * 32 + lane;
  return t < g_nthreads ? g_pool[t] : nullptr;
}

inline const char* collective_name(int op, int tag);
inline const char* op_name(int op) {
  switch (op) {
    case OP_IDX: return "__shfl_sync";
    case OP_XOR: return "__shfl_xor_sync";
    case OP_DOWN: return "__shfl_down_sync";
    case OP_UP: return "__shfl_up_sync";
    case OP_SYNC: return "__syncwarp";
    case OP_XCHG: return "a warp-collective operation (mma.sync / ldmatrix)";
    default: return "__ballot_sync/__any_sync/__all_sync";
  }
}

inline const char* collective_name(int op, int tag) {
  if (op != OP_XCHG) return op_name(op);
  switch (tag) {
    case XCHG_MMA: return "mma.sync.m16n8k16";
    case XCHG_LDSM: return "ldmatrix.x4";
    case XCHG_LDSM_TRANS: return "ldmatrix.x4.trans";
    default: return "a warp exchange";
  }
}

// Source lane of a shuffle for lane `lane`, or -1 when the lane keeps its own value.
inline int shfl_source(int op, unsigned lane, int param, int width) {
  int w = width;
  int base = (int)lane & ~(w - 1);
  switch (op) {
    case OP_IDX: return base + (param & (w - 1));
    case OP_XOR: { int s = (int)lane ^ param; return (s >= base && s < base + w) ? s : -1; }
    case OP_DOWN: { int s = (int)lane + param; return s < base + w ? s : -1; }
    case OP_UP: { int s = (int)lane - param; return s >= base ? s : -1; }
    default: return -1;
  }
}

MGEMU_FN uint64_t warp_op(int op, unsigned mask, uint64_t value, int param, int width) {
  Fiber* me = g_cur;
  if (!(mask >> me->lane & 1u))
    fail_class(MGEMU_E_WARP, "%s in warp %u: calling lane %u is not in its mask 0x%08x", op_name(op), me->warp,
               me->lane, mask);
  if (op <= OP_UP) {
    if (width < 1 || width > 32 || (width & (width - 1)))
      fail_class(MGEMU_E_WARP, "%s: width %d is not a power of two in 1..32", op_name(op), width);
    int src = shfl_source(op, me->lane, param, width);
    if (src >= 0 && !(mask >> src & 1u))
      fail_class(MGEMU_E_WARP, "%s in warp %u: lane %u reads lane %d, which is not in the mask 0x%08x",
                 op_name(op), me->warp, me->lane, src, mask);
  }
  me->op = op; me->mask = mask; me->value = value; me->param = param; me->width = width;
  me->state = AT_WARP;
  // Has every lane of the mask arrived?
  bool complete = true;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u) || l == me->lane) continue;
    Fiber* f = lane_fiber(me->warp, l);
    if (!f)
      fail_class(MGEMU_E_WARP, "%s in warp %u: mask 0x%08x names lane %u, which is outside the block (%u threads)",
                 op_name(op), me->warp, mask, l, g_nthreads);
    if (f->state == DONE)
      fail_class(MGEMU_E_WARP, "%s in warp %u: mask 0x%08x names lane %u, which has exited", op_name(op), me->warp,
                 mask, l);
    if (f->state == AT_BARRIER)
      fail_class(MGEMU_E_WARP, "%s in warp %u: mask 0x%08x names lane %u, which waits at __syncthreads",
                 op_name(op), me->warp, mask, l);
    if (f->state == AT_WARP && f->mask != mask)
      fail_class(MGEMU_E_WARP, "%s in warp %u: lane %u passes mask 0x%08x but lane %u waits with mask 0x%08x",
                 op_name(op), me->warp, me->lane, mask, l, f->mask);
    if (f->state == AT_WARP && (op == OP_XCHG || f->op == OP_XCHG) &&
        (f->op != op || f->param != param || f->width != width))
      fail_class(MGEMU_E_WARP, "warp %u: lane %u reaches %s while lane %u waits in %s (all lanes of a warp must "
                 "execute the same .sync.aligned instruction)", me->warp, me->lane, collective_name(op, param), l,
                 collective_name(f->op, f->param));
    if (f->state != AT_WARP) complete = false;
  }
  if (!complete) {
    yield();
    return me->result;
  }
  // Resolve the meeting for every lane of the mask, then carry on without yielding.
  if (op == OP_SYNC) record_syncwarp(me->warp, mask);
  if (op == OP_XCHG) {  // every lane gets every lane's values: out[l * n + i] = lane l's value i
    const int n = width;
    for (unsigned l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      Fiber* f = lane_fiber(me->warp, l);
      for (unsigned src = 0; src < 32; ++src) {
        Fiber* s = (mask >> src & 1u) ? lane_fiber(me->warp, src) : nullptr;
        for (int i = 0; i < n; ++i) f->xout[src * n + i] = s ? s->xv[i] : 0;
      }
      f->state = RUNNABLE;
    }
    return 0;
  }
  unsigned ballot = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (mask >> l & 1u) {
      Fiber* f = lane_fiber(me->warp, l);
      if (f->op == OP_BALLOT && f->value) ballot |= 1u << l;
    }
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    Fiber* f = lane_fiber(me->warp, l);
    if (f->op <= OP_UP) {
      int src = shfl_source(f->op, l, f->param, f->width);
      f->result = src >= 0 ? lane_fiber(me->warp, (unsigned)src)->value : f->value;
    } else {
      f->result = ballot;
    }
    f->state = RUNNABLE;
  }
  return me->result;
}

MGEMU_FN void syncthreads_at(const char* file, int line) {
  g_cur->site = file;
  g_cur->line = line;
  g_cur->state = AT_BARRIER;
  yield();
}

// Every lane of `mask` publishes n <= 4 values; each gets all of them in out[32 * n] (lane-major).
MGEMU_FN void warp_exchange(unsigned mask, int tag, const uint64_t* vals, int n, uint64_t* out) {
  Fiber* me = g_cur;
  for (int i = 0; i < n && i < 4; ++i) me->xv[i] = vals[i];
  me->xout = out;
  warp_op(OP_XCHG, mask, 0, tag, n);
}

MGEMU_FN uint3 thread_idx() { return g_cur->tid; }
MGEMU_FN uint3 block_idx() { return g_blockIdx; }
MGEMU_FN dim3 block_dim() { return g_blockDim; }
MGEMU_FN dim3 grid_dim() { return g_gridDim; }
[[noreturn]] MGEMU_FN void trap() {
  fail_class(MGEMU_E_TRAP, "__trap() called by thread (%u,%u,%u)", g_cur->tid.x, g_cur->tid.y, g_cur->tid.z);
}

// ---- the checks
inline void thread_name(unsigned linear, char* out, size_t len) {
  unsigned x = linear % g_blockDim.x, y = (linear / g_blockDim.x) % g_blockDim.y,
           z = linear / (g_blockDim.x * g_blockDim.y);
  snprintf(out, len, "thread (%u,%u,%u)", x, y, z);
}
inline uint32_t code_offset(void* pc) {
  uintptr_t p = (uintptr_t)pc;
  return p > g_load_base ? (uint32_t)(p - g_load_base - 1) : 0;  // -1: inside the call instruction
}
inline const char* access_verb(int kind) { return kind == WRITE ? "writes" : kind == READ ? "reads" : "atomically updates"; }

// Describe TLS offset `o` as "array (N bytes) at byte B".
inline void describe_shared(uint64_t o, char* out, size_t len) {
  uint16_t s = g_sym_of ? g_sym_of[o] & 0x7fff : 0;
  if (!s) { snprintf(out, len, "shared memory at TLS offset %llu", (unsigned long long)o); return; }
  const SharedSym& y = g_syms[s - 1];
  if (y.dynamic)
    snprintf(out, len, "dynamic shared memory %s (%zu bytes at this launch) at byte %llu", y.name.c_str(),
             g_dyn_smem, (unsigned long long)(o - y.off));
  else
    snprintf(out, len, "shared array %s (%llu bytes) at byte %llu", y.name.c_str(), (unsigned long long)y.size,
             (unsigned long long)(o - y.off));
}

// Are thread a's access (made when its warp had done `a_ws` __syncwarps this interval) and thread
// b's access now ordered? Only a __syncwarp since then naming both lanes orders them.
inline bool ordered(unsigned a, unsigned a_ws, unsigned b) {
  if (a / 32 != b / 32) return false;
  const WarpLog& L = g_wlog[b / 32];
  unsigned both = (1u << (a % 32)) | (1u << (b % 32));
  for (unsigned k = a_ws; k < L.n; ++k) {
    if (k >= WARP_LOG) return true;  // events no longer remembered: assume ordered (no invented hazard)
    if ((L.masks[k] & both) == both) return true;
  }
  return false;
}

[[noreturn]] inline void hazard(const char* what, unsigned first, const char* first_verb, uint32_t first_pc,
                                unsigned second, const char* second_verb, uint32_t second_pc, uint64_t o,
                                unsigned n) {
  char t1[48], t2[48], where[256];
  thread_name(first, t1, sizeof t1);
  thread_name(second, t2, sizeof t2);
  describe_shared(o, where, sizeof where);
  fail_class(MGEMU_E_RACE,
             "%s hazard in shared memory: %s %s %s (@pc:%x@) and %s %s %u bytes there (@pc:%x@) in the same "
             "barrier interval, with no __syncthreads (or __syncwarp naming both lanes) between them",
             what, t1, first_verb, where, first_pc, t2, second_verb, n, second_pc);
}

[[noreturn]] inline void shared_out_of_bounds(uint64_t o, unsigned n, int kind, void* pc, uint16_t s) {
  char t[48], where[256];
  thread_name(g_cur->linear, t, sizeof t);
  describe_shared(o, where, sizeof where);
  if (s && g_syms[s - 1].dynamic)
    fail_class(MGEMU_E_BOUNDS, "%s %s %u bytes at byte %llu of dynamic shared memory %s, past the %zu bytes the "
               "launch asked for (shared_mem) (@pc:%x@)", t, access_verb(kind), n,
               (unsigned long long)(o - g_syms[s - 1].off), g_syms[s - 1].name.c_str(), g_dyn_smem, code_offset(pc));
  fail_class(MGEMU_E_BOUNDS, "%s %s %u bytes of shared memory outside every shared array (%s) (@pc:%x@)", t,
             access_verb(kind), n, where, code_offset(pc));
}

// The shadow cell of the granule or byte at `x` for an access [o, end): the granule's own cell if
// the access covers it whole and it was never split, else the byte's (splitting it first).
inline Cell* cell_at(uint64_t x, uint64_t o, uint64_t end, uint64_t* next) {
  const uint64_t g = x / 4, lo = g * 4;
  if (!g_split[g]) {
    if (lo >= o && lo + 4 <= end) { *next = lo + 4; return &g_gshadow[g]; }
    for (int k = 0; k < 4; ++k) g_bshadow[lo + k] = g_gshadow[g];
    g_split[g] = 1;
  }
  *next = x + 1;
  return &g_bshadow[x];
}

inline void shared_access(uint64_t o, unsigned n, int kind, void* pc) {
  const uint64_t end = o + n;
  // bounds: all n bytes inside one shared array (and inside the launch's dynamic bytes)
  if (g_sym_of) {
    const uint16_t s = g_sym_of[o];
    if (!s || end > g_tls_len || g_sym_of[end - 1] != s) shared_out_of_bounds(o, n, kind, pc, s & 0x7fff);
    if ((s & 0x8000) && end > g_syms[(s & 0x7fff) - 1].off + g_dyn_smem) shared_out_of_bounds(o, n, kind, pc, s & 0x7fff);
  }
  const unsigned me = g_cur->linear;
  const uint32_t cur = g_epoch;
  const uint16_t ws = (uint16_t)warp_sync_count(me / 32);
  const uint32_t pc32 = code_offset(pc);
  bool delayed = false;
restart:
  for (uint64_t x = o, next; x < end; x = next) {
    Cell* c = cell_at(x, o, end, &next);
    if (kind != WRITE && c->w_epoch < g_block_epoch) {
      if (!delayed) {
        // Nothing this block ran so far wrote it. Let the other threads run first (until they wait
        // or exit): a write of theirs in this interval is then a race with this read, not an
        // initialisation; with none, the read is of uninitialised memory.
        delayed = true;
        yield();
        goto restart;
      }
      char t[48], where[256];
      thread_name(me, t, sizeof t);
      describe_shared(x, where, sizeof where);
      fail_class(MGEMU_E_UNINIT, "%s %s %u bytes of %s that no thread of this block has written (@pc:%x@)", t,
                 access_verb(kind), n, where, pc32);
    }
    if (kind == ATOMIC) continue;  // atomics never race with each other: bounds and initialisation only
    if (c->w_epoch == cur && c->w_tid != me && !ordered(c->w_tid, c->w_ws, me))
      hazard(kind == READ ? "read-after-write" : "write-after-write", c->w_tid, "wrote", c->w_pc, me,
             kind == READ ? "read" : "wrote", pc32, x, n);
    if (kind == READ) {
      if (c->r_epoch != cur) {
        c->r_epoch = cur;
        c->r_tid[0] = (uint16_t)me; c->r_ws[0] = ws; c->r_pc[0] = pc32;
        c->r_tid[1] = NO_THREAD;
      } else if (c->r_tid[0] == me) {
        c->r_ws[0] = ws;
      } else if (c->r_tid[1] == me) {
        c->r_ws[1] = ws;
      } else {
        c->r_tid[1] = (uint16_t)me; c->r_ws[1] = ws; c->r_pc[1] = pc32;
      }
    } else {
      if (c->r_epoch == cur)
        for (int r = 0; r < 2; ++r)
          if (c->r_tid[r] != NO_THREAD && c->r_tid[r] != me && !ordered(c->r_tid[r], c->r_ws[r], me))
            hazard("write-after-read", c->r_tid[r], "read", c->r_pc[r], me, "wrote", pc32, x, n);
      c->w_epoch = cur; c->w_tid = (uint16_t)me; c->w_ws = ws; c->w_pc = pc32;
    }
  }
}

[[noreturn]] inline void out_of_bounds(uintptr_t a, unsigned n, int kind, void* pc) {
  char t[48];
  thread_name(g_cur->linear, t, sizeof t);
  const mgemu_options* o = g_opts;
  // the nearest argument: the one a ran past the end of, or ran before the start of
  int best = -1;
  uintptr_t best_d = ~(uintptr_t)0;
  bool after = true;
  std::string nulls;
  for (int i = 0; o && i < o->nargs; ++i) {
    const mgemu_arg& g = o->args[i];
    if (!g.base) {
      nulls += nulls.empty() ? "" : ", ";
      nulls += "argument " + std::to_string(g.index) + (g.name[0] ? std::string(" ") + g.name : std::string());
      continue;
    }
    uintptr_t lo = (uintptr_t)g.base, hi = lo + (uintptr_t)g.nbytes;
    if (a >= hi && a - hi < best_d) { best = i; best_d = a - hi; after = true; }
    else if (a < lo && lo - a < best_d) { best = i; best_d = lo - a; after = false; }
    else if (a >= lo && a < hi) { best = i; best_d = 0; after = true; }  // starts inside, runs past the end
  }
  if (a < 65536) {
    fail_class(MGEMU_E_BOUNDS, "%s %s %u bytes at address 0x%llx: a null pointer (null arguments: %s) (@pc:%x@)",
               t, access_verb(kind), n, (unsigned long long)a, nulls.empty() ? "none" : nulls.c_str(), code_offset(pc));
  }
  if (best < 0)
    fail_class(MGEMU_E_BOUNDS, "%s %s %u bytes at 0x%llx, outside every argument of the launch (@pc:%x@)", t,
               access_verb(kind), n, (unsigned long long)a, code_offset(pc));
  const mgemu_arg& g = o->args[best];
  const unsigned long long isz = g.itemsize ? g.itemsize : 1, count = g.nbytes / isz;
  const long long index = ((long long)a - (long long)g.base) / (long long)isz;
  char arg[160];
  snprintf(arg, sizeof arg, "argument %u%s%s (%s, %llu elements)", g.index, g.name[0] ? " " : "", g.name, g.dtype,
           count);
  if (after) {
    unsigned long long past = (unsigned long long)(a + n - ((uintptr_t)g.base + g.nbytes));
    fail_class(MGEMU_E_BOUNDS, "%s %s %u bytes at element %lld of %s: %llu bytes past its end (@pc:%x@)", t,
               access_verb(kind), n, index, arg, past, code_offset(pc));
  }
  fail_class(MGEMU_E_BOUNDS, "%s %s %u bytes at element %lld of %s: %llu bytes before its start (@pc:%x@)", t,
             access_verb(kind), n, index, arg, (unsigned long long)best_d, code_offset(pc));
}

inline void global_access(uintptr_t a, unsigned n, int kind, void* pc) {
  const mgemu_options* o = g_opts;
  if (g_last_arg >= 0) {
    const mgemu_arg& g = o->args[g_last_arg];
    if (a >= g.base && a + n <= g.base + g.nbytes) return;
  }
  for (int i = 0; o && i < o->nargs; ++i) {
    const mgemu_arg& g = o->args[i];
    if (a >= g.base && a + n <= g.base + g.nbytes) { g_last_arg = i; return; }
  }
  if (a >= g_image_lo && a + n <= g_image_hi) return;  // the library's own constants
  out_of_bounds(a, n, kind, pc);
}

inline void access(const void* p, unsigned n, int kind, void* pc) {
  const uintptr_t a = (uintptr_t)p;
  if (a - g_stack_lo < g_stack_len) return;                       // a local of the running thread
  if (a - g_tls_lo < g_tls_len) return shared_access(a - g_tls_lo, n ? n : 1, kind, pc);
  global_access(a, n ? n : 1, kind, pc);
}

MGEMU_FN void check_atomic(const void* p, unsigned size, void* pc) {
  if (g_active) access(p, size, ATOMIC, pc);
}

// ---- the tensor-core platform layer's memory operations (see the header comment). The accesses
// are checked here, explicitly (this is runtime code, not instrumented), as the issuing thread's.
inline bool in_shared(uintptr_t a, size_t n) { return g_tls_len && a - g_tls_lo < g_tls_len && a + n - g_tls_lo <= g_tls_len; }

MGEMU_FN void ldmatrix(int num, int trans, const void* p, unsigned* r) {
  void* pc = __builtin_return_address(0);
  uint64_t mine = (uint64_t)(uintptr_t)p, rows[32];
  warp_exchange(0xffffffffu, trans ? XCHG_LDSM_TRANS : XCHG_LDSM, &mine, 1, rows);
  Fiber* me = g_cur;
  const char* what = trans ? "ldmatrix.x4.trans" : "ldmatrix.x4";
  for (int l = 0; l < 8 * num; ++l) {
    if (rows[l] & 15)
      fail_class(MGEMU_E_WARP, "%s in warp %u: lane %d's row address 0x%llx is not 16-byte aligned", what, me->warp,
                 l, (unsigned long long)rows[l]);
    if (!in_shared((uintptr_t)rows[l], 16))
      fail_class(MGEMU_E_BOUNDS, "%s in warp %u: lane %d's row address 0x%llx is not in shared memory", what,
                 me->warp, l, (unsigned long long)rows[l]);
  }
  const unsigned g = me->lane >> 2, t = me->lane & 3;
  for (int i = 0; i < num; ++i) {
    const unsigned short *lo, *hi;
    if (!trans) {  // row g of matrix i, columns 2t and 2t+1
      lo = (const unsigned short*)(uintptr_t)rows[8 * i + g] + 2 * t;
      hi = lo + 1;
      if (g_active) access(lo, 4, READ, pc);
    } else {       // column g of matrix i, rows 2t and 2t+1
      lo = (const unsigned short*)(uintptr_t)rows[8 * i + 2 * t] + g;
      hi = (const unsigned short*)(uintptr_t)rows[8 * i + 2 * t + 1] + g;
      if (g_active) { access(lo, 2, READ, pc); access(hi, 2, READ, pc); }
    }
    r[i] = (unsigned)*lo | ((unsigned)*hi << 16);
  }
}

MGEMU_FN void cp_async(void* dst, const void* src, int src_bytes) {
  void* pc = __builtin_return_address(0);
  const uintptr_t d = (uintptr_t)dst;
  if ((d & 15) || ((uintptr_t)src & 15))
    fail_class(MGEMU_E_BOUNDS, "cp.async by thread (%u,%u,%u): %s address %p is not 16-byte aligned", g_cur->tid.x,
               g_cur->tid.y, g_cur->tid.z, (d & 15) ? "destination" : "source", (d & 15) ? dst : src);
  if (src_bytes < 0 || src_bytes > 16)
    fail_class(MGEMU_E_BOUNDS, "cp.async by thread (%u,%u,%u): src-size %d is not in 0..16", g_cur->tid.x,
               g_cur->tid.y, g_cur->tid.z, src_bytes);
  if (!in_shared(d, 16))
    fail_class(MGEMU_E_BOUNDS, "cp.async by thread (%u,%u,%u): destination %p is not in shared memory", g_cur->tid.x,
               g_cur->tid.y, g_cur->tid.z, dst);
  Fiber::Copy c;
  c.dst = d;
  c.group = -1;
  c.pc = pc;
  std::memset(c.data, 0, 16);
  if (src_bytes) {
    if (g_active) access(src, (unsigned)src_bytes, READ, pc);
    std::memcpy(c.data, src, (size_t)src_bytes);
  }
  if (g_active) access(dst, 16, WRITE, pc);
  std::memset(dst, 0xff, 16);  // in flight: undefined until a wait_group completes it
  g_cur->copies.push_back(c);
}

MGEMU_FN void cp_async_commit() {
  Fiber* me = g_cur;
  ++me->groups;
  for (auto& c : me->copies)
    if (c.group < 0) c.group = me->groups;
}

MGEMU_FN void cp_async_wait(int n) {
  Fiber* me = g_cur;
  size_t keep = 0;
  for (size_t i = 0; i < me->copies.size(); ++i) {
    Fiber::Copy& c = me->copies[i];
    if (c.group >= 0 && c.group <= me->groups - n) {  // at most n of the newest groups may stay pending
      if (g_active) access((void*)c.dst, 16, WRITE, c.pc);
      std::memcpy((void*)c.dst, c.data, 16);
    } else {
      me->copies[keep++] = c;
    }
  }
  me->copies.resize(keep);
}

// ---- the scheduler: runs one block to completion or failure
inline void describe_states(char* out, size_t len) {
  size_t used = 0;
  out[0] = 0;
  static const char* names[] = {"running", "at __syncthreads", "in a warp operation", "exited"};
  unsigned i = 0;
  while (i < g_nthreads && used + 80 < len) {
    int s = g_pool[i]->state;
    unsigned j = i;
    while (j + 1 < g_nthreads && g_pool[j + 1]->state == s) ++j;
    used += snprintf(out + used, len - used, "%sthreads %u-%u %s", used ? ", " : "", i, j, names[s]);
    i = j + 1;
  }
}

inline uint64_t next_random() {  // xorshift64*
  g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
  return g_rng * 0x2545F4914F6CDD1Dull;
}

// The order of one scheduler pass over the block's threads.
inline void pass_order() {
  g_order.resize(g_nthreads);
  for (unsigned i = 0; i < g_nthreads; ++i) g_order[i] = g_schedule == 1 ? g_nthreads - 1 - i : i;
  if (g_schedule == 2)
    for (unsigned i = g_nthreads; i > 1; --i) std::swap(g_order[i - 1], g_order[next_random() % i]);
}

inline void block_failed(int cls, const char* fmt, ...) {
  char body[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  snprintf(g_msg, sizeof g_msg, "kernel %s, block (%u,%u,%u): %s", g_kernel->name.c_str(), g_blockIdx.x,
           g_blockIdx.y, g_blockIdx.z, body);
  g_error = true;
  g_error_class = cls;
}

inline bool run_block() {
  for (unsigned i = 0; i < g_nthreads; ++i) {
    Fiber* f = g_pool[i];
    f->state = RUNNABLE;
    f->linear = i;
    f->lane = i % 32;
    f->warp = i / 32;
    f->tid.x = i % g_blockDim.x;
    f->tid.y = (i / g_blockDim.x) % g_blockDim.y;
    f->tid.z = i / (g_blockDim.x * g_blockDim.y);
    f->fresh = false;  // will be mid-kernel until it finishes
    f->copies.clear();  // cp.async copies of an earlier block are gone
    f->groups = 0;
  }
  new_interval();
  g_block_epoch = g_epoch;  // shared bytes written before this are unwritten for this block
  for (;;) {
    bool ran = false;
    pass_order();
    for (unsigned k = 0; k < g_nthreads; ++k) {
      Fiber* f = g_pool[g_order[k]];
      if (f->state != RUNNABLE) continue;
      ran = true;
      g_cur = f;
      g_stack_lo = (uintptr_t)f->stack;
      g_stack_len = stack_bytes() + page_size();
      g_active = g_check;
      if (_setjmp(g_sched_jb) == 0) _longjmp(f->jb, 1);
      g_active = false;
      if (g_error) return false;
    }
    unsigned done = 0, barrier = 0;
    for (unsigned i = 0; i < g_nthreads; ++i) {
      done += g_pool[i]->state == DONE;
      barrier += g_pool[i]->state == AT_BARRIER;
    }
    if (done == g_nthreads) break;
    if (barrier && barrier + done == g_nthreads) {
      char st[512];
      describe_states(st, sizeof st);
      if (done) {
        block_failed(MGEMU_E_BARRIER, "__syncthreads reached by only some threads of the block (%s)", st);
        return false;
      }
      Fiber* f0 = g_pool[0];
      for (unsigned i = 1; i < g_nthreads; ++i)
        if (g_pool[i]->site != f0->site || g_pool[i]->line != f0->line) {
          block_failed(MGEMU_E_BARRIER, "threads 0 and %u wait at different __syncthreads calls (line %d and line %d)",
                       i, f0->line, g_pool[i]->line);
          return false;
        }
      for (unsigned i = 0; i < g_nthreads; ++i) g_pool[i]->state = RUNNABLE;
      new_interval();
      continue;
    }
    if (!ran) {
      char st[512];
      // A warp operation that waits for a lane which exited or sits at a barrier: say which.
      for (unsigned i = 0; i < g_nthreads; ++i) {
        Fiber* f = g_pool[i];
        if (f->state != AT_WARP) continue;
        for (unsigned l = 0; l < 32; ++l) {
          Fiber* o = (f->mask >> l & 1u) ? lane_fiber(f->warp, l) : nullptr;
          if (!o || (o->state != DONE && o->state != AT_BARRIER)) continue;
          block_failed(MGEMU_E_WARP, "%s in warp %u: lane %u waits with mask 0x%08x naming lane %u, which %s",
                       op_name(f->op), f->warp, f->lane, f->mask, l,
                       o->state == DONE ? "has exited" : "waits at __syncthreads");
          return false;
        }
      }
      describe_states(st, sizeof st);
      block_failed(MGEMU_E_BARRIER, "deadlock, no thread can proceed (%s)", st);
      return false;
    }
  }
  for (unsigned i = 0; i < g_nthreads; ++i) g_pool[i]->fresh = true;  // parked at the loop start again
  return true;
}
#endif  // MGEMU_HAS_RUNTIME

// ---- registration of instantiations
// Parameter type codes: f float, d double, ? bool, i32/u32/i64/u64/i8... integers, v void,
// *X pointer to X (const ignored), xN any other type of N bytes. Appended to `out`.
template <typename T>
MGEMU_NOSAN void type_code(char* out) {
  using U = typename std::remove_cv<T>::type;
  char* end = out + strlen(out);
  if constexpr (std::is_pointer<U>::value) {
    strcpy(end, "*");
    type_code<typename std::remove_pointer<U>::type>(out);
  } else if constexpr (std::is_void<U>::value) strcpy(end, "v");
  else if constexpr (std::is_same<U, float>::value) strcpy(end, "f");
  else if constexpr (std::is_same<U, double>::value) strcpy(end, "d");
  else if constexpr (std::is_same<U, bool>::value) strcpy(end, "?");
  else if constexpr (std::is_same<U, mg_half>::value) strcpy(end, "f16");
  else if constexpr (std::is_same<U, mg_bf16>::value) strcpy(end, "bf16");
  else if constexpr (std::is_integral<U>::value) sprintf(end, "%c%d", std::is_signed<U>::value ? 'i' : 'u', (int)(8 * sizeof(U)));
  else sprintf(end, "x%d", (int)sizeof(U));
}

// Loads the arguments from the caller's array (emulator memory, not the kernel's) and calls it.
template <typename... A, size_t... I>
MGEMU_NOSAN void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
  k(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}
template <typename... A>
MGEMU_NOSAN void invoke_kernel(void* k, void** args) {
  call_with(reinterpret_cast<void (*)(A...)>(k), args, std::index_sequence_for<A...>{});
}

struct Registrar {
  template <typename... A>
  MGEMU_NOSAN Registrar(const char* name, void (*k)(A...)) {
    char sig[1024] = "";
    int i = 0;
    ((strcat(sig, i++ ? "," : ""), type_code<A>(sig)), ...);
    (void)i;
    register_kernel(name, reinterpret_cast<void*>(k), &invoke_kernel<A...>, sig, (int)sizeof...(A));
  }
};

}  // namespace mgemu

#define MGEMU_CAT2(a, b) a##b
#define MGEMU_CAT(a, b) MGEMU_CAT2(a, b)
#define MGEMU_KERNEL(...) static ::mgemu::Registrar MGEMU_CAT(mgemu_reg_, __COUNTER__)(#__VA_ARGS__, &__VA_ARGS__);

// Defined by build.py's generated unit: fills every `extern __shared__` buffer with 0xff bytes.
extern "C" void mgemu_poison_dynamic_smem(size_t nbytes);
#define MGEMU_MAX_DYNAMIC_SMEM (227 * 1024)

// ---------------------------------------------------------------- built-in variables
#ifdef MGEMU_CHECKED_KERNELS
// By value, from the runtime: the kernel's own accesses are the only ones the hooks see.
#define threadIdx (::mgemu::thread_idx())
#define blockIdx (::mgemu::block_idx())
#define blockDim (::mgemu::block_dim())
#define gridDim (::mgemu::grid_dim())
#define MGEMU_ATOMIC_CHECK(p) ::mgemu::check_atomic((p), sizeof(*(p)), __builtin_return_address(0))
#else
#define threadIdx (static_cast<const uint3&>(::mgemu::g_cur->tid))
#define blockIdx (static_cast<const uint3&>(::mgemu::g_blockIdx))
#define blockDim (static_cast<const dim3&>(::mgemu::g_blockDim))
#define gridDim (static_cast<const dim3&>(::mgemu::g_gridDim))
#define MGEMU_ATOMIC_CHECK(p) ((void)0)
#endif

// ---------------------------------------------------------------- synchronisation
#define __syncthreads() ::mgemu::syncthreads_at(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::mgemu::warp_op(::mgemu::OP_SYNC, mask, 0, 0, 32); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
[[noreturn]] inline void __trap() { ::mgemu::trap(); }

template <typename T>
inline uint64_t mgemu_to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type larger than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T mgemu_from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32) {
  return mgemu_from_bits<T>(::mgemu::warp_op(::mgemu::OP_IDX, mask, mgemu_to_bits(var), srcLane, width));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32) {
  return mgemu_from_bits<T>(::mgemu::warp_op(::mgemu::OP_XOR, mask, mgemu_to_bits(var), laneMask, width));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return mgemu_from_bits<T>(::mgemu::warp_op(::mgemu::OP_DOWN, mask, mgemu_to_bits(var), (int)delta, width));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return mgemu_from_bits<T>(::mgemu::warp_op(::mgemu::OP_UP, mask, mgemu_to_bits(var), (int)delta, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return (unsigned)::mgemu::warp_op(::mgemu::OP_BALLOT, mask, pred != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// ---------------------------------------------------------------- atomics (fibers never preempt)
// Checked: the access is checked as an atomic (bounds, initialisation; never a race), then done
// without instrumentation.
template <typename T>
MGEMU_NOSAN inline T atomicAdd(T* p, T v) { MGEMU_ATOMIC_CHECK(p); T old = *p; *p = old + v; return old; }
template <typename T>
MGEMU_NOSAN inline T atomicMax(T* p, T v) { MGEMU_ATOMIC_CHECK(p); T old = *p; *p = old < v ? v : old; return old; }
template <typename T>
MGEMU_NOSAN inline T atomicMin(T* p, T v) { MGEMU_ATOMIC_CHECK(p); T old = *p; *p = v < old ? v : old; return old; }
template <typename T>
MGEMU_NOSAN inline T atomicExch(T* p, T v) { MGEMU_ATOMIC_CHECK(p); T old = *p; *p = v; return old; }
template <typename T>
MGEMU_NOSAN inline T atomicCAS(T* p, T cmp, T v) { MGEMU_ATOMIC_CHECK(p); T old = *p; if (old == cmp) *p = v; return old; }

// ---------------------------------------------------------------- math builtins
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __int_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float exp10f(float x) { return std::pow(10.0f, x); }
// float/double overloads of the unsuffixed names, as CUDA provides; the f-suffixed C functions
// (expf, sqrtf, fmaxf, exp2f, ...) come from <math.h> through <cmath>.
using std::sqrt; using std::exp; using std::log; using std::fabs; using std::fma; using std::tanh;
using std::fmax; using std::fmin; using std::exp2; using std::log2; using std::erf; using std::pow;
using std::floor; using std::ceil; using std::isinf; using std::isnan; using std::isfinite; using std::abs;
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
template <typename T>
inline void __stcg(T* p, T v) { *p = v; }

// ---------------------------------------------------------------- the tensor-core platform layer
// (see the header comment; the .cu files implement the same names with PTX for the GPU)
inline float mg_float(float x) { return x; }
inline float mg_float(mg_bf16 x) { return __uint_as_float((unsigned)x.bits << 16); }
inline float mg_float(mg_half x) {  // IEEE binary16 -> binary32, exact
  const unsigned sign = (unsigned)(x.bits & 0x8000u) << 16, e = (x.bits >> 10) & 0x1fu, m = x.bits & 0x3ffu;
  if (e == 0x1f) return __uint_as_float(sign | 0x7f800000u | (m << 13));  // inf, NaN (payload kept)
  if (e == 0) {                                                            // zero, subnormal: m * 2^-24
    const float v = (float)m * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}
template <typename X> inline X mg_round(float x);
template <> inline float mg_round<float>(float x) { return x; }
template <> inline mg_bf16 mg_round<mg_bf16>(float x) {  // cvt.rn.bf16.f32
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return mg_bf16{0x7fff};
  return mg_bf16{(unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
template <> inline mg_half mg_round<mg_half>(float x) {  // cvt.rn.f16.f32
  const unsigned u = __float_as_uint(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return mg_half{0x7fff};
  if (a >= 0x477ff000u) return mg_half{(unsigned short)(sign | 0x7c00u)};  // >= 65520 rounds to inf
  if (a >= 0x38800000u) {                                                   // normal: rebias 127 -> 15
    const unsigned r = a - 0x38000000u + 0xfffu + ((a >> 13) & 1u);
    return mg_half{(unsigned short)(sign | (r >> 13))};
  }
  if (a < 0x33000000u) return mg_half{(unsigned short)sign};  // below 2^-25: zero (2^-25 ties to even 0)
  const unsigned e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126u - e;  // subnormal: m * 2^(e-126)
  unsigned n = m >> shift;
  const unsigned rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
  if (rem > halfway || (rem == halfway && (n & 1u))) ++n;
  return mg_half{(unsigned short)(sign | n)};
}
template <typename X> inline unsigned mg_pack2(float lo, float hi) {  // cvt.rn.{f16,bf16}x2.f32
  return (unsigned)mg_round<X>(lo).bits | ((unsigned)mg_round<X>(hi).bits << 16);
}

inline unsigned mgemu_lane() {
  return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u;
}
template <typename X> inline double mgemu_half_of(uint64_t word, unsigned half) {
  X x;
  x.bits = (unsigned short)(word >> (16 * half));
  return (double)mg_float(x);
}
// mma.sync.aligned.m16n8k16.row.col.f32.X.X.f32: d = a b + d over the warp (see the header comment).
template <typename X> inline void mg_mma_16816(float* d, const unsigned* a, const unsigned* b) {
  const uint64_t mine[3] = {a[0] | (uint64_t)a[1] << 32, a[2] | (uint64_t)a[3] << 32, b[0] | (uint64_t)b[1] << 32};
  uint64_t all[96];
  ::mgemu::warp_exchange(0xffffffffu, ::mgemu::XCHG_MMA, mine, 3, all);
  const unsigned lane = mgemu_lane(), g = lane >> 2, t = lane & 3u;
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    double sum = 0.0;
    for (unsigned k = 0; k < 16; ++k) {
      // A(row, k): lane (row%8)*4 + (k%8)/2, register (row/8) + 2(k/8), half k%2 (registers 0,1 in word 0)
      const unsigned la = (row & 7) * 4 + ((k & 7) >> 1), ra = (row >> 3) + 2 * (k >> 3);
      // B(k, col): lane col*4 + (k%8)/2, register k/8, half k%2 (word 2)
      const unsigned lb = col * 4 + ((k & 7) >> 1), rb = k >> 3;
      sum += mgemu_half_of<X>(all[la * 3 + ra / 2] >> (32 * (ra & 1)), k & 1) *
             mgemu_half_of<X>(all[lb * 3 + 2] >> (32 * rb), k & 1);
    }
    d[i] = (float)(sum + (double)d[i]);
  }
}
inline void mg_ldsm_x4(unsigned* r, const void* p) { ::mgemu::ldmatrix(4, 0, p, r); }
inline void mg_ldsm_x4_trans(unsigned* r, const void* p) { ::mgemu::ldmatrix(4, 1, p, r); }
inline void mg_cp_async_16(void* dst, const void* src, int src_bytes) { ::mgemu::cp_async(dst, src, src_bytes); }
inline void mg_cp_async_commit() { ::mgemu::cp_async_commit(); }
template <int N> inline void mg_cp_async_wait() { ::mgemu::cp_async_wait(N); }

// ---------------------------------------------------------------- C entry points
#ifdef MGEMU_HAS_RUNTIME
#include <dlfcn.h>
#include <link.h>

namespace mgemu {
// Where this library is: its TLS block in the calling thread (all of it is shared memory but for
// g_thread_tls, which caches it per thread; reading it allocates the block in a new thread), its
// mapped image and its load base.
inline thread_local uintptr_t g_thread_tls[3] = {0, 0, 0};
struct ModuleFind { uintptr_t fn; uintptr_t tls_lo, tls_len, img_lo, img_hi, base; bool found; };
inline int find_module_cb(struct dl_phdr_info* info, size_t, void* data) {
  ModuleFind* m = (ModuleFind*)data;
  bool mine = false;
  uintptr_t lo = ~(uintptr_t)0, hi = 0, tls_len = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD) {
      uintptr_t s = info->dlpi_addr + ph.p_vaddr, e = s + ph.p_memsz;
      if (m->fn >= s && m->fn < e) mine = true;
      if (s < lo) lo = s;
      if (e > hi) hi = e;
    } else if (ph.p_type == PT_TLS) {
      tls_len = ph.p_memsz;
    }
  }
  if (!mine) return 0;
  m->found = true;
  m->img_lo = lo; m->img_hi = hi; m->base = info->dlpi_addr;
  m->tls_lo = (uintptr_t)info->dlpi_tls_data;
  m->tls_len = m->tls_lo ? tls_len : 0;
  return 1;
}
inline bool locate_module() {
  if (g_thread_tls[2]) {  // this thread already found it (the access also allocates the block here)
    g_tls_lo = g_thread_tls[0];
    g_tls_len = g_thread_tls[1];
    return true;
  }
  ModuleFind m{(uintptr_t)&find_module_cb, 0, 0, 0, 0, 0, false};
  dl_iterate_phdr(find_module_cb, &m);
  if (!m.found) return false;
  g_tls_lo = m.tls_lo; g_tls_len = m.tls_len;
  g_image_lo = m.img_lo; g_image_hi = m.img_hi; g_load_base = m.base;
  g_thread_tls[0] = m.tls_lo; g_thread_tls[1] = m.tls_len; g_thread_tls[2] = 1;
  return true;
}
// Shadow memory and the byte -> shared array map, sized to the TLS block, made once.
inline bool prepare_shadow() {
  if (!g_gshadow || g_shadow_bytes < g_tls_len) {
    const size_t bytes = (g_tls_len ? g_tls_len : 4) + 4, granules = (bytes + 3) / 4;
    if (g_gshadow) {
      munmap(g_gshadow, granules * sizeof(Cell));
      munmap(g_bshadow, bytes * sizeof(Cell));
      munmap(g_split, granules);
    }
    auto map = [](size_t len) {
      void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      return p == MAP_FAILED ? nullptr : p;
    };
    g_gshadow = (Cell*)map(granules * sizeof(Cell));
    g_bshadow = (Cell*)map(granules * 4 * sizeof(Cell));
    g_split = (uint8_t*)map(granules);
    if (!g_gshadow || !g_bshadow || !g_split) { g_gshadow = nullptr; return false; }
    g_shadow_bytes = granules * 4;
    g_epoch = g_block_epoch = 1;
    g_syms_dirty = true;
  }
  if (g_epoch > 0xF0000000u) {  // recycle the epochs: clear the shadow
    madvise(g_gshadow, g_shadow_bytes / 4 * sizeof(Cell), MADV_DONTNEED);
    madvise(g_bshadow, g_shadow_bytes * sizeof(Cell), MADV_DONTNEED);
    madvise(g_split, g_shadow_bytes / 4, MADV_DONTNEED);
    g_epoch = g_block_epoch = 1;
  }
  if (g_syms_dirty) {
    delete[] g_sym_of;
    g_sym_of = nullptr;
    if (!g_syms.empty()) {
      g_sym_of = new uint16_t[g_tls_len + 1]();
      for (size_t i = 0; i < g_syms.size() && i < 0x7ffe; ++i)  // index + 1, high bit: dynamic
        for (uint64_t b = g_syms[i].off; b < g_syms[i].off + g_syms[i].size && b < g_tls_len; ++b)
          g_sym_of[b] = (uint16_t)((i + 1) | (g_syms[i].dynamic ? 0x8000 : 0));
    }
    g_syms_dirty = false;
  }
  return true;
}
inline uint64_t fnv1a(const char* s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; ++s) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}
}  // namespace mgemu

extern "C" __attribute__((visibility("default"))) int mgemu_names(char* out, size_t len) {
  std::string s;
  for (auto& k : ::mgemu::registry()) s += k.name + "\n";
  snprintf(out, len, "%s", s.c_str());
  return (int)::mgemu::registry().size();
}

extern "C" __attribute__((visibility("default"))) int mgemu_signature(const char* name, char* out, size_t len) {
  std::string n;
  for (const char* c = name; *c; ++c)
    if (*c != ' ') n += *c;
  for (auto& k : ::mgemu::registry())
    if (k.name == n) {
      snprintf(out, len, "%s", k.sig.c_str());
      return 0;
    }
  return 1;
}

extern "C" __attribute__((visibility("default"))) int mgemu_checked() {
#ifdef MGEMU_CHECK
  return 1;
#else
  return 0;
#endif
}

// Where this library's shared memory (its TLS block in the calling thread) and image are:
// out[0..4] = TLS block start, TLS block length, image start, image end, load base. 0 if unknown.
extern "C" __attribute__((visibility("default"))) int mgemu_layout(uint64_t* out) {
  using namespace ::mgemu;
  std::lock_guard<std::mutex> lock(g_mutex);
  bool ok = locate_module();
  out[0] = g_tls_lo; out[1] = g_tls_len; out[2] = g_image_lo; out[3] = g_image_hi; out[4] = g_load_base;
  return ok ? 0 : 1;
}

// Names of the shared arrays: n entries of (TLS offset, size, display name, dynamic?).
extern "C" __attribute__((visibility("default"))) void mgemu_set_shared_symbols(int n, const uint64_t* offsets,
                                                                               const uint64_t* sizes,
                                                                               const char* const* names,
                                                                               const int* dynamic) {
  using namespace ::mgemu;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_syms.clear();
  for (int i = 0; i < n; ++i) g_syms.push_back(SharedSym{offsets[i], sizes[i], names[i], dynamic[i] != 0});
  g_syms_dirty = true;
}

extern "C" __attribute__((visibility("default"))) int mgemu_launch_ex(
    const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, size_t dyn_smem,
    size_t static_smem, size_t smem_limit, void** args, int nargs, const mgemu_options* opts, char* err,
    size_t errlen) {
  using namespace ::mgemu;
  std::lock_guard<std::mutex> lock(g_mutex);
  std::string n;
  for (const char* c = name; *c; ++c)
    if (*c != ' ') n += *c;
  const KernelInfo* k = nullptr;
  for (auto& r : registry())
    if (r.name == n) k = &r;
  auto refuse = [&](const char* fmt, auto... a) {
    char body[512];
    snprintf(body, sizeof body, fmt, a...);
    snprintf(err, errlen, "kernel %s: %s", name, body);
    return MGEMU_E_CONFIG;
  };
  if (!k) return refuse("not registered in this module (see MGEMU_KERNEL lines)");
  if (nargs != k->nargs) return refuse("takes %d arguments (%s), got %d", k->nargs, k->sig.c_str(), nargs);
  unsigned long long nthreads = (unsigned long long)bx * by * bz;
  if (!bx || !by || !bz || !gx || !gy || !gz)
    return refuse("invalid configuration: grid (%u,%u,%u), block (%u,%u,%u) has a zero dimension", gx, gy, gz, bx, by, bz);
  if (nthreads > 1024 || bx > 1024 || by > 1024 || bz > 64)
    return refuse("block (%u,%u,%u) = %llu threads exceeds CUDA's limit of 1024 threads (x,y <= 1024, z <= 64)", bx, by,
                  bz, nthreads);
  if (gy > 65535 || gz > 65535 || gx > 2147483647u)
    return refuse("grid (%u,%u,%u) exceeds CUDA's limits (x < 2^31, y,z <= 65535)", gx, gy, gz);
  if (static_smem + dyn_smem > smem_limit)
    return refuse("shared memory %zu bytes (static %zu + dynamic %zu) exceeds the limit of %zu bytes",
                  static_smem + dyn_smem, static_smem, dyn_smem, smem_limit);
  if (dyn_smem > MGEMU_MAX_DYNAMIC_SMEM)
    return refuse("dynamic shared memory %zu bytes exceeds the emulator's %d bytes", dyn_smem, MGEMU_MAX_DYNAMIC_SMEM);
  const bool check = opts && opts->check;
#ifndef MGEMU_CHECK
  if (check) return refuse("checks were asked of a library built without them (build with check=True)");
#endif
  if (!locate_module()) return refuse("cannot find this library's own mapping (dl_iterate_phdr)");
  if (check && !prepare_shadow()) return refuse("cannot allocate the shadow memory of the checks");
  if (!ensure_pool((unsigned)nthreads)) return refuse("cannot allocate fiber stacks");
  g_kernel = k;
  g_args = args;
  g_error = false;
  g_error_class = 0;
  g_opts = opts;
  g_check = check;
  g_active = false;
  g_last_arg = -1;
  g_dyn_smem = dyn_smem;
  g_schedule = opts ? opts->schedule : 0;
  g_schedule_name = opts && opts->schedule_name ? opts->schedule_name : "forward";
  g_rng = ((opts ? opts->seed : 0) * 0x9E3779B97F4A7C15ull) ^ fnv1a(n.c_str());
  if (!g_rng) g_rng = 1;
  g_nthreads = (unsigned)nthreads;
  g_blockDim = dim3(bx, by, bz);
  g_gridDim = dim3(gx, gy, gz);
  // block order
  const uint64_t nblocks = (uint64_t)gx * gy * gz;
  std::vector<uint64_t> perm;
  uint64_t stride = 1, offset = 0;
  if (g_schedule == 2) {
    if (nblocks <= (1u << 22)) {
      perm.resize(nblocks);
      for (uint64_t i = 0; i < nblocks; ++i) perm[i] = i;
      for (uint64_t i = nblocks; i > 1; --i) std::swap(perm[i - 1], perm[next_random() % i]);
    } else {  // an affine bijection of the block indices
      auto gcd = [](uint64_t a, uint64_t b) { while (b) { uint64_t t = a % b; a = b; b = t; } return a; };
      stride = next_random() % nblocks;
      while (gcd(stride, nblocks) != 1) stride = (stride + 1) % nblocks;
      offset = next_random() % nblocks;
    }
  }
  bool ok = true;
  for (uint64_t i = 0; ok && i < nblocks; ++i) {
    uint64_t b = g_schedule == 1 ? nblocks - 1 - i
                 : g_schedule == 2 ? (perm.empty() ? (offset + i * stride) % nblocks : perm[i]) : i;
    g_blockIdx = uint3{(unsigned)(b % gx), (unsigned)((b / gx) % gy), (unsigned)(b / ((uint64_t)gx * gy))};
    if (dyn_smem) mgemu_poison_dynamic_smem(dyn_smem);
    for (int p = 0; opts && g_tls_lo && p < opts->npoison; ++p)
      if (opts->poison[2 * p] + opts->poison[2 * p + 1] <= g_tls_len)
        memset((void*)(g_tls_lo + opts->poison[2 * p]), 0xff, opts->poison[2 * p + 1]);
    ok = run_block();
  }
  g_cur = nullptr;
  g_kernel = nullptr;
  g_opts = nullptr;
  g_check = g_active = false;
  g_stack_len = 0;
  if (!ok) {
    snprintf(err, errlen, "%s", g_msg);
    // Fibers of the failed block were abandoned mid-kernel: re-enter them from scratch next time.
    for (unsigned i = 0; i < g_nthreads; ++i) g_pool[i]->fresh = false;
    return g_error_class ? g_error_class : MGEMU_E_BARRIER;
  }
  return 0;
}

// The original entry point: forward schedule, no checks.
extern "C" __attribute__((visibility("default"))) int mgemu_launch(
    const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, size_t dyn_smem,
    size_t static_smem, size_t smem_limit, void** args, int nargs, char* err, size_t errlen) {
  int rc = mgemu_launch_ex(name, gx, gy, gz, bx, by, bz, dyn_smem, static_smem, smem_limit, args, nargs, nullptr, err,
                           errlen);
  return rc ? 1 : 0;
}
#endif  // MGEMU_HAS_RUNTIME

#if defined(MGEMU_CHECK) && defined(MGEMU_RUNTIME)
// ---------------------------------------------------------------- the instrumentation hooks
// GCC's -fsanitize=thread pass calls these around every access of the kernels' unit. They only
// act while a checked launch runs kernel code (g_active); registration code at load time and the
// emulator's own code never reach access().
#define MGEMU_HOOK(fn, n, kind)                                                                        \
  extern "C" void fn(void* p) {                                                                        \
    if (::mgemu::g_active) ::mgemu::access(p, n, kind, __builtin_return_address(0));                   \
  }
MGEMU_HOOK(__tsan_read1, 1, ::mgemu::READ)
MGEMU_HOOK(__tsan_read2, 2, ::mgemu::READ)
MGEMU_HOOK(__tsan_read4, 4, ::mgemu::READ)
MGEMU_HOOK(__tsan_read8, 8, ::mgemu::READ)
MGEMU_HOOK(__tsan_read16, 16, ::mgemu::READ)
MGEMU_HOOK(__tsan_write1, 1, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_write2, 2, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_write4, 4, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_write8, 8, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_write16, 16, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_unaligned_read2, 2, ::mgemu::READ)
MGEMU_HOOK(__tsan_unaligned_read4, 4, ::mgemu::READ)
MGEMU_HOOK(__tsan_unaligned_read8, 8, ::mgemu::READ)
MGEMU_HOOK(__tsan_unaligned_read16, 16, ::mgemu::READ)
MGEMU_HOOK(__tsan_unaligned_write2, 2, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_unaligned_write4, 4, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_unaligned_write8, 8, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_unaligned_write16, 16, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_volatile_read1, 1, ::mgemu::READ)
MGEMU_HOOK(__tsan_volatile_read2, 2, ::mgemu::READ)
MGEMU_HOOK(__tsan_volatile_read4, 4, ::mgemu::READ)
MGEMU_HOOK(__tsan_volatile_read8, 8, ::mgemu::READ)
MGEMU_HOOK(__tsan_volatile_read16, 16, ::mgemu::READ)
MGEMU_HOOK(__tsan_volatile_write1, 1, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_volatile_write2, 2, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_volatile_write4, 4, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_volatile_write8, 8, ::mgemu::WRITE)
MGEMU_HOOK(__tsan_volatile_write16, 16, ::mgemu::WRITE)
#undef MGEMU_HOOK
extern "C" void __tsan_read_range(void* p, unsigned long n) {
  if (::mgemu::g_active) ::mgemu::access(p, (unsigned)n, ::mgemu::READ, __builtin_return_address(0));
}
extern "C" void __tsan_write_range(void* p, unsigned long n) {
  if (::mgemu::g_active) ::mgemu::access(p, (unsigned)n, ::mgemu::WRITE, __builtin_return_address(0));
}
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_init() {}
#endif
