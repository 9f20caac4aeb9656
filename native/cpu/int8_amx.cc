// AMX-INT8 kernel: a 32 x 32 int32 block in four 16 x 16 tiles, fed per 64-deep k chunk by two A tiles
// (16 rows x 64 bytes of signed x_q, read in place from the packed rows) and two B tiles (16 quads x 16
// columns, read straight from the panel layout with a 64-byte row stride): tdpbssd, signed x signed, so
// no offset correction. Only used when amx_enabled().
//
// The epilogue's rank terms (outlier columns, a fused LoRA term) are summed between the tile products, where
// the vector units are otherwise idle, rather than after them. That hides only part of their cost: at
// (512, 4096, 4096) a rank-64 term added 19-20 % to the int8 time this way against 22-26 % after the tiles
// (same runs); the samples stay on the tile loads and products, so the two share more than the issue ports.
#include "amx_tiles.h"
#include "int8_epilogue.h"
#include "prefetch.h"

namespace peft {
namespace int8_detail {
namespace {

constexpr int kMr = 32, kNr = 32;

// The four tdpbssd of k chunk c (64 deep), after asking L1 for chunk c + 1 of both operands (past the end:
// the next row's and the next panel's first lines, which come next). The tile loads of a chunk stall on L2
// otherwise: prefetching took 15-20 % off (512, 4096, 4096) in interleaved runs; K blocks sized for L1,
// with the sums kept between blocks, gained nothing over it.
inline void tile_chunk(const Tile& t, const int8_t* b1, int64_t c) {
  const int64_t k = c * 64;
  for (int i = 0; i < 32; i++) prefetch_l1(t.a + i * t.lda + k + 64);
  for (int l = 0; l < 16; l++) prefetch_l1(t.b + (k + 64) * 16 + l * 64), prefetch_l1(b1 + (k + 64) * 16 + l * 64);
  _tile_loadd(4, t.a + k, t.lda);
  _tile_loadd(5, t.a + 16 * t.lda + k, t.lda);
  _tile_loadd(6, t.b + k * 16, 64);  // chunk c of a panel: 16 quads of 64 bytes
  _tile_loadd(7, b1 + k * 16, 64);
  _tile_dpbssd(0, 4, 6);
  _tile_dpbssd(1, 4, 7);
  _tile_dpbssd(2, 5, 6);
  _tile_dpbssd(3, 5, 7);
}

inline void store_tiles(int32_t* acc) {
  _tile_stored(0, acc, kNr * 4);
  _tile_stored(1, acc + 16, kNr * 4);
  _tile_stored(2, acc + 16 * kNr, kNr * 4);
  _tile_stored(3, acc + 16 * kNr + 16, kNr * 4);
}

void amx_kernel(const Tile& t) {
  amx_zero_accumulators();
  const int8_t* b1 = t.b + t.Kp * kPanel;
  for (int64_t c = 0; c < t.Kp / 64; c++) tile_chunk(t, b1, c);
  store_tiles(t.acc);
}

constexpr int kRankRows = 8;  // rows of a rank step: 8 rows x 2 panels, 16 zmm sums

// A rank term over one block: its sums for rows [i0, i0 + 8·groups) and the block's two panels, into out.
struct RankWork {
  const RankTerm* term;
  float* out;
  int groups;
};

// The block's products with the rank work interleaved: each rank step is Σ_r's next r for 8 rows and 32
// columns (16 fused multiply-adds, in order of r as rank_rows sums, so the bits are the same), and after
// each step the tile chunks due by then (Bresenham over steps) are issued.
void amx_kernel_with_rank(const Tile& t, int64_t i0, int64_t j0, const RankWork* work, int nw) {
  amx_zero_accumulators();
  const int8_t* b1 = t.b + t.Kp * kPanel;
  const int64_t chunks = t.Kp / 64;
  int64_t steps = 0;
  for (int w = 0; w < nw; w++) steps += work[w].groups * work[w].term->r;
  int64_t c = 0, err = 0;
  for (int w = 0; w < nw; w++) {
    const RankTerm& rt = *work[w].term;
    const int64_t R = rt.r;
    const float* b = rt.bt + j0 / kRankPanel * R * kRankPanel;  // the block's first panel; the second follows
    for (int g = 0; g < work[w].groups; g++) {
      const float* u = rt.u + (i0 + g * kRankRows) * R;
      __m512 s0[kRankRows], s1[kRankRows];
#pragma GCC unroll 8
      for (int i = 0; i < kRankRows; i++) s0[i] = s1[i] = _mm512_setzero_ps();
      for (int64_t r = 0; r < R; r++) {
        const __m512 p0 = _mm512_loadu_ps(b + r * kRankPanel), p1 = _mm512_loadu_ps(b + (R + r) * kRankPanel);
#pragma GCC unroll 8
        for (int i = 0; i < kRankRows; i++) {
          const __m512 ui = _mm512_set1_ps(u[i * R + r]);
          s0[i] = _mm512_fmadd_ps(ui, p0, s0[i]);
          s1[i] = _mm512_fmadd_ps(ui, p1, s1[i]);
        }
        for (err += chunks; err >= steps && c < chunks; err -= steps) tile_chunk(t, b1, c++);
      }
      float* o = work[w].out + g * kRankRows * kRankRow;
#pragma GCC unroll 8
      for (int i = 0; i < kRankRows; i++) {
        _mm512_storeu_ps(o + i * kRankRow, s0[i]);
        _mm512_storeu_ps(o + i * kRankRow + kRankPanel, s1[i]);
      }
    }
  }
  for (; c < chunks; c++) tile_chunk(t, b1, c);
  store_tiles(t.acc);
}

// The set's BlockFn: whole groups of 8 rows of a full-width block take their rank sums between the tile
// products; a block's last rows (m not a multiple of 8) and a half-width block at N's end, after.
void amx_block(const Tile& t, const Finish& f, int64_t i0, int64_t j0, int n) {
  alignas(64) int32_t acc[kMr * kNr];
  alignas(64) float outl[kMr * kRankRow], rank[kMr * kRankRow];
  Tile s = t;
  s.acc = acc;
  const bool has_outl = f.outliers.u && !f.raw, has_rank = f.lora.u && !f.raw;
  const int groups = n > kRankPanel ? t.m / kRankRows : 0, done = groups * kRankRows;
  RankWork work[2];
  int nw = 0;
  if (groups > 0 && has_outl) work[nw++] = {&f.outliers, outl, groups};
  if (groups > 0 && has_rank) work[nw++] = {&f.lora, rank, groups};
  if (nw) amx_kernel_with_rank(s, i0, j0, work, nw);
  else amx_kernel(s);
  if (done < t.m) {
    if (has_outl) rank_block(f.outliers, i0 + done, t.m - done, j0, n, outl + done * kRankRow);
    if (has_rank) rank_block(f.lora, i0 + done, t.m - done, j0, n, rank + done * kRankRow);
  }
  finish_rows(acc, kNr, f, i0, t.m, j0, n, has_outl ? outl : nullptr, has_rank ? rank : nullptr);
}

constexpr KernelSet kAmx{"amx-int8", kMr, kNr, false, false, &amx_thread_begin, &amx_thread_end, &amx_block};

}  // namespace

const KernelSet* amx_int8_kernels() { return &kAmx; }

}  // namespace int8_detail
}  // namespace peft
