// Elementwise and NN ops for tape-free training: activations, log-softmax, dropout, embedding, bias
// gradients and in-place updates. Each runs on its operands' device through that device's op table
// (ERR_NOT_ON_DEVICE naming the op where the device has no kernel).
#include <cstring>

#include "../cpu/nn_kernels.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

Act arg_act(const Napi::Value& v, const char* op) {
  std::string s = arg_string(v, op, "kind");
  if (s == "relu") return Act::Relu;
  if (s == "gelu") return Act::Gelu;
  if (s == "gelu_tanh") return Act::GeluTanh;
  if (s == "silu") return Act::Silu;
  fail_type(cat(op, ": kind must be \"relu\", \"gelu\", \"gelu_tanh\" or \"silu\", got \"", s, "\""));
}

// A float tensor on the host with at least one dimension (ops over the last dimension).
void require_rows(const Tensor& t, const char* op, const char* name) {
  require_float(t, op, name);
  require_ndim(t, 1, 16, op, name);
}

// Dropout's probability and Philox coordinates (seed, stream): non-negative integers JS holds exactly.
struct DropoutArgs {
  double p;
  uint64_t seed, stream;
};
DropoutArgs arg_dropout(const Napi::CallbackInfo& info, int at, const char* op) {
  double p = arg_number(info[at], op, "p");
  if (!(p >= 0 && p < 1)) fail_range(cat(op, ": p must be in [0, 1), got ", p));
  uint64_t seed = static_cast<uint64_t>(arg_int(info[at + 1], op, "seed", 0, kMaxSafeInt));
  uint64_t stream = static_cast<uint64_t>(arg_int(info[at + 2], op, "stream", 0, kMaxSafeInt));
  return {p, seed, stream};
}

// The first id outside [0, vocab) is a RangeError naming it, raised before anything is written.
void check_ids(const Tensor& ids, int64_t vocab, const char* op) {
  HostBytes h = host_bytes(ids, op);
  int64_t bad = first_bad_id(h.data, ids.dtype, ids.numel(), vocab);
  if (bad >= 0)
    fail_range(cat(op, ": ids[", bad, "] = ", load_id(h.data, ids.dtype, bad), " is out of range for ", vocab,
                   " embeddings (expected 0 <= id < ", vocab, ")"));
}

// activation(kind, x) -> y in x's dtype
Napi::Value Activation(const Napi::CallbackInfo& info) {
  const char* op = "activation";
  Act a = arg_act(info[0], op);
  const Tensor& x = TensorHandle::From(info[1], op, "x");
  require_float(x, op, "x");
  Device d = same_device(op, {{"x", &x}});
  auto kernel = op_kernel(d, op, &OpTable::activation);
  Tensor y = new_tensor(d, x.dtype, x.shape, op, false);
  kernel(a, x.data(), x.dtype, y.data(), y.dtype, x.numel());
  return TensorHandle::Wrap(info.Env(), y);
}

// activationBackward(kind, x, dy) -> dx in dy's dtype
Napi::Value ActivationBackward(const Napi::CallbackInfo& info) {
  const char* op = "activationBackward";
  Act a = arg_act(info[0], op);
  const Tensor& x = TensorHandle::From(info[1], op, "x");
  const Tensor& dy = TensorHandle::From(info[2], op, "dy");
  require_float(x, op, "x");
  require_float(dy, op, "dy");
  require_same_shape(x, "x", dy, "dy", op);
  Device d = same_device(op, {{"x", &x}, {"dy", &dy}});
  auto kernel = op_kernel(d, op, &OpTable::activation_backward);
  Tensor dx = new_tensor(d, dy.dtype, dy.shape, op, false);
  kernel(a, x.data(), x.dtype, dy.data(), dy.dtype, dx.data(), dx.dtype, x.numel());
  return TensorHandle::Wrap(info.Env(), dx);
}

// logSoftmax(x) over the last dimension, in x's dtype
Napi::Value LogSoftmax(const Napi::CallbackInfo& info) {
  const char* op = "logSoftmax";
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  require_rows(x, op, "x");
  Device d = same_device(op, {{"x", &x}});
  auto kernel = op_kernel(d, op, &OpTable::log_softmax);
  Tensor y = new_tensor(d, x.dtype, x.shape, op, false);
  kernel(x.data(), x.dtype, y.data(), y.dtype, x.rows(), x.dim(-1));
  return TensorHandle::Wrap(info.Env(), y);
}

// logSoftmaxBackward(y, dy) -> dx in dy's dtype, from the forward output y
Napi::Value LogSoftmaxBackward(const Napi::CallbackInfo& info) {
  const char* op = "logSoftmaxBackward";
  const Tensor& y = TensorHandle::From(info[0], op, "y");
  const Tensor& dy = TensorHandle::From(info[1], op, "dy");
  require_rows(y, op, "y");
  require_rows(dy, op, "dy");
  require_same_shape(y, "y", dy, "dy", op);
  Device d = same_device(op, {{"y", &y}, {"dy", &dy}});
  auto kernel = op_kernel(d, op, &OpTable::log_softmax_backward);
  Tensor dx = new_tensor(d, dy.dtype, dy.shape, op, false);
  kernel(y.data(), y.dtype, dy.data(), dy.dtype, dx.data(), dx.dtype, y.rows(), y.dim(-1));
  return TensorHandle::Wrap(info.Env(), dx);
}

// dropout(x, p, seed, stream) -> x * mask in x's dtype; p == 0 gives a copy
Napi::Value Dropout(const Napi::CallbackInfo& info) {
  const char* op = "dropout";
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  DropoutArgs d = arg_dropout(info, 1, op);
  require_float(x, op, "x");
  Device dev = same_device(op, {{"x", &x}});
  auto kernel = op_kernel(dev, op, &OpTable::dropout);
  Tensor y = new_tensor(dev, x.dtype, x.shape, op, false);
  if (d.p == 0) {
    ops_for(dev, op).convert(x.data(), x.dtype, y.data(), y.dtype, x.numel());  // a copy
  } else {
    kernel(x.data(), x.dtype, y.data(), y.dtype, x.numel(), d.p, d.seed, d.stream);
  }
  return TensorHandle::Wrap(info.Env(), y);
}

// dropoutMask(shape, p, seed, stream) -> the f32 mask dropout multiplies by
Napi::Value DropoutMask(const Napi::CallbackInfo& info) {
  const char* op = "dropoutMask";
  Shape s = arg_shape(info[0], op, "shape");
  DropoutArgs d = arg_dropout(info, 1, op);
  Tensor m = make_tensor(DType::F32, s, Device::CPU, false);
  dropout_cpu(nullptr, DType::F32, m.data(), DType::F32, m.numel(), d.p, d.seed, d.stream);
  return TensorHandle::Wrap(info.Env(), m);
}

// embedding(ids, weight[V, D]) -> (...ids.shape, D) in weight's dtype
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  const char* op = "embedding";
  const Tensor& ids = TensorHandle::From(info[0], op, "ids");
  const Tensor& w = TensorHandle::From(info[1], op, "weight");
  require_index(ids, op, "ids");
  require_float(w, op, "weight");
  require_ndim(w, 2, 2, op, "weight");
  Device d = same_device(op, {{"ids", &ids}, {"weight", &w}});
  auto kernel = op_kernel(d, op, &OpTable::embedding);
  check_ids(ids, w.dim(0), op);
  Shape os = ids.shape;
  os.push_back(w.dim(1));
  Tensor out = new_tensor(d, w.dtype, os, op, false);
  kernel(ids.data(), ids.dtype, ids.numel(), w.data(), out.data(), static_cast<size_t>(w.dim(1)) * dtype_size(w.dtype));
  return TensorHandle::Wrap(info.Env(), out);
}

// embeddingBackward(ids, dy[...ids.shape, D], dW[V, D]): dW[id] += dy rows
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  const char* op = "embeddingBackward";
  const Tensor& ids = TensorHandle::From(info[0], op, "ids");
  const Tensor& dy = TensorHandle::From(info[1], op, "dy");
  const Tensor& dw = TensorHandle::From(info[2], op, "dW");
  require_index(ids, op, "ids");
  require_float(dy, op, "dy");
  require_float(dw, op, "dW");
  require_ndim(dw, 2, 2, op, "dW");
  Shape want = ids.shape;
  want.push_back(dw.dim(1));
  if (dy.shape != want)
    fail("ERR_SHAPE", cat(op, ": dy has shape ", shape_str(dy.shape), " but ids ", shape_str(ids.shape), " and dW ",
                          shape_str(dw.shape), " need ", shape_str(want)));
  Device d = same_device(op, {{"ids", &ids}, {"dy", &dy}, {"dW", &dw}});
  auto kernel = op_kernel(d, op, &OpTable::embedding_backward);
  check_ids(ids, dw.dim(0), op);
  begin_write(dw, op, "dW");
  kernel(ids.data(), ids.dtype, ids.numel(), dy.data(), dy.dtype, dw.data(), dw.dtype, dw.dim(1));
  return info.Env().Undefined();
}

// sumRows(dy[..., N], out[N], accumulate): the bias gradient
Napi::Value SumRows(const Napi::CallbackInfo& info) {
  const char* op = "sumRows";
  const Tensor& dy = TensorHandle::From(info[0], op, "dy");
  const Tensor& out = TensorHandle::From(info[1], op, "out");
  bool acc = arg_bool(info[2], op, "accumulate");
  require_rows(dy, op, "dy");
  require_float(out, op, "out");
  if (out.ndim() != 1 || out.dim(0) != dy.dim(-1))
    fail("ERR_SHAPE", cat(op, ": out must have shape [", dy.dim(-1), "] for dy of shape ", shape_str(dy.shape), ", got ",
                          shape_str(out.shape)));
  Device d = same_device(op, {{"dy", &dy}, {"out", &out}});
  begin_write(out, op, "out");
  op_kernel(d, op, &OpTable::sum_rows)(dy.data(), dy.dtype, dy.rows(), dy.dim(-1), out.data(), out.dtype, acc);
  return info.Env().Undefined();
}

// addInPlace(a, b, alpha): a += alpha * b
Napi::Value AddInPlace(const Napi::CallbackInfo& info) {
  const char* op = "addInPlace";
  const Tensor& a = TensorHandle::From(info[0], op, "a");
  const Tensor& b = TensorHandle::From(info[1], op, "b");
  float alpha = static_cast<float>(arg_number(info[2], op, "alpha"));
  require_float(a, op, "a");
  require_float(b, op, "b");
  require_same_shape(a, "a", b, "b", op);
  Device d = same_device(op, {{"a", &a}, {"b", &b}});
  begin_write(a, op, "a");
  op_kernel(d, op, &OpTable::axpy)(a.data(), a.dtype, b.data(), b.dtype, alpha, a.numel());
  return info.Env().Undefined();
}

// scaleInPlace(a, alpha): a *= alpha
Napi::Value ScaleInPlace(const Napi::CallbackInfo& info) {
  const char* op = "scaleInPlace";
  const Tensor& a = TensorHandle::From(info[0], op, "a");
  float alpha = static_cast<float>(arg_number(info[1], op, "alpha"));
  require_float(a, op, "a");
  Device d = same_device(op, {{"a", &a}});
  begin_write(a, op, "a");
  op_kernel(d, op, &OpTable::scale)(a.data(), a.dtype, alpha, a.numel());
  return info.Env().Undefined();
}

// mul(a, b) -> a * b in a's dtype
Napi::Value Mul(const Napi::CallbackInfo& info) {
  const char* op = "mul";
  const Tensor& a = TensorHandle::From(info[0], op, "a");
  const Tensor& b = TensorHandle::From(info[1], op, "b");
  require_float(a, op, "a");
  require_float(b, op, "b");
  require_same_shape(a, "a", b, "b", op);
  Device d = same_device(op, {{"a", &a}, {"b", &b}});
  auto kernel = op_kernel(d, op, &OpTable::mul);
  Tensor y = new_tensor(d, a.dtype, a.shape, op, false);
  kernel(a.data(), a.dtype, b.data(), b.dtype, y.data(), y.dtype, a.numel());
  return TensorHandle::Wrap(info.Env(), y);
}

// fill(a, value): any dtype, converted as Tensor.fromArray converts numbers
Napi::Value Fill(const Napi::CallbackInfo& info) {
  const char* op = "fill";
  const Tensor& a = TensorHandle::From(info[0], op, "a");
  double value = arg_number(info[1], op, "value");
  Device d = same_device(op, {{"a", &a}});
  begin_write(a, op, "a");
  op_kernel(d, op, &OpTable::fill)(a.data(), a.dtype, a.numel(), value);
  return info.Env().Undefined();
}

}  // namespace

void register_nn_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("activation", Napi::Function::New<guarded<Activation>>(env, "activation"));
  exports.Set("activationBackward", Napi::Function::New<guarded<ActivationBackward>>(env, "activationBackward"));
  exports.Set("logSoftmax", Napi::Function::New<guarded<LogSoftmax>>(env, "logSoftmax"));
  exports.Set("logSoftmaxBackward", Napi::Function::New<guarded<LogSoftmaxBackward>>(env, "logSoftmaxBackward"));
  exports.Set("dropout", Napi::Function::New<guarded<Dropout>>(env, "dropout"));
  exports.Set("dropoutMask", Napi::Function::New<guarded<DropoutMask>>(env, "dropoutMask"));
  exports.Set("embedding", Napi::Function::New<guarded<Embedding>>(env, "embedding"));
  exports.Set("embeddingBackward", Napi::Function::New<guarded<EmbeddingBackward>>(env, "embeddingBackward"));
  exports.Set("sumRows", Napi::Function::New<guarded<SumRows>>(env, "sumRows"));
  exports.Set("addInPlace", Napi::Function::New<guarded<AddInPlace>>(env, "addInPlace"));
  exports.Set("scaleInPlace", Napi::Function::New<guarded<ScaleInPlace>>(env, "scaleInPlace"));
  exports.Set("mul", Napi::Function::New<guarded<Mul>>(env, "mul"));
  exports.Set("fill", Napi::Function::New<guarded<Fill>>(env, "fill"));
}

}  // namespace peft
