// The arguments the adapter ops share (LoRA dense and convolutional, IA3), parsed and checked in one place.
#pragma once
#include <napi.h>

#include <vector>

#include "../cpu/lora.h"

namespace peft {

struct Tensor;

// info[wi], info[wi + 1], info[wi + 2]: the base layer's weight (N, K) or (K, N), optional bias (N) and the
// weightInOut flag, checked against x (…, K); host tensors, or with any_device tensors on one device, whichever
// (for ops with kernels there).
DenseView dense_args(const Napi::CallbackInfo& info, const Tensor& x, int wi, const char* op, bool any_device = false);

// adapters[i] = {A (r, K), B (N, r), scale, p, seed, stream[, dA, dB when grads]}; ERR_SHAPE/ERR_DTYPE/RangeError
// naming `op` and the adapter on bad input.
std::vector<AdapterView> adapter_args(const Napi::Value& v, int64_t K, int64_t N, bool grads, const char* op);

}  // namespace peft
