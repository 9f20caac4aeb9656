// Host memory for tensors. Small blocks: aligned malloc. Large blocks: 2 MiB-aligned mmap marked for
// transparent huge pages (first touch faults once per 2 MiB, not per 4 KiB), and kept in a bounded cache
// when freed, so a training loop that drops and re-creates the same gradient and activation sizes every
// step reuses warm memory instead of faulting fresh pages in (which showed up as most of the demo's time).
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include <atomic>

#include "storage.h"

namespace peft {
namespace {

constexpr size_t kMmapThreshold = size_t(1) << 20;
constexpr size_t kHuge = size_t(2) << 20;
constexpr size_t kCacheLimit = size_t(512) << 20;  // bytes of freed large blocks kept for reuse

class BlockCache {
 public:
  void* take(size_t len) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = free_.find(len);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= len;
    return p;
  }
  void give(void* p, size_t len) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (cached_ + len <= kCacheLimit) {
        free_.emplace(len, p);
        cached_ += len;
        return;
      }
    }
    munmap(p, len);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

// Never destroyed: storages freed during process exit still return their blocks here.
BlockCache& cache() {
  static BlockCache* c = new BlockCache();
  return *c;
}

void* map_huge(size_t len) {
  void* raw = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  uintptr_t start = (reinterpret_cast<uintptr_t>(raw) + kHuge - 1) / kHuge * kHuge;
  size_t head = start - reinterpret_cast<uintptr_t>(raw), tail = kHuge - head;
  if (head) munmap(raw, head);
  if (tail) munmap(reinterpret_cast<void*>(start + len), tail);
  void* p = reinterpret_cast<void*>(start);
#ifdef MADV_HUGEPAGE
  madvise(p, len, MADV_HUGEPAGE);
#endif
  return p;
}

void plain_zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }

// Core knows no thread pool: the CPU backend installs its multi-threaded fill at load.
std::atomic<HostZeroFill> g_zero_fill{plain_zero};

void parallel_zero(void* p, size_t bytes) { g_zero_fill.load(std::memory_order_relaxed)(p, bytes); }

}  // namespace

void set_host_zero_fill(HostZeroFill fill) { g_zero_fill.store(fill ? fill : plain_zero); }

std::shared_ptr<Storage> alloc_host(size_t bytes, bool zero, bool touch) {
  auto st = std::make_shared<Storage>();
  st->set_size(bytes);
  st->device = Device::CPU;
  if (bytes >= kMmapThreshold) {
    const size_t len = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = cache().take(len);
    if (p) {
      if (zero) parallel_zero(p, bytes);  // a fresh mapping is zero already; a reused one is not
    } else {
      p = map_huge(len);
      if (touch) parallel_zero(p, bytes);  // first-touch faults on every pool thread at once
    }
    st->data = p;
    st->release = [len](void* q) { cache().give(q, len); };
    return st;
  }
  size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  if (rounded == 0) rounded = kAlign;  // a valid pointer even for empty tensors
  void* p = std::aligned_alloc(kAlign, rounded);
  if (!p) throw std::bad_alloc();
  if (zero) std::memset(p, 0, rounded);
  st->data = p;
  st->release = [](void* q) { std::free(q); };
  return st;
}

}  // namespace peft
