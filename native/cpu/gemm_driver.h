// The GEMM driver's pieces (gemm.cc plans, gemm_bpack.cc packs and caches B, gemm_part.cc runs one
// thread's share of the loop nest). Internal to the CPU backend.
#pragma once
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "gemm_kernels.h"
#include "isa.h"

namespace peft {
namespace gemm_detail {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// 64-byte aligned buffer that only grows; thread-local, so pool workers reuse theirs across calls.
struct Scratch {
  void* p = nullptr;
  size_t cap = 0;
  void* get(size_t bytes) {
    if (bytes > cap) {
      std::free(p);
      cap = static_cast<size_t>(round_up(static_cast<int64_t>(bytes), 1 << 16));
      p = std::aligned_alloc(kAlign, cap);
      if (!p) {
        cap = 0;
        throw std::bad_alloc();
      }
    }
    return p;
  }
  ~Scratch() { std::free(p); }
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// B in a kernel set's panel layout, and which view of which memory it was packed from. Direct: B is
// row-major f32 and the kernels read it in place (rows `src.rs` elements apart); only a partial last
// panel is packed (into `data`), since reading full-width rows there would run past the matrix.
struct PackedB {
  BLayout layout = BLayout::F32;
  int nr = 0;
  int64_t K = 0, N = 0, Kp = 0, panels = 0;
  GemmMat src;
  size_t panel_bytes = 0;
  char* data = nullptr;
  // A cached pack owns its memory: host tensor memory (huge pages, and the allocator's cache of freed
  // blocks, so the repack after each write to a weight reuses the previous pack's pages instead of
  // faulting fresh ones in: that was most of a 4096 x 4096 repack). Otherwise data is caller scratch.
  std::shared_ptr<Storage> mem;
  bool direct = false;
  PackBFn pack = nullptr;
  // Unpacked per block by the thread that runs it (GemmArgs::b_src): nothing is packed up front.
  const GemmBSource* source = nullptr;

  bool packed(int64_t p) const { return !direct || (p == panels - 1 && N % nr); }
  // Panel p's first k-step and the elements from one k-step to the next.
  const char* panel(int64_t p) const {
    if (!direct) return data + p * panel_bytes;
    return packed(p) ? data : static_cast<const char*>(src.p) + p * nr * sizeof(float);
  }
  int64_t ldb(int64_t p) const { return packed(p) ? nr : src.rs; }
  PackedB() = default;
  PackedB(const PackedB&) = delete;
  PackedB& operator=(const PackedB&) = delete;
  ~PackedB();
};

// B packed for `ks`: the cached form when g.b_cache holds one for this view and layout (built on first
// use, dropped by the storage when its version moves), else packed now into the caller's scratch.
std::shared_ptr<const PackedB> packed_b(const GemmArgs& g, const KernelSet& ks, int64_t Kp);

// t_b (K x R, R <= one panel) as one f32 panel `width` columns wide (rank_from_packed_a's products read it):
// the cached form when g.t_b_cache holds one, else packed now into memory of its own (the caller's B may be
// in the shared scratch).
std::shared_ptr<const PackedB> packed_rank_b(const GemmArgs& g, const KernelSet& ks, int64_t Kp, int width);

struct Plan {
  const KernelSet* ks = nullptr;
  int64_t Kp = 0, kc = 0, nblocks = 1;  // K padded, K block size, number of K blocks
  int threads = 1, tm = 1, tn = 1;      // thread grid over row groups x panels
  int64_t groups = 0, panels = 0;       // mr-row groups and nr-column panels of C
  size_t asz = 4, csz = 4;              // packed A and C element sizes
  const float* bias = nullptr;          // f32, padded to whole panels
  const float* col_scale = nullptr;     // f32, padded to whole panels
  // The rank term from x (rank_from_packed_a): t_b packed once for every thread, t_width columns wide.
  std::shared_ptr<const PackedB> t_pack;
  int t_width = 0;
};

// Rows of A a thread packs with all of K at once (stream order: the whole-K block fits half of L2).
inline int64_t stream_rows(const Plan& pl, const CpuFeatures& cf) {
  const int mr = pl.ks->mr;
  return std::max<int64_t>(mr, cf.l2_bytes / 2 / std::max<int64_t>(1, pl.Kp * static_cast<int64_t>(pl.asz)) / mr * mr);
}

// Whether each thread can take A2 = (A·t_b)·diag(t_scale) from the A block it packs (GemmArgs::t_b): every
// part runs in stream order on the f32 kernels, and t_b's R columns fit one panel.
inline bool rank_from_packed_a(const Plan& pl, const GemmArgs& g, const CpuFeatures& cf) {
  const KernelSet& ks = *pl.ks;
  const int64_t part_rows = ceil_div(pl.groups, pl.tm) * ks.mr;
  return ks.a == ALayout::F32 && ks.b == BLayout::F32 && g.R <= ks.nr && (pl.nblocks == 1 || part_rows <= stream_rows(pl, cf));
}

// The rank term's rows t (rows x R, row-major) = A·t_b: handed out unscaled to `out` when set (backward needs
// them), then scaled in place column by column into the A2 the product uses.
inline void rank_rows_out(float* t, int64_t rows, int64_t R, float* out, const float* scale) {
  if (out) std::memcpy(out, t, sizeof(float) * static_cast<size_t>(rows * R));
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < R; j++) t[i * R + j] *= scale[j];
}

// One thread's share: row groups [g0, g1) and panels [p0, p1) of C.
void run_part(const Plan& pl, const GemmArgs& g, const PackedB& pb, int64_t g0, int64_t g1, int64_t p0, int64_t p1);

// NODE_PEFT_GEMM_BLOCKING="kc,mc" overrides the cache-derived block sizes (a tuning aid for benches).
struct BlockingOverride {
  int64_t kc = 0, mc = 0;
};
const BlockingOverride& blocking_override();

}  // namespace gemm_detail
}  // namespace peft
