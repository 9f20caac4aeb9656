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

inline __m512 round_f16(__m512 v) { return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }

// 16 values in pair order (column j's k and k + 1 in lanes 2j, 2j + 1): the codes (low or high nibbles of the
// interleaved bytes) looked up and scaled, rounded to f16 first when that is the weight's dtype.
inline __m512 pair_values(__m512i idx, __m512 tab, __m512 s, bool f16) {
  const __m512 v = _mm512_mul_ps(_mm512_permutexvar_ps(idx, tab), s);  // vpermps reads the index's low 4 bits
  return f16 ? round_f16(v) : v;
}

}  // namespace

void unpack_pairs_avx512bf16(const PanelCodes& pc, const float* table, DType wdt, int64_t k0, int64_t kc, int64_t n0, uint16_t* dst) {
  const int64_t pn = n0 / kPanel, chunks = pc.K / pc.g;
  const uint8_t* codes = pc.codes + pn * pc.K * (kPanel / 2);
  const float* scales = pc.scales + pn * chunks * kPanel;
  const __m512 tab = _mm512_loadu_ps(table);
  const bool f16 = wdt == DType::F16;
  // Each column's scale in both lanes of its pair: columns 0-7 and 8-15 of a 16-column half.
  const __m512i dup_lo = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i dup_hi = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  for (int64_t ks = k0; ks < k0 + kc; ks += 32) {
    // The codes stream from memory once (512 bytes a step): ask for them 4 KiB ahead (past the end is harmless).
    for (int l = 0; l < 8; l++) _mm_prefetch(reinterpret_cast<const char*>(codes + (ks + 256) * 16 + l * 64), _MM_HINT_T0);
    // K % 32 == 0 makes chunks of 32 or 64 k-steps: one set of scales covers the 32 steps.
    const int64_t c = ks / pc.g;
    const __m512 s0 = _mm512_loadu_ps(scales + c * kPanel), s1 = _mm512_loadu_ps(scales + c * kPanel + 16);
    const __m512 s0a = _mm512_permutexvar_ps(dup_lo, s0), s0b = _mm512_permutexvar_ps(dup_hi, s0);
    const __m512 s1a = _mm512_permutexvar_ps(dup_lo, s1), s1b = _mm512_permutexvar_ps(dup_hi, s1);
    uint16_t* d = dst + (ks - k0) / 2 * 64;
    for (int64_t r = 0; r < 16; r++) {
      const int64_t k = ks + 2 * r;
      // Byte j of a k-step holds column j (low nibble) and column 16 + j (high nibble): interleaving the bytes
      // of k and k + 1 puts each column's pair side by side, so the bf16 conversion lands in pair order.
      const __m128i ck = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k * 16));
      const __m128i ck1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + (k + 1) * 16));
      const __m512i va = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(ck, ck1));  // columns 0-7 and 16-23
      const __m512i vb = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(ck, ck1));  // columns 8-15 and 24-31
      const __m512 lo_a = pair_values(va, tab, s0a, f16), lo_b = pair_values(vb, tab, s0b, f16);
      const __m512 hi_a = pair_values(_mm512_srli_epi32(va, 4), tab, s1a, f16);
      const __m512 hi_b = pair_values(_mm512_srli_epi32(vb, 4), tab, s1b, f16);
      _mm512_store_si512(d + r * 64, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(lo_b, lo_a)));
      _mm512_store_si512(d + r * 64 + 32, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi_b, hi_a)));
    }
  }
}

void unpack_rows_pairs_avx512bf16(const Quant4Weight& w, const float* table, int64_t k0, int64_t kc, int64_t n0, uint16_t* dst) {
  const __m512 tab = _mm512_loadu_ps(table);
  const bool f16 = w.wdt == DType::F16;
  // Even and odd columns' pairs (64 bits each) back in column order: columns 0-7, then 8-15.
  const __m512i first = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), second = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  auto scale = [&](int64_t k) { return k < w.N ? w.absmax[(k * w.K + n0) / w.blocksize] : 0.0f; };
  auto codes = [&](int64_t k) {
    return k < w.N ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.packed + (k * w.K + n0) / 2)) : _mm_setzero_si128();
  };
  for (int64_t k = k0; k < k0 + kc; k += 2) {
    uint16_t* d = dst + (k - k0) / 2 * 64;
    // Rows k and k + 1 (a row past N reads as zero): 32 columns each, in one block (blocks hold >= 32 values and
    // n0, K are multiples of 32); byte i of a row holds columns 2i (high nibble) and 2i + 1.
    const __m512 s = _mm512_unpacklo_ps(_mm512_set1_ps(scale(k)), _mm512_set1_ps(scale(k + 1)));  // lanes alternate
    const __m128i ck = codes(k), ck1 = codes(k + 1);
    for (int half = 0; half < 2; half++) {
      const __m512i v = _mm512_cvtepu8_epi32(half ? _mm_unpackhi_epi8(ck, ck1) : _mm_unpacklo_epi8(ck, ck1));
      __m512 even = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab), s);
      __m512 odd = _mm512_mul_ps(_mm512_permutexvar_ps(v, tab), s);
      if (f16) even = round_f16(even), odd = round_f16(odd);
      const __m512 a = _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(even), first, _mm512_castps_pd(odd)));
      const __m512 b = _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(even), second, _mm512_castps_pd(odd)));
      _mm512_store_si512(d + half * 32, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a)));
    }
  }
}

}  // namespace quant4_detail
}  // namespace peft
