// One thread's share of the GEMM loop nest: rows of C in A blocks, columns in B panels, K in blocks.
//
// Two orders. Stream order (small M, or a single K block): the A block holds all of K and fits L2, each
// B panel is walked once through all K blocks while its C tile stays in L1, so B is read exactly once
// and C written once. Block order (large M with K split): K blocks outermost, the A block x KC sits in
// L2 and every B micro-panel block is read from memory once (prefetched a block ahead) and reused by all
// row groups; C tiles are revisited once per K block (the kernels prefetch them).
#include <algorithm>

#include "gemm_driver.h"

namespace peft {
namespace gemm_detail {
namespace {

thread_local Scratch t_apack, t_a2pack, t_b2pack, t_partial, t_widen, t_unpack, t_trows;

// In stream order with more row groups than this, B comes from L3 for all but the first group and the
// hardware prefetcher keeps up: prefetching the next block as well cost about 3 % (M = 2048, K = 1024).
constexpr int64_t kStreamGroups = 4;

// Row groups of an A block: mr rows each for sets that pad groups to mr; otherwise as equal as possible
// (16 rows run as 8 + 8 rather than 14 + 2, whose 2-row kernel is bound by FMA latency).
struct Groups {
  int64_t n = 0, base = 0, extra = 0;
  int mr = 0;
  bool fixed = false;
  Groups(int64_t rows, int mr_, bool fixed_) : n(ceil_div(rows, mr_)), mr(mr_), fixed(fixed_) {
    base = rows / n, extra = rows % n;
    if (fixed) base = mr, extra = rows - (n - 1) * mr;  // last group holds `extra` rows
  }
  int64_t start(int64_t gi) const { return fixed ? gi * mr : gi * base + std::min(gi, extra); }
  int rows(int64_t gi) const {
    if (fixed) return static_cast<int>(gi == n - 1 ? extra : mr);
    return static_cast<int>(base + (gi < extra ? 1 : 0));
  }
  int stride(int64_t gi) const { return fixed ? mr : rows(gi); }  // packed row stride of group gi
};

class Part {
 public:
  Part(const Plan& pl, const GemmArgs& g, const PackedB& pb, int64_t g0, int64_t g1, int64_t p0, int64_t p1)
      : pl_(pl), g_(g), pb_(pb), ks_(*pl.ks), p0_(p0), p1_(p1) {
    m_begin_ = g0 * ks_.mr, m_end_ = std::min(g.M, g1 * ks_.mr);
    bsz_ = blayout_size(ks_.b);
    use_partial_ = g.c_dt != DType::F32 && pl.nblocks > 1;
    ncols_ = (p1 - p0) * ks_.nr;
  }

  void run() {
    if (m_begin_ >= m_end_ || p0_ >= p1_) return;
    const CpuFeatures& cf = cpu_features();
    const int mr = ks_.mr;
    const int64_t rows = m_end_ - m_begin_;
    // Rows per A block: in stream order the whole-K block fits half of L2; in block order one K block of
    // it does.
    int64_t mc_stream = stream_rows(pl_, cf);
    stream_ = rows <= mc_stream || pl_.nblocks == 1;
    int64_t mc = stream_ ? mc_stream : std::max<int64_t>(mr, cf.l2_bytes / 2 / (pl_.kc * pl_.asz) / mr * mr);
    if (blocking_override().mc > 0) mc = round_up(blocking_override().mc, mr);
    mc = round_up(ceil_div(rows, ceil_div(rows, mc)), mr);  // equal blocks: no short last one re-reading B
    if (g_.R > 0) pack_b2();
    for (int64_t ic = m_begin_; ic < m_end_; ic += mc) run_block(ic, std::min(mc, m_end_ - ic));
  }

 private:
  // B2 for this thread's panels, as f32 panels of R rows.
  void pack_b2() {
    b2_ = static_cast<float*>(t_b2pack.get(sizeof(float) * g_.R * ks_.nr * (p1_ - p0_)));
    pack_b_panels(BLayout::F32, ks_.nr, g_.B2, g_.R, g_.N, g_.R, p0_, p1_, b2_);
  }

  // A rows of the current block over k-steps [pc, pc + kcb), group gi at start(gi) * kcb elements.
  void pack_a(int64_t pc, int64_t kcb) {
    const Groups& gr = *groups_;
    ap_ = static_cast<char*>(t_apack.get(pl_.asz * gr.n * ks_.mr * std::max<int64_t>(kcb, 1)));
    a_k0_ = pc, a_len_ = kcb;
    GemmMat a = g_.A;
    a.p = static_cast<const char*>(g_.A.p) + pc * g_.A.cs * static_cast<int64_t>(dtype_size(g_.A.dt));
    if (a.ks) a.ks += pc;
    int64_t k_real = std::clamp<int64_t>(g_.K - pc, 0, kcb);
    PackAFn pack = ks_.pack_a ? ks_.pack_a : pack_a_group;
    for (int64_t gi = 0; gi < gr.n; gi++)
      pack(ks_.a, a, ic_ + gr.start(gi), gr.rows(gi), gr.stride(gi), k_real, kcb, ap_ + pl_.asz * gr.start(gi) * kcb);
  }

  void run_block(int64_t ic, int64_t mcb) {
    Groups gr(mcb, ks_.mr, ks_.pad_groups);
    groups_ = &gr;
    ic_ = ic;
    // In stream order the whole-K A block is packed first, so the rank term from x can use it.
    if (stream_) pack_a(0, pl_.Kp);
    if (g_.R > 0) {
      a2p_ = static_cast<float*>(t_a2pack.get(sizeof(float) * gr.n * ks_.mr * g_.R));
      GemmMat a2 = g_.A2;
      int64_t a2_row0 = ic;
      if (g_.t_b.p) a2 = rank_from_x(ic, mcb), a2_row0 = 0;  // stream order here (gemm() checked)
      for (int64_t gi = 0; gi < gr.n; gi++)
        pack_a_group(ALayout::F32, a2, a2_row0 + gr.start(gi), gr.rows(gi), gr.stride(gi), g_.R, g_.R, a2p_ + gr.start(gi) * g_.R);
    }
    if (use_partial_) part_ = static_cast<float*>(t_partial.get(sizeof(float) * mcb * ncols_));
    if (stream_) {
      for (int64_t p = p0_; p < p1_; p++)
        for (int64_t blk = 0; blk < pl_.nblocks; blk++) panel_block(blk, p);
    } else {
      for (int64_t blk = 0; blk < pl_.nblocks; blk++) {
        pack_a(blk * pl_.kc, std::min(pl_.kc, pl_.Kp - blk * pl_.kc));
        for (int64_t p = p0_; p < p1_; p++) panel_block(blk, p);
      }
    }
  }

  // Rows [ic, ic + mcb) of A·t_b (into t_out when set, by the thread holding the first panels), scaled by
  // t_scale: the A2 these rows use, row-major (mcb x R), from the packed whole-K A block (gemm() checked that
  // every part has one: rank_from_packed_a), one micro-kernel call per row group over an R-column panel of t_b.
  GemmMat rank_from_x(int64_t ic, int64_t mcb) {
    const int64_t R = g_.R;
    float* t = static_cast<float*>(t_trows.get(sizeof(float) * mcb * R));
    const int w = pl_.t_width;
    const float* tb = reinterpret_cast<const float*>(pl_.t_pack->panel(0));
    const Groups& gr = *groups_;
    for (int64_t gi = 0; gi < gr.n; gi++) {
      Tile k;
      k.kc = pl_.Kp;
      k.a = ap_ + pl_.asz * gr.start(gi) * pl_.Kp;
      k.b = tb, k.ldb = w;
      k.c = t + gr.start(gi) * R, k.ldc = R, k.c_dt = DType::F32;
      k.p = static_cast<float*>(k.c), k.ldp = R;
      k.m = gr.rows(gi), k.n = static_cast<int>(R);
      k.flags = kFirst | kLast;
      k.pf = static_cast<const char*>(k.b);
      ks_.kernel[k.m - 1][w < ks_.nr ? 0 : 1](k);
    }
    rank_rows_out(t, mcb, R, g_.t_out && p0_ == 0 ? g_.t_out + ic * R : nullptr, g_.t_scale);
    return mat_rows(t, DType::F32, R);
  }

  // One B micro-panel block under every row group. A 16-bit B the set widens to f32 is widened first:
  // by a pass over the block when many groups share it, or by the first group's kernel on its way when
  // few do (M = 16, bf16 weights: the pass took a fifth of the time; fused, 18 % more GFLOP/s).
  // Meanwhile the kernels pull the next B block towards L2, each row group an equal slice spread over
  // its k-steps, so memory streams while every group computes and no first use waits on it. (A burst of
  // prefetches per kernel call stalled on the miss queue; prefetching from one group only left DRAM idle
  // while the others ran, M = 16 then went at half the roofline.)
  void panel_block(int64_t blk, int64_t p) {
    const int nr = ks_.nr;
    const int64_t pc = blk * pl_.kc, kcb = std::min(pl_.kc, pl_.Kp - pc);
    if (pb_.source) {
      // Unpacked here, once for every row group of this A block; the source prefetches its own bytes.
      void* w = t_unpack.get(blayout_size(ks_.b) * std::max<int64_t>(kcb, 1) * nr);
      pb_.source->unpack(*pb_.source, pc, kcb, p * nr, nr, w);
      for (int64_t gi = 0; gi < groups_->n; gi++) tile(blk, p, gi, w, nr, {}, nullptr);
      return;
    }
    const int64_t ldb = pb_.ldb(p);
    const char* raw = pb_.panel(p) + pc * ldb * bsz_;
    const void* bp = raw;
    const Groups& gr = *groups_;
    float* widened = nullptr;  // set when the first group's kernel widens B on its way
    if (ks_.widen_b) {
      float* w = static_cast<float*>(t_widen.get(sizeof(float) * pl_.kc * nr));
      if (gr.n <= kStreamGroups && gr.rows(0) <= ks_.widen_rows) widened = w;
      else ks_.widen_b(raw, kcb, w);
      bp = w;
    }
    // The next B block this thread reads: the same K block of the next panel in block order, the next
    // K block (or the next panel's first) in stream order. Packed, it is contiguous and each group takes
    // an equal slice; read in place, it is rows a stride apart (too far for the hardware prefetcher) and
    // the first group walks all of it.
    int64_t np = p, nblk = blk;
    if (!stream_) np = p + 1;
    else if (++nblk == pl_.nblocks) nblk = 0, np = p + 1;
    const int64_t nldb = np < p1_ ? pb_.ldb(np) : nr;
    const bool contiguous = nldb == nr;
    const bool prefetch = np < p1_ && (!stream_ || gr.n <= kStreamGroups || !contiguous);
    const char* next = prefetch ? pb_.panel(np) + nblk * pl_.kc * nldb * bsz_ : nullptr;
    const int64_t nkc = prefetch ? std::min(pl_.kc, pl_.Kp - nblk * pl_.kc) : 0;
    const int64_t slice = round_up(ceil_div(nkc * nr * static_cast<int64_t>(bsz_), gr.n), 64);
    for (int64_t gi = 0; gi < gr.n; gi++) {
      Prefetch pf;
      if (prefetch && contiguous) pf = {next + gi * slice, slice / std::max<int64_t>(1, kcb)};
      else if (prefetch && gi == 0) pf = {next, nldb * static_cast<int64_t>(bsz_) * nkc / std::max<int64_t>(1, kcb)};
      if (widened && gi == 0) tile(blk, p, gi, raw, nr, pf, widened);
      else tile(blk, p, gi, bp, ks_.widen_b ? nr : ldb, pf, nullptr);
    }
  }

  // What a kernel pulls towards L2 as it goes: `step` bytes further along per k-step (none: step 0).
  struct Prefetch {
    const char* at = nullptr;
    int64_t step = 0;
  };

  void tile(int64_t blk, int64_t p, int64_t gi, const void* bpanel, int64_t ldb, Prefetch pf, float* widen_to) {
    const Groups& gr = *groups_;
    const int nr = ks_.nr;
    Tile t;
    int m = gr.rows(gi), ms = gr.stride(gi);
    int64_t pc = blk * pl_.kc, row = ic_ + gr.start(gi), col = p * nr;
    bool last = blk == pl_.nblocks - 1;
    t.kc = std::min(pl_.kc, pl_.Kp - pc);
    t.a = ap_ + pl_.asz * (gr.start(gi) * a_len_ + (pc - a_k0_) * ms);
    t.b = bpanel;
    t.ldb = ldb;
    if (last && g_.R > 0) {
      t.kr = g_.R, t.a2 = a2p_ + gr.start(gi) * g_.R, t.a2_stride = ms;
      t.b2 = b2_ + (p - p0_) * g_.R * nr;
    }
    t.c = static_cast<char*>(g_.C) + (row * g_.ldc + col) * pl_.csz;
    t.ldc = g_.ldc;
    t.c_dt = g_.c_dt;
    if (use_partial_) t.p = part_ + (row - ic_) * ncols_ + (col - p0_ * nr), t.ldp = ncols_;
    else if (g_.c_dt == DType::F32) t.p = static_cast<float*>(t.c), t.ldp = g_.ldc;
    t.bias = pl_.bias ? pl_.bias + col : nullptr;
    t.col_scale = pl_.col_scale ? pl_.col_scale + col : nullptr;
    t.alpha = g_.alpha;
    t.m = m;
    t.n = static_cast<int>(std::min<int64_t>(nr, g_.N - col));
    t.flags = (blk == 0 ? kFirst : 0) | (last ? kLast : 0) | (g_.accumulate ? kAccumulate : 0);
    t.pf = pf.at ? pf.at : static_cast<const char*>(bpanel);  // no stream: lines already in L1
    t.pf_step = pf.step;
    t.widen_to = widen_to;
    (widen_to ? ks_.widen_kernel : ks_.kernel)[m - 1][t.n <= nr / 2 ? 0 : 1](t);
  }

  const Plan& pl_;
  const GemmArgs& g_;
  const PackedB& pb_;
  const KernelSet& ks_;
  int64_t p0_, p1_, m_begin_ = 0, m_end_ = 0, ncols_ = 0;
  size_t bsz_ = 4;
  bool use_partial_ = false, stream_ = false;
  float* b2_ = nullptr;
  // The current A block.
  const Groups* groups_ = nullptr;
  int64_t ic_ = 0, a_k0_ = 0, a_len_ = 0;
  char* ap_ = nullptr;
  float* a2p_ = nullptr;
  float* part_ = nullptr;
};

}  // namespace

void run_part(const Plan& pl, const GemmArgs& g, const PackedB& pb, int64_t g0, int64_t g1, int64_t p0, int64_t p1) {
  Part(pl, g, pb, g0, g1, p0, p1).run();
}

}  // namespace gemm_detail
}  // namespace peft
