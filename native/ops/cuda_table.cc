// The CUDA device's op table: the real GPU when the addon was built with nvcc and a usable device is
// present, or the emulated device (the same kernels run on the CPU through native/cuda/emu) when
// NODE_PEFT_CUDA=emu. Chosen once, at the first use of the cuda device.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "../core/errors.h"
#include "../cpu/convert.h"
#include "../cuda/cuda_ops.h"
#include "cuda_state.h"
#include "op_table.h"
// Last: the emulator defines CUDA keyword macros that must not reach the standard headers.
#include "../cuda/emu/emu_host.h"

namespace peft {
namespace {

// The two implementations behind one set of function pointers.
struct CudaApi {
  int (*malloc_)(void**, size_t, std::string*);
  int (*free_)(void*, std::string*);
  int (*h2d)(void*, const void*, size_t, std::string*);
  int (*d2h)(void*, const void*, size_t, std::string*);
  int (*memset_)(void*, int, size_t, std::string*);
  int (*convert)(const void*, int, void*, int, int64_t, std::string*);
  int (*gemm_nt)(const void*, const void*, const void*, void*, int, int, int, int64_t, int64_t, int64_t, std::string*);
};

const CudaApi kEmu = {cuda_emu::cuda_malloc, cuda_emu::cuda_free,    cuda_emu::cuda_memcpy_h2d, cuda_emu::cuda_memcpy_d2h,
                      cuda_emu::cuda_memset, cuda_emu::cuda_convert, cuda_emu::cuda_gemm_nt};
#ifdef PEFT_WITH_CUDA_GPU
const CudaApi kGpu = {cuda_gpu::cuda_malloc, cuda_gpu::cuda_free,    cuda_gpu::cuda_memcpy_h2d, cuda_gpu::cuda_memcpy_d2h,
                      cuda_gpu::cuda_memset, cuda_gpu::cuda_convert, cuda_gpu::cuda_gemm_nt};
#endif

const CudaApi* g_api = nullptr;
CudaState g_state;

void check(int rc, const std::string& err, const char* op) {
  if (rc != 0) fail("ERR_DEVICE", cat("cuda ", op, ": ", err.empty() ? std::string("error ") + std::to_string(rc) : err));
}

std::shared_ptr<Storage> dev_alloc(size_t bytes, bool zero) {
  void* p = nullptr;
  std::string err;
  check(g_api->malloc_(&p, bytes ? bytes : 1, &err), err, "alloc");
  auto st = std::make_shared<Storage>();
  st->data = p;
  st->set_size(bytes);
  st->device = Device::CUDA;
  const CudaApi* api = g_api;
  st->release = [api](void* q) {
    std::string ignored;
    api->free_(q, &ignored);
  };
  err.clear();
  if (zero) check(g_api->memset_(p, 0, bytes, &err), err, "alloc");
  return st;
}

void to_host(void* host, const void* dev, size_t bytes) {
  std::string err;
  if (bytes) check(g_api->d2h(host, dev, bytes, &err), err, "copy to host");
}

void from_host(void* dev, const void* host, size_t bytes) {
  std::string err;
  if (bytes) check(g_api->h2d(dev, host, bytes, &err), err, "copy from host");
}

void convert(const void* src, DType sdt, void* dst, DType ddt, int64_t n) {
  if (sdt != ddt && !(dtype_is_float(sdt) && dtype_is_float(ddt)))
    fail("ERR_NOT_ON_DEVICE", cat("convert ", dtype_name(sdt), " -> ", dtype_name(ddt), ": the cuda device converts between f32, f16 and bf16 only"));
  std::string err;
  check(g_api->convert(src, static_cast<int>(sdt), dst, static_cast<int>(ddt), n, &err), err, "convert");
}

// Same numbers as the CPU for the same (seed, stream): drawn on the host, then uploaded.
void randn(void* dst, DType dt, int64_t n, uint64_t seed, uint64_t stream, float mean, float sd) {
  std::vector<uint8_t> host(static_cast<size_t>(n) * dtype_size(dt));
  randn_cpu(host.data(), dt, n, seed, stream, mean, sd);
  from_host(dst, host.data(), host.size());
}

// The tensor-core GEMM covers y = x·Wᵀ (+ b) with f16 or bf16 x and W of one dtype, contiguous.
void gemm(const GemmArgs& g) {
  bool nt = g.A.cs == 1 && g.A.rs == g.K && g.B.rs == 1 && g.B.cs == g.K && g.ldc == g.N;
  bool half = (g.A.dt == DType::F16 || g.A.dt == DType::BF16) && g.B.dt == g.A.dt;
  if (!nt || !half || g.R != 0 || g.accumulate || g.alpha != 1.0f)
    fail("ERR_NOT_ON_DEVICE",
         cat("linear on cuda: the tensor-core kernel takes f16 or bf16 x and weight of one dtype (y = x·Wᵀ + b); got x ",
             dtype_name(g.A.dt), ", weight ", dtype_name(g.B.dt), (nt ? "" : ", a layout it does not cover"),
             (g.R || g.accumulate || g.alpha != 1.0f ? ", a fused or accumulating form" : "")));
  std::string err;
  check(g_api->gemm_nt(g.A.p, g.B.p, g.bias, g.C, static_cast<int>(g.A.dt), static_cast<int>(g.bias_dt), static_cast<int>(g.c_dt), g.M,
                       g.N, g.K, &err),
        err, "linear");
}

const OpTable kCudaOps = {"cuda", dev_alloc, to_host, from_host, convert, randn, gemm};

void choose() {
  const char* want = std::getenv("NODE_PEFT_CUDA");
  std::string mode = want ? want : "";
  if (mode == "emu") {
    g_api = &kEmu;
    g_state = {true, true, "emulated: CUDA kernels run on the CPU (NODE_PEFT_CUDA=emu)"};
  } else if (mode == "0" || mode == "off") {
    g_state = {false, false, "turned off by NODE_PEFT_CUDA=" + mode};
  } else {
#ifdef PEFT_WITH_CUDA_GPU
    bool available = false, emulated = false;
    std::string reason;
    cuda_gpu::cuda_runtime_state(&available, &emulated, &reason);
    g_state = {available, false, available ? "" : reason};
    if (available) g_api = &kGpu;
#else
    g_state = {false, false, "this build has no CUDA backend (nvcc was not found at build time); NODE_PEFT_CUDA=emu runs the kernels on the CPU"};
#endif
  }
  if (g_api) register_op_table(Device::CUDA, &kCudaOps);
}

std::once_flag g_once;

}  // namespace

void set_emu_order(const std::string& order) {
  emu::Order o;
  if (!emu::parse_order(order.c_str(), &o)) fail_range(cat("cuda emulation order must be forward, reverse or random, got \"", order, "\""));
  emu::set_order(o);
}

const CudaState& cuda_state() {
  std::call_once(g_once, choose);
  return g_state;
}

}  // namespace peft
