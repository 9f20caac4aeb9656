// The host API declared in cuda_ops.h: argument checks, dispatch to the kernel launchers, and turning
// CUDA status codes into messages. Compiled by nvcc (namespace cuda_gpu) and by g++ through the emulator
// (namespace cuda_emu, see emu/kernels_emu.cc).
#include "cuda_ops.h"

#include "host_checks.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
using namespace host_checks;

int cuda_runtime_state(bool* available, bool* emulated, std::string* reason) {
#if PEFT_CUDA_EMULATED
  if (available) *available = true;
  if (emulated) *emulated = true;
  if (reason) *reason = "CUDA kernels run on the CPU through the emulator (native/cuda/emu), one block at a time";
  return 0;
#else
  if (available) *available = false;
  if (emulated) *emulated = false;
  int count = 0;  // left unwritten when there is no driver
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (reason) *reason = std::string("no usable CUDA driver: ") + cudaGetErrorString(e);
    return 0;
  }
  if (count <= 0) {
    if (reason) *reason = "no CUDA device";
    return 0;
  }
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  if (major < 8) {
    if (reason) *reason = fmt("GPU 0 is sm_%lld%lld; the kernels are built for sm_80 and newer", major, minor);
    return 0;
  }
  if (available) *available = true;
  if (reason) *reason = fmt("GPU 0 is sm_%lld%lld", major, minor);
  return 0;
#endif
}

int cuda_malloc(void** ptr, size_t bytes, std::string* err) {
  if (!ptr) return reject(err, kInvalid, "cuda_malloc: null result pointer");
  *ptr = nullptr;
  return api("cuda_malloc", cudaMalloc(ptr, bytes), err);
}

int cuda_free(void* ptr, std::string* err) { return api("cuda_free", cudaFree(ptr), err); }

int cuda_memcpy_h2d(void* dst, const void* src, size_t bytes, std::string* err) {
  return api("cuda_memcpy_h2d", cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), err);
}
int cuda_memcpy_d2h(void* dst, const void* src, size_t bytes, std::string* err) {
  return api("cuda_memcpy_d2h", cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), err);
}
int cuda_memcpy_d2d(void* dst, const void* src, size_t bytes, std::string* err) {
  return api("cuda_memcpy_d2d", cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), err);
}
int cuda_memset(void* dst, int byte_value, size_t bytes, std::string* err) {
  return api("cuda_memset", cudaMemset(dst, byte_value, bytes), err);
}
int cuda_synchronize(std::string* err) { return api("cuda_synchronize", cudaDeviceSynchronize(), err); }

int cuda_convert(const void* src, int src_dt, void* dst, int dst_dt, int64_t n, std::string* err) {
  if (!valid_dt(src_dt) || !valid_dt(dst_dt))
    return reject(err, kInvalid, fmt("cuda_convert: invalid dtype code (src %lld, dst %lld)", src_dt, dst_dt));
  if (src_dt != dst_dt && !(float_dt(src_dt) && float_dt(dst_dt)))
    return reject(err, kInvalid, std::string("cuda_convert: unsupported conversion ") + dt_name(src_dt) + " -> " +
                                     dt_name(dst_dt) + " (f32, f16 and bf16 convert into each other; equal dtypes copy)");
  int64_t sbytes = byte_size(n, src_dt), dbytes = byte_size(n, dst_dt);
  if (sbytes < 0 || dbytes < 0) return reject(err, kInvalid, fmt("cuda_convert: invalid element count %lld", n));
  if (n == 0) return 0;
  if (!src || !dst) return reject(err, kInvalid, "cuda_convert: null pointer");
  if (src_dt == dst_dt && src == dst) return 0;
  if (partial_overlap(src, sbytes, dst, dbytes) || (src == dst))
    return reject(err, kInvalid, "cuda_convert: source and destination overlap");
  if (src_dt == dst_dt) return finish("cuda_convert (copy)", launch_copy(src, dst, sbytes), err);
  return finish("cuda_convert", launch_convert(src, DType(src_dt), dst, DType(dst_dt), n), err);
}

int cuda_add(const void* a, const void* b, void* out, int dt, int64_t n, std::string* err) {
  if (!float_dt(dt)) return reject(err, kInvalid, std::string("cuda_add: dtype must be f32, f16 or bf16, got ") + dt_name(dt));
  int64_t bytes = byte_size(n, dt);
  if (bytes < 0) return reject(err, kInvalid, fmt("cuda_add: invalid element count %lld", n));
  if (n == 0) return 0;
  if (!a || !b || !out) return reject(err, kInvalid, "cuda_add: null pointer");
  if (partial_overlap(out, bytes, a, bytes) || partial_overlap(out, bytes, b, bytes))
    return reject(err, kInvalid, "cuda_add: the output partially overlaps an input");
  return finish("cuda_add", launch_add(a, b, out, DType(dt), n), err);
}

int cuda_scale(float alpha, const void* x, float beta, void* y, int dt, int64_t n, std::string* err) {
  if (!float_dt(dt)) return reject(err, kInvalid, std::string("cuda_scale: dtype must be f32, f16 or bf16, got ") + dt_name(dt));
  int64_t bytes = byte_size(n, dt);
  if (bytes < 0) return reject(err, kInvalid, fmt("cuda_scale: invalid element count %lld", n));
  if (n == 0) return 0;
  if (!x || !y) return reject(err, kInvalid, "cuda_scale: null pointer");
  if (partial_overlap(y, bytes, x, bytes)) return reject(err, kInvalid, "cuda_scale: y partially overlaps x");
  return finish("cuda_scale", launch_axpby(alpha, x, beta, y, DType(dt), n), err);
}

int cuda_gemm_nt(const void* x, const void* w, const void* bias, void* y, int in_dt, int bias_dt, int out_dt,
                 int64_t M, int64_t N, int64_t K, std::string* err) {
  if (in_dt != int(DType::F16) && in_dt != int(DType::BF16))
    return reject(err, kInvalid, std::string("cuda_gemm_nt: x and w must be f16 or bf16, got ") + dt_name(in_dt));
  if (!float_dt(out_dt))
    return reject(err, kInvalid, std::string("cuda_gemm_nt: output dtype must be f32, f16 or bf16, got ") + dt_name(out_dt));
  if (bias && !float_dt(bias_dt))
    return reject(err, kInvalid, std::string("cuda_gemm_nt: bias dtype must be f32, f16 or bf16, got ") + dt_name(bias_dt));
  int64_t mk, nk, mn;
  if (M < 0 || N < 0 || K < 0 || __builtin_mul_overflow(M, K, &mk) || __builtin_mul_overflow(N, K, &nk) ||
      __builtin_mul_overflow(M, N, &mn) || byte_size(mk, in_dt) < 0 || byte_size(nk, in_dt) < 0 || byte_size(mn, out_dt) < 0)
    return reject(err, kInvalid, fmt("cuda_gemm_nt: invalid shape M=%lld N=%lld K=%lld", M, N, K));
  if (M == 0 || N == 0) return 0;
  if ((N + kGemmTileN - 1) / kGemmTileN > 65535 || (M + kGemmTileM - 1) / kGemmTileM > 0x7fffffff)
    return reject(err, kInvalid, fmt("cuda_gemm_nt: shape M=%lld N=%lld is beyond the grid limits (N <= 4194240)", M, N));
  if (!y || (K > 0 && (!x || !w))) return reject(err, kInvalid, "cuda_gemm_nt: null pointer");
  int64_t ybytes = byte_size(mn, out_dt);
  if ((K > 0 && (partial_overlap(y, ybytes, x, byte_size(mk, in_dt)) || y == x ||
                 partial_overlap(y, ybytes, w, byte_size(nk, in_dt)) || y == w)) ||
      (bias && (partial_overlap(y, ybytes, bias, byte_size(N, bias_dt)) || y == bias)))
    return reject(err, kInvalid, "cuda_gemm_nt: the output overlaps an input");
  return finish("cuda_gemm_nt",
                launch_gemm_nt(x, w, bias, bias ? DType(bias_dt) : DType::F32, y, DType(in_dt), DType(out_dt), M, N, K), err);
}

}  // namespace peft::PEFT_CUDA_NS
