// Row quantisation for int8 (portable reference and fallback), and the weight quantiser built on it.
#include <cmath>

#include "elem.h"
#include "int8.h"
#include "int8_kernels.h"
#include "isa.h"
#include "parallel.h"

namespace peft {
namespace int8_detail {

namespace {
// bitsandbytes quantises f16 tensors (it casts x and W with .to(torch.float16)); every value goes
// through f16 first, so a value beyond f16's range becomes inf as it does there.
inline float f16_round(const void* src, DType dt, int64_t k) { return f16_to_f32(f32_to_f16(load_f32(src, dt, k))); }
}  // namespace

float quant_row_scalar(const void* src, DType dt, int64_t n, float threshold, int offset, uint8_t* dst, uint8_t* seen) {
  float amax = 0.0f;
  bool nan = false;
  for (int64_t k = 0; k < n; k++) {
    float v = std::fabs(f16_round(src, dt, k));
    if (threshold > 0.0f && v >= threshold) {  // an outlier element: left out of the absmax
      if (seen) seen[k] = 1;
      continue;
    }
    if (v != v) nan = true;
    else if (v > amax) amax = v;
  }
  if (nan) amax = NAN;
  // 127 / absmax in f32, then one f32 product per value, as torch.round(A * (127.0 / row_stats)).
  const float scale = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t k = 0; k < n; k++) {
    float v = f16_round(src, dt, k);
    int q = 0;
    bool skip = threshold > 0.0f && std::fabs(v) >= threshold;
    float r = std::nearbyint(v * scale);  // round half to even (the default rounding mode)
    if (!skip && r == r) q = r > 127.0f ? 127 : r < -127.0f ? -127 : static_cast<int>(r);
    dst[k] = static_cast<uint8_t>(q + offset);
  }
  return amax;
}

DownRowsFn down_rows_kernel() {
#if PEFT_X86
  if (active_isa() == Isa::Avx512) return down_rows_avx512;
#endif
  return nullptr;
}

QuantRowFn quant_row_kernel() {
#if PEFT_X86
  if (active_isa() == Isa::Avx512) return quant_row_avx512;
#endif
  return quant_row_scalar;
}

}  // namespace int8_detail

int64_t int8_quantize_rows(const void* w, DType dt, int64_t rows, int64_t cols, int8_t* cb, float* scb) {
  using namespace int8_detail;
  QuantRowFn fn = quant_row_kernel();
  const size_t esz = dtype_size(dt);
  std::atomic<int64_t> bad{-1};
  parallel_for(rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      float amax = fn(static_cast<const char*>(w) + r * cols * esz, dt, cols, 0.0f, 0, reinterpret_cast<uint8_t*>(cb + r * cols),
                      nullptr);
      scb[r] = amax;
      if (!std::isfinite(amax)) {
        int64_t cur = bad.load();
        while ((cur < 0 || r < cur) && !bad.compare_exchange_weak(cur, r)) {
        }
      }
    }
  });
  return bad.load();
}

}  // namespace peft
