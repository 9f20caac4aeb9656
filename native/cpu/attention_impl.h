// The AttentionTiles loops, written so each inner loop is a fixed-width or contiguous f32 loop the compiler
// vectorizes. Included by attention_tiles.cc (baseline x86-64), attention_avx2.cc and attention_avx512.cc;
// everything has internal linkage so each ISA's copy stays in its own translation unit (vec_impl.h explains
// why no external-linkage inline function or template may be called from here).
#pragma once
#include "attention_tiles.h"
#include "vmath.h"

namespace peft {
namespace {

constexpr int kBK = kAttnKeys;
constexpr float kNegInf = -__builtin_inff();

// Four score rows at once: each Bt row loaded once feeds four kBK-wide accumulators.
void scores_impl(const float* A, int rows, const float* Bt, int D, float scale, float* S) {
  int i = 0;
  for (; i + 4 <= rows; i += 4) {
    float c0[kBK] = {}, c1[kBK] = {}, c2[kBK] = {}, c3[kBK] = {};
    const float* a = A + static_cast<int64_t>(i) * D;
    for (int d = 0; d < D; d++) {
      const float a0 = a[d], a1 = a[D + d], a2 = a[2 * D + d], a3 = a[3 * D + d];
      const float* b = Bt + static_cast<int64_t>(d) * kBK;
      for (int j = 0; j < kBK; j++) {
        c0[j] += a0 * b[j];
        c1[j] += a1 * b[j];
        c2[j] += a2 * b[j];
        c3[j] += a3 * b[j];
      }
    }
    float* s = S + static_cast<int64_t>(i) * kBK;
    for (int j = 0; j < kBK; j++) {
      s[j] = c0[j] * scale;
      s[kBK + j] = c1[j] * scale;
      s[2 * kBK + j] = c2[j] * scale;
      s[3 * kBK + j] = c3[j] * scale;
    }
  }
  for (; i < rows; i++) {
    float c[kBK] = {};
    const float* a = A + static_cast<int64_t>(i) * D;
    for (int d = 0; d < D; d++) {
      const float ad = a[d];
      const float* b = Bt + static_cast<int64_t>(d) * kBK;
      for (int j = 0; j < kBK; j++) c[j] += ad * b[j];
    }
    for (int j = 0; j < kBK; j++) S[static_cast<int64_t>(i) * kBK + j] = c[j] * scale;
  }
}

// Masked scores become -inf; the row max; 0 probabilities where masked.
void softmax_step_impl(float* S, int rows, const uint8_t* ok, const int* limit, float* m, float* l, float* acc, int D) {
  for (int i = 0; i < rows; i++) {
    float* s = S + static_cast<int64_t>(i) * kBK;
    const int lim = limit[i];
    for (int j = 0; j < kBK; j++) s[j] = vsel((ok[j] != 0) & (j < lim), s[j], kNegInf);
    float mx = m[i];
    for (int j = 0; j < kBK; j++) mx = s[j] > mx ? s[j] : mx;
    if (mx == kNegInf) {  // nothing kept yet in this row
      for (int j = 0; j < kBK; j++) s[j] = 0.0f;
      continue;
    }
    const float alpha = m[i] == kNegInf ? 0.0f : vexpf(m[i] - mx);
    for (int j = 0; j < kBK; j++) s[j] = vsel(s[j] != kNegInf, vexpf(s[j] - mx), 0.0f);
    float sum = 0.0f;
    for (int j = 0; j < kBK; j++) sum += s[j];
    l[i] = l[i] * alpha + sum;
    m[i] = mx;
    float* a = acc + static_cast<int64_t>(i) * D;
    if (alpha != 1.0f)
      for (int d = 0; d < D; d++) a[d] *= alpha;
  }
}

void probs_impl(float* S, int rows, const uint8_t* ok, const int* limit, const float* lse) {
  for (int i = 0; i < rows; i++) {
    float* s = S + static_cast<int64_t>(i) * kBK;
    const int lim = limit[i];
    const float z = lse[i];
    for (int j = 0; j < kBK; j++) s[j] = vsel((ok[j] != 0) & (j < lim), vexpf(s[j] - z), 0.0f);
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

// a_r[:] += w_r · x[:] for four rows r: each x element loaded once feeds four accumulators.
inline void axpy4(const float* x, float w0, float w1, float w2, float w3, float* a0, float* a1, float* a2, float* a3, int D) {
  for (int d = 0; d < D; d++) {
    const float xd = x[d];
    a0[d] += w0 * xd;
    a1[d] += w1 * xd;
    a2[d] += w2 * xd;
    a3[d] += w3 * xd;
  }
}

void accum_px_impl(const float* P, int rows, int cols, const float* X, int D, float* acc) {
  int i = 0;
  for (; i + 4 <= rows; i += 4) {
    const float* p = P + static_cast<int64_t>(i) * kBK;
    float* a = acc + static_cast<int64_t>(i) * D;
    for (int j = 0; j < cols; j++)
      axpy4(X + static_cast<int64_t>(j) * D, p[j], p[kBK + j], p[2 * kBK + j], p[3 * kBK + j], a, a + D, a + 2 * D, a + 3 * D, D);
  }
  for (; i < rows; i++) {
    const float* p = P + static_cast<int64_t>(i) * kBK;
    float* a = acc + static_cast<int64_t>(i) * D;
    for (int j = 0; j < cols; j++) {
      const float* x = X + static_cast<int64_t>(j) * D;
      const float w = p[j];
      for (int d = 0; d < D; d++) a[d] += w * x[d];
    }
  }
}

void accum_ptx_impl(const float* P, int rows, int cols, const float* X, int D, float* acc) {
  int j = 0;
  for (; j + 4 <= cols; j += 4) {
    float* a = acc + static_cast<int64_t>(j) * D;
    for (int i = 0; i < rows; i++) {
      const float* p = P + static_cast<int64_t>(i) * kBK + j;
      axpy4(X + static_cast<int64_t>(i) * D, p[0], p[1], p[2], p[3], a, a + D, a + 2 * D, a + 3 * D, D);
    }
  }
  for (; j < cols; j++) {
    float* a = acc + static_cast<int64_t>(j) * D;
    for (int i = 0; i < rows; i++) {
      const float* x = X + static_cast<int64_t>(i) * D;
      const float w = P[static_cast<int64_t>(i) * kBK + j];
      for (int d = 0; d < D; d++) a[d] += w * x[d];
    }
  }
}

const AttentionTiles kAttentionTiles = {scores_impl, softmax_step_impl, probs_impl, dscores_impl, accum_px_impl, accum_ptx_impl};

}  // namespace
}  // namespace peft
