// Baseline build of the attention tiles (any x86-64), and the run-time choice between the ISA builds.
#define ATTN_VECTOR_BYTES 16  // SSE2, the x86-64 baseline
#include "attention_impl.h"
#include "isa.h"

namespace peft {

const AttentionTiles& attention_tiles() {
  switch (active_isa()) {
    case Isa::Avx512: return attention_tiles_avx512();
    case Isa::Avx2: return attention_tiles_avx2();
    default: return kAttentionTiles;
  }
}

}  // namespace peft
