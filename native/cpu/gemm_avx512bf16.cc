// AVX-512 BF16 micro-kernels for bf16 x with bf16 weights: vdpbf16ps multiplies two k-steps per 32-bit
// lane (both operands in the k-pair layout) into f32 accumulators, twice the work per instruction of an
// f32 FMA. 14 x 32 register tile as in the f32 kernels, same epilogue.
#include "gemm_avx512_tile.h"

namespace peft {
namespace gemm_detail {
namespace {

template <int M, int NV>
struct KernDp {
  static void run(const Tile& t) {
    prefetch_c<M>(t);
    __m512 c[M][NV];
#pragma GCC unroll 32
    for (int i = 0; i < M; i++)
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) c[i][v] = _mm512_setzero_ps();
    const uint32_t* a = static_cast<const uint32_t*>(t.a);  // (A[i][2q], A[i][2q+1]) per row
    const uint16_t* b = static_cast<const uint16_t*>(t.b);
    const char* pf = t.pf;
    for (int64_t k = 0; k < t.kc; k += 2, a += M, b += 2 * kZmmNr) {
      prefetch_step(pf, 2 * t.pf_step);
      __m512i bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) bv[v] = _mm512_load_si512(b + 32 * v);
#pragma GCC unroll 32
      for (int i = 0; i < M; i++) {
        __m512i av = _mm512_set1_epi32(static_cast<int>(a[i]));
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) c[i][v] = _mm512_dpbf16_ps(c[i][v], (__m512bh)av, (__m512bh)bv[v]);
      }
    }
    finish(c, t);
  }
};

constexpr int kMr = 14;
constexpr KernelSet kDp = with_pack_b(make_set<KernDp>(std::make_integer_sequence<int, kMr>{},
                                           {"avx512-bf16", kMr, kZmmNr, BLayout::BF16Pairs, ALayout::BF16Pairs, false,
                                            kZmmNr * 2, 32, {}, nullptr, nullptr, &pack_a_group_avx512, nullptr, false}));

}  // namespace

const KernelSet* avx512_bf16_kernels() { return &kDp; }

}  // namespace gemm_detail
}  // namespace peft
