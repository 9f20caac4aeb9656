// Module init: per-environment state (the addon may load in several worker threads), the Tensor handle
// class and every op family's bindings.
#include <napi.h>

#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "napi_util.h"
#include "ops/ops.h"
#include "tensor_handle.h"

namespace peft {
namespace {

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) fail_type("setErrorClass: expected the PeftError constructor");
  addon_data(info.Env()).peft_error_ctor = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value IsTensorHandle(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), info.Length() > 0 && TensorHandle::IsHandle(info[0]));
}

// releaseBytes(u8): ends a transient view (tensor.bytes(.., true)) once a file read or write through it is done,
// so the tensor's storage is not kept alive until the view is garbage-collected (a layer quantised while loading
// must free its full-precision weight at once). Other buffers are left alone.
Napi::Value ReleaseBytes(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsTypedArray()) fail_type("releaseBytes: expected a Uint8Array");
  release_transient_bytes(info.Env(), info[0].As<Napi::TypedArray>().ArrayBuffer());
  return info.Env().Undefined();
}

}  // namespace
}  // namespace peft

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace peft;
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  Napi::Function ctor = TensorHandle::Init(env);
  data->tensor_ctor = Napi::Persistent(ctor);
  exports.Set("TensorHandle", ctor);
  exports.Set("setErrorClass", Napi::Function::New<guarded<SetErrorClass>>(env, "setErrorClass"));
  exports.Set("isTensorHandle", Napi::Function::New(env, IsTensorHandle, "isTensorHandle"));
  exports.Set("tensorMeta", Napi::Function::New<guarded<TensorHandle::MetaInto>>(env, "tensorMeta"));
  exports.Set("releaseBytes", Napi::Function::New<guarded<ReleaseBytes>>(env, "releaseBytes"));
  // A worker's environment going away first lets any job in the shared pool finish.
  napi_add_env_cleanup_hook(env, [](void*) { drain_pool(); }, nullptr);
  set_host_zero_fill(parallel_zero_fill);  // large host blocks fault in on every pool thread
  register_factories(env, exports);
  register_linear_ops(env, exports);
  register_backend_info(env, exports);
  register_gemm_test_hook(env, exports);
  register_bench_hooks(env, exports);
  register_nn_ops(env, exports);
  register_loss_ops(env, exports);
  register_optim_ops(env, exports);
  register_lora_ops(env, exports);
  register_conv_ops(env, exports);
  register_ia3_ops(env, exports);
  register_linalg_ops(env, exports);
  register_elementwise_ops(env, exports);
  register_reduce_ops(env, exports);
  register_indexing_ops(env, exports);
  register_int8_ops(env, exports);
  register_quant4_ops(env, exports);
  register_attention_ops(env, exports);
  register_share_ops(env, exports);
  register_rms_norm_ops(env, exports);
  // NODE_PEFT_ISA / NODE_PEFT_AMX: a bad value fails the load with a RangeError rather than running the
  // wrong kernels (or faulting on missing instructions).
  try {
    init_isa_from_env();
  } catch (const PeftException& e) {
    throw to_js_error(env, e);
  }
  return exports;
}

NODE_API_MODULE(node_peft, Init)
