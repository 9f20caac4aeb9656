// 2-D convolution and LoRA on it: conv2d, conv2dBackward, loraConv2dForward, loraConv2dBackward. The
// geometry comes as [strideH, strideW, padH, padW, dilationH, dilationW, groups]; every shape is checked
// against it before any kernel runs.
#include "../cpu/conv2d.h"

#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "lora_args.h"
#include "ops.h"

namespace peft {
namespace {

// x (N, C, H, W), weight (OC, C / groups, KH, KW) and the geometry array.
ConvGeom conv_args(const Shape& xs, const Tensor& w, const Napi::Value& geom, const char* op) {
  require_float(w, op, "weight");
  if (xs.size() != 4) fail("ERR_SHAPE", cat(op, ": x must have 4 dimensions (N, C, H, W), got shape ", shape_str(xs)));
  require_ndim(w, 4, 4, op, "weight");
  if (!geom.IsArray() || geom.As<Napi::Array>().Length() != 7)
    fail_type(cat(op, ": geometry must be [strideH, strideW, padH, padW, dilationH, dilationW, groups]"));
  Napi::Array a = geom.As<Napi::Array>();
  const char* names[7] = {"strideH", "strideW", "padH", "padW", "dilationH", "dilationW", "groups"};
  int64_t v[7];
  for (uint32_t i = 0; i < 7; i++) v[i] = arg_int(a.Get(i), op, names[i], i == 2 || i == 3 ? 0 : 1, 1 << 20);
  ConvGeom g;
  g.N = xs[0], g.C = xs[1], g.H = xs[2], g.W = xs[3];
  g.OC = w.dim(0), g.KH = w.dim(2), g.KW = w.dim(3);
  g.sh = v[0], g.sw = v[1], g.ph = v[2], g.pw = v[3], g.dh = v[4], g.dw = v[5], g.G = v[6];
  if (g.C % g.G || g.OC % g.G)
    fail("ERR_SHAPE", cat(op, ": groups (", g.G, ") must divide the input channels (", g.C, ") and the output channels (", g.OC, ")"));
  if (w.dim(1) != g.C / g.G)
    fail("ERR_SHAPE", cat(op, ": x has ", g.C, " channels (shape ", shape_str(xs), "), so with groups = ", g.G, " the weight needs ",
                          g.C / g.G, " input channels per group; got weight shape ", shape_str(w.shape)));
  if (g.KH == 0 || g.KW == 0) fail("ERR_SHAPE", cat(op, ": the kernel must not be empty, got weight shape ", shape_str(w.shape)));
  if (!conv_output_size(g))
    fail("ERR_SHAPE", cat(op, ": the input ", g.H, "x", g.W, " with padding ", g.ph, "x", g.pw, " is smaller than the dilated kernel (",
                          g.dh * (g.KH - 1) + 1, "x", g.dw * (g.KW - 1) + 1, ")"));
  return g;
}

ConvGeom conv_args(const Tensor& x, const Tensor& w, const Napi::Value& geom, const char* op) {
  require_float(x, op, "x");
  return conv_args(x.shape, w, geom, op);
}

void check_bias(const Tensor* b, const ConvGeom& g, const char* op) {
  if (!b) return;
  require_float(*b, op, "bias");
  require_shape(*b, {g.OC}, op, "bias");
}

Shape out_shape(const ConvGeom& g) { return {g.N, g.OC, g.OH, g.OW}; }

// A forward's operands: info[0..3] = x, weight, bias | null, geometry; host tensors, shapes checked.
struct ForwardArgs {
  const Tensor& x;
  const Tensor& w;
  const Tensor* b;
  ConvGeom g;
};

ForwardArgs forward_args(const Napi::CallbackInfo& info, const char* op) {
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  const Tensor& w = TensorHandle::From(info[1], op, "weight");
  const Tensor* b = TensorHandle::FromOptional(info[2], op, "bias");
  require_cpu(op, {{"x", &x}, {"weight", &w}, {"bias", b}});
  ConvGeom g = conv_args(x, w, info[3], op);
  check_bias(b, g, op);
  return {x, w, b, g};
}

// The gradient outputs dW (weight's shape) and db (OC), accumulated; their version moves.
void grad_args(const Napi::Value& dwv, const Napi::Value& dbv, const Tensor& w, const ConvGeom& g, const char* op, const Tensor*& dW,
               const Tensor*& db) {
  dW = TensorHandle::FromOptional(dwv, op, "dW");
  db = TensorHandle::FromOptional(dbv, op, "db");
  if (dW) require_float(*dW, op, "dW"), require_shape(*dW, w.shape, op, "dW"), begin_write(*dW, op, "dW");
  if (db) require_float(*db, op, "db"), require_shape(*db, {g.OC}, op, "db"), begin_write(*db, op, "db");
}

// conv2d(x, weight, bias | null, geometry) -> y (N, OC, OH, OW) in x's dtype
Napi::Value Conv2d(const Napi::CallbackInfo& info) {
  const char* op = "conv2d";
  auto [x, w, b, g] = forward_args(info, op);
  Tensor y = make_tensor(x.dtype, out_shape(g), Device::CPU, false);  // written in full
  conv2d_forward_cpu(g, x.data(), x.dtype, w.data(), w.dtype, b ? b->data() : nullptr, b ? b->dtype : DType::F32, y.data(), y.dtype);
  return TensorHandle::Wrap(info.Env(), y);
}

// conv2dBackward(dy, x | x's shape, weight, geometry, wantDx, dW | null, db | null) -> dx | null. Only dW needs
// x itself: a frozen layer passes its input's shape and keeps no activation.
Napi::Value Conv2dBackward(const Napi::CallbackInfo& info) {
  const char* op = "conv2dBackward";
  const Tensor& dy = TensorHandle::From(info[0], op, "dy");
  const Tensor* x = info[1].IsArray() ? nullptr : &TensorHandle::From(info[1], op, "x");
  const Tensor& w = TensorHandle::From(info[2], op, "weight");
  ConvGeom g = x ? conv_args(*x, w, info[3], op) : conv_args(arg_shape(info[1], op, "x"), w, info[3], op);
  require_float(dy, op, "dy");
  require_shape(dy, out_shape(g), op, "dy");
  bool want_dx = arg_bool(info[4], op, "wantDx");
  const Tensor *dW = nullptr, *db = nullptr;
  grad_args(info[5], info[6], w, g, op, dW, db);
  if (dW && !x) fail_type(cat(op, ": dW needs x itself, not only its shape"));
  require_cpu(op, {{"dy", &dy}, {"x", x}, {"weight", &w}, {"dW", dW}, {"db", db}});
  Tensor dx = want_dx ? make_tensor(dy.dtype, {g.N, g.C, g.H, g.W}, Device::CPU, false) : Tensor{};
  conv2d_backward_cpu(g, dy.data(), dy.dtype, x ? x->data() : nullptr, x ? x->dtype : DType::F32, w.data(), w.dtype, want_dx ? dx.data() : nullptr, dy.dtype,
                      dW ? dW->data() : nullptr, dW ? dW->dtype : DType::F32, db ? db->data() : nullptr, db ? db->dtype : DType::F32);
  return want_dx ? TensorHandle::Wrap(info.Env(), dx) : info.Env().Null();
}

// The adapters of a LoRA convolution come as 2-D views: A (r, C·KH·KW), B (OC, r); groups must be 1.
std::vector<AdapterView> conv_adapters(const Napi::Value& v, const ConvGeom& g, bool grads, const char* op) {
  if (g.G != 1) fail("ERR_UNSUPPORTED", cat(op, ": the fused LoRA convolution needs groups = 1, got ", g.G));
  return adapter_args(v, g.kk(), g.OC, grads, op);
}

// loraConv2dForward(x, weight, bias | null, geometry, adapters) -> [y, T (N, R, OH, OW) f32]
Napi::Value LoraConv2dForward(const Napi::CallbackInfo& info) {
  const char* op = "loraConv2dForward";
  auto [x, w, b, g] = forward_args(info, op);
  std::vector<AdapterView> ad = conv_adapters(info[4], g, false, op);
  Tensor y = make_tensor(x.dtype, out_shape(g), Device::CPU, false);
  Tensor T = make_tensor(DType::F32, {g.N, total_rank(ad), g.OH, g.OW}, Device::CPU, false);
  lora_conv2d_forward_cpu(g, x.data(), x.dtype, w.data(), w.dtype, b ? b->data() : nullptr, b ? b->dtype : DType::F32, ad, y.data(),
                          y.dtype, T.ptr<float>());
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, TensorHandle::Wrap(info.Env(), y));
  out.Set(1u, TensorHandle::Wrap(info.Env(), T));
  return out;
}

// loraConv2dBackward(dy, x, weight, geometry, adapters (with dA/dB), T, wantDx, dW | null, db | null) -> dx | null
Napi::Value LoraConv2dBackward(const Napi::CallbackInfo& info) {
  const char* op = "loraConv2dBackward";
  const Tensor& dy = TensorHandle::From(info[0], op, "dy");
  const Tensor& x = TensorHandle::From(info[1], op, "x");
  const Tensor& w = TensorHandle::From(info[2], op, "weight");
  ConvGeom g = conv_args(x, w, info[3], op);
  require_float(dy, op, "dy");
  require_shape(dy, out_shape(g), op, "dy");
  std::vector<AdapterView> ad = conv_adapters(info[4], g, true, op);
  const Tensor& T = TensorHandle::From(info[5], op, "T");
  if (T.dtype != DType::F32) fail("ERR_DTYPE", cat(op, ": T must be f32 (as loraConv2dForward made it), got ", dtype_name(T.dtype)));
  require_shape(T, {g.N, total_rank(ad), g.OH, g.OW}, op, "T");
  bool want_dx = arg_bool(info[6], op, "wantDx");
  const Tensor *dW = nullptr, *db = nullptr;
  grad_args(info[7], info[8], w, g, op, dW, db);
  require_cpu(op, {{"dy", &dy}, {"x", &x}, {"weight", &w}, {"T", &T}, {"dW", dW}, {"db", db}});
  Tensor dx = want_dx ? make_tensor(dy.dtype, x.shape, Device::CPU, false) : Tensor{};
  lora_conv2d_backward_cpu(g, dy.data(), dy.dtype, x.data(), x.dtype, w.data(), w.dtype, ad, T.ptr<float>(), want_dx ? dx.data() : nullptr,
                           dy.dtype, dW ? dW->data() : nullptr, dW ? dW->dtype : DType::F32, db ? db->data() : nullptr,
                           db ? db->dtype : DType::F32);
  return want_dx ? TensorHandle::Wrap(info.Env(), dx) : info.Env().Null();
}

}  // namespace

void register_conv_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("conv2d", Napi::Function::New<guarded<Conv2d>>(env, "conv2d"));
  exports.Set("conv2dBackward", Napi::Function::New<guarded<Conv2dBackward>>(env, "conv2dBackward"));
  exports.Set("loraConv2dForward", Napi::Function::New<guarded<LoraConv2dForward>>(env, "loraConv2dForward"));
  exports.Set("loraConv2dBackward", Napi::Function::New<guarded<LoraConv2dBackward>>(env, "loraConv2dBackward"));
}

}  // namespace peft
