// AMX peaks: tdpbf16ps (16 x 16 x 32 bf16 per instruction) and tdpbssd (16 x 16 x 64 int8) into four
// independent accumulator tiles from A and B tiles loaded once. Only run when amx_enabled().
#include <immintrin.h>

#include "amx_tiles.h"


#include "ceilings.h"

namespace peft {
namespace ceiling_detail {
namespace {

alignas(64) const uint8_t kZeros[16 * 64] = {};

// Four zeroed accumulators (0-3) and zero A / B tiles (4-7); the operand values do not change the rate.
void setup_tiles() {
  amx_load_tile_config();
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, kZeros, 64);
  _tile_loadd(5, kZeros, 64);
  _tile_loadd(6, kZeros, 64);
  _tile_loadd(7, kZeros, 64);
}

}  // namespace

double amx_bf16(int64_t iters) {
  setup_tiles();
  for (int64_t i = 0; i < iters; i++) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_release();
  return static_cast<double>(iters) * 4 * 16 * 16 * 32 * 2;
}

double amx_int8(int64_t iters) {
  setup_tiles();
  for (int64_t i = 0; i < iters; i++) {
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
  _tile_release();
  return static_cast<double>(iters) * 4 * 16 * 16 * 64 * 2;
}

}  // namespace ceiling_detail
}  // namespace peft
