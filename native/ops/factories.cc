// Tensor factories: zeros, fromArray (numbers), fromBits (raw 16-bit floats), fromBytes (raw storage bytes),
// randn (Philox normals).
#include <cstring>

#include "../cpu/convert.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

// Host data -> tensor on `d` (a direct write on the CPU, staged through the host elsewhere).
Napi::Value finish_on(Napi::Env env, Tensor host, Device d, const char* op) {
  if (d == Device::CPU) return TensorHandle::Wrap(env, host);
  Tensor dev = new_tensor(d, host.dtype, host.shape, op, false);  // filled by the upload
  ops_for(d, op).from_host(dev.data(), host.data(), host.nbytes());
  return TensorHandle::Wrap(env, dev);
}

// zeros(shape, dtype, device, touch?) — touch: fault the host pages in now, on the pool's threads
Napi::Value Zeros(const Napi::CallbackInfo& info) {
  Shape s = arg_shape(info[0], "zeros", "shape");
  DType dt = arg_dtype(info[1], "zeros", "dtype");
  Device d = arg_device(info[2], "zeros", "device");
  bool touch = info.Length() > 3 && !info[3].IsUndefined() && arg_bool(info[3], "zeros", "touch");
  return TensorHandle::Wrap(info.Env(), new_tensor(d, dt, s, "zeros", true, touch));
}

// fromArray(data: Float64Array | Float32Array | Int32Array | BigInt64Array, shape, dtype, device)
Napi::Value FromArray(const Napi::CallbackInfo& info) {
  Shape s = arg_shape(info[1], "fromArray", "shape");
  DType dt = arg_dtype(info[2], "fromArray", "dtype");
  Device d = arg_device(info[3], "fromArray", "device");
  if (!info[0].IsTypedArray()) fail_type("fromArray: data must be an array of numbers");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  int64_t n = checked_numel(s, dt, "fromArray");
  if (static_cast<int64_t>(ta.ElementLength()) != n)
    fail("ERR_SHAPE", cat("fromArray: data has ", ta.ElementLength(), " elements but shape ", shape_str(s), " needs ", n));
  Tensor t = make_tensor(dt, s, Device::CPU, false);
  switch (ta.TypedArrayType()) {
    case napi_float64_array: from_f64_cpu(info[0].As<Napi::Float64Array>().Data(), t.data(), dt, n); break;
    case napi_float32_array: convert_cpu(info[0].As<Napi::Float32Array>().Data(), DType::F32, t.data(), dt, n); break;
    case napi_int32_array: convert_cpu(info[0].As<Napi::Int32Array>().Data(), DType::I32, t.data(), dt, n); break;
    case napi_int8_array: convert_cpu(info[0].As<Napi::Int8Array>().Data(), DType::I8, t.data(), dt, n); break;
    case napi_uint8_array: convert_cpu(info[0].As<Napi::Uint8Array>().Data(), DType::U8, t.data(), dt, n); break;
    case napi_bigint64_array: convert_cpu(info[0].As<Napi::BigInt64Array>().Data(), DType::I64, t.data(), dt, n); break;
    default: fail_type("fromArray: data must be a Float64Array, Float32Array, Int32Array, Int8Array, Uint8Array or BigInt64Array");
  }
  return finish_on(info.Env(), t, d, "fromArray");
}

// fromBytes(bytes: Uint8Array | Uint16Array | any typed array, shape, dtype, device): raw storage bytes.
Napi::Value FromBytes(const Napi::CallbackInfo& info) {
  Shape s = arg_shape(info[1], "fromBytes", "shape");
  DType dt = arg_dtype(info[2], "fromBytes", "dtype");
  Device d = arg_device(info[3], "fromBytes", "device");
  if (!info[0].IsTypedArray()) fail_type("fromBytes: data must be a typed array");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  int64_t n = checked_numel(s, dt, "fromBytes");
  size_t want = static_cast<size_t>(n) * dtype_size(dt);
  if (ta.ByteLength() != want)
    fail("ERR_SHAPE", cat("fromBytes: data has ", ta.ByteLength(), " bytes but ", dtype_name(dt), " ", shape_str(s), " needs ", want));
  Tensor t = make_tensor(dt, s, Device::CPU, false);
  if (want) std::memcpy(t.data(), static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), want);
  return finish_on(info.Env(), t, d, "fromBytes");
}

// randn(shape, dtype, device, seed, stream, mean, std)
Napi::Value Randn(const Napi::CallbackInfo& info) {
  Shape s = arg_shape(info[0], "randn", "shape");
  DType dt = arg_dtype(info[1], "randn", "dtype");
  Device d = arg_device(info[2], "randn", "device");
  if (!dtype_is_float(dt)) fail("ERR_DTYPE", cat("randn: dtype must be f32, f16 or bf16, got ", dtype_name(dt)));
  uint64_t seed = static_cast<uint64_t>(arg_int(info[3], "randn", "seed", 0, 9007199254740991LL));
  uint64_t stream = static_cast<uint64_t>(arg_int(info[4], "randn", "stream", 0, 9007199254740991LL));
  float mean = static_cast<float>(arg_number(info[5], "randn", "mean"));
  float sd = static_cast<float>(arg_number(info[6], "randn", "std"));
  Tensor t = new_tensor(d, dt, s, "randn", false);  // every element drawn
  ops_for(d, "randn").randn(t.data(), dt, t.numel(), seed, stream, mean, sd);
  return TensorHandle::Wrap(info.Env(), t);
}

// randUniform(shape, dtype, seed, stream, lo, hi): host only (weight init).
Napi::Value RandUniform(const Napi::CallbackInfo& info) {
  Shape s = arg_shape(info[0], "randUniform", "shape");
  DType dt = arg_dtype(info[1], "randUniform", "dtype");
  if (!dtype_is_float(dt)) fail("ERR_DTYPE", cat("randUniform: dtype must be f32, f16 or bf16, got ", dtype_name(dt)));
  uint64_t seed = static_cast<uint64_t>(arg_int(info[2], "randUniform", "seed", 0, 9007199254740991LL));
  uint64_t stream = static_cast<uint64_t>(arg_int(info[3], "randUniform", "stream", 0, 9007199254740991LL));
  float lo = static_cast<float>(arg_number(info[4], "randUniform", "lo"));
  float hi = static_cast<float>(arg_number(info[5], "randUniform", "hi"));
  Tensor t = make_tensor(dt, s, Device::CPU, false);
  rand_uniform_cpu(t.data(), dt, t.numel(), seed, stream, lo, hi);
  return TensorHandle::Wrap(info.Env(), t);
}

}  // namespace

void register_factories(Napi::Env env, Napi::Object exports) {
  exports.Set("zeros", Napi::Function::New<guarded<Zeros>>(env, "zeros"));
  exports.Set("fromArray", Napi::Function::New<guarded<FromArray>>(env, "fromArray"));
  exports.Set("fromBytes", Napi::Function::New<guarded<FromBytes>>(env, "fromBytes"));
  exports.Set("randn", Napi::Function::New<guarded<Randn>>(env, "randn"));
  exports.Set("randUniform", Napi::Function::New<guarded<RandUniform>>(env, "randUniform"));
}

}  // namespace peft
