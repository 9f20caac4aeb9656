// f16/bf16 buffers are reduced in f32: widened before the exchange (exact), narrowed once after it
// (round to nearest even), with the mean's division done in f32 before that single rounding.
#pragma once
#include <cstddef>

#include "core/dtype.h"

namespace peft::dist {

inline void widen(const void* src, DType dt, float* dst, size_t n) {
  const auto* h = static_cast<const uint16_t*>(src);
  if (dt == DType::BF16) for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(h[i]);
  else for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(h[i]);
}

inline void narrow(const float* src, float divisor, void* dst, DType dt, size_t n) {
  auto* h = static_cast<uint16_t*>(dst);
  if (dt == DType::BF16) for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(src[i] / divisor);
  else for (size_t i = 0; i < n; i++) h[i] = f32_to_f16(src[i] / divisor);
}

}  // namespace peft::dist
