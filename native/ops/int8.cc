// LLM.int8 ops: int8Quantize (W -> CB, SCB), int8Linear (y = x·dequant(W)ᵀ + b, outliers in floating
// point), int8LinearGradInput (dx = dy·dequant(W)), and the test hook _int8Test (the raw int32 products).
// On the cpu the kernels of native/cpu/int8.h run directly; other devices go through their op table.
#include <cmath>

#include "../cpu/int8.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

// CB int8 (N, K) and SCB f32 (N), on the device of x (`other`, named `other_name`); returns the weight view.
Int8Weight weight_args(const Napi::CallbackInfo& info, size_t at, const char* op, const Tensor& other, const char* other_name) {
  const Tensor& cb = TensorHandle::From(info[at], op, "CB");
  const Tensor& scb = TensorHandle::From(info[at + 1], op, "SCB");
  if (cb.dtype != DType::I8) fail("ERR_DTYPE", cat(op, ": CB must be i8, got ", dtype_name(cb.dtype)));
  if (scb.dtype != DType::F32) fail("ERR_DTYPE", cat(op, ": SCB must be f32, got ", dtype_name(scb.dtype)));
  require_ndim(cb, 2, 2, op, "CB");
  if (scb.shape != Shape{cb.dim(0)})
    fail("ERR_SHAPE", cat(op, ": SCB must have shape [", cb.dim(0), "] (one scale per row of CB ", shape_str(cb.shape), "), got ",
                          shape_str(scb.shape)));
  same_device(op, {{other_name, &other}, {"CB", &cb}, {"SCB", &scb}});
  Int8Weight w;
  w.cb = cb.ptr<int8_t>(), w.scb = scb.ptr<float>(), w.N = cb.dim(0), w.K = cb.dim(1), w.cache = cb.storage.get();
  return w;
}

// x float (..., K) matching the weight.
void require_input(const Tensor& x, const Int8Weight& w, int64_t want, const char* op, const char* name) {
  require_float(x, op, name);
  require_ndim(x, 1, 16, op, name);
  if (x.dim(-1) != want)
    fail("ERR_SHAPE", cat(op, ": ", name, " has ", x.dim(-1), " features (shape ", shape_str(x.shape), ") but the int8 weight (",
                          w.N, ", ", w.K, ") expects ", want));
}

float threshold_arg(const Napi::Value& v, const char* op) {
  double t = arg_number(v, op, "threshold");
  if (!(t >= 0) || !std::isfinite(t)) fail_range(cat(op, ": threshold must be a finite number >= 0, got ", t));
  return static_cast<float>(t);
}

// int8Quantize(w[N, K] f32/f16/bf16) -> [CB i8 (N, K), SCB f32 (N)]
Napi::Value Int8Quantize(const Napi::CallbackInfo& info) {
  const char* op = "int8Quantize";
  const Tensor& w = TensorHandle::From(info[0], op, "weight");
  require_float(w, op, "weight");
  require_ndim(w, 2, 2, op, "weight");
  const Device d = w.device();
  Tensor cb = new_tensor(d, DType::I8, w.shape, op, false);
  Tensor scb = new_tensor(d, DType::F32, {w.dim(0)}, op, false);
  auto quantize = d == Device::CPU ? int8_quantize_rows : op_kernel(d, op, &OpTable::int8_quantize);
  int64_t bad = quantize(w.data(), w.dtype, w.dim(0), w.dim(1), cb.ptr<int8_t>(), scb.ptr<float>());
  if (bad >= 0)
    fail_range(cat(op, ": weight row ", bad, " holds a value that is not finite in f16 (NaN, inf, or beyond +-65504; ",
                   "int8 quantisation rounds the weight to f16 first, as bitsandbytes does)"));
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, TensorHandle::Wrap(info.Env(), cb));
  out.Set(1u, TensorHandle::Wrap(info.Env(), scb));
  return out;
}

// int8Linear(x[..., K], CB, SCB, bias[N] | null, threshold[, u, bt[, down, scale]]) -> y[..., N] in x's dtype
Napi::Value Int8Linear(const Napi::CallbackInfo& info) {
  const char* op = "int8Linear";
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  Int8Weight w = weight_args(info, 1, op, x, "x");
  require_input(x, w, w.K, op, "x");
  const Tensor* b = TensorHandle::FromOptional(info[3], op, "bias");
  const Device d = same_device(op, {{"x", &x}, {"bias", b}});
  require_bias(b, w.N, op, d);
  Int8LinearArgs a;
  a.threshold = threshold_arg(info[4], op);
  // Optional fused rank-r term: u (rows of x, r) and bt (r, N), f32.
  const Tensor* u = TensorHandle::FromOptional(info[5], op, "u");
  const Tensor* bt = TensorHandle::FromOptional(info[6], op, "bt");
  if (!u != !bt) fail("ERR_SHAPE", cat(op, ": u and bt come together (the fused rank term u·bt), got only ", u ? "u" : "bt"));
  if (u) {
    same_device(op, {{"x", &x}, {"u", u}, {"bt", bt}});
    for (auto [t, n] : {std::pair{u, "u"}, {bt, "bt"}})
      if (t->dtype != DType::F32 || t->ndim() != 2) fail("ERR_SHAPE", cat(op, ": ", n, " must be a 2-D f32 tensor, got ", dtype_name(t->dtype), " ", shape_str(t->shape)));
    require_shape(*u, {x.rows(), u->dim(1)}, op, "u");
    require_shape(*bt, {u->dim(1), w.N}, op, "bt");
    a.u = u->ptr<float>(), a.bt = bt->ptr<float>(), a.r = u->dim(1);
  }
  // Optional down-projection (LoRA's A, r x K, f32) with its scale: u is then written, u = scale·x·Aᵀ,
  // computed as x is quantised (CPU, x f32).
  const Tensor* down = info.Length() > 7 ? TensorHandle::FromOptional(info[7], op, "down") : nullptr;
  if (down) {
    if (!u) fail("ERR_SHAPE", cat(op, ": down (x·downᵀ written into u) needs u and bt"));
    if (d != Device::CPU) fail("ERR_NOT_ON_DEVICE", cat(op, ": no ", device_name(d), " kernel for down; compute u = scale·x·downᵀ apart there"));
    if (x.dtype != DType::F32) fail("ERR_DTYPE", cat(op, ": down needs x in f32, got ", dtype_name(x.dtype)));
    if (down->dtype != DType::F32 || down->ndim() != 2) fail("ERR_SHAPE", cat(op, ": down must be a 2-D f32 tensor, got ", dtype_name(down->dtype), " ", shape_str(down->shape)));
    same_device(op, {{"x", &x}, {"down", down}});
    require_shape(*down, {a.r, w.K}, op, "down");
    a.down = down->ptr<float>(), a.down_scale = static_cast<float>(arg_number(info[8], op, "down's scale"));
    begin_write(*u, op, "u");
    a.u_out = const_cast<float*>(a.u);  // written: u is this call's output for the rank term
  }
  Shape ys = x.shape;
  ys.back() = w.N;
  Tensor y = new_tensor(d, x.dtype, ys, op, false);  // written in full
  a.M = x.rows(), a.x = x.data(), a.x_dt = x.dtype, a.w = w;
  if (b) a.bias = b->data(), a.bias_dt = b->dtype;
  a.y = y.data(), a.y_dt = y.dtype;
  (d == Device::CPU ? int8_linear_cpu : op_kernel(d, op, &OpTable::int8_linear))(a);
  return TensorHandle::Wrap(info.Env(), y);
}

// int8LinearGradInput(dy[..., N], CB, SCB) -> dx[..., K] in dy's dtype
Napi::Value Int8LinearGradInput(const Napi::CallbackInfo& info) {
  const char* op = "int8LinearGradInput";
  const Tensor& dy = TensorHandle::From(info[0], op, "dy");
  Int8Weight w = weight_args(info, 1, op, dy, "dy");
  require_input(dy, w, w.N, op, "dy");
  Shape xs = dy.shape;
  xs.back() = w.K;
  const Device d = dy.device();
  Tensor dx = new_tensor(d, dy.dtype, xs, op, false);
  auto kernel = d == Device::CPU ? int8_linear_grad_input_cpu : op_kernel(d, op, &OpTable::int8_linear_grad_input);
  if (dx.numel() > 0) kernel(dy.data(), dy.dtype, dy.rows(), w, dx.data(), dx.dtype);
  return TensorHandle::Wrap(info.Env(), dx);
}

// _int8Test(x[M, K], CB, SCB, threshold) -> the raw int32 products x_q·CBᵀ (M, N) of the active kernel
Napi::Value Int8Test(const Napi::CallbackInfo& info) {
  const char* op = "_int8Test";
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  Int8Weight w = weight_args(info, 1, op, x, "x");
  require_input(x, w, w.K, op, "x");
  Int8LinearArgs a;
  a.threshold = threshold_arg(info[3], op);
  const Device d = x.device();
  Tensor raw = new_tensor(d, DType::I32, {x.rows(), w.N}, op, false);
  a.M = x.rows(), a.x = x.data(), a.x_dt = x.dtype, a.w = w;
  a.raw = raw.ptr<int32_t>();
  (d == Device::CPU ? int8_linear_cpu : op_kernel(d, op, &OpTable::int8_linear))(a);
  return TensorHandle::Wrap(info.Env(), raw);
}

}  // namespace

void register_int8_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("int8Quantize", Napi::Function::New<guarded<Int8Quantize>>(env, "int8Quantize"));
  exports.Set("int8Linear", Napi::Function::New<guarded<Int8Linear>>(env, "int8Linear"));
  exports.Set("int8LinearGradInput", Napi::Function::New<guarded<Int8LinearGradInput>>(env, "int8LinearGradInput"));
  exports.Set("_int8Test", Napi::Function::New<guarded<Int8Test>>(env, "_int8Test"));
}

}  // namespace peft
