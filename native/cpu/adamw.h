// The fused AdamW step over many parameters at once (one pass over each parameter, one pool dispatch).
#pragma once
#include <cstdint>
#include <vector>

#include "../core/dtype.h"

namespace peft {

// Step scalars, derived once in double from (lr, betas, eps, weight decay, step) as PyTorch does in Python,
// then used in f32 like PyTorch's f32 tensor ops.
struct AdamWScalars {
  float decay;      // 1 - lr * weight_decay
  float lerp_w;     // 1 - beta1 (exp_avg.lerp_(grad, 1 - beta1))
  float beta2;
  float sq_w;       // 1 - beta2
  float bc2_sqrt;   // sqrt(1 - beta2^step)
  float eps;
  float neg_step;   // -lr / (1 - beta1^step)
};
AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step);

// One parameter: p and g in any float dtype, the moments f32, all with n elements.
struct AdamWParam {
  void* p;
  DType p_dt;
  const void* g;
  DType g_dt;
  float* m;
  float* v;
  int64_t n;
};

// p *= decay; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g²; p += neg_step * m / (sqrt(v) / bc2_sqrt + eps),
// computed in f32 and rounded into p's dtype once.
void adamw_cpu(const std::vector<AdamWParam>& params, const AdamWScalars& s);

}  // namespace peft
