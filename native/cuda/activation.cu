// Element-wise training ops, each element loaded as f32 from its runtime dtype, computed in f32 (GELU's erf
// form in double, as the CPU backend does) and rounded once into the output's dtype: activations and their
// backward, dropout (the CPU's Philox masks, bit for bit), a += alpha b, a *= alpha, a * b, and fill.
#include <cstring>

#include "../core/philox.h"
#include "dtype.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

// peft::Act's order.
constexpr int kRelu = 0, kGelu = 1, kGeluTanh = 2, kSilu = 3;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kKappa = 0.044715f;

// sigmoid(z) and 1 - sigmoid(z) = sigmoid(-z), each without cancellation.
__device__ __forceinline__ void sigmoid_pair(float z, float& s, float& c) {
  s = 1.0f / (1.0f + expf(-z));
  c = 1.0f / (1.0f + expf(z));
}
// GELU (tanh form) as x sigmoid(2u), u = √(2/π)(x + 0.044715 x³): no 1 + tanh cancelling for negative x.
__device__ __forceinline__ float tanh_u(float x) { return kSqrt2OverPi * (x + kKappa * x * x * x); }

__device__ __forceinline__ float act_forward(int act, float x) {
  float s, c;
  switch (act) {
    case kRelu: return x < 0.0f ? 0.0f : x;  // NaN passes through, as in PyTorch
    case kGelu: return float(0.5 * double(x) * erfc(-double(x) * kInvSqrt2));
    case kGeluTanh: sigmoid_pair(2.0f * tanh_u(x), s, c); return x * s;
    case kSilu:
    default: sigmoid_pair(x, s, c); return x * s;
  }
}

__device__ __forceinline__ float act_backward(int act, float x, float dy) {
  float s, c;
  switch (act) {
    case kRelu: return x > 0.0f ? dy : 0.0f;
    case kGelu: {  // Φ(x) + x φ(x)
      double xd = x, cdf = 0.5 * erfc(-xd * kInvSqrt2), pdf = exp(-0.5 * xd * xd) * kInvSqrt2Pi;
      return float(double(dy) * (cdf + xd * pdf));
    }
    case kGeluTanh: {  // s + 2x s (1 - s) u'
      sigmoid_pair(2.0f * tanh_u(x), s, c);
      const float du = kSqrt2OverPi * (1.0f + 3.0f * kKappa * x * x);
      return dy * (s + 2.0f * x * s * c * du);
    }
    case kSilu:
    default: sigmoid_pair(x, s, c); return dy * (s * (1.0f + x * c));
  }
}

__global__ void __launch_bounds__(kEltThreads) activation_kernel(int act, const void* x, DType xdt, void* y, DType ydt,
                                                                 int64_t n) {
  PEFT_GRID_STRIDE(i, n) store_f32(y, ydt, i, act_forward(act, load_f32(x, xdt, i)));
}

__global__ void __launch_bounds__(kEltThreads) activation_backward_kernel(int act, const void* x, DType xdt,
                                                                          const void* dy, DType dydt, void* dx,
                                                                          DType dxdt, int64_t n) {
  PEFT_GRID_STRIDE(i, n) store_f32(dx, dxdt, i, act_backward(act, load_f32(x, xdt, i), load_f32(dy, dydt, i)));
}

// One thread per Philox block of 4 elements (element i draws lane i % 4 of block i / 4, as on the CPU).
// x * 0 (not 0) for dropped elements, so NaN and inf propagate as in PyTorch's input * mask.
__global__ void __launch_bounds__(kEltThreads) dropout_kernel(const void* x, DType xdt, void* y, DType ydt, int64_t n,
                                                              float keep_from, float scale, uint32_t k0, uint32_t k1) {
  PEFT_GRID_STRIDE(b, (n + 3) / 4) {
    const Philox4x32 r = philox4x32_10(uint64_t(b), k0, k1);
PEFT_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int64_t i = b * 4 + j;
      if (i >= n) break;
      const float mask = u32_to_unit(r.v[j]) >= keep_from ? scale : 0.0f;
      store_f32(y, ydt, i, x ? load_f32(x, xdt, i) * mask : mask);
    }
  }
}

__global__ void __launch_bounds__(kEltThreads) axpy_kernel(void* a, DType adt, const void* b, DType bdt, float alpha,
                                                           int64_t n) {
  PEFT_GRID_STRIDE(i, n) store_f32(a, adt, i, load_f32(a, adt, i) + alpha * load_f32(b, bdt, i));
}

__global__ void __launch_bounds__(kEltThreads) scale_kernel(void* a, DType adt, float alpha, int64_t n) {
  PEFT_GRID_STRIDE(i, n) store_f32(a, adt, i, load_f32(a, adt, i) * alpha);
}

__global__ void __launch_bounds__(kEltThreads) mul_kernel(const void* a, DType adt, const void* b, DType bdt, void* y,
                                                          DType ydt, int64_t n) {
  PEFT_GRID_STRIDE(i, n) store_f32(y, ydt, i, load_f32(a, adt, i) * load_f32(b, bdt, i));
}

template <class W>
__global__ void __launch_bounds__(kEltThreads) fill_kernel(W* dst, W value, int64_t n) {
  PEFT_GRID_STRIDE(i, n) gstore(dst + i, value);
}

template <class W>
void fill_words(void* dst, uint64_t pattern, int64_t n) {
  W v;
  memcpy(&v, &pattern, sizeof(W));  // the low bytes on a little-endian host and device
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, fill_kernel<W>)(static_cast<W*>(dst), v, n);
}

}  // namespace

cudaError_t launch_activation(int act, const void* x, DType xdt, void* y, DType ydt, int64_t n) {
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, activation_kernel)(act, x, xdt, y, ydt, n);
  return cudaGetLastError();
}

cudaError_t launch_activation_backward(int act, const void* x, DType xdt, const void* dy, DType dydt, void* dx,
                                       DType dxdt, int64_t n) {
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, activation_backward_kernel)(act, x, xdt, dy, dydt, dx, dxdt, n);
  return cudaGetLastError();
}

cudaError_t launch_dropout(const void* x, DType xdt, void* y, DType ydt, int64_t n, float keep_from, float scale,
                           uint64_t seed, uint64_t stream) {
  const RngKey key = rng_key(seed, stream);
  LAUNCH(elt_grid((n + 3) / 4), kEltThreads, 0, 0, dropout_kernel)(x, xdt, y, ydt, n, keep_from, scale, key.k0, key.k1);
  return cudaGetLastError();
}

cudaError_t launch_axpy(void* a, DType adt, const void* b, DType bdt, float alpha, int64_t n) {
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, axpy_kernel)(a, adt, b, bdt, alpha, n);
  return cudaGetLastError();
}

cudaError_t launch_scale_inplace(void* a, DType adt, float alpha, int64_t n) {
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, scale_kernel)(a, adt, alpha, n);
  return cudaGetLastError();
}

cudaError_t launch_mul(const void* a, DType adt, const void* b, DType bdt, void* y, DType ydt, int64_t n) {
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, mul_kernel)(a, adt, b, bdt, y, ydt, n);
  return cudaGetLastError();
}

cudaError_t launch_fill(void* dst, uint64_t pattern, int elem_bytes, int64_t n) {
  switch (elem_bytes) {
    case 1: fill_words<unsigned char>(dst, pattern, n); break;
    case 2: fill_words<unsigned short>(dst, pattern, n); break;
    case 4: fill_words<unsigned>(dst, pattern, n); break;
    default: fill_words<unsigned long long>(dst, pattern, n); break;
  }
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
