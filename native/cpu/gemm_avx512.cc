// AVX-512 f32 micro-kernels: a 14 x 32 register tile (28 zmm accumulators), A widened to f32 at pack
// time, B read as f32, or as 16-bit and widened in registers (f16 by vcvtph2ps; bf16 from the k-pair
// layout by a shift for the even k and a mask for the odd k), so a bf16 or f16 weight streams half the
// bytes and keeps one packed form shared with the vdpbf16ps and AMX kernels.
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
inline void step(__m512 (&c)[M][NV], const float* a, const float* b) {
  __m512 bv[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; v++) bv[v] = _mm512_load_ps(b + 16 * v);
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
    int64_t k = 0;
    for (int64_t kend = t.kc - kTailSteps; k < kend; k++, a += M, b += kZmmNr) step(c, a, b);
    prefetch_c<M, true>(t);
    for (; k < t.kc; k++, a += M, b += kZmmNr) step(c, a, b);
    finish(c, t);
  }
};

template <int M, int NV>
struct KernF16 {
  static void run(const Tile& t) {
    prefetch_c<M>(t);
    __m512 c[M][NV];
    zero(c);
    const float* a = static_cast<const float*>(t.a);
    const uint16_t* b = static_cast<const uint16_t*>(t.b);
    for (int64_t k = 0; k < t.kc; k++, a += M, b += kZmmNr) {
      __m512 bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) bv[v] = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(b + 16 * v)));
      rank1(c, a, bv);
    }
    finish(c, t);
  }
};

template <int M, int NV>
struct KernBF16Pairs {
  static void run(const Tile& t) {
    prefetch_c<M>(t);
    __m512 c[M][NV];
    zero(c);
    const float* a = static_cast<const float*>(t.a);
    const uint16_t* b = static_cast<const uint16_t*>(t.b);
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (int64_t k = 0; k < t.kc; k += 2, a += 2 * M, b += 2 * kZmmNr) {
      __m512 bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) bv[v] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_load_si512(b + 32 * v), 16));
      rank1(c, a, bv);
      // Reload rather than keep the raw pairs live: with 28 accumulators there is no register for them.
      __asm__ volatile("" ::: "memory");
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) bv[v] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_load_si512(b + 32 * v), hi));
      rank1(c, a + M, bv);
    }
    finish(c, t);
  }
};

constexpr int kMr = 14;
using Rows = std::make_integer_sequence<int, kMr>;

// KC from L1: kc_bytes_per_k is one k-step of a B panel.
constexpr KernelSet kF32 = make_set<KernF32>(Rows{}, {"avx512-f32", kMr, kZmmNr, BLayout::F32, ALayout::F32, false, kZmmNr * 4, 4, {}, nullptr, nullptr, &pack_a_group_avx512});
constexpr KernelSet kF16 = make_set<KernF16>(Rows{}, {"avx512-f32-f16w", kMr, kZmmNr, BLayout::F16, ALayout::F32, false, kZmmNr * 2, 4, {}, nullptr, nullptr, &pack_a_group_avx512});
constexpr KernelSet kBF16 = make_set<KernBF16Pairs>(Rows{}, {"avx512-f32-bf16w", kMr, kZmmNr, BLayout::BF16Pairs, ALayout::F32, false, kZmmNr * 2, 32, {}, nullptr, nullptr, &pack_a_group_avx512});

}  // namespace

const KernelSet* avx512_f32_kernels(DType b_dt) {
  return b_dt == DType::BF16 ? &kBF16 : b_dt == DType::F16 ? &kF16 : &kF32;
}

}  // namespace gemm_detail
}  // namespace peft
