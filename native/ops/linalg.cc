// applyReflector(v: Float64Array, vo, below, tau, x: Float64Array, ld, row, c0, c1): the inner loop of the
// float64 Householder QR in lib/linalg/, on the arrays' own memory (no copies).
#include "../cpu/reflector.h"

#include "../napi_util.h"
#include "check.h"
#include "ops.h"

namespace peft {
namespace {

Napi::TypedArrayOf<double> f64_array(const Napi::Value& v, const char* op, const char* name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    fail_type(cat(op, ": ", name, " must be a Float64Array"));
  return v.As<Napi::TypedArrayOf<double>>();
}

Napi::Value ApplyReflector(const Napi::CallbackInfo& info) {
  const char* op = "applyReflector";
  Napi::TypedArrayOf<double> v = f64_array(info[0], op, "v");
  const int64_t vo = arg_int(info[1], op, "vo", 0, kMaxSafeInt), below = arg_int(info[2], op, "below", 0, kMaxSafeInt);
  const double tau = arg_number(info[3], op, "tau");
  Napi::TypedArrayOf<double> x = f64_array(info[4], op, "x");
  const int64_t ld = arg_int(info[5], op, "ld", 0, kMaxSafeInt), row = arg_int(info[6], op, "row", 0, kMaxSafeInt);
  const int64_t c0 = arg_int(info[7], op, "c0", 0, kMaxSafeInt), c1 = arg_int(info[8], op, "c1", 0, kMaxSafeInt);
  const int64_t nv = static_cast<int64_t>(v.ElementLength()), nx = static_cast<int64_t>(x.ElementLength());
  // Every index the loop touches stays inside both arrays.
  if (vo + below >= nv && below > 0) fail_range(cat(op, ": v has ", nv, " elements, the reflector needs ", vo + below + 1));
  if (c1 > c0 && (row + below >= ld || (c1 - 1) * ld + row + below >= nx))
    fail_range(cat(op, ": columns ", c0, "..", c1, " with ", below + 1, " rows from ", row, " do not fit x (", nx, " elements, ld ", ld, ")"));
  apply_reflector_f64(v.Data() + vo, below, tau, x.Data(), ld, row, c0, c1);
  return info.Env().Undefined();
}

}  // namespace

void register_linalg_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("applyReflector", Napi::Function::New<guarded<ApplyReflector>>(env, "applyReflector"));
}

}  // namespace peft
