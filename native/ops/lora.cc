// LoRA on dense layers: loraForward, loraBackward, loraMerge. Adapters come as an array of plain objects
// {A, B, scale, p, seed, stream[, dA, dB]}; everything is validated before any kernel runs. The kernels are
// the operands' device's (op table: the CPU's native/cpu/lora.cc, the cuda device's lora_fused.cu).
#include "../cpu/lora.h"

#include <cmath>
#include <string>

#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "lora_args.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

// t where `where` says: ERR_NOT_ON_DEVICE off the cpu for ops with CPU kernels only, else ERR_DEVICE off the
// anchor's device.
void require_on(const Tensor& t, const Placement& where, const char* op, const std::string& name) {
  if (t.device() == where.dev) return;
  if (where.cpu_only)
    fail("ERR_NOT_ON_DEVICE", cat(op, ": ", name, " is on ", device_name(t.device()), "; this op has a CPU kernel only"));
  fail("ERR_DEVICE", cat(op, ": ", name, " is on ", device_name(t.device()), " but ", where.anchor, " is on ", device_name(where.dev)));
}

}  // namespace

// The base layer: x (…, K), W (N, K) or (K, N), optional bias (N).
DenseView dense_args(const Napi::CallbackInfo& info, const Tensor& x, int wi, const char* op, const Placement& where) {
  const Tensor& w = TensorHandle::From(info[wi], op, "weight");
  const Tensor* b = TensorHandle::FromOptional(info[wi + 1], op, "bias");
  bool in_out = arg_bool(info[wi + 2], op, "weightInOut");
  require_float(x, op, "x");
  require_float(w, op, "weight");
  require_ndim(x, 1, 16, op, "x");
  require_ndim(w, 2, 2, op, "weight");
  require_on(x, where, op, "x");
  require_on(w, where, op, "weight");
  DenseView d;
  d.K = x.dim(-1);
  d.M = x.rows();
  d.N = in_out ? w.dim(1) : w.dim(0);
  int64_t wk = in_out ? w.dim(0) : w.dim(1);
  if (wk != d.K)
    fail("ERR_SHAPE", cat(op, ": x has ", d.K, " features (shape ", shape_str(x.shape), ") but the weight expects ", wk, " (shape ",
                          shape_str(w.shape), ")"));
  if (b) {
    require_float(*b, op, "bias");
    require_on(*b, where, op, "bias");
    require_shape(*b, {d.N}, op, "bias");
    d.bias = b->data(), d.bias_dt = b->dtype;
  }
  d.x = x.data(), d.x_dt = x.dtype;
  d.W = w.data(), d.w_dt = w.dtype, d.w_in_out = in_out, d.w_cache = w.storage.get();
  return d;
}

// adapters[i] = {A (r, K), B (N, r), scale, p, seed, stream, dA?, dB?}
std::vector<AdapterView> adapter_args(const Napi::Value& v, int64_t K, int64_t N, bool grads, const char* op, const Placement& where) {
  if (!v.IsArray()) fail_type(cat(op, ": adapters must be an array"));
  Napi::Array arr = v.As<Napi::Array>();
  std::vector<AdapterView> out;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string name = cat("adapters[", i, "]");
    Napi::Value item = arr.Get(i);
    if (!item.IsObject()) fail_type(cat(op, ": ", name, " must be an object"));
    Napi::Object o = item.As<Napi::Object>();
    const Tensor& A = TensorHandle::From(o.Get("A"), op, (name + ".A").c_str());
    const Tensor& B = TensorHandle::From(o.Get("B"), op, (name + ".B").c_str());
    require_float(A, op, "A");
    require_float(B, op, "B");
    require_on(A, where, op, name + ".A");
    require_on(B, where, op, name + ".B");
    require_ndim(A, 2, 2, op, "A");
    int64_t r = A.dim(0);
    require_shape(A, {r, K}, op, name + ".A");
    require_shape(B, {N, r}, op, name + ".B");
    AdapterView a;
    a.r = r;
    a.A = A.data(), a.a_dt = A.dtype, a.a_cache = A.storage.get();
    a.B = B.data(), a.b_dt = B.dtype;
    double s = arg_number(o.Get("scale"), op, "scale");
    if (!std::isfinite(s)) fail_range(cat(op, ": ", name, ".scale must be finite, got ", s));
    a.scale = static_cast<float>(s);
    a.p = arg_number(o.Get("p"), op, "p");
    if (!(a.p >= 0 && a.p < 1)) fail_range(cat(op, ": ", name, ".p (dropout) must be in [0, 1), got ", a.p));
    a.seed = static_cast<uint64_t>(arg_int(o.Get("seed"), op, "seed", 0, 9007199254740991LL));
    a.stream = static_cast<uint64_t>(arg_int(o.Get("stream"), op, "stream", 0, 9007199254740991LL));
    if (grads) {
      for (const char* key : {"dA", "dB"}) {
        Napi::Value g = o.Get(key);
        if (g.IsNull() || g.IsUndefined()) continue;
        const Tensor& t = TensorHandle::From(g, op, (name + "." + key).c_str());
        const Tensor& like = key[1] == 'A' ? A : B;
        require_float(t, op, key);
        require_on(t, where, op, name + "." + key);
        require_shape(t, like.shape, op, name + "." + key);
        begin_write(t, op, name + "." + key);
        if (key[1] == 'A') a.dA = t.data(), a.da_dt = t.dtype;
        else a.dB = t.data(), a.db_dt = t.dtype;
      }
    }
    out.push_back(a);
  }
  return out;
}

namespace {

// loraForward(x, weight, bias, weightInOut, adapters) -> [y, T]
Napi::Value LoraForward(const Napi::CallbackInfo& info) {
  const char* op = "loraForward";
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  const Placement where = on_device_of(x, "x");
  const Device dev = where.dev;
  DenseView d = dense_args(info, x, 1, op, where);
  std::vector<AdapterView> ad = adapter_args(info[4], d.K, d.N, false, op, where);
  const auto forward = op_kernel(dev, op, &OpTable::lora_forward);
  Shape ys = x.shape;
  ys.back() = d.N;
  Tensor y = new_tensor(dev, x.dtype, ys, op, false);  // written in full by the fused GEMM
  Tensor T = new_tensor(dev, DType::F32, {d.M, total_rank(ad)}, op);
  forward(d, ad, y.data(), y.dtype, T.ptr<float>());
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, TensorHandle::Wrap(info.Env(), y));
  out.Set(1u, TensorHandle::Wrap(info.Env(), T));
  return out;
}

// loraBackward(dy, x, weight, bias(ignored), weightInOut, adapters (with dA/dB), T, wantDx) -> dx | null
Napi::Value LoraBackward(const Napi::CallbackInfo& info) {
  const char* op = "loraBackward";
  const Tensor& dy = TensorHandle::From(info[0], op, "dy");
  const Tensor& x = TensorHandle::From(info[1], op, "x");
  const Placement where = on_device_of(x, "x");
  const Device dev = where.dev;
  DenseView d = dense_args(info, x, 2, op, where);
  require_float(dy, op, "dy");
  require_on(dy, where, op, "dy");
  Shape ys = x.shape;
  ys.back() = d.N;
  require_shape(dy, ys, op, "dy");
  const Tensor& T = TensorHandle::From(info[6], op, "T");
  bool want_dx = arg_bool(info[7], op, "wantDx");
  std::vector<AdapterView> ad = adapter_args(info[5], d.K, d.N, true, op, where);
  if (T.dtype != DType::F32) fail("ERR_DTYPE", cat(op, ": T must be f32 (as loraForward made it), got ", dtype_name(T.dtype)));
  require_on(T, where, op, "T");
  require_shape(T, {d.M, total_rank(ad)}, op, "T");
  const auto backward = op_kernel(dev, op, &OpTable::lora_backward);
  if (!want_dx) {
    backward(d, ad, dy.data(), dy.dtype, T.ptr<float>(), nullptr, dy.dtype);
    return info.Env().Null();
  }
  Tensor dx = new_tensor(dev, dy.dtype, x.shape, op, false);  // written in full
  backward(d, ad, dy.data(), dy.dtype, T.ptr<float>(), dx.data(), dx.dtype);
  return TensorHandle::Wrap(info.Env(), dx);
}

// loraMerge(weight, weightInOut, adapters, sign, safe, checkOnly?) -> index of the adapter that made W non-finite, or -1
Napi::Value LoraMerge(const Napi::CallbackInfo& info) {
  const char* op = "loraMerge";
  const Tensor& w = TensorHandle::From(info[0], op, "weight");
  require_float(w, op, "weight");
  require_ndim(w, 2, 2, op, "weight");
  const Placement where = on_device_of(w, "weight");
  const Device dev = where.dev;
  bool in_out = arg_bool(info[1], op, "weightInOut");
  int64_t N = in_out ? w.dim(1) : w.dim(0), K = in_out ? w.dim(0) : w.dim(1);
  std::vector<AdapterView> ad = adapter_args(info[2], K, N, false, op, where);
  double sign = arg_number(info[3], op, "sign");
  if (sign != 1 && sign != -1) fail_range(cat(op, ": sign must be 1 or -1, got ", sign));
  bool safe = arg_bool(info[4], op, "safe");
  // checkOnly: the safe computation without writing W (a model checks every layer before merging any).
  bool check_only = info.Length() > 5 && !info[5].IsUndefined() && arg_bool(info[5], op, "checkOnly");
  if (check_only && !safe) fail_range(cat(op, ": checkOnly needs safe"));
  const auto merge = op_kernel(dev, op, &OpTable::lora_merge);
  if (!check_only) begin_write(w, op, "weight");
  int bad = merge(w.data(), w.dtype, N, K, in_out, ad, static_cast<float>(sign), safe, !check_only);
  return Napi::Number::New(info.Env(), bad);
}

}  // namespace

void register_lora_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("loraForward", Napi::Function::New<guarded<LoraForward>>(env, "loraForward"));
  exports.Set("loraBackward", Napi::Function::New<guarded<LoraBackward>>(env, "loraBackward"));
  exports.Set("loraMerge", Napi::Function::New<guarded<LoraMerge>>(env, "loraMerge"));
}

}  // namespace peft
