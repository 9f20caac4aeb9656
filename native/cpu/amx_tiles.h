// The AMX tile configuration both the AMX GEMM and the AMX ceiling use: palette 1, tiles 0-7 all
// 16 rows x 64 bytes (0-3 accumulators, 4-5 A, 6-7 B). Include only from *_amx.cc files.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace peft {

struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// Loads the configuration on the calling thread (each thread using tiles must).
inline void amx_load_tile_config() {
  static const AmxTileConfig cfg;
  _tile_loadconfig(&cfg);
}

// A kernel set's per-thread hooks: configure the tiles before the first block, release them after the last.
inline void amx_thread_begin() { amx_load_tile_config(); }
inline void amx_thread_end() { _tile_release(); }

// The four accumulator tiles (0-3) set to zero at the start of a 32x32 block.
inline void amx_zero_accumulators() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

}  // namespace peft
