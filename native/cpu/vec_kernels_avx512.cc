// AVX-512 build of vec_impl.h (16 floats per vector); called only when active_isa() is Avx512.
#include <immintrin.h>

#include "vec_impl.h"

namespace peft {
namespace {
// The zero-masked forms: GCC 12 warns about the undefined pass-through of plain _mm512_sqrt_ps.
void sqrt_block(float* v, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(v + i, _mm512_maskz_sqrt_ps(0xffff, _mm512_loadu_ps(v + i)));
  if (i < n) {
    __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(v + i, k, _mm512_maskz_sqrt_ps(k, _mm512_maskz_loadu_ps(k, v + i)));
  }
}
}  // namespace

const VecKernels& vec_kernels_avx512() { return kVecKernels; }

}  // namespace peft
