// Row-wise kernels: log-softmax over the last dimension and its backward (one block per row, f32
// reductions), and the column sums that give bias gradients.
#include "block_reduce.cuh"
#include "dtype.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

constexpr int kRowThreads = 256;

// y = (x - max) - log(sum(exp(x - max))): relative to the row max, so a large common offset costs nothing.
__global__ void __launch_bounds__(kRowThreads) log_softmax_kernel(const void* x, DType xdt, void* y, DType ydt,
                                                                  int64_t cols) {
  SMEM_ARRAY(float, scratch, [kRowThreads / 32]);
  const int64_t base = int64_t(blockIdx.x) * cols;
  float m = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = MaxOp()(m, load_f32(x, xdt, base + c));
  m = block_reduce(m, MaxOp(), &scratch[0]);
  float se = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) se += expf(load_f32(x, xdt, base + c) - m);
  const float lse = logf(block_reduce(se, SumOp(), &scratch[0]));
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    store_f32(y, ydt, base + c, (load_f32(x, xdt, base + c) - m) - lse);
}

// dx = dy - exp(y) * sum(dy), from the forward output y.
__global__ void __launch_bounds__(kRowThreads) log_softmax_backward_kernel(const void* y, DType ydt, const void* dy,
                                                                           DType dydt, void* dx, DType dxdt,
                                                                           int64_t cols) {
  SMEM_ARRAY(float, scratch, [kRowThreads / 32]);
  const int64_t base = int64_t(blockIdx.x) * cols;
  float s = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += load_f32(dy, dydt, base + c);
  s = block_reduce(s, SumOp(), &scratch[0]);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    store_f32(dx, dxdt, base + c, load_f32(dy, dydt, base + c) - expf(load_f32(y, ydt, base + c)) * s);
}

// A block sums 32 columns: its 8 row lanes each sum every 8th row in order, then one thread per column
// adds the 8 partials in lane order (a fixed order: the same result in every run).
constexpr int kSumCols = 32, kSumLanes = 8;
__global__ void __launch_bounds__(kSumCols* kSumLanes) sum_rows_kernel(const void* x, DType xdt, int64_t rows,
                                                                       int64_t cols, void* out, DType odt,
                                                                       bool accumulate) {
  SMEM_ARRAY(float, part, [kSumLanes][kSumCols]);
  const int cx = threadIdx.x % kSumCols, lane = threadIdx.x / kSumCols;
  const int64_t c = int64_t(blockIdx.x) * kSumCols + cx;
  float s = 0.f;
  if (c < cols)
    for (int64_t r = lane; r < rows; r += kSumLanes) s += load_f32(x, xdt, r * cols + c);
  part[lane][cx] = s;
  __syncthreads();
  if (lane == 0 && c < cols) {
    float t = part[0][cx];
    for (int l = 1; l < kSumLanes; ++l) t += part[l][cx];
    if (accumulate) t += load_f32(out, odt, c);
    store_f32(out, odt, c, t);
  }
}

}  // namespace

cudaError_t launch_log_softmax(const void* x, DType xdt, void* y, DType ydt, int64_t rows, int64_t cols) {
  LAUNCH(dim3(unsigned(rows)), kRowThreads, 0, 0, log_softmax_kernel)(x, xdt, y, ydt, cols);
  return cudaGetLastError();
}

cudaError_t launch_log_softmax_backward(const void* y, DType ydt, const void* dy, DType dydt, void* dx, DType dxdt,
                                        int64_t rows, int64_t cols) {
  LAUNCH(dim3(unsigned(rows)), kRowThreads, 0, 0, log_softmax_backward_kernel)(y, ydt, dy, dydt, dx, dxdt, cols);
  return cudaGetLastError();
}

cudaError_t launch_sum_rows(const void* x, DType xdt, int64_t rows, int64_t cols, void* out, DType odt, bool accumulate) {
  const dim3 grid(unsigned((cols + kSumCols - 1) / kSumCols));
  LAUNCH(grid, kSumCols * kSumLanes, 0, 0, sum_rows_kernel)(x, xdt, rows, cols, out, odt, accumulate);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
