// The JS handle over a native tensor (`Napi::ObjectWrap`, type-tagged so look-alikes are refused).
// dispose() drops the handle's reference; views and other handles keep the storage alive.
#pragma once
#include <napi.h>

#include <atomic>

#include "core/tensor.h"

namespace peft {

class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static Napi::Function Init(Napi::Env env);
  // Wraps a native tensor in a new JS handle.
  static Napi::Object Wrap(Napi::Env env, Tensor t);
  // A JS array of new handles, null where a tensor has no storage (an output that was not computed).
  static Napi::Array WrapAll(Napi::Env env, std::initializer_list<Tensor> ts);
  // Unwraps an argument: TypeError for non-handles, ERR_DISPOSED after dispose, ERR_TENSOR_BUSY while an
  // async write is in flight. `op`/`name` name the argument in messages. The reference stays valid until the
  // binding call returns, whatever JS runs meanwhile (CallTensors).
  static const Tensor& From(const Napi::Value& v, const char* op, const char* name);
  // As From, or null for an argument that is null or undefined (an optional tensor).
  static const Tensor* FromOptional(const Napi::Value& v, const char* op, const char* name) {
    return v.IsNull() || v.IsUndefined() ? nullptr : &From(v, op, name);
  }
  static bool IsHandle(const Napi::Value& v);
  // tensorMeta(handle, into: Float64Array): the handle's dtype, device and dims written into `into`; the
  // number of dims, or -1 for a value that is no handle (tensor_handle.cc).
  static Napi::Value MetaInto(const Napi::CallbackInfo& info);
  // Handles not yet disposed (or collected), across every JS environment of the process.
  static std::atomic<int64_t>& live_handles();
  // Host bytes this thread's handles report to its isolate's garbage collector (each storage once).
  static int64_t gc_reported_bytes();

  explicit TensorHandle(const Napi::CallbackInfo& info);
  ~TensorHandle() override;

 private:
  // The handle behind a JS value, or null when it is not one or has been disposed.
  static TensorHandle* Live(const Napi::Value& v);
  void Release();
  static Napi::Value Disposed(const Napi::CallbackInfo& info);
  static Napi::Value Dispose(const Napi::CallbackInfo& info);
  static Napi::Value ToFloat32Array(const Napi::CallbackInfo& info);
  static Napi::Value View(const Napi::CallbackInfo& info);
  static Napi::Value Bytes(const Napi::CallbackInfo& info);
  static Napi::Value Reshape(const Napi::CallbackInfo& info);
  static Napi::Value CopyFrom(const Napi::CallbackInfo& info);
  static Napi::Value To(const Napi::CallbackInfo& info);
  static Napi::Value Version(const Napi::CallbackInfo& info);
  static Napi::Value SharesStorage(const Napi::CallbackInfo& info);
  static Napi::Value ToF64(const Napi::CallbackInfo& info);

  Tensor t_;
  bool disposed_ = false;
  bool counted_ = false;  // counted in its storage's bytes reported to the GC (tensor_handle.cc)
};

// Drops a transient view's hold on its storage (a buffer from bytes(.., true)) and detaches the buffer, so the
// storage can go now rather than when the buffer is collected; any other buffer is left alone.
void release_transient_bytes(Napi::Env env, Napi::ArrayBuffer ab);

}  // namespace peft
