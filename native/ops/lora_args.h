// The adapters argument of the LoRA ops (dense and convolutional), parsed and checked in one place.
#pragma once
#include <napi.h>

#include <vector>

#include "../cpu/lora.h"

namespace peft {

// adapters[i] = {A (r, K), B (N, r), scale, p, seed, stream[, dA, dB when grads]}; ERR_SHAPE/ERR_DTYPE/RangeError
// naming `op` and the adapter on bad input.
std::vector<AdapterView> adapter_args(const Napi::Value& v, int64_t K, int64_t N, bool grads, const char* op);

}  // namespace peft
