// Row quantisation for int8 with AVX-512 (+F16C): the same results as quant_row_scalar, 16 values a step.
#include <immintrin.h>

#include <cmath>

#include "int8_kernels.h"

namespace peft {
namespace int8_detail {
namespace {

// 16 values (fewer at the tail, the rest 0) as f32, rounded through f16 (bitsandbytes quantises f16).
inline __m512 load16(const void* src, DType dt, int64_t k, __mmask16 m) {
  __m512 v;
  if (dt == DType::F32) {
    v = _mm512_maskz_loadu_ps(m, static_cast<const float*>(src) + k);
  } else {
    __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(src) + k);
    if (dt == DType::F16) return _mm512_cvtph_ps(h);
    v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

inline __mmask16 tail(int64_t left) { return left >= 16 ? 0xffff : static_cast<__mmask16>((1u << left) - 1); }

}  // namespace

float quant_row_avx512(const void* src, DType dt, int64_t n, float threshold, int offset, uint8_t* dst, uint8_t* seen) {
  const __m512 absm = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512 thr = _mm512_set1_ps(threshold);
  const bool use_thr = threshold > 0.0f;
  __m512 amax = _mm512_setzero_ps();
  __mmask16 nan = 0;
  for (int64_t k = 0; k < n; k += 16) {
    __mmask16 m = tail(n - k);
    __m512 a = _mm512_and_ps(load16(src, dt, k, m), absm);
    __mmask16 keep = use_thr ? _mm512_mask_cmp_ps_mask(m, a, thr, _CMP_NGE_UQ) : m;  // NaN is kept, as in the scalar path
    if (seen)  // outliers are rare (bitsandbytes' premise): one byte store each
      for (unsigned o = m & ~keep; o; o &= o - 1) seen[k + __builtin_ctz(o)] = 1;
    nan |= _mm512_mask_cmp_ps_mask(keep, a, a, _CMP_UNORD_Q);
    amax = _mm512_mask_max_ps(amax, keep, amax, a);
  }
  float am = nan ? NAN : _mm512_reduce_max_ps(amax);
  const float scale = am > 0.0f ? 127.0f / am : 0.0f;
  const __m512 s = _mm512_set1_ps(scale);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), off = _mm512_set1_epi32(offset);
  for (int64_t k = 0; k < n; k += 16) {
    __mmask16 m = tail(n - k);
    __m512 v = load16(src, dt, k, m);
    __m512 p = _mm512_mul_ps(v, s);
    __mmask16 ok = _mm512_cmp_ps_mask(p, p, _CMP_ORD_Q);
    if (use_thr) ok &= _mm512_cmp_ps_mask(_mm512_and_ps(v, absm), thr, _CMP_LT_OQ);
    // cvtps rounds half to even (MXCSR default); out-of-range products saturate to INT_MIN, clamped after.
    __m512i q = _mm512_cvtps_epi32(p);
    q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
    q = _mm512_add_epi32(_mm512_maskz_mov_epi32(ok, q), off);
    _mm_mask_storeu_epi8(dst + k, m, _mm512_cvtepi32_epi8(q));
  }
  return am;
}

}  // namespace int8_detail
}  // namespace peft
