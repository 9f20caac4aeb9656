// AVX2 + FMA + F16C build of elementwise_impl.h (8 floats per vector); called only when active_isa() is Avx2.
#include <immintrin.h>

#include "elementwise_impl.h"

namespace peft {
namespace {

void sqrt_block(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
  for (; i < n; i++) _mm_store_ss(y + i, _mm_sqrt_ss(_mm_load_ss(x + i)));
}

void widen_f16(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  if (i < n) {
    alignas(32) uint16_t h[8] = {};
    alignas(32) float f[8];
    for (int j = 0; i + j < n; j++) h[j] = src[i + j];
    _mm256_store_ps(f, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h))));
    for (int j = 0; i + j < n; j++) dst[i + j] = f[j];
  }
}

void narrow_f16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  if (i < n) {
    alignas(32) float f[8] = {};
    alignas(32) uint16_t h[8];
    for (int j = 0; i + j < n; j++) f[j] = src[i + j];
    _mm_store_si128(reinterpret_cast<__m128i*>(h), _mm256_cvtps_ph(_mm256_load_ps(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (int j = 0; i + j < n; j++) dst[i + j] = h[j];
  }
}

}  // namespace

const EwKernels& ew_kernels_avx2() { return kEwKernels; }

}  // namespace peft
