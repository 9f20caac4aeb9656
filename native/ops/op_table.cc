#include "op_table.h"

#include <atomic>
#include <cstring>

#include "../core/errors.h"
#include "../cpu/convert.h"
#include "../cpu/losses.h"
#include "cuda_state.h"

namespace peft {
namespace {

void host_copy(void* dst, const void* src, size_t n) {
  if (n) std::memcpy(dst, src, n);
}
std::shared_ptr<Storage> host_alloc(size_t bytes, bool zero) { return alloc_host(bytes, zero); }

const OpTable kCpuOps = {
    "cpu", host_alloc, host_copy, host_copy, convert_cpu, randn_cpu, gemm,
    activation_cpu, activation_backward_cpu, log_softmax_cpu, log_softmax_backward_cpu, dropout_cpu, embedding_cpu,
    embedding_backward_cpu, sum_rows_cpu, axpy_cpu, scale_cpu, mul_cpu, fill_cpu, nll_loss_cpu, cross_entropy_cpu,
    mse_loss_cpu, adamw_cpu,
    lora_forward_cpu, lora_backward_cpu, lora_merge_cpu,
};

std::atomic<const OpTable*> g_tables[2] = {&kCpuOps, nullptr};

}  // namespace

void register_op_table(Device d, const OpTable* table) { g_tables[static_cast<int>(d)].store(table); }

Tensor new_tensor(Device d, DType dt, const Shape& shape, const char* op, bool zero, bool touch) {
  const size_t bytes = static_cast<size_t>(checked_numel(shape, dt, op)) * dtype_size(dt);
  Tensor t;
  t.dtype = dt;
  t.shape = shape;
  t.storage = d == Device::CPU && touch ? alloc_host(bytes, zero, true) : ops_for(d, op).alloc(bytes, zero);
  return t;
}

HostBytes host_bytes(const Tensor& t, const char* op) {
  HostBytes h;
  if (t.device() == Device::CPU) {
    h.data = t.data();
    return h;
  }
  h.copy.resize(t.nbytes());
  ops_for(t.device(), op).to_host(h.copy.data(), t.data(), h.copy.size());
  h.data = h.copy.data();
  return h;
}

const OpTable& ops_for(Device d, const char* op) {
  if (d == Device::CUDA) cuda_state();  // the cuda table is registered at first use
  const OpTable* t = g_tables[static_cast<int>(d)].load();
  if (!t)
    fail("ERR_NOT_ON_DEVICE", cat(op, ": no ", device_name(d), " device is available (", cuda_state().reason, ")"));
  return *t;
}

}  // namespace peft
