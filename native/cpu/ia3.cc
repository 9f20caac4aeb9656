#include "ia3.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "convert.h"
#include "elem.h"
#include "gemm.h"
#include "nn_kernels.h"
#include "parallel.h"

namespace peft {
namespace {

// out[j] += Σ_i a[i, j]·b[i, j] over rows of two (rows, cols) matrices (dl's reductions), in f64 per
// column block so the sum does not depend on how rows are split.
void column_dots(const void* a, DType adt, const void* b, DType bdt, int64_t R, int64_t C, float* out) {
  parallel_for(C, 64, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(static_cast<size_t>(j1 - j0), 0.0);
    std::vector<float> ra(static_cast<size_t>(j1 - j0)), rb(static_cast<size_t>(j1 - j0));
    for (int64_t i = 0; i < R; i++) {
      convert_cpu(static_cast<const char*>(a) + (i * C + j0) * dtype_size(adt), adt, ra.data(), DType::F32, j1 - j0);
      convert_cpu(static_cast<const char*>(b) + (i * C + j0) * dtype_size(bdt), bdt, rb.data(), DType::F32, j1 - j0);
      for (int64_t j = 0; j < j1 - j0; j++) acc[j] += static_cast<double>(ra[j]) * rb[j];
    }
    for (int64_t j = j0; j < j1; j++) out[j] += static_cast<float>(acc[j - j0]);
  });
}

// m (rows, cols) with column j scaled by l[j], as an f32 copy (the rare layouts the GEMM cannot scale in place).
std::unique_ptr<float[]> scaled_columns(const void* m, DType dt, int64_t R, int64_t C, const float* l) {
  std::unique_ptr<float[]> out(new float[static_cast<size_t>(std::max<int64_t>(R * C, 1))]);
  convert_cpu(m, dt, out.get(), DType::F32, R * C);
  for (int64_t i = 0; i < R; i++)
    for (int64_t j = 0; j < C; j++) out[i * C + j] *= l[j];
  return out;
}

}  // namespace

void ia3_forward_cpu(const DenseView& d, const Ia3Scale& s, void* y, DType y_dt, void* y0, DType y0_dt) {
  if (d.M == 0 || d.N == 0) return;
  GemmArgs g;
  g.M = d.M, g.N = d.N, g.K = d.K;
  g.A = mat_rows(d.x, d.x_dt, d.K);
  g.B = dense_weight_kn(d);
  g.b_cache = d.w_cache;
  g.bias = d.bias, g.bias_dt = d.bias_dt;
  g.ldc = d.N;
  if (s.input_side) g.A.ks = s.l;
  if (!s.input_side && !y0) g.col_scale = s.l;
  g.C = y0 ? y0 : y, g.c_dt = y0 ? y0_dt : y_dt;
  gemm(g);
  if (!y0) return;
  // Training on the output side: y = y0 ⊙ l from the saved unscaled output.
  parallel_for(d.M, 16, [&](int64_t i0, int64_t i1) {
    std::vector<float> row(static_cast<size_t>(d.N));
    for (int64_t i = i0; i < i1; i++) {
      convert_cpu(static_cast<const char*>(y0) + i * d.N * dtype_size(y0_dt), y0_dt, row.data(), DType::F32, d.N);
      for (int64_t j = 0; j < d.N; j++) row[j] *= s.l[j];
      convert_cpu(row.data(), DType::F32, static_cast<char*>(y) + i * d.N * dtype_size(y_dt), y_dt, d.N);
    }
  });
}

void ia3_backward_cpu(const DenseView& d, const Ia3Scale& s, const void* dy, DType dy_dt, const void* y0, DType y0_dt, void* dx,
                      DType dx_dt, void* dW, DType dW_dt, void* db, DType db_dt, float* dl) {
  const int64_t M = d.M, K = d.K, N = d.N;
  if (s.input_side) {
    // y = (x ⊙ l)·Wᵀ + b: g = dy·W; dl = Σ_rows x ⊙ g and dx = g ⊙ l in one pass over g (an f32 dx holds g
    // itself until it is scaled).
    if (dl && M > 0) {
      const bool in_place = dx && dx_dt == DType::F32;
      std::unique_ptr<float[]> gbuf(in_place ? nullptr : new float[static_cast<size_t>(std::max<int64_t>(M * K, 1))]);
      float* G = in_place ? static_cast<float*>(dx) : gbuf.get();
      GemmArgs g;
      g.M = M, g.N = K, g.K = N;
      g.A = mat_rows(dy, dy_dt, N);
      g.B = dense_weight_nk(d);
      g.C = G, g.ldc = K;
      gemm(g);
      // Rows split across threads (streaming x and g in order), each with its own f64 sums of dl.
      const int nt = std::max(1, std::min<int>(num_threads(), static_cast<int>(std::min<int64_t>(M, 1 << 16))));
      std::vector<std::vector<double>> part(static_cast<size_t>(nt));
      parallel_run(nt, [&](int tid, int parts) {
        std::vector<double>& acc = part[static_cast<size_t>(tid)];
        acc.assign(static_cast<size_t>(K), 0.0);
        std::vector<float> xr(static_cast<size_t>(K)), out(static_cast<size_t>(K));
        for (int64_t i = M * tid / parts; i < M * (tid + 1) / parts; i++) {
          convert_cpu(static_cast<const char*>(d.x) + i * K * dtype_size(d.x_dt), d.x_dt, xr.data(), DType::F32, K);
          float* gr = G + i * K;
          for (int64_t j = 0; j < K; j++) acc[j] += static_cast<double>(xr[j]) * gr[j];
          if (!dx) continue;
          float* o = in_place ? gr : out.data();
          for (int64_t j = 0; j < K; j++) o[j] = gr[j] * s.l[j];
          if (!in_place) convert_cpu(out.data(), DType::F32, static_cast<char*>(dx) + i * K * dtype_size(dx_dt), dx_dt, K);
        }
      });
      for (int64_t j = 0; j < K; j++) {
        double t = 0;
        for (const auto& p : part) t += p.empty() ? 0.0 : p[static_cast<size_t>(j)];
        dl[j] += static_cast<float>(t);
      }
    } else if (dx) {
      GemmArgs g;
      g.M = M, g.N = K, g.K = N;
      g.A = mat_rows(dy, dy_dt, N);
      g.B = dense_weight_nk(d);
      g.col_scale = s.l;
      g.C = dx, g.c_dt = dx_dt, g.ldc = K;
      gemm(g);
    }
    if (dW) {  // dW += dyᵀ·(x ⊙ l): l scales dW's k columns (N, K), or, stored (K, N), a scaled copy of x
      GemmArgs g;
      g.accumulate = true;
      g.C = dW, g.c_dt = dW_dt;
      std::unique_ptr<float[]> xs;
      if (!d.w_in_out) {
        g.M = N, g.N = K, g.K = M, g.ldc = K;
        g.A = mat_cols(dy, dy_dt, N);
        g.B = mat_rows(d.x, d.x_dt, K);
        g.col_scale = s.l;
      } else {
        xs = scaled_columns(d.x, d.x_dt, M, K, s.l);
        g.M = K, g.N = N, g.K = M, g.ldc = N;
        g.A = mat_cols(xs.get(), DType::F32, K);
        g.B = mat_rows(dy, dy_dt, N);
      }
      gemm(g);
    }
    if (db) sum_rows_cpu(dy, dy_dt, M, N, db, db_dt, true);
    return;
  }
  // y = (x·Wᵀ + b) ⊙ l: dl = Σ_rows dy ⊙ y0; dx = (dy ⊙ l)·W with l applied as dy is packed.
  if (dl) column_dots(dy, dy_dt, y0, y0_dt, M, N, dl);
  if (dx && M > 0 && K > 0) {
    GemmArgs g;
    g.M = M, g.N = K, g.K = N;
    g.A = mat_rows(dy, dy_dt, N);
    g.A.ks = s.l;
    g.B = dense_weight_nk(d);
    g.C = dx, g.c_dt = dx_dt, g.ldc = K;
    gemm(g);
  } else if (dx) {
    std::memset(dx, 0, static_cast<size_t>(M * K) * dtype_size(dx_dt));  // +0 has all bits clear in every float dtype
  }
  if (dW || db) {
    // (dy ⊙ l) as the gradient reaching the unscaled layer: stored (K, N), l scales dW's columns in the
    // epilogue; stored (N, K), a scaled copy of dy.
    std::unique_ptr<float[]> dys = scaled_columns(dy, dy_dt, M, N, s.l);
    if (dW) {
      GemmArgs g;
      g.accumulate = true;
      g.C = dW, g.c_dt = dW_dt;
      if (d.w_in_out) {
        g.M = K, g.N = N, g.K = M, g.ldc = N;
        g.A = mat_cols(d.x, d.x_dt, K);
        g.B = mat_rows(dy, dy_dt, N);
        g.col_scale = s.l;
      } else {
        g.M = N, g.N = K, g.K = M, g.ldc = K;
        g.A = mat_cols(dys.get(), DType::F32, N);
        g.B = mat_rows(d.x, d.x_dt, K);
      }
      gemm(g);
    }
    if (db) sum_rows_cpu(dys.get(), DType::F32, M, N, db, db_dt, true);
  }
}

bool ia3_scale_cpu(void* W, DType dt, int64_t outer, int64_t mid, int64_t inner, const float* f, bool safe, bool commit) {
  const int64_t total = outer * mid * inner;
  std::atomic<bool> finite{true};
  // Contiguous chunks of W; element e's factor is f[(e / inner) % mid], followed with counters (no division
  // per element).
  auto pass = [&](bool write) {
    parallel_for(total, 1 << 14, [&](int64_t e0, int64_t e1) {
      constexpr int64_t kChunk = 4096;
      float buf[kChunk], back[kChunk];
      uint16_t narrow[kChunk];
      bool ok = true;
      int64_t m = (e0 / inner) % mid, i = e0 % inner;
      for (int64_t c0 = e0; c0 < e1; c0 += kChunk) {
        const int64_t n = std::min(kChunk, e1 - c0);
        void* p = static_cast<char*>(W) + c0 * dtype_size(dt);
        const bool direct = write && dt == DType::F32;  // f32 written in place, no staging copy
        float* v32 = direct ? static_cast<float*>(p) : buf;
        if (!direct) convert_cpu(p, dt, buf, DType::F32, n);
        // Runs of one factor (inner > 1) or of consecutive factors (inner == 1): both vectorise.
        for (int64_t k = 0; k < n;) {
          if (inner == 1) {
            const int64_t run = std::min(n - k, mid - m);
            for (int64_t j = 0; j < run; j++) v32[k + j] *= f[m + j];
            k += run, m += run;
            if (m == mid) m = 0;
          } else {
            const int64_t run = std::min(n - k, inner - i);
            const float sc = f[m];
            for (int64_t j = 0; j < run; j++) v32[k + j] *= sc;
            k += run, i += run;
            if (i == inner) i = 0, m = m + 1 == mid ? 0 : m + 1;
          }
        }
        if (write) {
          if (!direct) convert_cpu(buf, DType::F32, p, dt, n);
          continue;
        }
        // The check is in W's dtype: an f16 product past 65504 is not finite once stored.
        const float* v = buf;
        if (dt != DType::F32) {
          convert_cpu(buf, DType::F32, narrow, dt, n);
          convert_cpu(narrow, dt, back, DType::F32, n);
          v = back;
        }
        for (int64_t k = 0; k < n && ok; k++) ok = std::isfinite(v[k]);
      }
      if (!ok) finite.store(false);
    });
  };
  if (safe) pass(false);
  if (!finite.load()) return false;
  if (commit) pass(true);
  return true;
}

}  // namespace peft
