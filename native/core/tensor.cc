#include "tensor.h"

#include "errors.h"

namespace peft {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); i++) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Limit the byte size to what a JS number and the allocator can represent exactly.
constexpr int64_t kMaxBytes = int64_t(1) << 48;

int64_t checked_numel(const Shape& s, DType dt, const char* what) {
  if (s.size() > 16) fail_range(cat(what, ": at most 16 dimensions, got ", s.size()));
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) fail_range(cat(what, ": shape ", shape_str(s), " has a negative dimension"));
    if (d != 0 && n > kMaxBytes / d) fail_range(cat(what, ": shape ", shape_str(s), " is too large"));
    n *= d;
  }
  if (n > kMaxBytes / static_cast<int64_t>(dtype_size(dt)))
    fail_range(cat(what, ": shape ", shape_str(s), " of ", dtype_name(dt), " is too large"));
  return n;
}

Tensor make_tensor(DType dt, const Shape& shape, Device dev, bool zero) {
  int64_t n = checked_numel(shape, dt, "tensor");
  if (dev != Device::CPU) fail("ERR_NOT_ON_DEVICE", "make_tensor: device allocation goes through the device backend");
  Tensor t;
  t.dtype = dt;
  t.shape = shape;
  t.storage = alloc_host(static_cast<size_t>(n) * dtype_size(dt), zero);
  return t;
}

}  // namespace peft
