// adamwStep: PyTorch's AdamW over every parameter in one native call. Every argument is checked before
// any memory is touched, so a bad entry leaves all parameters and moments as they were.
#include <cmath>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "../cpu/adamw.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

Napi::Array arg_array(const Napi::Value& v, const char* op, const char* name) {
  if (!v.IsArray()) fail_type(cat(op, ": ", name, " must be an array of Tensors"));
  return v.As<Napi::Array>();
}

// A hyperparameter in [lo, hi] (or [lo, hi) when hi_open); NaN and infinities are out of range.
double arg_hyper(const Napi::Value& v, const char* op, const char* name, double lo, double hi, bool hi_open) {
  double x = arg_number(v, op, name);
  if (!(std::isfinite(x) && x >= lo && (hi_open ? x < hi : x <= hi)))
    fail_range(cat(op, ": ", name, " must be in [", lo, ", ", hi, hi_open ? ")" : "]", ", got ", x));
  return x;
}

// One storage updated twice in a step would apply the update twice (or mix two parameters' moments).
[[noreturn]] void fail_alias(const char* op, const std::string& a, const std::string& b) {
  throw PeftException(ErrKind::Type, "ERR_INVALID_ARG_VALUE", cat(op, ": ", b, " shares storage with ", a));
}

// adamwStep(params, grads, expAvg, expAvgSq, step, lr, beta1, beta2, eps, weightDecay)
Napi::Value AdamWStep(const Napi::CallbackInfo& info) {
  const char* op = "adamwStep";
  Napi::Array ps = arg_array(info[0], op, "params"), gs = arg_array(info[1], op, "grads");
  Napi::Array ms = arg_array(info[2], op, "expAvg"), vs = arg_array(info[3], op, "expAvgSq");
  int64_t step = arg_int(info[4], op, "step", 1, kMaxSafeInt);
  double lr = arg_hyper(info[5], op, "lr", 0, INFINITY, true);
  double beta1 = arg_hyper(info[6], op, "beta1", 0, 1, true);
  double beta2 = arg_hyper(info[7], op, "beta2", 0, 1, true);
  double eps = arg_hyper(info[8], op, "eps", 0, INFINITY, true);
  double wd = arg_hyper(info[9], op, "weightDecay", 0, INFINITY, true);
  uint32_t n = ps.Length();
  for (auto [arr, name] : {std::pair{gs, "grads"}, {ms, "expAvg"}, {vs, "expAvgSq"}})
    if (arr.Length() != n) fail("ERR_SHAPE", cat(op, ": ", name, " has ", arr.Length(), " entries but params has ", n));

  // Tensors are held by value: the storages stay alive even if a getter on one of the arrays disposed a
  // handle after it was checked.
  struct Entry {
    Tensor p, m, v;
    std::optional<Tensor> g;
  };
  std::vector<Entry> entries;
  Device dev = Device::CPU;
  std::unordered_map<const Storage*, std::string> written;
  auto claim = [&](const Tensor& t, const std::string& name) {
    auto [it, fresh] = written.emplace(t.storage.get(), name);
    if (!fresh) fail_alias(op, it->second, name);
  };
  for (uint32_t i = 0; i < n; i++) {
    std::string pn = cat("params[", i, "]"), gn = cat("grads[", i, "]"), mn = cat("expAvg[", i, "]"), vn = cat("expAvgSq[", i, "]");
    Entry e{TensorHandle::From(ps.Get(i), op, pn.c_str()), TensorHandle::From(ms.Get(i), op, mn.c_str()),
            TensorHandle::From(vs.Get(i), op, vn.c_str()), std::nullopt};
    Napi::Value gv = gs.Get(i);
    if (!gv.IsNull() && !gv.IsUndefined()) e.g = TensorHandle::From(gv, op, gn.c_str());
    require_float(e.p, op, pn.c_str());
    if (e.g) {
      require_float(*e.g, op, gn.c_str());
      require_same_shape(e.p, pn.c_str(), *e.g, gn.c_str(), op);
    }
    for (auto [t, name] : {std::pair{&e.m, &mn}, {&e.v, &vn}}) {
      if (t->dtype != DType::F32)
        fail("ERR_DTYPE", cat(op, ": ", *name, " must be f32 (AdamW keeps its moments in f32), got ", dtype_name(t->dtype)));
      require_same_shape(e.p, pn.c_str(), *t, name->c_str(), op);
    }
    // One step runs on one device: every tensor of every entry on the first parameter's.
    Device d = same_device(op, {{pn.c_str(), &e.p}, {gn.c_str(), e.g ? &*e.g : nullptr}, {mn.c_str(), &e.m}, {vn.c_str(), &e.v}});
    if (i == 0) dev = d;
    else if (d != dev)
      fail("ERR_DEVICE", cat(op, ": params[0] is on ", device_name(dev), " but ", pn, " is on ", device_name(d)));
    claim(e.p, pn);
    claim(e.m, mn);
    claim(e.v, vn);
    entries.push_back(std::move(e));
  }
  std::vector<AdamWParam> work;
  for (uint32_t i = 0; i < n; i++) {
    const Entry& e = entries[i];
    if (!e.g) continue;
    auto it = written.find(e.g->storage.get());
    if (it != written.end()) fail_alias(op, it->second, cat("grads[", i, "]"));
    work.push_back({e.p.data(), e.p.dtype, e.g->data(), e.g->dtype, e.m.ptr<float>(), e.v.ptr<float>(), e.p.numel()});
  }

  for (uint32_t i = 0; i < n; i++)
    if (const Entry& e = entries[i]; e.g)
      begin_write(e.p, op, cat("params[", i, "]")), begin_write(e.m, op, cat("expAvg[", i, "]")), begin_write(e.v, op, cat("expAvgSq[", i, "]"));
  op_kernel(dev, op, &OpTable::adamw)(work, adamw_scalars(lr, beta1, beta2, eps, wd, step));
  return info.Env().Undefined();
}

}  // namespace

void register_optim_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("adamwStep", Napi::Function::New<guarded<AdamWStep>>(env, "adamwStep"));
}

}  // namespace peft
