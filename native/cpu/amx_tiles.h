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

}  // namespace peft
