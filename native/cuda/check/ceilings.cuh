// The device's ceilings, measured by the bench itself: copy bandwidth (a device-to-device copy of 1 GiB),
// an f32 FMA loop (registers only) and f16 and int8 mma loops (WMMA m16n16k16 on fragments in registers).
#pragma once
#include <chrono>

#include "../compat.cuh"
#include "../cuda_ops.h"

namespace peft::PEFT_CUDA_NS {

struct Ceilings {
  double copy_gbs = 0, fma_tflops = 0, mma_tflops = 0, int8_tops = 0;
};

namespace ceiling_kernels {

constexpr int kFmaIters = 4096, kMmaIters = 2048;

// 8 independent FMA chains per thread, so the pipelines stay full; the result is stored so nothing folds.
__global__ void __launch_bounds__(256) fma_loop(float* out, float a, float b) {
  float v[8];
PEFT_UNROLL
  for (int j = 0; j < 8; ++j) v[j] = float(threadIdx.x + j);
  for (int i = 0; i < kFmaIters; ++i)
PEFT_UNROLL
    for (int j = 0; j < 8; ++j) v[j] = fmaf(v[j], a, b);
  float s = 0;
PEFT_UNROLL
  for (int j = 0; j < 8; ++j) s += v[j];
  gstore(out + blockIdx.x * blockDim.x + threadIdx.x, s);
}

// Each warp chains 4 independent accumulators through kMmaIters m16n16k16 MMAs of In inputs (every one v).
template <class In, class Acc>
__global__ void __launch_bounds__(128) mma_loop(Acc* out, In v) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, In, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, In, wmma::col_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, Acc> acc[4];
  wmma::fill_fragment(a, v);
  wmma::fill_fragment(b, v);
PEFT_UNROLL
  for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[j], Acc(0));
  for (int i = 0; i < kMmaIters; ++i)
PEFT_UNROLL
    for (int j = 0; j < 4; ++j) wmma::mma_sync(acc[j], a, b, acc[j]);
  for (int j = 1; j < 4; ++j)
    for (int e = 0; e < acc[0].num_elements; ++e) acc[0].x[e] += acc[j].x[e];
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  wmma::store_matrix_sync(out + warp * 256, acc[0], 16, wmma::mem_row_major);
}

template <class F>
double timed(int reps, F&& f) {
  f();
  cudaDeviceSynchronize();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  cudaDeviceSynchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

}  // namespace ceiling_kernels

inline Ceilings measure_ceilings() {
  using namespace ceiling_kernels;
  Ceilings c;
  int sms = 1;
#if !PEFT_CUDA_EMULATED
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
#endif
  const size_t bytes = size_t(1) << 30;
  void *src = nullptr, *dst = nullptr;
  float* out = nullptr;
  cudaMalloc(&src, bytes);
  cudaMalloc(&dst, bytes);
  cudaMalloc(reinterpret_cast<void**>(&out), size_t(sms) * 32 * 256 * 64 * 4);
  c.copy_gbs = 2.0 * double(bytes) / timed(10, [&] { cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice); }) / 1e9;
  const int fma_blocks = sms * 32;
  c.fma_tflops = 2.0 * 8 * kFmaIters * double(fma_blocks) * 256 /
                 timed(5, [&] { LAUNCH(dim3(fma_blocks), 256, 0, 0, fma_loop)(out, 0.999f, 0.001f); }) / 1e12;
  const int mma_blocks = sms * 16;  // 4 warps each
  c.mma_tflops = 2.0 * 16 * 16 * 16 * 4 * double(kMmaIters) * mma_blocks * 4 /
                 timed(5, [&] { LAUNCH(dim3(mma_blocks), 128, 0, 0, mma_loop<__half, float>)(out, __float2half(0.001f)); }) / 1e12;
  c.int8_tops = 2.0 * 16 * 16 * 16 * 4 * double(kMmaIters) * mma_blocks * 4 /
                timed(5, [&] { LAUNCH(dim3(mma_blocks), 128, 0, 0, mma_loop<signed char, int>)(reinterpret_cast<int*>(out), (signed char)1); }) / 1e12;
  cudaFree(src);
  cudaFree(dst);
  cudaFree(out);
  return c;
}

}  // namespace peft::PEFT_CUDA_NS
