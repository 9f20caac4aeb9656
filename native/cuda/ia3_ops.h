// Host API of the IA3 kernels (ia3_scale.cu), beside cuda_ops.h's and with its conventions (0 or a cudaError_t
// value plus a message; device pointers; dtype codes as peft::DType; synchronous), declared for both
// implementations: peft::cuda_gpu (nvcc) and peft::cuda_emu (emulated).
#pragma once
#include <cstdint>
#include <string>

#include "cuda_ops.h"  // CudaDense

#define PEFT_CUDA_IA3_DECLARATIONS                                                                              \
  /* native/cpu/ia3.h's ia3_forward_cpu / ia3_backward_cpu over device memory; l (f32, K or N values) is the  \
     active adapters' product, on the device. */                                                               \
  int cuda_ia3_forward(const CudaDense& d, const float* l, bool input_side, void* y, int y_dt, void* y0,       \
                       int y0_dt, std::string* err);                                                           \
  int cuda_ia3_backward(const CudaDense& d, const float* l, bool input_side, const void* dy, int dy_dt,         \
                        const void* y0, int y0_dt, void* dx, int dx_dt, void* dW, int dW_dt, void* db,         \
                        int db_dt, float* dl, std::string* err);                                               \
  /* ia3_scale_cpu: W viewed (outer, mid, inner) times f[mid] (device f32), rounded once into W's dtype;      \
     with safe, nothing is written unless every result is finite in W's dtype (*finite says which). */        \
  int cuda_ia3_scale(void* W, int dt, int64_t outer, int64_t mid, int64_t inner, const float* f, bool safe,     \
                     bool commit, bool* finite, std::string* err);

namespace peft {
namespace cuda_gpu {
PEFT_CUDA_IA3_DECLARATIONS
}
namespace cuda_emu {
PEFT_CUDA_IA3_DECLARATIONS
}
}  // namespace peft
