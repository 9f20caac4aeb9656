// Reductions over any set of axes. The axes are grouped into runs of reduced and kept axes (size-1 axes
// dropped, neighbours of one kind merged); then one of two shapes of loop does the work:
//  - the innermost group is reduced: every output reduces runs of contiguous elements (row sums);
//  - the innermost group is kept: outputs come in contiguous columns, and rows of them are accumulated
//    into a vector of column partials (column sums).
// Both split the work into tasks whose extent depends only on the shape (chunks of the reduced index,
// tiles of columns), give tasks to the pool, and combine the partials in chunk order: the result does not
// depend on the thread count.
#include "reduce.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "elem.h"
#include "elementwise.h"
#include "parallel.h"

namespace peft {
namespace {

constexpr int64_t kChunk = int64_t(1) << 16;  // elements one task reduces
constexpr int64_t kTile = 1024;               // columns one task accumulates
constexpr int64_t kStage = 1024;              // f16/bf16 elements widened at a time

struct Axis {
  int64_t size, stride;
};
using Axes = std::vector<Axis>;

int64_t count(const Axes& a) {
  int64_t n = 1;
  for (const Axis& x : a) n *= x.size;
  return n;
}

int64_t offset_of(const Axes& a, int64_t flat) {
  int64_t off = 0;
  for (int d = static_cast<int>(a.size()) - 1; d >= 0; d--) {
    off += (flat % a[d].size) * a[d].stride;
    flat /= a[d].size;
  }
  return off;
}

// The element offsets of a row-major walk over `axes`, starting at flat index `flat`.
struct Walker {
  const Axes& ax;
  int64_t idx[kEwMaxDims] = {};
  int64_t off = 0;
  Walker(const Axes& a, int64_t flat) : ax(a) {
    for (int d = static_cast<int>(ax.size()) - 1; d >= 0; d--) {
      idx[d] = flat % ax[d].size;
      flat /= ax[d].size;
      off += idx[d] * ax[d].stride;
    }
  }
  void next() {
    for (int d = static_cast<int>(ax.size()) - 1; d >= 0; d--) {
      off += ax[d].stride;
      if (++idx[d] < ax[d].size) return;
      off -= ax[d].size * ax[d].stride;
      idx[d] = 0;
    }
  }
};

struct Src {
  const void* p;
  DType dt;
};

// f(values, n, first) over x[off, off + n) as f32: in place for f32, else widened kStage at a time.
template <typename F>
void pieces(const Src& x, int64_t off, int64_t n, const EwKernels& k, F&& f) {
  if (x.dt == DType::F32) {
    f(static_cast<const float*>(x.p) + off, n, int64_t(0));
    return;
  }
  alignas(64) float buf[kStage];
  for (int64_t o = 0; o < n; o += kStage) {
    int64_t len = std::min(kStage, n - o);
    k.widen(static_cast<const uint16_t*>(x.p) + off + o, x.dt, buf, len);
    f(buf, len, o);
  }
}

inline bool beats(float v, float b, bool want_max) {
  bool better = want_max ? v > b : v < b;
  return better || (std::isnan(v) && !std::isnan(b));
}

// What the loops hand back per output: a sum (f64) or an extreme and its position.
struct Result {
  std::vector<double> val;
  std::vector<float> best;
  std::vector<int64_t> at;
};

// The innermost group is reduced: output o (over `kept`) reduces the runs of L contiguous elements at the
// offsets of `runs` (the other reduced groups). pass 0 sums (or finds extremes); pass 1 sums (x - mean)².
void reduce_inner(ReduceOp op, const Src& x, const Axes& kept, const Axes& runs, int64_t L, int pass,
                  const double* mean, Result& r, const EwKernels& k) {
  const bool ext = op == ReduceOp::Max || op == ReduceOp::Min, want_max = op == ReduceOp::Max;
  const int64_t n_out = count(kept), N = count(runs) * L;
  const int64_t nch = (N + kChunk - 1) / kChunk, tasks = n_out * nch;
  std::vector<double> part(ext ? 0 : tasks);
  std::vector<float> pbest(ext ? tasks : 0);
  std::vector<int64_t> pat(ext ? tasks : 0);
  const int64_t per_task = std::min(N, kChunk);
  dynamic_for(tasks, std::max<int64_t>(1, kChunk / per_task), [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; t++) {
      const int64_t o = t / nch, c = t % nch;
      const int64_t base = offset_of(kept, o);
      const int64_t p0 = c * kChunk, p1 = std::min(N, p0 + kChunk);
      Walker w(runs, p0 / L);
      int64_t in_run = p0 % L;
      double acc = 0;
      float bb = 0;
      int64_t ba = -1;
      for (int64_t pos = p0; pos < p1;) {
        const int64_t len = std::min(L - in_run, p1 - pos);
        pieces(x, base + w.off + in_run, len, k, [&](const float* v, int64_t n, int64_t first) {
          if (ext) {
            float vb;
            int64_t va;
            k.arg_extreme(v, n, want_max, &vb, &va);
            if (ba < 0 || beats(vb, bb, want_max)) bb = vb, ba = pos + first + va;
          } else if (pass == 0) {
            acc += k.sum(v, n);
          } else {
            acc += k.sum_sq_dev(v, n, mean[o]);
          }
        });
        pos += len;
        in_run = 0;
        w.next();
      }
      if (ext) {
        pbest[t] = bb, pat[t] = ba;
      } else {
        part[t] = acc;
      }
    }
  });
  for (int64_t o = 0; o < n_out; o++) {
    if (ext) {
      float bb = pbest[o * nch];
      int64_t ba = pat[o * nch];
      for (int64_t c = 1; c < nch; c++)
        if (beats(pbest[o * nch + c], bb, want_max)) bb = pbest[o * nch + c], ba = pat[o * nch + c];
      r.best[o] = bb, r.at[o] = ba;
    } else {
      double s = 0;
      for (int64_t c = 0; c < nch; c++) s += part[o * nch + c];
      r.val[o] = s;
    }
  }
}

// The innermost group (Kc columns) is kept: output (o, col) accumulates the rows at the offsets of `red`
// (every reduced group) into column partials.
void reduce_outer(ReduceOp op, const Src& x, const Axes& kept, int64_t Kc, const Axes& red, int pass,
                  const double* mean, Result& r, const EwKernels& k) {
  const bool ext = op == ReduceOp::Max || op == ReduceOp::Min, want_max = op == ReduceOp::Max;
  const int64_t n_outer = count(kept), N = count(red);
  const int64_t tw = std::min(Kc, kTile), ntiles = (Kc + tw - 1) / tw;
  // Row chunks: enough rows per task to amortize it, at most 16 chunks (a bound on the partials' memory).
  const int64_t rows_per = std::max<int64_t>({1, kChunk / tw, (N + 15) / 16}), nch = (N + rows_per - 1) / rows_per;
  const int64_t tasks = n_outer * ntiles * nch;
  const size_t psize = static_cast<size_t>(n_outer * nch * Kc);
  std::vector<double> part(ext ? 0 : psize);
  std::vector<float> pbest(ext ? psize : 0);
  std::vector<int64_t> pat(ext ? psize : 0);
  const int64_t per_task = tw * std::min(N, rows_per);
  dynamic_for(tasks, std::max<int64_t>(1, kChunk / per_task), [&](int64_t tb, int64_t te) {
    alignas(64) double acc[kTile];
    alignas(64) float bb[kTile];
    alignas(64) int64_t ba[kTile];
    alignas(64) float buf[4][kTile];
    for (int64_t t = tb; t < te; t++) {
      const int64_t c = t % nch, tile = (t / nch) % ntiles, o = t / nch / ntiles;
      const int64_t col0 = tile * tw, w = std::min(tw, Kc - col0);
      const int64_t base = offset_of(kept, o) + col0;
      const int64_t r0 = c * rows_per, r1 = std::min(N, r0 + rows_per);
      std::fill(acc, acc + w, 0.0);
      Walker wr(red, r0);
      const double* mrow = mean ? mean + o * Kc + col0 : nullptr;
      // Up to four rows at a time (w <= kTile columns each), as f32: in place, or widened into buf.
      for (int64_t row = r0; row < r1;) {
        const int nr = static_cast<int>(std::min<int64_t>(4, r1 - row));
        const float* p[4];
        for (int j = 0; j < nr; j++) {
          const int64_t off = base + wr.off;
          if (x.dt == DType::F32) {
            p[j] = static_cast<const float*>(x.p) + off;
          } else {
            k.widen(static_cast<const uint16_t*>(x.p) + off, x.dt, buf[j], w);
            p[j] = buf[j];
          }
          wr.next();
        }
        if (ext) {
          for (int j = 0; j < nr; j++) {
            if (row + j == r0) {
              std::copy(p[j], p[j] + w, bb);
              std::fill(ba, ba + w, r0);
            } else {
              k.col_extreme(p[j], w, want_max, row + j, bb, ba);
            }
          }
        } else if (pass == 0) {
          k.col_sum(p, nr, w, acc);
        } else {
          k.col_sum_sq_dev(p, nr, mrow, w, acc);
        }
        row += nr;
      }
      const size_t dst = static_cast<size_t>((o * nch + c) * Kc + col0);
      if (ext) {
        std::copy(bb, bb + w, pbest.begin() + dst);
        std::copy(ba, ba + w, pat.begin() + dst);
      } else {
        std::copy(acc, acc + w, part.begin() + dst);
      }
    }
  });
  parallel_for(n_outer * Kc, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      const int64_t o = i / Kc, col = i % Kc;
      const size_t first = static_cast<size_t>(o * nch * Kc + col);
      if (ext) {
        float v = pbest[first];
        int64_t a = pat[first];
        for (int64_t c = 1; c < nch; c++)
          if (beats(pbest[first + c * Kc], v, want_max)) v = pbest[first + c * Kc], a = pat[first + c * Kc];
        r.best[i] = v, r.at[i] = a;
      } else {
        double s = 0;
        for (int64_t c = 0; c < nch; c++) s += part[first + c * Kc];
        r.val[i] = s;
      }
    }
  });
}

}  // namespace

void reduce_cpu(ReduceOp op, const void* x, DType xdt, const int64_t* shape, int ndim, const bool* reduced,
                double correction, void* out, DType odt, int64_t* at) {
  int64_t n_out = 1, N = 1;
  for (int d = 0; d < ndim; d++) (reduced[d] ? N : n_out) *= shape[d];
  if (n_out == 0) return;
  if (N == 0) {  // an empty sum is 0; a mean or variance of nothing is NaN
    const float v = op == ReduceOp::Sum ? 0.0f : NAN;
    for (int64_t i = 0; i < n_out; i++) store_f32(out, odt, i, v);
    return;
  }
  // Groups of adjacent axes of one kind (size-1 axes dropped), outer to inner, with contiguous strides.
  Axes groups;
  std::vector<bool> red;
  int64_t stride = 1;
  std::vector<int64_t> st(static_cast<size_t>(ndim));
  for (int d = ndim - 1; d >= 0; d--) st[d] = stride, stride *= shape[d];
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    if (!groups.empty() && red.back() == reduced[d]) {
      groups.back().size *= shape[d];
      groups.back().stride = st[d];
    } else {
      groups.push_back({shape[d], st[d]});
      red.push_back(reduced[d]);
    }
  }
  const EwKernels& k = ew_kernels();
  const Src src{x, xdt};
  const bool ext = op == ReduceOp::Max || op == ReduceOp::Min;
  Result r;
  if (ext) {
    r.best.resize(static_cast<size_t>(n_out));
    r.at.resize(static_cast<size_t>(n_out));
  } else {
    r.val.resize(static_cast<size_t>(n_out));
  }
  std::vector<double> mean;
  auto run = [&](int pass, const double* m) {
    if (!groups.empty() && red.back()) {
      Axes kept, runs;
      for (size_t g = 0; g + 1 < groups.size(); g++) (red[g] ? runs : kept).push_back(groups[g]);
      reduce_inner(op, src, kept, runs, groups.back().size, pass, m, r, k);
    } else {
      Axes kept, rd;
      for (size_t g = 0; g + 1 < groups.size(); g++) (red[g] ? rd : kept).push_back(groups[g]);
      const int64_t Kc = groups.empty() ? 1 : groups.back().size;
      reduce_outer(op, src, kept, Kc, rd, pass, m, r, k);
    }
  };
  run(0, nullptr);
  if (op == ReduceOp::Var) {
    mean.resize(static_cast<size_t>(n_out));
    for (int64_t i = 0; i < n_out; i++) mean[i] = r.val[i] / static_cast<double>(N);
    run(1, mean.data());
  }
  const double divisor = op == ReduceOp::Mean ? static_cast<double>(N)
                         : op == ReduceOp::Var ? std::max(0.0, static_cast<double>(N) - correction)
                                               : 1.0;
  parallel_for(n_out, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      if (ext) {
        store_f32(out, odt, i, r.best[i]);
        if (at) at[i] = r.at[i];
      } else {
        store_f32(out, odt, i, static_cast<float>(r.val[i] / divisor));
      }
    }
  });
}

}  // namespace peft
