#include "reflector.h"

#include "parallel.h"

namespace peft {

void apply_reflector_f64(const double* v, int64_t below, double tau, double* x, int64_t ld, int64_t row, int64_t c0, int64_t c1) {
  if (tau == 0 || c1 <= c0) return;
  // Columns are independent: split them across the pool when there is enough work.
  parallel_for(c1 - c0, below >= 4096 ? 4 : 64, [&](int64_t b, int64_t e) {
    for (int64_t c = c0 + b; c < c0 + e; c++) {
      double* col = x + c * ld + row;
      double w = col[0];
      for (int64_t i = 1; i <= below; i++) w += v[i] * col[i];
      w *= tau;
      col[0] -= w;
      for (int64_t i = 1; i <= below; i++) col[i] -= w * v[i];
    }
  });
}

}  // namespace peft
