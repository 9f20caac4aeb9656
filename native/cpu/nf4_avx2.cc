// AVX2 unpacking of 4-bit codes from the forward's panel form (nf4.h PanelCodes) into the 16-column f32 B
// panels of the AVX2 kernels: a 32-column panel's k-step is 16 bytes, columns 0..15 in the low nibbles and
// 16..31 in the high ones, so each half of it is one AVX2 panel. The 16-entry table is looked up as two
// 8-entry halves (vpermps) blended on the code's bit 3, then scaled by the chunk's absmax (f32 multiply, as
// dequantize_4bit) and rounded to the dequantisation and compute dtypes when those are 16-bit.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "nf4.h"

namespace peft {
namespace quant4_detail {
namespace {

inline __m256 round_bf16(__m256 v) {
  __m256i b = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  b = _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  return _mm256_castsi256_ps(_mm256_and_si256(b, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

inline __m256 round_to(__m256 v, DType dt) {
  if (dt == DType::BF16) return round_bf16(v);
  if (dt == DType::F16) return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return v;
}

// A value rounded to the weight's dtype and then to the compute dtype: once when they are the same.
inline __m256 round_weight(__m256 v, DType wdt, DType cdt) { return round_to(wdt == cdt ? v : round_to(v, wdt), cdt); }

// table[idx] for 8 codes in 0..15.
inline __m256 lookup(__m256i idx, __m256 lo, __m256 hi) {
  __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

}  // namespace

void unpack_panel_avx2(const PanelCodes& pc, const float* table, DType wdt, DType cdt, int64_t k0, int64_t kc, int64_t n0, float* dst) {
  constexpr int nr = kPanel / 2;
  const int64_t pn = n0 / kPanel, chunks = pc.K / pc.g;
  const int shift = n0 % kPanel ? 4 : 0;  // which nibble of each byte holds these 16 columns
  const uint8_t* codes = pc.codes + pn * pc.K * (kPanel / 2);
  const float* scales = pc.scales + pn * chunks * kPanel + (shift ? nr : 0);
  const __m256 lo = _mm256_loadu_ps(table), hi = _mm256_loadu_ps(table + 8);
  const __m256i mask = _mm256_set1_epi32(15);
  const bool round = wdt != DType::F32 || cdt != DType::F32;
  const int64_t kend = std::min(k0 + kc, pc.K);
  int64_t k = k0;
  while (k < kend) {
    const int64_t c = k / pc.g, cend = std::min(kend, (c + 1) * pc.g);
    const __m256 s0 = _mm256_loadu_ps(scales + c * kPanel), s1 = _mm256_loadu_ps(scales + c * kPanel + 8);
    for (; k < cend; k++) {
      const uint8_t* b = codes + k * 16;
      __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
      __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 8)));
      v0 = _mm256_and_si256(_mm256_srli_epi32(v0, shift), mask);
      v1 = _mm256_and_si256(_mm256_srli_epi32(v1, shift), mask);
      __m256 a = _mm256_mul_ps(lookup(v0, lo, hi), s0), d = _mm256_mul_ps(lookup(v1, lo, hi), s1);
      if (round) {
        a = round_weight(a, wdt, cdt);
        d = round_weight(d, wdt, cdt);
      }
      float* o = dst + (k - k0) * nr;
      _mm256_storeu_ps(o, a);
      _mm256_storeu_ps(o + 8, d);
    }
  }
  for (; k < k0 + kc; k++) {
    _mm256_storeu_ps(dst + (k - k0) * nr, _mm256_setzero_ps());
    _mm256_storeu_ps(dst + (k - k0) * nr + 8, _mm256_setzero_ps());
  }
}

}  // namespace quant4_detail
}  // namespace peft
