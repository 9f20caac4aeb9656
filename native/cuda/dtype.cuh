// Element conversions shared by the kernels. Kernels compute in f32 and convert once at load and store;
// f32 -> f16/bf16 rounds to nearest even (the hardware's cvt.rn, and native/core/dtype.h when emulated).
#pragma once
#include "compat.cuh"
#include "../core/dtype.h"

namespace peft::PEFT_CUDA_NS {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Element access with the dtype known only at run time, for epilogues (the branch is uniform).
__device__ __forceinline__ float load_f32(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::F16: return to_f32(gload(static_cast<const __half*>(p) + i));
    case DType::BF16: return to_f32(gload(static_cast<const __nv_bfloat16*>(p) + i));
    case DType::I8: return float(gload(static_cast<const int8_t*>(p) + i));  // int8 weights, exact in f32
    default: return gload(static_cast<const float*>(p) + i);
  }
}
__device__ __forceinline__ void store_f32(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::F16: gstore(static_cast<__half*>(p) + i, from_f32<__half>(v)); break;
    case DType::BF16: gstore(static_cast<__nv_bfloat16*>(p) + i, from_f32<__nv_bfloat16>(v)); break;
    default: gstore(static_cast<float*>(p) + i, v); break;
  }
}

}  // namespace peft::PEFT_CUDA_NS
