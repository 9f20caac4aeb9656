// A native smoke test for builds on other architectures: the portable GEMM (f32 and bf16 operands,
// fused rank-R steps), conversions (round half to even), the convolution (im2col, 1x1, depthwise) and the
// thread pool, each against a plain double-precision loop. scripts/cross-check.sh links it with the
// addon's core and CPU sources for arm64 and runs it under qemu-user where present.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cpu/conv2d.h"
#include "cpu/convert.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"

using namespace peft;

namespace {

int failures = 0;

void check(bool ok, const char* what, double got, double want) {
  if (!ok) {
    std::printf("FAIL %s: got %.9g, want %.9g\n", what, got, want);
    failures++;
  }
}

float lcg(uint32_t& s) {
  s = s * 1664525u + 1013904223u;
  return static_cast<float>((s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

std::vector<float> random_vec(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  for (auto& x : v) x = lcg(seed);
  return v;
}

// C = A·Bᵀ + A2·B2ᵀ with B stored (N, K) as a weight, against a double loop; b_dt picks the B dtype.
void gemm_case(int64_t M, int64_t N, int64_t K, int64_t R, DType b_dt) {
  auto A = random_vec(M * K, 1), Bf = random_vec(N * K, 2), A2 = random_vec(M * R + 1, 3), B2 = random_vec(N * R + 1, 4);
  std::vector<uint16_t> Bh(N * K);
  if (b_dt == DType::BF16) {
    convert_cpu(Bf.data(), DType::F32, Bh.data(), DType::BF16, N * K);
    convert_cpu(Bh.data(), DType::BF16, Bf.data(), DType::F32, N * K);  // the values the GEMM sees
  }
  std::vector<float> C(M * N, 7.0f);
  GemmArgs g;
  g.M = M, g.N = N, g.K = K;
  g.A = mat_rows(A.data(), DType::F32, K);
  g.B = mat_cols(b_dt == DType::BF16 ? static_cast<const void*>(Bh.data()) : Bf.data(), b_dt, K);
  g.C = C.data(), g.ldc = N;
  g.R = R, g.A2 = mat_rows(A2.data(), DType::F32, R), g.B2 = mat_cols(B2.data(), DType::F32, R);
  gemm(g);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double want = 0, mag = 0;
      for (int64_t k = 0; k < K; k++) want += double(A[i * K + k]) * Bf[j * K + k], mag += std::fabs(A[i * K + k] * Bf[j * K + k]);
      for (int64_t r = 0; r < R; r++) want += double(A2[i * R + r]) * B2[j * R + r], mag += std::fabs(A2[i * R + r] * B2[j * R + r]);
      // f32 accumulation of K + R products: each step adds at most one rounding of the running magnitude.
      const double tol = (K + R + 2) * 6e-8 * (mag + 1e-30);
      check(std::fabs(C[i * N + j] - want) <= tol, "gemm", C[i * N + j], want);
    }
}

void convert_case() {
  // 1 + 2^-8 lies half-way between two bf16 values: ties go to the even one (1.0); 1 + 3·2^-8 rounds up.
  const float src[4] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, 65504.0f};
  uint16_t h[4];
  float back[4];
  convert_cpu(src, DType::F32, h, DType::BF16, 4);
  convert_cpu(h, DType::BF16, back, DType::F32, 4);
  check(back[0] == 1.0f, "bf16 tie to even", back[0], 1.0f);
  check(back[1] == 1.0f + 4.0f / 256, "bf16 round up", back[1], 1.0f + 4.0f / 256);
  check(back[2] == -2.5f, "bf16 exact", back[2], -2.5f);
  int8_t q[3];
  const float qs[3] = {2.5f, -3.5f, 300.0f};
  convert_cpu(qs, DType::F32, q, DType::I8, 3);
  check(q[0] == 2 && q[1] == -4 && q[2] == 127, "f32 -> i8 (half to even, saturating)", q[0] * 10000 + q[1] * 100 + q[2], 2 * 10000 - 400 + 127);
}

void conv_case(int64_t C, int64_t OC, int64_t G, int64_t K, int64_t stride, int64_t pad) {
  ConvGeom g;
  g.N = 2, g.C = C, g.H = 9, g.W = 7, g.OC = OC, g.KH = K, g.KW = K, g.sh = g.sw = stride, g.ph = g.pw = pad, g.G = G;
  if (!conv_output_size(g)) return;
  auto x = random_vec(g.N * C * g.H * g.W, 5), w = random_vec(OC * g.cg() * K * K, 6), b = random_vec(OC, 7);
  std::vector<float> y(g.N * OC * g.OH * g.OW);
  conv2d_forward_cpu(g, x.data(), DType::F32, w.data(), DType::F32, b.data(), DType::F32, y.data(), DType::F32);
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t o = 0; o < OC; o++)
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          double want = b[o], mag = std::fabs(b[o]);
          const int64_t grp = o / g.ocg();
          for (int64_t c = 0; c < g.cg(); c++)
            for (int64_t kh = 0; kh < K; kh++)
              for (int64_t kw = 0; kw < K; kw++) {
                const int64_t ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                const double p = double(x[((n * C + grp * g.cg() + c) * g.H + ih) * g.W + iw]) * w[((o * g.cg() + c) * K + kh) * K + kw];
                want += p, mag += std::fabs(p);
              }
          const float got = y[((n * OC + o) * g.OH + oh) * g.OW + ow];
          check(std::fabs(got - want) <= (g.kk() + 2) * 6e-8 * (mag + 1e-30), "conv2d", got, want);
        }
}

void pool_case() {
  std::vector<int64_t> hits(1001, 0);
  parallel_for(1001, 7, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; i++) hits[i]++;
  });
  int64_t bad = 0;
  for (auto h : hits) bad += h != 1;
  check(bad == 0, "parallel_for covers each index once", double(bad), 0);
}

}  // namespace

int main() {
  set_num_threads(3);
  for (int64_t m : {1, 7, 33})
    for (int64_t n : {1, 17, 127})
      for (int64_t k : {1, 17, 33}) {
        gemm_case(m, n, k, 0, DType::F32);
        gemm_case(m, n, k, 3, DType::BF16);
      }
  convert_case();
  conv_case(3, 5, 1, 3, 1, 1);   // im2col
  conv_case(4, 6, 1, 1, 1, 0);   // 1x1
  conv_case(6, 6, 6, 3, 2, 1);   // depthwise, strided
  conv_case(4, 6, 2, 3, 1, 0);   // grouped
  pool_case();
  drain_pool();
  std::printf("%s: %d failures\n", failures ? "smoke FAILED" : "smoke ok", failures);
  return failures ? 1 : 0;
}
