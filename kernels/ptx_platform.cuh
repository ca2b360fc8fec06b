// ptx_platform.cuh: the half-precision platform layer of the version-2 kernels (attention_v2.cu,
// layernorm_v2.cu include it). Kernels reach the few PTX instructions they use through these
// device functions; nothing else in them is PTX.
//
// How it is found: kernels/includes.py splices this file into the text of a .cu that includes it
// (under #line directives, so errors name this file and the .cu's own lines) before NVRTC (CuPy's
// RawModule, `minigrad kernels check`) or the CPU emulator's g++ compile it; the caches key on
// that spliced text, so they change with this file. nvcc finds it beside the .cu.
#pragma once
// 16-bit floats are raw storage (NVRTC has no cuda_fp16.h); the few PTX instructions the kernels
// use sit behind these device functions. The CPU emulator (kernels/emulate/cuda_emu.h, which
// defines MINIGRAD_EMULATE) implements the same names itself, following the PTX ISA.
//   mg_half, mg_bf16            {unsigned short bits}: IEEE binary16 and bfloat16 storage
//   mg_float(x)                 exact widening to float (float passes through)
//   mg_round<X>(f)              float -> X, round to nearest, ties to even (cvt.rn)
//   mg_pack2<X>(lo, hi)         two X in one 32-bit register, lo in bits 0-15 (cvt.rn.*x2.f32)
//   mg_mma_16816<X>(d, a, b)    d[4] += A(16x16) B(16x8) over the warp: mma.sync.aligned.m16n8k16
//                               .row.col.f32.X.X.f32 with the PTX fragment layouts (a[4], b[2] as
//                               32-bit registers of two X each)
//   mg_ldsm_x4[_trans](r, p)    ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i..8i+7
//                               give the rows of 8x8 matrix i (16-byte aligned shared addresses)
//   mg_cp_async_16(dst, src, n) cp.async.cg.shared.global, 16 bytes, zero-filled past n bytes
//   mg_cp_async_commit(), mg_cp_async_wait<N>()   commit_group / wait_group N
// mma, ldmatrix and cp.async need sm_80 or later.
#ifndef MINIGRAD_EMULATE
struct __align__(2) mg_half { unsigned short bits; };
struct __align__(2) mg_bf16 { unsigned short bits; };
__device__ __forceinline__ float mg_float(float x) { return x; }
__device__ __forceinline__ float mg_float(mg_bf16 x) { return __uint_as_float((unsigned)x.bits << 16); }
__device__ __forceinline__ float mg_float(mg_half x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}
template <typename X> __device__ __forceinline__ X mg_round(float x);
template <> __device__ __forceinline__ float mg_round<float>(float x) { return x; }
template <> __device__ __forceinline__ mg_bf16 mg_round<mg_bf16>(float x) {
  mg_bf16 r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
  return r;
}
template <> __device__ __forceinline__ mg_half mg_round<mg_half>(float x) {
  mg_half r;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
  return r;
}
template <typename X> __device__ __forceinline__ unsigned mg_pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned mg_pack2<mg_bf16>(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
template <> __device__ __forceinline__ unsigned mg_pack2<mg_half>(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ unsigned mg_smem_addr(const void* p) {
  unsigned r;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}
template <typename X> __device__ __forceinline__ void mg_mma_16816(float* d, const unsigned* a, const unsigned* b);
template <> __device__ __forceinline__ void mg_mma_16816<mg_bf16>(float* d, const unsigned* a, const unsigned* b) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mg_mma_16816<mg_half>(float* d, const unsigned* a, const unsigned* b) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mg_ldsm_x4(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(mg_smem_addr(p)) : "memory");
}
__device__ __forceinline__ void mg_ldsm_x4_trans(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(mg_smem_addr(p)) : "memory");
}
__device__ __forceinline__ void mg_cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(mg_smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void mg_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void mg_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
}
#endif
