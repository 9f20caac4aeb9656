// The VecKernels loops over f32 arrays, written branch-free on vmath.h so each loop vectorizes.
// Included by vec_kernels.cc (baseline x86-64), vec_kernels_avx2.cc and vec_kernels_avx512.cc; internal
// linkage keeps each ISA's copy in its own translation unit; for the same reason nothing here may call an
// external-linkage inline function (a template such as std::min included), whose out-of-line copy the
// linker could share with baseline code. Each includer defines sqrt_block (std::sqrt keeps errno
// semantics, which stops the vectorizer, so the ISA builds use their sqrt instruction).
#pragma once
#include "vec_kernels.h"
#include "vmath.h"

namespace peft {
namespace {

// v[i] = sqrt(v[i]); v[i] >= 0 or NaN.
void sqrt_block(float* v, int64_t n);

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kKappa = 0.044715f;

// erfc(z) for any z, from the z >= 0 form: erfc(-z) = 2 - erfc(z). Also e^{-z²}.
inline double verfc(double z, double& exp_neg_z2) {
  double v = verfc_pos(__builtin_fabs(z), exp_neg_z2);
  return vsel_neg(z, 2.0 - v, v);  // -0 takes this arm too: 2 - erfc(0) = 1 exactly
}

// GELU in double (rounded once to f32): 0.5 x erfc(-x/√2), which keeps full relative accuracy for
// negative x where PyTorch's 1 + erf(x/√2) cancels.
void gelu_fwd(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    double xi = x[i], e;
    y[i] = static_cast<float>(0.5 * xi * verfc(-xi * kInvSqrt2, e));
  }
}

// d/dx GELU = Φ(x) + x φ(x), φ(x) = e^{-x²/2} / √(2π)
void gelu_bwd(const float* x, const float* dy, float* dx, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    double xi = x[i], e;
    double cdf = 0.5 * verfc(-xi * kInvSqrt2, e);
    dx[i] = static_cast<float>(dy[i] * (cdf + xi * (e * kInvSqrt2Pi)));
  }
}

// The tanh form 0.5 x (1 + tanh u), u = √(2/π)(x + 0.044715 x³), as x sigmoid(2u): the same function
// without 1 + tanh cancelling for negative x.
inline float tanh_u(float x) { return kSqrt2OverPi * (x + kKappa * x * x * x); }

void act_forward_impl(Act a, const float* x, float* y, int64_t n) {
  switch (a) {
    case Act::Relu:
      for (int64_t i = 0; i < n; i++) y[i] = vsel(x[i] < 0.0f, 0.0f, x[i]);  // NaN passes through, as in PyTorch
      break;
    case Act::Gelu:
      gelu_fwd(x, y, n);
      break;
    case Act::GeluTanh:
      for (int64_t i = 0; i < n; i++) {
        float s, c;
        vsigmoid_pair(2.0f * tanh_u(x[i]), s, c);
        y[i] = x[i] * s;
      }
      break;
    case Act::Silu:
      for (int64_t i = 0; i < n; i++) {
        float s, c;
        vsigmoid_pair(x[i], s, c);
        y[i] = x[i] * s;
      }
      break;
  }
}

void act_backward_impl(Act a, const float* x, const float* dy, float* dx, int64_t n) {
  switch (a) {
    case Act::Relu:
      for (int64_t i = 0; i < n; i++) {
        dx[i] = vsel(x[i] > 0.0f, dy[i], 0.0f);
      }
      break;
    case Act::Gelu:
      gelu_bwd(x, dy, dx, n);
      break;
    case Act::GeluTanh:
      for (int64_t i = 0; i < n; i++) {
        // d/dx [x sigmoid(2u)] = s + 2x s (1 - s) u'
        float s, c, xi = x[i];
        vsigmoid_pair(2.0f * tanh_u(xi), s, c);
        float du = kSqrt2OverPi * (1.0f + 3.0f * kKappa * xi * xi);
        dx[i] = dy[i] * (s + 2.0f * xi * s * c * du);
      }
      break;
    case Act::Silu:
      for (int64_t i = 0; i < n; i++) {
        float s, c;
        vsigmoid_pair(x[i], s, c);
        dx[i] = dy[i] * (s * (1.0f + x[i] * c));
      }
      break;
  }
}

void exp_shift_impl(const float* x, float a, float b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = vexpf((x[i] - a) - b);
}

void dropout_mask_impl(RngKey key, uint64_t first_block, int64_t blocks, float keep_from, float scale, float* mask) {
  for (int64_t b = 0; b < blocks; b++) {
    Philox4x32 r = philox4x32_10(first_block + b, key.k0, key.k1);
    for (int j = 0; j < 4; j++) mask[b * 4 + j] = vsel(u32_to_unit(r.v[j]) >= keep_from, scale, 0.0f);
  }
}

// AdamW on f32 in the order PyTorch's tensor ops apply it:
//   param.mul_(1 - lr * wd); exp_avg.lerp_(grad, 1 - b1); exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
//   denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps); param.addcdiv_(exp_avg, denom, value=-lr / bc1)
// in three passes over a chunk so the square root runs as one vector loop.
void adamw_impl(float* p, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s) {
  constexpr int64_t kChunk = 256;
  float root[kChunk];
  // lerp as PyTorch computes it: from the nearer end, so weights 0 and 1 are exact.
  const bool from_m = s.lerp_w < 0.5f && s.lerp_w > -0.5f;
  const float w = s.lerp_w, w_rest = 1.0f - s.lerp_w;
  for (int64_t o = 0; o < n; o += kChunk) {
    int64_t len = n - o < kChunk ? n - o : kChunk;
    float *pc = p + o, *mc = m + o, *vc = v + o;
    const float* gc = g + o;
    if (from_m) {
      for (int64_t i = 0; i < len; i++) mc[i] = mc[i] + w * (gc[i] - mc[i]);
    } else {
      for (int64_t i = 0; i < len; i++) mc[i] = gc[i] - (gc[i] - mc[i]) * w_rest;
    }
    for (int64_t i = 0; i < len; i++) {
      vc[i] = vc[i] * s.beta2 + s.sq_w * gc[i] * gc[i];
      root[i] = vc[i];
    }
    sqrt_block(root, len);
    for (int64_t i = 0; i < len; i++) {
      float denom = root[i] / s.bc2_sqrt + s.eps;
      pc[i] = pc[i] * s.decay + s.neg_step * mc[i] / denom;
    }
  }
}

// Bit for bit dtype.h's converters, written here without calls so the loops vectorize (the scalar staging
// took as long as the SiLU it fed: a bf16 activation ran at half the speed of an f32 one).
void widen_bf16_impl(const uint16_t* s, float* d, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const uint32_t u = static_cast<uint32_t>(s[i]) << 16;
    __builtin_memcpy(d + i, &u, 4);
  }
}

void narrow_bf16_impl(const float* v, uint16_t* d, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    __builtin_memcpy(&u, v + i, 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x0040u;
    d[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
  }
}

constexpr VecKernels kVecKernels = {act_forward_impl, act_backward_impl, exp_shift_impl, dropout_mask_impl, adamw_impl,
                                    widen_bf16_impl, narrow_bf16_impl};

}  // namespace
}  // namespace peft
