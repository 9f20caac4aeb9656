// Row loads and stores between a tensor's float dtype and f32 scratch, for kernels that compute in f32 on
// rows of f32/f16/bf16 tensors (one dtype switch per row, not per element).
#pragma once
#include <cstdint>
#include <cstring>

#include "../core/dtype.h"

namespace peft {

// dst[0, n) = the n elements of `base` (dtype dt) starting at element `at`, widened to f32.
inline void load_row(const void* base, DType dt, int64_t at, float* dst, int64_t n) {
  switch (dt) {
    case DType::F32: std::memcpy(dst, static_cast<const float*>(base) + at, static_cast<size_t>(n) * 4); break;
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + at;
      for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(p[i]);
      break;
    }
    case DType::F16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + at;
      for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32(p[i]);
      break;
    }
    default: break;  // callers check for float dtypes
  }
}

// The n f32 values of src rounded once into `base` (dtype dt) from element `at`.
inline void store_row(const float* src, void* base, DType dt, int64_t at, int64_t n) {
  switch (dt) {
    case DType::F32: std::memcpy(static_cast<float*>(base) + at, src, static_cast<size_t>(n) * 4); break;
    case DType::BF16: {
      uint16_t* p = static_cast<uint16_t*>(base) + at;
      for (int64_t i = 0; i < n; i++) p[i] = f32_to_bf16(src[i]);
      break;
    }
    case DType::F16: {
      uint16_t* p = static_cast<uint16_t*>(base) + at;
      for (int64_t i = 0; i < n; i++) p[i] = f32_to_f16(src[i]);
      break;
    }
    default: break;
  }
}

}  // namespace peft
