// The broadcasting elementwise op behind the functional API: elementwise(op, inputs, outDtype, scalars).
// CPU kernels only: operands elsewhere get ERR_NOT_ON_DEVICE.
#include <algorithm>
#include <vector>

#include "../cpu/elementwise.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

const char* const kInputNames[3] = {"inputs[0]", "inputs[1]", "inputs[2]"};

// PyTorch broadcasting: trailing dims aligned, equal or 1. A mismatch names both inputs and the dim.
Shape broadcast_shapes(const Tensor* const* t, int n, const char* op) {
  int nd = 0;
  for (int i = 0; i < n; i++) nd = std::max(nd, t[i]->ndim());
  Shape out(static_cast<size_t>(nd), 1);
  std::vector<int> from(static_cast<size_t>(nd), -1);  // the input that set each dim
  for (int i = 0; i < n; i++) {
    const int off = nd - t[i]->ndim();
    for (int d = off; d < nd; d++) {
      const int64_t s = t[i]->shape[d - off];
      if (s == out[d] || s == 1) continue;
      if (out[d] == 1) {
        out[d] = s, from[d] = i;
        continue;
      }
      const int j = from[d];
      fail("ERR_SHAPE", cat(op, ": ", kInputNames[j], " of shape ", shape_str(t[j]->shape), " and ", kInputNames[i], " of shape ",
                            shape_str(t[i]->shape), " do not broadcast (dimension ", d - nd, ": ", out[d], " vs ", s, ")"));
    }
  }
  return out;
}

// elementwise(op, inputs[], outDtype, scalars[]) -> out of the inputs' broadcast shape in outDtype
Napi::Value Elementwise(const Napi::CallbackInfo& info) {
  const char* base = "elementwise";
  const std::string name = arg_string(info[0], base, "op");
  EwOp op;
  if (!ew_op_from_name(name, op)) fail_type(cat(base, ": op must be one of ", ew_op_names(), "; got \"", name, "\""));
  const std::string label = cat(base, " ", name);
  const char* opn = label.c_str();
  // Every argument is read before any tensor's data is used.
  if (!info[1].IsArray()) fail_type(cat(opn, ": inputs must be an array of tensors"));
  Napi::Array arr = info[1].As<Napi::Array>();
  const int arity = ew_arity(op);
  const uint32_t n = arr.Length();
  if (n != static_cast<uint32_t>(arity))
    fail_type(cat(opn, ": takes ", arity, arity == 1 ? " input" : " inputs", ", got ", n));
  const Tensor* t[3] = {nullptr, nullptr, nullptr};
  for (int i = 0; i < arity; i++) t[i] = &TensorHandle::From(arr.Get(static_cast<uint32_t>(i)), opn, kInputNames[i]);
  const DType odt = arg_dtype(info[2], opn, "outDtype");
  if (!info[3].IsArray()) fail_type(cat(opn, ": scalars must be an array of numbers"));
  Napi::Array sarr = info[3].As<Napi::Array>();
  const int want = ew_scalar_count(op);
  const uint32_t ns = sarr.Length();
  if (ns != static_cast<uint32_t>(want))
    fail_type(cat(opn, ": takes ", want, want == 1 ? " scalar" : " scalars", ", got ", ns));
  double sc[2] = {0, 0};
  for (int i = 0; i < want; i++) sc[i] = arg_number(sarr.Get(static_cast<uint32_t>(i)), opn, i == 0 ? "scalars[0]" : "scalars[1]");

  for (int i = 0; i < arity; i++) {
    const bool any_dtype = ew_is_compare(op) || (op == EwOp::Where && i == 0);
    if (!any_dtype) require_float(*t[i], opn, kInputNames[i]);
  }
  if (!ew_is_compare(op) && !dtype_is_float(odt))
    fail("ERR_DTYPE", cat(opn, ": outDtype must be f32, f16 or bf16, got ", dtype_name(odt)));
  require_cpu(opn, {{kInputNames[0], t[0]}, {kInputNames[1], t[1]}, {kInputNames[2], t[2]}});
  const Shape os = broadcast_shapes(t, arity, opn);
  Tensor out = new_tensor(Device::CPU, odt, os, opn, false);  // written in full
  EwInput in[3];
  for (int i = 0; i < arity; i++) in[i] = {t[i]->data(), t[i]->dtype, t[i]->shape.data(), t[i]->ndim()};
  elementwise_cpu(op, in, arity, os.data(), static_cast<int>(os.size()), out.data(), odt, sc);
  return TensorHandle::Wrap(info.Env(), out);
}

}  // namespace

void register_elementwise_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("elementwise", Napi::Function::New<guarded<Elementwise>>(env, "elementwise"));
}

}  // namespace peft
