// Host API of the LLM.int8 kernels (int8_matmul.cu), beside cuda_ops.h's and with
// its conventions (0 or a cudaError_t value plus a message; device pointers; dtype codes as peft::DType;
// synchronous), declared for both implementations: peft::cuda_gpu (nvcc) and peft::cuda_emu (emulated).
#pragma once
#include <cstdint>
#include <string>

namespace peft {
// y[M,N] = x[M,K]·dequant(CB)ᵀ + bias, bitsandbytes' LLM.int8 (native/cpu/int8.h has the CPU's contract and
// order of rounding, which this follows operation for operation): x (f32/f16/bf16) quantised per row after
// rounding to f16; with threshold > 0 the columns holding any |x16| >= threshold are outliers, left out of
// the int8 product and added in floating point; the int32 sums dequantised as f32(acc)·f32(SCx·SCB)·1/127².
struct CudaInt8Linear {
  int64_t M = 0, N = 0, K = 0;
  const void* x = nullptr;  // (M, K), contiguous
  int x_dt = 0;
  const int8_t* cb = nullptr;  // (N, K)
  const float* scb = nullptr;  // (N)
  const void* bias = nullptr;  // (N) or null
  int bias_dt = 0;
  float threshold = 0.f;
  void* y = nullptr;  // (M, N) in y_dt
  int y_dt = 0;
  int32_t* raw = nullptr;  // when set: the int32 products x_q·CBᵀ (M, N) instead of y
  // Optional rank-r term added in the epilogue in f32: y += u (M, r)·bt (r, N), both f32 (fused LoRA).
  const float* u = nullptr;
  const float* bt = nullptr;
  int64_t r = 0;
  // Kernel choice for tests: 0 by shape (the __dp4a kernel for M <= kInt8Dp4aRows, tensor cores above),
  // 1 always __dp4a, 2 always tensor cores.
  int path = 0;
};
constexpr int64_t kInt8Dp4aRows = 8;
}  // namespace peft

#define PEFT_CUDA_INT8_DECLARATIONS                                                                              \
  /* CB (rows, cols) i8 and SCB (rows) f32 from W (f32/f16/bf16) as native/cpu/int8.h's int8_quantize_rows;      \
     *bad_row: -1, or the first row holding a value not finite in f16 (rows are written regardless). */        \
  int cuda_int8_quantize(const void* w, int dt, int64_t rows, int64_t cols, int8_t* cb, float* scb,            \
                         int64_t* bad_row, std::string* err);                                                  \
  int cuda_int8_linear(const CudaInt8Linear& a, std::string* err);                                             \
  /* dx (M, K) in dx_dt = dy (M, N)·(CB·SCB/127): dy's columns scaled as they are staged, CB widened. */       \
  int cuda_int8_linear_grad_input(const void* dy, int dy_dt, int64_t M, const int8_t* cb, const float* scb,    \
                                  int64_t N, int64_t K, void* dx, int dx_dt, std::string* err);

namespace peft {
namespace cuda_gpu {
PEFT_CUDA_INT8_DECLARATIONS
}
namespace cuda_emu {
PEFT_CUDA_INT8_DECLARATIONS
}
}  // namespace peft
