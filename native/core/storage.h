// Reference-counted tensor storage. Handles, typed-array views, reshapes, saved activations and async
// work each hold a std::shared_ptr<Storage>; the memory goes when the last holder lets go.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

namespace peft {

enum class Device : int32_t { CPU = 0, CUDA = 1 };
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

// Storage alignment: a full cache line and one AVX-512 register.
constexpr size_t kAlign = 64;

// Live storages and their bytes, process-wide (backend.memory()).
struct StorageStats {
  std::atomic<int64_t> count{0};
  std::atomic<int64_t> bytes{0};
};
inline StorageStats& storage_stats() {
  static StorageStats s;
  return s;
}

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  std::function<void(void*)> release;  // frees `data`; set by the allocator that made it

  // Bumped by every native write path; derived forms (packed weights) remember the version they saw.
  std::atomic<uint64_t> version{0};
  // Count of async operations writing this storage; a sync op touching it throws ERR_TENSOR_BUSY.
  std::atomic<int> busy_writers{0};
  // Times the storage is lent to other threads for reading (native/ops/share.cc: a generation worker decoding
  // over the weights); while lent, an in-place write throws ERR_TENSOR_BUSY instead of racing the reader.
  std::atomic<int> lent{0};
  // Typed arrays JS holds over this memory (view(), bytes()). Writes through them bump no version, so
  // while any is alive no derived form is cached: it could not tell that the data changed.
  std::atomic<int> live_views{0};

  // One derived form cached with the storage (a GEMM-packed weight), valid while version matches.
  std::mutex cache_mu;
  std::shared_ptr<void> cached;
  uint64_t cached_version = 0;
  int cached_kind = 0;

  Storage() { storage_stats().count.fetch_add(1, std::memory_order_relaxed); }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (data && release) release(data);
    storage_stats().count.fetch_sub(1, std::memory_order_relaxed);
    storage_stats().bytes.fetch_sub(static_cast<int64_t>(bytes), std::memory_order_relaxed);
  }

  // Allocators set the size through here, so the process-wide byte count follows.
  void set_size(size_t n) {
    storage_stats().bytes.fetch_add(static_cast<int64_t>(n) - static_cast<int64_t>(bytes), std::memory_order_relaxed);
    bytes = n;
  }

  void bump_version() {
    version.fetch_add(1, std::memory_order_acq_rel);
    drop_derived();
  }

  // Forgets the derived form without a new version (a view is handed out: while it lives nothing is cached,
  // and what was cached before may not survive writes through it).
  void drop_derived() {
    std::lock_guard<std::mutex> lk(cache_mu);
    cached.reset();
  }

  // Returns the cached derived object of `kind` built for the current version, building it if needed.
  // With a live view the object is built afresh every time (and nothing is kept).
  template <typename T>
  std::shared_ptr<T> derived(int kind, const std::function<std::shared_ptr<T>()>& build) {
    std::lock_guard<std::mutex> lk(cache_mu);
    if (live_views.load(std::memory_order_acquire) > 0) {
      cached.reset();
      return build();
    }
    uint64_t v = version.load(std::memory_order_acquire);
    if (cached && cached_kind == kind && cached_version == v) return std::static_pointer_cast<T>(cached);
    std::shared_ptr<T> obj = build();
    cached = obj;
    cached_kind = kind;
    cached_version = v;
    return obj;
  }

  // The cached derived object when it is of `kind` (any version), or null; for benches that evict it.
  template <typename T>
  std::shared_ptr<const T> cached_of(int kind) {
    std::lock_guard<std::mutex> lk(cache_mu);
    return cached && cached_kind == kind ? std::static_pointer_cast<const T>(cached) : nullptr;
  }
};

// Zero-filled, 64-byte aligned host storage. Throws std::bad_alloc when memory runs out. `touch` faults
// the pages in now, in parallel (for a caller about to fill the memory with one thread, e.g. a file read).
std::shared_ptr<Storage> alloc_host(size_t bytes, bool zero = true, bool touch = false);

// How large host blocks are zero-filled (and first touched): a plain memset until a backend installs a
// faster routine (the CPU backend's fills on its thread pool, so the pages fault in on every thread).
using HostZeroFill = void (*)(void* p, size_t bytes);
void set_host_zero_fill(HostZeroFill fill);

}  // namespace peft
