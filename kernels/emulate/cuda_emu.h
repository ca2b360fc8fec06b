// cuda_emu.h: run header-free CUDA C kernels on the CPU with CUDA's block semantics.
//
// How it is used (kernels/emulate/build.py does all of this; nothing in a .cu file changes):
//   g++ -std=c++17 -O2 -fPIC -shared -U_FORTIFY_SOURCE -DMINIGRAD_EMULATE \
//       -include kernels/emulate/cuda_emu.h  wrapper.cpp
//   where wrapper.cpp is `#include "<family>.cu"` followed by one line per instantiation:
//       MGEMU_KERNEL(layernorm_forward_warp<float>)
//   MGEMU_KERNEL registers the instantiation under its name expression (the same string
//   CuPy's RawModule gets in name_expressions), its arity and a type code per parameter.
//
// C entry points (called through ctypes by kernels/launch.py):
//   int mgemu_launch(name, gx,gy,gz, bx,by,bz, dyn_smem, static_smem, smem_limit,
//                    void** args, int nargs, char* err, size_t errlen)   -> 0 ok, 1 error (message in err)
//   int mgemu_signature(name, char* out, size_t len)  -> "*f,*f,i,f" (pointer to float, ..., int, float)
//   int mgemu_names(char* out, size_t len)            -> registered names, one per line
//
// What is emulated:
//   * threadIdx/blockIdx/blockDim/gridDim (uint3/dim3), warpSize, float2/float4/double2/int2/int4.
//   * Each CUDA thread of a block is a fiber: its own stack (64 KiB, or $MINIGRAD_EMU_STACK_KB) above
//     a guard page, entered once with makecontext, then switched with _setjmp/_longjmp. Blocks run
//     one after another; fibers are reused across blocks and launches.
//   * __shared__ expands to thread_local: one instance per OS thread, shared by every fiber of the
//     block (launches are serialised by a mutex). `extern __shared__ T name[]` (dynamic shared
//     memory) is defined by build.py in a generated unit as a 227 KiB buffer; it is filled with
//     0xff bytes (NaN for floats) before each block, so reading unwritten shared memory shows.
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
// Not emulated: memory ordering between blocks (blocks run sequentially), cooperative groups,
// textures, half precision, clock(). A stack overflow in a fiber hits the guard page (SIGSEGV).
#pragma once
#undef _FORTIFY_SOURCE
#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdarg>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

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

namespace mgemu {

enum State : int { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP = 2, DONE = 3 };
enum WarpOp : int { OP_IDX = 0, OP_XOR = 1, OP_DOWN = 2, OP_UP = 3, OP_SYNC = 4, OP_BALLOT = 5 };

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
};

typedef void (*Invoker)(void* kernel, void** args);
struct KernelInfo {
  std::string name;
  void* fn;
  Invoker invoke;
  std::string sig;
  int nargs;
};

inline std::vector<KernelInfo>& registry() { static std::vector<KernelInfo> r; return r; }

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
inline char g_msg[1024];
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
[[noreturn]] inline void fail(const char* fmt, ...) {
  char body[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  snprintf(g_msg, sizeof g_msg, "kernel %s, block (%u,%u,%u): %s", g_kernel ? g_kernel->name.c_str() : "?",
           g_blockIdx.x, g_blockIdx.y, g_blockIdx.z, body);
  g_error = true;
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

// ---- warp meetings
inline Fiber* lane_fiber(unsigned warp, unsigned lane) {
  unsigned t = warp * 32 + lane;
  return t < g_nthreads ? g_pool[t] : nullptr;
}

inline const char* op_name(int op) {
  switch (op) {
    case OP_IDX: return "__shfl_sync";
    case OP_XOR: return "__shfl_xor_sync";
    case OP_DOWN: return "__shfl_down_sync";
    case OP_UP: return "__shfl_up_sync";
    case OP_SYNC: return "__syncwarp";
    default: return "__ballot_sync/__any_sync/__all_sync";
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

inline uint64_t warp_op(int op, unsigned mask, uint64_t value, int param, int width) {
  Fiber* me = g_cur;
  if (!(mask >> me->lane & 1u))
    fail("%s in warp %u: calling lane %u is not in its mask 0x%08x", op_name(op), me->warp, me->lane, mask);
  if (op <= OP_UP) {
    if (width < 1 || width > 32 || (width & (width - 1)))
      fail("%s: width %d is not a power of two in 1..32", op_name(op), width);
    int src = shfl_source(op, me->lane, param, width);
    if (src >= 0 && !(mask >> src & 1u))
      fail("%s in warp %u: lane %u reads lane %d, which is not in the mask 0x%08x", op_name(op), me->warp,
           me->lane, src, mask);
  }
  me->op = op; me->mask = mask; me->value = value; me->param = param; me->width = width;
  me->state = AT_WARP;
  // Has every lane of the mask arrived?
  bool complete = true;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u) || l == me->lane) continue;
    Fiber* f = lane_fiber(me->warp, l);
    if (!f)
      fail("%s in warp %u: mask 0x%08x names lane %u, which is outside the block (%u threads)", op_name(op),
           me->warp, mask, l, g_nthreads);
    if (f->state == DONE)
      fail("%s in warp %u: mask 0x%08x names lane %u, which has exited", op_name(op), me->warp, mask, l);
    if (f->state == AT_BARRIER)
      fail("%s in warp %u: mask 0x%08x names lane %u, which waits at __syncthreads", op_name(op), me->warp, mask, l);
    if (f->state == AT_WARP && f->mask != mask)
      fail("%s in warp %u: lane %u passes mask 0x%08x but lane %u waits with mask 0x%08x", op_name(op), me->warp,
           me->lane, mask, l, f->mask);
    if (f->state != AT_WARP) complete = false;
  }
  if (!complete) {
    yield();
    return me->result;
  }
  // Resolve the meeting for every lane of the mask, then carry on without yielding.
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

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type larger than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

inline void syncthreads_at(const char* file, int line) {
  g_cur->site = file;
  g_cur->line = line;
  g_cur->state = AT_BARRIER;
  yield();
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
  }
  for (;;) {
    bool ran = false;
    for (unsigned i = 0; i < g_nthreads; ++i) {
      Fiber* f = g_pool[i];
      if (f->state != RUNNABLE) continue;
      ran = true;
      g_cur = f;
      if (_setjmp(g_sched_jb) == 0) _longjmp(f->jb, 1);
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
        snprintf(g_msg, sizeof g_msg,
                 "kernel %s, block (%u,%u,%u): __syncthreads reached by only some threads of the block (%s)",
                 g_kernel->name.c_str(), g_blockIdx.x, g_blockIdx.y, g_blockIdx.z, st);
        g_error = true;
        return false;
      }
      Fiber* f0 = g_pool[0];
      for (unsigned i = 1; i < g_nthreads; ++i)
        if (g_pool[i]->site != f0->site || g_pool[i]->line != f0->line) {
          snprintf(g_msg, sizeof g_msg,
                   "kernel %s, block (%u,%u,%u): threads 0 and %u wait at different __syncthreads calls "
                   "(line %d and line %d)",
                   g_kernel->name.c_str(), g_blockIdx.x, g_blockIdx.y, g_blockIdx.z, i, f0->line, g_pool[i]->line);
          g_error = true;
          return false;
        }
      for (unsigned i = 0; i < g_nthreads; ++i) g_pool[i]->state = RUNNABLE;
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
          snprintf(g_msg, sizeof g_msg, "kernel %s, block (%u,%u,%u): %s in warp %u: lane %u waits with mask 0x%08x "
                   "naming lane %u, which %s", g_kernel->name.c_str(), g_blockIdx.x, g_blockIdx.y, g_blockIdx.z,
                   op_name(f->op), f->warp, f->lane, f->mask, l,
                   o->state == DONE ? "has exited" : "waits at __syncthreads");
          g_error = true;
          return false;
        }
      }
      describe_states(st, sizeof st);
      snprintf(g_msg, sizeof g_msg, "kernel %s, block (%u,%u,%u): deadlock, no thread can proceed (%s)",
               g_kernel->name.c_str(), g_blockIdx.x, g_blockIdx.y, g_blockIdx.z, st);
      g_error = true;
      return false;
    }
  }
  for (unsigned i = 0; i < g_nthreads; ++i) g_pool[i]->fresh = true;  // parked at the loop start again
  return true;
}

// ---- registration of instantiations
// Parameter type codes: f float, d double, ? bool, i32/u32/i64/u64/i8... integers, v void,
// *X pointer to X (const ignored), xN any other type of N bytes.
template <typename T>
std::string type_code() {
  using U = typename std::remove_cv<T>::type;
  if constexpr (std::is_pointer<U>::value) return "*" + type_code<typename std::remove_pointer<U>::type>();
  else if constexpr (std::is_void<U>::value) return "v";
  else if constexpr (std::is_same<U, float>::value) return "f";
  else if constexpr (std::is_same<U, double>::value) return "d";
  else if constexpr (std::is_same<U, bool>::value) return "?";
  else if constexpr (std::is_integral<U>::value)
    return std::string(std::is_signed<U>::value ? "i" : "u") + std::to_string(sizeof(U) * 8);
  else return "x" + std::to_string(sizeof(U));
}

template <typename... A, size_t... I>
void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
  k(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}
template <typename... A>
void invoke_kernel(void* k, void** args) {
  call_with(reinterpret_cast<void (*)(A...)>(k), args, std::index_sequence_for<A...>{});
}

struct Registrar {
  template <typename... A>
  Registrar(const char* name, void (*k)(A...)) {
    std::string sig;
    std::string codes[] = {std::string(), type_code<A>()...};
    for (size_t i = 1; i < sizeof...(A) + 1; ++i) sig += (i > 1 ? "," : "") + codes[i];
    std::string n;
    for (const char* c = name; *c; ++c)
      if (*c != ' ') n += *c;
    registry().push_back(KernelInfo{n, reinterpret_cast<void*>(k), &invoke_kernel<A...>, sig, (int)sizeof...(A)});
  }
};

inline const KernelInfo* find_kernel(const char* name) {
  std::string n;
  for (const char* c = name; *c; ++c)
    if (*c != ' ') n += *c;
  for (auto& k : registry())
    if (k.name == n) return &k;
  return nullptr;
}

}  // namespace mgemu

#define MGEMU_CAT2(a, b) a##b
#define MGEMU_CAT(a, b) MGEMU_CAT2(a, b)
#define MGEMU_KERNEL(...) static ::mgemu::Registrar MGEMU_CAT(mgemu_reg_, __COUNTER__)(#__VA_ARGS__, &__VA_ARGS__);

// Defined by build.py's generated unit: fills every `extern __shared__` buffer with 0xff bytes.
extern "C" void mgemu_poison_dynamic_smem(size_t nbytes);
#define MGEMU_MAX_DYNAMIC_SMEM (227 * 1024)

// ---------------------------------------------------------------- built-in variables
#define threadIdx (static_cast<const uint3&>(::mgemu::g_cur->tid))
#define blockIdx (static_cast<const uint3&>(::mgemu::g_blockIdx))
#define blockDim (static_cast<const dim3&>(::mgemu::g_blockDim))
#define gridDim (static_cast<const dim3&>(::mgemu::g_gridDim))

// ---------------------------------------------------------------- synchronisation
#define __syncthreads() ::mgemu::syncthreads_at(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::mgemu::warp_op(::mgemu::OP_SYNC, mask, 0, 0, 32); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
[[noreturn]] inline void __trap() { ::mgemu::fail("__trap() called by thread (%u,%u,%u)", threadIdx.x, threadIdx.y, threadIdx.z); }

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32) {
  return ::mgemu::from_bits<T>(::mgemu::warp_op(::mgemu::OP_IDX, mask, ::mgemu::to_bits(var), srcLane, width));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32) {
  return ::mgemu::from_bits<T>(::mgemu::warp_op(::mgemu::OP_XOR, mask, ::mgemu::to_bits(var), laneMask, width));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::mgemu::from_bits<T>(::mgemu::warp_op(::mgemu::OP_DOWN, mask, ::mgemu::to_bits(var), (int)delta, width));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::mgemu::from_bits<T>(::mgemu::warp_op(::mgemu::OP_UP, mask, ::mgemu::to_bits(var), (int)delta, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return (unsigned)::mgemu::warp_op(::mgemu::OP_BALLOT, mask, pred != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// ---------------------------------------------------------------- atomics (fibers never preempt)
template <typename T>
inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T>
inline T atomicMax(T* p, T v) { T old = *p; *p = old < v ? v : old; return old; }
template <typename T>
inline T atomicMin(T* p, T v) { T old = *p; *p = v < old ? v : old; return old; }
template <typename T>
inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }

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

// ---------------------------------------------------------------- C entry points
// Not inline: the header is included by exactly one translation unit (build.py's wrapper).
extern "C" __attribute__((visibility("default"))) int mgemu_names(char* out, size_t len) {
  std::string s;
  for (auto& k : ::mgemu::registry()) s += k.name + "\n";
  snprintf(out, len, "%s", s.c_str());
  return (int)::mgemu::registry().size();
}

extern "C" __attribute__((visibility("default"))) int mgemu_signature(const char* name, char* out, size_t len) {
  const ::mgemu::KernelInfo* k = ::mgemu::find_kernel(name);
  if (!k) return 1;
  snprintf(out, len, "%s", k->sig.c_str());
  return 0;
}

extern "C" __attribute__((visibility("default"))) int mgemu_launch(
    const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, size_t dyn_smem,
    size_t static_smem, size_t smem_limit, void** args, int nargs, char* err, size_t errlen) {
  using namespace ::mgemu;
  std::lock_guard<std::mutex> lock(g_mutex);
  const KernelInfo* k = find_kernel(name);
  auto refuse = [&](const char* fmt, auto... a) {
    char body[512];
    snprintf(body, sizeof body, fmt, a...);
    snprintf(err, errlen, "kernel %s: %s", name, body);
    return 1;
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
  if (!ensure_pool((unsigned)nthreads)) return refuse("cannot allocate fiber stacks");
  g_kernel = k;
  g_args = args;
  g_error = false;
  g_nthreads = (unsigned)nthreads;
  g_blockDim = dim3(bx, by, bz);
  g_gridDim = dim3(gx, gy, gz);
  bool ok = true;
  for (unsigned z = 0; ok && z < gz; ++z)
    for (unsigned y = 0; ok && y < gy; ++y)
      for (unsigned x = 0; ok && x < gx; ++x) {
        g_blockIdx = uint3{x, y, z};
        if (dyn_smem) mgemu_poison_dynamic_smem(dyn_smem);
        ok = run_block();
      }
  g_cur = nullptr;
  g_kernel = nullptr;
  if (!ok) {
    snprintf(err, errlen, "%s", g_msg);
    // Fibers of the failed block were abandoned mid-kernel: re-enter them from scratch next time.
    for (unsigned i = 0; i < g_nthreads; ++i) g_pool[i]->fresh = false;
    return 1;
  }
  return 0;
}
