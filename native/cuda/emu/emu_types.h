// CUDA-on-CPU emulation, part 1: keywords, vector types, error codes, __half / __nv_bfloat16 and the
// scalar intrinsics. Everything lives in namespace emu (cuda_emu.h brings it into scope) so that an
// emulated build and a real CUDA build can share one binary without symbol clashes.
// Never include this together with the CUDA toolkit headers: both define dim3, cudaError_t, ...
#pragma once
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../../core/dtype.h"

// ---- keywords -------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __shared__ is defined in emu_device.h.

namespace emu {

// ---- vector types -----------------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned x, y; };
struct __align__(16) uint4 { unsigned x, y, z, w; };
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(4) char4 { signed char x, y, z, w; };
struct __align__(4) uchar4 { unsigned char x, y, z, w; };
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline constexpr int warpSize = 32;

// ---- runtime error codes (the values of the real cudaError_t, so logs read the same) ---------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorAssert = 710,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorUnknown = 999,
};
using cudaError = cudaError_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;

// ---- 16-bit floats ------------------------------------------------------------------------------------
// Storage plus exact conversions (native/core/dtype.h, round to nearest even). Arithmetic on them
// converts to float, unlike CUDA's per-operation half rounding, so kernels convert explicitly.
struct __align__(2) __half {
  uint16_t __x;
  __half() = default;  // trivial, so __shared__ arrays of it need no constructor call
  __half(float f) : __x(peft::f32_to_f16(f)) {}
  template <class I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
  __half(I v) : __x(peft::f32_to_f16(static_cast<float>(v))) {}
  operator float() const { return peft::f16_to_f32(__x); }
};
struct __align__(2) __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(peft::f32_to_bf16(f)) {}
  template <class I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
  __nv_bfloat16(I v) : __x(peft::f32_to_bf16(static_cast<float>(v))) {}
  operator float() const { return peft::bf16_to_f32(__x); }
};
using half = __half;
using nv_bfloat16 = __nv_bfloat16;

inline __half __float2half(float f) { __half h; h.__x = peft::f32_to_f16(f); return h; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __half2float(__half h) { return peft::f16_to_f32(h.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) { __nv_bfloat16 h; h.__x = peft::f32_to_bf16(f); return h; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return peft::bf16_to_f32(h.__x); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 h; h.__x = u; return h; }

// ---- scalar intrinsics -------------------------------------------------------------------------------
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __saturatef(float x) { return x >= 1.f ? 1.f : (x > 0.f ? x : 0.f); }  // NaN -> 0 as on GPU
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
// cvt.rni.s32.f32: round half to even, saturate, NaN -> 0.
inline int __float2int_rn(float x) { return peft::saturate_round<int32_t>(x); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned>(x)) + 1; }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
// Four 8-bit dot products plus an accumulator, as the dp4a instruction does.
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i)
    c += static_cast<int>(static_cast<int8_t>(a >> (8 * i))) * static_cast<int>(static_cast<int8_t>(b >> (8 * i)));
  return c;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
  for (int i = 0; i < 4; ++i) c += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
  return c;
}
inline int __dp4a(char4 a, char4 b, int c) {
  return __dp4a(std::bit_cast<int>(a), std::bit_cast<int>(b), c);
}

}  // namespace emu
