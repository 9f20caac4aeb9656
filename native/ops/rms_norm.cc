// RMSNorm as one fused op on the host: the forward returns y and the per-row rstd the backward reuses.
#include "../cpu/rms_norm.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "ops.h"

namespace peft {
namespace {

// x (rows over its last dimension) at info[0] and the optional weight [x.dim(-1)] at info[1].
struct NormArgs {
  const Tensor& x;
  const Tensor* w;
};

const Tensor* optional_weight(const Napi::CallbackInfo& info, const char* op, const Tensor& x) {
  const Tensor* w = TensorHandle::FromOptional(info[1], op, "weight");
  if (!w) return nullptr;
  require_float(*w, op, "weight");
  if (w->ndim() != 1 || w->dim(0) != x.dim(-1))
    fail("ERR_SHAPE", cat(op, ": weight must be [", x.dim(-1), "] (x's last dimension), got ", shape_str(w->shape)));
  return w;
}

NormArgs norm_args(const Napi::CallbackInfo& info, const char* op) {
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  require_float(x, op, "x");
  require_ndim(x, 1, 16, op, "x");
  return {x, optional_weight(info, op, x)};
}

// rmsNorm(x, weight | null, eps) -> [y like x, rstd f32 (x.shape without the last dim)]
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  const char* op = "rmsNorm";
  auto [x, w] = norm_args(info, op);
  double eps = arg_number(info[2], op, "eps");
  require_cpu(op, {{"x", &x}, {"weight", w}});
  Tensor y = make_tensor(x.dtype, x.shape, Device::CPU, false);
  Tensor rstd = make_tensor(DType::F32, Shape(x.shape.begin(), x.shape.end() - 1), Device::CPU, false);
  rms_norm_cpu(x.data(), x.dtype, w ? w->data() : nullptr, w ? w->dtype : DType::F32, y.data(), rstd.ptr<float>(), x.rows(),
               x.dim(-1), static_cast<float>(eps));
  return TensorHandle::WrapAll(info.Env(), {y, rstd});
}

// rmsNormBackward(x, weight | null, rstd, dy, wantDx, wantDw) -> [dx | null, dw | null]
Napi::Value RmsNormBackward(const Napi::CallbackInfo& info) {
  const char* op = "rmsNormBackward";
  auto [x, w] = norm_args(info, op);
  const Tensor& rstd = TensorHandle::From(info[2], op, "rstd");
  const Tensor& dy = TensorHandle::From(info[3], op, "dy");
  bool want_dx = arg_bool(info[4], op, "wantDx"), want_dw = arg_bool(info[5], op, "wantDw") && w;
  require_float(dy, op, "dy");
  require_same_shape(x, "x", dy, "dy", op);
  if (rstd.dtype != DType::F32 || rstd.numel() != x.rows()) fail("ERR_SHAPE", cat(op, ": rstd must be f32 with one value per row of x"));
  require_cpu(op, {{"x", &x}, {"weight", w}, {"rstd", &rstd}, {"dy", &dy}});
  Tensor dx, dw;
  if (want_dx) dx = make_tensor(x.dtype, x.shape, Device::CPU, false);
  if (want_dw) dw = make_tensor(w->dtype, w->shape, Device::CPU, false);
  rms_norm_backward_cpu(x.data(), x.dtype, w ? w->data() : nullptr, w ? w->dtype : DType::F32, rstd.ptr<float>(), dy.data(), dy.dtype,
                        want_dx ? dx.data() : nullptr, want_dw ? dw.data() : nullptr, x.rows(), x.dim(-1));
  return TensorHandle::WrapAll(info.Env(), {dx, dw});
}

}  // namespace

void register_rms_norm_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("rmsNorm", Napi::Function::New<guarded<RmsNorm>>(env, "rmsNorm"));
  exports.Set("rmsNormBackward", Napi::Function::New<guarded<RmsNormBackward>>(env, "rmsNormBackward"));
}

}  // namespace peft
