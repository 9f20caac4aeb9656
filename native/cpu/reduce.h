// Deterministic f32 reductions: 16 running lanes indexed by element offset, folded in a fixed tree.
// The order depends only on the element positions (never on threads or ISA), the separate lanes let the
// compiler vectorize without reassociating, and 16 partial sums lose less precision than one.
#pragma once
#include <cstdint>
#include <limits>

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

}  // namespace peft
