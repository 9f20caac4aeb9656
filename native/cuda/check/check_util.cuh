// What the files of the standalone check program (kernel_check.cu, int8_check.cu) share: the failure count,
// device buffers filled from host vectors, random inputs, timing; and the checks and benches each file adds.
#pragma once
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../../core/dtype.h"
#include "../compat.cuh"
#include "../cuda_ops.h"

namespace api = peft::PEFT_CUDA_NS;
using peft::DType;

namespace check_util {

inline int g_checks = 0, g_failures = 0;
inline void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok && ++g_failures <= 40) std::printf("  FAIL %s\n", what.c_str());
}
inline void must(int rc, const std::string& err, const char* what) {
  if (rc != 0) {
    std::printf("  FAIL %s: %s\n", what, err.c_str());
    ++g_failures;
  }
}

// Device memory holding a host vector's bytes.
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t n) : bytes(n) {
    std::string err;
    must(api::cuda_malloc(&p, n ? n : 1, &err), err, "cuda_malloc");
  }
  template <class T>
  explicit Buf(const std::vector<T>& v) : Buf(v.size() * sizeof(T)) {
    std::string err;
    must(api::cuda_memcpy_h2d(p, v.data(), bytes, &err), err, "cuda_memcpy_h2d");
  }
  ~Buf() { api::cuda_free(p, nullptr); }
  Buf(const Buf&) = delete;
  template <class T>
  std::vector<T> get() const {
    std::vector<T> v(bytes / sizeof(T));
    std::string err;
    must(api::cuda_memcpy_d2h(v.data(), p, bytes, &err), err, "cuda_memcpy_d2h");
    return v;
  }
};

inline std::vector<float> rand_f32(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}
inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = peft::f32_to_bf16(v[i]);
  return o;
}

inline double seconds_of(int reps, const std::function<void()>& f) {
  f();  // warm-up
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// int8_check.cu: LLM.int8 and IA3 against host references; the int8 GEMM's bench (int8 mma ceiling, f16 GEMM).
void run_int8_checks();
void run_int8_bench(double int8_mma_tops, int64_t n);  // n³ products, against the int8 mma ceiling

}  // namespace check_util
