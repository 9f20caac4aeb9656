// AVX-512 A packing for the common case of rows contiguous in k (x in a linear layer): 16 k-steps of
// up to 16 rows are loaded (widened to f32, or as bf16 pairs), transposed in registers and stored as
// k-major groups. The scalar packer walks one element at a time and cost several percent of a GEMM.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "gemm_kernels.h"

namespace peft {
namespace gemm_detail {
namespace {

// In-register transpose of 16 rows of 16 dwords.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // r[4q + j] now holds, per 128-bit lane L, dwords (rows 4L'.., unit j) for row quad q; gather lanes.
  for (int i = 0; i < 4; i++) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; i++) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// 16 32-bit units of one row from unit u0: f32 values (widened) for the F32 layout, bf16 k-pairs for
// the pairs layout. `left` = k-steps still inside the row.
inline __m512i load_units(const void* row, DType dt, bool pairs, int64_t u0, int64_t left) {
  if (left <= 0) return _mm512_setzero_si512();
  if (pairs) {
    __mmask32 k = left >= 32 ? ~0u : (1u << left) - 1;
    return _mm512_maskz_loadu_epi16(k, static_cast<const uint16_t*>(row) + 2 * u0);
  }
  __mmask16 k = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
  switch (dt) {
    case DType::F32: return _mm512_maskz_loadu_epi32(k, static_cast<const float*>(row) + u0);
    case DType::BF16:
      return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(row) + u0)), 16);
    default:
      return _mm512_castps_si512(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(row) + u0)));
  }
}

}  // namespace

void pack_a_group_avx512(ALayout l, const GemmMat& a, int64_t i0, int m, int ms, int64_t K, int64_t Kp, void* dst) {
  bool pairs = l == ALayout::BF16Pairs;
  bool ok = a.cs == 1 && ms <= 16 && (l == ALayout::F32 || (pairs && a.dt == DType::BF16));
  if (!ok) return pack_a_group(l, a, i0, m, ms, K, Kp, dst);
  const size_t esz = dtype_size(a.dt);
  const char* base = static_cast<const char*>(a.p) + i0 * a.rs * esz;
  uint32_t* d = static_cast<uint32_t*>(dst);
  const int64_t units = pairs ? Kp / 2 : Kp;  // 32-bit units per row in the packed layout
  const int64_t per = pairs ? 2 : 1;          // k-steps per unit
  const __mmask16 store = static_cast<__mmask16>((1u << ms) - 1);
  for (int64_t u0 = 0; u0 < units; u0 += 16) {
    __m512i r[16];
    for (int i = 0; i < 16; i++)
      r[i] = i < m ? load_units(base + i * a.rs * esz, a.dt, pairs, u0, K - u0 * per) : _mm512_setzero_si512();
    transpose16(r);
    int64_t n = units - u0 < 16 ? units - u0 : 16;
    for (int64_t u = 0; u < n; u++) _mm512_mask_storeu_epi32(d + (u0 + u) * ms, store, r[u]);
  }
}

}  // namespace gemm_detail
}  // namespace peft
