#include "losses.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "vec_kernels.h"
#include "elem.h"
#include "nn_kernels.h"
#include "parallel.h"
#include "reduce.h"
#include "stage.h"

namespace peft {
namespace {

constexpr int64_t kGrain = 1 << 14;

// Non-ignored rows (the mean's denominator).
int64_t count_targets(const void* target, DType tdt, int64_t rows, int64_t ignore) {
  int64_t count = 0;
  for (int64_t r = 0; r < rows; r++) count += load_id(target, tdt, r) != ignore;
  return count;
}

// Fixed-order double sum of per-row values.
double ordered_sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

}  // namespace

int64_t first_bad_target(const void* target, DType tdt, int64_t n, int64_t classes, int64_t ignore) {
  for (int64_t i = 0; i < n; i++) {
    int64_t t = load_id(target, tdt, i);
    if (t != ignore && (t < 0 || t >= classes)) return i;
  }
  return -1;
}

double nll_loss_cpu(const void* logp, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes,
                    int64_t ignore, void* grad, DType gdt) {
  int64_t count = count_targets(target, tdt, rows, ignore);
  if (count == 0) return std::numeric_limits<double>::quiet_NaN();
  const float g = static_cast<float>(-1.0 / static_cast<double>(count));
  double sum = 0;
  for (int64_t r = 0; r < rows; r++) {
    int64_t t = load_id(target, tdt, r);
    if (t == ignore) continue;
    sum += load_f32(logp, ldt, r * classes + t);
    store_f32(grad, gdt, r * classes + t, g);
  }
  return -sum / static_cast<double>(count);
}

double cross_entropy_cpu(const void* logits, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes,
                         int64_t ignore, double smoothing, void* grad, DType gdt) {
  int64_t count = count_targets(target, tdt, rows, ignore);
  if (count == 0) return std::numeric_limits<double>::quiet_NaN();
  const float inv = static_cast<float>(1.0 / static_cast<double>(count));
  const float on_target = static_cast<float>(1.0 - smoothing);
  const float uniform = static_cast<float>(smoothing / static_cast<double>(classes));
  std::vector<double> nll(rows, 0.0), smooth(rows, 0.0);
  const VecKernels& k = vec_kernels();
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(classes, 1)), [&](int64_t rb, int64_t re) {
    float bx[kStageBlock], bg[kStageBlock];
    for (int64_t r = rb; r < re; r++) {
      int64_t t = load_id(target, tdt, r);
      if (t == ignore) continue;  // its gradient row stays zero
      int64_t base = r * classes;
      LaneMax mx;
      for (int64_t o = 0; o < classes; o += kStageBlock) {
        int64_t len = std::min(kStageBlock, classes - o);
        mx.add(stage_in(logits, ldt, base + o, len, bx), len);
      }
      const float m = mx.total();
      // Everything stays relative to the row max: -logp[c] = (m - z[c]) + log(sum exp(z - m)), so a large
      // common offset in the logits costs no precision.
      LaneSum se, gap;
      for (int64_t o = 0; o < classes; o += kStageBlock) {
        int64_t len = std::min(kStageBlock, classes - o);
        const float* xs = stage_in(logits, ldt, base + o, len, bx);
        k.exp_shift(xs, m, 0.0f, bg, len);
        se.add(bg, len);
        if (smoothing > 0) {
          for (int64_t i = 0; i < len; i++) bg[i] = m - xs[i];
          gap.add(bg, len);
        }
      }
      const float log_sum = std::log(se.total());
      nll[r] = (static_cast<double>(m) - load_f32(logits, ldt, base + t)) + static_cast<double>(log_sum);
      if (smoothing > 0) smooth[r] = static_cast<double>(gap.total()) + static_cast<double>(classes) * log_sum;
      for (int64_t o = 0; o < classes; o += kStageBlock) {
        int64_t len = std::min(kStageBlock, classes - o);
        const float* xs = stage_in(logits, ldt, base + o, len, bx);
        float* gs = stage_dst(grad, gdt, base + o, bg);
        k.exp_shift(xs, m, log_sum, gs, len);  // softmax, then the gradient formed in place
        bool has_t = t >= o && t < o + len;
        float p_t = has_t ? gs[t - o] : 0.0f;
        for (int64_t i = 0; i < len; i++) gs[i] = (gs[i] - uniform) * inv;
        if (has_t) gs[t - o] = (p_t - on_target - uniform) * inv;
        stage_out(grad, gdt, base + o, len, gs);
      }
    }
  });
  double n = static_cast<double>(count);
  double loss = ordered_sum(nll) / n;
  // Only with smoothing on: an infinite -logp elsewhere in a row must not turn a plain loss into 0 * inf.
  if (smoothing > 0) loss = (1.0 - smoothing) * loss + ordered_sum(smooth) / n * (smoothing / static_cast<double>(classes));
  return loss;
}

double mse_loss_cpu(const void* y, DType ydt, const void* t, DType tdt, int64_t n, void* grad, DType gdt) {
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  const float norm = static_cast<float>(2.0 / static_cast<double>(n));
  // Chunks of a fixed size, each summed in order, then summed in chunk order: thread-count independent.
  constexpr int64_t kChunk = kStageBlock * 32;
  int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
  parallel_for(chunks, 1, [&](int64_t cb, int64_t ce) {
    float by[kStageBlock], bt[kStageBlock], bg[kStageBlock];
    for (int64_t c = cb; c < ce; c++) {
      double s = 0;
      for (int64_t off = c * kChunk; off < std::min(n, (c + 1) * kChunk); off += kStageBlock) {
        int64_t len = std::min(kStageBlock, n - off);
        const float* ys = stage_in(y, ydt, off, len, by);
        const float* ts = stage_in(t, tdt, off, len, bt);
        float* gs = stage_dst(grad, gdt, off, bg);
        for (int64_t i = 0; i < len; i++) {
          float d = ys[i] - ts[i];
          s += static_cast<double>(d) * d;
          gs[i] = d * norm;
        }
        stage_out(grad, gdt, off, len, gs);
      }
      partial[c] = s;
    }
  });
  return ordered_sum(partial) / static_cast<double>(n);
}

}  // namespace peft
