// Element-wise arithmetic in f32 with one rounding to the storage dtype: out = a + b, and
// y = alpha*x + beta*y (BLAS axpby; with beta == 0, y is only written, so NaN garbage in y does not leak).
// Outputs may alias inputs element for element (in-place add / scale).
#include "dtype.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

template <class T>
__global__ void __launch_bounds__(kEltThreads) add_kernel(const T* a, const T* b, T* out, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    gstore(out + i, from_f32<T>(to_f32(gload(a + i)) + to_f32(gload(b + i))));
}

template <class T>
__global__ void __launch_bounds__(kEltThreads) axpby_kernel(float alpha, const T* x, float beta, T* y, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float v = alpha * to_f32(gload(x + i));
    if (beta != 0.f) v = fmaf(beta, to_f32(gload(y + i)), v);
    gstore(y + i, from_f32<T>(v));
  }
}

template <class T>
void add_t(const void* a, const void* b, void* out, int64_t n) {
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, add_kernel<T>)(static_cast<const T*>(a), static_cast<const T*>(b),
                                                         static_cast<T*>(out), n);
}

template <class T>
void axpby_t(float alpha, const void* x, float beta, void* y, int64_t n) {
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, axpby_kernel<T>)(alpha, static_cast<const T*>(x), beta, static_cast<T*>(y), n);
}

}  // namespace

cudaError_t launch_add(const void* a, const void* b, void* out, DType dt, int64_t n) {
  switch (dt) {
    case DType::F32: add_t<float>(a, b, out, n); break;
    case DType::F16: add_t<__half>(a, b, out, n); break;
    case DType::BF16: add_t<__nv_bfloat16>(a, b, out, n); break;
    default: break;
  }
  return cudaGetLastError();
}

cudaError_t launch_axpby(float alpha, const void* x, float beta, void* y, DType dt, int64_t n) {
  switch (dt) {
    case DType::F32: axpby_t<float>(alpha, x, beta, y, n); break;
    case DType::F16: axpby_t<__half>(alpha, x, beta, y, n); break;
    case DType::BF16: axpby_t<__nv_bfloat16>(alpha, x, beta, y, n); break;
    default: break;
  }
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
