// Whether the cuda device exists in this process, whether it is the CPU emulation, and why not.
#pragma once
#include <string>

namespace peft {

struct CudaState {
  bool available = false;
  bool emulated = false;
  std::string reason;
};

// Decided once (reads NODE_PEFT_CUDA, probes the driver) and registers the cuda op table when available.
const CudaState& cuda_state();

// The emulated device's thread scheduling order ("forward", "reverse", "random"): a correct kernel gives
// the same result in every order. RangeError for another name.
void set_emu_order(const std::string& order);

// Whether f32 products on the cuda device may use TF32 tensor cores (backend.cuda.allowTf32; default off,
// as PyTorch's matmul default).
void set_cuda_allow_tf32(bool allow);
bool cuda_allow_tf32();

}  // namespace peft
