// The LLM.int8 and IA3 kernels' standalone check (no Node; scripts/gpu-check.sh builds and runs it): the kernels
// of int8_matmul.cu and ia3_scale.cu against plain host references on odd shapes, and, with --bench on a GPU,
// the int8 GEMM at 4096³ against the int8 mma ceiling (ceilings.cuh) and against the f16 tensor-core GEMM.
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "../ia3_ops.h"
#include "../int8_ops.h"
#include "ceilings.cuh"
#include "check_util.cuh"

using peft::DType;

namespace {

constexpr float kDequant = 6.200124e-05f, kInv127 = 7.874015718698502e-3f;  // bitsandbytes' constants

float f16_round(float v) { return peft::f16_to_f32(peft::f32_to_f16(v)); }

// Host reference of the row quantiser (bitsandbytes' int8_vectorwise_quant): values rounded to f16; the absmax
// leaves out |v| >= threshold (when > 0); those elements and masked columns quantise to 0.
float quant_row(const float* v, int64_t K, float threshold, const std::vector<char>& mask, int8_t* q) {
  float amax = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float a = std::fabs(f16_round(v[k]));
    if (!(threshold > 0 && a >= threshold)) amax = std::max(amax, a);
  }
  const float s = amax > 0 ? 127.f / amax : 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const float x = f16_round(v[k]);
    const float r = std::nearbyint(x * s);
    const bool skip = (!mask.empty() && mask[size_t(k)]) || (threshold > 0 && std::fabs(x) >= threshold);
    q[k] = skip ? 0 : int8_t(std::max(-127.f, std::min(127.f, r)));
  }
  return amax;
}

// x (M, K) with planted outliers: every 5th column from 2 holds values up to 4 in every 3rd row.
std::vector<float> x_with_outliers(int64_t M, int64_t K, uint32_t seed) {
  std::vector<float> x = rand_f32(size_t(M * K), seed);
  for (int64_t m = 0; m < M; m += 3)
    for (int64_t k = 2; k < K; k += 5) x[size_t(m * K + k)] *= 4;
  return x;
}

// CB/SCB from f32 or bf16 weights (bf16: the host reference reads the same rounded values).
void check_quantize(int64_t N, int64_t K, bool bf16) {
  std::vector<float> w = rand_f32(size_t(N * K), 41, -3, 3);
  const std::vector<uint16_t> wb = to_bf16(w);
  if (bf16)
    for (size_t i = 0; i < w.size(); ++i) w[i] = peft::bf16_to_f32(wb[i]);
  std::vector<int8_t> cb(w.size());
  std::vector<float> scb(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) scb[size_t(n)] = quant_row(&w[size_t(n * K)], K, 0, {}, &cb[size_t(n * K)]);
  Buf dw32(w), dw16(wb), dcb(w.size()), dscb(size_t(N) * 4);
  std::string err;
  int64_t bad = 0;
  must(api::cuda_int8_quantize(bf16 ? dw16.p : dw32.p, int(bf16 ? DType::BF16 : DType::F32), N, K, static_cast<int8_t*>(dcb.p),
                               static_cast<float*>(dscb.p), &bad, &err),
       err, "cuda_int8_quantize");
  check(dcb.get<int8_t>() == cb && dscb.get<float>() == scb && bad == -1,
        std::string("int8 quantize ") + (bf16 ? "bf16 " : "f32 ") + std::to_string(N) + "x" + std::to_string(K));
}

// y = x·dequant(CB)ᵀ + bias with outliers, on the __dp4a (path 1) or tensor-core (path 2) kernel: the int32
// products exactly, y within a few f32 roundings of the host's value (same operations, same order).
void check_linear(int64_t M, int64_t N, int64_t K, float threshold, int path) {
  const std::vector<float> x = x_with_outliers(M, K, 42), w = rand_f32(size_t(N * K), 43), bias = rand_f32(size_t(N), 44);
  std::vector<int8_t> cb(w.size()), xq(x.size());
  std::vector<float> scb(static_cast<size_t>(N)), scx(static_cast<size_t>(M));
  for (int64_t n = 0; n < N; ++n) scb[size_t(n)] = quant_row(&w[size_t(n * K)], K, 0, {}, &cb[size_t(n * K)]);
  std::vector<char> mask;
  if (threshold > 0) {
    mask.assign(size_t(K), 0);
    for (size_t i = 0; i < x.size(); ++i) mask[i % size_t(K)] |= std::fabs(f16_round(x[i])) >= threshold;
  }
  for (int64_t m = 0; m < M; ++m) scx[size_t(m)] = quant_row(&x[size_t(m * K)], K, threshold, mask, &xq[size_t(m * K)]);
  Buf dx(x), dcb(cb), dscb(scb), db(bias), dy(size_t(M * N) * 4), draw(size_t(M * N) * 4);
  peft::CudaInt8Linear a;
  a.M = M, a.N = N, a.K = K, a.x = dx.p, a.x_dt = int(DType::F32), a.cb = static_cast<const int8_t*>(dcb.p);
  a.scb = static_cast<const float*>(dscb.p), a.bias = db.p, a.bias_dt = int(DType::F32), a.threshold = threshold;
  a.y = dy.p, a.y_dt = int(DType::F32), a.path = path;
  std::string err;
  must(api::cuda_int8_linear(a, &err), err, "cuda_int8_linear");
  a.raw = static_cast<int32_t*>(draw.p);
  must(api::cuda_int8_linear(a, &err), err, "cuda_int8_linear (raw)");
  const std::vector<int32_t> raw = draw.get<int32_t>();
  const std::vector<float> y = dy.get<float>();
  int bad_raw = 0, bad_y = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int32_t acc = 0;
      double outl = 0, mag = 1;
      for (int64_t k = 0; k < K; ++k) {
        acc += int32_t(xq[size_t(m * K + k)]) * cb[size_t(n * K + k)];
        if (!mask.empty() && mask[size_t(k)]) {
          const double t = double(x[size_t(m * K + k)]) * (float(cb[size_t(n * K + k)]) * scb[size_t(n)] * kInv127);
          outl += t, mag += std::fabs(t);
        }
      }
      bad_raw += raw[size_t(m * N + n)] != acc;
      const double want = double(float(acc) * (scx[size_t(m)] * scb[size_t(n)]) * kDequant) + bias[size_t(n)] + outl;
      bad_y += !(std::fabs(y[size_t(m * N + n)] - want) <= 1e-5 * (mag + std::fabs(want)));
    }
  const std::string what = "int8 linear " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) +
                           (path == 1 ? " dp4a" : " wmma") + " threshold " + std::to_string(threshold);
  check(bad_raw == 0, what + ": " + std::to_string(bad_raw) + " int32 products off");
  check(bad_y == 0, what + ": " + std::to_string(bad_y) + " outputs off");
}

// dx = dy·(CB·SCB/127) against double.
void check_grad_input(int64_t M, int64_t N, int64_t K) {
  const std::vector<float> dy = rand_f32(size_t(M * N), 45), w = rand_f32(size_t(N * K), 46);
  std::vector<int8_t> cb(w.size());
  std::vector<float> scb(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) scb[size_t(n)] = quant_row(&w[size_t(n * K)], K, 0, {}, &cb[size_t(n * K)]);
  Buf ddy(dy), dcb(cb), dscb(scb), ddx(size_t(M * K) * 4);
  std::string err;
  must(api::cuda_int8_linear_grad_input(ddy.p, int(DType::F32), M, static_cast<const int8_t*>(dcb.p), static_cast<const float*>(dscb.p), N, K,
                                        ddx.p, int(DType::F32), &err),
       err, "cuda_int8_linear_grad_input");
  const std::vector<float> dx = ddx.get<float>();
  int bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      double s = 0, mag = 0;
      for (int64_t n = 0; n < N; ++n) {
        const double t = double(dy[size_t(m * N + n)]) * scb[size_t(n)] / 127.0 * cb[size_t(n * K + k)];
        s += t, mag += std::fabs(t);
      }
      bad += !(std::fabs(dx[size_t(m * K + k)] - s) <= 4 * (N + 4) * 6e-8 * mag + 1e-30);
    }
  check(bad == 0, "int8 grad input " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + ": " + std::to_string(bad) + " off");
}

// IA3 forward on either side, W (N, K): y = ((x ⊙ l_in)·Wᵀ + b) ⊙ l_out against double.
void check_ia3(int64_t M, int64_t N, int64_t K, bool input_side) {
  const std::vector<float> x = rand_f32(size_t(M * K), 47), w = rand_f32(size_t(N * K), 48), b = rand_f32(size_t(N), 49);
  const std::vector<float> l = rand_f32(size_t(input_side ? K : N), 50, 0, 2);
  Buf dx(x), dw(w), db(b), dl(l), dy(size_t(M * N) * 4);
  peft::CudaDense d;
  d.M = M, d.N = N, d.K = K, d.x = dx.p, d.W = dw.p, d.bias = db.p;
  std::string err;
  must(api::cuda_ia3_forward(d, static_cast<const float*>(dl.p), input_side, dy.p, int(DType::F32), nullptr, 0, &err), err, "cuda_ia3_forward");
  const std::vector<float> y = dy.get<float>();
  int bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = b[size_t(n)], mag = 1;
      for (int64_t k = 0; k < K; ++k) {
        const double t = double(x[size_t(m * K + k)]) * (input_side ? l[size_t(k)] : 1) * w[size_t(n * K + k)];
        s += t, mag += std::fabs(t);
      }
      const double sc = input_side ? 1 : l[size_t(n)];
      bad += !(std::fabs(y[size_t(m * N + n)] - s * sc) <= 4 * (K + 4) * 6e-8 * mag * 2);
    }
  check(bad == 0, std::string("ia3 forward (") + (input_side ? "input" : "output") + " side) " + std::to_string(M) + "x" +
                      std::to_string(N) + "x" + std::to_string(K) + ": " + std::to_string(bad) + " off");
}

void run_checks() {
  for (bool bf16 : {false, true})
    for (auto [N, K] : {std::pair<int64_t, int64_t>{1, 1}, {7, 17}, {33, 127}, {0, 5}}) check_quantize(N, K, bf16);
  for (float threshold : {0.f, 2.f})
    for (int path : {1, 2})
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 17, 33}, {8, 33, 127}, {3, 5, 0}}) check_linear(M, N, K, threshold, path);
  for (float threshold : {0.f, 2.f})
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{17, 33, 7}, {33, 127, 64}, {127, 16, 129}, {0, 4, 4}}) check_linear(M, N, K, threshold, 2);
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 17, 33}, {33, 127, 7}}) check_grad_input(M, N, K);
  for (bool input_side : {true, false})
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 17, 33}, {33, 7, 127}}) check_ia3(M, N, K, input_side);
}

void run_bench() {
  const int64_t n = 4096;
  const double int8_mma_tops = api::measure_ceilings().int8_tops;
  std::printf("ceiling: int8 mma %.1f TOP/s\n", int8_mma_tops);
  std::string err;
  Buf x(size_t(n * n) * 2), w(size_t(n * n)), scb(size_t(n) * 4), y(size_t(n * n) * 2);
  api::cuda_memset(x.p, 0, x.bytes, &err);
  api::cuda_memset(w.p, 1, w.bytes, &err);
  api::cuda_memset(scb.p, 0, scb.bytes, &err);
  peft::CudaInt8Linear a;
  a.M = a.N = a.K = n, a.x = x.p, a.x_dt = int(DType::F16), a.cb = static_cast<const int8_t*>(w.p);
  a.scb = static_cast<const float*>(scb.p), a.y = y.p, a.y_dt = int(DType::F16);
  const double si8 = seconds_of(3, [&] { api::cuda_int8_linear(a, &err); });
  const double sf16 = seconds_of(3, [&] { api::cuda_gemm_nt(x.p, x.p, nullptr, y.p, int(DType::F16), 0, int(DType::F16), n, n, n, &err); });
  const double tops = 2.0 * double(n) * n * n / si8 / 1e12;
  std::printf("%-28s %10.3f %9.1f TO %8.2f  (f16 GEMM %.3f ms: int8 %.2fx faster)\n", "int8 linear (wmma s8)", si8 * 1e3, tops,
              tops / int8_mma_tops, sf16 * 1e3, sf16 / si8);
}

}  // namespace

int main(int argc, char** argv) { return check_program(argc, argv, "int8/IA3 kernels", run_checks, run_bench); }
