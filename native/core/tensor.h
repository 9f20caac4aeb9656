// The native tensor: storage + dtype + shape. Always contiguous, row-major.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"
#include "storage.h"

namespace peft {

using Shape = std::vector<int64_t>;

struct Tensor {
  std::shared_ptr<Storage> storage;
  DType dtype = DType::F32;
  Shape shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  // Rows of the tensor viewed as a matrix over its last dimension (the product of the leading dims).
  int64_t rows() const {
    int64_t m = 1;
    for (size_t i = 0; i + 1 < shape.size(); i++) m *= shape[i];
    return m;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  int ndim() const { return static_cast<int>(shape.size()); }
  Device device() const { return storage->device; }
  void* data() const { return storage->data; }
  template <typename T> T* ptr() const { return static_cast<T*>(storage->data); }
};

std::string shape_str(const Shape& s);
// Validates a shape (non-negative dims, element and byte counts that fit) and returns numel.
int64_t checked_numel(const Shape& s, DType dt, const char* what);
// A fresh zeroed host tensor.
Tensor make_tensor(DType dt, const Shape& shape, Device dev = Device::CPU, bool zero = true);

}  // namespace peft
