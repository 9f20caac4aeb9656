// What the standalone kernel checks share (kernel_check.cu, lora_check.cu, int8_check.cu): pass/fail counting, device
// buffers holding host vectors, seeded inputs, bf16 rounding, and timing for the bench.
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

namespace {

int g_checks = 0, g_failures = 0;
void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok && ++g_failures <= 40) std::printf("  FAIL %s\n", what.c_str());
}
void must(int rc, const std::string& err, const char* what) {
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

std::vector<float> rand_f32(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}
std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = peft::f32_to_bf16(v[i]);
  return o;
}

// A program's main: the device's state, the checks, then with --bench (on a GPU only) the bench. Returns the
// exit status: 0 when every check passed, 2 without a usable device.
int check_program(int argc, char** argv, const char* what, void (*checks)(), void (*bench)()) {
  bool want_bench = false;
  for (int i = 1; i < argc; ++i) want_bench |= std::string(argv[i]) == "--bench";
  bool available = false, emulated = false;
  std::string reason;
  api::cuda_runtime_state(&available, &emulated, &reason);
  std::printf("%s: %s (%s)\n", what, emulated ? "emulated on the CPU" : available ? "GPU" : "no GPU", reason.c_str());
  if (!available) return 2;
  checks();
  std::printf("%s checks: %d, failures: %d\n", what, g_checks, g_failures);
  if (want_bench) {
    if (emulated) std::printf("bench: skipped (emulated; bench/cuda-roofline.mjs gives the figures on paper)\n");
    else bench();
  }
  return g_failures == 0 ? 0 : 1;
}

double seconds_of(int reps, const std::function<void()>& f) {
  f();  // warm-up
  std::string err;
  api::cuda_synchronize(&err);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  api::cuda_synchronize(&err);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

}  // namespace
