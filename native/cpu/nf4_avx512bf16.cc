// The 4-bit codes as bf16 in the bf16 GEMM kernels' pair layout (BLayout::BF16Pairs, 32 columns): at each k-pair
// q, for each column j, (W[j][2q], W[j][2q+1]) in 32 bits. What the AMX and vdpbf16ps kernels multiply, with
// each value code·absmax in f32, rounded to the weight's dtype when it is f16, then to bf16 (round to nearest
// even, as bitsandbytes' dequantisation into a bf16 compute dtype rounds).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "nf4.h"

namespace peft {
namespace quant4_detail {
namespace {

// Pairs (k, k+1) of one column in each dword.
alignas(64) const uint16_t kInterleave[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                               8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

// One k-step's 32 values (both halves of the panel) in f32.
inline void step_values(const uint8_t* codes, __m512 tab, __m512 s0, __m512 s1, bool f16, __m512& lo, __m512& hi) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  lo = _mm512_mul_ps(_mm512_permutexvar_ps(v, tab), s0);  // vpermps reads the index's low 4 bits
  hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab), s1);
  if (f16) {
    lo = _mm512_cvtph_ps(_mm512_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    hi = _mm512_cvtph_ps(_mm512_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

}  // namespace

void unpack_pairs_avx512bf16(const PanelCodes& pc, const float* table, DType wdt, int64_t k0, int64_t kc, int64_t n0, uint16_t* dst) {
  const int64_t pn = n0 / kPanel, chunks = pc.K / pc.g;
  const uint8_t* codes = pc.codes + pn * pc.K * (kPanel / 2);
  const float* scales = pc.scales + pn * chunks * kPanel;
  const __m512 tab = _mm512_loadu_ps(table);
  const __m512i pairs = _mm512_load_si512(kInterleave);
  const bool f16 = wdt == DType::F16;
  for (int64_t ks = k0; ks < k0 + kc; ks += 32) {
    // The codes stream from memory once (512 bytes a step): ask for them 4 KiB ahead (past the end is harmless).
    for (int l = 0; l < 8; l++) _mm_prefetch(reinterpret_cast<const char*>(codes + (ks + 256) * 16 + l * 64), _MM_HINT_T0);
    // K % 32 == 0 makes chunks of 32 or 64 k-steps: one pair of scale vectors covers the 32 steps.
    const int64_t c = ks / pc.g;
    const __m512 s0 = _mm512_loadu_ps(scales + c * kPanel), s1 = _mm512_loadu_ps(scales + c * kPanel + 16);
    uint16_t* d = dst + (ks - k0) / 2 * 64;
    for (int64_t r = 0; r < 16; r++) {
      const int64_t k = ks + 2 * r;
      __m512 lo0, hi0, lo1, hi1;
      step_values(codes + k * 16, tab, s0, s1, f16, lo0, hi0);
      step_values(codes + (k + 1) * 16, tab, s0, s1, f16, lo1, hi1);
      _mm512_store_si512(d + r * 64, _mm512_permutexvar_epi16(pairs, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(lo1, lo0))));
      _mm512_store_si512(d + r * 64 + 32, _mm512_permutexvar_epi16(pairs, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi1, hi0))));
    }
  }
}

}  // namespace quant4_detail
}  // namespace peft
