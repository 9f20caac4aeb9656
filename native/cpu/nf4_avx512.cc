// AVX-512 unpacking of 4-bit codes into the GEMM's f32 B panels: 16 codes widened to dword indices, looked
// up in the 16-entry table held in one zmm (vpermps), scaled by their blocks' absmax (f32 multiply, as
// bitsandbytes' dequantize_4bit) and rounded to the dequantisation and compute dtypes when those are 16-bit.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wignored-attributes"  // a table of kernels taking __m512 (its may_alias dropped)
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

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

// A value rounded to the weight's dtype and then to the compute dtype: once when they are the same.
inline __m512 round_weight(__m512 v, DType wdt, DType cdt) { return round_to(wdt == cdt ? v : round_to(v, wdt), cdt); }

// The 32 values of one k-step from the panel form, times the chunk's scales.
template <bool Round>
inline void panel_step(const uint8_t* codes, __m512 tab, __m512 s0, __m512 s1, DType wdt, DType cdt, float* d) {
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  __m512 a = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)), tab), s0);
  __m512 b = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab), s1);
  if (Round) {
    a = round_weight(a, wdt, cdt);
    b = round_weight(b, wdt, cdt);
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

// The small-M forward's pass over one panel: H halves of it (16 columns each, from h0) for M rows of x, the
// codes dequantised in registers and used at once (no f32 panel is written). xt holds x k-major, 16 floats
// a k-step, so each k-step's broadcasts come from one cache line; each output sums its k in order.
template <int M, int H, int h0, bool Round>
void direct_pass(const PanelCodes& pc, __m512 tab, DType wdt, DType cdt, const float* xt, int64_t pn, float* tile) {
  const int64_t chunks = pc.K / pc.g;
  const uint8_t* codes = pc.codes + pn * pc.K * (kPanel / 2);
  const float* scales = pc.scales + pn * chunks * kPanel;
  __m512 acc[H][M];
  for (int h = 0; h < H; h++)
    for (int m = 0; m < M; m++) acc[h][m] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; c++) {
    __m512 s[H];
    for (int h = 0; h < H; h++) s[h] = _mm512_loadu_ps(scales + c * kPanel + (h0 + h) * 16);
    const int64_t kend = (c + 1) * pc.g;
    for (int64_t k = c * pc.g; k < kend; k++) {
      // The codes stream from memory once per half: ask for them 1 KiB ahead (past the end is harmless).
      if ((k & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(codes + (k + 64) * 16), _MM_HINT_T0);
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k * 16)));
      const float* xk = xt + k * 16;
      for (int h = 0; h < H; h++) {
        // vpermps reads the index's low 4 bits: the low nibble needs no mask.
        const __m512i idx = h0 + h ? _mm512_srli_epi32(v, 4) : v;
        __m512 w = _mm512_mul_ps(_mm512_permutexvar_ps(idx, tab), s[h]);
        if (Round) w = round_weight(w, wdt, cdt);
        for (int m = 0; m < M; m++) acc[h][m] = _mm512_fmadd_ps(w, _mm512_set1_ps(xk[m]), acc[h][m]);
      }
    }
  }
  for (int h = 0; h < H; h++)
    for (int m = 0; m < M; m++) _mm512_storeu_ps(tile + m * kPanel + (h0 + h) * 16, acc[h][m]);
}

// Up to 8 rows take both halves in one pass (their broadcasts shared); more rows one half a pass, so the
// accumulators stay within the 32 registers.
template <int M, bool Round>
void direct_panel(const PanelCodes& pc, __m512 tab, DType wdt, DType cdt, const float* xt, int64_t pn, float* tile) {
  if constexpr (M <= 8) {
    direct_pass<M, 2, 0, Round>(pc, tab, wdt, cdt, xt, pn, tile);
  } else {
    direct_pass<M, 1, 0, Round>(pc, tab, wdt, cdt, xt, pn, tile);
    direct_pass<M, 1, 1, Round>(pc, tab, wdt, cdt, xt, pn, tile);
  }
}

using DirectFn = void (*)(const PanelCodes&, __m512, DType, DType, const float*, int64_t, float*);

template <bool Round, std::size_t... I>
constexpr auto direct_table(std::index_sequence<I...>) {
  return std::array<DirectFn, sizeof...(I)>{&direct_panel<static_cast<int>(I) + 1, Round>...};
}

}  // namespace

void direct_panel_avx512(const PanelCodes& pc, const float* table, DType wdt, DType cdt, const float* xt, int64_t M, int64_t pn,
                         float* tile) {
  static constexpr auto exact = direct_table<false>(std::make_index_sequence<kDirectRows>());
  static constexpr auto rounded = direct_table<true>(std::make_index_sequence<kDirectRows>());
  const bool round = wdt != DType::F32 || cdt != DType::F32;
  (round ? rounded : exact)[M - 1](pc, _mm512_loadu_ps(table), wdt, cdt, xt, pn, tile);
}

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
      a = round_weight(a, w.wdt, w.cdt);
      b = round_weight(b, w.wdt, w.cdt);
    }
    _mm512_store_ps(d, a);
    _mm512_store_ps(d + 16, b);
  }
}

}  // namespace quant4_detail
}  // namespace peft
