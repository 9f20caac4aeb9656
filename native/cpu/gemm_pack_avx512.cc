// AVX-512 packing for operands whose rows run along k (x in a linear layer as A, its weight W as B =
// Wᵀ): 16 k-steps of up to 16 rows are loaded (widened to f32, or as bf16 pairs), transposed in
// registers and stored k-major. The scalar packer walks one element at a time: for A it cost several
// percent of a GEMM, for a 4096 x 4096 f32 weight 20 ms per repack.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

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

// Up to 16 rows (`rows`, rest zero) of 32-bit units from `base` (rows `stride` bytes apart), k-steps
// [0, K), transposed in blocks of 16 units: unit-row u of the result (16 dwords, one per source row)
// goes to dst + u * dst_stride, masked by `store`, for u in [0, units).
void transpose_rows(const char* base, int64_t stride, int rows, DType dt, bool pairs, int64_t K, int64_t units,
                    uint32_t* dst, int64_t dst_stride, __mmask16 store, const float* kscale = nullptr) {
  const int64_t per = pairs ? 2 : 1;  // k-steps per unit
  for (int64_t u0 = 0; u0 < units; u0 += 16) {
    __m512i r[16];
    for (int i = 0; i < 16; i++) r[i] = i < rows ? load_units(base + i * stride, dt, pairs, u0, K - u0 * per) : _mm512_setzero_si512();
    transpose16(r);
    int64_t n = units - u0 < 16 ? units - u0 : 16;
    // Units past K are zero already; their scale is never read.
    if (kscale)
      for (int64_t u = 0; u < n && u0 + u < K; u++)
        r[u] = _mm512_castps_si512(_mm512_mul_ps(_mm512_castsi512_ps(r[u]), _mm512_set1_ps(kscale[u0 + u])));
    for (int64_t u = 0; u < n; u++) _mm512_mask_storeu_epi32(dst + (u0 + u) * dst_stride, store, r[u]);
  }
}

}  // namespace

// AMX's A layout from bf16 rows contiguous in k: per 32-k chunk each row's 64 bytes, copied as they are
// (the element-wise packer took 8 % of a bf16-mode training step).
void pack_a_rows32(const GemmMat& a, int64_t i0, int m, int ms, int64_t K, int64_t Kp, uint16_t* dst) {
  const uint16_t* s = static_cast<const uint16_t*>(a.p) + i0 * a.rs;
  for (int64_t c = 0; c < Kp / 32; c++) {
    const int64_t left = K - c * 32;
    const __mmask32 k = left >= 32 ? ~0u : left > 0 ? (1u << left) - 1 : 0u;
    uint16_t* d = dst + c * ms * 32;
    for (int i = 0; i < m; i++) _mm512_storeu_si512(d + i * 32, _mm512_maskz_loadu_epi16(k, s + i * a.rs + c * 32));
    for (int i = m; i < ms; i++) _mm512_storeu_si512(d + i * 32, _mm512_setzero_si512());
  }
}

// The f32 layout from an A whose rows are contiguous along i (a transposed operand: dyᵀ in dW = dyᵀ·x, or in
// LoRA's dB): each k-step's m values are already side by side, widened and copied with one masked load and
// store (the element-wise packer took 3 % of a bf16-mode training step).
void pack_a_columns(const GemmMat& a, int64_t i0, int m, int ms, int64_t K, int64_t Kp, float* dst) {
  const int64_t esz = static_cast<int64_t>(dtype_size(a.dt));
  const char* s = static_cast<const char*>(a.p) + i0 * esz;
  const __mmask16 all = static_cast<__mmask16>((1u << ms) - 1);
  for (int64_t k = 0; k < Kp; k++) {
    if (k >= K) {
      _mm512_mask_storeu_ps(dst + k * ms, all, _mm512_setzero_ps());
      continue;
    }
    __m512 v = _mm512_castsi512_ps(load_units(s + k * a.cs * esz, a.dt, false, 0, m));
    if (a.ks) v = _mm512_mul_ps(v, _mm512_set1_ps(a.ks[k]));
    _mm512_mask_storeu_ps(dst + k * ms, all, v);  // lanes past m are zero (load_units)
  }
}

void pack_a_group_avx512(ALayout l, const GemmMat& a, int64_t i0, int m, int ms, int64_t K, int64_t Kp, void* dst) {
  if (l == ALayout::BF16Rows32 && a.dt == DType::BF16 && a.cs == 1 && !a.ks)
    return pack_a_rows32(a, i0, m, ms, K, Kp, static_cast<uint16_t*>(dst));
  if (l == ALayout::F32 && a.rs == 1 && a.cs != 1 && ms <= 16 && a.dt != DType::I8)
    return pack_a_columns(a, i0, m, ms, K, Kp, static_cast<float*>(dst));
  bool pairs = l == ALayout::BF16Pairs;
  bool ok = a.cs == 1 && ms <= 16 && (l == ALayout::F32 || (pairs && a.dt == DType::BF16 && !a.ks));
  if (!ok) return pack_a_group(l, a, i0, m, ms, K, Kp, dst);
  const int64_t esz = static_cast<int64_t>(dtype_size(a.dt));
  transpose_rows(static_cast<const char*>(a.p) + i0 * a.rs * esz, a.rs * esz, m, a.dt, pairs, K, pairs ? Kp / 2 : Kp,
                 static_cast<uint32_t*>(dst), ms, static_cast<__mmask16>((1u << ms) - 1), a.ks);
}

// B with rows contiguous in n (W itself as B, for dx = dy·W), into the f32 layout (f32 W: each k-row's 32
// values copied) or the pairs layout (bf16 W: each pair of k-rows, two 64-byte loads interleaved word by
// word). The element-wise packer took 7 % of a bf16-mode training step. Panel by panel, each k-row gave one
// or two lines, rows thousands of bytes apart: a stride the prefetchers do not follow, so every load waited
// on DRAM. kGroup panels side by side read kGroup lines of a row in turn, and the rows kAhead further on are
// asked for meanwhile (a (512, 1024, 2816) bf16 dx: 0.86x the time). A partial last panel reads only its
// columns (masked).
void pack_b_rows(bool pairs, int nr, const GemmMat& b, int64_t K, int64_t N, int64_t Kp, int64_t p0, int64_t p1, void* dst) {
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  const int64_t esz = pairs ? 2 : 4, per = pairs ? 2 : 1, units = Kp / per;  // k-rows per stored row of 128 bytes
  const char* s = static_cast<const char*>(b.p);
  constexpr int64_t kGroup = 16, kAhead = 8;
  for (int64_t g0 = p0; g0 < p1; g0 += kGroup) {
    const int64_t g1 = std::min(p1, g0 + kGroup);
    for (int64_t u = 0; u < units; u++) {
      const int64_t k = u * per;
      if (k + kAhead + per <= K)
        for (int64_t p = g0; p < g1; p++)
          for (int64_t r = k + kAhead; r < k + kAhead + per; r++)
            for (int64_t l = 0; l < nr * esz; l += 64) _mm_prefetch(s + (r * b.rs + p * nr) * esz + l, _MM_HINT_T0);
      for (int64_t p = g0; p < g1; p++) {
        const int64_t j0 = p * nr, jn = std::min<int64_t>(nr, N - j0);
        char* d = static_cast<char*>(dst) + ((p - p0) * Kp * nr + u * per * nr) * esz;
        const char* row = s + (k * b.rs + j0) * esz;
        if (pairs) {
          const __mmask32 cols = jn >= 32 ? ~0u : (1u << jn) - 1;
          const __m512i r0 = k < K ? _mm512_maskz_loadu_epi16(cols, row) : _mm512_setzero_si512();
          const __m512i r1 = k + 1 < K ? _mm512_maskz_loadu_epi16(cols, row + b.rs * esz) : _mm512_setzero_si512();
          _mm512_storeu_si512(d, _mm512_permutex2var_epi16(r0, lo, r1));
          _mm512_storeu_si512(d + 64, _mm512_permutex2var_epi16(r0, hi, r1));
        } else {
          for (int h = 0; h < 2; h++) {
            const int64_t n = std::clamp<int64_t>(jn - 16 * h, 0, 16);
            const __mmask16 cols = static_cast<__mmask16>((1u << n) - 1);
            _mm512_storeu_si512(d + 64 * h, k < K ? _mm512_maskz_loadu_epi32(cols, row + 64 * h) : _mm512_setzero_si512());
          }
        }
      }
    }
  }
}

// B with columns contiguous in k (a weight W[n][k] used as Wᵀ): each 32-column panel is two 16-row
// transposes of W. A weight is repacked after every write to it (each training step), so this runs
// at memory speed rather than element by element. B with rows contiguous in n goes to pack_b_rows.
void pack_b_panels_avx512(BLayout l, int nr, const GemmMat& b, int64_t K, int64_t N, int64_t Kp, int64_t p0, int64_t p1,
                          void* dst) {
  const bool pairs_src = l == BLayout::BF16Pairs && b.dt == DType::BF16, f32_src = l == BLayout::F32 && b.dt == DType::F32;
  if ((pairs_src || f32_src) && b.cs == 1 && b.rs != 1 && nr == 32) return pack_b_rows(pairs_src, nr, b, K, N, Kp, p0, p1, dst);
  bool pairs = l == BLayout::BF16Pairs;
  bool ok = b.rs == 1 && nr == 32 && ((l == BLayout::F32 && b.dt == DType::F32) || (pairs && b.dt == DType::BF16));
  if (!ok) return pack_b_panels(l, nr, b, K, N, Kp, p0, p1, dst);
  const int64_t esz = static_cast<int64_t>(dtype_size(b.dt)), units = pairs ? Kp / 2 : Kp;
  for (int64_t p = p0; p < p1; p++) {
    uint32_t* panel = static_cast<uint32_t*>(dst) + (p - p0) * units * nr;
    for (int h = 0; h < 2; h++) {
      int64_t j0 = p * nr + 16 * h;
      int rows = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, N - j0)));
      transpose_rows(static_cast<const char*>(b.p) + j0 * b.cs * esz, b.cs * esz, rows, b.dt, pairs, K, units, panel + 16 * h,
                     nr, static_cast<__mmask16>(0xffff));
    }
  }
}

}  // namespace gemm_detail
}  // namespace peft
