// What the GEMM driver (gemm.cc) and the per-ISA micro-kernel files share: packed layouts, the
// per-tile call, and the kernel sets each ISA file exports.
//
// Packed layouts (BLIS style):
//  - B (K x N) is cut into panels of `nr` columns; a panel holds its Kp rows one after another, each
//    row `nr` elements (zero beyond N). Panel j starts at j * Kp * nr elements, k-step k of it at
//    k * nr. In the "pairs" layout two k-rows are interleaved per 32-bit lane, (B[2q][n], B[2q+1][n]),
//    which is what vdpbf16ps and AMX tiles read; it is still k * nr elements from the panel start.
//    A row-major f32 B may also be read in place: k-step k of panel j at k * ldb + j * nr.
//  - A (M x K) is cut into groups of up to `mr` rows, stored one after another; a group of m rows
//    (padded to mr when the set asks) stores k-step k at k * m elements from its start. The layouts of
//    one set say how a k-step's m values are ordered.
//  - Kp is K rounded up to the layout's k alignment; the padding is zeros in both operands.
#pragma once
#include <cstddef>
#include <cstdint>

#include "gemm.h"
#include "prefetch.h"

namespace peft {
namespace gemm_detail {

// How B is stored once packed.
enum class BLayout : int { F32 = 0, F16 = 1, BF16 = 2, BF16Pairs = 3 };
// How a group of A rows is stored once packed.
enum class ALayout : int {
  F32 = 0,        // k-major: at each k, the m rows' values
  BF16Pairs = 1,  // k-pair major: at each pair q, for each row, (A[i][2q], A[i][2q+1]) in 32 bits
  BF16Rows32 = 2  // AMX: per chunk of 32 k, the rows one after another, 32 values each (row stride 64 B)
};

size_t blayout_size(BLayout l);
size_t alayout_size(ALayout l);
int blayout_kalign(BLayout l);

enum TileFlags : unsigned { kFirst = 1, kLast = 2, kAccumulate = 4 };

// One micro-kernel call: an m x n block of C over `kc` packed k-steps, plus (last K block only)
// `kr` extra k-steps from A2/B2 (f32; A2 laid out like an F32 group with row stride a2_stride, B2 like
// an F32 panel of the set's nr columns).
//
// Result for each element: base + s·(alpha*acc (+ extra + bias when kLast)), s = col_scale or 1, where base is the
// f32 partial p (not kFirst), or C read in c_dt (kFirst with kAccumulate), or 0. It is stored to C
// rounded to c_dt when kLast, else to p as f32. p may alias C when C is f32.
struct Tile {
  int64_t kc = 0;
  const void* a = nullptr;
  const void* b = nullptr;
  int64_t ldb = 0;  // elements from one k-step of B to the next: nr when packed, the row stride when direct
  int64_t kr = 0;
  const float* a2 = nullptr;
  int64_t a2_stride = 0;
  const float* b2 = nullptr;  // laid out like a B panel of the set's nr columns
  void* c = nullptr;
  int64_t ldc = 0;
  DType c_dt = DType::F32;
  float* p = nullptr;
  int64_t ldp = 0;
  const float* bias = nullptr;  // f32, this tile's first column
  float alpha = 1.0f;
  // f32, this tile's first column: every block's product (and, last, the extra k-steps and bias) is
  // multiplied by it before the base is added (a per-column alpha).
  const float* col_scale = nullptr;
  int m = 0, n = 0;  // valid rows and columns
  unsigned flags = 0;
  // The kernel prefetches towards L2 along pf, pf_step bytes per k-step (the lines at pf and pf + 64):
  // its share of the next B block the thread will read, spread over the k loop (a burst of prefetches
  // stalls on the miss queue).
  const char* pf = nullptr;
  int64_t pf_step = 0;
  float* widen_to = nullptr;  // widen_kernel only: where the widened f32 panel goes
};

using KernelFn = void (*)(const Tile& t);
using PackAFn = void (*)(ALayout l, const GemmMat& a, int64_t i0, int m, int ms, int64_t K, int64_t Kp, void* dst);
using PackBFn = void (*)(BLayout l, int nr, const GemmMat& b, int64_t K, int64_t N, int64_t Kp, int64_t p0, int64_t p1, void* dst);

constexpr int kMaxMr = 32;

struct KernelSet {
  const char* name;
  int mr, nr;
  BLayout b;
  ALayout a;
  bool pad_groups;          // partial row groups are zero-padded to mr (tile hardware wants full rows)
  int kc_bytes_per_k;       // bytes of one B panel k-step as the kernels read it (sizes KC to the caches)
  int kc_align;             // KC blocks are multiples of this
  // kernel[m-1][w]: m rows (1..mr); w = 0 for n <= nr/2 (half-width variant), 1 for the full panel.
  KernelFn kernel[kMaxMr][2];
  // Optional per-thread setup/teardown around a GEMM (AMX tile configuration).
  void (*thread_begin)();
  void (*thread_end)();
  // A packer for this set's layout (same contract as pack_a_group); null: pack_a_group.
  PackAFn pack_a;
  // For 16-bit weights on an f32 kernel: widens kc k-steps of one packed B micro-panel into an f32
  // panel (kc x nr) that the kernels then read. The driver does it once per panel and K block, so its
  // cost is shared by every row group. Null: the kernels read the packed panel as it is.
  void (*widen_b)(const void* src, int64_t kc, float* dst);
  // The kernels can read an f32 B in place (rows of nr values at any stride, Tile::ldb), so a B that is
  // already row-major f32 need not be packed per call.
  bool direct_b;
  // With widen_b: kernels for a first row group of up to widen_rows rows that read the packed 16-bit
  // panel, widen it in registers and store the f32 panel (Tile::widen_to) for the groups after them,
  // in place of the widening pass when few groups share a block.
  KernelFn widen_kernel[8][2];
  int widen_rows;
  // A B packer for this set's layout (same contract as pack_b_panels); null: pack_b_panels.
  PackBFn pack_b;
};

// The kernel sets each ISA file exports, by the dtype of B where it matters.
const KernelSet* avx512_f32_kernels(DType b_dt);  // A widened to f32, B f32/f16/bf16-pairs
const KernelSet* avx512_bf16_kernels();            // A and B bf16 pairs, vdpbf16ps
const KernelSet* amx_bf16_kernels();               // A and B bf16, AMX tiles
const KernelSet* avx2_f32_kernels(DType b_dt);     // A widened to f32, B f32/f16/bf16
const KernelSet* scalar_f32_kernels();              // everything widened to f32

// Packers (gemm_pack.cc). Rows/columns past the source's extent and k-steps past K are zeros.
// One A group: rows [i0, i0+m) of `a`, k-steps [0, Kp), stored with row stride `ms` (>= m).
void pack_a_group(ALayout l, const GemmMat& a, int64_t i0, int m, int ms, int64_t K, int64_t Kp, void* dst);
// The same with AVX-512 transposes when rows are contiguous in k (falls back to pack_a_group otherwise).
void pack_a_group_avx512(ALayout l, const GemmMat& a, int64_t i0, int m, int ms, int64_t K, int64_t Kp, void* dst);
// B panels [p0, p1) of width nr, each Kp k-steps, into dst (panel p at (p - p0) * Kp * nr elements).
void pack_b_panels(BLayout l, int nr, const GemmMat& b, int64_t K, int64_t N, int64_t Kp, int64_t p0, int64_t p1, void* dst);
// The same with AVX-512 transposes when columns are contiguous in k (falls back otherwise).
void pack_b_panels_avx512(BLayout l, int nr, const GemmMat& b, int64_t K, int64_t N, int64_t Kp, int64_t p0, int64_t p1, void* dst);

// The scalar tail every set may fall back on: applies Tile's result rule to an m x n block of f32
// accumulators (row stride ld) held in memory; nr is the set's panel width (B2's row length).
void finish_tile_scalar(const float* acc, int64_t ld, const Tile& t, int nr);

}  // namespace gemm_detail
}  // namespace peft
