#include "rotary.h"

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "rows.h"

namespace peft {

void rotary_cpu(const void* x, DType dt, const float* cos, const float* sin, int64_t Bc, void* y, int64_t B, int64_t T,
                int64_t H, int64_t D, bool backward) {
  const int64_t h = D / 2, row = H * D;
  // One (batch, position) per item: its H heads share the cos/sin row.
  parallel_for(B * T, std::max<int64_t>(1, 8192 / std::max<int64_t>(row, 1)), [&](int64_t b, int64_t e) {
    std::vector<float> in(static_cast<size_t>(row)), out(static_cast<size_t>(row));
    for (int64_t bt = b; bt < e; bt++) {
      int64_t t = bt % T, tab = ((Bc == 1 ? 0 : bt / T) * T + t) * D;
      const float* c = cos + tab;
      const float* s = sin + tab;
      load_row(x, dt, bt * row, in.data(), row);
      for (int64_t hd = 0; hd < H; hd++) {
        const float* xi = in.data() + hd * D;
        float* yo = out.data() + hd * D;
        if (!backward) {
          for (int64_t i = 0; i < h; i++) yo[i] = xi[i] * c[i] - xi[i + h] * s[i];
          for (int64_t i = h; i < D; i++) yo[i] = xi[i] * c[i] + xi[i - h] * s[i];
        } else {
          for (int64_t i = 0; i < h; i++) yo[i] = xi[i] * c[i] + xi[i + h] * s[i + h];
          for (int64_t i = h; i < D; i++) yo[i] = xi[i] * c[i] - xi[i - h] * s[i - h];
        }
      }
      store_row(out.data(), y, dt, bt * row, row);
    }
  });
}

}  // namespace peft
