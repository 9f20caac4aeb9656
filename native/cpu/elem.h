// Element access by run-time dtype, for reference kernels and edges (not for inner loops).
#pragma once
#include <cstdint>

#include "../core/dtype.h"

namespace peft {

inline float load_f32(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::I8: return static_cast<const int8_t*>(p)[i];
    case DType::U8: return static_cast<const uint8_t*>(p)[i];
    case DType::I32: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    case DType::I64: return static_cast<float>(static_cast<const int64_t*>(p)[i]);
  }
  return 0;
}

inline void store_f32(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::F32: static_cast<float*>(p)[i] = v; break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
    case DType::I8: static_cast<int8_t*>(p)[i] = saturate_round<int8_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(p)[i] = saturate_round<uint8_t>(v); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = saturate_round<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(p)[i] = saturate_round<int64_t>(v); break;
  }
}

// v rounded to dt and widened back (what a value of dt holds).
inline float round_through(float v, DType dt) {
  alignas(8) unsigned char b[8];
  store_f32(b, dt, 0, v);
  return load_f32(b, dt, 0);
}

}  // namespace peft
