// IA3 on dense layers: ia3Forward, ia3Backward, ia3Scale (merge/unmerge). l is the f32 product of the active
// adapters' ia3_l, K values (input side) or N values (output side). On the cpu the kernels of native/cpu/ia3.h
// run directly; other devices go through their op table.
#include "../cpu/ia3.h"

#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "lora_args.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

Ia3Scale scale_args(const Napi::Value& lv, const Napi::Value& side, const DenseView& d, const Tensor& x, const char* op) {
  const Tensor& l = TensorHandle::From(lv, op, "l");
  same_device(op, {{"x", &x}, {"l", &l}});
  Ia3Scale s;
  s.input_side = arg_bool(side, op, "inputSide");
  const int64_t want = s.input_side ? d.K : d.N;
  if (l.dtype != DType::F32) fail("ERR_DTYPE", cat(op, ": l must be f32, got ", dtype_name(l.dtype)));
  if (l.shape != Shape{want})
    fail("ERR_SHAPE", cat(op, ": l must have shape [", want, "] (the ", s.input_side ? "input" : "output", " features), got ", shape_str(l.shape)));
  s.l = l.ptr<float>();
  return s;
}

// ia3Forward(x, weight, bias, weightInOut, l, inputSide, saveUnscaled) -> y, or [y, y0] with saveUnscaled
Napi::Value Ia3Forward(const Napi::CallbackInfo& info) {
  const char* op = "ia3Forward";
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  DenseView d = dense_args(info, x, 1, op, on_device_of(x, "x"));
  Ia3Scale s = scale_args(info[4], info[5], d, x, op);
  const bool save = !s.input_side && arg_bool(info[6], op, "saveUnscaled");
  Shape ys = x.shape;
  ys.back() = d.N;
  const Device dev = x.device();
  auto forward = dev == Device::CPU ? ia3_forward_cpu : op_kernel(dev, op, &OpTable::ia3_forward);
  Tensor y = new_tensor(dev, x.dtype, ys, op, false);  // written in full
  Tensor y0 = save ? new_tensor(dev, x.dtype, ys, op, false) : Tensor{};
  forward(d, s, y.data(), y.dtype, save ? y0.data() : nullptr, y0.dtype);
  if (!save) return TensorHandle::Wrap(info.Env(), y);
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, TensorHandle::Wrap(info.Env(), y));
  out.Set(1u, TensorHandle::Wrap(info.Env(), y0));
  return out;
}

void require_like(const Tensor* t, const Tensor& x, const Shape& want, const char* op, const char* name) {
  if (!t) return;
  require_float(*t, op, name);
  same_device(op, {{"x", &x}, {name, t}});
  if (t->shape != want) fail("ERR_SHAPE", cat(op, ": ", name, " must have shape ", shape_str(want), ", got ", shape_str(t->shape)));
  begin_write(*t, op, name);
}

// ia3Backward(dy, x, weight, weightInOut, l, inputSide, y0 | null, wantDx, dW | null, db | null, dl | null) -> dx | null
Napi::Value Ia3Backward(const Napi::CallbackInfo& info) {
  const char* op = "ia3Backward";
  const Tensor& dy = TensorHandle::From(info[0], op, "dy");
  const Tensor& x = TensorHandle::From(info[1], op, "x");
  const Tensor& w = TensorHandle::From(info[2], op, "weight");
  DenseView d = dense_args(info, x, 2, op, on_device_of(x, "x"));  // info[3] is null: no bias here; info[4] weightInOut
  (void)w;
  Ia3Scale s = scale_args(info[5], info[6], d, x, op);
  Shape ys = x.shape;
  ys.back() = d.N;
  require_float(dy, op, "dy");
  same_device(op, {{"x", &x}, {"dy", &dy}});
  if (dy.shape != ys) fail("ERR_SHAPE", cat(op, ": dy must have shape ", shape_str(ys), ", got ", shape_str(dy.shape)));
  const Tensor* y0 = TensorHandle::FromOptional(info[7], op, "y0");
  const bool want_dx = arg_bool(info[8], op, "wantDx");
  const Tensor* dW = TensorHandle::FromOptional(info[9], op, "dW");
  const Tensor* db = TensorHandle::FromOptional(info[10], op, "db");
  const Tensor* dl = TensorHandle::FromOptional(info[11], op, "dl");
  require_like(dW, x, w.shape, op, "dW");
  require_like(db, x, {d.N}, op, "db");
  require_like(dl, x, {s.input_side ? d.K : d.N}, op, "dl");
  if (dl && dl->dtype != DType::F32) fail("ERR_DTYPE", cat(op, ": dl must be f32, got ", dtype_name(dl->dtype)));
  if (dl && !s.input_side) {
    if (!y0) fail_type(cat(op, ": the output side's dl needs y0, the forward's unscaled output"));
    require_float(*y0, op, "y0");
    same_device(op, {{"x", &x}, {"y0", y0}});
    if (y0->shape != ys) fail("ERR_SHAPE", cat(op, ": y0 must have shape ", shape_str(ys), ", got ", shape_str(y0->shape)));
  }
  const Device dev = x.device();
  auto backward = dev == Device::CPU ? ia3_backward_cpu : op_kernel(dev, op, &OpTable::ia3_backward);
  Tensor dx = want_dx ? new_tensor(dev, dy.dtype, x.shape, op, false) : Tensor{};
  backward(d, s, dy.data(), dy.dtype, y0 ? y0->data() : nullptr, y0 ? y0->dtype : DType::F32, want_dx ? dx.data() : nullptr,
                   dy.dtype, dW ? dW->data() : nullptr, dW ? dW->dtype : DType::F32, db ? db->data() : nullptr, db ? db->dtype : DType::F32,
                   dl ? dl->ptr<float>() : nullptr);
  return want_dx ? TensorHandle::Wrap(info.Env(), dx) : info.Env().Null();
}

// ia3Scale(weight, [outer, mid, inner], scales (f32 vectors of length mid), divide, safe, checkOnly) -> the index of
// the first adapter whose merge makes the weight non-finite (safe), or -1. The scales multiply (PEFT's merge)
// or divide as 1 / (l + 1e-8) (PEFT's unmerge), combined in f64 and applied in one pass.
Napi::Value Ia3ScaleWeight(const Napi::CallbackInfo& info) {
  const char* op = "ia3Scale";
  const Tensor& w = TensorHandle::From(info[0], op, "weight");
  require_float(w, op, "weight");
  const Device dev = w.device();
  auto scale = dev == Device::CPU ? ia3_scale_cpu : op_kernel(dev, op, &OpTable::ia3_scale);
  Shape v = arg_shape(info[1], op, "view");
  if (v.size() != 3 || v[0] * v[1] * v[2] != w.numel())
    fail("ERR_SHAPE", cat(op, ": view must be [outer, mid, inner] with ", w.numel(), " elements, got ", shape_str(v)));
  if (!info[2].IsArray()) fail_type(cat(op, ": scales must be an array of tensors"));
  Napi::Array arr = info[2].As<Napi::Array>();
  const bool divide = arg_bool(info[3], op, "divide"), safe = arg_bool(info[4], op, "safe"), check_only = arg_bool(info[5], op, "checkOnly");
  if (check_only && !safe) fail_range(cat(op, ": checkOnly needs safe"));
  // The factors are combined on the host: scales on the device are read back (mid values each).
  std::vector<HostBytes> host;
  std::vector<const float*> ls;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    const Tensor& l = TensorHandle::From(arr.Get(i), op, "scales[i]");
    if (l.dtype != DType::F32 || l.numel() != v[1])
      fail("ERR_SHAPE", cat(op, ": scales[", i, "] must be an f32 tensor of ", v[1], " values, got ", dtype_name(l.dtype), " ", shape_str(l.shape)));
    host.push_back(host_bytes(l, op));
  }
  for (const HostBytes& h : host) ls.push_back(static_cast<const float*>(h.data));
  // Factors of the first k adapters, combined in f64.
  auto factors = [&](size_t k) {
    std::vector<float> f(static_cast<size_t>(std::max<int64_t>(v[1], 1)));
    for (int64_t j = 0; j < v[1]; j++) {
      double p = 1;
      for (size_t a = 0; a < k; a++) p *= divide ? 1.0 / (static_cast<double>(ls[a][j]) + 1e-8) : ls[a][j];
      f[static_cast<size_t>(j)] = static_cast<float>(p);
    }
    return f;
  };
  std::vector<float> all = factors(ls.size());
  if (!check_only) begin_write(w, op, "weight");
  if (scale(w.data(), w.dtype, v[0], v[1], v[2], all.data(), safe, !check_only)) {
    return Napi::Number::New(info.Env(), -1);
  }
  // Which adapter broke it: the first whose prefix of factors gives a non-finite weight.
  for (size_t k = 1; k < ls.size(); k++) {
    std::vector<float> f = factors(k);
    if (!scale(w.data(), w.dtype, v[0], v[1], v[2], f.data(), true, false)) return Napi::Number::New(info.Env(), static_cast<double>(k - 1));
  }
  return Napi::Number::New(info.Env(), static_cast<double>(ls.size() - 1));
}

}  // namespace

void register_ia3_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("ia3Forward", Napi::Function::New<guarded<Ia3Forward>>(env, "ia3Forward"));
  exports.Set("ia3Backward", Napi::Function::New<guarded<Ia3Backward>>(env, "ia3Backward"));
  exports.Set("ia3Scale", Napi::Function::New<guarded<Ia3ScaleWeight>>(env, "ia3Scale"));
}

}  // namespace peft
