// Tensors handed from one JS thread to another in the same process (a worker_thread that decodes with the
// weights the main thread loaded): the sender registers a tensor under a number, the receiver wraps the same
// native tensor (the same storage, no copy) in a handle of its own. The table's entry keeps the storage alive
// until the sender releases it; each thread's handle keeps it alive after that. While shared, the storage
// counts as lent: in-place writes to it are refused (check.h begin_write), so the reader never races one.
#include <mutex>
#include <unordered_map>

#include "../napi_util.h"
#include "../tensor_handle.h"
#include "ops.h"

namespace peft {
namespace {

struct ShareTable {
  std::mutex mu;
  std::unordered_map<int64_t, Tensor> tensors;
  int64_t next = 1;
};

ShareTable& share_table() {
  static ShareTable t;  // process-wide: every worker thread's addon instance sees it
  return t;
}

Napi::Value ShareTensor(const Napi::CallbackInfo& info) {
  const Tensor& t = TensorHandle::From(info[0], "shareTensor", "tensor");
  ShareTable& s = share_table();
  std::lock_guard<std::mutex> lk(s.mu);
  const int64_t id = s.next++;
  s.tensors.emplace(id, t);
  t.storage->lent.fetch_add(1, std::memory_order_acq_rel);
  return Napi::Number::New(info.Env(), static_cast<double>(id));
}

Napi::Value AdoptSharedTensor(const Napi::CallbackInfo& info) {
  const int64_t id = arg_int(info[0], "adoptSharedTensor", "id", 1, int64_t{1} << 52);
  Tensor t;
  {
    ShareTable& s = share_table();
    std::lock_guard<std::mutex> lk(s.mu);
    auto it = s.tensors.find(id);
    if (it == s.tensors.end())
      throw PeftException(ErrKind::Peft, "ERR_STATE", "adoptSharedTensor: no tensor is shared under id " + std::to_string(id) + " (released, or never shared)");
    t = it->second;
  }
  return TensorHandle::Wrap(info.Env(), t);
}

Napi::Value ReleaseSharedTensor(const Napi::CallbackInfo& info) {
  const int64_t id = arg_int(info[0], "releaseSharedTensor", "id", 1, int64_t{1} << 52);
  ShareTable& s = share_table();
  std::lock_guard<std::mutex> lk(s.mu);
  auto it = s.tensors.find(id);
  if (it == s.tensors.end()) return Napi::Boolean::New(info.Env(), false);
  it->second.storage->lent.fetch_sub(1, std::memory_order_acq_rel);
  s.tensors.erase(it);
  return Napi::Boolean::New(info.Env(), true);
}

}  // namespace

void register_share_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("shareTensor", Napi::Function::New<guarded<ShareTensor>>(env, "shareTensor"));
  exports.Set("adoptSharedTensor", Napi::Function::New<guarded<AdoptSharedTensor>>(env, "adoptSharedTensor"));
  exports.Set("releaseSharedTensor", Napi::Function::New<guarded<ReleaseSharedTensor>>(env, "releaseSharedTensor"));
}

}  // namespace peft
