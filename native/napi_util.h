// Glue between the C++ core and JS: argument readers that throw clear errors, and the wrapper that turns
// C++ exceptions into JS errors (PeftError with a code, TypeError, RangeError).
#pragma once
#include <napi.h>

#include <deque>
#include <string>

#include "core/dtype.h"
#include "core/errors.h"
#include "core/tensor.h"

namespace peft {

struct AddonData {
  Napi::FunctionReference tensor_ctor;
  Napi::FunctionReference peft_error_ctor;  // set from JS at load so native errors are `instanceof PeftError`
};

inline AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

// Builds the JS error object for a C++ exception.
Napi::Error to_js_error(Napi::Env env, const PeftException& e);

// The tensors one binding call has read from its arguments (TensorHandle::From returns references into
// it). Reading an argument can run JS (a getter, a proxy trap) that disposes a tensor read earlier; the
// copies here keep its storage and shape alive until the outermost call returns, so no kernel ever sees
// freed memory.
struct CallTensors {
  int depth = 0;
  std::deque<Tensor> held;
};
CallTensors& call_tensors();

class CallScope {
 public:
  CallScope() { ++call_tensors().depth; }
  ~CallScope() {
    CallTensors& c = call_tensors();
    if (--c.depth == 0) c.held.clear();
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;
};

// Runs a binding body so no C++ exception escapes into V8 untranslated.
template <typename F>
Napi::Value run_guarded(Napi::Env env, F&& body) {
  CallScope scope;
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const PeftException& e) {
    throw to_js_error(env, e);
  } catch (const std::bad_alloc&) {
    throw to_js_error(env, PeftException(ErrKind::Range, "ERR_OUT_OF_RANGE", "out of memory: the allocation failed"));
  } catch (const std::exception& e) {
    throw to_js_error(env, PeftException(ErrKind::Peft, "ERR_NATIVE", std::string("internal error: ") + e.what()));
  }
}

template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  return run_guarded(info.Env(), [&] { return F(info); });
}

// Argument readers: `op` and `name` go into the message ("linear: bias must be a Tensor or null").
DType arg_dtype(const Napi::Value& v, const char* op, const char* name);
Device arg_device(const Napi::Value& v, const char* op, const char* name);
Shape arg_shape(const Napi::Value& v, const char* op, const char* name);
double arg_number(const Napi::Value& v, const char* op, const char* name);
int64_t arg_int(const Napi::Value& v, const char* op, const char* name, int64_t lo, int64_t hi);
bool arg_bool(const Napi::Value& v, const char* op, const char* name);
std::string arg_string(const Napi::Value& v, const char* op, const char* name);
DType parse_dtype(const std::string& s, const char* op, const char* name);

}  // namespace peft
