// Branch-free exp and erfc that compilers vectorize (libm calls keep loops scalar), accurate to about an
// f32 ulp. Everything here has internal linkage on purpose: the header is compiled once per ISA
// (baseline, *_avx2.cc, *_avx512.cc), and each copy must stay inside the translation unit built with its
// flags, or the linker could hand AVX-512 code to a CPU without it (hence __builtin_bit_cast, not the
// std::bit_cast template).
#pragma once
#include <cstdint>

namespace peft {
namespace {

// c ? a : b through bit masks. Written as a plain conditional, GCC keeps a branch unless the ISA has
// masked operations (it may not evaluate both arms while floating-point traps are observable), and the
// loop stays scalar; as integer masks both arms are always computed and the loop vectorizes.
inline float vsel(bool c, float a, float b) {
  uint32_t m = 0u - static_cast<uint32_t>(c);
  return __builtin_bit_cast(float, (__builtin_bit_cast(uint32_t, a) & m) | (__builtin_bit_cast(uint32_t, b) & ~m));
}
// a where d is negative (sign bit set), else b. A double select from a comparison needs 64-bit mask
// conversions SSE2 lacks; the sign bit shifted down works at every width.
inline double vsel_neg(double d, double a, double b) {
  uint64_t m = 0ull - (__builtin_bit_cast(uint64_t, d) >> 63);
  return __builtin_bit_cast(double, (__builtin_bit_cast(uint64_t, a) & m) | (__builtin_bit_cast(uint64_t, b) & ~m));
}

// e^r for |r| <= ln2/2 after the range reduction: the Cephes expf polynomial (about 1 ulp).
inline float vexp_reduced(float r) {
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

// e^x in f32 for any x: Cody–Waite reduction x = n ln2 + r (|r| <= ln2/2), the Cephes expf polynomial
// (about 1 ulp), and 2^n applied in two halves so results that overflow, underflow or go subnormal come
// out as the rounding of the true value. NaN gives NaN.
inline float vexpf(float x) {
  float xc = vsel(x > -104.0f, x, -104.0f);  // NaN also lands here and is restored at the end
  xc = vsel(xc < 89.0f, xc, 89.0f);
  // Round to nearest integer by adding 1.5 * 2^23 (no libm call, no rounding-mode dependence).
  float t = xc * 1.44269504088896341f + 12582912.0f;
  float n = t - 12582912.0f;
  float r = xc - n * 0.693359375f;   // ln2 high part: 9 significant bits, n * it is exact
  r = r - n * -2.12194440e-4f;       // ln2 low part
  float p = vexp_reduced(r);
  int32_t ni = __builtin_bit_cast(int32_t, t) - 0x4b400000;  // the integer n, read from t's low mantissa bits
  int32_t h = ni >> 1;
  float s1 = __builtin_bit_cast(float, (h + 127) << 23), s2 = __builtin_bit_cast(float, (ni - h + 127) << 23);
  float e = p * s1 * s2;
  return vsel(x == x, e, x);
}

// sigmoid(z) and 1 - sigmoid(z), both from e^-|z|: no cancellation and no inf/inf in either tail.
inline void vsigmoid_pair(float z, float& s, float& c) {
  float e = vexpf(vsel(z < 0, z, -z));
  float r = 1.0f / (1.0f + e);
  float small = e * r;
  s = vsel(z >= 0, r, small);
  c = vsel(z >= 0, small, r);
}

// 1/k! as a double (k! is exact in double up to 22!).
constexpr double inv_factorial(int k) {
  double f = 1.0;
  for (int i = 2; i <= k; i++) f *= i;
  return 1.0 / f;
}

// Horner's rule for the Taylor polynomial of e^r from degree K up to Degree: 1/K! + r (1/(K+1)! + r (...)).
template <int K, int Degree>
inline double exp_taylor(double r) {
  constexpr double c = inv_factorial(K);
  if constexpr (K == Degree) {
    return c;
  } else {
    return exp_taylor<K + 1, Degree>(r) * r + c;
  }
}

// e^t in double for -708 < t < 708 (callers clamp): reduction t = k ln2 + r (|r| <= ln2/2), the Taylor
// polynomial of e^r of the given degree, and 2^k from the exponent bits.
template <int Degree>
inline double vexp_reduced(double t) {
  double tq = t * 1.4426950408889634 + 6755399441055744.0;  // round to nearest via 1.5 * 2^52
  double k = tq - 6755399441055744.0;
  double r = t - k * 0.6931471803691238;  // fdlibm's ln2 split: the high part times k is exact
  r = r - k * 1.9082149292705877e-10;
  double p = exp_taylor<0, Degree>(r);
  int64_t ki = __builtin_bit_cast(int64_t, tq) - __builtin_bit_cast(int64_t, 6755399441055744.0);
  return p * __builtin_bit_cast(double, (ki + 1023) << 52);
}

// e^y in double for -708 < y <= 0 (callers clamp): degree 10, relative error < 3e-12, far below an f32 ulp.
inline double vexp_neg(double y) { return vexp_reduced<10>(y); }

// erfc(z) for z >= 0 as e^{-z²} Q(z): Q = erfc(z) e^{z²} is smooth, fitted by least squares on Chebyshev
// nodes of u = 1/(1 + z/2) over z in [0, 10.1] (relative error 5e-11, checked against mpmath). Beyond
// 10.1, erfc < 1.2e-46 rounds to 0 in f32, which is what it returns. Also hands back e^{-z²}.
inline double verfc_pos(double z, double& exp_neg_z2) {
  double zc = vsel_neg(z - 10.1, z, 10.1);
  double u = 1.0 / (1.0 + 0.5 * zc);
  double s = (u - 0.5826446280991735) * 2.396039603960396;  // u mapped onto [-1, 1]
  static constexpr double kQ[15] = {
      0.33296569903319218,     0.42869649668703858,     0.19586122606704595,    0.046226165469655481,
      -0.0010885653407890995,  -0.0029493456585089734,  8.8561964407663939e-05, 0.00025091078841981768,
      -3.9276595404351034e-05, -2.0134487493323304e-05, 8.7361620988599162e-06, 5.390386523647889e-07,
      -1.2260458808466986e-06, 1.2466033702080745e-07,  8.8259884218693399e-08,
  };
  double q = kQ[14];
  for (int i = 13; i >= 0; i--) q = q * s + kQ[i];
  double e = vexp_neg(-(zc * zc));
  exp_neg_z2 = vsel_neg(z - 10.1, e, 0.0);
  return vsel_neg(z - 10.1, e * q, 0.0);
}

}  // namespace
}  // namespace peft
