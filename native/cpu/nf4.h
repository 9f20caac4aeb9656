// bitsandbytes' 4-bit weights (NF4 and FP4, Linear4bit / QLoRA) on the CPU. A weight of n values is cut
// into blocks of `blocksize` consecutive values in row-major order (a block may span rows); each block keeps
// its absmax (f32) and each value a 4-bit code, two codes a byte, the first value in the high nibble.
// A value is code_table[code] · absmax, computed in f32, as bitsandbytes' dequantize_4bit computes it.
#pragma once
#include <cstdint>
#include <memory>

#include "../core/dtype.h"
#include "../core/storage.h"

namespace peft {

enum class Quant4 : int { NF4 = 0, FP4 = 1 };

// The 16 values of each code, as bitsandbytes' get_4bit_type gives them (FP4's divided by 12 in f32).
const float* quant4_table(Quant4 t);

// Quantises n values of w (f32/f16/bf16) as bitsandbytes' kQuantizeBlockwise does: absmax = the block's
// max |w| (f32), each value multiplied by the f32 reciprocal 1/absmax and mapped to its code by the kernel's
// comparison tree (dQuantizeNF4 / dQuantizeFP4). packed gets (n + 1) / 2 bytes (a trailing low nibble 0),
// absmax ceil(n / blocksize) values. Returns -1, or the index of the first value that is NaN or infinite
// (nothing is written then).
int64_t quant4_quantize(const void* w, DType dt, int64_t n, int64_t blocksize, Quant4 type, uint8_t* packed, float* absmax);

// The 4-bit weight as the kernels see it: W (N, K) row-major, absmax already f32 (nested statistics
// dequantised by the caller). Each value is code·absmax in f32, rounded to `wdt` (the dtype bitsandbytes
// dequantises into: the weight's dtype when it was quantised) and then to `cdt` (the compute dtype).
struct Quant4Weight {
  const uint8_t* packed = nullptr;
  const float* absmax = nullptr;
  int64_t N = 0, K = 0, blocksize = 64;
  Quant4 type = Quant4::NF4;
  DType wdt = DType::F32, cdt = DType::F32;
  // The packed codes' storage: the forward's panel form of the codes is cached on it per version.
  Storage* cache = nullptr;
  // The absmax's storage: the cached panel form holds its scales, so it is valid for this storage at this
  // version only (the form keeps the storage alive, so its address is not reused meanwhile).
  std::shared_ptr<Storage> absmax_storage;
};

// out[i] (N·K values, in out_dt) = the dequantised W, row-major.
void quant4_dequantize(const Quant4Weight& w, void* out, DType out_dt);

// y (M, N) in y_dt = x (M, K) · Wᵀ + bias; W unpacked into the GEMM's f32 panels block by block.
void quant4_linear_cpu(const void* x, DType x_dt, int64_t M, const Quant4Weight& w, const void* bias, DType bias_dt,
                       void* y, DType y_dt);
// dx (M, K) in dx_dt = dy (M, N) · W, the same unpacking feeding the GEMM's B panels.
void quant4_linear_grad_input_cpu(const void* dy, DType dy_dt, int64_t M, const Quant4Weight& w, void* dx, DType dx_dt);

// For benches: the panel form of the codes cached on `s`, or {nullptr, 0}, so it can be evicted.
struct Quant4PackRegion {
  const void* p = nullptr;
  size_t bytes = 0;
};
Quant4PackRegion quant4_cached_pack(Storage* s);

namespace quant4_detail {

// The forward's cached panel form of the codes (32 columns of Wᵀ a panel): per panel, k-step k holds 16
// bytes, byte j = code(n0 + j, k) | code(n0 + 16 + j, k) << 4; and per chunk of g = gcd(K, blocksize)
// k-steps (a chunk never spans two blocks of a row) 32 f32 scales, the absmax of each column's block.
struct PanelCodes {
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  int64_t N = 0, K = 0, g = 0, panels = 0;
};
constexpr int kPanel = 32;

// AVX-512 unpackers (nf4_avx512.cc): the forward's from PanelCodes (nr = 32), the backward's from the row-major
// codes (nr = 32, K % 32 == 0); AVX2 (nf4_avx2.cc): the forward's from PanelCodes, 16 columns (half a panel) at a
// time. Values rounded to wdt then cdt.
void unpack_panel_avx2(const PanelCodes& pc, const float* table, DType wdt, DType cdt, int64_t k0, int64_t kc, int64_t n0, float* dst);
void unpack_panel_avx512(const PanelCodes& pc, const float* table, DType wdt, DType cdt, int64_t k0, int64_t kc, int64_t n0, float* dst);
// The small-M forward (M <= kDirectRows, AVX-512): panel pn of y = x·Wᵀ for M rows, into tile (M rows of 32
// f32, row m at tile + 32·m), straight from the panel form; xt is x k-major (K steps of 16 f32, rows past M
// unused), already in f32. Values rounded to wdt then cdt as the unpackers round them.
constexpr int kDirectRows = 16;
void direct_panel_avx512(const PanelCodes& pc, const float* table, DType wdt, DType cdt, const float* xt, int64_t M, int64_t pn, float* tile);
// The same with bf16 compute on AMX (nf4_amx.cc; K % 32 == 0): xs holds x in bf16 as K / 32 A tiles of 16 rows
// x 32 (1 KiB each, contiguous, rows past M zero), tile gets 16 rows of 32. Each thread configures the tiles
// first (direct_amx_begin) and releases them after (direct_amx_end).
void direct_panel_amx(const PanelCodes& pc, const float* table, DType wdt, const uint16_t* xs, int64_t pn, float* tile);
void direct_amx_begin();
void direct_amx_end();
// The bf16 GEMM kernels' B (AVX-512 BF16: BLayout::BF16Pairs, 32 columns) from PanelCodes: k-steps [k0, k0 + kc)
// (multiples of 32, K % 32 == 0) of the panel at n0, k-pair q of the block at dst + 64·q. Values rounded to wdt
// (f16) and then to bf16.
void unpack_pairs_avx512bf16(const PanelCodes& pc, const float* table, DType wdt, int64_t k0, int64_t kc, int64_t n0, uint16_t* dst);
// The backward's B (= W, row-major codes) in the same pair layout: k-steps [k0, k0 + kc) are rows of W (rows past
// N zero), columns [n0, n0 + 32) (K % 32 == 0).
void unpack_rows_pairs_avx512bf16(const Quant4Weight& w, const float* table, int64_t k0, int64_t kc, int64_t n0, uint16_t* dst);
void unpack_rows_avx512(const Quant4Weight& w, const float* table, int64_t k0, int64_t kc, int64_t n0, float* dst);

}  // namespace quant4_detail
}  // namespace peft
