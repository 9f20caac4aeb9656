// AVX-512 f32 FMA peak: 16 independent accumulators (enough to cover FMA latency on two pipes), written
// in asm so the compiler cannot shorten or reorder the loop.
#include "ceilings.h"

namespace peft {
namespace ceiling_detail {

#define PEFT_Z16(op) \
  op "%%zmm0\n" op "%%zmm1\n" op "%%zmm2\n" op "%%zmm3\n" op "%%zmm4\n" op "%%zmm5\n" op "%%zmm6\n" op "%%zmm7\n" \
  op "%%zmm8\n" op "%%zmm9\n" op "%%zmm10\n" op "%%zmm11\n" op "%%zmm12\n" op "%%zmm13\n" op "%%zmm14\n" op "%%zmm15\n"

double fma_avx512(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "vxorps %%xmm30, %%xmm30, %%xmm30\n vxorps %%xmm31, %%xmm31, %%xmm31\n"
      "1:\n" PEFT_Z16("vfmadd231ps %%zmm30, %%zmm31, ") "dec %0\n jnz 1b\n vzeroupper\n"
      : "+r"(n)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "xmm14", "xmm15", "xmm30", "xmm31", "cc");
  return static_cast<double>(iters) * 16 * 16 * 2;
}

}  // namespace ceiling_detail
}  // namespace peft
