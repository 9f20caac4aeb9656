// The host API of fused LoRA on the cuda device (lora_ops.cu), with cuda_ops.h's conventions: 0 or a
// cudaError_t with a message; device pointers; dtype codes of peft::DType; synchronous. The contracts are
// native/cpu/lora.h's (lora_forward_cpu, lora_backward_cpu, lora_merge_cpu), so the cuda op table can
// stand in for the CPU's.
#pragma once
#include <cstdint>
#include <string>

#include "cuda_ops.h"

namespace peft {
// The base product y = x·Wᵀ (+ bias) over the dense operands; allow_tf32: f32 bases may run on TF32 tensor
// cores (the adapters' products stay f32).
struct CudaLoraBase : CudaDense {
  bool allow_tf32 = false;
};
// One adapter: A (r, K), B (N, r); y += scale · drop(x)·Aᵀ·Bᵀ with dropout p on Philox (seed, stream); dA, dB
// (accumulated) when wanted.
struct CudaLoraAdapter {
  int64_t r = 0;
  const void* A = nullptr;
  int a_dt = 0;
  const void* B = nullptr;
  int b_dt = 0;
  float scale = 1;
  double p = 0;
  uint64_t seed = 0, stream = 0;
  void* dA = nullptr;
  int da_dt = 0;
  void* dB = nullptr;
  int db_dt = 0;
};
}  // namespace peft

#define PEFT_CUDA_LORA_DECLARATIONS                                                                            \
  /* y (M, N) in y_dt = x·Wᵀ + bias + Σ scale·T_i·B_iᵀ, T (M, R) f32 (zero-filled by the caller) receiving      \
     T_i = drop(x)·A_iᵀ side by side (R = Σ r_i), for the backward. y is scratch until it is written, so it     \
     must not overlap any input. */                                                                            \
  int cuda_lora_forward(const CudaLoraBase& d, const CudaLoraAdapter* ad, int64_t count, void* y, int y_dt,     \
                        float* T, std::string* err);                                                           \
  /* dA_i += (dy·B_i·scale_i)ᵀ·drop(x), dB_i += scale_i·dyᵀ·T_i; dx (M, K) = dy·W + Σ drop(G_i·A_i) when       \
     non-null, rounded once. */                                                                                \
  int cuda_lora_backward(const CudaLoraBase& d, const CudaLoraAdapter* ad, int64_t count, const void* dy,       \
                         int dy_dt, const float* T, void* dx, int dx_dt, std::string* err);                    \
  /* W += sign·Σ scale·B·A (transposed when w_in_out), one pass, rounded once; with `safe` the sum is made      \
     aside and committed only when finite in W's dtype, else *bad = the first adapter whose own delta is not   \
     (0 when only the sum overflows); *bad = -1 otherwise. */                                                  \
  int cuda_lora_merge(void* W, int w_dt, int64_t N, int64_t K, bool w_in_out, const CudaLoraAdapter* ad,       \
                      int64_t count, float sign, bool safe, bool commit, int* bad, std::string* err);

namespace peft {
namespace cuda_gpu {
PEFT_CUDA_LORA_DECLARATIONS
}
namespace cuda_emu {
PEFT_CUDA_LORA_DECLARATIONS
}
}  // namespace peft
