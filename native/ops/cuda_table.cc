// The CUDA device's op table: the real GPU when the addon was built with nvcc and a usable device is
// present, or the emulated device (the same kernels run on the CPU through native/cuda/emu) when
// NODE_PEFT_CUDA=emu. Chosen once, at the first use of the cuda device.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "../core/errors.h"
#include "../cpu/convert.h"
#include "../cpu/nn_kernels.h"
#include "../cuda/cuda_ops.h"
#include "../cuda/ia3_ops.h"
#include "../cuda/int8_ops.h"
#include "../cuda/lora_ops.h"
#include "cuda_state.h"
#include "op_table.h"
// Last: the emulator defines CUDA keyword macros that must not reach the standard headers.
#include "../cuda/emu/emu_host.h"

namespace peft {
namespace {

// The two implementations share signatures: CUDA(fn) is the one chosen at the first use of the device.
[[maybe_unused]] bool g_use_gpu = false;  // used only in builds with the real CUDA kernels
#ifdef PEFT_WITH_CUDA_GPU
#define CUDA(fn) (g_use_gpu ? cuda_gpu::fn : cuda_emu::fn)
#else
#define CUDA(fn) cuda_emu::fn
#endif

bool g_chosen = false;  // a cuda device exists (GPU or emulated)
std::atomic<bool> g_allow_tf32{false};
CudaState g_state;

void check(int rc, const std::string& err, const char* op) {
  if (rc != 0) fail("ERR_DEVICE", cat("cuda ", op, ": ", err.empty() ? std::string("error ") + std::to_string(rc) : err));
}

std::shared_ptr<Storage> dev_alloc(size_t bytes, bool zero) {
  void* p = nullptr;
  std::string err;
  check(CUDA(cuda_malloc)(&p, bytes ? bytes : 1, &err), err, "alloc");
  auto st = std::make_shared<Storage>();
  st->data = p;
  st->set_size(bytes);
  st->device = Device::CUDA;
  auto release = CUDA(cuda_free);
  st->release = [release](void* q) {
    std::string ignored;
    release(q, &ignored);
  };
  err.clear();
  if (zero) check(CUDA(cuda_memset)(p, 0, bytes, &err), err, "alloc");
  return st;
}

void to_host(void* host, const void* dev, size_t bytes) {
  std::string err;
  if (bytes) check(CUDA(cuda_memcpy_d2h)(host, dev, bytes, &err), err, "copy to host");
}

void from_host(void* dev, const void* host, size_t bytes) {
  std::string err;
  if (bytes) check(CUDA(cuda_memcpy_h2d)(dev, host, bytes, &err), err, "copy from host");
}

void convert(const void* src, DType sdt, void* dst, DType ddt, int64_t n) {
  if (sdt != ddt && !(dtype_is_float(sdt) && dtype_is_float(ddt)))
    fail("ERR_NOT_ON_DEVICE", cat("convert ", dtype_name(sdt), " -> ", dtype_name(ddt), ": the cuda device converts between f32, f16 and bf16 only"));
  std::string err;
  check(CUDA(cuda_convert)(src, static_cast<int>(sdt), dst, static_cast<int>(ddt), n, &err), err, "convert");
}

// Same numbers as the CPU for the same (seed, stream): drawn on the host, then uploaded.
void randn(void* dst, DType dt, int64_t n, uint64_t seed, uint64_t stream, float mean, float sd) {
  std::vector<uint8_t> host(static_cast<size_t>(n) * dtype_size(dt));
  randn_cpu(host.data(), dt, n, seed, stream, mean, sd);
  from_host(dst, host.data(), host.size());
}

CudaMat device_mat(const GemmMat& m) { return {m.p, static_cast<int>(m.dt), m.rs, m.cs}; }

// Every product (cuda_gemm picks the kernel: tensor cores for f16/bf16 pairs and, when allowed, TF32; the f32
// SIMT kernel otherwise), with IA3's per-k input scale applied as A is staged and LoRA's extra rank-R product
// as the kernels' rank term. The CPU adds A2·B2 outside alpha and the device inside it, so a rank term takes
// alpha = 1 only.
void gemm(const GemmArgs& g) {
  if (g.R != 0 && g.alpha != 1.0f)
    fail("ERR_NOT_ON_DEVICE", "linear on cuda: the fused LoRA product with alpha != 1 has no cuda kernel; run it on the cpu");
  CudaGemm c;
  c.M = g.M, c.N = g.N, c.K = g.K;
  c.A = device_mat(g.A);
  c.B = device_mat(g.B);
  c.C = g.C;
  c.c_dt = static_cast<int>(g.c_dt);
  c.ldc = g.ldc;
  c.alpha = g.alpha;
  c.accumulate = g.accumulate;
  c.bias = g.bias;
  c.bias_dt = static_cast<int>(g.bias_dt);
  c.col_scale = g.col_scale;
  c.a_ks = g.A.ks;  // device memory, as every pointer here
  c.allow_tf32 = g_allow_tf32.load();
  if (g.R != 0) c.rank = {g.R, device_mat(g.A2), device_mat(g.B2)};
  std::string err;
  check(CUDA(cuda_gemm)(c, &err), err, "gemm");
}

// The training ops: the CPU kernels' signatures over the CUDA host API.
void activation(Act a, const void* x, DType xdt, void* y, DType ydt, int64_t n) {
  std::string err;
  check(CUDA(cuda_activation)(static_cast<int>(a), x, int(xdt), y, int(ydt), n, &err), err, "activation");
}
void activation_backward(Act a, const void* x, DType xdt, const void* dy, DType dydt, void* dx, DType dxdt, int64_t n) {
  std::string err;
  check(CUDA(cuda_activation_backward)(static_cast<int>(a), x, int(xdt), dy, int(dydt), dx, int(dxdt), n, &err), err,
        "activationBackward");
}
void log_softmax(const void* x, DType xdt, void* y, DType ydt, int64_t rows, int64_t cols) {
  std::string err;
  check(CUDA(cuda_log_softmax)(x, int(xdt), y, int(ydt), rows, cols, &err), err, "logSoftmax");
}
void log_softmax_backward(const void* y, DType ydt, const void* dy, DType dydt, void* dx, DType dxdt, int64_t rows,
                          int64_t cols) {
  std::string err;
  check(CUDA(cuda_log_softmax_backward)(y, int(ydt), dy, int(dydt), dx, int(dxdt), rows, cols, &err), err,
        "logSoftmaxBackward");
}
void dropout(const void* x, DType xdt, void* y, DType ydt, int64_t n, double p, uint64_t seed, uint64_t stream) {
  std::string err;
  check(CUDA(cuda_dropout)(x, int(xdt), y, int(ydt), n, p, seed, stream, &err), err, "dropout");
}
void embedding(const void* ids, DType idt, int64_t n, const void* w, void* out, size_t row_bytes) {
  std::string err;
  check(CUDA(cuda_embedding)(ids, int(idt), n, w, out, static_cast<int64_t>(row_bytes), &err), err, "embedding");
}
void embedding_backward(const void* ids, DType idt, int64_t n, const void* dy, DType dydt, void* dw, DType dwdt,
                        int64_t dim) {
  std::string err;
  check(CUDA(cuda_embedding_backward)(ids, int(idt), n, dy, int(dydt), dw, int(dwdt), dim, &err), err,
        "embeddingBackward");
}
void sum_rows(const void* x, DType xdt, int64_t rows, int64_t cols, void* out, DType odt, bool accumulate) {
  std::string err;
  check(CUDA(cuda_sum_rows)(x, int(xdt), rows, cols, out, int(odt), accumulate, &err), err, "sumRows");
}
void axpy(void* a, DType adt, const void* b, DType bdt, float alpha, int64_t n) {
  std::string err;
  check(CUDA(cuda_axpy)(a, int(adt), b, int(bdt), alpha, n, &err), err, "addInPlace");
}
void scale(void* a, DType adt, float alpha, int64_t n) {
  std::string err;
  check(CUDA(cuda_scale_inplace)(a, int(adt), alpha, n, &err), err, "scaleInPlace");
}
void mul(const void* a, DType adt, const void* b, DType bdt, void* y, DType ydt, int64_t n) {
  std::string err;
  check(CUDA(cuda_mul)(a, int(adt), b, int(bdt), y, int(ydt), n, &err), err, "mul");
}
// The element's bytes are made on the host by the CPU's fill (the same conversion), then replicated.
void fill(void* a, DType dt, int64_t n, double value) {
  alignas(8) unsigned char one[8] = {};
  fill_cpu(one, dt, 1, value);
  std::string err;
  check(CUDA(cuda_fill)(a, one, static_cast<int>(dtype_size(dt)), n, &err), err, "fill");
}
double nll_loss(const void* logp, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes, int64_t ignore,
                void* grad, DType gdt) {
  std::string err;
  double loss = 0;
  check(CUDA(cuda_nll_loss)(logp, int(ldt), target, int(tdt), rows, classes, ignore, grad, int(gdt), &loss, &err), err,
        "nllLoss");
  return loss;
}
double cross_entropy(const void* logits, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes,
                     int64_t ignore, double smoothing, void* grad, DType gdt) {
  std::string err;
  double loss = 0;
  check(CUDA(cuda_cross_entropy)(logits, int(ldt), target, int(tdt), rows, classes, ignore, smoothing, grad, int(gdt),
                                 &loss, &err),
        err, "crossEntropy");
  return loss;
}
double mse_loss(const void* y, DType ydt, const void* t, DType tdt, int64_t n, void* grad, DType gdt) {
  std::string err;
  double loss = 0;
  check(CUDA(cuda_mse_loss)(y, int(ydt), t, int(tdt), n, grad, int(gdt), &loss, &err), err, "mseLoss");
  return loss;
}
void adamw(const std::vector<AdamWParam>& params, const AdamWScalars& s) {
  std::vector<CudaAdamWParam> dev;
  for (const AdamWParam& p : params) dev.push_back({p.p, int(p.p_dt), p.g, int(p.g_dt), p.m, p.v, p.n});
  const CudaAdamWScalars cs{s.decay, s.lerp_w, s.beta2, s.sq_w, s.bc2_sqrt, s.eps, s.neg_step};
  std::string err;
  check(CUDA(cuda_adamw)(dev.data(), static_cast<int64_t>(dev.size()), cs, &err), err, "adamwStep");
}

// LoRA (lora_fused.cu): the CPU contracts' views as the CUDA host API's.
CudaDense device_dense(const DenseView& d) {
  CudaDense c;
  c.M = d.M, c.K = d.K, c.N = d.N;
  c.x = d.x, c.x_dt = int(d.x_dt), c.W = d.W, c.w_dt = int(d.w_dt), c.w_in_out = d.w_in_out;
  c.bias = d.bias, c.bias_dt = int(d.bias_dt);
  return c;
}
CudaLoraBase lora_base(const DenseView& d) {
  CudaLoraBase b;
  static_cast<CudaDense&>(b) = device_dense(d);
  b.allow_tf32 = g_allow_tf32.load();
  return b;
}
std::vector<CudaLoraAdapter> lora_adapters(const std::vector<AdapterView>& ad) {
  std::vector<CudaLoraAdapter> out;
  for (const AdapterView& a : ad)
    out.push_back({a.r, a.A, int(a.a_dt), a.B, int(a.b_dt), a.scale, a.p, a.seed, a.stream, a.dA, int(a.da_dt), a.dB, int(a.db_dt)});
  return out;
}
void lora_forward(const DenseView& d, const std::vector<AdapterView>& ad, void* y, DType y_dt, float* T) {
  const std::vector<CudaLoraAdapter> a = lora_adapters(ad);
  std::string err;
  check(CUDA(cuda_lora_forward)(lora_base(d), a.data(), int64_t(a.size()), y, int(y_dt), T, &err), err, "loraForward");
}
void lora_backward(const DenseView& d, const std::vector<AdapterView>& ad, const void* dy, DType dy_dt, const float* T, void* dx,
                   DType dx_dt) {
  const std::vector<CudaLoraAdapter> a = lora_adapters(ad);
  std::string err;
  check(CUDA(cuda_lora_backward)(lora_base(d), a.data(), int64_t(a.size()), dy, int(dy_dt), T, dx, int(dx_dt), &err), err,
        "loraBackward");
}
int lora_merge(void* W, DType w_dt, int64_t N, int64_t K, bool w_in_out, const std::vector<AdapterView>& ad, float sign, bool safe,
               bool commit) {
  const std::vector<CudaLoraAdapter> a = lora_adapters(ad);
  std::string err;
  int bad = -1;
  check(CUDA(cuda_lora_merge)(W, int(w_dt), N, K, w_in_out, a.data(), int64_t(a.size()), sign, safe, commit, &bad, &err), err,
        "loraMerge");
  return bad;
}

// IA3 and LLM.int8 (ia3_scale.cu, int8_matmul.cu).
int64_t int8_quantize(const void* w, DType dt, int64_t rows, int64_t cols, int8_t* cb, float* scb) {
  std::string err;
  int64_t bad = -1;
  check(CUDA(cuda_int8_quantize)(w, int(dt), rows, cols, cb, scb, &bad, &err), err, "int8Quantize");
  return bad;
}
void int8_linear(const Int8LinearArgs& a) {
  CudaInt8Linear c;
  c.M = a.M, c.N = a.w.N, c.K = a.w.K;
  c.x = a.x, c.x_dt = int(a.x_dt), c.cb = a.w.cb, c.scb = a.w.scb;
  c.bias = a.bias, c.bias_dt = int(a.bias_dt), c.threshold = a.threshold;
  c.y = a.y, c.y_dt = int(a.y_dt), c.raw = a.raw;
  c.u = a.u, c.bt = a.bt, c.r = a.r;
  std::string err;
  check(CUDA(cuda_int8_linear)(c, &err), err, "int8Linear");
}
void int8_linear_grad_input(const void* dy, DType dy_dt, int64_t M, const Int8Weight& w, void* dx, DType dx_dt) {
  std::string err;
  check(CUDA(cuda_int8_linear_grad_input)(dy, int(dy_dt), M, w.cb, w.scb, w.N, w.K, dx, int(dx_dt), &err), err,
        "int8LinearGradInput");
}
void ia3_forward(const DenseView& d, const Ia3Scale& s, void* y, DType y_dt, void* y0, DType y0_dt) {
  std::string err;
  check(CUDA(cuda_ia3_forward)(device_dense(d), s.l, s.input_side, y, int(y_dt), y0, int(y0_dt), &err), err, "ia3Forward");
}
void ia3_backward(const DenseView& d, const Ia3Scale& s, const void* dy, DType dy_dt, const void* y0, DType y0_dt, void* dx,
                  DType dx_dt, void* dW, DType dW_dt, void* db, DType db_dt, float* dl) {
  std::string err;
  check(CUDA(cuda_ia3_backward)(device_dense(d), s.l, s.input_side, dy, int(dy_dt), y0, int(y0_dt), dx, int(dx_dt), dW,
                                int(dW_dt), db, int(db_dt), dl, &err),
        err, "ia3Backward");
}
bool ia3_scale(void* W, DType dt, int64_t outer, int64_t mid, int64_t inner, const float* f, bool safe, bool commit) {
  std::shared_ptr<Storage> factors = dev_alloc(sizeof(float) * static_cast<size_t>(mid), false);
  from_host(factors->data, f, sizeof(float) * static_cast<size_t>(mid));
  std::string err;
  bool finite = true;
  check(CUDA(cuda_ia3_scale)(W, int(dt), outer, mid, inner, static_cast<const float*>(factors->data), safe, commit, &finite, &err),
        err, "ia3Scale");
  return finite;
}
void add_int8_ia3_ops(OpTable& t) {
  t.int8_quantize = int8_quantize;
  t.int8_linear = int8_linear;
  t.int8_linear_grad_input = int8_linear_grad_input;
  t.ia3_forward = ia3_forward;
  t.ia3_backward = ia3_backward;
  t.ia3_scale = ia3_scale;
}

OpTable cuda_ops() {
  OpTable t = {"cuda", dev_alloc, to_host, from_host, convert, randn, gemm,
               activation, activation_backward, log_softmax, log_softmax_backward, dropout, embedding,
               embedding_backward, sum_rows, axpy, scale, mul, fill, nll_loss, cross_entropy, mse_loss, adamw,
               lora_forward, lora_backward, lora_merge};
  add_int8_ia3_ops(t);
  return t;
}
const OpTable kCudaOps = cuda_ops();

void choose() {
  const char* want = std::getenv("NODE_PEFT_CUDA");
  std::string mode = want ? want : "";
  if (mode == "emu") {
    g_chosen = true;
    g_state = {true, true, "emulated: CUDA kernels run on the CPU (NODE_PEFT_CUDA=emu)"};
  } else if (mode == "0" || mode == "off") {
    g_state = {false, false, "turned off by NODE_PEFT_CUDA=" + mode};
  } else {
#ifdef PEFT_WITH_CUDA_GPU
    bool available = false, emulated = false;
    std::string reason;
    cuda_gpu::cuda_runtime_state(&available, &emulated, &reason);
    g_state = {available, false, available ? "" : reason};
    g_chosen = g_use_gpu = available;
#else
    g_state = {false, false, "this build has no CUDA backend (nvcc was not found at build time); NODE_PEFT_CUDA=emu runs the kernels on the CPU"};
#endif
  }
  if (g_chosen) register_op_table(Device::CUDA, &kCudaOps);
}

std::once_flag g_once;

}  // namespace

void set_emu_order(const std::string& order) {
  emu::Order o;
  if (!emu::parse_order(order.c_str(), &o)) fail_range(cat("cuda emulation order must be forward, reverse or random, got \"", order, "\""));
  emu::set_order(o);
}

void set_cuda_allow_tf32(bool allow) { g_allow_tf32.store(allow); }
bool cuda_allow_tf32() { return g_allow_tf32.load(); }

const CudaState& cuda_state() {
  std::call_once(g_once, choose);
  return g_state;
}

}  // namespace peft
