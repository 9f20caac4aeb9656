// AVX-512 unpacking of 4-bit codes into the GEMM's f32 B panels: 16 codes widened to dword indices, looked
// up in the 16-entry table held in one zmm (vpermps), scaled by their blocks' absmax (f32 multiply, as
// bitsandbytes' dequantize_4bit) and rounded to the dequantisation and compute dtypes when those are 16-bit.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "nf4.h"

namespace peft {
namespace quant4_detail {
namespace {

inline __m512 round_bf16(__m512 v) {
  // Round to nearest even on the top 16 bits (the values are finite).
  __m512i b = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  b = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_castsi512_ps(_mm512_and_si512(b, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

inline __m512 round_f16(__m512 v) { return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }

inline __m512 round_to(__m512 v, DType dt) {
  if (dt == DType::BF16) return round_bf16(v);
  if (dt == DType::F16) return round_f16(v);
  return v;
}

// The 32 values of one k-step from the panel form, times the chunk's scales.
template <bool Round>
inline void panel_step(const uint8_t* codes, __m512 tab, __m512 s0, __m512 s1, DType wdt, DType cdt, float* d) {
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  __m512 a = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)), tab), s0);
  __m512 b = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab), s1);
  if (Round) {
    a = round_to(round_to(a, wdt), cdt);
    b = round_to(round_to(b, wdt), cdt);
  }
  _mm512_store_ps(d, a);
  _mm512_store_ps(d + 16, b);
}

template <bool Round>
void panel_run(const PanelCodes& pc, const float* table, DType wdt, DType cdt, int64_t k0, int64_t kc, int64_t n0, float* dst) {
  const int64_t pn = n0 / kPanel, chunks = pc.K / pc.g;
  const uint8_t* codes = pc.codes + pn * pc.K * (kPanel / 2);
  const float* scales = pc.scales + pn * chunks * kPanel;
  const __m512 tab = _mm512_loadu_ps(table);
  const int64_t kend = std::min(k0 + kc, pc.K);
  int64_t k = k0;
  while (k < kend) {
    const int64_t c = k / pc.g, cend = std::min(kend, (c + 1) * pc.g);
    const __m512 s0 = _mm512_loadu_ps(scales + c * kPanel), s1 = _mm512_loadu_ps(scales + c * kPanel + 16);
    for (; k < cend; k++) panel_step<Round>(codes + k * 16, tab, s0, s1, wdt, cdt, dst + (k - k0) * kPanel);
  }
  for (; k < k0 + kc; k++) {
    _mm512_store_ps(dst + (k - k0) * kPanel, _mm512_setzero_ps());
    _mm512_store_ps(dst + (k - k0) * kPanel + 16, _mm512_setzero_ps());
  }
}

}  // namespace

void unpack_panel_avx512(const PanelCodes& pc, const float* table, DType wdt, DType cdt, int64_t k0, int64_t kc, int64_t n0, float* dst) {
  if (wdt == DType::F32 && cdt == DType::F32) panel_run<false>(pc, table, wdt, cdt, k0, kc, n0, dst);
  else panel_run<true>(pc, table, wdt, cdt, k0, kc, n0, dst);
}

void unpack_rows_avx512(const Quant4Weight& w, const float* table, int64_t k0, int64_t kc, int64_t n0, float* dst) {
  const __m512 tab = _mm512_loadu_ps(table);
  // The first of two values sits in the high nibble: even positions from v >> 4, odd ones from v & 15.
  const __m512i lo_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_half = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const bool round = w.wdt != DType::F32 || w.cdt != DType::F32;
  for (int64_t k = k0; k < k0 + kc; k++) {
    float* d = dst + (k - k0) * kPanel;
    if (k >= w.N) {
      _mm512_store_ps(d, _mm512_setzero_ps());
      _mm512_store_ps(d + 16, _mm512_setzero_ps());
      continue;
    }
    const int64_t i = k * w.K + n0;  // even, and the 32 values share a block (blocks are multiples of 32)
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.packed + (i >> 1))));
    __m512 even = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab);
    __m512 odd = _mm512_permutexvar_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)), tab);
    const __m512 s = _mm512_set1_ps(w.absmax[i / w.blocksize]);
    __m512 a = _mm512_mul_ps(_mm512_permutex2var_ps(even, lo_half, odd), s);
    __m512 b = _mm512_mul_ps(_mm512_permutex2var_ps(even, hi_half, odd), s);
    if (round) {
      a = round_to(round_to(a, w.wdt), w.cdt);
      b = round_to(round_to(b, w.wdt), w.cdt);
    }
    _mm512_store_ps(d, a);
    _mm512_store_ps(d + 16, b);
  }
}

}  // namespace quant4_detail
}  // namespace peft
