// Host-side launchers of the kernel families (one .cu file each), used by cuda_ops.cu. Arguments are
// already validated; each returns the launch status (cudaGetLastError()).
#pragma once
#include <cstdint>

#include "compat.cuh"
#include "cuda_ops.h"
#include "../core/dtype.h"

namespace peft::PEFT_CUDA_NS {

constexpr int kEltThreads = 256;
// Grid-stride element-wise kernels: enough blocks to fill a large GPU, then each thread loops.
inline dim3 elt_grid(int64_t n) {
  int64_t blocks = (n + kEltThreads - 1) / kEltThreads;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : blocks > 8192 ? 8192 : blocks));
}

// The loop of a grid-stride element-wise kernel: i over [0, n) for this thread.
#define PEFT_GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// convert.cu: dst = src converted (f32/f16/bf16, sdt != ddt); bytes-wise copy of n elements of any dtype.
cudaError_t launch_convert(const void* src, DType sdt, void* dst, DType ddt, int64_t n);
cudaError_t launch_copy(const void* src, void* dst, int64_t bytes);
// elementwise.cu: out = a + b; y = alpha*x + beta*y (y not read when beta == 0).
cudaError_t launch_add(const void* a, const void* b, void* out, DType dt, int64_t n);
cudaError_t launch_axpby(float alpha, const void* x, float beta, void* y, DType dt, int64_t n);
// gemm_wmma.cu: y[M,N] = x[M,K] * w[N,K]^T (+ rank) (+ bias[N]); in_dt f16 or bf16; N <= 65535 * 64.
cudaError_t launch_gemm_nt(const void* x, const void* w, const void* bias, DType bias_dt, void* y, DType in_dt,
                           DType out_dt, int64_t M, int64_t N, int64_t K, const CudaRank& rank = {});
constexpr int64_t kGemmTileN = 64;
constexpr int64_t kGemmTileM = 64;
// gemm_simt.cu: the f32 SIMT GEMM (any strides, f32/f16/bf16 operands); M <= 2^31 * 128, N <= 65535 * 128.
cudaError_t launch_gemm_simt(const CudaGemm& g);
constexpr int64_t kSimtTileM = 128;
constexpr int64_t kSimtTileN = 128;
// gemm_tc.cu: the same product on tensor cores: A and B both f32 (TF32, inputs rounded as
// cvt.rna.tf32.f32), both f16 or both bf16; N <= 65535 * 64.
cudaError_t launch_gemm_tc(const CudaGemm& g);
constexpr int64_t kTcTileM = 64;
constexpr int64_t kTcTileN = 64;
// activation.cu: element-wise activations and their backward; dropout; axpy / scale / mul; fill.
cudaError_t launch_activation(int act, const void* x, DType xdt, void* y, DType ydt, int64_t n);
cudaError_t launch_activation_backward(int act, const void* x, DType xdt, const void* dy, DType dydt, void* dx,
                                       DType dxdt, int64_t n);
cudaError_t launch_dropout(const void* x, DType xdt, void* y, DType ydt, int64_t n, float keep_from, float scale,
                           uint64_t seed, uint64_t stream);
cudaError_t launch_axpy(void* a, DType adt, const void* b, DType bdt, float alpha, int64_t n);
cudaError_t launch_scale_inplace(void* a, DType adt, float alpha, int64_t n);
cudaError_t launch_mul(const void* a, DType adt, const void* b, DType bdt, void* y, DType ydt, int64_t n);
cudaError_t launch_fill(void* dst, uint64_t pattern, int elem_bytes, int64_t n);
// rows.cu: row-wise log-softmax (one block per row) and its backward; column sums (bias gradients).
cudaError_t launch_log_softmax(const void* x, DType xdt, void* y, DType ydt, int64_t rows, int64_t cols);
cudaError_t launch_log_softmax_backward(const void* y, DType ydt, const void* dy, DType dydt, void* dx, DType dxdt,
                                        int64_t rows, int64_t cols);
cudaError_t launch_sum_rows(const void* x, DType xdt, int64_t rows, int64_t cols, void* out, DType odt, bool accumulate);
// embedding.cu: row gathers; the backward over destination groups (rows[g] gets the dy rows
// order[starts[g] .. starts[g+1]) in that order).
cudaError_t launch_embedding(const void* ids, DType idt, int64_t n, const void* w, void* out, int64_t row_bytes);
cudaError_t launch_embedding_backward(const int64_t* rows, const int64_t* starts, const int64_t* order, int64_t groups,
                                      const void* dy, DType dydt, void* dw, DType dwdt, int64_t dim);
// losses.cu: per-row (nll, cross-entropy) or per-block (mse) double partial losses plus the gradient.
// nll_rows / smooth_rows: one double per row (0 for ignored rows); mse: one per block of kMseChunk elements.
cudaError_t launch_nll_loss(const void* logp, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes,
                            int64_t ignore, float g, void* grad, DType gdt, double* nll_rows);
cudaError_t launch_cross_entropy(const void* logits, DType ldt, const void* target, DType tdt, int64_t rows,
                                 int64_t classes, int64_t ignore, float inv, float on_target, float uniform,
                                 bool smoothing, void* grad, DType gdt, double* nll_rows, double* smooth_rows);
constexpr int64_t kMseChunk = 4096;
cudaError_t launch_mse_loss(const void* y, DType ydt, const void* t, DType tdt, int64_t n, float norm, void* grad,
                            DType gdt, double* partials);
// adamw.cu: one parameter's AdamW update.
cudaError_t launch_adamw(const CudaAdamWParam& p, const CudaAdamWScalars& s);

}  // namespace peft::PEFT_CUDA_NS
