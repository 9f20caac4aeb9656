// vdpbf16ps (bf16 pairs into f32) and vpdpbusd (u8 x s8 quads into i32) peaks, register-only, as in
// ceilings_avx512.cc.
#include "ceilings.h"

namespace peft {
namespace ceiling_detail {

#define PEFT_Z16(op) \
  op "%%zmm0\n" op "%%zmm1\n" op "%%zmm2\n" op "%%zmm3\n" op "%%zmm4\n" op "%%zmm5\n" op "%%zmm6\n" op "%%zmm7\n" \
  op "%%zmm8\n" op "%%zmm9\n" op "%%zmm10\n" op "%%zmm11\n" op "%%zmm12\n" op "%%zmm13\n" op "%%zmm14\n" op "%%zmm15\n"
#define PEFT_Z16_CLOBBERS                                                                                        \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", \
      "xmm14", "xmm15", "xmm30", "xmm31", "cc"

double dpbf16_avx512(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "vpxord %%zmm30, %%zmm30, %%zmm30\n vpxord %%zmm31, %%zmm31, %%zmm31\n"
      "1:\n" PEFT_Z16("vdpbf16ps %%zmm30, %%zmm31, ") "dec %0\n jnz 1b\n vzeroupper\n"
      : "+r"(n)
      :
      : PEFT_Z16_CLOBBERS);
  return static_cast<double>(iters) * 16 * 32 * 2;  // 32 bf16 products per instruction
}

double vnni_avx512(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "vpxord %%zmm30, %%zmm30, %%zmm30\n vpxord %%zmm31, %%zmm31, %%zmm31\n"
      "1:\n" PEFT_Z16("vpdpbusd %%zmm30, %%zmm31, ") "dec %0\n jnz 1b\n vzeroupper\n"
      : "+r"(n)
      :
      : PEFT_Z16_CLOBBERS);
  return static_cast<double>(iters) * 16 * 64 * 2;  // 64 u8 x s8 products per instruction
}

}  // namespace ceiling_detail
}  // namespace peft
