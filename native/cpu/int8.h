// LLM.int8 on the CPU (bitsandbytes >= 0.45 semantics): row-wise absmax int8 weights (CB int8 (N, K),
// SCB f32 (N)), per-row int8 activations, int32 products dequantised as acc * SCx * SCB / 127^2, and
// outlier input columns (|x| >= threshold) computed in floating point against the dequantised weight.
#pragma once
#include <cstdint>

#include "../core/dtype.h"
#include "../core/storage.h"

namespace peft {

// Quantises `rows` rows of W (cols values each, f32/f16/bf16) as bitsandbytes' Int8Params does: W is
// rounded to f16 first, SCB = the row's absmax (f32), CB = round-half-even(w * (127 / absmax)). An
// all-zero row gives CB 0 and SCB 0. Returns -1, or the first row holding a value that is not finite
// once in f16 (NaN, inf, or beyond f16's range); rows before it are written.
int64_t int8_quantize_rows(const void* w, DType dt, int64_t rows, int64_t cols, int8_t* cb, float* scb);

// The int8 weight as the kernels see it; `cache` (CB's storage) keeps the packed form per version.
struct Int8Weight {
  const int8_t* cb = nullptr;
  const float* scb = nullptr;
  int64_t N = 0, K = 0;
  Storage* cache = nullptr;
};

struct Int8LinearArgs {
  int64_t M = 0;
  const void* x = nullptr;  // (M, K)
  DType x_dt = DType::F32;
  Int8Weight w;
  const void* bias = nullptr;  // N values or null
  DType bias_dt = DType::F32;
  float threshold = 0.0f;  // > 0: outlier columns in floating point
  void* y = nullptr;       // (M, N) in y_dt
  DType y_dt = DType::F32;
  // Test hook: when set, the raw int32 products x_q · CBᵀ (M, N) are written here and y is not touched.
  int32_t* raw = nullptr;
  // Optional rank-r term added in the epilogue: y += u (M, r) · bt (r, N), both f32 (fused LoRA with u =
  // s·drop(x)·Aᵀ and bt = Bᵀ), summed in f32 and added to the dequantised base before y is rounded.
  const float* u = nullptr;
  const float* bt = nullptr;
  int64_t r = 0;
  // Optional: u computed here instead of read, u_out (M, r) = down_scale · x·downᵀ with down (r, K) f32 (LoRA's
  // A, x f32), in the pass that quantises x, so x is read once for both (a separate x·Aᵀ reads and packs
  // all of x again: 7 % of the int8 forward at (512, 4096, 4096)); on paths without AVX-512, by the f32
  // GEMM before that pass. u is then u_out.
  const float* down = nullptr;
  float down_scale = 1.0f;
  float* u_out = nullptr;
};

// y = x · dequant(W)ᵀ + bias, in bitsandbytes' order of rounding (see int8.cc).
void int8_linear_cpu(const Int8LinearArgs& a);

// dx (M, K) in dx_dt = dy (M, N) · dequant(W), the dequantisation fused into the GEMM's packing.
void int8_linear_grad_input_cpu(const void* dy, DType dy_dt, int64_t M, const Int8Weight& w, void* dx, DType dx_dt);

// The kernel set int8_linear_cpu picks on the active path ("avx512-vnni", "amx-int8", "avx2", "scalar").
const char* int8_kernel_name();
// For benches: the packed CB cached on `s`, or {nullptr, 0}, so it can be evicted.
struct Int8PackRegion {
  const void* p = nullptr;
  size_t bytes = 0;
};
Int8PackRegion int8_cached_pack(Storage* s);

}  // namespace peft
