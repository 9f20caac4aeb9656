// The AttentionTiles loops on GCC vector types as wide as the build's registers (ATTN_VECTOR_BYTES, set by
// the includer: 16 in the baseline, 32 for AVX2, 64 for AVX-512): register tiles of 4×4 accumulators that
// each loaded vector feeds several times. Included by attention_tiles.cc (baseline x86-64),
// attention_avx2.cc and attention_avx512.cc;
// everything has internal linkage so each ISA's copy stays in its own translation unit (vec_impl.h explains
// why no external-linkage inline function or template may be called from here).
#pragma once
#include "attention_tiles.h"
#include "vmath.h"

namespace peft {
namespace {

// Vectors pass between these internal inline functions only, so the baseline and AVX2 builds' note that a
// 64-byte vector argument changes the ABI does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vf __attribute__((vector_size(ATTN_VECTOR_BYTES)));
constexpr int kBK = kAttnKeys, kL = ATTN_VECTOR_BYTES / 4;  // floats per vector
static_assert(kAttnLanes % kL == 0 && kBK % (4 * kL) == 0, "the padding and the key tile hold whole vectors");
constexpr float kNegInf = -__builtin_inff();

// e^x for the softmax's arguments (x <= 0 up to rounding): vexpf without its overflow and subnormal
// handling. Below -87 the result stays at e^-87 ≈ 1.6e-38 instead of going subnormal: a probability that
// small next to the row's largest (1) changes no f32 sum. NaN stays NaN.
inline float exp_softmax(float x) {
  x = vsel(x < -87.0f, -87.0f, x);
  float t = x * 1.44269504088896341f + 12582912.0f;  // round x·log2(e) to an integer n
  float n = t - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float p = vexp_reduced(r);
  int32_t ni = __builtin_bit_cast(int32_t, t) - 0x4b400000;
  return p * __builtin_bit_cast(float, (ni + 127) << 23);
}

inline vf ld(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }

// Four score rows × four vectors of keys at once: 16 accumulators; each Bt row piece (four vectors) feeds
// four rows.
void scores_impl(const float* A, int rows, const float* Bt, int Dp, float scale, float* S) {
  for (int i = 0; i < rows; i += 4)
    for (int j = 0; j < kBK; j += 4 * kL) {
      vf c[4][4] = {};
      const float* a = A + static_cast<int64_t>(i) * Dp;
      for (int d = 0; d < Dp; d++) {
        const float* b = Bt + static_cast<int64_t>(d) * kBK + j;
        vf bv[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) bv[k] = ld(b + k * kL);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
          const float ar = a[static_cast<int64_t>(r) * Dp + d];
#pragma GCC unroll 4
          for (int k = 0; k < 4; k++) c[r][k] += ar * bv[k];
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) st(S + static_cast<int64_t>(i + r) * kBK + j + k * kL, c[r][k] * scale);
    }
}

typedef int32_t vi __attribute__((vector_size(ATTN_VECTOR_BYTES)));

// The largest lane, by a butterfly of shuffles (log2 of the lanes steps, not a chain through every lane).
// x > m ? x : m is exactly the x86 vector max.
inline float hmax(vf m) {
  for (int step = kL / 2; step > 0; step /= 2) {
    vi idx;
    for (int l = 0; l < kL; l++) idx[l] = l ^ step;
    const vf o = __builtin_shuffle(m, idx);
    m = o > m ? o : m;
  }
  return m[0];
}

// One online-softmax step, over blocks of rows: first each row's mask, new max and rescale factor, then
// the exponentials of the whole block (independent work that fills the pipeline), then the sums. l holds
// kAttnLanes partial sums per row (this build uses the first kL), so the running sum needs no reduction
// across lanes per tile. A row with nothing kept yet keeps max -inf and all-zero probabilities.
void softmax_step_impl(float* S, int rows, const float* bias, const int* limit, float* m, float* l, float* acc, int Dp) {
  constexpr int kRB = 8;
  for (int i0 = 0; i0 < rows; i0 += kRB) {
    const int n = rows - i0 < kRB ? rows - i0 : kRB;
    float mx[kRB], old[kRB], alpha[kRB];
    for (int r = n; r < kRB; r++) mx[r] = old[r] = 0.0f;
    for (int r = 0; r < n; r++) {
      float* s = S + static_cast<int64_t>(i0 + r) * kBK;
      const int lim = limit[i0 + r];
      for (int j = 0; j < kBK; j++) s[j] = vsel(j < lim, s[j] + bias[j], kNegInf);
      vf mv = ld(s);
      for (int k = kL; k < kBK; k += kL) {
        const vf x = ld(s + k);
        mv = x > mv ? x : mv;
      }
      const float tile_max = hmax(mv);
      old[r] = m[i0 + r];
      mx[r] = tile_max > old[r] ? tile_max : old[r];
    }
    // The rescale factors of the block in one vector pass (0 while a row has kept nothing).
    for (int r = 0; r < kRB; r++) alpha[r] = vsel((old[r] == kNegInf) | (mx[r] == kNegInf), 0.0f, vexpf(old[r] - mx[r]));
    for (int r = 0; r < n; r++) {
      float* s = S + static_cast<int64_t>(i0 + r) * kBK;
      const float c = mx[r];
      for (int j = 0; j < kBK; j++) s[j] = vsel(s[j] != kNegInf, exp_softmax(s[j] - c), 0.0f);
    }
    for (int r = 0; r < n; r++) {
      const int64_t i = i0 + r;
      const float* s = S + i * kBK;
      vf sum = ld(s);
      for (int k = kL; k < kBK; k += kL) sum += ld(s + k);
      float* li = l + i * kAttnLanes;
      st(li, ld(li) * alpha[r] + sum);
      m[i] = mx[r];
      if (alpha[r] != 1.0f) {
        float* a = acc + i * Dp;
        for (int d = 0; d < Dp; d += kL) st(a + d, ld(a + d) * alpha[r]);
      }
    }
  }
}

void probs_impl(float* S, int rows, const float* bias, const int* limit, const float* lse) {
  for (int i = 0; i < rows; i++) {
    float* s = S + static_cast<int64_t>(i) * kBK;
    const int lim = limit[i];
    const float z = lse[i];
    for (int j = 0; j < kBK; j++) s[j] = vsel((j < lim) & (bias[j] == 0.0f), exp_softmax(s[j] - z), 0.0f);
  }
}

void dscores_impl(const float* P, float* dP, int rows, const float* delta, float scale) {
  for (int i = 0; i < rows; i++) {
    const float* p = P + static_cast<int64_t>(i) * kBK;
    float* g = dP + static_cast<int64_t>(i) * kBK;
    const float di = delta[i];
    for (int j = 0; j < kBK; j++) g[j] = p[j] * (g[j] - di) * scale;
  }
}

// R output rows × W vectors of accumulators held in registers over the whole reduction.
template <int R, int W>
inline void accum_block(const float* P, int po, int pt, int n, const float* X, int Dp, float* acc) {
  vf a[R][W];
#pragma GCC unroll 4
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int w = 0; w < W; w++) a[r][w] = ld(acc + static_cast<int64_t>(r) * Dp + w * kL);
  for (int t = 0; t < n; t++) {
    const float* x = X + static_cast<int64_t>(t) * Dp;
    vf xv[W];
#pragma GCC unroll 4
    for (int w = 0; w < W; w++) xv[w] = ld(x + w * kL);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
      const float p = P[static_cast<int64_t>(r) * po + static_cast<int64_t>(t) * pt];
#pragma GCC unroll 4
      for (int w = 0; w < W; w++) a[r][w] += p * xv[w];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; r++)
#pragma GCC unroll 4
    for (int w = 0; w < W; w++) st(acc + static_cast<int64_t>(r) * Dp + w * kL, a[r][w]);
}

// Vectors per accumulator row: 4 rows × kW vectors fill the register file (16 zmm of 32; 8 ymm of 16).
constexpr int kW = kL == 16 ? 4 : 2;

template <int R>
inline void accum_rows(const float* P, int po, int pt, int n, const float* X, int Dp, float* acc) {
  int d = 0;
  for (; d + kW * kL <= Dp; d += kW * kL) accum_block<R, kW>(P, po, pt, n, X + d, Dp, acc + d);
  for (; d + 2 * kL <= Dp; d += 2 * kL) accum_block<R, 2>(P, po, pt, n, X + d, Dp, acc + d);
  if (d < Dp) accum_block<R, 1>(P, po, pt, n, X + d, Dp, acc + d);
}

void accum_impl(const float* P, int po, int pt, int outs, int n, const float* X, int Dp, float* acc) {
  int o = 0;
  for (; o + 4 <= outs; o += 4) accum_rows<4>(P + static_cast<int64_t>(o) * po, po, pt, n, X, Dp, acc + static_cast<int64_t>(o) * Dp);
  for (; o < outs; o++) accum_rows<1>(P + static_cast<int64_t>(o) * po, po, pt, n, X, Dp, acc + static_cast<int64_t>(o) * Dp);
}

// ---- The decode shape: K and V read in place, widened as loaded ----

typedef uint16_t vh __attribute__((vector_size(ATTN_VECTOR_BYTES / 2)));
typedef uint32_t vu __attribute__((vector_size(ATTN_VECTOR_BYTES)));

// kL elements from `at`: f32 as they are, bf16 widened (a bf16 is the top 16 bits of an f32, so widening is
// exact).
template <bool BF16>
inline vf ldw(const void* base, int64_t at) {
  if constexpr (BF16) {
    vh h;
    __builtin_memcpy(&h, static_cast<const uint16_t*>(base) + at, sizeof h);
    return __builtin_bit_cast(vf, __builtin_convertvector(h, vu) << 16);
  } else {
    return ld(static_cast<const float*>(base) + at);
  }
}
template <bool BF16>
inline float elw(const void* base, int64_t at) {
  if constexpr (BF16) return __builtin_bit_cast(float, static_cast<uint32_t>(static_cast<const uint16_t*>(base)[at]) << 16);
  else return static_cast<const float*>(base)[at];
}

// The sum of the lanes, halving the vector with constant shuffles (indices built in a loop, as hmax's, are not
// folded here and cost more than the dot product).
typedef float vf4 __attribute__((vector_size(16)));
inline float hsum(vf v) {
#if ATTN_VECTOR_BYTES == 64
  typedef float vf8 __attribute__((vector_size(32)));
  const vf8 h8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vf4 h = __builtin_shufflevector(h8, h8, 0, 1, 2, 3) + __builtin_shufflevector(h8, h8, 4, 5, 6, 7);
#elif ATTN_VECTOR_BYTES == 32
  const vf4 h = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
  const vf4 h = v;
#endif
  return (h[0] + h[2]) + (h[1] + h[3]);
}

// q·k over D elements (k widened from `at`): two vector accumulators, then the tail.
template <bool BF16>
inline float dot_row(const float* q, const void* K, int64_t at, int D) {
  vf c0 = {}, c1 = {};
  int d = 0;
  for (; d + 2 * kL <= D; d += 2 * kL) {
    c0 += ld(q + d) * ldw<BF16>(K, at + d);
    c1 += ld(q + d + kL) * ldw<BF16>(K, at + d + kL);
  }
  if (d + kL <= D) {
    c0 += ld(q + d) * ldw<BF16>(K, at + d);
    d += kL;
  }
  float s = hsum(c0 + c1);
  for (; d < D; d++) s += q[d] * elw<BF16>(K, at + d);
  return s;
}

// o[0, W·kL) = inv · Σ_j P[j]·V[j][d0, d0 + W·kL): W accumulator vectors held over all keys.
template <bool BF16, int W>
inline void pv_block(const float* P, int64_t n, const void* V, int64_t stride, int d0, float inv, float* o) {
  vf a[W] = {};
  for (int64_t j = 0; j < n; j++) {
    const float p = P[j];
    if (p == 0.0f) continue;  // masked keys
#pragma GCC unroll 4
    for (int w = 0; w < W; w++) a[w] += p * ldw<BF16>(V, j * stride + d0 + w * kL);
  }
#pragma GCC unroll 4
  for (int w = 0; w < W; w++) st(o + d0 + w * kL, a[w] * inv);
}

template <bool BF16>
void direct_rows(const float* Q, int rows, const void* K, const void* V, int64_t stride, int64_t n, int D, float scale,
                 const uint8_t* keep, float* P, float* out, float* lse) {
  for (int r = 0; r < rows; r++) {
    const float* q = Q + static_cast<int64_t>(r) * D;
    float* o = out + static_cast<int64_t>(r) * D;
    float mx = kNegInf;
    for (int64_t j = 0; j < n; j++) {
      const float s = !keep || keep[j] ? dot_row<BF16>(q, K, j * stride, D) * scale : kNegInf;
      P[j] = s;
      mx = s > mx ? s : mx;
    }
    if (mx == kNegInf) {  // no key kept
      for (int d = 0; d < D; d++) o[d] = 0.0f;
      lse[r] = __builtin_inff();
      continue;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
      const float p = vsel(P[j] != kNegInf, exp_softmax(P[j] - mx), 0.0f);
      P[j] = p;
      sum += p;
    }
    const float inv = 1.0f / sum;
    int d = 0;
    for (; d + 4 * kL <= D; d += 4 * kL) pv_block<BF16, 4>(P, n, V, stride, d, inv, o);
    for (; d + kL <= D; d += kL) pv_block<BF16, 1>(P, n, V, stride, d, inv, o);
    for (; d < D; d++) {
      float a = 0.0f;
      for (int64_t j = 0; j < n; j++) a += P[j] * elw<BF16>(V, j * stride + d);
      o[d] = a * inv;
    }
    lse[r] = mx + __builtin_logf(sum);
  }
}

void direct_impl(const float* Q, int rows, const void* K, const void* V, bool bf16, int64_t stride, int64_t n, int D, float scale,
                 const uint8_t* keep, float* P, float* out, float* lse) {
  if (bf16) direct_rows<true>(Q, rows, K, V, stride, n, D, scale, keep, P, out, lse);
  else direct_rows<false>(Q, rows, K, V, stride, n, D, scale, keep, P, out, lse);
}

const AttentionTiles kAttentionTiles = {scores_impl, softmax_step_impl, probs_impl, dscores_impl, accum_impl, direct_impl};

}  // namespace
}  // namespace peft
