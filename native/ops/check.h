// Shared argument checks for ops: float dtypes, one device, shapes.
#pragma once
#include <initializer_list>
#include <string>

#include "../core/errors.h"
#include "../core/tensor.h"

namespace peft {

// Called by every in-place op before it writes t: ERR_TENSOR_BUSY while another thread reads the storage (it
// is lent, see native/ops/share.cc), else a new version, so derived forms (a packed weight) are rebuilt.
inline void begin_write(const Tensor& t, const char* op, const std::string& name) {
  if (t.storage->lent.load(std::memory_order_acquire) > 0)
    fail("ERR_TENSOR_BUSY", cat(op, ": ", name, " is being read by another thread (a generation decoding over these weights); "
                                "await or abort it before writing"));
  t.storage->bump_version();
}

// 2^53 - 1: the largest integer a JS number holds exactly (seeds, streams, indices passed as numbers).
constexpr int64_t kMaxSafeInt = 9007199254740991LL;

inline void require_float(const Tensor& t, const char* op, const char* name) {
  if (!dtype_is_float(t.dtype))
    fail("ERR_DTYPE", cat(op, ": ", name, " must be f32, f16 or bf16, got ", dtype_name(t.dtype)));
}

inline void require_ndim(const Tensor& t, int lo, int hi, const char* op, const char* name) {
  if (t.ndim() < lo || t.ndim() > hi)
    fail("ERR_SHAPE", cat(op, ": ", name, " must have ", lo == hi ? std::to_string(lo) : cat(lo, " to ", hi),
                          " dimensions, got shape ", shape_str(t.shape)));
}

// Every operand on one device; returns it.
inline Device same_device(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  const Tensor* first = nullptr;
  const char* first_name = nullptr;
  for (auto& [name, t] : ts) {
    if (!t) continue;
    if (!first) {
      first = t, first_name = name;
    } else if (t->device() != first->device()) {
      fail("ERR_DEVICE", cat(op, ": ", first_name, " is on ", device_name(first->device()), " but ", name, " is on ",
                             device_name(t->device())));
    }
  }
  return first ? first->device() : Device::CPU;
}

inline void require_index(const Tensor& t, const char* op, const char* name) {
  if (t.dtype != DType::I32 && t.dtype != DType::I64)
    fail("ERR_DTYPE", cat(op, ": ", name, " must be i32 or i64, got ", dtype_name(t.dtype)));
}

inline void require_same_shape(const Tensor& a, const char* a_name, const Tensor& b, const char* b_name, const char* op) {
  if (a.shape != b.shape)
    fail("ERR_SHAPE", cat(op, ": ", b_name, " has shape ", shape_str(b.shape), " but ", a_name, " has shape ", shape_str(a.shape)));
}

// For ops that only have a CPU kernel: one device (ERR_DEVICE otherwise), and that device the host.
inline void require_shape(const Tensor& t, const Shape& want, const char* op, const std::string& name) {
  if (t.shape != want) fail("ERR_SHAPE", cat(op, ": ", name, " must have shape ", shape_str(want), ", got ", shape_str(t.shape)));
}

inline void require_cpu(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  Device d = same_device(op, ts);
  if (d != Device::CPU) fail("ERR_NOT_ON_DEVICE", cat(op, ": no ", device_name(d), " kernel; move the operands to the cpu"));
}

// An optional bias: a float [n] on device d (the cpu for ops with CPU kernels only), or null.
inline void require_bias(const Tensor* b, int64_t n, const char* op, Device d = Device::CPU) {
  if (!b) return;
  require_float(*b, op, "bias");
  if (d == Device::CPU) require_cpu(op, {{"bias", b}});
  require_shape(*b, {n}, op, "bias");
}

}  // namespace peft
