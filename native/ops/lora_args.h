// The arguments the adapter ops share (LoRA dense and convolutional, IA3), parsed and checked in one place.
#pragma once
#include <napi.h>

#include <vector>

#include "../core/tensor.h"
#include "../cpu/lora.h"

namespace peft {

// Where an op's operands must be: on the cpu (the default, for ops with CPU kernels only: ERR_NOT_ON_DEVICE
// elsewhere), or all on the device of the anchor tensor (`anchor`, named in the ERR_DEVICE message).
struct Placement {
  Device dev = Device::CPU;
  bool cpu_only = true;
  const char* anchor = "x";
};
inline Placement on_device_of(const Tensor& t, const char* anchor) { return {t.device(), false, anchor}; }

// info[wi], info[wi + 1], info[wi + 2]: the base layer's weight (N, K) or (K, N), optional bias (N) and the
// weightInOut flag, checked against x (…, K), every tensor placed as `where` says.
DenseView dense_args(const Napi::CallbackInfo& info, const Tensor& x, int wi, const char* op, const Placement& where = {});

// adapters[i] = {A (r, K), B (N, r), scale, p, seed, stream[, dA, dB when grads]}, placed as `where` says;
// ERR_SHAPE/ERR_DTYPE/RangeError naming `op` and the adapter on bad input.
std::vector<AdapterView> adapter_args(const Napi::Value& v, int64_t K, int64_t N, bool grads, const char* op,
                                      const Placement& where = {});

}  // namespace peft
