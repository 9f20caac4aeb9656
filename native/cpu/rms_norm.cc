#include "rms_norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"
#include "rows.h"

namespace peft {
namespace {
// Rows per chunk: enough work per chunk that the pool's hand-off is noise.
int64_t row_grain(int64_t N) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)); }
}  // namespace

void rms_norm_cpu(const void* x, DType dt, const void* w, DType wdt, void* y, float* rstd, int64_t M, int64_t N, float eps) {
  std::vector<float> wf(static_cast<size_t>(N), 1.0f);
  if (w) load_row(w, wdt, 0, wf.data(), N);
  parallel_for(M, row_grain(N), [&](int64_t b, int64_t e) {
    std::vector<float> row(static_cast<size_t>(N));
    for (int64_t r = b; r < e; r++) {
      load_row(x, dt, r * N, row.data(), N);
      double ss = 0;
      for (int64_t i = 0; i < N; i++) ss += static_cast<double>(row[i]) * row[i];
      float s = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(N) + eps));
      rstd[r] = s;
      for (int64_t i = 0; i < N; i++) row[i] = row[i] * s * wf[i];
      store_row(row.data(), y, dt, r * N, N);
    }
  });
}

// With x̂ = x·rstd and g = dy·w: dx = rstd·(g − x̂·mean(g·x̂)), dw = Σ_rows dy·x̂. dw is summed per thread
// in f64, then the threads' partials in a fixed order (the result does not depend on scheduling).
void rms_norm_backward_cpu(const void* x, DType dt, const void* w, DType wdt, const float* rstd, const void* dy, DType dydt,
                           void* dx, void* dw, int64_t M, int64_t N) {
  std::vector<float> wf(static_cast<size_t>(N), 1.0f);
  if (w) load_row(w, wdt, 0, wf.data(), N);
  int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), M / row_grain(N))));
  std::vector<double> parts(dw ? static_cast<size_t>(nt) * N : 0, 0.0);
  parallel_run(nt, [&](int tid, int n) {
    int64_t b = M * tid / n, e = M * (tid + 1) / n;
    std::vector<float> xr(static_cast<size_t>(N)), gr(static_cast<size_t>(N));
    double* part = dw ? parts.data() + static_cast<size_t>(tid) * N : nullptr;
    for (int64_t r = b; r < e; r++) {
      load_row(x, dt, r * N, xr.data(), N);
      load_row(dy, dydt, r * N, gr.data(), N);
      float s = rstd[r];
      double c = 0;
      for (int64_t i = 0; i < N; i++) {
        float xh = xr[i] * s;
        if (part) part[i] += static_cast<double>(gr[i]) * xh;
        c += static_cast<double>(gr[i]) * wf[i] * xh;
        xr[i] = xh;
      }
      if (!dx) continue;
      float mean = static_cast<float>(c / static_cast<double>(N));
      for (int64_t i = 0; i < N; i++) xr[i] = s * (gr[i] * wf[i] - xr[i] * mean);
      store_row(xr.data(), dx, dt, r * N, N);
    }
  });
  if (!dw) return;
  std::vector<float> sum(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; i++) {
    double t = 0;
    for (int k = 0; k < nt; k++) t += parts[static_cast<size_t>(k) * N + i];
    sum[i] = static_cast<float>(t);
  }
  store_row(sum.data(), dw, wdt, 0, N);
}

}  // namespace peft
