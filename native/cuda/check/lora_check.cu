// Fused LoRA's standalone checks and bench (no Node), built with kernel_check.cu's helpers the same two ways
// (nvcc for a GPU, g++ against the emulator): the forward (y, T), backward (dx, dA, dB) and merge of the
// host API in lora_ops.h against a plain double-precision host reference on odd shapes, f32 and bf16 bases,
// both weight layouts, with and without dropout (the host's Philox masks); with --bench on a GPU, the fused
// forward against the base GEMM alone at (512, 4096, 4096) bf16 (target <= 1.05x) and the merge against the
// measured copy bandwidth (target >= 0.8x).
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../core/dtype.h"
#include "../../core/philox.h"
#include "../lora_ops.h"
#include "ceilings.cuh"
#include "check_util.cuh"

using peft::DType;

namespace {

struct Case {
  int64_t M, K, N, r;
  bool bf16, in_out;
  double p;
};

// The CPU's dropout factor of element i: 1/(1-p) when its Philox uniform is >= p, else 0.
double drop_factor(int64_t i, double p) {
  if (p <= 0) return 1;
  const peft::RngKey key = peft::rng_key(11, 5);
  const peft::Philox4x32 r = peft::philox4x32_10(uint64_t(i / 4), key.k0, key.k1);
  const float keep_from = float(std::ceil(p * 16777216.0) / 16777216.0);
  return peft::u32_to_unit(r.v[i % 4]) >= keep_from ? double(float(1.0 / (1.0 - p))) : 0.0;
}

std::vector<float> rounded(std::vector<float> v, bool bf16) {
  if (bf16)
    for (float& x : v) x = peft::bf16_to_f32(peft::f32_to_bf16(x));
  return v;
}

// got within 2·chain·u of want, relative to the same sums over absolute values (see the JS table's header).
int count_off(const std::vector<float>& got, const std::vector<double>& want, const std::vector<double>& mag, int64_t chain) {
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) bad += !(std::fabs(got[i] - want[i]) <= 2.0 * double(chain + 8) * std::ldexp(1.0, -24) * mag[i] + 1e-30);
  return bad;
}

void check_lora(const Case& c) {
  const int64_t M = c.M, K = c.K, N = c.N, r = c.r;
  const float s = 0.75f;
  std::vector<float> x = rounded(rand_f32(size_t(M * K), 1), c.bf16), W = rounded(rand_f32(size_t(N * K), 2), c.bf16);
  std::vector<float> dy = rounded(rand_f32(size_t(M * N), 3), c.bf16), bias = rand_f32(size_t(N), 4);
  std::vector<float> A = rand_f32(size_t(r * K), 5), B = rand_f32(size_t(N * r), 6), dA0 = rand_f32(size_t(r * K), 7),
                     dB0 = rand_f32(size_t(N * r), 8);
  auto w = [&](int64_t n, int64_t k) { return double(c.in_out ? W[size_t(k * N + n)] : W[size_t(n * K + k)]); };
  const int bdt = c.bf16 ? int(DType::BF16) : int(DType::F32);
  Buf dx_(c.bf16 ? Buf(to_bf16(x)) : Buf(x)), dW(c.bf16 ? Buf(to_bf16(W)) : Buf(W)), ddy(c.bf16 ? Buf(to_bf16(dy)) : Buf(dy));
  Buf dbias(bias), dA(A), dB(B), dgA(dA0), dgB(dB0), dy_out(size_t(M * N) * 4), dT(size_t(M * r) * 4), ddx(size_t(M * K) * 4);
  std::string err;
  must(api::cuda_memset(dT.p, 0, dT.bytes, &err), err, "cuda_memset");
  peft::CudaLoraBase base;
  base.M = M, base.K = K, base.N = N;
  base.x = dx_.p, base.x_dt = bdt, base.W = dW.p, base.w_dt = bdt, base.w_in_out = c.in_out;
  base.bias = dbias.p, base.bias_dt = int(DType::F32);
  peft::CudaLoraAdapter ad;
  ad.r = r, ad.A = dA.p, ad.B = dB.p, ad.scale = s, ad.p = c.p, ad.seed = 11, ad.stream = 5;
  ad.dA = dgA.p, ad.dB = dgB.p;
  must(api::cuda_lora_forward(base, &ad, 1, dy_out.p, int(DType::F32), static_cast<float*>(dT.p), &err), err, "cuda_lora_forward");
  must(api::cuda_lora_backward(base, &ad, 1, ddy.p, bdt, static_cast<float*>(dT.p), ddx.p, int(DType::F32), &err), err, "cuda_lora_backward");

  // The double reference and its magnitudes.
  std::vector<double> T(size_t(M * r)), Tm(T.size()), G(T.size()), Gm(T.size()), y(size_t(M * N)), ym(y.size()), dx(size_t(M * K)),
      dxm(dx.size()), gA(dA0.begin(), dA0.end()), gAm(gA.size()), gB(dB0.begin(), dB0.end()), gBm(gB.size());
  for (size_t i = 0; i < gA.size(); ++i) gAm[i] = std::fabs(gA[i]);
  for (size_t i = 0; i < gB.size(); ++i) gBm[i] = std::fabs(gB[i]);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < r; ++j) {
      double t = 0, tm = 0, g = 0, gm = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double xd = x[size_t(m * K + k)] * drop_factor(m * K + k, c.p);
        t += xd * A[size_t(j * K + k)], tm += std::fabs(xd * A[size_t(j * K + k)]);
      }
      for (int64_t n = 0; n < N; ++n) g += s * dy[size_t(m * N + n)] * B[size_t(n * r + j)], gm += std::fabs(s * dy[size_t(m * N + n)] * B[size_t(n * r + j)]);
      T[size_t(m * r + j)] = t, Tm[size_t(m * r + j)] = tm, G[size_t(m * r + j)] = g, Gm[size_t(m * r + j)] = gm;
    }
    for (int64_t n = 0; n < N; ++n) {
      double v = bias[size_t(n)], vm = std::fabs(v);
      for (int64_t k = 0; k < K; ++k) v += x[size_t(m * K + k)] * w(n, k), vm += std::fabs(x[size_t(m * K + k)] * w(n, k));
      for (int64_t j = 0; j < r; ++j) v += s * T[size_t(m * r + j)] * B[size_t(n * r + j)], vm += std::fabs(s * Tm[size_t(m * r + j)] * B[size_t(n * r + j)]);
      y[size_t(m * N + n)] = v, ym[size_t(m * N + n)] = vm;
    }
    for (int64_t k = 0; k < K; ++k) {
      double v = 0, vm = 0, a = 0, am = 0;
      for (int64_t n = 0; n < N; ++n) v += dy[size_t(m * N + n)] * w(n, k), vm += std::fabs(dy[size_t(m * N + n)] * w(n, k));
      for (int64_t j = 0; j < r; ++j) a += G[size_t(m * r + j)] * A[size_t(j * K + k)], am += std::fabs(Gm[size_t(m * r + j)] * A[size_t(j * K + k)]);
      const double d = drop_factor(m * K + k, c.p);  // the adapter's part of dx is masked as x was
      dx[size_t(m * K + k)] = v + d * a, dxm[size_t(m * K + k)] = vm + d * am;
      for (int64_t j = 0; j < r; ++j) {
        const double xd = x[size_t(m * K + k)] * d;
        gA[size_t(j * K + k)] += G[size_t(m * r + j)] * xd, gAm[size_t(j * K + k)] += std::fabs(Gm[size_t(m * r + j)] * xd);
      }
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < r; ++j) {
        gB[size_t(n * r + j)] += s * dy[size_t(m * N + n)] * T[size_t(m * r + j)];
        gBm[size_t(n * r + j)] += std::fabs(s * dy[size_t(m * N + n)] * Tm[size_t(m * r + j)]);
      }
  }
  const int64_t chain = M + K + N + r;
  char what[200];
  std::snprintf(what, sizeof what, "lora %s%s M=%lld K=%lld N=%lld r=%lld p=%.2f", c.bf16 ? "bf16" : "f32", c.in_out ? " (in, out)" : "",
                (long long)M, (long long)K, (long long)N, (long long)r, c.p);
  const std::string w0 = what;
  check(count_off(dT.get<float>(), T, Tm, chain) == 0, w0 + ": T off");
  check(count_off(dy_out.get<float>(), y, ym, chain) == 0, w0 + ": y off");
  check(count_off(ddx.get<float>(), dx, dxm, chain) == 0, w0 + ": dx off");
  check(count_off(dgA.get<float>(), gA, gAm, chain) == 0, w0 + ": dA off");
  check(count_off(dgB.get<float>(), gB, gBm, chain) == 0, w0 + ": dB off");

  // Merge: W += s·B·A in W's layout, rounded once into W's dtype.
  int bad = 0;
  must(api::cuda_lora_merge(dW.p, bdt, N, K, c.in_out, &ad, 1, 1.0f, true, true, &bad, &err), err, "cuda_lora_merge");
  check(bad == -1, w0 + ": safe merge reported a non-finite weight");
  std::vector<float> merged(size_t(N * K));
  if (c.bf16) {
    const std::vector<uint16_t> h = dW.get<uint16_t>();
    for (size_t i = 0; i < h.size(); ++i) merged[i] = peft::bf16_to_f32(h[i]);
  } else {
    merged = dW.get<float>();
  }
  int off = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      double v = w(n, k), vm = std::fabs(v);
      for (int64_t j = 0; j < r; ++j) v += s * B[size_t(n * r + j)] * A[size_t(j * K + k)], vm += std::fabs(s * B[size_t(n * r + j)] * A[size_t(j * K + k)]);
      const float got = merged[size_t(c.in_out ? k * N + n : n * K + k)];
      off += !(std::fabs(got - v) <= 2.0 * double(r + 4) * std::ldexp(1.0, -24) * vm + (c.bf16 ? std::ldexp(std::fabs(v), -8) : 0.0) + 1e-30);
    }
  check(off == 0, w0 + ": merged W off");
}

// f16 W near its largest value: the merge would overflow it; the device's check says so and writes nothing.
void check_safe_merge_overflow() {
  const std::vector<uint16_t> w = {peft::f32_to_f16(60000.f), peft::f32_to_f16(1.f)};
  const std::vector<float> A = {8000.f}, B = {1.f, 0.f};
  Buf dW(w), dA(A), dB(B);
  peft::CudaLoraAdapter ad;
  ad.r = 1, ad.A = dA.p, ad.B = dB.p;
  int bad = -1;
  std::string err;
  must(api::cuda_lora_merge(dW.p, int(DType::F16), 2, 1, false, &ad, 1, 1.0f, true, true, &bad, &err), err, "cuda_lora_merge");
  check(bad == 0 && dW.get<uint16_t>() == w, "safe merge of an overflowing f16 weight: adapter 0 named, W untouched");
}

void run_checks() {
  for (bool bf16 : {false, true})
    for (bool in_out : {false, true})
      for (double p : {0.0, 0.3})
        for (auto [M, K, N, r] : {std::array<int64_t, 4>{1, 1, 1, 1}, {7, 17, 33, 3}, {33, 127, 7, 5}, {0, 5, 5, 2}, {17, 33, 65, 16}, {9, 200, 40, 3}})
          check_lora({M, K, N, r, bf16, in_out, p});
  check_safe_merge_overflow();
}

void run_bench() {
  std::string err;
  const api::Ceilings cl = api::measure_ceilings();
  const int64_t M = 512, K = 4096, N = 4096, r = 16;
  Buf x(size_t(M * K) * 2), W(size_t(N * K) * 2), y(size_t(M * N) * 2), A(size_t(r * K) * 4), B(size_t(N * r) * 4), T(size_t(M * r) * 4);
  for (Buf* b : {&x, &W, &A, &B}) api::cuda_memset(b->p, 0, b->bytes, &err);
  peft::CudaGemm g;
  g.M = M, g.N = N, g.K = K;
  g.A = {x.p, int(DType::BF16), K, 1};
  g.B = {W.p, int(DType::BF16), 1, K};
  g.C = y.p, g.c_dt = int(DType::BF16), g.ldc = N;
  const double base = seconds_of(10, [&] { api::cuda_gemm(g, &err); });
  peft::CudaLoraBase lb;
  lb.M = M, lb.K = K, lb.N = N, lb.x = x.p, lb.x_dt = int(DType::BF16), lb.W = W.p, lb.w_dt = int(DType::BF16);
  peft::CudaLoraAdapter ad;
  ad.r = r, ad.A = A.p, ad.B = B.p;
  const double fused = seconds_of(10, [&] { api::cuda_lora_forward(lb, &ad, 1, y.p, int(DType::BF16), static_cast<float*>(T.p), &err); });
  std::printf("%-40s %10s %10s\n", "kernel", "ms", "ratio");
  std::printf("%-40s %10.3f %10s\n", "gemm bf16 (512, 4096, 4096)", base * 1e3, "1.00");
  std::printf("%-40s %10.3f %10.2f   (target <= 1.05)\n", "lora forward bf16 r=16, same shape", fused * 1e3, fused / base);
  const double merge = seconds_of(10, [&] {
    int bad = 0;
    api::cuda_lora_merge(W.p, int(DType::BF16), N, K, false, &ad, 1, 1.0f, false, true, &bad, &err);
  });
  const double gbs = 2.0 * 2 * double(N * K) / merge / 1e9;  // W read and written once
  std::printf("%-40s %10.3f %7.0f GB/s %6.2f of copy (target >= 0.8)\n", "lora merge bf16 4096x4096 r=16", merge * 1e3, gbs, gbs / cl.copy_gbs);
}

}  // namespace

int main(int argc, char** argv) { return check_program(argc, argv, "lora kernels", run_checks, run_bench); }
