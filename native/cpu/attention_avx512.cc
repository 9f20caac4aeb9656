// AVX512 build of attention_impl.h (16 floats per vector); called only when active_isa() is Avx512.
#define ATTN_VECTOR_BYTES 64
#include "attention_impl.h"

namespace peft {

const AttentionTiles& attention_tiles_avx512() { return kAttentionTiles; }

}  // namespace peft
