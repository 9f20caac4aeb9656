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

// Merge/unmerge in place: W viewed (outer, mid, inner) times f[mid] (the active adapters' factors, combined
// in f64: l, or 1 / (l + 1e-8) for PEFT's unmerge), each element rounded once into W's dtype, in one pass.
// With `safe` the results are checked first and nothing is written unless all are finite; `commit` false
// only checks. Returns whether every result was finite.
bool ia3_scale_cpu(void* W, DType dt, int64_t outer, int64_t mid, int64_t inner, const float* f, bool safe, bool commit);

}  // namespace peft
