// Rotary position embedding in transformers' rotate-half layout: y = x·cos + rotateHalf(x)·sin with
// rotateHalf(x) = cat(−x[D/2:], x[:D/2]); the backward applies the transpose, dx = dy·cos + rotateHalfᵀ(dy·sin).
#pragma once
#include <cstdint>

#include "../core/dtype.h"

namespace peft {

// x, y [B][T][H][D] in dt; cos, sin f32 [Bc][T][D] with Bc = B or 1 (shared by the batch). backward: x holds
// dy and y receives dx.
void rotary_cpu(const void* x, DType dt, const float* cos, const float* sin, int64_t Bc, void* y, int64_t B, int64_t T,
                int64_t H, int64_t D, bool backward);

}  // namespace peft
