// The mean-reduced losses' kernels. Each writes its gradient and per-row (or per-chunk) partial losses in
// double; the host adds the partials in order, as the CPU backend does, so the loss does not depend on
// scheduling. Rows whose target is the ignore index keep a zero gradient row and a zero partial.
#include "block_reduce.cuh"
#include "dtype.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

constexpr int kLossThreads = 256;

__device__ __forceinline__ int64_t load_index(const void* p, DType dt, int64_t i) {
  return dt == DType::I64 ? gload(static_cast<const int64_t*>(p) + i) : int64_t(gload(static_cast<const int32_t*>(p) + i));
}

// One thread per row: nll[r] = logp[r, t]; grad[r, t] = g (= -1 / count).
__global__ void __launch_bounds__(kLossThreads) nll_loss_kernel(const void* logp, DType ldt, const void* target,
                                                                DType tdt, int64_t rows, int64_t classes,
                                                                int64_t ignore, float g, void* grad, DType gdt,
                                                                double* nll_rows) {
  PEFT_GRID_STRIDE(r, rows) {
    const int64_t t = load_index(target, tdt, r);
    if (t == ignore) {
      gstore(nll_rows + r, 0.0);
      continue;
    }
    gstore(nll_rows + r, double(load_f32(logp, ldt, r * classes + t)));
    store_f32(grad, gdt, r * classes + t, g);
  }
}

// One block per row: log-softmax relative to the row max, nll and (with smoothing) the sum of -logp over
// the row, and grad = (softmax - (1 - eps) [c == t] - eps / C) / count.
__global__ void __launch_bounds__(kLossThreads) cross_entropy_kernel(const void* logits, DType ldt, const void* target,
                                                                     DType tdt, int64_t classes, int64_t ignore,
                                                                     float inv, float on_target, float uniform,
                                                                     bool smoothing, void* grad, DType gdt,
                                                                     double* nll_rows, double* smooth_rows) {
  SMEM_ARRAY(float, scratch, [kLossThreads / 32]);
  const int64_t r = blockIdx.x, base = r * classes;
  const int64_t t = load_index(target, tdt, r);
  if (t == ignore) {  // uniform across the block: no thread reaches a barrier
    if (threadIdx.x == 0) {
      gstore(nll_rows + r, 0.0);
      gstore(smooth_rows + r, 0.0);
    }
    return;
  }
  float m = -INFINITY;
  for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) m = MaxOp()(m, load_f32(logits, ldt, base + c));
  m = block_reduce(m, MaxOp(), &scratch[0]);
  float se = 0.f, gap = 0.f;
  for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
    const float z = load_f32(logits, ldt, base + c);
    se += expf(z - m);
    if (smoothing) gap += m - z;
  }
  const float log_sum = logf(block_reduce(se, SumOp(), &scratch[0]));
  if (smoothing) gap = block_reduce(gap, SumOp(), &scratch[0]);
  if (threadIdx.x == 0) {
    gstore(nll_rows + r, (double(m) - load_f32(logits, ldt, base + t)) + double(log_sum));
    gstore(smooth_rows + r, smoothing ? double(gap) + double(classes) * log_sum : 0.0);
  }
  for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
    const float p = expf((load_f32(logits, ldt, base + c) - m) - log_sum);
    store_f32(grad, gdt, base + c, ((c == t ? p - on_target : p) - uniform) * inv);
  }
}

// Block b covers elements [b * kMseChunk, (b + 1) * kMseChunk): grad = (y - t) * norm, and the chunk's sum
// of squared differences in double.
__global__ void __launch_bounds__(kLossThreads) mse_loss_kernel(const void* y, DType ydt, const void* t, DType tdt,
                                                                int64_t n, float norm, void* grad, DType gdt,
                                                                double* partials) {
  SMEM_ARRAY(double, scratch, [kLossThreads / 32]);
  const int64_t b0 = int64_t(blockIdx.x) * kMseChunk, end = b0 + kMseChunk < n ? b0 + kMseChunk : n;
  double s = 0;
  for (int64_t i = b0 + threadIdx.x; i < end; i += blockDim.x) {
    const float d = load_f32(y, ydt, i) - load_f32(t, tdt, i);
    s += double(d) * d;
    store_f32(grad, gdt, i, d * norm);
  }
  s = block_reduce(s, SumOp(), &scratch[0]);
  if (threadIdx.x == 0) gstore(partials + blockIdx.x, s);
}

}  // namespace

cudaError_t launch_nll_loss(const void* logp, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes,
                            int64_t ignore, float g, void* grad, DType gdt, double* nll_rows) {
  LAUNCH(elt_grid(rows), kLossThreads, 0, 0, nll_loss_kernel)(logp, ldt, target, tdt, rows, classes, ignore, g, grad,
                                                              gdt, nll_rows);
  return cudaGetLastError();
}

cudaError_t launch_cross_entropy(const void* logits, DType ldt, const void* target, DType tdt, int64_t rows,
                                 int64_t classes, int64_t ignore, float inv, float on_target, float uniform,
                                 bool smoothing, void* grad, DType gdt, double* nll_rows, double* smooth_rows) {
  LAUNCH(dim3(unsigned(rows)), kLossThreads, 0, 0, cross_entropy_kernel)(logits, ldt, target, tdt, classes, ignore, inv,
                                                                         on_target, uniform, smoothing, grad, gdt,
                                                                         nll_rows, smooth_rows);
  return cudaGetLastError();
}

cudaError_t launch_mse_loss(const void* y, DType ydt, const void* t, DType tdt, int64_t n, float norm, void* grad,
                            DType gdt, double* partials) {
  LAUNCH(dim3(unsigned((n + kMseChunk - 1) / kMseChunk)), kLossThreads, 0, 0, mse_loss_kernel)(y, ydt, t, tdt, n, norm,
                                                                                                grad, gdt, partials);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
