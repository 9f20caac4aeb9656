#include "lora.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "convert.h"
#include "elem.h"
#include "gemm.h"
#include "nn_kernels.h"
#include "parallel.h"
#include "rank_update.h"

namespace peft {
namespace {

// f32 scratch that is freed on every exit path.
struct Scratch {
  std::unique_ptr<float[]> p;
  explicit Scratch(int64_t n) : p(new float[static_cast<size_t>(n > 0 ? n : 1)]) {}
  float* get() const { return p.get(); }
};

// drop(x) for one adapter: x itself without dropout, else a masked f32 copy in `buf`.
GemmMat dropped_x(const DenseView& d, const AdapterView& a, Scratch* buf) {
  if (a.p <= 0) return mat_rows(d.x, d.x_dt, d.K);
  dropout_cpu(d.x, d.x_dt, buf->get(), DType::F32, d.M * d.K, a.p, a.seed, a.stream);
  return mat_rows(buf->get(), DType::F32, d.K);
}

// [s_1·B_1 | s_2·B_2 | …] (or unscaled) as one (N, R) f32 matrix, times `sign` (-1 for unmerge).
void b_cat_into(const std::vector<AdapterView>& ad, int64_t N, int64_t R, float sign, bool scaled, float* out) {
  int64_t off = 0;
  for (const AdapterView& a : ad) {
    const float f = scaled ? sign * a.scale : sign;
    for (int64_t n = 0; n < N; n++)
      for (int64_t j = 0; j < a.r; j++) out[n * R + off + j] = f * load_f32(a.B, a.b_dt, n * a.r + j);
    off += a.r;
  }
}

// [B_1 | B_2 | …] (unscaled) as one (N, R) row-major view: the adapter's own B when there is one, else a
// concatenated f32 copy in `buf`.
GemmMat b_cat(const std::vector<AdapterView>& ad, int64_t N, int64_t R, Scratch* buf) {
  if (ad.size() == 1) return mat_rows(ad[0].B, ad[0].b_dt, R);
  b_cat_into(ad, N, R, 1.0f, false, buf->get());
  return mat_rows(buf->get(), DType::F32, R);
}

// Each of the R = Σ r columns' scale: its adapter's.
void column_scales(const std::vector<AdapterView>& ad, float* out) {
  int64_t off = 0;
  for (const AdapterView& a : ad) {
    for (int64_t j = 0; j < a.r; j++) out[off + j] = a.scale;
    off += a.r;
  }
}

// Multiplies each adapter's column block of an (M, R) f32 matrix by its scale.
void scale_blocks(const std::vector<AdapterView>& ad, float* m, int64_t M, int64_t R) {
  Scratch s(R);
  column_scales(ad, s.get());
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < R; j++) m[i * R + j] *= s.get()[j];
}

// [A_1; A_2; …] as one (R, K) f32 matrix.
void a_cat(const std::vector<AdapterView>& ad, int64_t K, float* out) {
  int64_t row = 0;
  for (const AdapterView& a : ad) {
    for (int64_t j = 0; j < a.r; j++)
      for (int64_t k = 0; k < K; k++) out[(row + j) * K + k] = load_f32(a.A, a.a_dt, j * K + k);
    row += a.r;
  }
}

}  // namespace

GemmMat dense_weight_kn(const DenseView& d) { return d.w_in_out ? mat_rows(d.W, d.w_dt, d.N) : mat_cols(d.W, d.w_dt, d.K); }
GemmMat dense_weight_nk(const DenseView& d) { return d.w_in_out ? mat_cols(d.W, d.w_dt, d.N) : mat_rows(d.W, d.w_dt, d.K); }

int64_t total_rank(const std::vector<AdapterView>& ad) {
  int64_t R = 0;
  for (const AdapterView& a : ad) R += a.r;
  return R;
}

void lora_forward_cpu(const DenseView& d, const std::vector<AdapterView>& ad, void* y, DType y_dt, float* T) {
  const int64_t M = d.M, K = d.K, N = d.N, R = total_rank(ad);
  if (M == 0 || N == 0) return;
  bool dropout = false;
  for (const AdapterView& a : ad) dropout = dropout || a.p > 0;
  // y = x·Wᵀ + b + (sT)·Bᵀ: the adapters are R extra k-steps on the base GEMM's tile, with T = drop(x)·Aᵀ per
  // adapter side by side (needed again by backward) and the scales on T (M x R, tiny), so B is used as it is.
  Scratch ts(dropout ? M * R : 0), bcat(ad.size() > 1 ? N * R : 0), acat(!dropout && ad.size() > 1 ? R * K : 0), scales(R);
  GemmArgs g;
  g.M = M, g.N = N, g.K = K;
  g.A = mat_rows(d.x, d.x_dt, K);
  g.B = dense_weight_kn(d);
  g.b_cache = d.w_cache;
  g.C = y, g.c_dt = y_dt, g.ldc = N;
  g.bias = d.bias, g.bias_dt = d.bias_dt;
  g.R = R;
  GemmMat B = b_cat(ad, N, R, &bcat);
  g.B2 = {B.p, B.dt, 1, R};  // B2(j, n) = B(n, j)
  if (!dropout) {
    // T from the x the base GEMM packs (each thread its rows): no second pass over x, no product of its own.
    column_scales(ad, scales.get());
    if (ad.size() > 1) a_cat(ad, K, acat.get());
    g.t_b = ad.size() > 1 ? mat_cols(acat.get(), DType::F32, K) : mat_cols(ad[0].A, ad[0].a_dt, K);
    g.t_b_cache = ad.size() > 1 ? nullptr : ad[0].a_cache;
    g.t_scale = scales.get(), g.t_out = T;
    gemm(g);
    return;
  }
  int64_t off = 0;
  for (const AdapterView& a : ad) {
    Scratch xd(a.p > 0 ? M * K : 0);
    GemmArgs t;
    t.M = M, t.N = a.r, t.K = K;
    t.A = dropped_x(d, a, &xd);
    t.B = mat_cols(a.A, a.a_dt, K);
    t.C = T + off, t.c_dt = DType::F32, t.ldc = R;
    gemm(t);
    off += a.r;
  }
  std::memcpy(ts.get(), T, sizeof(float) * static_cast<size_t>(M * R));
  scale_blocks(ad, ts.get(), M, R);
  g.A2 = mat_rows(ts.get(), DType::F32, R);
  gemm(g);
}

void lora_backward_cpu(const DenseView& d, const std::vector<AdapterView>& ad, const void* dy, DType dy_dt, const float* T,
                       void* dx, DType dx_dt) {
  const int64_t M = d.M, K = d.K, N = d.N, R = total_rank(ad);
  Scratch bcat(ad.size() > 1 ? N * R : 0), G(M * R);
  // G = dy·B, then each adapter's block times its scale: the gradient reaching T, in one product.
  if (M > 0 && R > 0) {
    GemmArgs g;
    g.M = M, g.N = R, g.K = N;
    g.A = mat_rows(dy, dy_dt, N);
    g.B = b_cat(ad, N, R, &bcat);
    g.C = G.get(), g.c_dt = DType::F32, g.ldc = R;
    gemm(g);
    scale_blocks(ad, G.get(), M, R);
  } else if (R > 0) {
    std::memset(G.get(), 0, sizeof(float) * static_cast<size_t>(M * R));
  }
  bool any_dropout = false;
  int64_t off = 0;
  for (const AdapterView& a : ad) {
    any_dropout |= a.p > 0;
    if (a.dB) {  // dB += s·dyᵀ·T
      GemmArgs g;
      g.M = N, g.N = a.r, g.K = M;
      g.A = mat_cols(dy, dy_dt, N);
      g.B = mat_rows(T + off, DType::F32, R);
      g.alpha = a.scale;
      g.C = a.dB, g.c_dt = a.db_dt, g.ldc = a.r, g.accumulate = true;
      gemm(g);
    }
    if (a.dA) {  // dA += Gᵀ·drop(x)
      Scratch xd(a.p > 0 ? M * K : 0);
      GemmArgs g;
      g.M = a.r, g.N = K, g.K = M;
      g.A = mat_cols(G.get() + off, DType::F32, R);
      g.B = dropped_x(d, a, &xd);
      g.C = a.dA, g.c_dt = a.da_dt, g.ldc = K, g.accumulate = true;
      gemm(g);
    }
    off += a.r;
  }
  if (!dx || M == 0 || K == 0) return;
  // dx = dy·W + G·A. Without dropout the adapter part rides on the base GEMM as R extra k-steps; with
  // dropout each adapter's part is masked, so it is added in f32 before the single rounding into dx.
  Scratch acat(any_dropout ? 0 : R * K);
  const bool staged = any_dropout && dx_dt != DType::F32;  // masked parts are summed in f32, rounded once
  Scratch dx32(staged ? M * K : 0);
  void* out = staged ? static_cast<void*>(dx32.get()) : dx;
  DType out_dt = staged ? DType::F32 : dx_dt;
  GemmArgs g;
  g.M = M, g.N = K, g.K = N;
  g.A = mat_rows(dy, dy_dt, N);
  g.B = dense_weight_nk(d);
  g.C = out, g.c_dt = out_dt, g.ldc = K;
  if (!any_dropout && R > 0) {
    a_cat(ad, K, acat.get());
    g.R = R;
    g.A2 = mat_rows(G.get(), DType::F32, R);
    g.B2 = mat_rows(acat.get(), DType::F32, K);
  }
  gemm(g);
  if (!any_dropout) return;
  Scratch part(M * K);
  off = 0;
  for (const AdapterView& a : ad) {
    GemmArgs p;
    p.M = M, p.N = K, p.K = a.r;
    p.A = mat_rows(G.get() + off, DType::F32, R);
    p.B = mat_rows(a.A, a.a_dt, K);
    p.C = part.get(), p.c_dt = DType::F32, p.ldc = K;
    gemm(p);
    if (a.p > 0) dropout_cpu(part.get(), DType::F32, part.get(), DType::F32, M * K, a.p, a.seed, a.stream);
    axpy_cpu(out, out_dt, part.get(), DType::F32, 1.0f, M * K);
    off += a.r;
  }
  if (staged) convert_cpu(dx32.get(), DType::F32, dx, dx_dt, M * K);
}

namespace {
// W (+)= sign·Σ s·B·A (transposed for w_in_out) as one rank-R streaming update of W.
void delta_update(void* C, DType c_dt, int64_t N, int64_t K, bool w_in_out, const std::vector<AdapterView>& ad, float sign) {
  const int64_t R = total_rank(ad);
  Scratch bs(N * R), acat(R * K);
  b_cat_into(ad, N, R, sign, true, bs.get());
  a_cat(ad, K, acat.get());
  if (!w_in_out) {  // W(n, k) += Σ_j sB(n, j) A(j, k)
    rank_update(C, c_dt, N, K, bs.get(), acat.get(), R);
    return;
  }
  // W(k, n) += Σ_j A(j, k) sB(n, j): the same update with both factors transposed (small copies).
  Scratch at(K * R), bst(R * N);
  for (int64_t j = 0; j < R; j++)
    for (int64_t k = 0; k < K; k++) at.get()[k * R + j] = acat.get()[j * K + k];
  for (int64_t n = 0; n < N; n++)
    for (int64_t j = 0; j < R; j++) bst.get()[j * N + n] = bs.get()[n * R + j];
  rank_update(C, c_dt, K, N, at.get(), bst.get(), R);
}

// True when every value stays finite once rounded (to nearest even) into `dt`: f16 overflows from 65520 on
// and bf16 from 0x7F7F8000 (as f32 bits) on, values an f32 check alone would pass.
bool all_finite_as(const float* v, int64_t n, DType dt) {
  float bound = std::numeric_limits<float>::infinity();
  if (dt == DType::F16) bound = 65520.0f;
  if (dt == DType::BF16) {
    uint32_t bits = 0x7F7F8000u;
    std::memcpy(&bound, &bits, sizeof bound);
  }
  std::atomic<bool> ok{true};
  parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++)
      if (!(std::fabs(v[i]) < bound)) {  // NaN fails too
        ok.store(false, std::memory_order_relaxed);
        return;
      }
  });
  return ok.load();
}
}  // namespace

int lora_merge_cpu(void* W, DType w_dt, int64_t N, int64_t K, bool w_in_out, const std::vector<AdapterView>& ad, float sign,
                   bool safe, bool commit) {
  if (N == 0 || K == 0 || ad.empty()) return -1;
  if (!safe) {
    if (commit) delta_update(W, w_dt, N, K, w_in_out, ad, sign);
    return -1;
  }
  // Safe: W + Δ in f32 aside, checked in W's dtype, then copied back (rounded once) when `commit`. On
  // failure, name the first adapter whose own delta is non-finite.
  Scratch merged(N * K);
  convert_cpu(W, w_dt, merged.get(), DType::F32, N * K);
  delta_update(merged.get(), DType::F32, N, K, w_in_out, ad, sign);
  if (!all_finite_as(merged.get(), N * K, w_dt)) {
    for (size_t i = 0; i < ad.size(); i++) {
      convert_cpu(W, w_dt, merged.get(), DType::F32, N * K);
      delta_update(merged.get(), DType::F32, N, K, w_in_out, {ad[i]}, sign);
      if (!all_finite_as(merged.get(), N * K, w_dt)) return static_cast<int>(i);
    }
    return 0;  // only the sum overflows: the first adapter is named
  }
  if (commit) convert_cpu(merged.get(), DType::F32, W, w_dt, N * K);
  return -1;
}

}  // namespace peft
