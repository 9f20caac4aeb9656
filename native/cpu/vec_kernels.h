// The f32 array kernels whose speed comes from vector width (activations, exponentials, dropout masks,
// the AdamW element update), built once per ISA from vec_impl.h and picked at run time: the same source
// vectorizes 4, 8 or 16 wide.
#pragma once
#include <cstdint>

#include "../core/philox.h"
#include "adamw.h"
#include "nn_kernels.h"

namespace peft {

struct VecKernels {
  void (*act_forward)(Act a, const float* x, float* y, int64_t n);
  void (*act_backward)(Act a, const float* x, const float* dy, float* dx, int64_t n);
  // y = e^((x - a) - b): two subtractions so a large row max `a` costs no precision.
  void (*exp_shift)(const float* x, float a, float b, float* y, int64_t n);
  // mask[4j + l] = (u >= keep_from) ? scale : 0 with u lane l of Philox block first_block + j.
  void (*dropout_mask)(RngKey key, uint64_t first_block, int64_t blocks, float keep_from, float scale, float* mask);
  // One AdamW update of n f32 elements (p already widened to f32).
  void (*adamw)(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s);
  // bf16 <-> f32 over a block (staging of bf16 operands): widening is exact, narrowing rounds to nearest
  // even with NaN kept quiet, as dtype.h's f32_to_bf16.
  void (*widen_bf16)(const uint16_t* s, float* d, int64_t n);
  void (*narrow_bf16)(const float* v, uint16_t* d, int64_t n);
};

// The build for the active ISA (backend.setIsa / NODE_PEFT_ISA).
const VecKernels& vec_kernels();
const VecKernels& vec_kernels_avx2();
const VecKernels& vec_kernels_avx512();

}  // namespace peft
