// One op table per device. ops/ validates arguments, then calls the table of the operands' device; a null
// entry means that device has no kernel for the op (ERR_NOT_ON_DEVICE).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "../core/dtype.h"
#include "../core/errors.h"
#include "../core/storage.h"
#include "../core/tensor.h"
#include "../cpu/adamw.h"
#include "../cpu/gemm.h"
#include "../cpu/ia3.h"
#include "../cpu/int8.h"
#include "../cpu/lora.h"
#include "../cpu/nn_kernels.h"

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
  // The training ops, with the CPU kernels' signatures and semantics (native/cpu/nn_kernels.h, losses.h,
  // adamw.h). Integer ids and targets passed here are range-checked already.
  void (*activation)(Act a, const void* x, DType xdt, void* y, DType ydt, int64_t n) = nullptr;
  void (*activation_backward)(Act a, const void* x, DType xdt, const void* dy, DType dydt, void* dx, DType dxdt,
                              int64_t n) = nullptr;
  void (*log_softmax)(const void* x, DType xdt, void* y, DType ydt, int64_t rows, int64_t cols) = nullptr;
  void (*log_softmax_backward)(const void* y, DType ydt, const void* dy, DType dydt, void* dx, DType dxdt, int64_t rows,
                               int64_t cols) = nullptr;
  void (*dropout)(const void* x, DType xdt, void* y, DType ydt, int64_t n, double p, uint64_t seed,
                  uint64_t stream) = nullptr;
  void (*embedding)(const void* ids, DType idt, int64_t n, const void* w, void* out, size_t row_bytes) = nullptr;
  void (*embedding_backward)(const void* ids, DType idt, int64_t n, const void* dy, DType dydt, void* dw, DType dwdt,
                             int64_t dim) = nullptr;
  void (*sum_rows)(const void* x, DType xdt, int64_t rows, int64_t cols, void* out, DType odt, bool accumulate) = nullptr;
  void (*axpy)(void* a, DType adt, const void* b, DType bdt, float alpha, int64_t n) = nullptr;
  void (*scale)(void* a, DType adt, float alpha, int64_t n) = nullptr;
  void (*mul)(const void* a, DType adt, const void* b, DType bdt, void* y, DType ydt, int64_t n) = nullptr;
  void (*fill)(void* a, DType dt, int64_t n, double value) = nullptr;
  double (*nll_loss)(const void* logp, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes,
                     int64_t ignore, void* grad, DType gdt) = nullptr;
  double (*cross_entropy)(const void* logits, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes,
                          int64_t ignore, double smoothing, void* grad, DType gdt) = nullptr;
  double (*mse_loss)(const void* y, DType ydt, const void* t, DType tdt, int64_t n, void* grad, DType gdt) = nullptr;
  void (*adamw)(const std::vector<AdamWParam>& params, const AdamWScalars& s) = nullptr;

  // LoRA (lora_fused.cu): the fused dense forward, backward and in-place merge with native/cpu/lora.h's
  // contracts (lora_forward_cpu, lora_backward_cpu, lora_merge_cpu), every pointer in this device's memory.
  void (*lora_forward)(const DenseView& d, const std::vector<AdapterView>& ad, void* y, DType y_dt, float* T) = nullptr;
  void (*lora_backward)(const DenseView& d, const std::vector<AdapterView>& ad, const void* dy, DType dy_dt, const float* T,
                        void* dx, DType dx_dt) = nullptr;
  int (*lora_merge)(void* W, DType w_dt, int64_t N, int64_t K, bool w_in_out, const std::vector<AdapterView>& ad, float sign,
                    bool safe, bool commit) = nullptr;
  // IA3 and LLM.int8 (ia3_scale.cu, int8_matmul.cu): the CPU kernels' signatures and semantics
  // (native/cpu/int8.h, ia3.h) over device pointers; Int8Weight::cache is the host's packing cache, unused
  // elsewhere. The host runs these ops through the CPU functions directly.
  int64_t (*int8_quantize)(const void* w, DType dt, int64_t rows, int64_t cols, int8_t* cb, float* scb) = nullptr;
  void (*int8_linear)(const Int8LinearArgs& a) = nullptr;
  void (*int8_linear_grad_input)(const void* dy, DType dy_dt, int64_t M, const Int8Weight& w, void* dx, DType dx_dt) = nullptr;
  void (*ia3_forward)(const DenseView& d, const Ia3Scale& s, void* y, DType y_dt, void* y0, DType y0_dt) = nullptr;
  void (*ia3_backward)(const DenseView& d, const Ia3Scale& s, const void* dy, DType dy_dt, const void* y0, DType y0_dt,
                       void* dx, DType dx_dt, void* dW, DType dW_dt, void* db, DType db_dt, float* dl) = nullptr;
  // f: `mid` host floats (the merge's combined factors).
  bool (*ia3_scale)(void* W, DType dt, int64_t outer, int64_t mid, int64_t inner, const float* f, bool safe, bool commit) = nullptr;
};

// The table for a device, or an ERR_NOT_ON_DEVICE error naming `op` when that device has none (or lacks `op`).
const OpTable& ops_for(Device d, const char* op);
void register_op_table(Device d, const OpTable* table);

// The kernel `field` of device d's table, or an ERR_NOT_ON_DEVICE error naming `op` when it has none.
template <class F>
F op_kernel(Device d, const char* op, F OpTable::*field) {
  const OpTable& t = ops_for(d, op);
  F f = t.*field;
  if (!f) fail("ERR_NOT_ON_DEVICE", cat(op, ": no ", t.name, " kernel; move the operands to the cpu"));
  return f;
}

// A tensor's bytes where the host can read them: its own memory on the cpu, else a copy (small index
// tensors checked before a device kernel runs).
struct HostBytes {
  std::vector<unsigned char> copy;
  const void* data = nullptr;
};
HostBytes host_bytes(const Tensor& t, const char* op);

// A new tensor on device `d` (shape checked): zero-filled unless `zero` is false (an output a kernel writes
// in full); `touch` faults host pages in now on the pool's threads (before a single-threaded fill).
Tensor new_tensor(Device d, DType dt, const Shape& shape, const char* op, bool zero = true, bool touch = false);

}  // namespace peft
