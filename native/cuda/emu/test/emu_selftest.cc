// Self-test of the CUDA emulator and the CUDA kernels run through it: every kernel against a plain CPU
// reference (double where cheap) on odd sizes, in forward, reverse and random scheduling order, plus the
// emulator's own behaviour (emu_runtime_test.cc). Exits non-zero on any failure.
// Build and run: scripts/cuda-emu-test.sh
#include <algorithm>
#include <atomic>
#include <thread>

#include "selftest_util.h"

using namespace selftest;
namespace ops = peft::cuda_emu;

namespace {

constexpr int F32 = 0, F16 = 1, BF16 = 2;
constexpr int kFloatDts[] = {F32, F16, BF16};
constexpr int64_t kSizes[] = {0, 1, 7, 17, 33, 127, 1000, 4099};

// ---- f16 / bf16 rounding against an independent reference ---------------------------------------------
// Nearest value with `mant` fraction bits and normal exponents >= emin (subnormals below), ties to even,
// computed in double; past max_finite it is infinity (the halfway point rounds up, max's mantissa is odd).
double ref_round(double v, int mant, int emin, double max_finite) {
  if (std::isnan(v) || std::isinf(v) || v == 0) return v;
  int e = std::max(std::ilogb(v), emin);
  double ulp = std::ldexp(1.0, e - mant);
  double r = std::nearbyint(std::fabs(v) / ulp) * ulp;  // the division is exact: ulp is a power of two
  return std::copysign(r > max_finite ? INFINITY : r, v);
}
double ref_f16(float f) { return ref_round(f, 10, -14, 65504.0); }
double ref_bf16(float f) { return ref_round(f, 7, -126, std::ldexp(255.0, 120)); }

bool same_value(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

// ---- TF32 rounding (nvcuda::wmma::__float_to_tf32, the hardware's cvt.rna.tf32.f32) ---------------------------
// The nearest value with 10 fraction bits at f32's exponents (subnormals at f32's spacing scaled up),
// ties away from zero, computed in double; past f32's range it is infinity.
double ref_tf32(float f) {
  if (std::isnan(f) || std::isinf(f) || f == 0) return f;
  int e = std::max(std::ilogb(f), -126);
  double ulp = std::ldexp(1.0, e - 10);
  double r = std::floor(std::fabs(double(f)) / ulp + 0.5) * ulp;  // + 0.5 then floor: ties go up in magnitude
  return std::copysign(r > 0x1.fffffep127 ? INFINITY : r, double(f));
}

void test_tf32_rounding() {
  const double u = std::ldexp(1.0, -10);
  // Hand-picked: ties (away from zero, where nearest-even would differ), either side of a tie, subnormals.
  const std::pair<float, double> hand[] = {
      {float(1 + u / 2), 1 + u}, {float(-(1 + u / 2)), -(1 + u)}, {float(1 + 1.5 * u), 1 + 2 * u},
      {float(1 + u / 2 - std::ldexp(1.0, -23)), 1}, {float(1 + u / 2 + std::ldexp(1.0, -23)), 1 + u},
      {float(std::ldexp(1.0, -137)), std::ldexp(1.0, -136)}, {float(std::ldexp(3.0, -138)), std::ldexp(1.0, -136)},
      {0.f, 0.0}, {-0.f, -0.0}, {1.f, 1.0}};
  for (auto [in, want] : hand)
    CHECK(same_value(nvcuda::wmma::__float_to_tf32(in), want), "__float_to_tf32(%a) = %a, expected %a", in, nvcuda::wmma::__float_to_tf32(in), want);
  std::mt19937 rng(11);
  int bad = 0;
  for (int i = 0; i < 400000; ++i) {
    float f = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    if (i % 2) f = std::bit_cast<float>((std::bit_cast<uint32_t>(f) & ~0x1fffu) | 0x1000u);  // an exact tie
    if (!same_value(nvcuda::wmma::__float_to_tf32(f), ref_tf32(f)) && bad++ < 5)
      CHECK(false, "__float_to_tf32(%a) = %a, expected %a", f, nvcuda::wmma::__float_to_tf32(f), ref_tf32(f));
  }
  CHECK(bad == 0, "%d tf32 roundings differ from the reference", bad);
}

void test_half_rounding() {
  std::mt19937 rng(7);
  std::vector<float> probes = {0.f, -0.f, 1.f, -1.f, INFINITY, -INFINITY, NAN, 65504.f, 65519.f, 65520.f, 1e-8f,
                               0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-26f, 3e38f, 0x1.fffffep127f, 1e-40f, 0x1p-126f};
  // Midpoints between neighbours (exactly representable in f32): the tie cases.
  for (int i = 0; i < 4000; ++i) {
    uint16_t h = static_cast<uint16_t>(rng() & 0x7bff);
    probes.push_back((peft::f16_to_f32(h) + peft::f16_to_f32(h + 1)) / 2);
    uint16_t b = static_cast<uint16_t>(rng() & 0x7f7f);
    probes.push_back((peft::bf16_to_f32(b) + peft::bf16_to_f32(b + 1)) / 2);
  }
  for (int i = 0; i < 400000; ++i) probes.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  std::normal_distribution<float> nd(0.f, 100.f);
  for (int i = 0; i < 400000; ++i) probes.push_back(nd(rng));
  int bad16 = 0, badbf = 0;
  for (float f : probes) {
    if (!same_value(__half2float(__float2half(f)), ref_f16(f)) && bad16++ < 5)
      CHECK(false, "__float2half(%a) = %a, expected %a", f, __half2float(__float2half(f)), ref_f16(f));
    if (!same_value(__bfloat162float(__float2bfloat16(f)), ref_bf16(f)) && badbf++ < 5)
      CHECK(false, "__float2bfloat16(%a) = %a, expected %a", f, __bfloat162float(__float2bfloat16(f)), ref_bf16(f));
  }
  CHECK(bad16 == 0, "%d f16 roundings differ from the reference", bad16);
  CHECK(badbf == 0, "%d bf16 roundings differ from the reference", badbf);
  // Every f16 / bf16 value survives the trip through f32 bit for bit.
  int trip = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    float f16 = __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
    float bf = __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(h)));
    if (!std::isnan(f16) && __half_as_ushort(__float2half(f16)) != h) ++trip;
    if (!std::isnan(bf) && __bfloat16_as_ushort(__float2bfloat16(bf)) != h) ++trip;
    if (std::isnan(f16) != std::isnan(__half2float(__float2half(f16)))) ++trip;
  }
  CHECK(trip == 0, "%d 16-bit values do not round-trip through f32", trip);
}

// ---- convert / copy ---------------------------------------------------------------------------------------
Bytes conversion_source(int dt, size_t n, std::mt19937& rng) {
  const float specials[] = {0.f, -0.f, 1.f, -2.5f, INFINITY, -INFINITY, NAN, 65504.f, 65520.f, 1e-7f, 0x1p-25f,
                            3e38f, 1e-40f, 0x1.002p0f, 0x1.0018p0f};
  Bytes b(n * dsize(dt));
  std::normal_distribution<float> nd(0.f, 30.f);
  for (size_t i = 0; i < n; ++i) {
    float v = i % 3 == 0 ? specials[(i / 3) % std::size(specials)]
              : i % 3 == 1 ? nd(rng)
                           : std::bit_cast<float>(static_cast<uint32_t>(rng()));
    put(b, dt, i, v);
  }
  return b;
}

void test_convert() {
  std::mt19937 rng(11);
  for (int sdt : kFloatDts)
    for (int ddt : kFloatDts) {
      if (sdt == ddt) continue;
      for (int64_t n : kSizes) {
        Bytes src = conversion_source(sdt, n, rng);
        DevBuf ds(src.size()), dd(n * dsize(ddt));
        ds.upload(src.data(), src.size());
        std::string err;
        int rc = ops::cuda_convert(ds.p, sdt, dd.p, ddt, n, &err);
        CHECK(rc == 0, "convert %s->%s n=%lld: %s", dt_name(sdt), dt_name(ddt), (long long)n, err.c_str());
        Bytes got(n * dsize(ddt)), want(n * dsize(ddt));
        dd.download(got.data(), got.size());
        int bad = 0;
        for (int64_t i = 0; i < n; ++i) {
          double w = put(want, ddt, i, static_cast<float>(get(src, sdt, i)));
          if (!same_value(get(got, ddt, i), w) && bad++ < 3)
            CHECK(false, "convert %s->%s n=%lld [%lld]: got %a want %a", dt_name(sdt), dt_name(ddt), (long long)n,
                  (long long)i, get(got, ddt, i), w);
        }
        CHECK(bad == 0, "convert %s->%s n=%lld: %d wrong", dt_name(sdt), dt_name(ddt), (long long)n, bad);
      }
    }
}

// Same-dtype copies of every dtype, at offsets that change the word size the copy kernel picks; the bytes
// around the destination range must stay untouched.
void test_copy() {
  std::mt19937 rng(13);
  for (int dt = 0; dt < peft::kNumDTypes; ++dt)
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{127}, int64_t{1000}})
      for (int off : {0, 1, 3}) {
        size_t es = dsize(dt), bytes = n * es, pad = 64;
        Bytes src(bytes + pad), dst(bytes + 2 * pad);
        for (auto& c : src) c = static_cast<uint8_t>(rng());
        for (auto& c : dst) c = 0x5a;
        DevBuf ds(src.size()), dd(dst.size());
        ds.upload(src.data(), src.size());
        dd.upload(dst.data(), dst.size());
        std::string err;
        int rc = ops::cuda_convert(ds.as<uint8_t>() + off * es, dt, dd.as<uint8_t>() + pad + 2 * off * es, dt, n, &err);
        CHECK(rc == 0, "copy %s n=%lld: %s", dt_name(dt), (long long)n, err.c_str());
        Bytes got(dst.size());
        dd.download(got.data(), got.size());
        std::memcpy(&dst[pad + 2 * off * es], &src[off * es], bytes);
        CHECK(got == dst, "copy %s n=%lld off=%d: bytes differ", dt_name(dt), (long long)n, off);
      }
}

// ---- add / scale ------------------------------------------------------------------------------------------
// The f32 result of one or two roundings, then one rounding to dt:
// |y - exact| <= rel*|terms| (f32 steps) + u_dt*(|exact| + rel*|terms|) + half the smallest subnormal.
bool within(double got, double exact, double terms, double rel, int dt) {
  double f32err = rel * terms;
  double tol = f32err + (dt == F32 ? 0.0 : unit_roundoff(dt) * (std::fabs(exact) + f32err)) + half_min_subnormal(dt);
  return std::fabs(got - exact) <= tol;
}

void test_add() {
  std::mt19937 rng(17);
  for (int dt : kFloatDts)
    for (int64_t n : kSizes)
      for (bool in_place : {false, true}) {
        Bytes a = random_values(dt, n, rng, -4, 4), b = random_values(dt, n, rng, -4, 4);
        DevBuf da(a.size()), db(b.size()), dout(a.size());
        da.upload(a.data(), a.size());
        db.upload(b.data(), b.size());
        void* out = in_place ? da.p : dout.p;
        std::string err;
        CHECK(ops::cuda_add(da.p, db.p, out, dt, n, &err) == 0, "add %s n=%lld: %s", dt_name(dt), (long long)n, err.c_str());
        Bytes got(a.size());
        ops::cuda_memcpy_d2h(got.data(), out, got.size(), nullptr);
        int bad = 0;
        for (int64_t i = 0; i < n; ++i) {
          double x = get(a, dt, i), y = get(b, dt, i);
          if (!within(get(got, dt, i), x + y, std::fabs(x + y), kU32, dt) && bad++ < 3)
            CHECK(false, "add %s [%lld]: %a + %a = %a", dt_name(dt), (long long)i, x, y, get(got, dt, i));
        }
        CHECK(bad == 0, "add %s n=%lld in_place=%d: %d wrong", dt_name(dt), (long long)n, in_place, bad);
      }
}

void test_scale() {
  std::mt19937 rng(19);
  const float cases[][2] = {{2.5f, 0.f}, {-0.75f, 1.f}, {1.f, -3.f}, {0.f, 0.5f}};
  for (int dt : kFloatDts)
    for (int64_t n : kSizes)
      for (auto [alpha, beta] : cases)
        for (bool alias : {false, true}) {
          Bytes x = random_values(dt, n, rng, -4, 4), y = random_values(dt, n, rng, -4, 4);
          DevBuf dx(x.size()), dy(y.size());
          dx.upload(x.data(), x.size());
          // beta == 0 must not read y: leave it as cudaMalloc's NaN poison.
          if (beta != 0.f || alias) dy.upload(y.data(), y.size());
          const void* xp = alias ? dy.p : dx.p;
          const Bytes& xv = alias ? y : x;
          std::string err;
          CHECK(ops::cuda_scale(alpha, xp, beta, dy.p, dt, n, &err) == 0, "scale %s: %s", dt_name(dt), err.c_str());
          Bytes got(y.size());
          dy.download(got.data(), got.size());
          int bad = 0;
          for (int64_t i = 0; i < n; ++i) {
            double ax = alpha * get(xv, dt, i), by = beta == 0.f ? 0.0 : beta * get(y, dt, i);
            // alpha*x rounds once in f32, the fma once more.
            if (!within(get(got, dt, i), ax + by, std::fabs(ax) + std::fabs(by), 2.01 * kU32, dt) && bad++ < 3)
              CHECK(false, "scale %s [%lld]: %g*x + %g*y = %a, want %a", dt_name(dt), (long long)i, alpha, beta,
                    get(got, dt, i), ax + by);
          }
          CHECK(bad == 0, "scale %s n=%lld alpha=%g beta=%g alias=%d: %d wrong", dt_name(dt), (long long)n, alpha, beta,
                alias, bad);
        }
}

// ---- GEMM ---------------------------------------------------------------------------------------------------
struct GemmCase {
  int64_t M, N, K;
  int in_dt, out_dt, bias_dt;  // bias_dt < 0: no bias
  bool misalign;               // x starts one element past an allocation boundary (no vector loads)
};

void run_gemm(const GemmCase& c, std::mt19937& rng) {
  const int64_t M = c.M, N = c.N, K = c.K;
  Bytes x = random_values(c.in_dt, M * K + 1, rng), w = random_values(c.in_dt, N * K, rng);
  Bytes bias = c.bias_dt >= 0 ? random_values(c.bias_dt, N, rng) : Bytes();
  DevBuf dx(x.size()), dw(std::max<size_t>(w.size(), 1)), dbias(std::max<size_t>(bias.size(), 1)),
      dy(std::max<int64_t>(M * N, 1) * dsize(c.out_dt));
  dx.upload(x.data(), x.size());
  dw.upload(w.data(), w.size());
  if (!bias.empty()) dbias.upload(bias.data(), bias.size());
  const size_t xoff = c.misalign ? 1 : 0;
  std::string err;
  int rc = ops::cuda_gemm_nt(dx.as<uint8_t>() + xoff * dsize(c.in_dt), dw.p, c.bias_dt >= 0 ? dbias.p : nullptr, dy.p,
                             c.in_dt, std::max(c.bias_dt, 0), c.out_dt, M, N, K, &err);
  char what[160];
  snprintf(what, sizeof what, "gemm M=%lld N=%lld K=%lld %s->%s bias=%s%s", (long long)M, (long long)N, (long long)K,
           dt_name(c.in_dt), dt_name(c.out_dt), c.bias_dt >= 0 ? dt_name(c.bias_dt) : "none", c.misalign ? " misaligned" : "");
  CHECK(rc == 0, "%s: %s", what, err.c_str());
  Bytes y(M * N * dsize(c.out_dt));
  dy.download(y.data(), y.size());
  int bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        double p = get(x, c.in_dt, xoff + m * K + k) * get(w, c.in_dt, n * K + k);  // exact in double
        ref += p;
        mag += std::fabs(p);
      }
      if (c.bias_dt >= 0) {
        ref += get(bias, c.bias_dt, n);
        mag += std::fabs(get(bias, c.bias_dt, n));
      }
      // Products of f16/bf16 values are exact in f32, so the error is that of K+1 f32 additions (the bias
      // is the last), then the rounding to the output dtype.
      double got = get(y, c.out_dt, m * N + n);
      if (!within(got, ref, mag, gamma32(K + 1), c.out_dt) && bad++ < 3)
        CHECK(false, "%s: y[%lld][%lld] = %.9g, reference %.9g (sum|x*w| %.3g)", what, (long long)m, (long long)n, got,
              ref, mag);
    }
  CHECK(bad == 0, "%s: %d wrong", what, bad);
}

void test_gemm() {
  std::mt19937 rng(23);
  // Every dtype combination on two shapes (one with vector loads, K % 8 == 0), then odd shapes that do not
  // divide the 64x64x32 tiles with the combinations taken in turn.
  int shape_no = 0;
  auto pick = [&](int64_t M, int64_t N, int64_t K, bool all, bool misalign = false) {
    int i = 0;
    for (int in : {F16, BF16})
      for (int out : kFloatDts)
        for (int b : {-1, F32, in}) {
          if (all || i == (shape_no * 7) % 18) run_gemm({M, N, K, in, out, b, misalign}, rng);
          ++i;
        }
    ++shape_no;
  };
  pick(17, 33, 7, true);
  pick(65, 130, 200, true);
  const int64_t shapes[][3] = {{1, 1, 1},   {7, 17, 33},   {33, 7, 17},  {127, 127, 127}, {1, 127, 17}, {33, 1, 127},
                               {16, 16, 16}, {64, 64, 64}, {127, 33, 128}, {200, 3, 40},   {0, 17, 33},  {17, 0, 33},
                               {17, 33, 0},  {0, 0, 0}};
  for (auto& s : shapes) pick(s[0], s[1], s[2], false);
  pick(33, 17, 64, false, true);
}

// ---- argument checking of the host API ----------------------------------------------------------------------
void test_api_errors() {
  std::string err;
  bool avail = false, emulated = false;
  CHECK(ops::cuda_runtime_state(&avail, &emulated, &err) == 0 && avail && emulated, "runtime state: %s", err.c_str());
  DevBuf a(64), b(64);
  std::vector<float> host(16, 1.f);
  CHECK(ops::cuda_convert(a.p, 9, b.p, 0, 4, &err) == 1 && contains(err, "invalid dtype"), "%s", err.c_str());
  CHECK(ops::cuda_convert(a.p, 3, b.p, 0, 4, &err) == 1 && contains(err, "unsupported conversion i8 -> f32"), "%s", err.c_str());
  CHECK(ops::cuda_convert(a.p, 0, b.p, 1, -1, &err) == 1, "negative n accepted");
  CHECK(ops::cuda_convert(nullptr, 0, b.p, 1, 4, &err) == 1 && contains(err, "null"), "%s", err.c_str());
  CHECK(ops::cuda_convert(a.p, 0, a.as<uint8_t>() + 2, 1, 4, &err) == 1 && contains(err, "overlap"), "%s", err.c_str());
  CHECK(ops::cuda_add(a.p, b.p, a.as<uint8_t>() + 4, 0, 4, &err) == 1 && contains(err, "overlap"), "%s", err.c_str());
  CHECK(ops::cuda_add(a.p, b.p, b.p, 4, 4, &err) == 1 && contains(err, "u8"), "%s", err.c_str());
  // A pointer that is not device memory reaches the kernel and is caught there, without crashing.
  int rc = ops::cuda_add(host.data(), b.p, a.p, 0, 16, &err);
  CHECK(rc == 700 && contains(err, "not in any"), "host pointer: rc=%d %s", rc, err.c_str());
  rc = ops::cuda_scale(1.f, a.p, 0.f, b.p, 0, 17, &err);  // one element past both buffers
  CHECK(rc == 700 && contains(err, "past the end"), "overrun: rc=%d %s", rc, err.c_str());
  CHECK(ops::cuda_scale(1.f, a.p, 0.f, b.p, 0, 16, &err) == 0, "after an error: %s", err.c_str());
  CHECK(ops::cuda_gemm_nt(a.p, b.p, nullptr, host.data(), 0, 0, 0, 2, 2, 2, &err) == 1 && contains(err, "f16 or bf16"), "%s", err.c_str());
  CHECK(ops::cuda_gemm_nt(a.p, b.p, b.p, host.data(), 1, 3, 0, 2, 2, 2, &err) == 1 && contains(err, "bias dtype"), "%s", err.c_str());
  CHECK(ops::cuda_gemm_nt(a.p, b.p, nullptr, host.data(), 1, 0, 0, -1, 2, 2, &err) == 1 && contains(err, "invalid shape"), "%s", err.c_str());
  CHECK(ops::cuda_gemm_nt(a.p, b.p, nullptr, host.data(), 1, 0, 0, 1, int64_t{1} << 23, 1, &err) == 1 && contains(err, "grid"), "%s", err.c_str());
  CHECK(ops::cuda_gemm_nt(a.p, b.p, nullptr, a.p, 1, 0, 0, 2, 2, 2, &err) == 1 && contains(err, "overlaps"), "%s", err.c_str());
  CHECK(ops::cuda_gemm_nt(nullptr, nullptr, nullptr, a.p, 1, 0, 0, 2, 2, 0, &err) == 0, "K=0 with null x/w: %s", err.c_str());
  CHECK(ops::cuda_free(host.data(), &err) == 1 && contains(err, "not returned by cudaMalloc"), "%s", err.c_str());
  CHECK(ops::cuda_memcpy_h2d(host.data(), host.data(), 4, &err) == 1 && contains(err, "not inside one device allocation"), "%s", err.c_str());
  CHECK(ops::cuda_memcpy_d2h(host.data(), a.p, 65, &err) == 1, "d2h past the end accepted");
  CHECK(ops::cuda_synchronize(&err) == 0, "synchronize: %s", err.c_str());
}

// Element counts beyond the grid cap (8192 blocks x 256 threads) take the grid-stride loop.
void test_grid_stride() {
  const int64_t n = 8192 * 256 + 4097;
  std::vector<float> src(n);
  for (int64_t i = 0; i < n; ++i) src[i] = static_cast<float>(i % 2047) * 0.25f - 100.f;
  DevBuf ds(n * 4), dd(n * 2);
  ds.upload(src.data(), n * 4);
  std::string err;
  CHECK(ops::cuda_convert(ds.p, F32, dd.p, F16, n, &err) == 0, "%s", err.c_str());
  auto got = dd.get<uint16_t>(n);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += got[i] != peft::f32_to_f16(src[i]);
  CHECK(bad == 0, "grid-stride convert: %lld wrong", (long long)bad);
}

// Host threads launching at the same time: launches are serialised, and each thread sees only its own
// errors (one thread overruns a buffer every other call while the other must always succeed).
void test_host_threads() {
  std::atomic<int> bad{0};
  auto worker = [&](int id) {
    std::mt19937 rng(100 + id);
    for (int it = 0; it < 12; ++it) {
      const int64_t n = 1 + rng() % 3000;
      Bytes a = random_values(F32, n, rng), b = random_values(F32, n, rng);
      DevBuf da(a.size()), db(b.size()), dout(a.size());
      da.upload(a.data(), a.size());
      db.upload(b.data(), b.size());
      std::string err;
      const bool overrun = id == 1 && it % 2 == 1;
      int rc = ops::cuda_add(da.p, db.p, dout.p, F32, n + (overrun ? 1 : 0), &err);
      if (overrun) {
        bad += rc != 700;
        continue;
      }
      Bytes got(a.size());
      dout.download(got.data(), got.size());
      for (int64_t i = 0; i < n && rc == 0; ++i) rc = get(got, F32, i) == float(get(a, F32, i) + get(b, F32, i)) ? 0 : -1;
      bad += rc != 0;
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  CHECK(bad == 0, "%d calls from two host threads went wrong", bad.load());
}

}  // namespace

int main() {
  std::printf("CUDA emulator self-test\n");
  section("f16/bf16 rounding vs double reference", test_half_rounding);
  section("tf32 rounding (cvt.rna) vs double reference", test_tf32_rounding);
  for (emu::Order o : {emu::Order::Forward, emu::Order::Reverse, emu::Order::Random}) {
    emu::set_order(o);
    std::printf("scheduling order: %s\n", emu::order_name(o));
    section("convert f32/f16/bf16", test_convert);
    section("copy (every dtype, misaligned)", test_copy);
    section("add", test_add);
    section("scale (axpby)", test_scale);
    section("gemm_nt (wmma)", test_gemm);
    section("host API argument checks", test_api_errors);
    run_runtime_tests();
  }
  emu::set_order(emu::Order::Forward);
  section("grid-stride convert (2.1M elements)", test_grid_stride);
  section("launches from two host threads", test_host_threads);
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
