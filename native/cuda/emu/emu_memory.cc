// The emulation runtime, memory side: the allocation registry behind cudaMalloc, bounds checks for
// kernel accesses, and the runtime API calls other than launch.
#include <cstdio>
#include <cstdlib>

#include "emu_internal.h"

namespace emu {
namespace detail {

namespace {
thread_local cudaError_t tl_error = cudaSuccess;
thread_local cudaError_t tl_pending = cudaSuccess;
thread_local std::string tl_msg;

// The allocation containing [a, e), or null. Caller holds the registry lock.
const std::pair<const uintptr_t, Allocation>* find_locked(Registry& g, uintptr_t a, uintptr_t e) {
  auto it = g.allocs.upper_bound(a);
  if (it == g.allocs.begin()) return nullptr;
  --it;
  return e <= it->first + it->second.bytes ? &*it : nullptr;
}

// Why [a, a+bytes) is not device memory, naming the nearest allocation below it. Formats into a
// caller's array: inside a kernel the caller's frame is abandoned, so it must own no heap memory.
void describe_bad_range(char* out, size_t n, uintptr_t a, size_t bytes) {
  Registry& g = reg();
  std::lock_guard<std::mutex> lk(g.mu);
  void* p = reinterpret_cast<void*>(a);
  auto it = g.allocs.upper_bound(a);
  if (it == g.allocs.begin()) {
    snprintf(out, n, "%zu-byte access at %p is not in any device allocation or shared memory", bytes, p);
    return;
  }
  --it;
  uintptr_t end = it->first + it->second.bytes;
  void* base = reinterpret_cast<void*>(it->first);
  if (a < end)
    snprintf(out, n, "%zu-byte access at %p runs %zu bytes past the end of the %zu-byte allocation at %p", bytes, p,
             static_cast<size_t>(a + bytes - end), it->second.bytes, base);
  else
    snprintf(out, n, "%zu-byte access at %p is not in any allocation (it is %zu bytes past the end of the %zu-byte allocation at %p)",
             bytes, p, static_cast<size_t>(a - end), it->second.bytes, base);
}

bool is_device_range(const void* p, size_t bytes) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  Registry& g = reg();
  std::lock_guard<std::mutex> lk(g.mu);
  return a + bytes >= a && find_locked(g, a, a + bytes) != nullptr;
}

cudaError_t bad_range(const char* api, const char* what, const void* p, size_t bytes) {
  return set_error(cudaErrorInvalidValue, strf("%s: %s range [%p, +%zu) is not inside one device allocation", api, what,
                                               p, bytes));
}
}  // namespace

Registry& reg() {
  static Registry* g = new Registry;  // never destroyed, like the runtime
  return *g;
}

std::string strf(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return fmt;
  return std::string(buf, std::min(static_cast<size_t>(n), sizeof buf - 1));
}

cudaError_t set_error(cudaError_t e, std::string msg) {
  tl_error = e;
  tl_msg = std::move(msg);
  return e;
}

void set_pending(cudaError_t e) { tl_pending = e; }

}  // namespace detail

using namespace detail;

bool check_access(const void* p, size_t bytes, const SrcLoc& loc) {
  if (bytes == 0) return true;
  uintptr_t a = reinterpret_cast<uintptr_t>(p), e = a + bytes;
  if (e < a) e = ~uintptr_t{0};
  uintptr_t slo = reinterpret_cast<uintptr_t>(__start_emu_smem), shi = reinterpret_cast<uintptr_t>(__stop_emu_smem);
  if (slo && a >= slo && e <= shi) return true;
  Fiber* f = running_fiber();
  if (f) {
    Runtime& r = rt();
    uintptr_t alo = reinterpret_cast<uintptr_t>(r.arena);
    if (alo && a >= alo && e <= alo + r.arena_used) return true;
    uintptr_t dlo = reinterpret_cast<uintptr_t>(r.dyn);
    if (dlo && a >= dlo && a < dlo + r.dyn_cap) {
      if (e <= dlo + g_dyn_smem_bytes) return true;
      fail(cudaErrorIllegalAddress, loc, "%zu-byte access at byte offset %zu of dynamic shared memory is out of bounds (the launch has %zu bytes)",
           bytes, static_cast<size_t>(a - dlo), g_dyn_smem_bytes);
    }
    uintptr_t stack_lo = reinterpret_cast<uintptr_t>(f->stack_lo);
    if (a >= stack_lo && e <= stack_lo + f->stack_bytes) return true;
    uint64_t epoch = reg().epoch.load(std::memory_order_acquire);
    if (epoch != r.cache_epoch) {
      for (auto& c : r.cache) c = {};
      r.cache_epoch = epoch;
    }
    for (const auto& c : r.cache)
      if (a >= c.lo && e <= c.hi) return true;
  }
  {
    Registry& g = reg();
    std::lock_guard<std::mutex> lk(g.mu);
    if (auto* hit = find_locked(g, a, e)) {
      if (f) {
        Runtime& r = rt();
        r.cache[r.cache_next++ % 4] = {hit->first, hit->first + hit->second.bytes};
      }
      return true;
    }
  }
  char why[400];
  describe_bad_range(why, sizeof why, a, bytes);
  if (f) fail(cudaErrorIllegalAddress, loc, "illegal address: %s", why);
  set_error(cudaErrorIllegalAddress, strf("illegal address: %s at %s:%u", why, loc.file_name(), loc.line()));
  return false;
}

const char* last_error_message() { return tl_msg.c_str(); }

bool register_memory(const void* p, size_t bytes) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (!p || bytes == 0 || a + bytes < a) return false;
  Registry& g = reg();
  std::lock_guard<std::mutex> lk(g.mu);
  auto next = g.allocs.lower_bound(a);
  if (next != g.allocs.end() && next->first < a + bytes) return false;
  if (next != g.allocs.begin() && std::prev(next)->first + std::prev(next)->second.bytes > a) return false;
  g.allocs.emplace(a, Allocation{bytes, false});
  return true;
}

bool unregister_memory(const void* p) {
  Registry& g = reg();
  std::lock_guard<std::mutex> lk(g.mu);
  auto it = g.allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == g.allocs.end() || it->second.owned) return false;
  g.allocs.erase(it);
  g.epoch.fetch_add(1, std::memory_order_release);
  return true;
}

// ---- runtime API ----------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (!p) return set_error(cudaErrorInvalidValue, "cudaMalloc: null result pointer");
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  if (bytes > (size_t{1} << 46)) return set_error(cudaErrorMemoryAllocation, strf("cudaMalloc: %zu bytes is too large", bytes));
  size_t rounded = (bytes + 255) / 256 * 256;  // cudaMalloc's alignment guarantee
  void* m = std::aligned_alloc(256, rounded);
  if (!m) return set_error(cudaErrorMemoryAllocation, strf("cudaMalloc: out of memory allocating %zu bytes", bytes));
  // Fresh device memory is not zeroed on the GPU either; all-ones bytes read as NaN / -1.
  memset(m, 0xff, bytes);
  {
    Registry& g = reg();
    std::lock_guard<std::mutex> lk(g.mu);
    // The exact size is registered, so accesses into the alignment padding are caught too.
    g.allocs.emplace(reinterpret_cast<uintptr_t>(m), Allocation{bytes, true});
  }
  *p = m;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  {
    Registry& g = reg();
    std::lock_guard<std::mutex> lk(g.mu);
    auto it = g.allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == g.allocs.end() || !it->second.owned)
      return set_error(cudaErrorInvalidValue, strf("cudaFree: %p was not returned by cudaMalloc (or was freed already)", p));
    g.allocs.erase(it);
    g.epoch.fetch_add(1, std::memory_order_release);
  }
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (!dst || !src) return set_error(cudaErrorInvalidValue, "cudaMemcpy: null pointer");
  bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault)
    return set_error(cudaErrorInvalidMemcpyDirection, strf("cudaMemcpy: invalid direction %d", static_cast<int>(kind)));
  if (dst_dev && !is_device_range(dst, bytes)) return bad_range("cudaMemcpy", "destination", dst, bytes);
  if (src_dev && !is_device_range(src, bytes)) return bad_range("cudaMemcpy", "source", src, bytes);
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (!p || !is_device_range(p, bytes)) return bad_range("cudaMemset", "destination", p, bytes);
  memset(p, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) { return cudaMemset(p, value, bytes); }

// Launches are synchronous; a synchronise reports (once) the execution error of an earlier launch, as the
// GPU does. Unlike the GPU, such errors are not sticky: the next launch runs normally.
cudaError_t cudaDeviceSynchronize() {
  cudaError_t e = tl_pending;
  tl_pending = cudaSuccess;
  if (e != cudaSuccess) tl_error = e;
  return e;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaDeviceSynchronize(); }

cudaError_t cudaGetLastError() {
  cudaError_t e = tl_error;
  tl_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return tl_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorAssert: return "cudaErrorAssert";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorUnknown: return "cudaErrorUnknown";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorUnknown: return "unknown error";
  }
  return "unknown error";
}

cudaError_t cudaGetDeviceCount(int* n) {
  if (!n) return set_error(cudaErrorInvalidValue, "cudaGetDeviceCount: null pointer");
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  if (!d) return set_error(cudaErrorInvalidValue, "cudaGetDevice: null pointer");
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  return d == 0 ? cudaSuccess : set_error(cudaErrorInvalidValue, strf("cudaSetDevice(%d): the emulator has device 0 only", d));
}

cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
    return set_error(cudaErrorNotSupported, "cudaFuncSetAttribute: only cudaFuncAttributeMaxDynamicSharedMemorySize is emulated");
  if (value < 0 || value > 227 * 1024)  // sm_90's per-block maximum
    return set_error(cudaErrorInvalidValue, strf("cudaFuncSetAttribute: %d bytes of dynamic shared memory is out of range", value));
  Registry& g = reg();
  std::lock_guard<std::mutex> lk(g.mu);
  g.max_dyn_smem[fn] = value;
  return cudaSuccess;
}

}  // namespace emu
