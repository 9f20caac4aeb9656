// Helpers shared by the emulator self-test files: check counting, device buffers, host-side dtype access
// and the rounding constants the tolerances are derived from.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../compat.cuh"
#include "../../cuda_ops.h"
#include "../../../core/dtype.h"

namespace selftest {

inline int g_checks = 0, g_failures = 0;

#define CHECK(cond, ...)                                          \
  do {                                                            \
    ++::selftest::g_checks;                                       \
    if (!(cond)) {                                                \
      if (++::selftest::g_failures <= 60) {                       \
        std::printf("    FAIL %s:%d: ", __FILE__, __LINE__);      \
        std::printf(__VA_ARGS__);                                 \
        std::printf("\n");                                        \
      }                                                           \
    }                                                             \
  } while (0)

inline bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// Runs a group of checks and prints one line for it.
template <class F>
void section(const char* name, F&& body) {
  int c0 = g_checks, f0 = g_failures;
  body();
  std::printf("  %-44s %5d checks  %s\n", name, g_checks - c0, g_failures == f0 ? "ok" : "FAILED");
}

// A cudaMalloc'd buffer (emulated device memory).
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n) : bytes(n) {
    std::string err;
    if (peft::cuda_emu::cuda_malloc(&p, n, &err) != 0) std::printf("    cuda_malloc(%zu) failed: %s\n", n, err.c_str());
  }
  ~DevBuf() { peft::cuda_emu::cuda_free(p, nullptr); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(p); }
  void upload(const void* src, size_t n) { peft::cuda_emu::cuda_memcpy_h2d(p, src, n, nullptr); }
  void download(void* dst, size_t n) const { peft::cuda_emu::cuda_memcpy_d2h(dst, p, n, nullptr); }
  template <class T>
  std::vector<T> get(size_t count) const {
    std::vector<T> v(count);
    download(v.data(), count * sizeof(T));
    return v;
  }
};

// Host arrays of any dtype as raw bytes.
using Bytes = std::vector<uint8_t>;
inline size_t dsize(int dt) { return peft::dtype_size(static_cast<peft::DType>(dt)); }
inline double get(const Bytes& b, int dt, size_t i) {
  switch (static_cast<peft::DType>(dt)) {
    case peft::DType::F16: { uint16_t h; std::memcpy(&h, &b[i * 2], 2); return peft::f16_to_f32(h); }
    case peft::DType::BF16: { uint16_t h; std::memcpy(&h, &b[i * 2], 2); return peft::bf16_to_f32(h); }
    default: { float f; std::memcpy(&f, &b[i * 4], 4); return f; }
  }
}
// Stores v rounded to dt (round to nearest even); returns the stored value.
inline double put(Bytes& b, int dt, size_t i, float v) {
  switch (static_cast<peft::DType>(dt)) {
    case peft::DType::F16: { uint16_t h = peft::f32_to_f16(v); std::memcpy(&b[i * 2], &h, 2); break; }
    case peft::DType::BF16: { uint16_t h = peft::f32_to_bf16(v); std::memcpy(&b[i * 2], &h, 2); break; }
    default: std::memcpy(&b[i * 4], &v, 4); break;
  }
  return get(b, dt, i);
}
inline Bytes random_values(int dt, size_t n, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
  Bytes b(n * dsize(dt));
  std::uniform_real_distribution<float> d(lo, hi);
  for (size_t i = 0; i < n; ++i) put(b, dt, i, d(rng));
  return b;
}

// Unit roundoff of a storage dtype (half an ulp, relative) and half its smallest subnormal (absolute).
inline double unit_roundoff(int dt) { return dt == 1 ? 0x1p-11 : dt == 2 ? 0x1p-8 : 0x1p-24; }
inline double half_min_subnormal(int dt) { return dt == 1 ? 0x1p-25 : dt == 2 ? 0x1p-134 : 0x1p-150; }
constexpr double kU32 = 0x1p-24;
// Bound on the error of k sequential f32 additions, relative to the sum of magnitudes: k*u / (1 - k*u).
inline double gamma32(double k) { return k * kU32 / (1 - k * kU32); }

inline const char* dt_name(int dt) { return peft::dtype_name(static_cast<peft::DType>(dt)); }

// Tests defined in emu_runtime_test.cc (run once per scheduling order).
void run_runtime_tests();

}  // namespace selftest
