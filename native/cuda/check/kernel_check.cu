// The CUDA kernels' standalone test-and-bench program (no Node): every training kernel against a plain
// double-precision host reference on odd shapes, then, with --bench on a GPU, the device's ceilings (copy
// bandwidth, an FMA loop, an mma loop) measured here and each kernel's time and ratio to them.
//
// Built two ways from this one file: by nvcc against the real kernels (scripts/gpu-check.sh, the CMake
// project in this folder), and by g++ against the emulator (scripts/gpu-check.sh --emu), so the checks
// themselves are exercised on machines without a GPU.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "../../core/dtype.h"
#include "../../core/philox.h"
#include "../compat.cuh"
#include "../cuda_ops.h"
#include "ceilings.cuh"

namespace api = peft::PEFT_CUDA_NS;
using peft::DType;

namespace {

int g_checks = 0, g_failures = 0;
void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok && ++g_failures <= 40) std::printf("  FAIL %s\n", what.c_str());
}
void must(int rc, const std::string& err, const char* what) {
  if (rc != 0) {
    std::printf("  FAIL %s: %s\n", what, err.c_str());
    ++g_failures;
  }
}

// Device memory holding a host vector's bytes.
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t n) : bytes(n) {
    std::string err;
    must(api::cuda_malloc(&p, n ? n : 1, &err), err, "cuda_malloc");
  }
  template <class T>
  explicit Buf(const std::vector<T>& v) : Buf(v.size() * sizeof(T)) {
    std::string err;
    must(api::cuda_memcpy_h2d(p, v.data(), bytes, &err), err, "cuda_memcpy_h2d");
  }
  ~Buf() { api::cuda_free(p, nullptr); }
  Buf(const Buf&) = delete;
  template <class T>
  std::vector<T> get() const {
    std::vector<T> v(bytes / sizeof(T));
    std::string err;
    must(api::cuda_memcpy_d2h(v.data(), p, bytes, &err), err, "cuda_memcpy_d2h");
    return v;
  }
};

std::vector<float> rand_f32(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}
std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = peft::f32_to_bf16(v[i]);
  return o;
}

// ---- GEMM: C = A·B (+ bias) for every transpose: f32 SIMT, TF32, and bf16 on the x·Wᵀ tensor-core kernel
// (mode 2) or the strided one (mode 3, every transpose) --------------------------------------------------
void check_gemm(int64_t M, int64_t N, int64_t K, bool ta, bool tb, int mode /*0 f32, 1 tf32, 2 bf16 nt, 3 bf16*/) {
  std::vector<float> a = rand_f32(size_t(M * K), 1), b = rand_f32(size_t(K * N), 2), bias = rand_f32(size_t(N), 3);
  const bool bf16 = mode >= 2;
  if (bf16) {  // the reference uses the rounded values
    for (float& x : a) x = peft::bf16_to_f32(peft::f32_to_bf16(x));
    for (float& x : b) x = peft::bf16_to_f32(peft::f32_to_bf16(x));
  }
  if (mode == 2) ta = false, tb = true;
  // A(m, k) at m*rs + k*cs; B(k, n) likewise.
  const int64_t ars = ta ? 1 : K, acs = ta ? M : 1, brs = tb ? 1 : N, bcs = tb ? K : 1;
  Buf da = bf16 ? Buf(to_bf16(a)) : Buf(a), db = bf16 ? Buf(to_bf16(b)) : Buf(b), dbias(bias), dc(size_t(M * N) * 4);
  peft::CudaGemm g;
  g.M = M, g.N = N, g.K = K;
  const int in_dt = bf16 ? int(DType::BF16) : int(DType::F32);
  g.A = {da.p, in_dt, ars, acs};
  g.B = {db.p, in_dt, brs, bcs};
  g.C = dc.p, g.c_dt = int(DType::F32), g.ldc = N;
  g.bias = dbias.p, g.bias_dt = int(DType::F32);
  g.allow_tf32 = mode == 1;
  std::string err;
  must(api::cuda_gemm(g, &err), err, "cuda_gemm");
  std::vector<float> c = dc.get<float>();
  // f32 accumulation of K products: within 2·K·u·Σ|a||b|; TF32 inputs add 2^-10 relative per product.
  const double rel = (mode == 1 ? std::ldexp(1.0, -10) : 0.0) + 2.0 * double(K + 4) * std::ldexp(1.0, -24);
  int bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias[size_t(n)], mag = std::fabs(bias[size_t(n)]);
      for (int64_t k = 0; k < K; ++k) {
        double p = double(a[size_t(m * ars + k * acs)]) * b[size_t(k * brs + n * bcs)];
        s += p, mag += std::fabs(p);
      }
      bad += std::fabs(c[size_t(m * N + n)] - s) > rel * mag + 1e-30;
    }
  char what[160];
  std::snprintf(what, sizeof what, "gemm %s M=%lld N=%lld K=%lld transA=%d transB=%d: %d elements off", mode == 0 ? "f32" : mode == 1 ? "tf32" : mode == 2 ? "bf16 x·Wᵀ" : "bf16",
                (long long)M, (long long)N, (long long)K, int(ta), int(tb), bad);
  check(bad == 0, what);
}

// ---- element-wise and row kernels ---------------------------------------------------------------------
void check_dropout(int64_t n, double p, uint64_t seed, uint64_t stream) {
  std::vector<float> x = rand_f32(size_t(n), 4);
  Buf dx(x), dy(size_t(n) * 4);
  std::string err;
  must(api::cuda_dropout(dx.p, int(DType::F32), dy.p, int(DType::F32), n, p, seed, stream, &err), err, "cuda_dropout");
  std::vector<float> y = dy.get<float>();
  const peft::RngKey key = peft::rng_key(seed, stream);
  const float keep_from = float(std::ceil(p * 16777216.0) / 16777216.0), scale = float(1.0 / (1.0 - p));
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const peft::Philox4x32 r = peft::philox4x32_10(uint64_t(i / 4), key.k0, key.k1);
    const float want = x[size_t(i)] * (peft::u32_to_unit(r.v[i % 4]) >= keep_from ? scale : 0.f);
    bad += std::memcmp(&want, &y[size_t(i)], 4) != 0;
  }
  check(bad == 0, "dropout n=" + std::to_string(n) + ": " + std::to_string(bad) + " elements differ from the host's Philox mask");
}

void check_log_softmax(int64_t rows, int64_t cols) {
  std::vector<float> x = rand_f32(size_t(rows * cols), 5, -8.f, 8.f);
  Buf dx(x), dy(x.size() * 4);
  std::string err;
  must(api::cuda_log_softmax(dx.p, 0, dy.p, 0, rows, cols, &err), err, "cuda_log_softmax");
  std::vector<float> y = dy.get<float>();
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, double(x[size_t(r * cols + c)]));
    for (int64_t c = 0; c < cols; ++c) s += std::exp(x[size_t(r * cols + c)] - m);
    for (int64_t c = 0; c < cols; ++c) {
      const double want = x[size_t(r * cols + c)] - m - std::log(s);
      bad += std::fabs(y[size_t(r * cols + c)] - want) > double(cols + 8) * std::ldexp(1.0, -24) * (1 + std::fabs(want));
    }
  }
  check(bad == 0, "log_softmax " + std::to_string(rows) + "x" + std::to_string(cols) + ": " + std::to_string(bad) + " off");
}

void check_cross_entropy(int64_t rows, int64_t classes, double eps) {
  std::vector<float> z = rand_f32(size_t(rows * classes), 6, -5.f, 5.f);
  std::vector<int64_t> t(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) t[size_t(r)] = r % 5 == 1 ? -100 : (r * 7) % classes;
  Buf dz(z), dt(t), dg(z.size() * 4);
  std::string err;
  must(api::cuda_memset(dg.p, 0, dg.bytes, &err), err, "cuda_memset");
  double loss = 0;
  must(api::cuda_cross_entropy(dz.p, 0, dt.p, int(DType::I64), rows, classes, -100, eps, dg.p, 0, &loss, &err), err,
       "cuda_cross_entropy");
  double want = 0, count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (t[size_t(r)] == -100) continue;
    double m = -INFINITY, s = 0, all = 0;
    for (int64_t c = 0; c < classes; ++c) m = std::max(m, double(z[size_t(r * classes + c)]));
    for (int64_t c = 0; c < classes; ++c) s += std::exp(z[size_t(r * classes + c)] - m);
    const double lse = m + std::log(s);
    for (int64_t c = 0; c < classes; ++c) all += lse - z[size_t(r * classes + c)];
    want += (1 - eps) * (lse - z[size_t(r * classes + t[size_t(r)])]) + eps / double(classes) * all;
    count += 1;
  }
  want /= count;
  check(std::fabs(loss - want) <= double(classes + 8) * std::ldexp(1.0, -24) * (std::fabs(want) + 1 + 10 * eps * double(classes)),
        "cross_entropy " + std::to_string(rows) + "x" + std::to_string(classes) + " loss " + std::to_string(loss) + " vs " + std::to_string(want));
}

void check_sum_rows(int64_t rows, int64_t cols) {
  std::vector<float> x = rand_f32(size_t(rows * cols), 7);
  Buf dx(x), dout(size_t(cols) * 4);
  std::string err;
  must(api::cuda_sum_rows(dx.p, 0, rows, cols, dout.p, 0, false, &err), err, "cuda_sum_rows");
  std::vector<float> o = dout.get<float>();
  int bad = 0;
  for (int64_t c = 0; c < cols; ++c) {
    double s = 0, mag = 0;
    for (int64_t r = 0; r < rows; ++r) s += x[size_t(r * cols + c)], mag += std::fabs(x[size_t(r * cols + c)]);
    bad += std::fabs(o[size_t(c)] - s) > double(rows + 2) * std::ldexp(1.0, -24) * mag;
  }
  check(bad == 0, "sum_rows " + std::to_string(rows) + "x" + std::to_string(cols) + ": " + std::to_string(bad) + " off");
}

void run_checks() {
  for (int mode = 0; mode < 4; ++mode)
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 17, 33}, {33, 7, 127}, {127, 129, 17}, {0, 5, 5}, {3, 4, 0}})
      for (int t = 0; t < (mode == 2 ? 1 : 4); ++t) check_gemm(M, N, K, t & 1, t & 2, mode);
  for (int64_t n : {1, 7, 4099}) check_dropout(n, 0.3, 11, 5);
  for (auto [r, c] : {std::pair<int64_t, int64_t>{1, 1}, {7, 17}, {3, 1000}}) {
    check_log_softmax(r, c);
    check_sum_rows(r * 11, c);
  }
  for (double eps : {0.0, 0.1}) check_cross_entropy(33, 17, eps);
}

// ---- bench ------------------------------------------------------------------------------------------
double seconds_of(int reps, const std::function<void()>& f) {
  f();  // warm-up
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

void run_bench(int64_t n) {
  std::string err;
  const api::Ceilings c = api::measure_ceilings();
  std::printf("ceilings: copy %.0f GB/s, f32 FMA %.1f TFLOP/s, f16 mma %.1f TFLOP/s\n", c.copy_gbs, c.fma_tflops, c.mma_tflops);
  std::printf("%-28s %10s %12s %8s\n", "kernel", "ms", "rate", "ratio");
  auto gemm = [&](int mode) {
    Buf a(size_t(n * n) * 4), b(size_t(n * n) * 4), cc(size_t(n * n) * 4);
    api::cuda_memset(a.p, 0, a.bytes, &err);
    api::cuda_memset(b.p, 0, b.bytes, &err);
    peft::CudaGemm g;
    g.M = g.N = g.K = n;
    const int dt = mode == 2 ? int(DType::BF16) : 0;
    g.A = {a.p, dt, n, 1};
    g.B = {b.p, dt, 1, n};  // B(k, n) = W(n, k): the x·Wᵀ layout
    g.C = cc.p, g.ldc = n, g.allow_tf32 = mode == 1;
    const double s = seconds_of(3, [&] { api::cuda_gemm(g, &err); });
    const double tf = 2.0 * double(n) * n * n / s / 1e12, peak = mode == 0 ? c.fma_tflops : c.mma_tflops * (mode == 1 ? 0.5 : 1);
    std::printf("%-28s %10.3f %9.1f TF %8.2f\n", mode == 0 ? "gemm f32 (SIMT)" : mode == 1 ? "gemm tf32 (tensor cores)" : "gemm bf16 (tensor cores)",
                s * 1e3, tf, tf / peak);
  };
  for (int mode = 0; mode < 3; ++mode) gemm(mode);
  const int64_t e = int64_t(1) << 26;
  Buf x(size_t(e) * 4), y(size_t(e) * 4);
  api::cuda_memset(x.p, 0, x.bytes, &err);
  api::cuda_memset(y.p, 0, y.bytes, &err);
  const double s = seconds_of(5, [&] { api::cuda_axpy(y.p, 0, x.p, 0, 0.5f, e, &err); });
  const double gbs = 3.0 * 4 * double(e) / s / 1e9;  // read x, read and write y
  std::printf("%-28s %10.3f %8.0f GB/s %8.2f\n", "axpy f32 (2^26)", s * 1e3, gbs, gbs / c.copy_gbs);
}

}  // namespace

int main(int argc, char** argv) {
  bool bench = false;
  for (int i = 1; i < argc; ++i) bench |= std::string(argv[i]) == "--bench";
  bool available = false, emulated = false;
  std::string reason;
  api::cuda_runtime_state(&available, &emulated, &reason);
  std::printf("cuda kernels: %s (%s)\n", emulated ? "emulated on the CPU" : available ? "GPU" : "no GPU", reason.c_str());
  if (!available) return 2;
  run_checks();
  std::printf("checks: %d, failures: %d\n", g_checks, g_failures);
  if (bench) {
    if (emulated) std::printf("bench: skipped (emulated; bench/cuda-roofline.mjs gives the figures on paper)\n");
    else run_bench(4096);
  }
  return g_failures == 0 ? 0 : 1;
}
