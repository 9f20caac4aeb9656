// The int8 GEMM's epilogue, compiled into each ISA's kernel file (so it vectorizes with that ISA): the
// raw sums less the u8 offset correction, dequantised in bitsandbytes' order of rounding
// (int8_mm_dequant: f32(acc) * f32(SCx * SCB) * 6.200124e-05f, then + bias, then one rounding into the
// output dtype). Contraction into FMA is off here: a fused multiply-add would round differently.
#pragma once
#include <cstdint>

#include "../core/dtype.h"
#include "int8_kernels.h"

namespace peft {
namespace int8_detail {

// bitsandbytes' 1/127² constant, as written in its int8_mm_dequant (rounded to f32 there too).
constexpr float kDequant = 6.200124e-05f;

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
template <DType D>
inline void finish_row(const int32_t* acc, const Finish& f, int64_t i, int64_t j0, int n) {
  const float sx = f.scx[i];
  const int32_t* corr = f.corr ? f.corr + j0 : nullptr;
  const float* scb = f.scb + j0;
  const float* bias = f.bias ? f.bias + j0 : nullptr;
  if (f.raw) {
    int32_t* r = f.raw + i * f.ldy + j0;
    for (int j = 0; j < n; j++) r[j] = static_cast<int32_t>(static_cast<uint32_t>(acc[j]) - static_cast<uint32_t>(corr ? corr[j] : 0));
    return;
  }
  float out[64];
  for (int j = 0; j < n; j++) {
    int32_t v = static_cast<int32_t>(static_cast<uint32_t>(acc[j]) - static_cast<uint32_t>(corr ? corr[j] : 0));
    float s = sx * scb[j];
    out[j] = static_cast<float>(v) * s * kDequant;
  }
  if (bias)
    for (int j = 0; j < n; j++) out[j] += bias[j];
  if constexpr (D == DType::F32) {
    float* y = static_cast<float*>(f.y) + i * f.ldy + j0;
    for (int j = 0; j < n; j++) y[j] = out[j];
  } else {
    uint16_t* y = static_cast<uint16_t*>(f.y) + i * f.ldy + j0;
    for (int j = 0; j < n; j++) y[j] = D == DType::BF16 ? f32_to_bf16(out[j]) : f32_to_f16(out[j]);
  }
}
#pragma GCC pop_options

// Rows [i0, i0 + m) and columns [j0, j0 + n) (n <= 64) from acc (row stride ld).
inline void finish_block(const int32_t* acc, int ld, const Finish& f, int64_t i0, int m, int64_t j0, int n) {
  for (int i = 0; i < m; i++) {
    const int32_t* a = acc + i * ld;
    switch (f.y_dt) {
      case DType::BF16: finish_row<DType::BF16>(a, f, i0 + i, j0, n); break;
      case DType::F16: finish_row<DType::F16>(a, f, i0 + i, j0, n); break;
      default: finish_row<DType::F32>(a, f, i0 + i, j0, n); break;
    }
  }
}

// A kernel set's BlockFn: kernel K into an mr x nr stack block, then the epilogue.
template <int MR, int NR, KernelFn K>
void run_block(const Tile& t, const Finish& f, int64_t i0, int64_t j0, int n) {
  alignas(64) int32_t acc[MR * NR];
  Tile s = t;
  s.acc = acc;
  K(s);
  finish_block(acc, NR, f, i0, t.m, j0, n);
}

}  // namespace int8_detail
}  // namespace peft
