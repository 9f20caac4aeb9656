// AVX2 int8 kernel: 4 rows x 16 columns. vpmaddubsw multiplies u8 by s8 and saturates pairs at 16 bits,
// so x is made the unsigned operand as |x| with its sign moved onto CB (vpsignb): |x|, |CB| <= 127 keeps
// each pair sum within 2·127² < 2^15, exact; vpmaddwd then sums pairs into int32 quad sums.
#include <immintrin.h>

#include "int8_epilogue.h"

namespace peft {
namespace int8_detail {
namespace {

constexpr int kMr = 4, kNr = 16;

template <int M>
void kernel_rows(const Tile& t) {
  __m256i acc[M][2];
  for (int i = 0; i < M; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t quads = t.Kp / 4;
  for (int64_t q = 0; q < quads; q++) {
    // One quad of the 16-column panel: columns 0-7 then 8-15, 4 bytes each.
    __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.b + q * 64));
    __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.b + q * 64 + 32));
#pragma GCC unroll 4
    for (int i = 0; i < M; i++) {
      int32_t av;
      __builtin_memcpy(&av, t.a + i * t.lda + q * 4, 4);
      __m256i a = _mm256_set1_epi32(av);
      __m256i ua = _mm256_abs_epi8(a);
      acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(ua, _mm256_sign_epi8(b0, a)), ones));
      acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(ua, _mm256_sign_epi8(b1, a)), ones));
    }
  }
  for (int i = 0; i < M; i++) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(t.acc + i * kNr), acc[i][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t.acc + i * kNr + 8), acc[i][1]);
  }
}

void avx2_kernel(const Tile& t) {
  switch (t.m) {
    case 1: return kernel_rows<1>(t);
    case 2: return kernel_rows<2>(t);
    case 3: return kernel_rows<3>(t);
    default: return kernel_rows<4>(t);
  }
}

constexpr KernelSet kAvx2{"avx2", kMr, kNr, false, false, nullptr, nullptr, &run_block<kMr, kNr, avx2_kernel>};

}  // namespace

const KernelSet* avx2_int8_kernels() { return &kAvx2; }

}  // namespace int8_detail
}  // namespace peft
