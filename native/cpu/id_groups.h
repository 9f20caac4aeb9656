// Integer ids (i32 or i64) grouped by value, for the scatter kernels that hand each destination row to one
// task: no two tasks write the same row, and each row adds its sources in index order, so results do not
// depend on the thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../core/dtype.h"
#include "nn_kernels.h"

namespace peft {

// The positions 0..n-1 sorted by id, stably: group g is order[starts[g]] .. order[starts[g + 1] - 1], all
// holding id_of(g).
struct IdGroups {
  std::vector<int64_t> id, order, starts;
  int64_t count() const { return static_cast<int64_t>(starts.size()) - 1; }
  int64_t id_of(int64_t g) const { return id[order[starts[g]]]; }
};

inline IdGroups group_ids(const void* ids, DType idt, int64_t n) {
  IdGroups g;
  g.id.resize(static_cast<size_t>(n));
  g.order.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) g.id[i] = load_id(ids, idt, i);
  std::iota(g.order.begin(), g.order.end(), int64_t(0));
  std::stable_sort(g.order.begin(), g.order.end(), [&](int64_t a, int64_t b) { return g.id[a] < g.id[b]; });
  for (int64_t i = 0; i < n; i++)
    if (i == 0 || g.id[g.order[i]] != g.id[g.order[i - 1]]) g.starts.push_back(i);
  g.starts.push_back(n);
  return g;
}

}  // namespace peft
