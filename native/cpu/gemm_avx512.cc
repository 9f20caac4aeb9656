// AVX-512 f32 micro-kernels: a 14 x 32 register tile (28 zmm accumulators), A widened to f32 at pack
// time. A bf16 or f16 weight stays 16-bit in its packed form (half the bytes to stream; for bf16 the
// k-pair layout shared with the vdpbf16ps and AMX kernels) and each B micro-panel block is widened to
// f32 once, into an L1 buffer, before the row groups run over it. Widening inside the kernel instead
// (shift/mask per k-pair) needs registers the 28 accumulators leave no room for: GCC spilled and that
// kernel ran at about half the f32 speed.
#include "gemm_avx512_tile.h"

namespace peft {
namespace gemm_detail {
namespace {

template <int M, int NV>
inline void zero(__m512 (&c)[M][NV]) {
#pragma GCC unroll 32
  for (int i = 0; i < M; i++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) c[i][v] = _mm512_setzero_ps();
}

// c[i][v] += a[i] * b[v] for the M rows of one k-step.
template <int M, int NV>
inline void rank1(__m512 (&c)[M][NV], const float* a, const __m512 (&b)[NV]) {
#pragma GCC unroll 32
  for (int i = 0; i < M; i++) {
    __m512 av = _mm512_set1_ps(a[i]);
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) c[i][v] = _mm512_fmadd_ps(av, b[v], c[i][v]);
  }
}

// k-steps left when the C rows are pulled into L1.
constexpr int64_t kTailSteps = 16;

template <int M, int NV>
inline void step(__m512 (&c)[M][NV], const float* a, const float* b, const char*& pf, int64_t pf_step) {
  prefetch_step(pf, pf_step);
  __m512 bv[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + 16 * v);
  rank1(c, a, bv);
}

template <int M, int NV>
struct KernF32 {
  static void run(const Tile& t) {
    prefetch_c<M>(t);
    __m512 c[M][NV];
    zero(c);
    const float* a = static_cast<const float*>(t.a);
    const float* b = static_cast<const float*>(t.b);
    const char* pf = t.pf;
    int64_t k = 0;
    for (int64_t kend = t.kc - kTailSteps; k < kend; k++, a += M, b += t.ldb) step(c, a, b, pf, t.pf_step);
    prefetch_c<M, true>(t);
    for (; k < t.kc; k++, a += M, b += t.ldb) step(c, a, b, pf, t.pf_step);
    finish(c, t);
  }
};

// The first row group of a block with few rows reads the bf16 k-pair panel itself, widens it in
// registers (even k: low halves shifted up; odd k: high halves with the low ones cleared) and stores
// the f32 panel for the groups after it, so no separate widening pass runs. Up to 8 rows: 16
// accumulators leave registers for the pairs.
template <int M, int NV>
struct KernBF16Widen {
  static void run(const Tile& t) {
    prefetch_c<M>(t);
    __m512 c[M][NV];
    zero(c);
    const float* a = static_cast<const float*>(t.a);
    const uint16_t* b = static_cast<const uint16_t*>(t.b);
    float* w = t.widen_to;
    const char* pf = t.pf;
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (int64_t k = 0; k < t.kc; k += 2, a += 2 * M, b += 2 * kZmmNr, w += 2 * kZmmNr) {
      prefetch_step(pf, 2 * t.pf_step);
      __m512i raw[2];
      __m512 bv[2];
      for (int v = 0; v < 2; v++) raw[v] = _mm512_load_si512(b + 32 * v);
      for (int v = 0; v < 2; v++) bv[v] = _mm512_castsi512_ps(_mm512_slli_epi32(raw[v], 16)), _mm512_store_ps(w + 16 * v, bv[v]);
      rank1(c, a, reinterpret_cast<__m512(&)[NV]>(bv));
      for (int v = 0; v < 2; v++) bv[v] = _mm512_castsi512_ps(_mm512_and_si512(raw[v], hi)), _mm512_store_ps(w + kZmmNr + 16 * v, bv[v]);
      rank1(c, a + M, reinterpret_cast<__m512(&)[NV]>(bv));
    }
    finish(c, t);
  }
};

// Widening of a 16-bit B micro-panel block to the f32 panel the kernels read (see widen_b).
void widen_f16(const void* src, int64_t kc, float* dst) {
  const uint16_t* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < kc * kZmmNr; i += 16)
    _mm512_store_ps(dst + i, _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(s + i))));
}

// k-pair layout: each 32-bit lane holds (B[2q][n], B[2q+1][n]); the even k is the low half shifted up,
// the odd k the high half with the low half cleared.
void widen_bf16_pairs(const void* src, int64_t kc, float* dst) {
  const uint16_t* s = static_cast<const uint16_t*>(src);
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t k = 0; k < kc; k += 2, s += 2 * kZmmNr, dst += 2 * kZmmNr) {
    for (int v = 0; v < 2; v++) {
      __m512i raw = _mm512_load_si512(s + 32 * v);
      _mm512_store_si512(dst + 16 * v, _mm512_slli_epi32(raw, 16));
      _mm512_store_si512(dst + kZmmNr + 16 * v, _mm512_and_si512(raw, hi));
    }
  }
}

constexpr int kMr = 14;
constexpr int kWidenRows = 8;
using Rows = std::make_integer_sequence<int, kMr>;

// KC from L1: kc_bytes_per_k is one k-step of the f32 panel the kernels read.
constexpr KernelSet kF32 = with_pack_b(make_set<KernF32>(Rows{}, {"avx512-f32", kMr, kZmmNr, BLayout::F32, ALayout::F32, false, kZmmNr * 4, 4, {}, nullptr, nullptr, &pack_a_group_avx512, nullptr, true}));
constexpr KernelSet kF16 = make_set<KernF32>(Rows{}, {"avx512-f32-f16w", kMr, kZmmNr, BLayout::F16, ALayout::F32, false, kZmmNr * 4, 4, {}, nullptr, nullptr, &pack_a_group_avx512, &widen_f16, false});
constexpr KernelSet kBF16 = [] {
  KernelSet s = make_set<KernF32>(Rows{}, {"avx512-f32-bf16w", kMr, kZmmNr, BLayout::BF16Pairs, ALayout::F32, false, kZmmNr * 4, 32, {}, nullptr, nullptr, &pack_a_group_avx512, &widen_bf16_pairs, false});
  KernelSet wk = make_set<KernBF16Widen>(std::make_integer_sequence<int, kWidenRows>{}, s);
  for (int i = 0; i < kWidenRows; i++) s.widen_kernel[i][0] = wk.kernel[i][0], s.widen_kernel[i][1] = wk.kernel[i][1];
  s.widen_rows = kWidenRows;
  return with_pack_b(s);
}();

}  // namespace

const KernelSet* avx512_f32_kernels(DType b_dt) {
  return b_dt == DType::BF16 ? &kBF16 : b_dt == DType::F16 ? &kF16 : &kF32;
}

}  // namespace gemm_detail
}  // namespace peft
