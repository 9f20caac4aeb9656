// Host-side launchers of the kernel families (one .cu file each), used by cuda_ops.cu. Arguments are
// already validated; each returns the launch status (cudaGetLastError()).
#pragma once
#include <cstdint>

#include "compat.cuh"
#include "../core/dtype.h"

namespace peft::PEFT_CUDA_NS {

constexpr int kEltThreads = 256;
// Grid-stride element-wise kernels: enough blocks to fill a large GPU, then each thread loops.
inline dim3 elt_grid(int64_t n) {
  int64_t blocks = (n + kEltThreads - 1) / kEltThreads;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : blocks > 8192 ? 8192 : blocks));
}

// convert.cu: dst = src converted (f32/f16/bf16, sdt != ddt); bytes-wise copy of n elements of any dtype.
cudaError_t launch_convert(const void* src, DType sdt, void* dst, DType ddt, int64_t n);
cudaError_t launch_copy(const void* src, void* dst, int64_t bytes);
// elementwise.cu: out = a + b; y = alpha*x + beta*y (y not read when beta == 0).
cudaError_t launch_add(const void* a, const void* b, void* out, DType dt, int64_t n);
cudaError_t launch_axpby(float alpha, const void* x, float beta, void* y, DType dt, int64_t n);
// gemm_wmma.cu: y[M,N] = x[M,K] * w[N,K]^T (+ bias[N]); in_dt f16 or bf16; N <= 65535 * 64.
cudaError_t launch_gemm_nt(const void* x, const void* w, const void* bias, DType bias_dt, void* y, DType in_dt,
                           DType out_dt, int64_t M, int64_t N, int64_t K);
constexpr int64_t kGemmTileN = 64;
constexpr int64_t kGemmTileM = 64;

}  // namespace peft::PEFT_CUDA_NS
