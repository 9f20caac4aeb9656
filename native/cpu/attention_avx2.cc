// AVX2 build of attention_impl.h (8 floats per vector); called only when active_isa() is Avx2.
#define ATTN_VECTOR_BYTES 32
#include "attention_impl.h"

namespace peft {

const AttentionTiles& attention_tiles_avx2() { return kAttentionTiles; }

}  // namespace peft
