// The GEMM entry: picks the kernel set for the ISA and dtypes, plans K blocks and the thread grid, packs
// B (or takes the weight's cached pack) and runs each thread's share (gemm_part.cc). The arithmetic
// lives in the micro-kernels (gemm_<isa>.cc).
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "elem.h"
#include "gemm.h"
#include "gemm_driver.h"
#include "isa.h"
#include "parallel.h"

namespace peft {
namespace gemm_detail {

const BlockingOverride& blocking_override() {
  static const BlockingOverride o = [] {
    BlockingOverride b;
    if (const char* s = std::getenv("NODE_PEFT_GEMM_BLOCKING")) {
      char* end = nullptr;
      b.kc = std::strtoll(s, &end, 10);
      if (end && *end == ',') b.mc = std::strtoll(end + 1, nullptr, 10);
    }
    return b;
  }();
  return o;
}

}  // namespace gemm_detail

using namespace gemm_detail;

namespace {

thread_local Scratch t_bias, t_scale, t_ascaled;

// AMX multiplies 16-row A tiles: with a few rows (decoding a token, small batches) most of each tile is
// padding and the tile loads of B stall, so vdpbf16ps, which broadcasts each row, reads the weight faster.
// Measured on Sapphire Rapids, 2 threads, (M, 4096, 4096) bf16: M = 1 took 10.2 ms on AMX and 5.0 ms on
// vdpbf16ps, M = 4 9.1 and 4.2, M = 8 7.5 and 4.9, M = 12 8.2 and 9.0; from M = 16 AMX wins.
constexpr int64_t kAmxMinRows = 8;

const KernelSet* select_kernels(const GemmArgs& g) {
  const KernelSet* ks = nullptr;
  // A B unpacked per block (b_src) arrives in the source's dtype.
  const DType b_dt = g.b_src ? g.b_src->dt : g.B.dt;
  switch (active_isa()) {
#if PEFT_X86
    case Isa::Avx512:
      if (g.A.dt == DType::BF16 && b_dt == DType::BF16) {
        if (amx_enabled() && g.M > kAmxMinRows) ks = amx_bf16_kernels();
        if (!ks && cpu_features().avx512_bf16) ks = avx512_bf16_kernels();
      }
      if (!ks) ks = avx512_f32_kernels(b_dt);
      break;
    case Isa::Avx2: ks = avx2_f32_kernels(b_dt); break;
#endif
    default: break;
  }
  if (!ks) ks = scalar_f32_kernels();
  if (g.b_src && g.b_src->dt == DType::BF16 && ks->b != BLayout::BF16Pairs)
    throw std::logic_error("gemm: a bf16 B source needs the bf16 pair kernels (bf16 A, AVX-512 BF16)");
  return ks;
}

// K blocks: one block when a whole-K B micro-panel fits in an eighth of L2 (C is then written once,
// and the kernels stream B from L2 at full speed); otherwise blocks whose B micro-panel takes a
// sixteenth of L2, at the price of revisiting C once per block. The kernels prefetch the next block, so
// the panel need not stay in L1: on Zen 5 at K = 4096, f32 ran the same with 48-128 KiB panels and 4-5 %
// slower at 24 KiB (twice the C revisits); vdpbf16ps, twice as fast per k-step, gained up to 10 % going
// from 48 to 64-128 KiB. Blocks are made equal in size.
void plan_k(Plan& pl, const CpuFeatures& cf) {
  const KernelSet& ks = *pl.ks;
  int64_t kc = pl.Kp * ks.kc_bytes_per_k <= cf.l2_bytes / 8 ? std::max<int64_t>(pl.Kp, 1) : cf.l2_bytes / 16 / ks.kc_bytes_per_k;
  if (blocking_override().kc > 0) kc = blocking_override().kc;
  kc = std::max<int64_t>(ks.kc_align, kc / ks.kc_align * ks.kc_align);
  pl.nblocks = std::max<int64_t>(1, ceil_div(pl.Kp, kc));
  pl.kc = round_up(ceil_div(pl.Kp, pl.nblocks), ks.kc_align);
}

// Threads and their grid: enough work per thread to pay for waking it, counted as FLOPs (4 MFLOP, ~16 µs
// of FMAs) or as bytes of B streamed (256 KiB, ~16 µs of one core's DRAM read), whichever is more: with few
// rows (decoding a token) a product is a read of the weight, and by FLOPs alone every projection of a
// ~100M-parameter model ran on one thread at M = 1, reading at one core's bandwidth instead of the
// machine's. The tm x tn split that gives the busiest thread the fewest micro-tiles, ties going to
// splitting N (each thread then streams only its share of B, which is what bounds small M).
void plan_threads(Plan& pl, const GemmArgs& g) {
  double flops = 2.0 * g.M * g.N * (g.K + g.R);
  // A B unpacked per block (4-bit) costs like the panels it becomes.
  double bytes = static_cast<double>(g.N) * pl.Kp * static_cast<double>(blayout_size(pl.ks->b));
  double work = std::max(flops / 4e6, bytes / (256.0 * 1024));
  int t = static_cast<int>(std::min<double>(num_threads(), std::max(1.0, work)));
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

// A2 = (A·t_b)·diag(t_scale) as a product of its own first (when the threads cannot take it from their packed A).
void gemm_rank_first(const GemmArgs& g) {
  std::vector<float> t(static_cast<size_t>(g.M * g.R));
  GemmArgs sub;
  sub.M = g.M, sub.N = g.R, sub.K = g.K;
  sub.A = g.A, sub.B = g.t_b;
  sub.C = t.data(), sub.c_dt = DType::F32, sub.ldc = g.R;
  gemm(sub);
  rank_rows_out(t.data(), g.M, g.R, g.t_out, g.t_scale);
  GemmArgs h = g;
  h.t_b = {}, h.t_scale = nullptr, h.t_out = nullptr;
  h.A2 = mat_rows(t.data(), DType::F32, g.R);
  gemm(h);
}

}  // namespace

const char* gemm_kernel_name(DType a, DType b) {
  GemmArgs g;
  g.A.dt = a, g.B.dt = b;
  g.M = kAmxMinRows + 1;  // the set of a product with many rows (few-row products may take another)
  return select_kernels(g)->name;
}

void gemm(const GemmArgs& g) {
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0 && g.R <= 0) return gemm_reference(g);  // nothing to multiply: bias / C only

  const CpuFeatures& cf = cpu_features();
  Plan pl;
  pl.ks = select_kernels(g);
  const KernelSet& ks = *pl.ks;
  if (g.A.ks && ks.a != ALayout::F32) {
    // Only the f32 A packers scale as they go; 16-bit A layouts (bf16 x bf16) take a scaled copy of A.
    GemmArgs h = g;
    float* a = static_cast<float*>(t_ascaled.get(sizeof(float) * std::max<int64_t>(1, g.M * g.K)));
    for (int64_t i = 0; i < g.M; i++)
      for (int64_t k = 0; k < g.K; k++) a[i * g.K + k] = load_f32(g.A.p, g.A.dt, i * g.A.rs + k * g.A.cs) * g.A.ks[k];
    h.A = {a, DType::F32, g.K, 1};
    return gemm(h);
  }
  pl.Kp = round_up(std::max<int64_t>(g.K, 0), blayout_kalign(ks.b));
  pl.asz = alayout_size(ks.a);
  pl.csz = dtype_size(g.c_dt);
  pl.groups = ceil_div(g.M, ks.mr);
  pl.panels = ceil_div(g.N, ks.nr);
  plan_k(pl, cf);
  plan_threads(pl, g);
  if (g.t_b.p && g.R > 0) {
    if (!rank_from_packed_a(pl, g, cf)) return gemm_rank_first(g);
    // t_b packed as wide as the kernel variant reads it (half a panel for R <= nr / 2), once for all threads.
    pl.t_width = g.R <= ks.nr / 2 ? ks.nr / 2 : ks.nr;
    pl.t_pack = packed_rank_b(g, ks, pl.Kp, pl.t_width);
  }

  std::shared_ptr<const PackedB> pb = packed_b(g, ks, pl.Kp);

  // Bias once in f32, padded to whole panels (kernels read full vectors).
  if (g.bias) {
    float* biasf = static_cast<float*>(t_bias.get(sizeof(float) * pl.panels * ks.nr));
    for (int64_t j = 0; j < pl.panels * ks.nr; j++) biasf[j] = j < g.N ? load_f32(g.bias, g.bias_dt, j) : 0.0f;
    pl.bias = biasf;
  }
  if (g.col_scale) {
    float* s = static_cast<float*>(t_scale.get(sizeof(float) * pl.panels * ks.nr));
    for (int64_t j = 0; j < pl.panels * ks.nr; j++) s[j] = j < g.N ? g.col_scale[j] : 0.0f;
    pl.col_scale = s;
  }

  parallel_grid(pl.tm, pl.tn, pl.groups, pl.panels, ks.thread_begin, ks.thread_end,
                [&](int64_t g0, int64_t g1, int64_t p0, int64_t p1) { run_part(pl, g, *pb, g0, g1, p0, p1); });
}

}  // namespace peft
