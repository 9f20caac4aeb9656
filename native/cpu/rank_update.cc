#include "rank_update.h"

#include <algorithm>

#include "isa.h"
#include "parallel.h"
#include "stage.h"

namespace peft {
namespace {

// Portable inner kernel: the compiler vectorizes the column loop for the baseline ISA.
void kernel_generic(float* C, int64_t ldc, int64_t nrows, int64_t n, const float* L, const float* Rm, int64_t ldr, int64_t R) {
  for (int64_t r = 0; r < nrows; r++) {
    float* c = C + r * ldc;
    for (int64_t k = 0; k < R; k++) {
      const float s = L[r * R + k];
      const float* m = Rm + k * ldr;
      for (int64_t j = 0; j < n; j++) c[j] += s * m[j];
    }
  }
}

constexpr int64_t kRowsPerStage = 4;

}  // namespace

void rank_update(void* C, DType c_dt, int64_t rows, int64_t cols, const float* L, const float* Rm, int64_t R) {
  if (rows <= 0 || cols <= 0 || R <= 0) return;
#if PEFT_X86
  RankUpdateKernel kernel = active_isa() == Isa::Avx512 ? rank_update_kernel_avx512() : kernel_generic;
#else
  RankUpdateKernel kernel = kernel_generic;
#endif
  // Threads take whole rows; each element is written by one thread with the terms in one fixed order.
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    if (c_dt == DType::F32) {
      kernel(static_cast<float*>(C) + r0 * cols, cols, r1 - r0, cols, L + r0 * R, Rm, cols, R);
      return;
    }
    // 16-bit C: a few rows at a time, one block of columns widened to f32, updated, narrowed once.
    alignas(64) float buf[kRowsPerStage * kStageBlock];
    for (int64_t r = r0; r < r1; r += kRowsPerStage) {
      const int64_t nr = std::min(kRowsPerStage, r1 - r);
      for (int64_t c0 = 0; c0 < cols; c0 += kStageBlock) {
        const int64_t n = std::min(kStageBlock, cols - c0);
        for (int64_t i = 0; i < nr; i++) stage_in(C, c_dt, (r + i) * cols + c0, n, buf + i * kStageBlock);
        kernel(buf, kStageBlock, nr, n, L + r * R, Rm + c0, cols, R);
        for (int64_t i = 0; i < nr; i++) stage_out(C, c_dt, (r + i) * cols + c0, n, buf + i * kStageBlock);
      }
    }
  });
}

}  // namespace peft
