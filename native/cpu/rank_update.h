// C (rows x cols, any float dtype) += L (rows x R) · Rm (R x cols), both f32, in one streaming pass over C
// with the sum rounded once: the in-place LoRA merge (R = total rank, small). Memory-bound: rows of C
// stream through contiguously, a few at a time, so each load of Rm (kept in L2) serves several rows.
#pragma once
#include <cstdint>

#include "../core/dtype.h"

namespace peft {

void rank_update(void* C, DType c_dt, int64_t rows, int64_t cols, const float* L, const float* Rm, int64_t R);

// The per-ISA inner kernel over f32: C (nrows x n, row stride ldc) += L (nrows x R) · Rm (R x n, row stride ldr).
using RankUpdateKernel = void (*)(float* C, int64_t ldc, int64_t nrows, int64_t n, const float* L, const float* Rm, int64_t ldr,
                                  int64_t R);
RankUpdateKernel rank_update_kernel_avx512();

}  // namespace peft
