// Mean-reduced losses returning { loss, grad }: nllLoss, crossEntropy (fused log-softmax + nll with
// label smoothing) and mseLoss, with PyTorch's semantics, on the operands' device.
#include "../cpu/losses.h"
#include "../cpu/nn_kernels.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

Napi::Value loss_result(Napi::Env env, double loss, const Tensor& grad) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("loss", Napi::Number::New(env, loss));
  o.Set("grad", TensorHandle::Wrap(env, grad));
  return o;
}

// Scores (M, C) or (C) with class targets (M) or (): PyTorch's nll_loss / cross_entropy shapes.
struct ClassArgs {
  const Tensor* scores;
  const Tensor* target;
  int64_t rows, classes, ignore;
  Device device;
};
ClassArgs class_args(const Napi::CallbackInfo& info, const char* op, const char* scores_name) {
  const Tensor& s = TensorHandle::From(info[0], op, scores_name);
  const Tensor& t = TensorHandle::From(info[1], op, "target");
  int64_t ignore = arg_int(info[2], op, "ignoreIndex", -kMaxSafeInt, kMaxSafeInt);
  require_float(s, op, scores_name);
  require_index(t, op, "target");
  require_ndim(s, 1, 2, op, scores_name);
  bool batched = s.ndim() == 2;
  if (batched ? (t.ndim() != 1 || t.dim(0) != s.dim(0)) : t.ndim() != 0)
    fail("ERR_SHAPE", cat(op, ": target must have shape ", batched ? cat("[", s.dim(0), "]") : std::string("[]"), " for ",
                          scores_name, " of shape ", shape_str(s.shape), ", got ", shape_str(t.shape)));
  Device d = same_device(op, {{scores_name, &s}, {"target", &t}});
  int64_t rows = batched ? s.dim(0) : 1, classes = s.dim(-1);
  HostBytes th = host_bytes(t, op);
  int64_t bad = first_bad_target(th.data, t.dtype, rows, classes, ignore);
  if (bad >= 0)
    fail_range(cat(op, ": target[", bad, "] = ", load_id(th.data, t.dtype, bad), " is out of range for ", classes,
                   " classes (expected 0 <= target < ", classes, " or ignoreIndex ", ignore, ")"));
  return {&s, &t, rows, classes, ignore, d};
}

// nllLoss(logProbs, target, ignoreIndex) -> { loss, grad }
Napi::Value NllLoss(const Napi::CallbackInfo& info) {
  const char* op = "nllLoss";
  ClassArgs a = class_args(info, op, "logProbs");
  auto kernel = op_kernel(a.device, op, &OpTable::nll_loss);
  Tensor grad = new_tensor(a.device, a.scores->dtype, a.scores->shape, op, true);
  double loss = kernel(a.scores->data(), a.scores->dtype, a.target->data(), a.target->dtype, a.rows, a.classes,
                             a.ignore, grad.data(), grad.dtype);
  return loss_result(info.Env(), loss, grad);
}

// crossEntropy(logits, target, ignoreIndex, labelSmoothing) -> { loss, grad }
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  const char* op = "crossEntropy";
  double eps = arg_number(info[3], op, "labelSmoothing");
  if (!(eps >= 0 && eps <= 1)) fail_range(cat(op, ": labelSmoothing must be in [0, 1], got ", eps));
  ClassArgs a = class_args(info, op, "logits");
  auto kernel = op_kernel(a.device, op, &OpTable::cross_entropy);
  Tensor grad = new_tensor(a.device, a.scores->dtype, a.scores->shape, op, true);
  double loss = kernel(a.scores->data(), a.scores->dtype, a.target->data(), a.target->dtype, a.rows,
                                  a.classes, a.ignore, eps, grad.data(), grad.dtype);
  return loss_result(info.Env(), loss, grad);
}

// mseLoss(y, target) -> { loss, grad } with grad in y's dtype
Napi::Value MseLoss(const Napi::CallbackInfo& info) {
  const char* op = "mseLoss";
  const Tensor& y = TensorHandle::From(info[0], op, "y");
  const Tensor& t = TensorHandle::From(info[1], op, "target");
  require_float(y, op, "y");
  require_float(t, op, "target");
  require_same_shape(y, "y", t, "target", op);
  Device d = same_device(op, {{"y", &y}, {"target", &t}});
  auto kernel = op_kernel(d, op, &OpTable::mse_loss);
  Tensor grad = new_tensor(d, y.dtype, y.shape, op, false);
  double loss = kernel(y.data(), y.dtype, t.data(), t.dtype, y.numel(), grad.data(), grad.dtype);
  return loss_result(info.Env(), loss, grad);
}

}  // namespace

void register_loss_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("nllLoss", Napi::Function::New<guarded<NllLoss>>(env, "nllLoss"));
  exports.Set("crossEntropy", Napi::Function::New<guarded<CrossEntropy>>(env, "crossEntropy"));
  exports.Set("mseLoss", Napi::Function::New<guarded<MseLoss>>(env, "mseLoss"));
}

}  // namespace peft
