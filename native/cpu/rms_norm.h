// RMSNorm over the last dimension (LLaMA's): y = x · rstd · w, rstd = 1/sqrt(mean(x²) + eps), statistics in
// f32 (sums in f64), y rounded once into x's dtype. The forward keeps rstd per row for the backward.
#pragma once
#include <cstdint>

#include "../core/dtype.h"

namespace peft {

// x, y [M][N] in dt; w [N] in wdt or null (no scale); rstd [M] f32.
void rms_norm_cpu(const void* x, DType dt, const void* w, DType wdt, void* y, float* rstd, int64_t M, int64_t N, float eps);

// From dy [M][N] (dydt): dx [M][N] in dt (null: not wanted) and dw [N] in wdt (null: not wanted, or no w).
void rms_norm_backward_cpu(const void* x, DType dt, const void* w, DType wdt, const float* rstd, const void* dy, DType dydt,
                           void* dx, void* dw, int64_t M, int64_t N);

}  // namespace peft
