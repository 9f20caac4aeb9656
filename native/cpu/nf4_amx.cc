// The 4-bit forward at small M with bf16 compute on AMX: y = x·Wᵀ as tiles, x (bf16, at most 16 rows) the A
// tile and each 32-step of Wᵀ dequantised from the panel form straight into two B tiles (16 columns each, k in
// pairs), so no f32 panel exists. bitsandbytes multiplies bf16 x by the bf16-dequantised W with f32 sums: the
// tile products are those (each value code·absmax in f32, rounded to the weight's dtype, then to bf16).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "amx_tiles.h"
#include "nf4.h"

namespace peft {
namespace quant4_detail {
namespace {

// Pairs (k, k+1) of one column in each dword, as the B tile holds them.
alignas(64) const uint16_t kInterleave[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                               8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

// One k-step's 32 values (both halves of the panel), in f32, rounded to the weight's dtype when it is f16
// (the bf16 conversion after rounds to bf16, which is also what a bf16 weight dtype asks).
inline void step_values(const uint8_t* codes, __m512 tab, __m512 s0, __m512 s1, bool f16, __m512& lo, __m512& hi) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  lo = _mm512_mul_ps(_mm512_permutexvar_ps(v, tab), s0);
  hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab), s1);
  if (f16) {
    lo = _mm512_cvtph_ps(_mm512_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    hi = _mm512_cvtph_ps(_mm512_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

}  // namespace

namespace {

// Wᵀ's 32 k-steps from k0 as two B tiles (columns 0-15 into b0, 16-31 into b1: 16 rows of k-pairs x 16 columns x 2).
inline void dequant_step(const uint8_t* codes, const float* scales, int64_t g, int64_t k0, __m512 tab, __m512i pairs, bool f16,
                         uint16_t* b0, uint16_t* b1) {
  // The codes stream from memory once (512 bytes a step): ask for them 4 KiB ahead (past the end is harmless).
  for (int l = 0; l < 8; l++) _mm_prefetch(reinterpret_cast<const char*>(codes + (k0 + 256) * 16 + l * 64), _MM_HINT_T0);
  // K % 32 == 0 makes chunks of 32 or 64 k-steps: one pair of scale vectors covers the whole step.
  const int64_t c = k0 / g;
  const __m512 s0 = _mm512_loadu_ps(scales + c * kPanel), s1 = _mm512_loadu_ps(scales + c * kPanel + 16);
  for (int64_t r = 0; r < 16; r++) {
    const int64_t k = k0 + 2 * r;
    __m512 lo0, hi0, lo1, hi1;
    step_values(codes + k * 16, tab, s0, s1, f16, lo0, hi0);
    step_values(codes + (k + 1) * 16, tab, s0, s1, f16, lo1, hi1);
    const __m512i lo = _mm512_permutexvar_epi16(pairs, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(lo1, lo0)));
    const __m512i hi = _mm512_permutexvar_epi16(pairs, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi1, hi0)));
    _mm512_store_si512(b0 + r * 32, lo);
    _mm512_store_si512(b1 + r * 32, hi);
  }
}

}  // namespace

void direct_panel_amx(const PanelCodes& pc, const float* table, DType wdt, const uint16_t* xs, int64_t mtiles, int64_t pn,
                      uint16_t* bpanel, float* out) {
  const int64_t chunks = pc.K / pc.g, kb_n = pc.K / 32;
  const uint8_t* codes = pc.codes + pn * pc.K * (kPanel / 2);
  const float* scales = pc.scales + pn * chunks * kPanel;
  const __m512 tab = _mm512_loadu_ps(table);
  const bool f16 = wdt == DType::F16;
  const __m512i pairs = _mm512_load_si512(kInterleave);
  if (mtiles == 1) {
    // One row tile: each step's B tiles are used once, so they live in L1 only, in two sets used in turn so
    // one step's stores need not wait for the previous step's tile loads.
    alignas(64) uint16_t bufs[2][2][16 * 32];
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t kb = 0; kb < kb_n; kb++) {
      uint16_t(*b)[16 * 32] = bufs[kb & 1];
      dequant_step(codes, scales, pc.g, kb * 32, tab, pairs, f16, b[0], b[1]);
      _tile_loadd(4, xs + kb * 512, 64);
      _tile_loadd(6, b[0], 64);
      _tile_loadd(7, b[1], 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
    }
    _tile_stored(0, out, kPanel * 4);
    _tile_stored(1, out + 16, kPanel * 4);
    return;
  }
  // More rows: the panel is dequantised once into bpanel (K·64 bytes, L2-resident) and every pair of row tiles
  // runs over it with four accumulators.
  for (int64_t kb = 0; kb < kb_n; kb++) dequant_step(codes, scales, pc.g, kb * 32, tab, pairs, f16, bpanel + kb * 1024, bpanel + kb * 1024 + 512);
  for (int64_t mt = 0; mt < mtiles; mt += 2) {
    const bool two = mt + 1 < mtiles;
    const uint16_t* a0 = xs + mt * kb_n * 512;
    const uint16_t* a1 = a0 + kb_n * 512;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t kb = 0; kb < kb_n; kb++) {
      _tile_loadd(4, a0 + kb * 512, 64);
      _tile_loadd(6, bpanel + kb * 1024, 64);
      _tile_loadd(7, bpanel + kb * 1024 + 512, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      if (two) {
        _tile_loadd(5, a1 + kb * 512, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
    float* o = out + mt * 16 * kPanel;
    _tile_stored(0, o, kPanel * 4);
    _tile_stored(1, o + 16, kPanel * 4);
    if (two) {
      _tile_stored(2, o + 16 * kPanel, kPanel * 4);
      _tile_stored(3, o + 16 * kPanel + 16, kPanel * 4);
    }
  }
}

void direct_amx_begin() { amx_thread_begin(); }
void direct_amx_end() { amx_thread_end(); }

}  // namespace quant4_detail
}  // namespace peft
