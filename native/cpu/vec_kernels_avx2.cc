// AVX2 + FMA build of vec_impl.h (8 floats per vector); called only when active_isa() is Avx2.
#include <immintrin.h>

#include "vec_impl.h"

namespace peft {
namespace {
void sqrt_block(float* v, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, _mm256_sqrt_ps(_mm256_loadu_ps(v + i)));
  for (; i < n; i++) _mm_store_ss(v + i, _mm_sqrt_ss(_mm_load_ss(v + i)));
}
}  // namespace

const VecKernels& vec_kernels_avx2() { return kVecKernels; }

}  // namespace peft
