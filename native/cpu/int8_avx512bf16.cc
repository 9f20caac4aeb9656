// AVX-512 VNNI int8 kernels: 12 rows x 32 columns (24 zmm accumulators), and 16 x 16 for decode steps.
// vpdpbusd multiplies u8 by s8, so x is packed as x_q + 128 (u8), a group's rows quad-interleaved (one
// stream), and broadcast 4 bytes per row; CB stays signed in the panel layout. The
// sums carry 128·Σ_k CB[n][k] extra, which the epilogue subtracts (wrapping int32 arithmetic: the result
// is exact whenever the true sum fits in int32).
#include <immintrin.h>

#include <algorithm>
#include <utility>

#include "int8_epilogue.h"
#include "isa.h"

namespace peft {
namespace int8_detail {
namespace {

// Bytes of CB prefetched ahead of the quad being read. A decode step (few rows) is bound by streaming CB from
// DRAM while a line's sums take a few cycles; with the hardware streamer alone the core waited on about half
// of the lines (perf: the samples at the panel loads). Blocks lie back to back in the pack, so the prefetch
// past a panel's end is the next block's. Of 1-16 KiB, 4-8 KiB ran
// fastest (1 KiB clearly slower).
constexpr int kPrefetchAhead = 4096;

// MR rows of a group (quad-interleaved with stride GR, the set's mr) times NP panels of 16 columns.
template <int GR, int NP, int MR>
void kernel_rows(const Tile& t) {
  __m512i acc[MR][NP];
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
    for (int p = 0; p < NP; p++) acc[i][p] = _mm512_setzero_si512();
  const int8_t* bp[NP];
  for (int p = 0; p < NP; p++) bp[p] = t.b + p * t.Kp * kPanel;
  const uint8_t* a = t.a;
  const int64_t quads = t.Kp / 4;
  for (int64_t q = 0; q < quads; q++) {
    __m512i b[NP];
    for (int p = 0; p < NP; p++) {
      _mm_prefetch(reinterpret_cast<const char*>(bp[p] + q * 64 + kPrefetchAhead), _MM_HINT_T0);
      b[p] = _mm512_load_si512(bp[p] + q * 64);
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
      int32_t av;
      __builtin_memcpy(&av, a + (q * GR + i) * 4, 4);
      __m512i ab = _mm512_set1_epi32(av);
      for (int p = 0; p < NP; p++) acc[i][p] = _mm512_dpbusd_epi32(acc[i][p], ab, b[p]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
    for (int p = 0; p < NP; p++) _mm512_store_si512(t.acc + i * NP * kPanel + p * kPanel, acc[i][p]);
}

// The kernel for t.m rows (1..GR) of a group.
template <int GR, int NP, int... Ms>
void kernel_for(const Tile& t, std::integer_sequence<int, Ms...>) {
  using Fn = void (*)(const Tile&);
  static constexpr Fn fns[] = {&kernel_rows<GR, NP, Ms + 1>...};
  fns[std::min(std::max(t.m, 1), GR) - 1](t);
}

// 12 rows x 32 columns (24 zmm accumulators, two loads of CB per 24 vpdpbusd): the general set.
constexpr int kMr = 12, kNr = 32;
void vnni_kernel(const Tile& t) { kernel_for<kMr, 2>(t, std::make_integer_sequence<int, kMr>{}); }

// 16 rows x 16 columns (16 accumulators): a decode step of 13..16 rows in one group, so CB is streamed once
// (12 x 32 would take two groups and read every block twice, the second time with DRAM idle).
constexpr int kMr16 = 16, kNr16 = 16;
void vnni16_kernel(const Tile& t) { kernel_for<kMr16, 1>(t, std::make_integer_sequence<int, kMr16>{}); }

constexpr KernelSet kVnni{"avx512-vnni", kMr, kNr, true, true, nullptr, nullptr, &run_block<kMr, kNr, vnni_kernel>};
constexpr KernelSet kVnni16{"avx512-vnni", kMr16, kNr16, true, true, nullptr, nullptr, &run_block<kMr16, kNr16, vnni16_kernel>};

}  // namespace

const KernelSet* vnni_int8_kernels() { return cpu_features().avx512_vnni ? &kVnni : nullptr; }
const KernelSet* vnni16_int8_kernels() { return cpu_features().avx512_vnni ? &kVnni16 : nullptr; }

}  // namespace int8_detail
}  // namespace peft
