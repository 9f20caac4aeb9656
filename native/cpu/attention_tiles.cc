// Baseline build of the attention tiles (16-byte vectors: SSE2 on any x86-64, NEON on arm64), and the
// run-time choice between the ISA builds.
#define ATTN_VECTOR_BYTES 16
#include "attention_impl.h"
#include "isa.h"

namespace peft {

const AttentionTiles& attention_tiles() {
  switch (active_isa()) {
#if PEFT_X86
    case Isa::Avx512: return attention_tiles_avx512();
    case Isa::Avx2: return attention_tiles_avx2();
#endif
    default: return kAttentionTiles;
  }
}

}  // namespace peft
