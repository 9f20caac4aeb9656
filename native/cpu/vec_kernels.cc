// Baseline build of the vector kernels (any x86-64), and the run-time choice between the ISA builds.
#include "isa.h"
#include "vec_impl.h"

namespace peft {
namespace {
void sqrt_block(float* v, int64_t n) {
  for (int64_t i = 0; i < n; i++) v[i] = std::sqrt(v[i]);
}
}  // namespace

const VecKernels& vec_kernels() {
  switch (active_isa()) {
#if PEFT_X86
    case Isa::Avx512: return vec_kernels_avx512();
    case Isa::Avx2: return vec_kernels_avx2();
#endif
    default: return kVecKernels;
  }
}

}  // namespace peft
