// The portable int8 kernel: plain loops over the packed layouts (int8_kernels.h), the reference every
// ISA kernel is tested against.
#include "int8_epilogue.h"

namespace peft {
namespace int8_detail {
namespace {

constexpr int kMr = 4, kNr = 16;

void scalar_kernel(const Tile& t) {
  for (int i = 0; i < kMr; i++)
    for (int j = 0; j < kNr; j++) {
      int32_t s = 0;
      if (i < t.m) {
        const int8_t* a = reinterpret_cast<const int8_t*>(t.a + i * t.lda);
        for (int64_t k = 0; k < t.Kp; k++) s += int32_t(a[k]) * int32_t(t.b[(k >> 2) * 64 + j * 4 + (k & 3)]);
      }
      t.acc[i * kNr + j] = s;
    }
}

constexpr KernelSet kScalar{"scalar", kMr, kNr, false, false, nullptr, nullptr, &run_block<kMr, kNr, scalar_kernel>};

}  // namespace

const KernelSet* scalar_int8_kernels() { return &kScalar; }

}  // namespace int8_detail
}  // namespace peft
