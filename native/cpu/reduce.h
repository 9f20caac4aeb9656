// Deterministic f32 reductions: 16 running lanes indexed by element offset, folded in a fixed tree.
// The order depends only on the element positions (never on threads or ISA), the separate lanes let the
// compiler vectorize without reassociating, and 16 partial sums lose less precision than one.
#pragma once
#include <cstdint>
#include <limits>

#include "../core/dtype.h"

namespace peft {

constexpr int kLanes = 16;

// Sum of values fed in consecutive pieces whose lengths are multiples of kLanes (except the last).
struct LaneSum {
  float v[kLanes] = {};
  void add(const float* x, int64_t n) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int j = 0; j < kLanes; j++) v[j] += x[i + j];
    for (int j = 0; i + j < n; j++) v[j] += x[i + j];
  }
  float total() const {
    float t[kLanes];
    for (int j = 0; j < kLanes; j++) t[j] = v[j];
    for (int w = kLanes / 2; w >= 1; w /= 2)
      for (int j = 0; j < w; j++) t[j] += t[j + w];
    return t[0];
  }
};

// Maximum; NaN inputs are skipped here (callers see them propagate through exp/log instead).
struct LaneMax {
  float v[kLanes];
  LaneMax() {
    for (int j = 0; j < kLanes; j++) v[j] = -std::numeric_limits<float>::infinity();
  }
  void add(const float* x, int64_t n) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int j = 0; j < kLanes; j++) v[j] = x[i + j] > v[j] ? x[i + j] : v[j];
    for (int j = 0; i + j < n; j++) v[j] = x[i + j] > v[j] ? x[i + j] : v[j];
  }
  float total() const {
    float m = v[0];
    for (int j = 1; j < kLanes; j++) m = v[j] > m ? v[j] : m;
    return m;
  }
};

// ---- Reductions over any set of axes (the functional `reduce` op) ----

enum class ReduceOp { Sum, Mean, Max, Min, Var };

// Reduces the contiguous float tensor x of `shape` over the axes with reduced[d] set, into out (the kept
// axes in order, contiguous, dtype odt). Sum, mean and var accumulate in f64 (var in two passes: the mean,
// then squared deviations, divided by max(0, n - correction)); the order depends only on the shape, never
// on the thread count. Max/min take the first extreme, a NaN winning (the first NaN); `at` (may be
// null) receives its position in the reduced index space (the index along the axis when one is reduced).
// n = 0: sum 0, mean and var NaN; callers refuse max/min over nothing.
void reduce_cpu(ReduceOp op, const void* x, DType xdt, const int64_t* shape, int ndim, const bool* reduced,
                double correction, void* out, DType odt, int64_t* at);

}  // namespace peft
