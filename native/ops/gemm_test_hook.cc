// _gemmTest(a, b, c, opts): drives the GEMM directly for tests, with the layouts and options the ops
// never combine (transposed operands, alpha, any output dtype, accumulate, the fused extra k-steps, the
// reference path). c is written in place. Not part of the public API.
#include "../cpu/gemm.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "ops.h"

namespace peft {
namespace {

const Tensor* opt_tensor(const Napi::Object& o, const char* key, const char* op) {
  Napi::Value v = o.Get(key);
  return v.IsUndefined() || v.IsNull() ? nullptr : &TensorHandle::From(v, op, key);
}
bool opt_bool(const Napi::Object& o, const char* key, const char* op) {
  Napi::Value v = o.Get(key);
  return v.IsUndefined() ? false : arg_bool(v, op, key);
}

Napi::Value GemmTest(const Napi::CallbackInfo& info) {
  const char* op = "_gemmTest";
  const Tensor& a = TensorHandle::From(info[0], op, "a");
  const Tensor& b = TensorHandle::From(info[1], op, "b");
  const Tensor& c = TensorHandle::From(info[2], op, "c");
  if (!info[3].IsObject()) fail_type(cat(op, ": opts must be an object"));
  Napi::Object o = info[3].As<Napi::Object>();
  bool ta = opt_bool(o, "transA", op), tb = opt_bool(o, "transB", op);
  const Tensor* bias = opt_tensor(o, "bias", op);
  const Tensor* a2 = opt_tensor(o, "a2", op);
  const Tensor* col_scale = opt_tensor(o, "colScale", op);  // f32 (N): the epilogue's per-column scale
  const Tensor* a_scale = opt_tensor(o, "aScale", op);      // f32 (K): A's columns scaled as packed
  const Tensor* b2 = opt_tensor(o, "b2", op);
  for (auto [t, name] : {std::pair{&a, "a"}, {&b, "b"}, {&c, "c"}, {a2, "a2"}, {b2, "b2"}}) {
    if (!t) continue;
    require_float(*t, op, name);
    require_ndim(*t, 2, 2, op, name);
  }
  if (bias) require_float(*bias, op, "bias");
  if ((a2 == nullptr) != (b2 == nullptr)) fail("ERR_SHAPE", cat(op, ": a2 and b2 go together"));
  same_device(op, {{"a", &a}, {"b", &b}, {"c", &c}, {"bias", bias}, {"a2", a2}, {"b2", b2}});
  if (c.device() != Device::CPU) fail("ERR_NOT_ON_DEVICE", cat(op, ": host tensors only"));
  int64_t M = c.dim(0), N = c.dim(1), K = ta ? a.dim(0) : a.dim(1), R = a2 ? a2->dim(1) : 0;
  bool ok = (ta ? a.dim(1) : a.dim(0)) == M && (tb ? b.dim(1) : b.dim(0)) == K && (tb ? b.dim(0) : b.dim(1)) == N;
  if (bias) ok = ok && bias->ndim() == 1 && bias->dim(0) == N;
  if (col_scale) ok = ok && col_scale->dtype == DType::F32 && col_scale->ndim() == 1 && col_scale->dim(0) == N;
  if (a_scale) ok = ok && a_scale->dtype == DType::F32 && a_scale->ndim() == 1 && a_scale->dim(0) == K;
  if (a2) ok = ok && a2->dim(0) == M && b2->dim(0) == R && b2->dim(1) == N;
  if (!ok)
    fail("ERR_SHAPE", cat(op, ": shapes do not compose: a ", shape_str(a.shape), ta ? "ᵀ" : "", ", b ", shape_str(b.shape),
                          tb ? "ᵀ" : "", ", c ", shape_str(c.shape)));
  GemmArgs g;
  g.M = M, g.N = N, g.K = K, g.R = R;
  g.A = ta ? GemmMat{a.data(), a.dtype, 1, M} : GemmMat{a.data(), a.dtype, K, 1};
  g.B = tb ? GemmMat{b.data(), b.dtype, 1, K} : GemmMat{b.data(), b.dtype, N, 1};
  g.C = c.data(), g.c_dt = c.dtype, g.ldc = N;
  Napi::Value alpha = o.Get("alpha");
  if (!alpha.IsUndefined()) g.alpha = static_cast<float>(arg_number(alpha, op, "alpha"));
  g.accumulate = opt_bool(o, "accumulate", op);
  if (bias) g.bias = bias->data(), g.bias_dt = bias->dtype;
  if (col_scale) g.col_scale = col_scale->ptr<float>();
  if (a_scale) g.A.ks = a_scale->ptr<float>();
  if (a2) g.A2 = {a2->data(), a2->dtype, R, 1}, g.B2 = {b2->data(), b2->dtype, N, 1};
  if (opt_bool(o, "cacheB", op)) g.b_cache = b.storage.get();
  if (opt_bool(o, "reference", op)) gemm_reference(g);
  else gemm(g);
  c.storage->bump_version();
  return info.Env().Undefined();
}

}  // namespace

void register_gemm_test_hook(Napi::Env env, Napi::Object exports) {
  exports.Set("_gemmTest", Napi::Function::New<guarded<GemmTest>>(env, "_gemmTest"));
}

}  // namespace peft
