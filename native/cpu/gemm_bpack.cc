// Packed B: built in parallel, cached on the weight's storage when the caller names one; a row-major f32
// B that is not cached is read in place when the kernels can and M is small (no per-call copy of it). The cache key
// carries the layout (which follows the ISA path and dtype, so a setIsa() change never reuses a pack of
// another format) and the view (the same storage may be used through different shapes); the stored
// pack is checked against the view before use and repacked per call on any mismatch.
#include <mutex>
#include <unordered_set>

#include "gemm_driver.h"
#include "parallel.h"

namespace peft {
namespace gemm_detail {
namespace {

thread_local Scratch t_bcall;

// Cached packs alive now, so gemm_cached_pack() can tell a storage's derived object is one of ours.
// Never destroyed: packs may be released by finalizers while the process exits.
std::mutex& live_mu() {
  static auto* m = new std::mutex();
  return *m;
}
std::unordered_set<const PackedB*>& live() {
  static auto* s = new std::unordered_set<const PackedB*>();
  return *s;
}

void describe(PackedB& pb, const KernelSet& ks, const GemmMat& b, int64_t K, int64_t N, int64_t Kp) {
  pb.layout = ks.b;
  pb.nr = ks.nr;
  pb.K = K, pb.N = N, pb.Kp = Kp;
  pb.panels = ceil_div(N, ks.nr);
  pb.src = b;
  pb.panel_bytes = static_cast<size_t>(Kp) * ks.nr * blayout_size(ks.b);
  pb.pack = ks.pack_b ? ks.pack_b : pack_b_panels;
}

bool same(const PackedB& a, const PackedB& b) {
  return a.layout == b.layout && a.nr == b.nr && a.K == b.K && a.N == b.N && a.Kp == b.Kp && a.src.p == b.src.p &&
         a.src.dt == b.src.dt && a.src.rs == b.src.rs && a.src.cs == b.src.cs;
}

void fill(const PackedB& pb) {
  // Memory-bound; a panel is tens of KiB, so a few panels per chunk spread it well enough.
  parallel_for(pb.panels, 4, [&](int64_t p0, int64_t p1) {
    pb.pack(pb.layout, pb.nr, pb.src, pb.K, pb.N, pb.Kp, p0, p1, const_cast<char*>(pb.panel(p0)));
  });
}

int cache_kind(const PackedB& pb, const void* base) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields that define the packed bytes
  for (uint64_t v : {static_cast<uint64_t>(pb.layout), static_cast<uint64_t>(pb.nr), static_cast<uint64_t>(pb.K),
                     static_cast<uint64_t>(pb.N), static_cast<uint64_t>(pb.src.rs), static_cast<uint64_t>(pb.src.cs),
                     static_cast<uint64_t>(pb.src.dt),
                     static_cast<uint64_t>(static_cast<const char*>(pb.src.p) - static_cast<const char*>(base))})
    h = (h ^ v) * 1099511628211ull;
  int kind = static_cast<int>((h ^ (h >> 32)) & 0x7fffffff);
  return kind ? kind : 1;
}

// B packed into host memory the pack owns (kept with a storage, or handed to every thread of one call).
std::shared_ptr<PackedB> owned_pack(const GemmArgs& g, const KernelSet& ks, int64_t Kp) {
  auto built = std::make_shared<PackedB>();
  describe(*built, ks, g.B, g.K, g.N, Kp);
  built->mem = alloc_host(std::max<size_t>(built->panel_bytes * built->panels, kAlign), false);
  built->data = static_cast<char*>(built->mem->data);
  fill(*built);
  std::lock_guard<std::mutex> lk(live_mu());
  live().insert(built.get());
  return built;
}

// The pack kept with storage s for the view `want` describes (g's B for ks; built on first use and after each
// write), or null where s keeps none (no storage, not host memory, a colliding kind).
std::shared_ptr<const PackedB> kept_pack(Storage* s, const PackedB& want, const GemmArgs& g, const KernelSet& ks, int64_t Kp) {
  if (!s || s->device != Device::CPU) return nullptr;
  auto cached = s->derived<PackedB>(cache_kind(want, s->data), [&]() { return owned_pack(g, ks, Kp); });
  return same(*cached, want) ? cached : nullptr;
}

}  // namespace

std::shared_ptr<const PackedB> packed_rank_b(const GemmArgs& g, const KernelSet& ks, int64_t Kp, int width) {
  KernelSet f32 = ks;  // one f32 panel of `width` columns, whatever the product's own layout
  f32.nr = width, f32.b = BLayout::F32, f32.pack_b = nullptr;
  GemmArgs t;
  t.M = g.M, t.N = g.R, t.K = g.K;
  t.B = g.t_b;
  PackedB want;
  describe(want, f32, t.B, t.K, t.N, Kp);
  if (auto kept = kept_pack(g.t_b_cache, want, t, f32, Kp)) return kept;
  return owned_pack(t, f32, Kp);
}

std::shared_ptr<const PackedB> packed_b(const GemmArgs& g, const KernelSet& ks, int64_t Kp) {
  auto pb = std::make_shared<PackedB>();
  describe(*pb, ks, g.B, g.K, g.N, Kp);
  const size_t bytes = std::max<size_t>(pb->panel_bytes * pb->panels, kAlign);
  if (g.b_src) {
    pb->source = g.b_src;
    return pb;
  }
  if (auto kept = kept_pack(g.b_cache, *pb, g, ks, Kp)) return kept;
  // Reading B in place saves the copy, which only pays while few row groups reuse each panel: every k-step
  // of a row-major B is a new row (a new page once N >= 1024), so each reuse walks K rows through the TLB
  // and L2. Measured on Sapphire Rapids, 2 threads: packed dx = dy·W at (512, 4096, 4096) ran 2.4x the
  // in-place read, (2048, 1024, 1024) 1.5x; at M = 16 the two were level (the copy is as large as the work).
  if (g.M <= 2 * ks.mr && ks.direct_b && ks.b == BLayout::F32 && g.B.dt == DType::F32 && g.B.cs == 1) {
    pb->direct = true;
    if (g.N % ks.nr) {
      pb->data = static_cast<char*>(t_bcall.get(pb->panel_bytes));
      pb->pack(pb->layout, pb->nr, pb->src, pb->K, pb->N, pb->Kp, pb->panels - 1, pb->panels, pb->data);
    }
    return pb;
  }
  pb->data = static_cast<char*>(t_bcall.get(bytes));
  fill(*pb);
  return pb;
}

PackedB::~PackedB() {
  if (!mem) return;
  std::lock_guard<std::mutex> lk(live_mu());
  live().erase(this);
}

}  // namespace gemm_detail

MemRegion gemm_cached_pack(Storage* s) {
  using namespace gemm_detail;
  std::shared_ptr<void> obj;
  {
    std::lock_guard<std::mutex> lk(s->cache_mu);
    obj = s->cached;
  }
  std::lock_guard<std::mutex> lk(live_mu());
  auto* pb = static_cast<const PackedB*>(obj.get());
  if (!obj || !live().count(pb)) return {};
  return {pb->data, pb->panel_bytes * pb->panels};
}

}  // namespace peft
