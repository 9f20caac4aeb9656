#include "tensor_handle.h"

#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "napi_util.h"
#include "ops/check.h"
#include "ops/op_table.h"

namespace peft {
namespace {

const napi_type_tag kTensorTag = {0x6e6f6465ull ^ 0x9d1c2b3a4f5e6071ull, 0x70656674ull ^ 0x1a2b3c4d5e6f7081ull};

// Keeps the storage alive for as long as an external ArrayBuffer points into it; a tracked view also
// counts in live_views (writes through it are invisible to the version, so no derived form is cached).
struct ViewHold {
  std::shared_ptr<Storage> storage;
  bool tracked;
};

// Live handles of this JS thread (one isolate each) per storage, with the bytes the first one reported to the
// garbage collector: only the first handle on a storage reports it and the last takes it back, so reshapes,
// detached copies and autograd's saved handles do not count a 64 MB weight again for every one (that made
// V8 collect after every recorded forward). Never destroyed: finalizers may run while the thread exits.
struct Reported {
  int handles = 0;
  int64_t bytes = 0;
};
std::unordered_map<const Storage*, Reported>& reported_storages() {
  thread_local auto* m = new std::unordered_map<const Storage*, Reported>();
  return *m;
}

// Untracked (transient) holds by the address their buffer starts at, so releaseBytes can drop one before the
// garbage collector finalizes its buffer. Never destroyed: finalizers may run while the process exits.
std::mutex& transient_mu() {
  static auto* m = new std::mutex();
  return *m;
}
std::unordered_multimap<const void*, ViewHold*>& transient_holds() {
  static auto* h = new std::unordered_multimap<const void*, ViewHold*>();
  return *h;
}

void release_view(ViewHold* hold) {
  if (hold->tracked) {
    hold->storage->live_views.fetch_sub(1, std::memory_order_acq_rel);
  } else {
    // Found among the holds of its own address (a storage has few views at once): a scan of the whole map
    // would make releasing n views O(n^2). A hold whose storage releaseBytes took is already out of the map.
    std::lock_guard<std::mutex> lk(transient_mu());
    if (hold->storage) {
      auto& h = transient_holds();
      auto [lo, hi] = h.equal_range(hold->storage->data);
      for (auto it = lo; it != hi; ++it)
        if (it->second == hold) {
          h.erase(it);
          break;
        }
    }
  }
  delete hold;
}

Napi::Value typed_array_over(Napi::Env env, Napi::ArrayBuffer buf, DType dt, size_t n) {
  switch (dt) {
    case DType::F32: return Napi::Float32Array::New(env, n, buf, 0);
    case DType::F16:
    case DType::BF16: return Napi::Uint16Array::New(env, n, buf, 0);
    case DType::I8: return Napi::Int8Array::New(env, n, buf, 0);
    case DType::U8: return Napi::Uint8Array::New(env, n, buf, 0);
    case DType::I32: return Napi::Int32Array::New(env, n, buf, 0);
    case DType::I64: return Napi::BigInt64Array::New(env, n, buf, 0);
  }
  return env.Undefined();
}

// A zero-copy ArrayBuffer over host storage; a copy where the embedder forbids external buffers.
// `tracked`: JS may keep it and write through it later (view(), bytes()); untracked buffers are for the
// library's own reads and writes, which finish before anything else uses the tensor.
Napi::ArrayBuffer buffer_over(Napi::Env env, const std::shared_ptr<Storage>& st, size_t bytes, bool tracked) {
  if (bytes == 0) return Napi::ArrayBuffer::New(env, 0);
  napi_value out;
  auto* hold = new ViewHold{st, tracked};
  if (!tracked) {
    std::lock_guard<std::mutex> lk(transient_mu());
    transient_holds().emplace(st->data, hold);
  }
  if (tracked) {
    // Writes through it may come at any time, also after the last derived() call that sees it alive.
    st->live_views.fetch_add(1, std::memory_order_acq_rel);
    st->drop_derived();
  }
  napi_status s = napi_create_external_arraybuffer(
      env, st->data, bytes, [](napi_env, void*, void* hint) { release_view(static_cast<ViewHold*>(hint)); }, hold, &out);
  if (s == napi_ok) return Napi::ArrayBuffer(env, out);
  release_view(hold);
  // Not zero-copy here: writes to this buffer will not reach the tensor.
  Napi::ArrayBuffer copy = Napi::ArrayBuffer::New(env, bytes);
  std::memcpy(copy.Data(), st->data, bytes);
  return copy;
}

}  // namespace

void release_transient_bytes(Napi::Env env, Napi::ArrayBuffer ab) {
  bool detached = false;
  if (napi_is_detached_arraybuffer(env, ab, &detached) != napi_ok || detached || ab.ByteLength() == 0) return;
  const void* data = ab.Data();
  std::shared_ptr<Storage> drop;
  {
    std::lock_guard<std::mutex> lk(transient_mu());
    auto it = transient_holds().find(data);
    if (it == transient_holds().end()) return;  // not a transient view: left alone
    // With several transient views of one storage open, which hold backs `ab` is unknown: detaching alone
    // lets its finalizer release the right one later. With one, its storage goes now.
    if (transient_holds().count(data) == 1) {
      drop = std::move(it->second->storage);
      transient_holds().erase(it);
    }
  }
  // Detached first, so nothing in JS can reach the memory once the storage may be gone.
  napi_detach_arraybuffer(env, ab);
}

Napi::Function TensorHandle::Init(Napi::Env env) {
  // The methods are plain functions on the prototype, not ObjectWrap instance methods: dispose() removes
  // the native wrap, and ObjectWrap's dispatch would fail on such an object before our code could say
  // "disposed".
  Napi::Function ctor = DefineClass(env, "TensorHandle", {});
  Napi::Object proto = ctor.Get("prototype").As<Napi::Object>();
  auto method = [&](const char* name, Napi::Value (*fn)(const Napi::CallbackInfo&)) {
    proto.Set(name, Napi::Function::New(env, fn, name));
  };
  method("disposed", &guarded<Disposed>);
  method("dispose", &guarded<Dispose>);
  method("toFloat32Array", &guarded<ToFloat32Array>);
  method("toFloat64Array", &guarded<ToF64>);
  method("view", &guarded<View>);
  method("bytes", &guarded<Bytes>);
  method("reshape", &guarded<Reshape>);
  method("copyFrom", &guarded<CopyFrom>);
  method("to", &guarded<To>);
  method("version", &guarded<Version>);
  method("sharesStorage", &guarded<SharesStorage>);
  return ctor;
}

TensorHandle::TensorHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorHandle>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    disposed_ = true;
    throw to_js_error(env, PeftException(ErrKind::Type, "ERR_INVALID_ARG_TYPE",
                                         "TensorHandle: handles are made by node-peft's tensor factories"));
  }
  t_ = std::move(*info[0].As<Napi::External<Tensor>>().Data());
  live_handles().fetch_add(1, std::memory_order_relaxed);
  info.This().As<Napi::Object>().TypeTag(&kTensorTag);
  if (t_.device() == Device::CPU && t_.storage->bytes) {
    Reported& r = reported_storages()[t_.storage.get()];
    if (r.handles++ == 0) {
      r.bytes = static_cast<int64_t>(t_.storage->bytes);
      int64_t ignored;
      napi_adjust_external_memory(env, r.bytes, &ignored);
    }
    counted_ = true;
  }
}

TensorHandle::~TensorHandle() { Release(); }

int64_t TensorHandle::gc_reported_bytes() {
  int64_t n = 0;
  for (const auto& [storage, r] : reported_storages()) n += r.bytes;
  return n;
}

std::atomic<int64_t>& TensorHandle::live_handles() {
  static std::atomic<int64_t> n{0};
  return n;
}

void TensorHandle::Release() {
  if (!disposed_) live_handles().fetch_sub(1, std::memory_order_relaxed);
  if (counted_) {
    counted_ = false;
    auto& all = reported_storages();
    auto it = all.find(t_.storage.get());
    if (it != all.end() && --it->second.handles == 0) {
      // Raw call, status ignored: this runs in the destructor (noexcept), also while a worker is being torn
      // down, where the node-addon-api wrapper would throw.
      int64_t ignored;
      napi_adjust_external_memory(Env(), -it->second.bytes, &ignored);
      all.erase(it);
    }
  }
  t_.storage.reset();
  disposed_ = true;
}

Napi::Object TensorHandle::Wrap(Napi::Env env, Tensor t) {
  Napi::External<Tensor> ext = Napi::External<Tensor>::New(env, &t);
  return addon_data(env).tensor_ctor.New({ext});
}

Napi::Array TensorHandle::WrapAll(Napi::Env env, std::initializer_list<Tensor> ts) {
  Napi::Array out = Napi::Array::New(env, ts.size());
  uint32_t i = 0;
  for (const Tensor& t : ts) out.Set(i++, t.storage ? Napi::Value(Wrap(env, t)) : env.Null());
  return out;
}

bool TensorHandle::IsHandle(const Napi::Value& v) {
  return v.IsObject() && v.As<Napi::Object>().CheckTypeTag(&kTensorTag);
}

TensorHandle* TensorHandle::Live(const Napi::Value& v) {
  if (!IsHandle(v)) return nullptr;
  void* p = nullptr;
  if (napi_unwrap(v.Env(), v, &p) != napi_ok || !p) return nullptr;  // disposed: the wrap is gone
  TensorHandle* h = static_cast<TensorHandle*>(p);
  return h->disposed_ ? nullptr : h;
}

const Tensor& TensorHandle::From(const Napi::Value& v, const char* op, const char* name) {
  if (!IsHandle(v)) fail_type(cat(op, ": ", name, " must be a Tensor"));
  TensorHandle* h = Live(v);
  if (!h) fail("ERR_DISPOSED", cat(op, ": ", name, " has been disposed"));
  if (h->t_.storage->busy_writers.load() > 0)
    fail("ERR_TENSOR_BUSY", cat(op, ": ", name, " is being written by an asynchronous operation"));
  // A copy held until the binding returns (see CallTensors): the handle may be disposed by JS that runs
  // while later arguments are read.
  return call_tensors().held.emplace_back(h->t_);
}


// tensorMeta(handle, into): [dtype index, device index, ...dims] written into the caller's Float64Array (at
// least 2 + 16 long), returning the number of dims; -1 when the value is no tensor handle. The JS Tensor reads
// it once when it is made: one native call and no allocation per tensor (a fresh typed array per tensor cost
// about half of making one).
Napi::Value TensorHandle::MetaInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !IsHandle(info[0])) return Napi::Number::New(env, -1);
  TensorHandle* h = Live(info[0]);
  if (!h) fail("ERR_DISPOSED", "meta: tensor has been disposed");
  const Tensor& t = h->t_;
  // One query for type, length and data (each Napi::TypedArray accessor asks V8 again).
  napi_typedarray_type type = napi_int8_array;
  size_t length = 0;
  void* data = nullptr;
  bool typed = false;
  if (napi_is_typedarray(env, info[1], &typed) != napi_ok || !typed ||
      napi_get_typedarray_info(env, info[1], &type, &length, &data, nullptr, nullptr) != napi_ok || type != napi_float64_array ||
      length < 2 + t.shape.size())
    fail_type(cat("tensorMeta: expected a Float64Array of at least ", 2 + t.shape.size(), " elements"));
  double* out = static_cast<double*>(data);
  out[0] = static_cast<double>(t.dtype);
  out[1] = static_cast<double>(t.device());
  for (size_t i = 0; i < t.shape.size(); i++) out[2 + i] = static_cast<double>(t.shape[i]);
  return Napi::Number::New(env, static_cast<double>(t.shape.size()));
}
Napi::Value TensorHandle::Disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Live(info.This()) == nullptr);
}

// Frees everything the handle holds natively, the handle object included: the wrap is removed, so no
// finalizer is left queued for the GC (in a synchronous loop those run only when the event loop turns).
Napi::Value TensorHandle::Dispose(const Napi::CallbackInfo& info) {
  TensorHandle* h = Live(info.This());
  if (!h) return info.Env().Undefined();
  if (h->t_.storage->busy_writers.load() > 0)
    fail("ERR_TENSOR_BUSY", "dispose: the tensor is being written by an asynchronous operation");
  h->Release();
  void* ignored = nullptr;
  if (napi_remove_wrap(info.Env(), info.This(), &ignored) == napi_ok) delete h;
  return info.Env().Undefined();
}

static Napi::Value host_copy_as(Napi::Env env, const Tensor& t, DType out_dt) {
  size_t n = static_cast<size_t>(t.numel());
  Tensor out = make_tensor(out_dt, t.shape, Device::CPU, false);
  if (t.device() == Device::CPU) {
    ops_for(Device::CPU, "convert").convert(t.data(), t.dtype, out.data(), out_dt, static_cast<int64_t>(n));
  } else {
    Tensor host = make_tensor(t.dtype, t.shape, Device::CPU, false);
    ops_for(t.device(), "toHost").to_host(host.data(), t.data(), t.nbytes());
    ops_for(Device::CPU, "convert").convert(host.data(), t.dtype, out.data(), out_dt, static_cast<int64_t>(n));
  }
  // The result owns a private copy: a plain (non-external) buffer is fine and simpler for the GC.
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, n * dtype_size(out_dt));
  if (n) std::memcpy(buf.Data(), out.data(), n * dtype_size(out_dt));
  if (out_dt == DType::F32) return Napi::Float32Array::New(env, n, buf, 0);
  return Napi::Float64Array::New(env, n, buf, 0);
}

// f64 is not a tensor dtype; this reads any tensor as doubles (exact for every dtype but i64 > 2^53).
Napi::Value TensorHandle::ToF64(const Napi::CallbackInfo& info) {
  {
    const Napi::CallbackInfo& i = info;
    const Tensor& t = From(i.This(), "toFloat64Array", "tensor");
    size_t n = static_cast<size_t>(t.numel());
    Napi::Float64Array out = Napi::Float64Array::New(i.Env(), n);
    Tensor host = t;
    if (t.device() != Device::CPU) {
      host = make_tensor(t.dtype, t.shape, Device::CPU, false);
      ops_for(t.device(), "toHost").to_host(host.data(), t.data(), t.nbytes());
    }
    for (size_t k = 0; k < n; k++) {
      switch (host.dtype) {
        case DType::I32: out[k] = host.ptr<int32_t>()[k]; break;
        case DType::I64: out[k] = static_cast<double>(host.ptr<int64_t>()[k]); break;
        case DType::I8: out[k] = host.ptr<int8_t>()[k]; break;
        case DType::U8: out[k] = host.ptr<uint8_t>()[k]; break;
        case DType::F32: out[k] = host.ptr<float>()[k]; break;
        case DType::F16: out[k] = f16_to_f32(host.ptr<uint16_t>()[k]); break;
        case DType::BF16: out[k] = bf16_to_f32(host.ptr<uint16_t>()[k]); break;
      }
    }
    return out;
  }
}

Napi::Value TensorHandle::ToFloat32Array(const Napi::CallbackInfo& info) {
  {
    const Napi::CallbackInfo& i = info;
    const Tensor& t = From(i.This(), "toFloat32Array", "tensor");
    return host_copy_as(i.Env(), t, DType::F32);
  }
}

Napi::Value TensorHandle::View(const Napi::CallbackInfo& info) {
  {
    const Napi::CallbackInfo& i = info;
    const Tensor& t = From(i.This(), "view", "tensor");
    if (t.device() != Device::CPU) fail("ERR_DEVICE", cat("view: the tensor is on ", device_name(t.device()), "; views are host only (use .to(\"cpu\"))"));
    // The version is left alone (buffer_over drops what was derived): reading a tensor through a view must
    // not look like an in-place change to a graph node that saved it.
    return typed_array_over(i.Env(), buffer_over(i.Env(), t.storage, t.nbytes(), true), t.dtype, static_cast<size_t>(t.numel()));
  }
}

Napi::Value TensorHandle::Bytes(const Napi::CallbackInfo& info) {
  {
    const Napi::CallbackInfo& i = info;
    const Tensor& t = From(i.This(), "bytes", "tensor");
    if (t.device() != Device::CPU) fail("ERR_DEVICE", "bytes: the tensor is not on the host");
    bool writable = i.Length() > 0 && i[0].IsBoolean() && i[0].As<Napi::Boolean>().Value();
    // The library's own file reads/writes pass transient = true: they use the bytes and drop them.
    bool transient = i.Length() > 1 && i[1].IsBoolean() && i[1].As<Napi::Boolean>().Value();
    if (writable) begin_write(t, "bytes", "tensor");
    Napi::ArrayBuffer buf = buffer_over(i.Env(), t.storage, t.nbytes(), !transient);
    return Napi::Uint8Array::New(i.Env(), t.nbytes(), buf, 0);
  }
}

Napi::Value TensorHandle::Reshape(const Napi::CallbackInfo& info) {
  {
    const Napi::CallbackInfo& i = info;
    const Tensor& t = From(i.This(), "reshape", "tensor");
    peft::Shape s = arg_shape(i[0], "reshape", "shape");
    int64_t n = checked_numel(s, t.dtype, "reshape");
    if (n != t.numel())
      fail("ERR_SHAPE", cat("reshape: cannot view ", shape_str(t.shape), " (", t.numel(), " elements) as ", shape_str(s), " (", n, " elements)"));
    Tensor out = t;
    out.shape = s;
    return Wrap(i.Env(), out);
  }
}

Napi::Value TensorHandle::CopyFrom(const Napi::CallbackInfo& info) {
  {
    const Napi::CallbackInfo& i = info;
    const Tensor& dst = From(i.This(), "copyFrom", "this");
    const Tensor& src = From(i[0], "copyFrom", "src");
    if (src.shape != dst.shape)
      fail("ERR_SHAPE", cat("copyFrom: src has shape ", shape_str(src.shape), ", this tensor ", shape_str(dst.shape)));
    int64_t n = dst.numel();
    begin_write(dst, "copyFrom", "this");
    if (src.device() == dst.device()) {
      if (src.storage.get() != dst.storage.get())
        ops_for(dst.device(), "copyFrom").convert(src.data(), src.dtype, dst.data(), dst.dtype, n);
    } else {
      // Across devices: stage on the host in the source dtype, convert there, then upload.
      Tensor host_src = make_tensor(src.dtype, src.shape, Device::CPU, false);
      if (src.device() == Device::CPU) std::memcpy(host_src.data(), src.data(), src.nbytes());
      else ops_for(src.device(), "copyFrom").to_host(host_src.data(), src.data(), src.nbytes());
      Tensor host_dst = make_tensor(dst.dtype, dst.shape, Device::CPU, false);
      ops_for(Device::CPU, "copyFrom").convert(host_src.data(), src.dtype, host_dst.data(), dst.dtype, n);
      if (dst.device() == Device::CPU) std::memcpy(dst.data(), host_dst.data(), dst.nbytes());
      else ops_for(dst.device(), "copyFrom").from_host(dst.data(), host_dst.data(), dst.nbytes());
    }
    return i.Env().Undefined();
  }
}

Napi::Value TensorHandle::To(const Napi::CallbackInfo& info) {
  {
    const Napi::CallbackInfo& i = info;
    const Tensor& t = From(i.This(), "to", "tensor");
    std::string target = arg_string(i[0], "to", "target");
    if (target == "cpu" || target == "cuda") {
      Device d = target == "cpu" ? Device::CPU : Device::CUDA;
      const OpTable& dst_ops = ops_for(d, "to");
      Tensor out = new_tensor(d, t.dtype, t.shape, "to", false);  // filled by the copy below
      if (t.device() == d) {
        if (d == Device::CPU) std::memcpy(out.data(), t.data(), t.nbytes());
        else dst_ops.convert(t.data(), t.dtype, out.data(), t.dtype, t.numel());
      } else if (d == Device::CPU) {
        ops_for(t.device(), "to").to_host(out.data(), t.data(), t.nbytes());
      } else {
        dst_ops.from_host(out.data(), t.data(), t.nbytes());
      }
      return Wrap(i.Env(), out);
    }
    DType dt = parse_dtype(target, "to", "target");
    const OpTable& ops = ops_for(t.device(), "to");
    Tensor out = new_tensor(t.device(), dt, t.shape, "to", false);  // filled by convert
    ops.convert(t.data(), t.dtype, out.data(), dt, t.numel());
    return Wrap(i.Env(), out);
  }
}

Napi::Value TensorHandle::Version(const Napi::CallbackInfo& info) {
  TensorHandle* h = Live(info.This());
  return Napi::Number::New(info.Env(), h ? static_cast<double>(h->t_.storage->version.load()) : -1.0);
}

Napi::Value TensorHandle::SharesStorage(const Napi::CallbackInfo& info) {
  TensorHandle* h = Live(info.This());
  TensorHandle* other = info.Length() < 1 ? nullptr : Live(info[0]);
  return Napi::Boolean::New(info.Env(), h && other && other->t_.storage == h->t_.storage);
}

}  // namespace peft
