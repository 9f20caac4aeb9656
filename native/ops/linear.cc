// Dense products: linear (y = x·Wᵀ + b), its two gradients, and matmul.
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

GemmMat rowmajor(const Tensor& t, int64_t cols) { return {t.data(), t.dtype, cols, 1}; }
GemmMat transposed(const Tensor& t, int64_t cols) { return {t.data(), t.dtype, 1, cols}; }

// Optional trailing flag: the weight is stored (in, out) (GPT-2's Conv1D) instead of (out, in).
bool weight_in_out(const Napi::CallbackInfo& info, size_t index, const char* op) {
  return info.Length() > index && !info[index].IsUndefined() && arg_bool(info[index], op, "weightInOut");
}

// linear(x[..., K], W[N, K], bias[N] | null, weightInOut?) -> y[..., N] in x's dtype
Napi::Value Linear(const Napi::CallbackInfo& info) {
  const char* op = "linear";
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  const Tensor& w = TensorHandle::From(info[1], op, "weight");
  const Tensor* b = TensorHandle::FromOptional(info[2], op, "bias");
  require_float(x, op, "x");
  require_float(w, op, "weight");
  require_ndim(x, 1, 16, op, "x");
  require_ndim(w, 2, 2, op, "weight");
  bool in_out = weight_in_out(info, 3, op);
  int64_t K = x.dim(-1), N = in_out ? w.dim(1) : w.dim(0), wK = in_out ? w.dim(0) : w.dim(1);
  if (wK != K)
    fail("ERR_SHAPE", cat(op, ": x has ", K, " features (shape ", shape_str(x.shape), ") but weight expects ", wK,
                          " (shape ", shape_str(w.shape), in_out ? ", stored (in, out)" : "", ")"));
  if (b) {
    require_float(*b, op, "bias");
    if (b->ndim() != 1 || b->dim(0) != N)
      fail("ERR_SHAPE", cat(op, ": bias must have shape [", N, "], got ", shape_str(b->shape)));
  }
  Device d = same_device(op, {{"x", &x}, {"weight", &w}, {"bias", b}});
  Shape ys = x.shape;
  ys.back() = N;
  Tensor y = new_tensor(d, x.dtype, ys, op, false);  // written in full by the GEMM
  GemmArgs g;
  g.M = x.rows();
  g.N = N;
  g.K = K;
  g.A = rowmajor(x, K);
  g.B = in_out ? rowmajor(w, N) : transposed(w, K);  // B(k, n) = W(n, k), or W(k, n) stored (in, out)
  g.C = y.data();
  g.c_dt = y.dtype;
  g.ldc = N;
  if (b) g.bias = b->data(), g.bias_dt = b->dtype;
  g.b_cache = w.storage.get();
  ops_for(d, op).gemm(g);
  return TensorHandle::Wrap(info.Env(), y);
}

// linearGradInput(dy[M, N], W[N, K], weightInOut?) -> dx[M, K] = dy·W in dy's dtype
Napi::Value LinearGradInput(const Napi::CallbackInfo& info) {
  const char* op = "linearGradInput";
  const Tensor& dy = TensorHandle::From(info[0], op, "dy");
  const Tensor& w = TensorHandle::From(info[1], op, "weight");
  require_float(dy, op, "dy");
  require_float(w, op, "weight");
  require_ndim(dy, 1, 16, op, "dy");
  require_ndim(w, 2, 2, op, "weight");
  bool in_out = weight_in_out(info, 2, op);
  int64_t N = in_out ? w.dim(1) : w.dim(0), K = in_out ? w.dim(0) : w.dim(1);
  if (dy.dim(-1) != N)
    fail("ERR_SHAPE", cat(op, ": dy has ", dy.dim(-1), " features (shape ", shape_str(dy.shape), ") but weight has ", N,
                          " outputs (shape ", shape_str(w.shape), ")"));
  Device d = same_device(op, {{"dy", &dy}, {"weight", &w}});
  Shape xs = dy.shape;
  xs.back() = K;
  Tensor dx = new_tensor(d, dy.dtype, xs, op, false);
  GemmArgs g;
  g.M = dy.rows();
  g.N = K;
  g.K = N;
  g.A = rowmajor(dy, N);
  g.B = in_out ? transposed(w, N) : rowmajor(w, K);
  g.C = dx.data();
  g.c_dt = dx.dtype;
  g.ldc = K;
  ops_for(d, op).gemm(g);
  return TensorHandle::Wrap(info.Env(), dx);
}

// linearGradWeight(dy[M, N], x[M, K], dW[N, K], accumulate, weightInOut?) : dW (+)= dyᵀ·x (or xᵀ·dy for a
// weight stored (in, out)), rounded once into dW's dtype
Napi::Value LinearGradWeight(const Napi::CallbackInfo& info) {
  const char* op = "linearGradWeight";
  const Tensor& dy = TensorHandle::From(info[0], op, "dy");
  const Tensor& x = TensorHandle::From(info[1], op, "x");
  const Tensor& dw = TensorHandle::From(info[2], op, "dW");
  bool acc = arg_bool(info[3], op, "accumulate");
  require_float(dy, op, "dy");
  require_float(x, op, "x");
  require_float(dw, op, "dW");
  require_ndim(dy, 1, 16, op, "dy");
  require_ndim(x, 1, 16, op, "x");
  require_ndim(dw, 2, 2, op, "dW");
  bool in_out = weight_in_out(info, 4, op);
  int64_t N = in_out ? dw.dim(1) : dw.dim(0), K = in_out ? dw.dim(0) : dw.dim(1);
  if (dy.dim(-1) != N || x.dim(-1) != K || dy.rows() != x.rows())
    fail("ERR_SHAPE", cat(op, ": dy ", shape_str(dy.shape), " and x ", shape_str(x.shape), " do not match dW ", shape_str(dw.shape)));
  Device d = same_device(op, {{"dy", &dy}, {"x", &x}, {"dW", &dw}});
  int64_t M = dy.rows();
  GemmArgs g;
  if (in_out) {  // dW(k, n) = Σ_m x(m, k) dy(m, n)
    g.M = K, g.N = N, g.K = M;
    g.A = transposed(x, K);
    g.B = rowmajor(dy, N);
    g.ldc = N;
  } else {  // dW(n, k) = Σ_m dy(m, n) x(m, k)
    g.M = N, g.N = K, g.K = M;
    g.A = transposed(dy, N);
    g.B = rowmajor(x, K);
    g.ldc = K;
  }
  g.C = dw.data();
  g.c_dt = dw.dtype;
  g.accumulate = acc;
  begin_write(dw, op, "dW");
  ops_for(d, op).gemm(g);
  return info.Env().Undefined();
}

// matmul(a, b, transA, transB): 2-D, result in a's dtype
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  const char* op = "matmul";
  const Tensor& a = TensorHandle::From(info[0], op, "a");
  const Tensor& b = TensorHandle::From(info[1], op, "b");
  bool ta = arg_bool(info[2], op, "transA"), tb = arg_bool(info[3], op, "transB");
  require_float(a, op, "a");
  require_float(b, op, "b");
  require_ndim(a, 2, 2, op, "a");
  require_ndim(b, 2, 2, op, "b");
  int64_t M = ta ? a.dim(1) : a.dim(0), K = ta ? a.dim(0) : a.dim(1);
  int64_t Kb = tb ? b.dim(1) : b.dim(0), N = tb ? b.dim(0) : b.dim(1);
  if (K != Kb)
    fail("ERR_SHAPE", cat(op, ": inner dimensions differ: a", ta ? "ᵀ" : "", " is ", M, "x", K, ", b", tb ? "ᵀ" : "", " is ", Kb, "x", N));
  Device d = same_device(op, {{"a", &a}, {"b", &b}});
  Tensor c = new_tensor(d, a.dtype, {M, N}, op, false);
  GemmArgs g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.A = ta ? transposed(a, a.dim(1)) : rowmajor(a, a.dim(1));
  g.B = tb ? transposed(b, b.dim(1)) : rowmajor(b, b.dim(1));
  g.C = c.data();
  g.c_dt = c.dtype;
  g.ldc = N;
  ops_for(d, op).gemm(g);
  return TensorHandle::Wrap(info.Env(), c);
}

}  // namespace

void register_linear_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("linear", Napi::Function::New<guarded<Linear>>(env, "linear"));
  exports.Set("linearGradInput", Napi::Function::New<guarded<LinearGradInput>>(env, "linearGradInput"));
  exports.Set("linearGradWeight", Napi::Function::New<guarded<LinearGradWeight>>(env, "linearGradWeight"));
  exports.Set("matmul", Napi::Function::New<guarded<Matmul>>(env, "matmul"));
}

}  // namespace peft
