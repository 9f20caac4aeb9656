// Row quantisation for int8 with AVX-512 (+F16C): the same results as quant_row_scalar, 16 values a step; and
// the LoRA down-projection of the same rows (down_rows), done while they are in cache.
#pragma GCC diagnostic ignored "-Wignored-attributes"  // std containers of __m512 (its may_alias dropped)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

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

namespace peft {
namespace int8_detail {
namespace {

constexpr int kDownR = 4;         // rows of a taken together (4 rows of x x 4 of a: 16 zmm sums)

inline __mmask16 down_tail(int64_t left) { return left >= 16 ? 0xffff : static_cast<__mmask16>((1u << left) - 1); }

// Rows [kc, ke) of k for MI rows of x and RN rows of a from r0: the 16-lane partial sums in part (row stride
// R) updated in registers (MI x RN zmm; RN and MI fixed so none spills).
template <int MI, int RN>
void down_chunk(const float* x, int64_t K, const float* a, int64_t R, int64_t r0, int64_t kc, int64_t ke, __m512* part) {
  __m512 s[MI][RN];
  for (int i = 0; i < MI; i++)
    for (int j = 0; j < RN; j++) s[i][j] = part[i * R + r0 + j];
  for (int64_t k = kc; k < ke; k += 16) {
    const __mmask16 m = down_tail(ke - k);
    __m512 xv[MI];
    for (int i = 0; i < MI; i++) xv[i] = _mm512_maskz_loadu_ps(m, x + i * K + k);
    for (int j = 0; j < RN; j++) {
      const __m512 av = _mm512_maskz_loadu_ps(m, a + (r0 + j) * kDownK + (k - kc));
      for (int i = 0; i < MI; i++) s[i][j] = _mm512_fmadd_ps(xv[i], av, s[i][j]);
    }
  }
  for (int i = 0; i < MI; i++)
    for (int j = 0; j < RN; j++) part[i * R + r0 + j] = s[i][j];
}

// down_chunk<4, 4> with its 16 sums as named variables: GCC kept the array form's sums in registers but also
// stored all 16 to the stack every k step (no scalar replacement of a 1 KiB array), halving its speed.
template <>
void down_chunk<4, 4>(const float* x, int64_t K, const float* a, int64_t R, int64_t r0, int64_t kc, int64_t ke, __m512* part) {
  __m512* p0 = part + r0;
  __m512* p1 = p0 + R;
  __m512* p2 = p1 + R;
  __m512* p3 = p2 + R;
  __m512 s00 = p0[0], s01 = p0[1], s02 = p0[2], s03 = p0[3], s10 = p1[0], s11 = p1[1], s12 = p1[2], s13 = p1[3];
  __m512 s20 = p2[0], s21 = p2[1], s22 = p2[2], s23 = p2[3], s30 = p3[0], s31 = p3[1], s32 = p3[2], s33 = p3[3];
  const float* a0 = a + r0 * kDownK - kc;
  for (int64_t k = kc; k < ke; k += 16) {
    const __mmask16 m = down_tail(ke - k);
    const __m512 x0 = _mm512_maskz_loadu_ps(m, x + k), x1 = _mm512_maskz_loadu_ps(m, x + K + k);
    const __m512 x2 = _mm512_maskz_loadu_ps(m, x + 2 * K + k), x3 = _mm512_maskz_loadu_ps(m, x + 3 * K + k);
    __m512 av = _mm512_maskz_loadu_ps(m, a0 + k);
    s00 = _mm512_fmadd_ps(x0, av, s00), s10 = _mm512_fmadd_ps(x1, av, s10), s20 = _mm512_fmadd_ps(x2, av, s20), s30 = _mm512_fmadd_ps(x3, av, s30);
    av = _mm512_maskz_loadu_ps(m, a0 + kDownK + k);
    s01 = _mm512_fmadd_ps(x0, av, s01), s11 = _mm512_fmadd_ps(x1, av, s11), s21 = _mm512_fmadd_ps(x2, av, s21), s31 = _mm512_fmadd_ps(x3, av, s31);
    av = _mm512_maskz_loadu_ps(m, a0 + 2 * kDownK + k);
    s02 = _mm512_fmadd_ps(x0, av, s02), s12 = _mm512_fmadd_ps(x1, av, s12), s22 = _mm512_fmadd_ps(x2, av, s22), s32 = _mm512_fmadd_ps(x3, av, s32);
    av = _mm512_maskz_loadu_ps(m, a0 + 3 * kDownK + k);
    s03 = _mm512_fmadd_ps(x0, av, s03), s13 = _mm512_fmadd_ps(x1, av, s13), s23 = _mm512_fmadd_ps(x2, av, s23), s33 = _mm512_fmadd_ps(x3, av, s33);
  }
  p0[0] = s00, p0[1] = s01, p0[2] = s02, p0[3] = s03, p1[0] = s10, p1[1] = s11, p1[2] = s12, p1[3] = s13;
  p2[0] = s20, p2[1] = s21, p2[2] = s22, p2[3] = s23, p3[0] = s30, p3[1] = s31, p3[2] = s32, p3[3] = s33;
}

// MI rows of x: 16-lane partial sums per (row, r) kept in `part` across k chunks, reduced at the end.
template <int MI>
void down_block(const float* x, int64_t K, const float* a, int64_t R, float scale, float* u, __m512* part) {
  for (int64_t i = 0; i < MI * R; i++) part[i] = _mm512_setzero_ps();
  for (int64_t kc = 0; kc < K; kc += kDownK) {
    const int64_t ke = std::min(K, kc + kDownK);
    int64_t r0 = 0;
    const float* ac = a + kc * R;  // this chunk's R rows of kDownK
    for (; r0 + kDownR <= R; r0 += kDownR) down_chunk<MI, kDownR>(x, K, ac, R, r0, kc, ke, part);
    for (; r0 < R; r0++) down_chunk<MI, 1>(x, K, ac, R, r0, kc, ke, part);
  }
  for (int i = 0; i < MI; i++)
    for (int64_t r = 0; r < R; r++) u[i * R + r] = _mm512_reduce_add_ps(part[i * R + r]) * scale;
}

}  // namespace

void down_rows_avx512(const float* x, int64_t rows, int64_t K, const float* a, int64_t R, float scale, float* u) {
  std::vector<__m512> part(static_cast<size_t>(4 * std::max<int64_t>(R, 1)));
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) down_block<4>(x + i * K, K, a, R, scale, u + i * R, part.data());
  for (; i < rows; i++) down_block<1>(x + i * K, K, a, R, scale, u + i * R, part.data());
}

}  // namespace int8_detail
}  // namespace peft
