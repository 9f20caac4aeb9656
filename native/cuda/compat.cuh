// What every kernel file includes first: the same source then builds with nvcc (real CUDA) and with g++
// (through the CPU emulation in emu/, for tests on machines without a GPU).
//
//   LAUNCH(grid, block, smem, stream, kernel)(args...)   instead of kernel<<<grid, block, smem, stream>>>(args...)
//                                                         (the kernel goes last, so template ids with commas work)
//   DYN_SMEM(T, name);                                    instead of extern __shared__ T name[];
//   SMEM_ARRAY(T, name, dims);                            __shared__ __align__(128) T name dims; e.g.
//                                                         SMEM_ARRAY(float, tile, [16][16]). Required in templates
//                                                         (the emulator can poison plain __shared__ only in
//                                                         non-template functions, and refuses it in templates)
//   gload(p) / gstore(p, v)                               global memory access, bounds-checked when emulated
//   store_vec(p, v)                                       store of a vector word (uint4, ...) into memory typed
//                                                         otherwise (shared tiles of half): a plain store on the
//                                                         GPU, memcpy on the host, where the pun would break
//                                                         strict aliasing
//   EMU_CHECK(ptr, bytes)                                 explicit range check, nothing on the GPU
//   PEFT_HAS_PTX                                          1 only in nvcc's device passes for sm_80+: guard inline
//                                                         PTX with it and keep a portable fallback, which is what
//                                                         the emulated tests run
//   PEFT_UNROLL                                           #pragma unroll for nvcc, nothing for the host compiler
//   PEFT_CUDA_NS                                          cuda_gpu or cuda_emu: the namespace kernels and host
//                                                         wrappers live in, so both builds can share one binary
#pragma once

// gstore's value parameter takes the pointer's type without deducing from it (std::type_identity is C++20).
template <class T>
struct PeftIdentity {
  using type = T;
};

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>

#define PEFT_CUDA_EMULATED 0
#define PEFT_CUDA_NS cuda_gpu
#define LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define DYN_SMEM(T, name)                                      \
  extern __shared__ __align__(128) unsigned char name##_raw[]; \
  T* name = reinterpret_cast<T*>(name##_raw)
#define SMEM_ARRAY(T, name, dims) __shared__ __align__(128) T name dims
#define EMU_CHECK(ptr, bytes) ((void)0)
#define PEFT_UNROLL _Pragma("unroll")

template <class T>
__device__ __forceinline__ T gload(const T* p) { return *p; }
template <class T>
__device__ __forceinline__ void gstore(T* p, typename PeftIdentity<T>::type v) { *p = v; }
template <class V>
__device__ __forceinline__ void store_vec(void* p, const V& v) { *reinterpret_cast<V*>(p) = v; }

#else  // emulated on the CPU

#include "emu/cuda_emu.h"

#define PEFT_CUDA_EMULATED 1
#define PEFT_CUDA_NS cuda_emu
#define LAUNCH(grid, block, smem, stream, ...) \
  ::emu::launcher((grid), (block), (smem), (stream), #__VA_ARGS__, __VA_ARGS__)
#define DYN_SMEM(T, name) ::emu::SmemPtr<T> name = ::emu::dyn_smem<T>()
#define SMEM_ARRAY(T, name, dims)                                 \
  static ::emu::detail::SmemSlot name##_emu_slot;                 \
  T(&name) dims = *reinterpret_cast<T(*) dims>(                   \
      ::emu::detail::static_smem(&name##_emu_slot, sizeof(T dims), #name))
#define EMU_CHECK(ptr, bytes) ::emu::check_access((ptr), (bytes))
#define PEFT_UNROLL

// memcpy, because kernels read and write memory through punned vector types (uint4 over half).
template <class T>
inline T gload(const T* p, const ::emu::SrcLoc& loc = ::emu::SrcLoc::current()) {
  ::emu::check_access(p, sizeof(T), loc);
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T>
inline void gstore(T* p, typename PeftIdentity<T>::type v, const ::emu::SrcLoc& loc = ::emu::SrcLoc::current()) {
  ::emu::check_access(p, sizeof(T), loc);
  std::memcpy(p, &v, sizeof(T));
}
template <class V>
inline void store_vec(void* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }

#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define PEFT_HAS_PTX 1
#else
#define PEFT_HAS_PTX 0
#endif
