// The JS handle over a native tensor (`Napi::ObjectWrap`, type-tagged so look-alikes are refused).
// dispose() drops the handle's reference; views and other handles keep the storage alive.
#pragma once
#include <napi.h>

#include "core/tensor.h"

namespace peft {

class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static Napi::Function Init(Napi::Env env);
  // Wraps a native tensor in a new JS handle.
  static Napi::Object Wrap(Napi::Env env, Tensor t);
  // Unwraps an argument: TypeError for non-handles, ERR_DISPOSED after dispose, ERR_TENSOR_BUSY while an
  // async write is in flight. `op`/`name` name the argument in messages.
  static const Tensor& From(const Napi::Value& v, const char* op, const char* name);
  static bool IsHandle(const Napi::Value& v);

  explicit TensorHandle(const Napi::CallbackInfo& info);
  ~TensorHandle() override;
  const Tensor& tensor() const { return t_; }

 private:
  void Release();
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value DTypeName(const Napi::CallbackInfo& info);
  Napi::Value DeviceName(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value ToFloat32Array(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value Bytes(const Napi::CallbackInfo& info);
  Napi::Value Reshape(const Napi::CallbackInfo& info);
  Napi::Value CopyFrom(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value Version(const Napi::CallbackInfo& info);
  Napi::Value SharesStorage(const Napi::CallbackInfo& info);
  Napi::Value ToF64(const Napi::CallbackInfo& info);

  Tensor t_;
  bool disposed_ = false;
  int64_t reported_bytes_ = 0;  // what this handle told the GC it holds
};

}  // namespace peft
