// The GEMM driver: picks a kernel set for the ISA and dtypes, packs B (once per weight version when the
// caller passes b_cache) and A (per call, per thread), splits the work over the pool and walks the
// blocked loop nest. The arithmetic lives in the micro-kernels (gemm_<isa>.cc).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "elem.h"
#include "gemm.h"
#include "gemm_kernels.h"
#include "isa.h"
#include "parallel.h"

namespace peft {
using namespace gemm_detail;

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// 64-byte aligned buffer that only grows; per thread, so pool workers reuse theirs across calls.
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
};
thread_local Scratch t_apack, t_a2pack, t_b2pack, t_partial, t_bcall, t_bias;

const KernelSet* select_kernels(const GemmArgs& g) {
  const KernelSet* ks = nullptr;
  switch (active_isa()) {
    case Isa::Avx512:
      if (g.A.dt == DType::BF16 && g.B.dt == DType::BF16) {
        if (amx_enabled()) ks = amx_bf16_kernels();
        if (!ks && cpu_features().avx512_bf16) ks = avx512_bf16_kernels();
      }
      if (!ks) ks = avx512_f32_kernels(g.B.dt);
      break;
    case Isa::Avx2: ks = avx2_f32_kernels(g.B.dt); break;
    case Isa::Scalar: break;
  }
  return ks ? ks : scalar_f32_kernels();
}

// B in a kernel set's panel layout; the identity fields say which view of which memory it came from.
struct PackedB {
  BLayout layout;
  int nr;
  int64_t K, N, Kp, panels;
  const void* src;
  DType dt;
  int64_t rs, cs;
  size_t panel_bytes;
  std::unique_ptr<char, decltype(&std::free)> data{nullptr, &std::free};
  char* owned = nullptr;

  const char* panel(int64_t p) const { return owned + p * panel_bytes; }
  bool same_view(const GemmMat& b, int64_t k, int64_t n, BLayout l, int r) const {
    return src == b.p && dt == b.dt && rs == b.rs && cs == b.cs && K == k && N == n && layout == l && nr == r;
  }
};

void describe_pack(PackedB& pb, const KernelSet& ks, const GemmMat& b, int64_t K, int64_t N, int64_t Kp) {
  pb.layout = ks.b;
  pb.nr = ks.nr;
  pb.K = K, pb.N = N, pb.Kp = Kp;
  pb.panels = ceil_div(N, ks.nr);
  pb.src = b.p, pb.dt = b.dt, pb.rs = b.rs, pb.cs = b.cs;
  pb.panel_bytes = static_cast<size_t>(Kp) * ks.nr * blayout_size(ks.b);
}

void fill_pack(const PackedB& pb, const GemmMat& b) {
  // Packing is memory-bound; a panel is tens of KiB, so a few panels per chunk is enough to spread it.
  parallel_for(pb.panels, 4, [&](int64_t p0, int64_t p1) {
    pack_b_panels(pb.layout, pb.nr, b, pb.K, pb.N, pb.Kp, p0, p1, const_cast<char*>(pb.panel(p0)));
  });
}

// The cache key: the layout (so an ISA switch never reuses a pack of another format) and the view.
int cache_kind(const PackedB& pb, const void* base) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  mix(static_cast<uint64_t>(pb.layout)), mix(pb.nr), mix(pb.K), mix(pb.N), mix(pb.rs), mix(pb.cs);
  mix(static_cast<uint64_t>(pb.dt));
  mix(static_cast<uint64_t>(static_cast<const char*>(pb.src) - static_cast<const char*>(base)));
  int kind = static_cast<int>((h ^ (h >> 32)) & 0x7fffffff);
  return kind ? kind : 1;
}

std::shared_ptr<const PackedB> packed_b(const GemmArgs& g, const KernelSet& ks, int64_t Kp) {
  auto build = [&]() {
    auto pb = std::make_shared<PackedB>();
    describe_pack(*pb, ks, g.B, g.K, g.N, Kp);
    pb->owned = static_cast<char*>(std::aligned_alloc(kAlign, std::max<size_t>(pb->panel_bytes * pb->panels, kAlign)));
    if (!pb->owned) throw std::bad_alloc();
    pb->data.reset(pb->owned);
    fill_pack(*pb, g.B);
    return pb;
  };
  if (g.b_cache && g.b_cache->device == Device::CPU) {
    PackedB probe;
    describe_pack(probe, ks, g.B, g.K, g.N, Kp);
    auto pb = g.b_cache->derived<PackedB>(cache_kind(probe, g.b_cache->data), build);
    if (pb->same_view(g.B, g.K, g.N, ks.b, ks.nr)) return pb;
  }
  // Per call: packed into the caller's scratch (valid until this thread's next GEMM).
  auto pb = std::make_shared<PackedB>();
  describe_pack(*pb, ks, g.B, g.K, g.N, Kp);
  pb->owned = static_cast<char*>(t_bcall.get(pb->panel_bytes * pb->panels));
  fill_pack(*pb, g.B);
  return pb;
}

// Blocking knobs; NODE_PEFT_GEMM_BLOCKING="kc,mc" overrides the cache-derived values (for tuning).
struct Overrides {
  int64_t kc = 0, mc = 0;
  Overrides() {
    if (const char* s = std::getenv("NODE_PEFT_GEMM_BLOCKING")) {
      char* end = nullptr;
      kc = std::strtoll(s, &end, 10);
      if (end && *end == ',') mc = std::strtoll(end + 1, nullptr, 10);
    }
  }
};
const Overrides& overrides() {
  static const Overrides o;
  return o;
}

struct Plan {
  const KernelSet* ks;
  int64_t Kp, kc, nblocks;
  int threads, tm, tn;
  int64_t groups, panels;
  size_t asz, csz;
};

// K blocks: one block when a whole-K B micro-panel fits in an eighth of L2 (C is then written once,
// and the kernels stream B from L2 at full speed); otherwise blocks whose B micro-panel takes half of
// L1, at the price of revisiting C once per block. Blocks are made equal in size.
void plan_k(Plan& pl, const CpuFeatures& cf) {
  const KernelSet& ks = *pl.ks;
  int64_t kc = pl.Kp * ks.kc_bytes_per_k <= cf.l2_bytes / 8 ? std::max<int64_t>(pl.Kp, 1) : cf.l1d_bytes / 2 / ks.kc_bytes_per_k;
  if (overrides().kc > 0) kc = overrides().kc;
  kc = std::max<int64_t>(ks.kc_align, kc / ks.kc_align * ks.kc_align);
  pl.nblocks = std::max<int64_t>(1, ceil_div(pl.Kp, kc));
  pl.kc = round_up(ceil_div(pl.Kp, pl.nblocks), ks.kc_align);
}

// Threads and their grid: enough work per thread to pay for waking it; the tm x tn split that gives the
// busiest thread the fewest micro-tiles, ties going to splitting N (each thread then streams only its
// share of B, which is what bounds small M).
void plan_threads(Plan& pl, const GemmArgs& g) {
  double flops = 2.0 * g.M * g.N * (g.K + g.R);
  int t = static_cast<int>(std::min<double>(num_threads(), std::max(1.0, flops / 4e6)));
  pl.threads = 1, pl.tm = 1, pl.tn = 1;
  int64_t best = -1;
  for (int tm = 1; tm <= t; tm++) {
    if (t % tm) continue;
    int tn = t / tm;
    if (tm > pl.groups || tn > pl.panels) continue;
    int64_t cost = ceil_div(pl.groups, tm) * ceil_div(pl.panels, tn);
    if (best < 0 || cost < best || (cost == best && tn > pl.tn)) best = cost, pl.tm = tm, pl.tn = tn;
  }
  pl.threads = pl.tm * pl.tn;
}

// One thread's share: row groups [g0, g1) and panels [p0, p1).
void run_part(const Plan& pl, const GemmArgs& g, const PackedB& pb, const float* biasf, int64_t g0, int64_t g1,
              int64_t p0, int64_t p1, const CpuFeatures& cf) {
  const KernelSet& ks = *pl.ks;
  const int mr = ks.mr, nr = ks.nr;
  const int64_t m_begin = g0 * mr, m_end = std::min(g.M, g1 * mr);
  if (m_begin >= m_end || p0 >= p1) return;
  const size_t bsz = blayout_size(ks.b);
  const int64_t R = g.R;

  // B2 for this thread's panels, as f32 panels of R rows.
  float* b2 = nullptr;
  if (R > 0) {
    b2 = static_cast<float*>(t_b2pack.get(sizeof(float) * R * nr * (p1 - p0)));
    pack_b_panels(BLayout::F32, nr, GemmMat{g.B2.p, g.B2.dt, g.B2.rs, g.B2.cs}, R, g.N, R, p0, p1, b2);
  }

  // Rows per A block: stream order keeps the whole-K A block in L2 and walks each B panel once through
  // all K (C tile stays in L1); block order walks K blocks outermost, A block x KC in L2, and revisits C.
  const int64_t rows_t = m_end - m_begin;
  const int64_t a_row_bytes = pl.Kp * static_cast<int64_t>(pl.asz);
  int64_t mc_stream = std::max<int64_t>(mr, (cf.l2_bytes / 2) / std::max<int64_t>(1, a_row_bytes) / mr * mr);
  bool stream = rows_t <= mc_stream || pl.nblocks == 1;
  int64_t mc = stream ? mc_stream : std::max<int64_t>(mr, (cf.l2_bytes / 2) / (pl.kc * pl.asz) / mr * mr);
  if (overrides().mc > 0) mc = round_up(overrides().mc, mr);
  mc = std::min(mc, round_up(rows_t, mr));

  const bool c_f32 = g.c_dt == DType::F32;
  const bool use_partial = !c_f32 && pl.nblocks > 1;
  const int64_t ncols_t = (p1 - p0) * nr;

  // A rows [ic, ic + mcb) over k-steps [pc, pc + kcb), group gi at gi * mr * kcb elements of ap.
  auto pack_a_block = [&](int64_t ic, int64_t mcb, int64_t pc, int64_t kcb) {
    char* ap = static_cast<char*>(t_apack.get(pl.asz * round_up(mcb, mr) * std::max<int64_t>(kcb, 1)));
    GemmMat a = g.A;
    a.p = static_cast<const char*>(g.A.p) + pc * g.A.cs * static_cast<int64_t>(dtype_size(g.A.dt));
    int64_t k_real = std::clamp<int64_t>(g.K - pc, 0, kcb);
    for (int64_t gi = 0; gi * mr < mcb; gi++) {
      int m = static_cast<int>(std::min<int64_t>(mr, mcb - gi * mr));
      (ks.pack_a ? ks.pack_a : pack_a_group)(ks.a, a, ic + gi * mr, m, ks.pad_groups ? mr : m, k_real, kcb,
                                             ap + pl.asz * gi * mr * kcb);
    }
    return ap;
  };

  for (int64_t ic = m_begin; ic < m_end; ic += mc) {
    const int64_t mcb = std::min(mc, m_end - ic);
    const int64_t ng = ceil_div(mcb, mr);
    float* a2p = R > 0 ? static_cast<float*>(t_a2pack.get(sizeof(float) * mr * ng * R)) : nullptr;
    for (int64_t gi = 0; gi < ng && R > 0; gi++) {
      int m = static_cast<int>(std::min<int64_t>(mr, mcb - gi * mr));
      pack_a_group(ALayout::F32, g.A2, ic + gi * mr, m, ks.pad_groups ? mr : m, R, R, a2p + gi * mr * R);
    }
    float* part = use_partial ? static_cast<float*>(t_partial.get(sizeof(float) * mcb * ncols_t)) : nullptr;

    // ap holds k-steps [a_k0, a_k0 + a_len) of the block (all of K in stream order, one K block otherwise).
    const char* ap = nullptr;
    int64_t a_k0 = 0, a_len = 0;
    auto tile = [&](int64_t blk, int64_t p, int64_t gi) {
      Tile t;
      int m = static_cast<int>(std::min<int64_t>(mr, mcb - gi * mr));
      int ms = ks.pad_groups ? mr : m;
      int64_t pc = blk * pl.kc;
      bool last = blk == pl.nblocks - 1;
      int64_t row = ic + gi * mr, col = p * nr;
      t.kc = std::min(pl.kc, pl.Kp - pc);
      t.a = ap + pl.asz * (gi * mr * a_len + (pc - a_k0) * ms);
      t.b = pb.panel(p) + pc * nr * bsz;
      if (last && R > 0) t.kr = R, t.a2 = a2p + gi * mr * R, t.a2_stride = ms, t.b2 = b2 + (p - p0) * R * nr;
      t.c = static_cast<char*>(g.C) + (row * g.ldc + col) * pl.csz;
      t.ldc = g.ldc;
      t.c_dt = g.c_dt;
      if (use_partial) t.p = part + (row - ic) * ncols_t + (col - p0 * nr), t.ldp = ncols_t;
      else if (c_f32) t.p = static_cast<float*>(t.c), t.ldp = g.ldc;
      t.bias = biasf ? biasf + col : nullptr;
      t.alpha = g.alpha;
      t.m = m;
      t.n = static_cast<int>(std::min<int64_t>(nr, g.N - col));
      t.flags = (blk == 0 ? kFirst : 0) | (last ? kLast : 0) | (g.accumulate ? kAccumulate : 0);
      ks.kernel[m - 1][t.n <= nr / 2 ? 0 : 1](t);
    };
    // While the row groups run over one B micro-panel (from L1), pull the next one towards L2 in
    // equal slices, so its first use does not wait on memory.
    auto prefetch_next = [&](int64_t blk, int64_t p, int64_t gi) {
      if (p + 1 >= p1) return;
      int64_t pc = blk * pl.kc, bytes = std::min(pl.kc, pl.Kp - pc) * nr * static_cast<int64_t>(bsz);
      int64_t slice = round_up(ceil_div(bytes, ng), 64);
      const char* nb = pb.panel(p + 1) + pc * nr * bsz;
      for (int64_t off = gi * slice; off < std::min(bytes, (gi + 1) * slice); off += 64) prefetch_l2(nb + off);
    };
    if (stream) {
      a_k0 = 0, a_len = pl.Kp;
      ap = pack_a_block(ic, mcb, 0, pl.Kp);
      for (int64_t p = p0; p < p1; p++)
        for (int64_t blk = 0; blk < pl.nblocks; blk++)
          for (int64_t gi = 0; gi < ng; gi++) tile(blk, p, gi);
    } else {
      for (int64_t blk = 0; blk < pl.nblocks; blk++) {
        a_k0 = blk * pl.kc, a_len = std::min(pl.kc, pl.Kp - a_k0);
        ap = pack_a_block(ic, mcb, a_k0, a_len);
        for (int64_t p = p0; p < p1; p++)
          for (int64_t gi = 0; gi < ng; gi++) prefetch_next(blk, p, gi), tile(blk, p, gi);
      }
    }
  }
}

}  // namespace

void gemm(const GemmArgs& g) {
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0 && g.R <= 0) return gemm_reference(g);  // nothing to multiply: bias / C only

  const CpuFeatures& cf = cpu_features();
  Plan pl;
  pl.ks = select_kernels(g);
  const KernelSet& ks = *pl.ks;
  pl.Kp = round_up(std::max<int64_t>(g.K, 0), blayout_kalign(ks.b));
  pl.asz = alayout_size(ks.a);
  pl.csz = dtype_size(g.c_dt);
  pl.groups = ceil_div(g.M, ks.mr);
  pl.panels = ceil_div(g.N, ks.nr);
  plan_k(pl, cf);
  plan_threads(pl, g);

  std::shared_ptr<const PackedB> pb = packed_b(g, ks, pl.Kp);

  // Bias once in f32, padded to whole panels (kernels read full vectors).
  float* biasf = nullptr;
  if (g.bias) {
    biasf = static_cast<float*>(t_bias.get(sizeof(float) * pl.panels * ks.nr));
    for (int64_t j = 0; j < pl.panels * ks.nr; j++) biasf[j] = j < g.N ? load_f32(g.bias, g.bias_dt, j) : 0.0f;
  }

  parallel_run(pl.threads, [&](int tid, int) {
    int im = tid / pl.tn, in = tid % pl.tn;
    int64_t g0 = pl.groups * im / pl.tm, g1 = pl.groups * (im + 1) / pl.tm;
    int64_t p0 = pl.panels * in / pl.tn, p1 = pl.panels * (in + 1) / pl.tn;
    if (ks.thread_begin) ks.thread_begin();
    struct End {
      const KernelSet& ks;
      ~End() {
        if (ks.thread_end) ks.thread_end();
      }
    } end{ks};
    run_part(pl, g, *pb, biasf, g0, g1, p0, p1, cf);
  });
}

}  // namespace peft
