#include "napi_util.h"

#include <cmath>

namespace peft {

CallTensors& call_tensors() {
  // Per thread: every worker thread runs its own JS environment and bindings.
  static thread_local CallTensors c;
  return c;
}

Napi::Error to_js_error(Napi::Env env, const PeftException& e) {
  Napi::Object obj;
  if (e.kind == ErrKind::Type) {
    obj = Napi::TypeError::New(env, e.what()).Value();
  } else if (e.kind == ErrKind::Range) {
    obj = Napi::RangeError::New(env, e.what()).Value();
  } else {
    AddonData& d = addon_data(env);
    if (!d.peft_error_ctor.IsEmpty()) {
      obj = d.peft_error_ctor.New({Napi::String::New(env, e.code), Napi::String::New(env, e.what())});
    } else {
      obj = Napi::Error::New(env, e.what()).Value();
    }
  }
  obj.Set("code", Napi::String::New(env, e.code));
  return Napi::Error(env, obj);
}

DType parse_dtype(const std::string& s, const char* op, const char* name) {
  for (int i = 0; i < kNumDTypes; i++)
    if (s == dtype_name(static_cast<DType>(i))) return static_cast<DType>(i);
  fail_type(cat(op, ": ", name, " must be one of f32, f16, bf16, i8, u8, i32, i64, got \"", s, "\""));
}

DType arg_dtype(const Napi::Value& v, const char* op, const char* name) {
  if (!v.IsString()) fail_type(cat(op, ": ", name, " must be a dtype string"));
  return parse_dtype(v.As<Napi::String>().Utf8Value(), op, name);
}

Device arg_device(const Napi::Value& v, const char* op, const char* name) {
  if (!v.IsString()) fail_type(cat(op, ": ", name, " must be \"cpu\" or \"cuda\""));
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "cpu") return Device::CPU;
  if (s == "cuda") return Device::CUDA;
  fail_type(cat(op, ": ", name, " must be \"cpu\" or \"cuda\", got \"", s, "\""));
}

Shape arg_shape(const Napi::Value& v, const char* op, const char* name) {
  if (!v.IsArray()) fail_type(cat(op, ": ", name, " must be an array of non-negative integers"));
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > 16) fail_range(cat(op, ": ", name, " has ", a.Length(), " dimensions; at most 16 are supported"));
  Shape s;
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (!e.IsNumber()) fail_type(cat(op, ": ", name, "[", i, "] must be a number"));
    double d = e.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d != std::floor(d) || d > 9007199254740991.0)
      fail_range(cat(op, ": ", name, "[", i, "] must be a non-negative integer, got ", d));
    s.push_back(static_cast<int64_t>(d));
  }
  return s;
}

double arg_number(const Napi::Value& v, const char* op, const char* name) {
  if (!v.IsNumber()) fail_type(cat(op, ": ", name, " must be a number"));
  return v.As<Napi::Number>().DoubleValue();
}

int64_t arg_int(const Napi::Value& v, const char* op, const char* name, int64_t lo, int64_t hi) {
  double d = arg_number(v, op, name);
  if (d != std::floor(d) || d < static_cast<double>(lo) || d > static_cast<double>(hi))
    fail_range(cat(op, ": ", name, " must be an integer in [", lo, ", ", hi, "], got ", d));
  return static_cast<int64_t>(d);
}

bool arg_bool(const Napi::Value& v, const char* op, const char* name) {
  if (!v.IsBoolean()) fail_type(cat(op, ": ", name, " must be a boolean"));
  return v.As<Napi::Boolean>().Value();
}

std::string arg_string(const Napi::Value& v, const char* op, const char* name) {
  if (!v.IsString()) fail_type(cat(op, ": ", name, " must be a string"));
  return v.As<Napi::String>().Utf8Value();
}

}  // namespace peft
