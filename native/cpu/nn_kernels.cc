#include "nn_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/philox.h"
#include "convert.h"
#include "id_groups.h"
#include "parallel.h"
#include "reduce.h"
#include "stage.h"
#include "vec_kernels.h"

namespace peft {
namespace {

// Elementwise ops hand a thread at least this many elements (smaller jobs cost more to dispatch than to run).
constexpr int64_t kGrain = 1 << 14;

// Rows handed to one thread: at least kGrain elements' worth.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)); }

}  // namespace

void activation_cpu(Act a, const void* x, DType xdt, void* y, DType ydt, int64_t n) {
  const VecKernels& k = vec_kernels();
  for_blocks(n, kGrain, [&](int64_t off, int64_t len) {
    float bx[kStageBlock], by[kStageBlock];
    const float* xs = stage_in(x, xdt, off, len, bx);
    float* ys = stage_dst(y, ydt, off, by);
    k.act_forward(a, xs, ys, len);
    stage_out(y, ydt, off, len, ys);
  });
}

void activation_backward_cpu(Act a, const void* x, DType xdt, const void* dy, DType dydt, void* dx, DType dxdt, int64_t n) {
  const VecKernels& k = vec_kernels();
  for_blocks(n, kGrain, [&](int64_t off, int64_t len) {
    float bx[kStageBlock], bdy[kStageBlock], bdx[kStageBlock];
    const float* xs = stage_in(x, xdt, off, len, bx);
    const float* dys = stage_in(dy, dydt, off, len, bdy);
    float* dxs = stage_dst(dx, dxdt, off, bdx);
    k.act_backward(a, xs, dys, dxs, len);
    stage_out(dx, dxdt, off, len, dxs);
  });
}

void log_softmax_cpu(const void* x, DType xdt, void* y, DType ydt, int64_t rows, int64_t cols) {
  if (cols == 0) return;
  const VecKernels& k = vec_kernels();
  parallel_for(rows, row_grain(cols), [&](int64_t rb, int64_t re) {
    float bx[kStageBlock], by[kStageBlock];
    for (int64_t r = rb; r < re; r++) {
      int64_t base = r * cols;
      LaneMax mx;
      for (int64_t o = 0; o < cols; o += kStageBlock) {
        int64_t len = std::min(kStageBlock, cols - o);
        mx.add(stage_in(x, xdt, base + o, len, bx), len);
      }
      float m = mx.total();
      LaneSum se;
      for (int64_t o = 0; o < cols; o += kStageBlock) {
        int64_t len = std::min(kStageBlock, cols - o);
        k.exp_shift(stage_in(x, xdt, base + o, len, bx), m, 0.0f, by, len);
        se.add(by, len);
      }
      float lse = std::log(se.total());
      for (int64_t o = 0; o < cols; o += kStageBlock) {
        int64_t len = std::min(kStageBlock, cols - o);
        const float* xs = stage_in(x, xdt, base + o, len, bx);
        float* ys = stage_dst(y, ydt, base + o, by);
        for (int64_t i = 0; i < len; i++) ys[i] = (xs[i] - m) - lse;
        stage_out(y, ydt, base + o, len, ys);
      }
    }
  });
}

void log_softmax_backward_cpu(const void* y, DType ydt, const void* dy, DType dydt, void* dx, DType dxdt, int64_t rows,
                              int64_t cols) {
  if (cols == 0) return;
  const VecKernels& k = vec_kernels();
  parallel_for(rows, row_grain(cols), [&](int64_t rb, int64_t re) {
    float by[kStageBlock], bdy[kStageBlock], bdx[kStageBlock];
    for (int64_t r = rb; r < re; r++) {
      int64_t base = r * cols;
      LaneSum sdy;
      for (int64_t o = 0; o < cols; o += kStageBlock) {
        int64_t len = std::min(kStageBlock, cols - o);
        sdy.add(stage_in(dy, dydt, base + o, len, bdy), len);
      }
      float s = sdy.total();
      for (int64_t o = 0; o < cols; o += kStageBlock) {
        int64_t len = std::min(kStageBlock, cols - o);
        const float* ys = stage_in(y, ydt, base + o, len, by);
        const float* dys = stage_in(dy, dydt, base + o, len, bdy);
        float* dxs = stage_dst(dx, dxdt, base + o, bdx);
        k.exp_shift(ys, 0.0f, 0.0f, dxs, len);  // e^y lands where dx goes, then dx is formed in place
        for (int64_t i = 0; i < len; i++) dxs[i] = dys[i] - dxs[i] * s;
        stage_out(dx, dxdt, base + o, len, dxs);
      }
    }
  });
}

void dropout_cpu(const void* x, DType xdt, void* y, DType ydt, int64_t n, double p, uint64_t seed, uint64_t stream) {
  RngKey key = rng_key(seed, stream);
  // u is a multiple of 2^-24, so u >= p exactly when u >= ceil(p * 2^24) / 2^24 (a float, exact).
  const float keep_from = static_cast<float>(std::ceil(p * 16777216.0) / 16777216.0);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const VecKernels& k = vec_kernels();
  for_blocks(n, kGrain / 4, [&](int64_t off, int64_t len) {
    float mask[kStageBlock], bx[kStageBlock], by[kStageBlock];
    // off is a multiple of 4, so element off + i draws from Philox block (off + i) / 4, lane i % 4.
    k.dropout_mask(key, static_cast<uint64_t>(off / 4), (len + 3) / 4, keep_from, scale, mask);
    float* ys = stage_dst(y, ydt, off, by);
    if (x) {
      // x * 0 (not 0) for dropped elements: NaN and inf propagate as in PyTorch's input * mask.
      const float* xs = stage_in(x, xdt, off, len, bx);
      for (int64_t i = 0; i < len; i++) ys[i] = xs[i] * mask[i];
    } else {
      std::memcpy(ys, mask, static_cast<size_t>(len) * sizeof(float));
    }
    stage_out(y, ydt, off, len, ys);
  });
}

int64_t load_id(const void* ids, DType idt, int64_t i) {
  return idt == DType::I64 ? static_cast<const int64_t*>(ids)[i] : static_cast<const int32_t*>(ids)[i];
}

int64_t first_bad_id(const void* ids, DType idt, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; i++) {
    int64_t id = load_id(ids, idt, i);
    if (id < 0 || id >= vocab) return i;
  }
  return -1;
}

void embedding_cpu(const void* ids, DType idt, int64_t n, const void* w, void* out, size_t row_bytes) {
  // A thread copies at least 64 KiB.
  int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(static_cast<int64_t>(row_bytes), 1));
  parallel_for(n, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++)
      std::memcpy(static_cast<char*>(out) + i * row_bytes, static_cast<const char*>(w) + load_id(ids, idt, i) * row_bytes,
                  row_bytes);
  });
}

void embedding_backward_cpu(const void* ids, DType idt, int64_t n, const void* dy, DType dydt, void* dw, DType dwdt,
                            int64_t dim) {
  if (n == 0 || dim == 0) return;
  // Each destination row goes to one thread: threads never share a row and every row sums in a fixed order.
  const IdGroups grp = group_ids(ids, idt, n);
  const int64_t groups = grp.count();
  parallel_for(groups, row_grain(dim), [&](int64_t gb, int64_t ge) {
    float acc[kStageBlock], buf[kStageBlock];
    for (int64_t g = gb; g < ge; g++) {
      const int64_t row = grp.id_of(g);
      for (int64_t o = 0; o < dim; o += kStageBlock) {
        int64_t len = std::min(kStageBlock, dim - o);
        float* dst = stage_inout(dw, dwdt, row * dim + o, len, acc);
        for (int64_t k = grp.starts[g]; k < grp.starts[g + 1]; k++) {
          const float* src = stage_in(dy, dydt, grp.order[k] * dim + o, len, buf);
          for (int64_t i = 0; i < len; i++) dst[i] += src[i];
        }
        stage_out(dw, dwdt, row * dim + o, len, dst);
      }
    }
  });
}

void sum_rows_cpu(const void* x, DType xdt, int64_t rows, int64_t cols, void* out, DType odt, bool accumulate) {
  if (cols == 0) return;
  // Rows split into at most 64 chunks whose size depends on `rows` only; each chunk sums its rows in order
  // into its own partial, then partials are added in chunk order.
  int64_t chunk = std::max<int64_t>(256, (rows + 63) / 64);
  int64_t chunks = std::max<int64_t>(1, (rows + chunk - 1) / chunk);
  int64_t col_blocks = (cols + kStageBlock - 1) / kStageBlock;
  std::vector<float> partial(static_cast<size_t>(chunks * cols), 0.0f);
  parallel_for(chunks * col_blocks, std::max<int64_t>(1, kGrain / (chunk * kStageBlock)), [&](int64_t b, int64_t e) {
    float buf[kStageBlock];
    for (int64_t item = b; item < e; item++) {
      int64_t c = item / col_blocks, o = (item % col_blocks) * kStageBlock;
      int64_t len = std::min(kStageBlock, cols - o);
      float* acc = partial.data() + c * cols + o;
      for (int64_t r = c * chunk; r < std::min(rows, (c + 1) * chunk); r++) {
        const float* xs = stage_in(x, xdt, r * cols + o, len, buf);
        for (int64_t i = 0; i < len; i++) acc[i] += xs[i];
      }
    }
  });
  parallel_for(col_blocks, 1, [&](int64_t b, int64_t e) {
    float bo[kStageBlock], sum[kStageBlock];
    for (int64_t blk = b; blk < e; blk++) {
      int64_t o = blk * kStageBlock, len = std::min(kStageBlock, cols - o);
      for (int64_t i = 0; i < len; i++) sum[i] = partial[o + i];
      for (int64_t c = 1; c < chunks; c++)
        for (int64_t i = 0; i < len; i++) sum[i] += partial[c * cols + o + i];
      float* dst = accumulate ? stage_inout(out, odt, o, len, bo) : stage_dst(out, odt, o, bo);
      for (int64_t i = 0; i < len; i++) dst[i] = accumulate ? dst[i] + sum[i] : sum[i];
      stage_out(out, odt, o, len, dst);
    }
  });
}

void axpy_cpu(void* a, DType adt, const void* b, DType bdt, float alpha, int64_t n) {
  for_blocks(n, kGrain, [&](int64_t off, int64_t len) {
    float ba[kStageBlock], bb[kStageBlock];
    float* as = stage_inout(a, adt, off, len, ba);
    const float* bs = stage_in(b, bdt, off, len, bb);
    for (int64_t i = 0; i < len; i++) as[i] = as[i] + alpha * bs[i];
    stage_out(a, adt, off, len, as);
  });
}

void scale_cpu(void* a, DType adt, float alpha, int64_t n) {
  for_blocks(n, kGrain, [&](int64_t off, int64_t len) {
    float ba[kStageBlock];
    float* as = stage_inout(a, adt, off, len, ba);
    for (int64_t i = 0; i < len; i++) as[i] = as[i] * alpha;
    stage_out(a, adt, off, len, as);
  });
}

void mul_cpu(const void* a, DType adt, const void* b, DType bdt, void* y, DType ydt, int64_t n) {
  for_blocks(n, kGrain, [&](int64_t off, int64_t len) {
    float ba[kStageBlock], bb[kStageBlock], by[kStageBlock];
    const float* as = stage_in(a, adt, off, len, ba);
    const float* bs = stage_in(b, bdt, off, len, bb);
    float* ys = stage_dst(y, ydt, off, by);
    for (int64_t i = 0; i < len; i++) ys[i] = as[i] * bs[i];
    stage_out(y, ydt, off, len, ys);
  });
}

void fill_cpu(void* a, DType dt, int64_t n, double value) {
  alignas(8) unsigned char one[8];
  from_f64_cpu(&value, one, dt, 1);
  size_t es = dtype_size(dt);
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    unsigned char* p = static_cast<unsigned char*>(a);
    for (int64_t i = b; i < e; i++) std::memcpy(p + i * es, one, es);
  });
}

}  // namespace peft
