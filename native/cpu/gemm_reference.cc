// Plain reference GEMM: correct for every layout and dtype mix, parallel over rows of C. Tests compare
// the fast paths against it; gemm() also uses it when there is nothing to multiply (K = 0, R = 0).
#include "elem.h"
#include "gemm.h"
#include "parallel.h"

namespace peft {

void gemm_reference(const GemmArgs& g) {
  if (g.M <= 0 || g.N <= 0) return;
  parallel_for(g.M, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      for (int64_t j = 0; j < g.N; j++) {
        float acc = 0;
        for (int64_t k = 0; k < g.K; k++)
          acc += load_f32(g.A.p, g.A.dt, i * g.A.rs + k * g.A.cs) * (g.A.ks ? g.A.ks[k] : 1.0f) *
                 load_f32(g.B.p, g.B.dt, k * g.B.rs + j * g.B.cs);
        float extra = 0;
        for (int64_t k = 0; k < g.R; k++)
          extra += load_f32(g.A2.p, g.A2.dt, i * g.A2.rs + k * g.A2.cs) * load_f32(g.B2.p, g.B2.dt, k * g.B2.rs + j * g.B2.cs);
        float v = g.alpha * acc + extra;
        if (g.bias) v += load_f32(g.bias, g.bias_dt, j);
        if (g.col_scale) v *= g.col_scale[j];
        if (g.accumulate) v += load_f32(g.C, g.c_dt, i * g.ldc + j);
        store_f32(g.C, g.c_dt, i * g.ldc + j, v);
      }
    }
  });
}

}  // namespace peft
