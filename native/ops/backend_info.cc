// What the addon runs on: build, ISA path, CPU features, threads, CUDA state; and the knobs to change them.
#include "../cpu/isa.h"
#include "../cpu/parallel.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "cuda_state.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

#ifndef PEFT_BUILD_NAME
#define PEFT_BUILD_NAME "unknown"
#endif

Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("build", PEFT_BUILD_NAME);
  o.Set("isa", isa_name(active_isa()));
  Napi::Array feats = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& f : feature_names()) feats.Set(i++, f);
  o.Set("features", feats);
  o.Set("threads", num_threads());
  const CpuFeatures& cf = cpu_features();
  Napi::Object caches = Napi::Object::New(env);
  caches.Set("l1d", cf.l1d_bytes);
  caches.Set("l2", cf.l2_bytes);
  caches.Set("l3", cf.l3_bytes);
  o.Set("caches", caches);
  return o;
}

// Live tensor handles, the storages behind them (views and saved tensors share one storage), and the host
// bytes this thread reported to its garbage collector (each storage once, however many handles share it).
Napi::Value MemoryInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("tensors", static_cast<double>(TensorHandle::live_handles().load()));
  o.Set("storages", static_cast<double>(storage_stats().count.load()));
  o.Set("bytes", static_cast<double>(storage_stats().bytes.load()));
  o.Set("gcReportedBytes", static_cast<double>(TensorHandle::gc_reported_bytes()));
  return o;
}

Napi::Value CudaStateInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CudaState& s = cuda_state();
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", s.available);
  o.Set("emulated", s.emulated);
  if (!s.reason.empty()) o.Set("reason", s.reason);
  Napi::Array devs = Napi::Array::New(env);
  if (s.available) devs.Set(0u, s.emulated ? "cuda:0 (emulated on the CPU)" : "cuda:0");
  o.Set("devices", devs);
  o.Set("allowTf32", cuda_allow_tf32());
  return o;
}

Napi::Value SetCudaAllowTf32(const Napi::CallbackInfo& info) {
  set_cuda_allow_tf32(arg_bool(info[0], "setCudaAllowTf32", "allow"));
  return info.Env().Undefined();
}

Napi::Value SetEmuOrder(const Napi::CallbackInfo& info) {
  set_emu_order(arg_string(info[0], "setCudaEmulationOrder", "order"));
  return info.Env().Undefined();
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  set_num_threads(static_cast<int>(arg_int(info[0], "setNumThreads", "n", 1, 256)));
  return info.Env().Undefined();
}

Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  set_isa(arg_string(info[0], "setIsa", "isa"));
  return info.Env().Undefined();
}

Napi::Value SetAmx(const Napi::CallbackInfo& info) {
  bool on = arg_bool(info[0], "setAmx", "enabled");
  if (on && !cpu_features().amx_usable) fail_range("setAmx: AMX tiles are not available on this CPU");
  set_amx(on);
  return info.Env().Undefined();
}

}  // namespace

void register_backend_info(Napi::Env env, Napi::Object exports) {
  exports.Set("backendInfo", Napi::Function::New<guarded<BackendInfo>>(env, "backendInfo"));
  exports.Set("cudaState", Napi::Function::New<guarded<CudaStateInfo>>(env, "cudaState"));
  exports.Set("memoryInfo", Napi::Function::New<guarded<MemoryInfo>>(env, "memoryInfo"));
  exports.Set("setCudaEmulationOrder", Napi::Function::New<guarded<SetEmuOrder>>(env, "setCudaEmulationOrder"));
  exports.Set("setCudaAllowTf32", Napi::Function::New<guarded<SetCudaAllowTf32>>(env, "setCudaAllowTf32"));
  exports.Set("setNumThreads", Napi::Function::New<guarded<SetNumThreads>>(env, "setNumThreads"));
  exports.Set("setIsa", Napi::Function::New<guarded<SetIsa>>(env, "setIsa"));
  exports.Set("setAmx", Napi::Function::New<guarded<SetAmx>>(env, "setAmx"));
}

}  // namespace peft
