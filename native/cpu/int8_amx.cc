// AMX-INT8 kernel: a 32 x 32 int32 block in four 16 x 16 tiles, fed per 64-deep k chunk by two A tiles
// (16 rows x 64 bytes of signed x_q, read in place from the packed rows) and two B tiles (16 quads x 16
// columns, read straight from the panel layout with a 64-byte row stride): tdpbssd, signed x signed, so
// no offset correction. Only used when amx_enabled().
#include "amx_tiles.h"
#include "int8_epilogue.h"

namespace peft {
namespace int8_detail {
namespace {

constexpr int kMr = 32, kNr = 32;

void amx_kernel(const Tile& t) {
  amx_zero_accumulators();
  const int8_t* b1 = t.b + t.Kp * kPanel;
  for (int64_t k = 0; k < t.Kp; k += 64) {
    _tile_loadd(4, t.a + k, t.lda);
    _tile_loadd(5, t.a + 16 * t.lda + k, t.lda);
    _tile_loadd(6, t.b + k * 16, 64);  // chunk k/64 of a panel: 16 quads of 64 bytes
    _tile_loadd(7, b1 + k * 16, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
  _tile_stored(0, t.acc, kNr * 4);
  _tile_stored(1, t.acc + 16, kNr * 4);
  _tile_stored(2, t.acc + 16 * kNr, kNr * 4);
  _tile_stored(3, t.acc + 16 * kNr + 16, kNr * 4);
}

constexpr KernelSet kAmx{"amx-int8", kMr, kNr, false, false, &amx_thread_begin, &amx_thread_end, &run_block<kMr, kNr, amx_kernel>};

}  // namespace

const KernelSet* amx_int8_kernels() { return &kAmx; }

}  // namespace int8_detail
}  // namespace peft
