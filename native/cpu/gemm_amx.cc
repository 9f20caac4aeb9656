// AMX-BF16 micro-kernel for bf16 x with bf16 weights: a 32 x 32 output block in four 16 x 16 f32 tiles,
// fed per 32-deep k chunk by two A tiles (16 rows x 32 bf16, from the Rows32 A layout) and two B tiles
// (16 k-pairs x 16 columns, read straight from the k-pair panel layout with a 128-byte row stride).
// The accumulators leave the tiles once, through a stack block, into the shared AVX-512 epilogue, which
// also applies the fused extra k-steps before C is written. Only used when amx_enabled().
//
// Where the time goes (Sapphire Rapids, (512, 4096, 4096)): the samples sat on the tile loads, the A and B
// tiles coming from L2, not on the products or the epilogue (< 1 %). Each k chunk therefore first asks L1
// for the next chunk of both operands (past the end: the next group's A and the next panel, contiguous in
// the packed layouts): 0.73-0.78x the time at that shape, 0.92x at (2048, 1024, 1024), 0.76-0.78x at
// M = 64, in interleaved runs. A blocking that kept both operands in L1 lost to it (0.92-0.95x against
// 0.77x): K blocks of 128-288, columns in L2-sized chunks with every K block inside, the partials held in
// the accumulator tiles' layout between blocks, A packed block-major. The machine's two vCPUs share one
// tile unit (two processes each get half the one-thread tile-only peak), and likely its L1.
#include "amx_tiles.h"
#include "gemm_avx512_tile.h"

namespace peft {
namespace gemm_detail {
namespace {

constexpr int kMr = 32;

void amx_kernel(const Tile& t) {
  amx_zero_accumulators();
  const uint16_t* a = static_cast<const uint16_t*>(t.a);
  const uint16_t* b = static_cast<const uint16_t*>(t.b);
  // k-step k of the A group is at k * 32 elements (chunk k/32 of 32 rows x 32); of the B panel, also
  // at k * 32 elements (k/2 pair rows of 64 bf16).
  for (int64_t k = 0; k < t.kc; k += 32) {
    const uint16_t* ac = a + k * kMr;
    const uint16_t* bc = b + k * kZmmNr;
    for (int l = 0; l < 32; l++) prefetch_l1(reinterpret_cast<const char*>(ac) + 2048 + l * 64);
    for (int l = 0; l < 32; l++) prefetch_l1(reinterpret_cast<const char*>(bc) + 2048 + l * 64);
    _tile_loadd(4, ac, 64);
    _tile_loadd(5, ac + 16 * 32, 64);
    _tile_loadd(6, bc, 128);
    _tile_loadd(7, bc + 32, 128);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float acc[kMr][kZmmNr];
  _tile_stored(0, &acc[0][0], 128);
  _tile_stored(1, &acc[0][16], 128);
  _tile_stored(2, &acc[16][0], 128);
  _tile_stored(3, &acc[16][16], 128);
  // Epilogue in 8-row slices (16 zmm each).
  const size_t csz = t.c_dt == DType::F32 ? 4 : 2;
  for (int r0 = 0; r0 < t.m; r0 += 8) {
    __m512 c[8][2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) c[i][0] = _mm512_load_ps(&acc[r0 + i][0]), c[i][1] = _mm512_load_ps(&acc[r0 + i][16]);
    Tile s = t;
    s.m = t.m - r0 < 8 ? t.m - r0 : 8;
    s.c = static_cast<char*>(t.c) + r0 * t.ldc * csz;
    if (t.p) s.p = t.p + r0 * t.ldp;
    if (t.a2) s.a2 = t.a2 + r0;
    finish(c, s);
  }
}

constexpr KernelSet kAmx = [] {
  KernelSet s{"amx-bf16", kMr, kZmmNr, BLayout::BF16Pairs, ALayout::BF16Rows32, true, kZmmNr * 2, 32, {}, &amx_thread_begin, &amx_thread_end, &pack_a_group_avx512, nullptr, false};
  for (int i = 0; i < kMr; i++) s.kernel[i][0] = s.kernel[i][1] = &amx_kernel;
  return with_pack_b(s);
}();

}  // namespace

const KernelSet* amx_bf16_kernels() { return &kAmx; }

}  // namespace gemm_detail
}  // namespace peft
