// node_peft_mpi: the optional MPI module (its own .node, so the main addon never links libmpi). The JS side
// (lib/distributed/) hands it host memory as Uint8Arrays over tensor storage; every MPI call runs on the
// comm thread (comm.h). Errors are JS Errors with a `code` the JS side turns into PeftErrors.
#include <dlfcn.h>
#include <mpi.h>
#include <napi.h>

#include <memory>
#include <unordered_map>

#include "comm.h"

namespace peft::dist {
namespace {

struct Pending {
  std::shared_ptr<Job> job;
  Napi::Reference<Napi::Uint8Array> memory;  // keeps the buffer (and the storage under it) alive meanwhile
};

struct ModuleData {
  uint64_t next_id = 1;
  std::unordered_map<uint64_t, Pending> pending;
};

ModuleData& data(Napi::Env env) { return *env.GetInstanceData<ModuleData>(); }

[[noreturn]] void throw_code(Napi::Env env, const char* code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

// Open MPI loads its components as plugins that resolve symbols against libmpi: a library Node opened
// RTLD_LOCAL would leave them unresolved, so libmpi is promoted to the global namespace first.
void promote_libmpi() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&MPI_Init_thread), &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double timeout = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  promote_libmpi();
  InitInfo r;
  try {
    r = Comm::instance().start(timeout);
  } catch (const std::exception& e) {
    throw_code(env, "ERR_DISTRIBUTED", e.what());
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("rank", r.rank);
  o.Set("size", r.size);
  o.Set("threadLevel", r.thread_level == MPI_THREAD_MULTIPLE ? "multiple" : r.thread_level == MPI_THREAD_SERIALIZED ? "serialized"
                       : r.thread_level == MPI_THREAD_FUNNELED ? "funneled" : "single");
  o.Set("library", r.library);
  return o;
}

Napi::Value SetTimeout(const Napi::CallbackInfo& info) {
  Comm::instance().set_timeout(info[0].As<Napi::Number>().DoubleValue());
  return info.Env().Undefined();
}

JobKind parse_kind(Napi::Env env, const std::string& s) {
  if (s == "allReduce") return JobKind::AllReduce;
  if (s == "broadcast") return JobKind::Broadcast;
  if (s == "barrier") return JobKind::Barrier;
  if (s == "allGather") return JobKind::AllGather;
  throw_code(env, "ERR_INVALID_ARG_VALUE", "distributed: unknown collective " + s);
}

// submit(kind, bytes | null, dtype, op, root) -> ticket
Napi::Value Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto job = std::make_shared<Job>();
  job->kind = parse_kind(env, info[0].As<Napi::String>().Utf8Value());
  Pending p;
  if (info[1].IsTypedArray() && info[1].As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array) {
    Napi::Uint8Array view = info[1].As<Napi::Uint8Array>();
    job->data = view.Data();
    job->bytes = view.ByteLength();
    p.memory = Napi::Persistent(view);
  } else if (job->kind != JobKind::Barrier) {
    throw_code(env, "ERR_INVALID_ARG_TYPE", std::string("distributed: ") + job_name(job->kind) + " needs a Uint8Array");
  }
  std::string dt = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "f32";
  job->dtype = dt == "bf16" ? DType::BF16 : dt == "f16" ? DType::F16 : DType::F32;
  std::string op = info[3].IsString() ? info[3].As<Napi::String>().Utf8Value() : "sum";
  job->op = op == "mean" ? ReduceOp::Mean : op == "max" ? ReduceOp::Max : ReduceOp::Sum;
  job->root = info[4].IsNumber() ? info[4].As<Napi::Number>().Int32Value() : 0;
  ModuleData& d = data(env);
  job->id = d.next_id++;
  try {
    Comm::instance().submit(job);
  } catch (const std::exception& e) {
    throw_code(env, "ERR_STATE", e.what());
  }
  p.job = job;
  d.pending.emplace(job->id, std::move(p));
  return Napi::Number::New(env, static_cast<double>(job->id));
}

std::shared_ptr<Job> find(Napi::Env env, const Napi::Value& v) {
  uint64_t id = static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
  auto it = data(env).pending.find(id);
  if (it == data(env).pending.end()) throw_code(env, "ERR_STATE", "distributed: no collective in flight with ticket " + std::to_string(id));
  return it->second.job;
}

// The result of a finished job (its entry dropped): {seconds[, parts]}, or the job's error thrown.
Napi::Value Finish(Napi::Env env, const std::shared_ptr<Job>& job) {
  data(env).pending.erase(job->id);
  if (!job->error.empty()) throw_code(env, "ERR_DISTRIBUTED", job->error);
  Napi::Object o = Napi::Object::New(env);
  o.Set("seconds", job->seconds);
  if (job->kind == JobKind::AllGather) {
    Napi::Array parts = Napi::Array::New(env, job->offsets.size() - 1);
    for (size_t r = 0; r + 1 < job->offsets.size(); r++)
      parts.Set(r, Napi::Buffer<uint8_t>::Copy(env, job->gathered.data() + job->offsets[r], job->offsets[r + 1] - job->offsets[r]));
    o.Set("parts", parts);
  }
  return o;
}

Napi::Value Wait(const Napi::CallbackInfo& info) {
  auto job = find(info.Env(), info[0]);
  Comm::instance().wait(job);
  return Finish(info.Env(), job);
}

Napi::Value Done(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Comm::instance().is_done(find(info.Env(), info[0])));
}

// Waits on a libuv pool thread, so the event loop keeps running; settles on the JS thread.
class WaitWorker : public Napi::AsyncWorker {
 public:
  WaitWorker(Napi::Env env, std::shared_ptr<Job> job) : Napi::AsyncWorker(env), job_(std::move(job)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { Comm::instance().wait(job_); }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(Finish(env, job_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  std::shared_ptr<Job> job_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value WaitAsync(const Napi::CallbackInfo& info) {
  auto* w = new WaitWorker(info.Env(), find(info.Env(), info[0]));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value Abort(const Napi::CallbackInfo& info) {
  Comm::instance().request_abort(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::String>().Utf8Value());
  return info.Env().Undefined();
}

Napi::Value Finalize(const Napi::CallbackInfo& info) {
  try {
    Comm::instance().finalize();
  } catch (const std::exception& e) {
    throw_code(info.Env(), "ERR_DISTRIBUTED", e.what());
  }
  return info.Env().Undefined();
}

Napi::Value State(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  Comm& c = Comm::instance();
  o.Set("started", c.started());
  o.Set("finalized", c.finalized());
  o.Set("inFlight", static_cast<double>(data(info.Env()).pending.size()));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new ModuleData());
  exports.Set("start", Napi::Function::New(env, Start));
  exports.Set("setTimeout", Napi::Function::New(env, SetTimeout));
  exports.Set("submit", Napi::Function::New(env, Submit));
  exports.Set("wait", Napi::Function::New(env, Wait));
  exports.Set("waitAsync", Napi::Function::New(env, WaitAsync));
  exports.Set("done", Napi::Function::New(env, Done));
  exports.Set("abort", Napi::Function::New(env, Abort));
  exports.Set("finalize", Napi::Function::New(env, Finalize));
  exports.Set("state", Napi::Function::New(env, State));
  return exports;
}

}  // namespace
}  // namespace peft::dist

static Napi::Object InitMpiModule(Napi::Env env, Napi::Object exports) { return peft::dist::Init(env, exports); }
NODE_API_MODULE(node_peft_mpi, InitMpiModule)
