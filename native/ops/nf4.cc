// bitsandbytes' 4-bit ops (NF4 / FP4): quant4Quantize (W -> packed codes u8, absmax f32), quant4Dequantize,
// quant4Linear (y = x·Wᵀ + b with W unpacked into the GEMM's panels) and quant4LinearGradInput (dx = dy·W).
// The weight arguments always come as (packed, absmax, type, blocksize, outFeatures, inFeatures, wdt, cdt).
#include <string>

#include "../cpu/nf4.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "ops.h"

namespace peft {
namespace {

Quant4 type_arg(const Napi::Value& v, const char* op) {
  std::string s = arg_string(v, op, "quantType");
  if (s == "nf4") return Quant4::NF4;
  if (s == "fp4") return Quant4::FP4;
  fail("ERR_CONFIG", cat(op, ": quantType must be \"nf4\" or \"fp4\", got \"", s, "\""));
}

int64_t blocksize_arg(const Napi::Value& v, const char* op) {
  int64_t bs = arg_int(v, op, "blocksize", 1, 1 << 20);
  if (bs < 32 || bs > 4096 || (bs & (bs - 1)))
    fail("ERR_CONFIG", cat(op, ": blocksize must be one of bitsandbytes' 32, 64, 128, 256, 512, 1024, 2048, 4096, got ", bs));
  return bs;
}

DType float_dtype_arg(const Napi::Value& v, const char* op, const char* name) {
  DType d = arg_dtype(v, op, name);
  if (!dtype_is_float(d)) fail("ERR_DTYPE", cat(op, ": ", name, " must be f32, f16 or bf16, got ", dtype_name(d)));
  return d;
}

// The weight view of info[at .. at + 7], each tensor checked against the sizes it must have.
Quant4Weight weight_args(const Napi::CallbackInfo& info, size_t at, const char* op) {
  const Tensor& packed = TensorHandle::From(info[at], op, "packed weight");
  const Tensor& absmax = TensorHandle::From(info[at + 1], op, "absmax");
  Quant4Weight w;
  w.type = type_arg(info[at + 2], op);
  w.blocksize = blocksize_arg(info[at + 3], op);
  w.N = arg_int(info[at + 4], op, "outFeatures", 0, kMaxSafeInt);
  w.K = arg_int(info[at + 5], op, "inFeatures", 0, kMaxSafeInt);
  w.wdt = float_dtype_arg(info[at + 6], op, "weight dtype");
  w.cdt = float_dtype_arg(info[at + 7], op, "compute dtype");
  if (w.K > 0 && w.N > kMaxSafeInt / w.K) fail_range(cat(op, ": the weight (", w.N, ", ", w.K, ") has too many values"));
  const int64_t n = w.N * w.K, bytes = (n + 1) / 2, blocks = (n + w.blocksize - 1) / w.blocksize;
  if (packed.dtype != DType::U8) fail("ERR_DTYPE", cat(op, ": the packed weight must be u8, got ", dtype_name(packed.dtype)));
  if (packed.numel() != bytes)
    fail("ERR_SHAPE", cat(op, ": the packed weight of a (", w.N, ", ", w.K, ") weight holds ", bytes, " bytes (two 4-bit codes a byte), got ",
                          shape_str(packed.shape)));
  if (absmax.dtype != DType::F32) fail("ERR_DTYPE", cat(op, ": absmax must be f32, got ", dtype_name(absmax.dtype)));
  if (absmax.shape != Shape{blocks})
    fail("ERR_SHAPE", cat(op, ": absmax must have shape [", blocks, "] (one value per block of ", w.blocksize, " of the ", n,
                          " weights), got ", shape_str(absmax.shape)));
  require_cpu(op, {{"packed weight", &packed}, {"absmax", &absmax}});
  w.packed = packed.ptr<uint8_t>(), w.absmax = absmax.ptr<float>(), w.cache = packed.storage.get(), w.absmax_storage = absmax.storage;
  return w;
}

void require_input(const Tensor& x, int64_t want, const Quant4Weight& w, const char* op, const char* name) {
  require_float(x, op, name);
  require_ndim(x, 1, 16, op, name);
  require_cpu(op, {{name, &x}});
  if (x.dim(-1) != want)
    fail("ERR_SHAPE", cat(op, ": ", name, " has ", x.dim(-1), " features (shape ", shape_str(x.shape), ") but the 4-bit weight (", w.N,
                          ", ", w.K, ") expects ", want));
}

// quant4Quantize(w float (any shape), quantType, blocksize) -> [packed u8 ((n + 1) / 2, 1), absmax f32 (blocks)]
Napi::Value Quant4Quantize(const Napi::CallbackInfo& info) {
  const char* op = "quant4Quantize";
  const Tensor& w = TensorHandle::From(info[0], op, "weight");
  require_float(w, op, "weight");
  require_cpu(op, {{"weight", &w}});
  Quant4 type = type_arg(info[1], op);
  int64_t bs = blocksize_arg(info[2], op);
  const int64_t n = w.numel();
  Tensor packed = make_tensor(DType::U8, {(n + 1) / 2, 1}, Device::CPU, false);
  Tensor absmax = make_tensor(DType::F32, {(n + bs - 1) / bs}, Device::CPU, false);
  int64_t bad = quant4_quantize(w.data(), w.dtype, n, bs, type, packed.ptr<uint8_t>(), absmax.ptr<float>());
  if (bad >= 0) {
    const int64_t cols = w.ndim() >= 2 ? w.dim(-1) : n;
    fail_range(cat(op, ": weight value ", bad, w.ndim() >= 2 ? cat(" (row ", bad / cols, ", column ", bad % cols, ")") : std::string(),
                   " is NaN or infinite; 4-bit quantisation needs finite weights"));
  }
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, TensorHandle::Wrap(info.Env(), packed));
  out.Set(1u, TensorHandle::Wrap(info.Env(), absmax));
  return out;
}

// quant4Dequantize(<weight args>, outDtype) -> W (outFeatures, inFeatures) rounded to the weight dtype, stored in outDtype
Napi::Value Quant4Dequantize(const Napi::CallbackInfo& info) {
  const char* op = "quant4Dequantize";
  Quant4Weight w = weight_args(info, 0, op);
  DType out_dt = float_dtype_arg(info[8], op, "outDtype");
  Tensor out = make_tensor(out_dt, {w.N, w.K}, Device::CPU, false);
  quant4_dequantize(w, out.data(), out_dt);
  return TensorHandle::Wrap(info.Env(), out);
}

// quant4Linear(x[..., K], <weight args>, bias[N] | null) -> y[..., N] in x's dtype
Napi::Value Quant4Linear(const Napi::CallbackInfo& info) {
  const char* op = "quant4Linear";
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  Quant4Weight w = weight_args(info, 1, op);
  require_input(x, w.K, w, op, "x");
  const Tensor* b = TensorHandle::FromOptional(info[9], op, "bias");
  require_bias(b, w.N, op);
  Shape ys = x.shape;
  ys.back() = w.N;
  Tensor y = make_tensor(x.dtype, ys, Device::CPU, false);
  if (y.numel() > 0)
    quant4_linear_cpu(x.data(), x.dtype, x.rows(), w, b ? b->data() : nullptr, b ? b->dtype : DType::F32, y.data(), y.dtype);
  return TensorHandle::Wrap(info.Env(), y);
}

// quant4LinearGradInput(dy[..., N], <weight args>) -> dx[..., K] in dy's dtype
Napi::Value Quant4LinearGradInput(const Napi::CallbackInfo& info) {
  const char* op = "quant4LinearGradInput";
  const Tensor& dy = TensorHandle::From(info[0], op, "dy");
  Quant4Weight w = weight_args(info, 1, op);
  require_input(dy, w.N, w, op, "dy");
  Shape xs = dy.shape;
  xs.back() = w.K;
  Tensor dx = make_tensor(dy.dtype, xs, Device::CPU, w.N == 0);
  if (dx.numel() > 0 && w.N > 0) quant4_linear_grad_input_cpu(dy.data(), dy.dtype, dy.rows(), w, dx.data(), dx.dtype);
  return TensorHandle::Wrap(info.Env(), dx);
}

}  // namespace

void register_quant4_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("quant4Quantize", Napi::Function::New<guarded<Quant4Quantize>>(env, "quant4Quantize"));
  exports.Set("quant4Dequantize", Napi::Function::New<guarded<Quant4Dequantize>>(env, "quant4Dequantize"));
  exports.Set("quant4Linear", Napi::Function::New<guarded<Quant4Linear>>(env, "quant4Linear"));
  exports.Set("quant4LinearGradInput", Napi::Function::New<guarded<Quant4LinearGradInput>>(env, "quant4LinearGradInput"));
}

}  // namespace peft
