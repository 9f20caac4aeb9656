// The int8 GEMM's epilogue, compiled into each ISA's kernel file (so it vectorizes with that ISA): the
// raw sums less the u8 offset correction, dequantised in bitsandbytes' order of rounding
// (int8_mm_dequant: f32(acc) * f32(SCx * SCB) * 6.200124e-05f, then + bias, then one rounding into the
// output dtype). Contraction into FMA is off here: a fused multiply-add would round differently.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../core/dtype.h"
#include "int8_kernels.h"

namespace peft {
namespace int8_detail {
// Internal linkage: each ISA's file gets its own copy compiled with its flags. As ordinary inline functions
// the linker would keep one copy for all of them (the scalar file's, SSE2 only).
namespace {

// bitsandbytes' 1/127² constant, as written in its int8_mm_dequant (rounded to f32 there too).
constexpr float kDequant = 6.200124e-05f;

// The rank term's sums for G rows and one panel of columns, Σ_r u[g][r]·bt[r][c], by explicit fused
// multiply-adds (exactly rounded on every ISA, so every path gives the same bits) in order of r. The G rows
// are independent chains GCC keeps in G registers (each FMA waits on the last of its own row only); the
// column loop is left rolled, which GCC vectorizes into one vfmadd231ps per row (unrolled it stayed scalar).
constexpr int kRankRow = 64;  // row stride of a block's rank sums (a block has at most 64 columns)
template <int G>
inline void rank_rows(const float* u, int64_t R, const float* b, float* out) {
  float lo[G][kRankPanel] = {};
  for (int64_t r = 0; r < R; r++)
    for (int g = 0; g < G; g++) {
#pragma GCC unroll 0
      for (int c = 0; c < kRankPanel; c++) lo[g][c] = __builtin_fmaf(u[g * R + r], b[r * kRankPanel + c], lo[g][c]);
    }
  for (int g = 0; g < G; g++)
    for (int c = 0; c < kRankPanel; c++) out[g * kRankRow + c] = lo[g][c];
}

// Rows [i0, i0 + m) and columns [j0, j0 + n) of a rank term into out (row stride kRankRow). Blocks start at
// multiples of nr, itself a multiple of kRankPanel, and bt's panels are zero past N: whole panels are summed.
inline void rank_block(const RankTerm& t, int64_t i0, int m, int64_t j0, int n, float* out) {
  for (int j = 0; j < n; j += kRankPanel) {
    const float* b = t.bt + (j0 + j) / kRankPanel * t.r * kRankPanel;
    int i = 0;
    for (; i + 8 <= m; i += 8) rank_rows<8>(t.u + (i0 + i) * t.r, t.r, b, out + i * kRankRow + j);
    for (; i + 4 <= m; i += 4) rank_rows<4>(t.u + (i0 + i) * t.r, t.r, b, out + i * kRankRow + j);
    for (; i < m; i++) rank_rows<1>(t.u + (i0 + i) * t.r, t.r, b, out + i * kRankRow + j);
  }
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
// One row's value in y's dtype, widened back (bitsandbytes rounds the int8 part before adding outliers).
template <DType D>
inline float through(float v) {
  if constexpr (D == DType::BF16) return bf16_to_f32(f32_to_bf16(v));
  else if constexpr (D == DType::F16) return f16_to_f32(f32_to_f16(v));
  else return v;
}

// NC: the column count when known at compile time (a full block: the loops unroll into whole vectors), else 0.
template <DType D, int NC = 0>
inline void finish_row(const int32_t* acc, const Finish& f, int64_t i, int64_t j0, int n_, const float* outl, const float* rank) {
  const int n = NC ? NC : n_;
  const float sx = f.scx[i];
  const int32_t* corr = f.corr ? f.corr + j0 : nullptr;
  const float* scb = f.scb + j0;
  const float* bias = f.bias ? f.bias + j0 : nullptr;
  if (f.raw) {
    int32_t* r = f.raw + i * f.ldy + j0;
    for (int j = 0; j < n; j++) r[j] = static_cast<int32_t>(static_cast<uint32_t>(acc[j]) - static_cast<uint32_t>(corr ? corr[j] : 0));
    return;
  }
  float out[64];
  for (int j = 0; j < n; j++) {
    int32_t v = static_cast<int32_t>(static_cast<uint32_t>(acc[j]) - static_cast<uint32_t>(corr ? corr[j] : 0));
    float s = sx * scb[j];
    out[j] = static_cast<float>(v) * s * kDequant;
  }
  if (bias)
    for (int j = 0; j < n; j++) out[j] += bias[j];
  if (outl)
    for (int j = 0; j < n; j++) out[j] = through<D>(out[j]) + outl[j];
  if (rank)
    for (int j = 0; j < n; j++) out[j] += rank[j];
  if constexpr (D == DType::F32) {
    float* y = static_cast<float*>(f.y) + i * f.ldy + j0;
    for (int j = 0; j < n; j++) y[j] = out[j];
  } else {
    uint16_t* y = static_cast<uint16_t*>(f.y) + i * f.ldy + j0;
    for (int j = 0; j < n; j++) y[j] = D == DType::BF16 ? f32_to_bf16(out[j]) : f32_to_f16(out[j]);
  }
}
#pragma GCC pop_options

// A full block's row (16 or 32 columns) with its width fixed at compile time: 0.93x the time of a
// (2048, 1024, 1024) int8 product on AMX, where the epilogue had taken 60 % as long as the tile products.
template <DType D>
inline void finish_row_n(const int32_t* acc, const Finish& f, int64_t i, int64_t j0, int n, const float* outl, const float* rank) {
  if (n == 32) finish_row<D, 32>(acc, f, i, j0, n, outl, rank);
  else if (n == 16) finish_row<D, 16>(acc, f, i, j0, n, outl, rank);
  else finish_row<D>(acc, f, i, j0, n, outl, rank);
}

// Rows [i0, i0 + m) and columns [j0, j0 + n) (n <= 64) from acc (row stride ld), with the rank terms' sums
// for them already in outl and rank (row stride kRankRow; null for a term that is absent).
constexpr int kMaxBlockRows = 32;  // the largest mr of any kernel set
inline void finish_rows(const int32_t* acc, int ld, const Finish& f, int64_t i0, int m, int64_t j0, int n, const float* outl,
                        const float* rank) {
  const bool has_outl = outl && !f.raw, has_rank = rank && !f.raw;
  for (int i = 0; i < m; i++) {
    const int32_t* a = acc + i * ld;
    const float* ol = has_outl ? outl + i * kRankRow : nullptr;
    const float* rk = has_rank ? rank + i * kRankRow : nullptr;
    switch (f.y_dt) {
      case DType::BF16: finish_row_n<DType::BF16>(a, f, i0 + i, j0, n, ol, rk); break;
      case DType::F16: finish_row_n<DType::F16>(a, f, i0 + i, j0, n, ol, rk); break;
      default: finish_row_n<DType::F32>(a, f, i0 + i, j0, n, ol, rk); break;
    }
  }
}

// As finish_rows, the rank terms summed here first.
inline void finish_block(const int32_t* acc, int ld, const Finish& f, int64_t i0, int m, int64_t j0, int n) {
  alignas(64) float outl[kMaxBlockRows * kRankRow], rank[kMaxBlockRows * kRankRow];
  const bool has_outl = f.outliers.u && !f.raw, has_rank = f.lora.u && !f.raw;
  if (has_outl) rank_block(f.outliers, i0, m, j0, n, outl);
  if (has_rank) rank_block(f.lora, i0, m, j0, n, rank);
  finish_rows(acc, ld, f, i0, m, j0, n, has_outl ? outl : nullptr, has_rank ? rank : nullptr);
}

// A kernel set's BlockFn: kernel K into an mr x nr stack block, then the epilogue.
template <int MR, int NR, KernelFn K>
void run_block(const Tile& t, const Finish& f, int64_t i0, int64_t j0, int n) {
  static_assert(NR % kRankPanel == 0 && NR <= kRankRow, "blocks start on a rank-term panel and fit its rows (rank_block)");
  static_assert(MR <= kMaxBlockRows, "a block's rows fit finish_block's rank sums");
  alignas(64) int32_t acc[MR * NR];
  Tile s = t;
  s.acc = acc;
  K(s);
  finish_block(acc, NR, f, i0, t.m, j0, n);
}

}  // namespace
}  // namespace int8_detail
}  // namespace peft
