// One op table per device. ops/ validates arguments, then calls the table of the operands' device; a null
// entry means that device has no kernel for the op (ERR_NOT_ON_DEVICE).
#pragma once
#include <cstdint>
#include <memory>

#include "../core/dtype.h"
#include "../core/storage.h"
#include "../core/tensor.h"
#include "../cpu/gemm.h"

namespace peft {

struct OpTable {
  const char* name;
  // Memory: allocation (zero-filled unless `zero` is false: outputs a kernel writes in full); copies between
  // this device and the host.
  std::shared_ptr<Storage> (*alloc)(size_t bytes, bool zero) = nullptr;
  void (*to_host)(void* host_dst, const void* dev_src, size_t bytes) = nullptr;
  void (*from_host)(void* dev_dst, const void* host_src, size_t bytes) = nullptr;
  // Element-type conversion within the device.
  void (*convert)(const void* src, DType sdt, void* dst, DType ddt, int64_t n) = nullptr;
  void (*randn)(void* dst, DType dt, int64_t n, uint64_t seed, uint64_t stream, float mean, float std) = nullptr;
  // Dense products (layouts and dtypes described by GemmArgs).
  void (*gemm)(const GemmArgs& args) = nullptr;
};

// The table for a device, or an ERR_NOT_ON_DEVICE error naming `op` when that device has none (or lacks `op`).
const OpTable& ops_for(Device d, const char* op);
void register_op_table(Device d, const OpTable* table);

// A new tensor on device `d` (shape checked): zero-filled unless `zero` is false (an output a kernel writes
// in full); `touch` faults host pages in now on the pool's threads (before a single-threaded fill).
Tensor new_tensor(Device d, DType dt, const Shape& shape, const char* op, bool zero = true, bool touch = false);

}  // namespace peft
