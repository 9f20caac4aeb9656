// Bench-only bindings: machine ceilings, cache-line eviction of a tensor (and of the packed weight cached
// on it, which is what the GEMM actually reads), waking the pool, and the GEMM kernel set a dtype mix
// runs on.
#include "../cpu/ceilings.h"
#include "../cpu/gemm.h"
#include "../cpu/int8.h"
#include "../cpu/nf4.h"
#include "../cpu/parallel.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "ops.h"

namespace peft {
namespace {

Napi::Value Ceilings(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  uint32_t i = 0;
  for (const CeilingInfo& c : ceilings_available()) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", c.name), o.Set("unit", c.unit), o.Set("what", c.what);
    out.Set(i++, o);
  }
  return out;
}

Napi::Value Ceiling(const Napi::CallbackInfo& info) {
  const char* op = "_benchCeiling";
  std::string name = arg_string(info[0], op, "name");
  int threads = static_cast<int>(arg_int(info[1], op, "threads", 1, 256));
  double seconds = arg_number(info[2], op, "seconds");
  if (!(seconds > 0 && seconds <= 10)) fail_range(cat(op, ": seconds must be in (0, 10], got ", seconds));
  return Napi::Number::New(info.Env(), ceiling_measure(name, threads, seconds));
}

Napi::Value Evict(const Napi::CallbackInfo& info) {
  const Tensor& t = TensorHandle::From(info[0], "_benchEvict", "tensor");
  if (t.device() != Device::CPU) fail("ERR_DEVICE", "_benchEvict: host tensors only");
  evict_lines(t.data(), t.storage->bytes);
  MemRegion pack = gemm_cached_pack(t.storage.get());
  if (pack.p) evict_lines(pack.p, pack.bytes);
  Int8PackRegion pack8 = int8_cached_pack(t.storage.get());
  if (pack8.p) evict_lines(pack8.p, pack8.bytes);
  Quant4PackRegion pack4 = quant4_cached_pack(t.storage.get());
  if (pack4.p) evict_lines(pack4.p, pack4.bytes);
  return Napi::Number::New(info.Env(), static_cast<double>(t.storage->bytes + pack.bytes + pack8.bytes));
}

// Runs an empty job on every pool thread, so a timed call that follows does not pay for waking them.
Napi::Value Wake(const Napi::CallbackInfo& info) {
  parallel_run(num_threads(), [](int, int) {});
  return info.Env().Undefined();
}

Napi::Value GemmKernel(const Napi::CallbackInfo& info) {
  DType a = arg_dtype(info[0], "_benchGemmKernel", "a"), b = arg_dtype(info[1], "_benchGemmKernel", "b");
  return Napi::String::New(info.Env(), gemm_kernel_name(a, b));
}

Napi::Value Int8Kernel(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), int8_kernel_name()); }

}  // namespace

void register_bench_hooks(Napi::Env env, Napi::Object exports) {
  exports.Set("_benchCeilings", Napi::Function::New<guarded<Ceilings>>(env, "_benchCeilings"));
  exports.Set("_benchCeiling", Napi::Function::New<guarded<Ceiling>>(env, "_benchCeiling"));
  exports.Set("_benchEvict", Napi::Function::New<guarded<Evict>>(env, "_benchEvict"));
  exports.Set("_benchWake", Napi::Function::New<guarded<Wake>>(env, "_benchWake"));
  exports.Set("_benchInt8Kernel", Napi::Function::New<guarded<Int8Kernel>>(env, "_benchInt8Kernel"));
  exports.Set("_benchGemmKernel", Napi::Function::New<guarded<GemmKernel>>(env, "_benchGemmKernel"));
}

}  // namespace peft
