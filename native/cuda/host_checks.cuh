// Host-side helpers of the CUDA host API (cuda_ops.cu, train_ops.cu): argument checks, messages, and
// turning CUDA status codes into the API's (code, message) results.
#pragma once
#include <cstdio>
#include <string>

#include "launch.cuh"

namespace peft::PEFT_CUDA_NS::host_checks {

inline int reject(std::string* err, int code, std::string msg) {
  if (err) *err = std::move(msg);
  return code;
}

inline std::string fmt(const char* f, long long a = 0, long long b = 0, long long c = 0) {
  char buf[256];
  snprintf(buf, sizeof buf, f, a, b, c);
  return buf;
}

inline const char* dt_name(int dt) { return (dt >= 0 && dt < kNumDTypes) ? dtype_name(static_cast<DType>(dt)) : "invalid"; }
inline bool valid_dt(int dt) { return dt >= 0 && dt < kNumDTypes; }
inline bool float_dt(int dt) { return valid_dt(dt) && dtype_is_float(static_cast<DType>(dt)); }

// Byte size of n elements of dt, or -1 when it overflows.
inline int64_t byte_size(int64_t n, int dt) {
  int64_t bytes;
  if (n < 0 || __builtin_mul_overflow(n, static_cast<int64_t>(dtype_size(static_cast<DType>(dt))), &bytes)) return -1;
  return bytes;
}

// True when [a, a+an) and [b, b+bn) overlap without being the same range.
inline bool partial_overlap(const void* a, int64_t an, const void* b, int64_t bn) {
  auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  bool overlap = x < y + static_cast<uintptr_t>(bn) && y < x + static_cast<uintptr_t>(an);
  return overlap && !(x == y && an == bn);
}

// A runtime API call's status as the host API's result: 0, or the code with a message naming the op (and,
// when emulated, what went wrong where). The error is cleared, so the next call starts clean.
inline int api(const char* op, cudaError_t e, std::string* err) {
  if (e == cudaSuccess) return 0;
  cudaGetLastError();
  std::string msg = std::string(op) + ": " + cudaGetErrorString(e);
#if PEFT_CUDA_EMULATED
  if (*emu::last_error_message()) msg = msg + " (" + emu::last_error_message() + ")";
#endif
  return reject(err, e, msg);
}

// The result of a compute call: the launch status, else the execution status a synchronise reports.
inline int finish(const char* op, cudaError_t launched, std::string* err) {
  cudaError_t synced = cudaDeviceSynchronize();  // always, so an execution error is not left for the next call
  return api(op, launched != cudaSuccess ? launched : synced, err);
}

constexpr int kInvalid = cudaErrorInvalidValue;

// Device scratch memory for one call, freed when it goes out of scope.
struct DeviceBuffer {
  void* p = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

inline int alloc(const char* op, DeviceBuffer& b, size_t bytes, std::string* err) {
  return api(op, cudaMalloc(&b.p, bytes ? bytes : 1), err);
}

// Device scratch kept between calls (a thread_local per use) and grown when a call needs more: a cudaMalloc and
// cudaFree per call would cost more than a small kernel and synchronise the device. Calls are synchronous, so
// the next call may reuse the memory.
struct ScratchBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() {
    if (p) cudaFree(p);
  }
  int reserve(const char* op, size_t n, std::string* err) {
    if (n <= bytes && p) return 0;
    if (p) cudaFree(p);
    p = nullptr, bytes = 0;
    if (int rc = api(op, cudaMalloc(&p, n ? n : 1), err)) return rc;
    bytes = n;
    return 0;
  }
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

}  // namespace peft::PEFT_CUDA_NS::host_checks
