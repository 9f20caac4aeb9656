// The 4-bit forward at small M with bf16 compute on AMX: y = x·Wᵀ as tiles, x (bf16, at most 16 rows) the A
// tile and each 32-step of Wᵀ dequantised from the panel form straight into the two B tiles of a pair-layout
// block (nf4_avx512bf16.cc), so no f32 panel exists and the block stays in L1. bitsandbytes multiplies bf16 x
// by the bf16-dequantised W with f32 sums: the tile products are those.
#include <immintrin.h>

#include "amx_tiles.h"
#include "nf4.h"

namespace peft {
namespace quant4_detail {

void direct_panel_amx(const PanelCodes& pc, const float* table, DType wdt, const uint16_t* xs, int64_t pn, float* tile) {
  // Two blocks of 16 k-pair rows x 32 columns x 2 (columns 0-15 the first 64 bytes of a row, the first B tile),
  // used in turn so one step's stores need not wait for the previous step's tile loads.
  alignas(64) uint16_t bufs[2][16 * 64];
  _tile_zero(0);
  _tile_zero(1);
  for (int64_t kb = 0; kb < pc.K / 32; kb++) {
    uint16_t* b = bufs[kb & 1];
    unpack_pairs_avx512bf16(pc, table, wdt, kb * 32, 32, pn * kPanel, b);
    _tile_loadd(4, xs + kb * 512, 64);
    _tile_loadd(6, b, 128);
    _tile_loadd(7, b + 32, 128);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
  }
  _tile_stored(0, tile, kPanel * 4);
  _tile_stored(1, tile + 16, kPanel * 4);
}

void direct_amx_begin() { amx_thread_begin(); }
void direct_amx_end() { amx_thread_end(); }

}  // namespace quant4_detail
}  // namespace peft
