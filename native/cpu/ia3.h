// IA3 on a dense layer, CPU: y = (x ⊙ l)·Wᵀ + b (input side, PEFT's feed-forward modules) or
// y = (x·Wᵀ + b) ⊙ l (output side), with l applied inside the GEMM (as x is packed, or in the epilogue).
#pragma once
#include <cstdint>

#include "lora.h"

namespace peft {

struct Ia3Scale {
  const float* l = nullptr;  // K values (input side) or N values (output side), the product of the active adapters
  bool input_side = false;
};

// y (M, N) in y_dt; with y0 non-null (output side, training) the unscaled x·Wᵀ + b goes there too (y0_dt),
// since dl needs it and dividing y by l fails where l is 0.
void ia3_forward_cpu(const DenseView& d, const Ia3Scale& s, void* y, DType y_dt, void* y0, DType y0_dt);

// Gradients from dy (M, N): dx written when non-null; dW, db (the base's, when trainable) and dl accumulated
// when non-null (dl: f32, K or N values). y0 is the forward's unscaled output (output side with dl only).
void ia3_backward_cpu(const DenseView& d, const Ia3Scale& s, const void* dy, DType dy_dt, const void* y0, DType y0_dt, void* dx,
                      DType dx_dt, void* dW, DType dW_dt, void* db, DType db_dt, float* dl);

}  // namespace peft
