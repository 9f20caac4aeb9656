// The int8 linear driver: picks the kernel set, keeps CB packed per weight version, quantises x into its
// packed rows (one pass over x: per row the absmax and the outlier elements, then the int8 values), runs the
// blocks over the pool, and adds the outlier columns in floating point as a rank term in the epilogue.
//
// Order of rounding, as bitsandbytes (MatMul8bitLt with int8_vectorwise_quant, int8_scaled_mm,
// int8_mixed_scaled_mm):
//  - x is rounded to f16 for quantisation (A.to(torch.float16)); outliers are found on those values;
//  - the row absmax leaves out outlier elements (|x| >= threshold), not whole columns;
//  - x_q = round-half-even(x16 · f32(127 / absmax)); every outlier column is 0 in x_q;
//  - y = f32(acc) · f32(SCx · SCB) · 6.200124e-05f + bias, rounded once into x's dtype;
//  - then y += x[:, cols] · Wdq[:, cols]ᵀ (addmm: x in its own dtype, Wdq = f32(CB)·SCB·(1/127) rounded
//    to x's dtype, the sum rounded once more into y's dtype).
// A row of x that is all zero (or all outliers) has SCx 0 and gives bias alone from the int8 part.
#include "int8.h"

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>

#include "elem.h"
#include "gemm.h"
#include "gemm_driver.h"
#include "int8_kernels.h"
#include "isa.h"
#include "parallel.h"

namespace peft {

using namespace int8_detail;
using gemm_detail::ceil_div;
using gemm_detail::round_up;

namespace {

// The derived-object kind of a packed CB on its storage (the GEMM's own packs use other kinds).
constexpr int kPackKind = 0x18b7e001;
constexpr float kInv127 = 7.874015718698502e-3f;  // bitsandbytes' int8_vectorwise_dequant constant

struct Int8Pack {
  std::shared_ptr<Storage> mem;
  const int8_t* data = nullptr;
  const int32_t* corr = nullptr;  // 128 · Σ_k CB[n][k], padded to whole panels
  const int8_t* src = nullptr;
  int64_t N = 0, K = 0, Kp = 0, panels = 0;
};

std::shared_ptr<Int8Pack> build_pack(const Int8Weight& w) {
  auto p = std::make_shared<Int8Pack>();
  p->N = w.N, p->K = w.K, p->src = w.cb;
  p->Kp = round_up(std::max<int64_t>(w.K, 1), kKAlign);
  p->panels = round_up(ceil_div(w.N, kPanel), 2);
  const size_t bytes = static_cast<size_t>(p->panels) * p->Kp * kPanel, corr_bytes = sizeof(int32_t) * p->panels * kPanel;
  p->mem = alloc_host(bytes + corr_bytes, false);
  int8_t* d = static_cast<int8_t*>(p->mem->data);
  int32_t* corr = reinterpret_cast<int32_t*>(d + bytes);
  p->data = d, p->corr = corr;
  const int64_t K = w.K, Kp = p->Kp, N = w.N;
  parallel_for(p->panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t pn = p0; pn < p1; pn++) {
      int8_t* panel = d + pn * Kp * kPanel;
      std::fill(panel, panel + Kp * kPanel, int8_t(0));
      for (int j = 0; j < kPanel; j++) {
        int64_t n = pn * kPanel + j;
        int32_t s = 0;
        if (n < N) {
          const int8_t* row = w.cb + n * K;
          for (int64_t k = 0; k < K; k++) panel[(k >> 2) * 64 + j * 4 + (k & 3)] = row[k], s += row[k];
        }
        corr[n] = 128 * s;
      }
    }
  });
  return p;
}

std::shared_ptr<const Int8Pack> packed(const Int8Weight& w) {
  if (!w.cache || w.cache->device != Device::CPU) return build_pack(w);
  auto p = w.cache->derived<Int8Pack>(kPackKind, [&] { return build_pack(w); });
  if (p->src == w.cb && p->N == w.N && p->K == w.K) return p;
  return build_pack(w);  // the same storage seen through another shape: pack for this call only
}

// M: rows of x; AMX tiles take 32 rows a block, so fewer rows (a decode step) go to vpdpbusd, which wastes
// none and is bound by reading CB anyway; 13..16 rows take the 16 x 16 VNNI blocks (one group: CB read
// once). M < 0: the set for large M (what int8_kernel_name reports).
const KernelSet& select_kernels(int64_t M = -1) {
  const KernelSet* ks = nullptr;
  switch (active_isa()) {
#if PEFT_X86
    case Isa::Avx512:
      if (amx_enabled() && cpu_features().amx_int8 && (M < 0 || M >= 32)) ks = amx_int8_kernels();
      if (!ks && M > 12 && M <= 16) ks = vnni16_int8_kernels();
      if (!ks) ks = vnni_int8_kernels();
      if (!ks) ks = avx2_int8_kernels();
      break;
    case Isa::Avx2: ks = avx2_int8_kernels(); break;
#endif
    default: break;
  }
  return ks ? *ks : *scalar_int8_kernels();
}

thread_local gemm_detail::Scratch t_xq, t_xi, t_scx, t_cols, t_rank, t_outl_u, t_outl_b, t_down;

// A rank term's bt in panels of kRankPanel columns, [N / kRankPanel][R][kRankPanel] with bt[r][j] = value(r, j)
// and zeros past N: the epilogue reads each panel's R rows contiguously (rows of a plain (R, N) bt lie N floats
// apart, which at N = 4096 maps all of them onto one L1 set).
template <typename Value>
const float* pack_panels(gemm_detail::Scratch& buf, int64_t R, int64_t N, Value value) {
  const int64_t panels = ceil_div(N, kRankPanel);
  float* p = static_cast<float*>(buf.get(sizeof(float) * std::max<int64_t>(1, panels * R * kRankPanel)));
  parallel_for(panels, 16, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; q++)
      for (int64_t r = 0; r < R; r++)
        for (int c = 0; c < kRankPanel; c++) {
          const int64_t j = q * kRankPanel + c;
          p[(q * R + r) * kRankPanel + c] = j < N ? value(r, j) : 0.0f;
        }
  });
  return p;
}

// The outlier columns as a rank term: u = x[:, cols] and bt = the dequantised weight's columns, both in x's
// dtype as bitsandbytes multiplies them (its f32 dequantisation CB·SCB·(1/127), rounded to x's dtype). The
// weight's columns are read from the pack, whose panels are the rank term's panels: column k of a panel's
// 16 rows is one line there (CB[:, k] would touch a line and a page per row). The pack is mostly in DRAM
// and these reads have no order a prefetcher follows: a panel's lines are requested ahead (the next
// panel's while this one is converted), so their misses overlap.
RankTerm outlier_term(const Int8LinearArgs& a, const Int8Pack& pk, const std::vector<int64_t>& cols) {
  static_assert(kPanel == kRankPanel, "a pack panel is a rank-term panel");
  const int64_t M = a.M, N = a.w.N, K = a.w.K, R = static_cast<int64_t>(cols.size());
  const DType dt = a.x_dt;
  float* u = static_cast<float*>(t_outl_u.get(sizeof(float) * std::max<int64_t>(1, M * R)));
  parallel_for(M, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t m = r0; m < r1; m++)
      for (int64_t j = 0; j < R; j++) u[m * R + j] = load_f32(a.x, dt, m * K + cols[j]);
  });
  const int64_t panels = ceil_div(N, kRankPanel);
  float* bt = static_cast<float*>(t_outl_b.get(sizeof(float) * std::max<int64_t>(1, panels * R * kRankPanel)));
  auto line = [&](int64_t q, int64_t r) { return pk.data + q * pk.Kp * kPanel + (cols[r] >> 2) * 64 + (cols[r] & 3); };
  parallel_for(panels, 16, [&](int64_t q0, int64_t q1) {
    for (int64_t r = 0; r < R; r++) __builtin_prefetch(line(q0, r));
    for (int64_t q = q0; q < q1; q++) {
      if (q + 1 < q1)
        for (int64_t r = 0; r < R; r++) __builtin_prefetch(line(q + 1, r));
      const int cn = static_cast<int>(std::min<int64_t>(kRankPanel, N - q * kRankPanel));
      const float* scb = a.w.scb + q * kRankPanel;
      for (int64_t r = 0; r < R; r++) {
        const int8_t* cb = line(q, r);
        float* dst = bt + (q * R + r) * kRankPanel;
        for (int c = 0; c < kRankPanel; c++) dst[c] = c < cn ? round_through(static_cast<float>(cb[c * 4]) * scb[c] * kInv127, dt) : 0.0f;
      }
    }
  });
  return {u, bt, R};
}

// LoRA's A (R, K) in the down kernels' layout: chunks of kDownK columns, each chunk's R rows together.
const float* pack_down(const float* a, int64_t R, int64_t K) {
  const int64_t chunks = ceil_div(K, kDownK);
  float* p = static_cast<float*>(t_down.get(sizeof(float) * std::max<int64_t>(1, chunks * R * kDownK)));
  parallel_for(chunks * R, 8, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; q++) {
      const int64_t c = q / R, r = q % R, k0 = c * kDownK, kn = std::min(kDownK, K - k0);
      std::copy(a + r * K + k0, a + r * K + k0 + kn, p + q * kDownK);
      std::fill(p + q * kDownK + kn, p + (q + 1) * kDownK, 0.0f);
    }
  });
  return p;
}

// Each group of mr rows (row stride Kp) rewritten quad-interleaved: quad q of row i at (q * mr + i) * 4.
uint8_t* interleave_groups(const uint8_t* xq, int64_t groups, int mr, int64_t Kp) {
  uint8_t* xi = static_cast<uint8_t*>(t_xi.get(static_cast<size_t>(groups * mr * Kp)));
  parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; g++) {
      const uint8_t* src = xq + g * mr * Kp;
      uint32_t* dst = reinterpret_cast<uint32_t*>(xi + g * mr * Kp);
      // Quad by quad (the mr source rows read side by side, the destination written in order): row by row
      // would store every 4 bytes to another line, Kp / 16 lines per row, more than L1 holds at large K.
      for (int64_t q = 0; q < Kp / 4; q++)
        for (int i = 0; i < mr; i++) std::memcpy(dst + q * mr + i, src + i * Kp + q * 4, 4);
    }
  });
  return xi;
}

}  // namespace

const char* int8_kernel_name() { return select_kernels().name; }

void int8_linear_cpu(const Int8LinearArgs& a) {
  const int64_t M = a.M, N = a.w.N, K = a.w.K;
  if (M <= 0 || N <= 0) return;
  const KernelSet& ks = select_kernels(M);
  std::shared_ptr<const Int8Pack> pk = packed(a.w);
  const int64_t Kp = pk->Kp;

  // x quantised straight into the kernels' row layout (rows padded to whole groups, which for AMX are the
  // 32 rows of its tiles; zeros past K). Kernels read no row past their group. With a threshold the same
  // pass marks the outlier columns (the columns holding any outlier element).
  const int64_t Mp = round_up(M, ks.mr);
  // Row-major x_q rows lie ldx apart, one line more than Kp: at Kp = 4096 all 16 rows of an AMX A tile sat on
  // one L1 set (12 ways for the 32 lines of a k chunk's two tiles), and every tile load missed.
  const int64_t ldx = ks.a_quads ? Kp : Kp + 64;
  uint8_t* xq = static_cast<uint8_t*>(t_xq.get(static_cast<size_t>(Mp * ldx)));
  float* scx = static_cast<float*>(t_scx.get(sizeof(float) * M));
  const int offset = ks.a_offset ? 128 : 0;
  QuantRowFn quant = quant_row_kernel();
  const size_t esz = dtype_size(a.x_dt);
  const bool find = a.threshold > 0.0f;
  std::vector<uint8_t> mask(find ? K : 0, 0);
  std::mutex mu;
  DownRowsFn down = a.down ? down_rows_kernel() : nullptr;
  const float* down_a = down ? pack_down(a.down, a.r, K) : nullptr;
  if (a.down && !down) {  // no kernel on this path: u = scale·x·downᵀ by the f32 GEMM
    GemmArgs g;
    g.M = M, g.N = a.r, g.K = K;
    g.A = mat_rows(a.x, DType::F32, K);
    g.B = mat_cols(a.down, DType::F32, K);
    g.C = a.u_out, g.c_dt = DType::F32, g.ldc = a.r, g.alpha = a.down_scale;
    gemm(g);
  }
  constexpr int64_t kDownRows = 4;  // rows of x quantised, then projected while still in L1/L2
  parallel_for(Mp, std::max<int64_t>(1, 16384 / Kp), [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> seen(find ? K : 0, 0);
    int64_t pending = r0;  // first row not yet projected by `down`
    for (int64_t r = r0; r < r1; r++) {
      uint8_t* row = xq + r * ldx;
      if (r >= M) {
        std::fill(row, row + Kp, uint8_t(offset));
        continue;
      }
      scx[r] = quant(static_cast<const char*>(a.x) + r * K * esz, a.x_dt, K, a.threshold, offset, row, find ? seen.data() : nullptr);
      std::fill(row + K, row + Kp, uint8_t(offset));  // times zero weights: any value works; kept exact
      if (down && (r + 1 - pending == kDownRows || r + 1 == std::min(r1, M))) {
        down(static_cast<const float*>(a.x) + pending * K, r + 1 - pending, K, down_a, a.r, a.down_scale, a.u_out + pending * a.r);
        pending = r + 1;
      }
    }
    if (!find || std::find(seen.begin(), seen.end(), uint8_t(1)) == seen.end()) return;
    std::lock_guard<std::mutex> lk(mu);
    for (int64_t k = 0; k < K; k++) mask[k] |= seen[k];
  });
  std::vector<int64_t> cols;
  for (int64_t k = 0; k < static_cast<int64_t>(mask.size()); k++)
    if (mask[k]) cols.push_back(k);
  // The outlier columns are 0 in x_q, in every row (the quantiser zeroed only the outlier elements; the
  // absmax already left out exactly those). bitsandbytes zeroes them only when x has more than one row;
  // with one row every element of such a column is itself an outlier, so this changes nothing there.
  if (!cols.empty())
    for (int64_t r = 0; r < M; r++)
      for (int64_t k : cols) xq[r * ldx + k] = static_cast<uint8_t>(offset);

  if (ks.a_quads) xq = interleave_groups(xq, ceil_div(M, ks.mr), ks.mr, Kp);

  // Columns padded to whole kernel blocks: SCB, bias (f32).
  const int64_t Np = pk->panels * kPanel;
  float* colbuf = static_cast<float*>(t_cols.get(sizeof(float) * Np * 2));
  float* scb = colbuf;
  float* bias = a.bias ? colbuf + Np : nullptr;
  for (int64_t n = 0; n < Np; n++) {
    scb[n] = n < N ? a.w.scb[n] : 0.0f;
    if (bias) bias[n] = n < N ? load_f32(a.bias, a.bias_dt, n) : 0.0f;
  }
  Finish fin;
  fin.corr = ks.a_offset ? pk->corr : nullptr;
  fin.scx = scx, fin.scb = scb, fin.bias = bias;
  fin.y = a.y, fin.y_dt = a.y_dt, fin.ldy = N, fin.raw = a.raw;
  if (!cols.empty() && !a.raw) fin.outliers = outlier_term(a, *pk, cols);
  const float* u = a.down ? a.u_out : a.u;
  if (u && a.r > 0) fin.lora = {u, pack_panels(t_rank, a.r, N, [&](int64_t r, int64_t n) { return a.bt[r * N + n]; }), a.r};

  // Thread grid: split N (each thread streams its share of CB once) unless there are too few blocks.
  const int64_t groups = ceil_div(M, ks.mr), blocks = ceil_div(N, ks.nr);
  double ops = 2.0 * M * N * K;
  int threads = static_cast<int>(std::min<double>(num_threads(), std::max(1.0, ops / 4e6)));
  int tn = static_cast<int>(std::min<int64_t>(threads, blocks)), tm = std::max(1, threads / std::max(tn, 1));
  tm = static_cast<int>(std::min<int64_t>(tm, groups));
  // Columns per L2-resident chunk of CB (half of L2 for the panels, the x rows stream past them).
  const int64_t chunk = std::max<int64_t>(1, cpu_features().l2_bytes / 2 / (Kp * ks.nr));
  parallel_grid(tm, tn, groups, blocks, ks.thread_begin, ks.thread_end, [&](int64_t g0, int64_t g1, int64_t b0, int64_t b1) {
    for (int64_t c0 = b0; c0 < b1; c0 += chunk) {
      int64_t c1 = std::min(b1, c0 + chunk);
      for (int64_t gi = g0; gi < g1; gi++) {
        Tile t;
        t.a = xq + gi * ks.mr * ldx;
        t.lda = ldx;
        t.Kp = Kp;
        t.m = static_cast<int>(std::min<int64_t>(ks.mr, M - gi * ks.mr));
        for (int64_t bj = c0; bj < c1; bj++) {
          int64_t j0 = bj * ks.nr;
          t.b = pk->data + (j0 / kPanel) * Kp * kPanel;
          ks.block(t, fin, gi * ks.mr, j0, static_cast<int>(std::min<int64_t>(ks.nr, N - j0)));
        }
      }
    }
  });
}

void int8_linear_grad_input_cpu(const void* dy, DType dy_dt, int64_t M, const Int8Weight& w, void* dx, DType dx_dt) {
  // dx = dy · (CB · SCB/127): the per-output scale is a per-k scale of this product, applied to dy's
  // columns as they are packed; CB is widened as it is packed (no dequantised copy of W is made).
  std::vector<float> s(static_cast<size_t>(w.N));
  for (int64_t n = 0; n < w.N; n++) s[n] = w.scb[n] * kInv127;
  GemmArgs g;
  g.M = M, g.N = w.K, g.K = w.N;
  g.A = mat_rows(dy, dy_dt, w.N);
  g.A.ks = s.data();
  g.B = mat_rows(w.cb, DType::I8, w.K);
  g.C = dx, g.c_dt = dx_dt, g.ldc = w.K;
  gemm(g);
}

Int8PackRegion int8_cached_pack(Storage* s) {
  auto p = s->cached_of<Int8Pack>(kPackKind);
  if (!p) return {};
  return {p->data, static_cast<size_t>(p->panels * p->Kp * kPanel)};
}

}  // namespace peft
