// The int8 linear driver: picks the kernel set, keeps CB packed per weight version, quantises x into
// its packed rows (one pass per row: absmax, then the int8 values), runs the blocks over the pool, and
// adds outlier columns in floating point through the f32 GEMM.
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

// The smallest non-negative f32 whose f16 rounding is >= threshold: |x16| >= threshold exactly when
// |x| >= this bound (rounding is monotonic), so outliers are found on x itself, without converting it.
float f16_threshold_bound(float threshold) {
  uint32_t lo = 0, hi = 0x7f800000u;  // +0 .. +inf
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (f16_to_f32(f32_to_f16(bits_f32(mid))) >= threshold) hi = mid;
    else lo = mid + 1;
  }
  return bits_f32(lo);
}

template <typename T, typename Widen>
void mark_outliers(const T* x, int64_t r0, int64_t r1, int64_t K, float bound, uint8_t* local, Widen widen) {
  for (int64_t r = r0; r < r1; r++) {
    const T* row = x + r * K;
    for (int64_t k = 0; k < K; k++) local[k] |= static_cast<uint8_t>(std::fabs(widen(row[k])) >= bound);
  }
}

// Columns of x holding any |x16| >= threshold (x rounded to f16, as the quantiser sees it).
std::vector<int64_t> outlier_columns(const void* x, DType dt, int64_t M, int64_t K, float threshold, std::vector<uint8_t>& mask) {
  mask.assign(K, 0);
  std::mutex mu;
  const float bound = f16_threshold_bound(threshold);
  parallel_for(M, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> local(K, 0);
    if (dt == DType::F32) mark_outliers(static_cast<const float*>(x), r0, r1, K, bound, local.data(), [](float v) { return v; });
    else if (dt == DType::BF16) mark_outliers(static_cast<const uint16_t*>(x), r0, r1, K, bound, local.data(), bf16_to_f32);
    else mark_outliers(static_cast<const uint16_t*>(x), r0, r1, K, bound, local.data(), f16_to_f32);
    std::lock_guard<std::mutex> lk(mu);
    for (int64_t k = 0; k < K; k++) mask[k] |= local[k];
  });
  std::vector<int64_t> cols;
  for (int64_t k = 0; k < K; k++)
    if (mask[k]) cols.push_back(k);
  return cols;
}

thread_local gemm_detail::Scratch t_xq, t_xi, t_scx, t_cols, t_rank, t_outl_u, t_outl_b;

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
// dtype as bitsandbytes multiplies them (its f32 dequantisation CB·SCB·(1/127), rounded to x's dtype).
RankTerm outlier_term(const Int8LinearArgs& a, const std::vector<int64_t>& cols) {
  const int64_t M = a.M, N = a.w.N, K = a.w.K, R = static_cast<int64_t>(cols.size());
  const DType dt = a.x_dt;
  float* u = static_cast<float*>(t_outl_u.get(sizeof(float) * std::max<int64_t>(1, M * R)));
  parallel_for(M, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t m = r0; m < r1; m++)
      for (int64_t j = 0; j < R; j++) u[m * R + j] = load_f32(a.x, dt, m * K + cols[j]);
  });
  const float* bt = pack_panels(t_outl_b, R, N, [&](int64_t r, int64_t n) {
    float v = static_cast<float>(a.w.cb[n * K + cols[r]]) * a.w.scb[n];
    return round_through(v * kInv127, dt);
  });
  return {u, bt, R};
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

  std::vector<uint8_t> mask;
  std::vector<int64_t> cols;
  if (a.threshold > 0.0f) cols = outlier_columns(a.x, a.x_dt, M, K, a.threshold, mask);

  // x quantised straight into the kernels' row layout (rows padded to whole groups, which for AMX are the
  // 32 rows of its tiles; zeros past K). Kernels read no row past their group.
  const int64_t Mp = round_up(M, ks.mr);
  uint8_t* xq = static_cast<uint8_t*>(t_xq.get(static_cast<size_t>(Mp * Kp)));
  float* scx = static_cast<float*>(t_scx.get(sizeof(float) * M));
  const int offset = ks.a_offset ? 128 : 0;
  QuantRowFn quant = quant_row_kernel();
  const size_t esz = dtype_size(a.x_dt);
  // bitsandbytes zeroes outlier columns only when there is more than one row; with one row every element
  // of such a column is itself an outlier, so the mask changes nothing there.
  const uint8_t* mk = cols.empty() ? nullptr : mask.data();
  parallel_for(Mp, std::max<int64_t>(1, 16384 / Kp), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      uint8_t* row = xq + r * Kp;
      if (r >= M) {
        std::fill(row, row + Kp, uint8_t(offset));
        continue;
      }
      scx[r] = quant(static_cast<const char*>(a.x) + r * K * esz, a.x_dt, K, a.threshold, mk, offset, row);
      std::fill(row + K, row + Kp, uint8_t(offset));  // times zero weights: any value works; kept exact
    }
  });

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
  if (!cols.empty() && !a.raw) fin.outliers = outlier_term(a, cols);
  if (a.u && a.r > 0) fin.lora = {a.u, pack_panels(t_rank, a.r, N, [&](int64_t r, int64_t n) { return a.bt[r * N + n]; }), a.r};

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
        t.a = xq + gi * ks.mr * Kp;
        t.lda = Kp;
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
