// The EwKernels loops (elementwise math, dtype widening/narrowing, reduction lanes) over f32 blocks, written
// branch-free so each loop vectorizes. Included by elementwise.cc (baseline x86-64), elementwise_avx2.cc and
// elementwise_avx512.cc; everything has internal linkage and calls no external-linkage inline function
// (see vec_impl.h for why). Each includer defines sqrt_block, widen_f16 and narrow_f16 with its ISA's
// instructions.
//
// Accuracy (f32 results, against the exact value of the f32 input): +, -, *, /, sqrt, neg, abs, square,
// reciprocal, min/max, clamp and comparisons are correctly rounded; log, pow, sin and cos are evaluated in
// double (relative error ~1e-15) and rounded once, so they are within one rounding (0.5 ulp + 1e-15);
// exp is vmath.h's vexpf (about 1 ulp); tanh is a Cephes polynomial below 0.625 (about 1 ulp) and the
// double formula above; sigmoid and rsqrt take a few roundings (<= 3 ulps).
#pragma once
#include "elementwise.h"
#include "vmath.h"

namespace peft {
namespace {

// Per ISA (defined by the includer): y = sqrt(x); f16 bits <-> f32.
void sqrt_block(const float* x, float* y, int64_t n);
void widen_f16(const uint16_t* src, float* dst, int64_t n);
void narrow_f16(const float* src, uint16_t* dst, int64_t n);

constexpr float kInfF = __builtin_inff();
constexpr float kNaNF = __builtin_nanf("");
constexpr double kInfD = __builtin_inf();
constexpr double kRound52 = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds a double to an integer

inline uint32_t fbits(float f) { return __builtin_bit_cast(uint32_t, f); }
inline float bitsf(uint32_t u) { return __builtin_bit_cast(float, u); }
inline uint64_t dbits(double d) { return __builtin_bit_cast(uint64_t, d); }
inline double bitsd(uint64_t u) { return __builtin_bit_cast(double, u); }
inline float fabs_f(float x) { return bitsf(fbits(x) & 0x7fffffffu); }
// All ones where c holds; a where the mask is set, else b.
inline uint32_t mask_of(bool c) { return 0u - static_cast<uint32_t>(c); }
inline float msel(uint32_t m, float a, float b) { return bitsf((fbits(a) & m) | (fbits(b) & ~m)); }
// |a| with the sign of s
inline float copysign_f(float a, float s) { return bitsf((fbits(a) & 0x7fffffffu) | (fbits(s) & 0x80000000u)); }

// ---- dtype conversion ----

inline float bf16_widen(uint16_t h) { return bitsf(static_cast<uint32_t>(h) << 16); }
// Round to nearest even; NaN becomes a quiet NaN of the same sign (as dtype.h's f32_to_bf16), branch-free.
inline uint16_t bf16_narrow(float f) {
  uint32_t u = fbits(f);
  uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t q = (u >> 16) | 0x40u;
  uint32_t m = 0u - static_cast<uint32_t>((u & 0x7fffffffu) > 0x7f800000u);
  return static_cast<uint16_t>((q & m) | (r & ~m));
}

void widen_impl(const uint16_t* src, DType dt, float* dst, int64_t n) {
  if (dt == DType::BF16) {
    for (int64_t i = 0; i < n; i++) dst[i] = bf16_widen(src[i]);
  } else {
    widen_f16(src, dst, n);
  }
}

void narrow_impl(const float* src, uint16_t* dst, DType dt, int64_t n) {
  if (dt == DType::BF16) {
    for (int64_t i = 0; i < n; i++) dst[i] = bf16_narrow(src[i]);
  } else {
    narrow_f16(src, dst, n);
  }
}

// ---- scalar math on vector lanes ----

// ln(x) for a positive, finite, normal double: x = 2^e m with m in [√½, √2), ln m = 2 atanh(s),
// s = (m - 1)/(m + 1), |s| <= 0.1716, by its series to s^19 (truncation < 1e-15 relative). Other inputs
// give garbage that callers replace.
inline double vlog_pos(double x) {
  uint64_t u = dbits(x);
  double m = bitsd((u & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  // the biased exponent as a double without an int64 -> double conversion (AVX2 lacks one)
  double e = (bitsd(0x4330000000000000ull | (u >> 52)) - 4503599627370496.0) - 1023.0;
  double d = 1.4142135623730951 - m;  // negative when m > √2
  m = vsel_neg(d, m * 0.5, m);
  e = vsel_neg(d, e + 1.0, e);
  double s = (m - 1.0) / (m + 1.0), z = s * s;
  double p = 1.0 / 19;
  p = p * z + 1.0 / 17;
  p = p * z + 1.0 / 15;
  p = p * z + 1.0 / 13;
  p = p * z + 1.0 / 11;
  p = p * z + 1.0 / 9;
  p = p * z + 1.0 / 7;
  p = p * z + 1.0 / 5;
  p = p * z + 1.0 / 3;
  double lm = 2.0 * s + 2.0 * s * (z * p);
  // fdlibm's ln2 split: e * hi is exact
  return e * 0.6931471803691238 + (lm + e * 1.9082149292705877e-10);
}

inline float vlogf(float x) {
  float y = static_cast<float>(vlog_pos(static_cast<double>(x)));  // f32 subnormals are normal doubles
  y = vsel(x == 0.0f, -kInfF, y);
  y = vsel(x < 0.0f, kNaNF, y);
  y = vsel(x == kInfF, kInfF, y);
  return vsel(x == x, y, x);
}

// x^p with C99 pow's special cases (pow(x, 0) = 1 and pow(1, p) = 1 even for NaN; a negative finite base
// with a non-integer exponent is NaN; signs of zero and infinite bases by the exponent's parity).
inline float vpowf(float x, float p) {
  double l = vlog_pos(static_cast<double>(fabs_f(x)));
  double t = static_cast<double>(p) * l;
  t = vsel_neg(t + 110.0, -110.0, t);
  t = vsel_neg(100.0 - t, 100.0, t);
  // Degree 12 (truncation < 1e-14): every f32 result, normal or subnormal, comes out of the final rounding.
  float res = static_cast<float>(vexp_reduced<12>(t));
  // p integer? odd? (every float >= 2^23 is an integer, every one >= 2^24 even). The conditions are
  // combined as 32-bit masks: with bools (&&, ||, even & and |) GCC 12 leaves the loop scalar when p varies.
  const float ap = fabs_f(p), ax = fabs_f(x);
  const float tt = ap + 8388608.0f;
  const uint32_t small = mask_of(ap < 8388608.0f);
  const uint32_t is_int = ~small | mask_of(tt - 8388608.0f == ap);
  const uint32_t odd = (small & is_int & (0u - (fbits(tt) & 1u))) | (~small & mask_of(ap < 16777216.0f) & (0u - (fbits(ap) & 1u)));
  const uint32_t zero = mask_of(ax == 0.0f), inf = mask_of(ax == kInfF);
  const uint32_t to_inf = (zero & mask_of(p < 0.0f)) | (inf & mask_of(p > 0.0f));
  res = msel(zero | inf, msel(to_inf, kInfF, 0.0f), res);
  res = msel((0u - (fbits(x) >> 31)) & odd, -res, res);
  res = msel(mask_of(x < 0.0f) & mask_of(x > -kInfF) & ~is_int, kNaNF, res);
  res = msel(mask_of(x != x) | mask_of(p != p), kNaNF, res);
  res = msel(mask_of(p == 0.0f) | mask_of(x == 1.0f), 1.0f, res);
  return msel(mask_of(x == -1.0f) & mask_of(ap == kInfF), 1.0f, res);
}

// tanh: x + x³ P(x²) below 0.625 (Cephes tanhf), (1 - e^{-2|x|}) / (1 + e^{-2|x|}) in double above.
inline float vtanhf(float x) {
  float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  float small = p * z * x + x;
  double y = -2.0 * static_cast<double>(fabs_f(x));
  y = vsel_neg(y + 700.0, -700.0, y);
  double e = vexp_neg(y);
  float big = static_cast<float>((1.0 - e) / (1.0 + e));
  float r = copysign_f(vsel(fabs_f(x) < 0.625f, small, big), x);  // odd: tanh(-0) = -0
  return vsel(x == x, r, x);
}

// sin (cos_shift 0) or cos (cos_shift 1) for |x| <= 1.5e6: x = k π/2 + r in double (fdlibm's 33-bit π/2
// head times k < 2^20 is exact), Taylor polynomials of sin r and cos r on |r| <= π/4 (truncation < 1e-16),
// and the quadrant k mod 4 picks and signs one. Larger and non-finite x are redone by the caller.
inline float vsincosf(float x, uint64_t cos_shift) {
  double xd = x;
  double tq = xd * 0.63661977236758134308 + kRound52;
  double k = tq - kRound52;
  double r = xd - k * 1.57079632673412561417e+00;
  r = r - k * 6.07710050650619224932e-11;
  double z = r * r;
  double ps = -1.0 / 1307674368000.0;
  ps = ps * z + 1.0 / 6227020800.0;
  ps = ps * z - 1.0 / 39916800.0;
  ps = ps * z + 1.0 / 362880.0;
  ps = ps * z - 1.0 / 5040.0;
  ps = ps * z + 1.0 / 120.0;
  ps = ps * z - 1.0 / 6.0;
  double s = r + r * (z * ps);
  double pc = 1.0 / 20922789888000.0;
  pc = pc * z - 1.0 / 87178291200.0;
  pc = pc * z + 1.0 / 479001600.0;
  pc = pc * z - 1.0 / 3628800.0;
  pc = pc * z + 1.0 / 40320.0;
  pc = pc * z - 1.0 / 720.0;
  pc = pc * z + 1.0 / 24.0;
  double c = 1.0 - 0.5 * z + (z * z) * pc;
  uint64_t q = dbits(tq) + cos_shift;  // the low bits of tq's mantissa are k mod 4
  uint64_t swap = 0ull - (q & 1ull);
  uint64_t v = ((dbits(s) & ~swap) | (dbits(c) & swap)) ^ ((q & 2ull) << 62);
  return static_cast<float>(bitsd(v));
}

constexpr float kSinCosDirect = 1.5e6f;

void sincos_block(const float* x, float* y, int64_t n, bool is_cos) {
  const uint64_t shift = is_cos ? 1 : 0;
  for (int64_t i = 0; i < n; i++) y[i] = vsincosf(x[i], shift);
  if (!is_cos)  // sin(±0) = ±0 (the polynomial's rounding gives +0 for both)
    for (int64_t i = 0; i < n; i++) y[i] = vsel(x[i] == 0.0f, x[i], y[i]);
  for (int64_t i = 0; i < n; i++) {
    if (!(fabs_f(x[i]) <= kSinCosDirect)) {
      double xd = x[i];
      y[i] = static_cast<float>(is_cos ? __builtin_cos(xd) : __builtin_sin(xd));
    }
  }
}

// ---- the EwKernels entries ----

void unary_impl(EwOp op, const float* x, float* y, int64_t n, const float* s) {
  switch (op) {
    case EwOp::Neg:
      for (int64_t i = 0; i < n; i++) y[i] = -x[i];
      break;
    case EwOp::Exp:
      for (int64_t i = 0; i < n; i++) y[i] = vexpf(x[i]);
      break;
    case EwOp::Log:
      for (int64_t i = 0; i < n; i++) y[i] = vlogf(x[i]);
      break;
    case EwOp::Sqrt:
      sqrt_block(x, y, n);
      break;
    case EwOp::Rsqrt:
      sqrt_block(x, y, n);
      for (int64_t i = 0; i < n; i++) y[i] = 1.0f / y[i];
      break;
    case EwOp::Abs:
      for (int64_t i = 0; i < n; i++) y[i] = fabs_f(x[i]);
      break;
    case EwOp::Sign:  // NaN stays NaN (NumPy's sign), ±0 gives +0
      for (int64_t i = 0; i < n; i++) {
        float v = vsel(x[i] > 0.0f, 1.0f, vsel(x[i] < 0.0f, -1.0f, 0.0f));
        y[i] = vsel(x[i] == x[i], v, x[i]);
      }
      break;
    case EwOp::Reciprocal:
      for (int64_t i = 0; i < n; i++) y[i] = 1.0f / x[i];
      break;
    case EwOp::Square:
      for (int64_t i = 0; i < n; i++) y[i] = x[i] * x[i];
      break;
    case EwOp::Tanh:
      for (int64_t i = 0; i < n; i++) y[i] = vtanhf(x[i]);
      break;
    case EwOp::Sigmoid:
      for (int64_t i = 0; i < n; i++) {
        float sg, c;
        vsigmoid_pair(x[i], sg, c);
        y[i] = sg;
      }
      break;
    case EwOp::Sin:
    case EwOp::Cos:
      sincos_block(x, y, n, op == EwOp::Cos);
      break;
    case EwOp::Clamp: {  // NaN bounds arrive as ∓inf; NaN x fails both comparisons and stays
      const float lo = s[0], hi = s[1];
      for (int64_t i = 0; i < n; i++) {
        float v = vsel(x[i] < lo, lo, x[i]);
        y[i] = vsel(v > hi, hi, v);
      }
      break;
    }
    case EwOp::PowScalar: {
      const float p = s[0];
      for (int64_t i = 0; i < n; i++) y[i] = vpowf(x[i], p);
      break;
    }
    case EwOp::Affine: {
      const float a = s[0], b = s[1];
      for (int64_t i = 0; i < n; i++) y[i] = a * x[i] + b;
      break;
    }
    case EwOp::Step:
      for (int64_t i = 0; i < n; i++) y[i] = vsel(x[i] > 0.0f, 1.0f, 0.0f);
      break;
    default:
      break;
  }
}

void binary_impl(EwOp op, const float* a, const float* b, float* y, int64_t n, const float* s) {
  switch (op) {
    case EwOp::Add:
      for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
      break;
    case EwOp::Sub:
      for (int64_t i = 0; i < n; i++) y[i] = a[i] - b[i];
      break;
    case EwOp::Mul:
      for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i];
      break;
    case EwOp::Div:
      for (int64_t i = 0; i < n; i++) y[i] = a[i] / b[i];
      break;
    case EwOp::Pow:
      for (int64_t i = 0; i < n; i++) y[i] = vpowf(a[i], b[i]);
      break;
    case EwOp::Maximum:  // NaN in either propagates
      for (int64_t i = 0; i < n; i++) {
        float m = vsel(a[i] > b[i], a[i], b[i]);
        m = vsel(b[i] == b[i], m, b[i]);
        y[i] = vsel(a[i] == a[i], m, a[i]);
      }
      break;
    case EwOp::Minimum:
      for (int64_t i = 0; i < n; i++) {
        float m = vsel(a[i] < b[i], a[i], b[i]);
        m = vsel(b[i] == b[i], m, b[i]);
        y[i] = vsel(a[i] == a[i], m, a[i]);
      }
      break;
    case EwOp::Eq:
      for (int64_t i = 0; i < n; i++) y[i] = vsel(a[i] == b[i], 1.0f, 0.0f);
      break;
    case EwOp::Ne:
      for (int64_t i = 0; i < n; i++) y[i] = vsel(a[i] != b[i], 1.0f, 0.0f);
      break;
    case EwOp::Gt:
      for (int64_t i = 0; i < n; i++) y[i] = vsel(a[i] > b[i], 1.0f, 0.0f);
      break;
    case EwOp::Ge:
      for (int64_t i = 0; i < n; i++) y[i] = vsel(a[i] >= b[i], 1.0f, 0.0f);
      break;
    case EwOp::Lt:
      for (int64_t i = 0; i < n; i++) y[i] = vsel(a[i] < b[i], 1.0f, 0.0f);
      break;
    case EwOp::Le:
      for (int64_t i = 0; i < n; i++) y[i] = vsel(a[i] <= b[i], 1.0f, 0.0f);
      break;
    case EwOp::Axpby: {
      const float al = s[0], be = s[1];
      for (int64_t i = 0; i < n; i++) y[i] = al * a[i] + be * b[i];
      break;
    }
    default:
      break;
  }
}

void where_impl(const float* c, const float* a, const float* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = vsel(c[i] != 0.0f, a[i], b[i]);
}

// ---- reductions: 16 f64 lanes indexed by position, folded in a fixed tree ----

constexpr int kRLanes = 16;

inline double fold_lanes(double* v) {
  for (int w = kRLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; j++) v[j] += v[j + w];
  return v[0];
}

double sum_impl(const float* x, int64_t n) {
  double v[kRLanes] = {};
  int64_t i = 0;
  for (; i + kRLanes <= n; i += kRLanes)
    for (int j = 0; j < kRLanes; j++) v[j] += static_cast<double>(x[i + j]);
  for (int j = 0; i + j < n; j++) v[j] += static_cast<double>(x[i + j]);
  return fold_lanes(v);
}

double sum_sq_dev_impl(const float* x, int64_t n, double mean) {
  double v[kRLanes] = {};
  int64_t i = 0;
  for (; i + kRLanes <= n; i += kRLanes)
    for (int j = 0; j < kRLanes; j++) {
      double d = static_cast<double>(x[i + j]) - mean;
      v[j] += d * d;
    }
  for (int j = 0; i + j < n; j++) {
    double d = static_cast<double>(x[i + j]) - mean;
    v[j] += d * d;
  }
  return fold_lanes(v);
}

// Four rows per pass over acc (their sum in f64 is exact but for the rarest exponent spreads).
void col_sum_impl(const float* const* rows, int nr, int64_t n, double* acc) {
  const float *r0 = rows[0], *r1 = rows[nr > 1 ? 1 : 0], *r2 = rows[nr > 2 ? 2 : 0], *r3 = rows[nr > 3 ? 3 : 0];
  switch (nr) {
    case 4:
      for (int64_t i = 0; i < n; i++)
        acc[i] += (static_cast<double>(r0[i]) + static_cast<double>(r1[i])) + (static_cast<double>(r2[i]) + static_cast<double>(r3[i]));
      break;
    case 3:
      for (int64_t i = 0; i < n; i++)
        acc[i] += (static_cast<double>(r0[i]) + static_cast<double>(r1[i])) + static_cast<double>(r2[i]);
      break;
    case 2:
      for (int64_t i = 0; i < n; i++) acc[i] += static_cast<double>(r0[i]) + static_cast<double>(r1[i]);
      break;
    default:
      for (int64_t i = 0; i < n; i++) acc[i] += static_cast<double>(r0[i]);
      break;
  }
}

inline double sq_dev(float x, double m) {
  double d = static_cast<double>(x) - m;
  return d * d;
}

void col_sum_sq_dev_impl(const float* const* rows, int nr, const double* mean, int64_t n, double* acc) {
  const float *r0 = rows[0], *r1 = rows[nr > 1 ? 1 : 0], *r2 = rows[nr > 2 ? 2 : 0], *r3 = rows[nr > 3 ? 3 : 0];
  switch (nr) {
    case 4:
      for (int64_t i = 0; i < n; i++)
        acc[i] += (sq_dev(r0[i], mean[i]) + sq_dev(r1[i], mean[i])) + (sq_dev(r2[i], mean[i]) + sq_dev(r3[i], mean[i]));
      break;
    case 3:
      for (int64_t i = 0; i < n; i++) acc[i] += (sq_dev(r0[i], mean[i]) + sq_dev(r1[i], mean[i])) + sq_dev(r2[i], mean[i]);
      break;
    case 2:
      for (int64_t i = 0; i < n; i++) acc[i] += sq_dev(r0[i], mean[i]) + sq_dev(r1[i], mean[i]);
      break;
    default:
      for (int64_t i = 0; i < n; i++) acc[i] += sq_dev(r0[i], mean[i]);
      break;
  }
}

// Does v displace the current best b? Strictly better, or the first NaN.
inline bool beats(float v, float b, bool want_max) {
  bool better = want_max ? v > b : v < b;
  return better || (v != v && b == b);
}

// Lanes see increasing positions, so a strict comparison keeps each lane's first occurrence; the fold then
// prefers the earlier position among equal values (and among NaNs).
void arg_extreme_piece(const float* x, int64_t n, bool want_max, float& best, int64_t& at) {
  if (n < kRLanes) {
    best = x[0], at = 0;
    for (int64_t i = 1; i < n; i++)
      if (beats(x[i], best, want_max)) best = x[i], at = i;
    return;
  }
  float b[kRLanes];
  int32_t p[kRLanes];
  for (int j = 0; j < kRLanes; j++) b[j] = x[j], p[j] = j;
  int64_t i = kRLanes;
  if (want_max) {
    for (; i + kRLanes <= n; i += kRLanes)
      for (int j = 0; j < kRLanes; j++) {
        float v = x[i + j];
        bool c = (v > b[j]) | ((v != v) & (b[j] == b[j]));
        int32_t m = -static_cast<int32_t>(c);
        b[j] = vsel(c, v, b[j]);
        p[j] = (static_cast<int32_t>(i + j) & m) | (p[j] & ~m);
      }
  } else {
    for (; i + kRLanes <= n; i += kRLanes)
      for (int j = 0; j < kRLanes; j++) {
        float v = x[i + j];
        bool c = (v < b[j]) | ((v != v) & (b[j] == b[j]));
        int32_t m = -static_cast<int32_t>(c);
        b[j] = vsel(c, v, b[j]);
        p[j] = (static_cast<int32_t>(i + j) & m) | (p[j] & ~m);
      }
  }
  for (int j = 0; i + j < n; j++)
    if (beats(x[i + j], b[j], want_max)) b[j] = x[i + j], p[j] = static_cast<int32_t>(i + j);
  best = b[0], at = p[0];
  for (int j = 1; j < kRLanes; j++) {
    bool take = beats(b[j], best, want_max) ||
                ((b[j] == best || (b[j] != b[j] && best != best)) && p[j] < at);
    if (take) best = b[j], at = p[j];
  }
}

void arg_extreme_impl(const float* x, int64_t n, bool want_max, float* best, int64_t* at) {
  constexpr int64_t kPiece = int64_t(1) << 30;  // positions fit the int32 lanes
  float bb = 0;
  int64_t ba = -1;
  for (int64_t o = 0; o < n; o += kPiece) {
    int64_t len = n - o < kPiece ? n - o : kPiece;
    float v;
    int64_t a;
    arg_extreme_piece(x + o, len, want_max, v, a);
    if (ba < 0 || beats(v, bb, want_max)) bb = v, ba = o + a;
  }
  *best = bb, *at = ba;
}

void col_extreme_impl(const float* x, int64_t n, bool want_max, int64_t row, float* best, int64_t* at) {
  if (want_max) {
    for (int64_t i = 0; i < n; i++) {
      bool c = (x[i] > best[i]) | ((x[i] != x[i]) & (best[i] == best[i]));
      best[i] = vsel(c, x[i], best[i]);
      at[i] = c ? row : at[i];
    }
  } else {
    for (int64_t i = 0; i < n; i++) {
      bool c = (x[i] < best[i]) | ((x[i] != x[i]) & (best[i] == best[i]));
      best[i] = vsel(c, x[i], best[i]);
      at[i] = c ? row : at[i];
    }
  }
}

constexpr EwKernels kEwKernels = {
    unary_impl,   binary_impl,      where_impl,          widen_impl,       narrow_impl,          sum_impl,
    sum_sq_dev_impl, col_sum_impl, col_sum_sq_dev_impl, arg_extreme_impl, col_extreme_impl,
};

}  // namespace
}  // namespace peft
