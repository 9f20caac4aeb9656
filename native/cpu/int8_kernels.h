// What the int8 driver (int8.cc) and the per-ISA int8 files share.
//
// Packed CB: panels of 16 output columns; a panel holds Kp / 4 quads of 64 bytes, quad q holding, for
// each of its 16 columns n, the 4 bytes CB[n][4q .. 4q+3] (zero past K and past N). This is the row
// layout of vpdpbusd's signed operand and of an AMX-INT8 B tile (16 quads x 64 bytes), so every path
// reads the same pack. Kp is K rounded up to 64 (one AMX tile depth); the panel count is even so a
// 32-column kernel may always read a pair.
// Packed x: row-major int8 (or, for vpdpbusd, the same values + 128 as u8), row stride Kp, zero past K,
// rows padded with zeros past the last whole group. Sets with `a_quads` then take each group of mr rows
// quad-interleaved (quad q of row i at (q * mr + i) * 4), so a kernel reads its A operand as one stream.
#pragma once
#include <cstdint>

#include "../core/dtype.h"

namespace peft {
namespace int8_detail {

constexpr int kPanel = 16;  // columns per packed panel
constexpr int kKAlign = 64;

struct Tile {
  const uint8_t* a = nullptr;  // first row of the group (its interleaved block with a_quads)
  int64_t lda = 0;             // row stride of the row-major layout (>= Kp)
  const int8_t* b = nullptr;   // first panel (the next one follows at Kp * 16 bytes)
  int64_t Kp = 0;
  int m = 0;                   // valid rows (1..mr)
  int32_t* acc = nullptr;      // mr x nr int32, row stride nr: the raw sums Σ_k a·b over the group
};

using KernelFn = void (*)(const Tile& t);

// The per-call constants the epilogue (int8_epilogue.h) reads; column arrays are padded to whole blocks.
// Columns per panel of a rank term's packed bt (every kernel set's nr is a multiple of it).
constexpr int kRankPanel = 16;

// y[i][j] += Σ_r u[i][r] · bt[r][j]: u (M, r) f32, bt in panels of kRankPanel columns ([N / kRankPanel][r]
// [kRankPanel], zero past N); the sum in f32. Unused while u is null.
struct RankTerm {
  const float* u = nullptr;
  const float* bt = nullptr;
  int64_t r = 0;
};

struct Finish {
  const int32_t* corr = nullptr;  // 128 · Σ_k CB[n][k] per column when x is stored with the u8 offset
  const float* scx = nullptr;     // per row of x
  const float* scb = nullptr;     // per column
  const float* bias = nullptr;    // per column, f32, or null
  void* y = nullptr;
  DType y_dt = DType::F32;
  int64_t ldy = 0;
  int32_t* raw = nullptr;  // test hook: the corrected int32 products instead of y
  // Rank terms added in the epilogue, each without a pass over y of its own: the outlier columns (bitsandbytes
  // adds them to the int8 part already rounded to y's dtype) and a fused LoRA term (added in f32).
  RankTerm outliers, lora;
};

// One block: the kernel over a group of rows and nr columns, then the epilogue for rows [i0, i0 + t.m)
// and the n valid columns from j0.
using BlockFn = void (*)(const Tile& t, const Finish& f, int64_t i0, int64_t j0, int n);

struct KernelSet {
  const char* name;
  int mr, nr;         // nr is 16 or 32 (one or two panels)
  bool a_offset;      // x is stored + 128 as u8 (vpdpbusd); the epilogue subtracts 128·colsum(CB)
  bool a_quads;       // the kernel reads x's groups quad-interleaved
  void (*thread_begin)();
  void (*thread_end)();
  BlockFn block;
};

const KernelSet* scalar_int8_kernels();
const KernelSet* avx2_int8_kernels();
const KernelSet* vnni_int8_kernels();  // null when the CPU lacks AVX-512 VNNI
const KernelSet* vnni16_int8_kernels();  // 16 x 16 blocks for 13..16 rows; null without AVX-512 VNNI
const KernelSet* amx_int8_kernels();

// Quantises one row of n values (f32/f16/bf16, rounded to f16 first as bitsandbytes does) into dst:
// absmax over the values not skipped (skip: |v| >= threshold when threshold > 0), q = rint(v·127/absmax),
// q = 0 where skipped, + offset (0 or 128) stored as a byte. Where `seen` is given, seen[k] is set to 1 for
// each skipped (outlier) element, so the outlier columns come out of the same pass over x. Returns the
// absmax (NaN when a kept value is NaN; 0 for an empty/zero row, which quantises to 0).
using QuantRowFn = float (*)(const void* src, DType dt, int64_t n, float threshold, int offset, uint8_t* dst, uint8_t* seen);
float quant_row_scalar(const void* src, DType dt, int64_t n, float threshold, int offset, uint8_t* dst, uint8_t* seen);
float quant_row_avx512(const void* src, DType dt, int64_t n, float threshold, int offset, uint8_t* dst, uint8_t* seen);
// u (rows, R) = scale · x·aᵀ for rows of x (row stride K, f32) and a (R, K) f32 given in chunks of kDownK
// columns ([ceil(K / kDownK)][R][kDownK], zero past K: pack_down): each sum in f32 (order unspecified), then
// times scale (rounded twice, as a product followed by a scaling). A chunk's R rows lie together: rows of a
// plain (R, K) a at K = 4096 lie 16 KiB apart, all on one L1 set with the rows of x.
constexpr int64_t kDownK = 512;
using DownRowsFn = void (*)(const float* x, int64_t rows, int64_t K, const float* a, int64_t R, float scale, float* u);
void down_rows_avx512(const float* x, int64_t rows, int64_t K, const float* a, int64_t R, float scale, float* u);
// Null where the active path has none (the driver then runs the f32 GEMM before quantising x).
DownRowsFn down_rows_kernel();
// The row quantiser of the active ISA path.
QuantRowFn quant_row_kernel();

}  // namespace int8_detail
}  // namespace peft
