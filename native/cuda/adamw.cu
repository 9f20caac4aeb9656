// AdamW's element update in f32, in the order PyTorch's tensor ops apply it (native/cpu/vec_impl.h):
//   p *= decay; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g²; p += neg_step · m / (sqrt(v) / bc2_sqrt + eps)
// with p and g in any float dtype (p rounded once) and the moments f32.
#include "dtype.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

__global__ void __launch_bounds__(kEltThreads) adamw_kernel(CudaAdamWParam a, CudaAdamWScalars s) {
  // lerp as PyTorch computes it: from the nearer end, so weights 0 and 1 are exact.
  const bool from_m = s.lerp_w < 0.5f && s.lerp_w > -0.5f;
  PEFT_GRID_STRIDE(i, a.n) {
    const float g = load_f32(a.g, DType(a.g_dt), i);
    float m = gload(a.m + i), v = gload(a.v + i);
    m = from_m ? m + s.lerp_w * (g - m) : g - (g - m) * (1.0f - s.lerp_w);
    v = v * s.beta2 + s.sq_w * g * g;
    const float denom = sqrtf(v) / s.bc2_sqrt + s.eps;
    const float p = load_f32(a.p, DType(a.p_dt), i) * s.decay + s.neg_step * m / denom;
    gstore(a.m + i, m);
    gstore(a.v + i, v);
    store_f32(a.p, DType(a.p_dt), i, p);
  }
}

}  // namespace

cudaError_t launch_adamw(const CudaAdamWParam& p, const CudaAdamWScalars& s) {
  LAUNCH(elt_grid(p.n), kEltThreads, 0, 0, adamw_kernel)(p, s);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
