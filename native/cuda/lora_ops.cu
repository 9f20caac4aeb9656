// The host API of fused LoRA (lora_ops.h): the forward, backward and merge as the CPU backend does them
// (native/cpu/lora.cc), on the cuda device's kernels. Forward: T = drop(x)·Aᵀ per adapter (lora_down, the
// mask made in the kernel), then the base GEMM with s·T·Bᵀ as its rank term, so y is written once. Backward:
// G = dy·(sB) once; dB and dA as strided GEMMs; dx = dy·W with G·A as the rank term (with dropout each
// adapter's part is masked and added in f32 before the one rounding). Merge: the streaming rank update.
// One adapter (the common case) is read in place, and the forward allocates nothing (T's split-K partials use
// y's memory before the GEMM writes y); several are gathered into f32 [s_1·B_1 | s_2·B_2 | …] and
// [A_1; A_2; …] first.
#include <cmath>
#include <cstring>
#include <initializer_list>

#include "cuda_ops.h"
#include "host_checks.cuh"
#include "lora_launch.cuh"
#include "lora_ops.h"

namespace peft::PEFT_CUDA_NS {
using namespace host_checks;

namespace {

int64_t total_rank(const CudaLoraAdapter* ad, int64_t count) {
  int64_t R = 0;
  for (int64_t i = 0; i < count; ++i) R += ad[i].r;
  return R;
}

// The dropout kernel's constants for p, as cuda_dropout derives them: u is a multiple of 2^-24, so u >= p
// exactly when u >= ceil(p·2^24)/2^24. keep_from 0 (p = 0): no dropout.
struct DropConsts {
  float keep_from = 0, scale = 1;
};
DropConsts drop_consts(double p) {
  if (p <= 0) return {};
  return {static_cast<float>(std::ceil(p * 16777216.0) / 16777216.0), static_cast<float>(1.0 / (1.0 - p))};
}

// [f·s_1·B_1 | f·s_2·B_2 | …] as (N, R) f32, or its transpose (R, N).
int gather_b(const char* op, const CudaLoraAdapter* ad, int64_t count, int64_t N, int64_t R, float f, bool transposed,
             float* out, std::string* err) {
  int64_t off = 0;
  for (int64_t i = 0; i < count; off += ad[i].r, ++i) {
    const CudaLoraAdapter& a = ad[i];
    if (a.r == 0 || N == 0) continue;
    const cudaError_t e = transposed ? launch_lora_gather(a.B, DType(a.b_dt), a.r, N, 1, a.r, f * a.scale, out + off * N, N)
                                     : launch_lora_gather(a.B, DType(a.b_dt), N, a.r, a.r, 1, f * a.scale, out + off, R);
    if (int rc = api(op, e, err)) return rc;
  }
  return 0;
}

// [A_1; A_2; …] as (R, K) f32, or its transpose (K, R).
int gather_a(const char* op, const CudaLoraAdapter* ad, int64_t count, int64_t K, int64_t R, bool transposed, float* out,
             std::string* err) {
  int64_t off = 0;
  for (int64_t i = 0; i < count; off += ad[i].r, ++i) {
    const CudaLoraAdapter& a = ad[i];
    if (a.r == 0 || K == 0) continue;
    const cudaError_t e = transposed ? launch_lora_gather(a.A, DType(a.a_dt), K, a.r, 1, K, 1.0f, out + off, R)
                                     : launch_lora_gather(a.A, DType(a.a_dt), a.r, K, K, 1, 1.0f, out + off * K, K);
    if (int rc = api(op, e, err)) return rc;
  }
  return 0;
}

int check_base(const char* op, const CudaLoraBase& d, const CudaLoraAdapter* ad, int64_t count, std::string* err) {
  if (d.M < 0 || d.K < 0 || d.N < 0 || count < 0 || (count > 0 && !ad))
    return reject(err, kInvalid, std::string(op) + fmt(": invalid shape M=%lld K=%lld N=%lld", d.M, d.K, d.N));
  if (!float_dt(d.x_dt) || !float_dt(d.w_dt) || (d.bias && !float_dt(d.bias_dt)))
    return reject(err, kInvalid, std::string(op) + ": x, the weight and the bias must be f32, f16 or bf16");
  for (int64_t i = 0; i < count; ++i) {
    const CudaLoraAdapter& a = ad[i];
    if (a.r < 0 || !float_dt(a.a_dt) || !float_dt(a.b_dt) || (a.dA && !float_dt(a.da_dt)) || (a.dB && !float_dt(a.db_dt)))
      return reject(err, kInvalid, std::string(op) + fmt(": adapter %lld has an invalid rank or dtype", i));
    if (a.r > kLoraMaxRank)  // lora_down's grid takes 16 ranks per block row
      return reject(err, kInvalid, std::string(op) + fmt(": adapter %lld has rank %lld; the cuda kernels take r <= %lld", i, a.r, kLoraMaxRank));
    if (a.r > 0 && (!a.A || !a.B)) return reject(err, kInvalid, std::string(op) + fmt(": adapter %lld: null factor", i));
  }
  return 0;
}

}  // namespace

int cuda_lora_forward(const CudaLoraBase& d, const CudaLoraAdapter* ad, int64_t count, void* y, int y_dt, float* T,
                      std::string* err) {
  const char* op = "cuda_lora_forward";
  if (int rc = check_base(op, d, ad, count, err)) return rc;
  if (!float_dt(y_dt)) return reject(err, kInvalid, std::string(op) + ": y must be f32, f16 or bf16");
  if (d.M == 0 || d.N == 0) return 0;
  const int64_t R = total_rank(ad, count);
  if (!y || (d.K > 0 && (!d.x || !d.W)) || (R > 0 && !T)) return reject(err, kInvalid, std::string(op) + ": null pointer");
  // T's split-K partial sums go to y's memory: the base GEMM writes all of y only after T is complete (one
  // stream), so no scratch is allocated. y is at least M·N·2 bytes; the split count adapts to it.
  const int64_t y_floats = d.M * d.N * int64_t(dtype_size(DType(y_dt))) / 4;
  int64_t off = 0;
  for (int64_t i = 0; i < count; off += ad[i].r, ++i) {
    const CudaLoraAdapter& a = ad[i];
    if (a.r == 0) continue;
    const DropConsts dc = drop_consts(a.p);
    if (int rc = api(op, launch_lora_down(d.x, DType(d.x_dt), d.M, d.K, a.A, DType(a.a_dt), a.r, T + off, R, static_cast<float*>(y),
                                          y_floats, dc.keep_from, dc.scale, a.seed, a.stream),
                     err))
      return rc;
  }
  DeviceBuffer bs;
  if (count > 1) {
    if (int rc = alloc(op, bs, size_t(d.N * R) * 4, err)) return rc;
    if (int rc = gather_b(op, ad, count, d.N, R, 1.0f, false, bs.as<float>(), err)) return rc;
  }
  CudaGemm g;
  g.M = d.M, g.N = d.N, g.K = d.K;
  g.A = rows_of(d.x, d.x_dt, d.K);
  g.B = weight_kn(d);
  g.C = y, g.c_dt = y_dt, g.ldc = d.N;
  g.bias = d.bias, g.bias_dt = d.bias_dt;
  g.allow_tf32 = d.allow_tf32;
  // B2(j, n) = B(n, j): one adapter's own B with its scale on T as staged, else the gathered sB.
  if (count == 1 && R > 0) g.rank = {R, rows_of(T, int(DType::F32), R), cols_of(ad[0].B, ad[0].b_dt, R), ad[0].scale};
  else if (R > 0) g.rank = {R, rows_of(T, int(DType::F32), R), cols_of(bs.p, int(DType::F32), R)};
  return cuda_gemm(g, err);
}

int cuda_lora_backward(const CudaLoraBase& d, const CudaLoraAdapter* ad, int64_t count, const void* dy, int dy_dt,
                       const float* T, void* dx, int dx_dt, std::string* err) {
  const char* op = "cuda_lora_backward";
  if (int rc = check_base(op, d, ad, count, err)) return rc;
  if (!float_dt(dy_dt) || (dx && !float_dt(dx_dt))) return reject(err, kInvalid, std::string(op) + ": dy and dx must be f32, f16 or bf16");
  const int64_t M = d.M, K = d.K, N = d.N, R = total_rank(ad, count);
  const int F32 = int(DType::F32);
  if (M > 0 && ((N > 0 && !dy) || (R > 0 && !T) || (K > 0 && !d.x))) return reject(err, kInvalid, std::string(op) + ": null pointer");
  // G = dy·(sB) (M, R): the gradient reaching T.
  DeviceBuffer bs, G;
  if (int rc = alloc(op, G, size_t(M * R) * 4, err)) return rc;
  if (M > 0 && R > 0) {
    CudaGemm g;
    g.M = M, g.N = R, g.K = N;
    g.A = rows_of(dy, dy_dt, N);
    g.C = G.p, g.c_dt = F32, g.ldc = R;
    if (count == 1) {  // s·(dy·B), as the CPU scales it
      g.B = rows_of(ad[0].B, ad[0].b_dt, R);
      g.alpha = ad[0].scale;
    } else {
      if (int rc = alloc(op, bs, size_t(N * R) * 4, err)) return rc;
      if (int rc = gather_b(op, ad, count, N, R, 1.0f, false, bs.as<float>(), err)) return rc;
      g.B = rows_of(bs.p, F32, R);
    }
    if (int rc = cuda_gemm(g, err)) return rc;
  }
  bool any_dropout = false;
  int64_t off = 0;
  for (int64_t i = 0; i < count; off += ad[i].r, ++i) {
    const CudaLoraAdapter& a = ad[i];
    any_dropout |= a.p > 0;
    if (a.r == 0 || M == 0) continue;
    if (a.dB && N > 0) {  // dB += s·dyᵀ·T
      CudaGemm g;
      g.M = N, g.N = a.r, g.K = M;
      g.A = cols_of(dy, dy_dt, N);
      g.B = rows_of(T + off, F32, R);
      g.alpha = a.scale;
      g.C = a.dB, g.c_dt = a.db_dt, g.ldc = a.r, g.accumulate = true;
      if (int rc = cuda_gemm(g, err)) return rc;
    }
    if (a.dA && K > 0) {  // dA += Gᵀ·drop(x), the dropped x made by the dropout kernel (the same masks)
      DeviceBuffer xd;
      CudaMat xm = rows_of(d.x, d.x_dt, K);
      if (a.p > 0) {
        const DropConsts dc = drop_consts(a.p);
        if (int rc = alloc(op, xd, size_t(M * K) * 4, err)) return rc;
        if (int rc = api(op, launch_dropout(d.x, DType(d.x_dt), xd.p, DType::F32, M * K, dc.keep_from, dc.scale, a.seed, a.stream), err))
          return rc;
        xm = rows_of(xd.p, F32, K);
      }
      CudaGemm g;
      g.M = a.r, g.N = K, g.K = M;
      g.A = cols_of(G.as<float>() + off, F32, R);
      g.B = xm;
      g.C = a.dA, g.c_dt = a.da_dt, g.ldc = K, g.accumulate = true;
      if (int rc = cuda_gemm(g, err)) return rc;
    }
  }
  if (!dx || M == 0 || K == 0) return finish(op, cudaSuccess, err);
  // dx = dy·W + G·A: without dropout the adapters are the base GEMM's rank term; with dropout each
  // adapter's part is masked, so it is added in f32 before the single rounding into dx.
  const bool staged = any_dropout && dx_dt != F32;
  DeviceBuffer dx32, acat;
  if (staged && alloc(op, dx32, size_t(M * K) * 4, err)) return kInvalid;
  void* out = staged ? dx32.p : dx;
  const int out_dt = staged ? F32 : dx_dt;
  CudaGemm g;
  g.M = M, g.N = K, g.K = N;
  g.A = rows_of(dy, dy_dt, N);
  g.B = weight_nk(d);
  g.C = out, g.c_dt = out_dt, g.ldc = K;
  g.allow_tf32 = d.allow_tf32;
  if (!any_dropout && count == 1 && R > 0) {
    g.rank = {R, rows_of(G.p, F32, R), rows_of(ad[0].A, ad[0].a_dt, K)};
  } else if (!any_dropout && R > 0) {
    if (int rc = alloc(op, acat, size_t(R * K) * 4, err)) return rc;
    if (int rc = gather_a(op, ad, count, K, R, false, acat.as<float>(), err)) return rc;
    g.rank = {R, rows_of(G.p, F32, R), rows_of(acat.p, F32, K)};
  }
  if (int rc = cuda_gemm(g, err)) return rc;
  if (!any_dropout) return 0;
  DeviceBuffer part;
  if (int rc = alloc(op, part, size_t(M * K) * 4, err)) return rc;
  off = 0;
  for (int64_t i = 0; i < count; off += ad[i].r, ++i) {
    const CudaLoraAdapter& a = ad[i];
    if (a.r == 0) continue;
    CudaGemm p;
    p.M = M, p.N = K, p.K = a.r;
    p.A = rows_of(G.as<float>() + off, F32, R);
    p.B = rows_of(a.A, a.a_dt, K);
    p.C = part.p, p.c_dt = F32, p.ldc = K;
    if (int rc = cuda_gemm(p, err)) return rc;
    const DropConsts dc = drop_consts(a.p);
    if (a.p > 0 && api(op, launch_dropout(part.p, DType::F32, part.p, DType::F32, M * K, dc.keep_from, dc.scale, a.seed, a.stream), err))
      return kInvalid;
    if (int rc = api(op, launch_axpy(out, DType(out_dt), part.p, DType::F32, 1.0f, M * K), err)) return rc;
  }
  if (staged && api(op, launch_convert(dx32.p, DType::F32, dx, DType(dx_dt), M * K), err)) return kInvalid;
  return finish(op, cudaSuccess, err);
}

namespace {

// dst = src + sign·Σ s·B·A over `count` adapters (in W's layout), one streaming pass.
int merge_delta(const char* op, const void* src, int sdt, void* dst, int ddt, int64_t N, int64_t K, bool w_in_out,
                const CudaLoraAdapter* ad, int64_t count, float sign, std::string* err) {
  const int64_t R = total_rank(ad, count), rows = w_in_out ? K : N, cols = w_in_out ? N : K;
  DeviceBuffer L, Rm;
  if (int rc = alloc(op, L, size_t(rows * R) * 4, err)) return rc;
  if (int rc = alloc(op, Rm, size_t(R * cols) * 4, err)) return rc;
  // W (N, K) += sB (N, R)·A (R, K); stored (K, N): W += Aᵀ (K, R)·(sB)ᵀ (R, N).
  const int rc = w_in_out ? gather_a(op, ad, count, K, R, true, L.as<float>(), err) ||
                                gather_b(op, ad, count, N, R, sign, true, Rm.as<float>(), err)
                          : gather_b(op, ad, count, N, R, sign, false, L.as<float>(), err) ||
                                gather_a(op, ad, count, K, R, false, Rm.as<float>(), err);
  if (rc) return kInvalid;
  return api(op, launch_lora_merge(src, DType(sdt), dst, DType(ddt), rows, cols, L.as<float>(), Rm.as<float>(), R), err);
}

// The largest magnitude that stays finite once rounded (to nearest even) into dt: f16 overflows from 65520
// on and bf16 from 0x7F7F8000 (as f32 bits) on, values an f32 check alone would pass.
float finite_bound(int dt) {
  if (dt == int(DType::F16)) return 65520.0f;
  if (dt == int(DType::BF16)) {
    const uint32_t bits = 0x7F7F8000u;
    float b;
    std::memcpy(&b, &bits, sizeof b);
    return b;
  }
  return INFINITY;
}

// W + the adapters' delta made into `merged` (f32); *ok: every value finite in W's dtype.
int merged_finite(const char* op, const void* W, int w_dt, float* merged, int* flag, int64_t N, int64_t K, bool w_in_out,
                  const CudaLoraAdapter* ad, int64_t count, float sign, bool* ok, std::string* err) {
  if (int rc = merge_delta(op, W, w_dt, merged, int(DType::F32), N, K, w_in_out, ad, count, sign, err)) return rc;
  if (int rc = api(op, cudaMemset(flag, 0, sizeof(int)), err)) return rc;
  if (int rc = api(op, launch_flag_not_below(merged, N * K, finite_bound(w_dt), flag), err)) return rc;
  int host = 0;
  if (int rc = api(op, cudaMemcpy(&host, flag, sizeof host, cudaMemcpyDeviceToHost), err)) return rc;
  *ok = host == 0;
  return 0;
}

}  // namespace

int cuda_lora_merge(void* W, int w_dt, int64_t N, int64_t K, bool w_in_out, const CudaLoraAdapter* ad, int64_t count,
                    float sign, bool safe, bool commit, int* bad, std::string* err) {
  const char* op = "cuda_lora_merge";
  if (!bad) return reject(err, kInvalid, std::string(op) + ": null result pointer");
  *bad = -1;
  CudaLoraBase shape;
  shape.M = 0, shape.K = K, shape.N = N, shape.x_dt = shape.w_dt = w_dt;
  if (int rc = check_base(op, shape, ad, count, err)) return rc;
  if (N == 0 || K == 0 || count == 0) return 0;
  if (!W) return reject(err, kInvalid, std::string(op) + ": null pointer");
  if (((w_in_out ? K : N) + kLoraMergeRows - 1) / kLoraMergeRows > 65535)
    return reject(err, kInvalid, std::string(op) + fmt(": weight (%lld, %lld) has more rows than the merge's grid reaches", N, K));
  if (!safe) {
    if (!commit) return 0;
    if (int rc = merge_delta(op, W, w_dt, W, w_dt, N, K, w_in_out, ad, count, sign, err)) return rc;
    return finish(op, cudaSuccess, err);
  }
  // Safe: W + Δ in f32 aside, checked in W's dtype, then copied back (rounded once) when `commit`. On
  // failure, the first adapter whose own delta is non-finite is named.
  DeviceBuffer merged, flag;
  if (int rc = alloc(op, merged, size_t(N * K) * 4, err)) return rc;
  if (int rc = alloc(op, flag, sizeof(int), err)) return rc;
  bool ok = false;
  if (int rc = merged_finite(op, W, w_dt, merged.as<float>(), flag.as<int>(), N, K, w_in_out, ad, count, sign, &ok, err)) return rc;
  if (!ok) {
    *bad = 0;  // only the sum overflows: the first adapter is named
    for (int64_t i = 0; i < count; ++i) {
      if (int rc = merged_finite(op, W, w_dt, merged.as<float>(), flag.as<int>(), N, K, w_in_out, ad + i, 1, sign, &ok, err)) return rc;
      if (!ok) {
        *bad = int(i);
        break;
      }
    }
    return finish(op, cudaSuccess, err);
  }
  if (commit) {
    const cudaError_t e = w_dt == int(DType::F32) ? launch_copy(merged.p, W, N * K * 4)
                                                  : launch_convert(merged.p, DType::F32, W, DType(w_dt), N * K);
    if (int rc = api(op, e, err)) return rc;
  }
  return finish(op, cudaSuccess, err);
}

}  // namespace peft::PEFT_CUDA_NS
