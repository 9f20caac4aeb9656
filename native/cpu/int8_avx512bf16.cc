// AVX-512 VNNI int8 kernel: 12 rows x 32 columns (24 zmm accumulators). vpdpbusd multiplies u8 by s8, so
// x is packed as x_q + 128 (u8), its 12 rows quad-interleaved (one stream), and broadcast 4 bytes per row; CB stays signed in the panel layout. The
// sums carry 128·Σ_k CB[n][k] extra, which the epilogue subtracts (wrapping int32 arithmetic: the result
// is exact whenever the true sum fits in int32).
#include <immintrin.h>

#include "int8_epilogue.h"
#include "isa.h"

namespace peft {
namespace int8_detail {
namespace {

constexpr int kMr = 12, kNr = 32;

template <int M>
void kernel_rows(const Tile& t) {
  __m512i acc[M][2];
#pragma GCC unroll 12
  for (int i = 0; i < M; i++) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
  const int8_t* b0p = t.b;
  const int8_t* b1p = t.b + t.Kp * kPanel;
  const uint8_t* a = t.a;
  const int64_t quads = t.Kp / 4;
  for (int64_t q = 0; q < quads; q++) {
    __m512i b0 = _mm512_load_si512(b0p + q * 64);
    __m512i b1 = _mm512_load_si512(b1p + q * 64);
#pragma GCC unroll 12
    for (int i = 0; i < M; i++) {
      int32_t av;
      __builtin_memcpy(&av, a + (q * kMr + i) * 4, 4);
      __m512i ab = _mm512_set1_epi32(av);
      acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], ab, b0);
      acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], ab, b1);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < M; i++) {
    _mm512_store_si512(t.acc + i * kNr, acc[i][0]);
    _mm512_store_si512(t.acc + i * kNr + 16, acc[i][1]);
  }
}

void vnni_kernel(const Tile& t) {
  switch (t.m) {
    case 1: return kernel_rows<1>(t);
    case 2: return kernel_rows<2>(t);
    case 3: return kernel_rows<3>(t);
    case 4: return kernel_rows<4>(t);
    case 5: return kernel_rows<5>(t);
    case 6: return kernel_rows<6>(t);
    case 7: return kernel_rows<7>(t);
    case 8: return kernel_rows<8>(t);
    case 9: return kernel_rows<9>(t);
    case 10: return kernel_rows<10>(t);
    case 11: return kernel_rows<11>(t);
    default: return kernel_rows<12>(t);
  }
}

constexpr KernelSet kVnni{"avx512-vnni", kMr, kNr, true, true, nullptr, nullptr, &run_block<kMr, kNr, vnni_kernel>};

}  // namespace

const KernelSet* vnni_int8_kernels() { return cpu_features().avx512_vnni ? &kVnni : nullptr; }

}  // namespace int8_detail
}  // namespace peft
