// Element-wise dtype conversion between f32, f16 and bf16 (through f32, which holds every f16 and bf16
// value exactly, so each conversion rounds once), and a plain copy for same-dtype transfers.
#include <type_traits>

#include "dtype.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

template <class S, class D>
__global__ void __launch_bounds__(kEltThreads) convert_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    gstore(dst + i, from_f32<D>(to_f32(gload(src + i))));
}

// W is the widest word that divides the size and both addresses (up to 16 bytes), so copies of 1- and
// 2-byte dtypes still move full words when they can.
template <class W>
__global__ void __launch_bounds__(kEltThreads) copy_kernel(const W* __restrict__ src, W* __restrict__ dst, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) gstore(dst + i, gload(src + i));
}

template <class S, class D>
void convert_to(const S* src, void* dst, int64_t n) {
  if constexpr (!std::is_same_v<S, D>)  // equal dtypes go through launch_copy
    LAUNCH(elt_grid(n), kEltThreads, 0, 0, convert_kernel<S, D>)(src, static_cast<D*>(dst), n);
}

template <class S>
void convert_from(const S* src, void* dst, DType ddt, int64_t n) {
  switch (ddt) {
    case DType::F32: convert_to<S, float>(src, dst, n); break;
    case DType::F16: convert_to<S, __half>(src, dst, n); break;
    case DType::BF16: convert_to<S, __nv_bfloat16>(src, dst, n); break;
    default: break;
  }
}

template <class W>
void copy_words(const void* src, void* dst, int64_t bytes) {
  int64_t n = bytes / int64_t(sizeof(W));
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, copy_kernel<W>)(static_cast<const W*>(src), static_cast<W*>(dst), n);
}

}  // namespace

cudaError_t launch_convert(const void* src, DType sdt, void* dst, DType ddt, int64_t n) {
  switch (sdt) {
    case DType::F32: convert_from(static_cast<const float*>(src), dst, ddt, n); break;
    case DType::F16: convert_from(static_cast<const __half*>(src), dst, ddt, n); break;
    case DType::BF16: convert_from(static_cast<const __nv_bfloat16*>(src), dst, ddt, n); break;
    default: break;
  }
  return cudaGetLastError();
}

cudaError_t launch_copy(const void* src, void* dst, int64_t bytes) {
  uint64_t align = uint64_t(bytes) | reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst);
  if (align % 16 == 0) copy_words<uint4>(src, dst, bytes);
  else if (align % 8 == 0) copy_words<unsigned long long>(src, dst, bytes);
  else if (align % 4 == 0) copy_words<unsigned>(src, dst, bytes);
  else if (align % 2 == 0) copy_words<unsigned short>(src, dst, bytes);
  else copy_words<unsigned char>(src, dst, bytes);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
