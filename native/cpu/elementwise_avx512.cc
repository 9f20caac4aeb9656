// AVX-512 build of elementwise_impl.h (16 floats per vector); called only when active_isa() is Avx512.
#include <immintrin.h>

#include "elementwise_impl.h"

namespace peft {
namespace {

// Calls f(i, mask) for each vector of 16 elements from i: a full mask for whole vectors, then the tail's.
// The zero-masked forms throughout: GCC 12 warns about the undefined pass-through of the plain ones.
template <typename F>
inline void by_vector(int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) f(i, static_cast<__mmask16>(0xffff));
  if (i < n) f(i, static_cast<__mmask16>((1u << (n - i)) - 1));
}

void sqrt_block(const float* x, float* y, int64_t n) {
  by_vector(n, [&](int64_t i, __mmask16 k) {
    _mm512_mask_storeu_ps(y + i, k, _mm512_maskz_sqrt_ps(k, _mm512_maskz_loadu_ps(k, x + i)));
  });
}

void widen_f16(const uint16_t* src, float* dst, int64_t n) {
  by_vector(n, [&](int64_t i, __mmask16 k) {
    _mm512_mask_storeu_ps(dst + i, k, _mm512_maskz_cvtph_ps(k, _mm256_maskz_loadu_epi16(k, src + i)));
  });
}

void narrow_f16(const float* src, uint16_t* dst, int64_t n) {
  by_vector(n, [&](int64_t i, __mmask16 k) {
    _mm256_mask_storeu_epi16(dst + i, k, _mm512_maskz_cvtps_ph(k, _mm512_maskz_loadu_ps(k, src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  });
}

}  // namespace

const EwKernels& ew_kernels_avx512() { return kEwKernels; }

}  // namespace peft
