// AdamW as in torch/optim (single-tensor path, amsgrad and maximize off): the step scalars in double as
// the Python code computes them, the element update (vec_impl.h, adamw_impl) in f32 over blocks that
// are spread across the pool.
#include "adamw.h"

#include <algorithm>
#include <cmath>

#include "parallel.h"
#include "stage.h"
#include "vec_kernels.h"

namespace peft {

AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  AdamWScalars s;
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.lerp_w = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.sq_w = static_cast<float>(1.0 - beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  s.eps = static_cast<float>(eps);
  s.neg_step = static_cast<float>(-(lr / bc1));
  return s;
}

void adamw_cpu(const std::vector<AdamWParam>& params, const AdamWScalars& s) {
  // Work items are blocks that never straddle two parameters, so many small tensors (biases, LoRA
  // factors) and a few large ones share one dispatch.
  struct Item {
    int32_t param;
    int64_t off, len;
  };
  std::vector<Item> items;
  for (size_t k = 0; k < params.size(); k++)
    for (int64_t off = 0; off < params[k].n; off += kStageBlock)
      items.push_back({static_cast<int32_t>(k), off, std::min(kStageBlock, params[k].n - off)});
  const VecKernels& vk = vec_kernels();
  parallel_for(static_cast<int64_t>(items.size()), 16, [&](int64_t b, int64_t e) {
    float bp[kStageBlock], bg[kStageBlock];
    for (int64_t it = b; it < e; it++) {
      const Item& item = items[it];
      const AdamWParam& a = params[item.param];
      float* ps = stage_inout(a.p, a.p_dt, item.off, item.len, bp);
      const float* gs = stage_in(a.g, a.g_dt, item.off, item.len, bg);
      vk.adamw(ps, gs, a.m + item.off, a.v + item.off, item.len, s);
      stage_out(a.p, a.p_dt, item.off, item.len, ps);
    }
  });
}

}  // namespace peft
