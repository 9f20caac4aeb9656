// Portable micro-kernel (no ISA flags; the compiler vectorizes the column loop with baseline SSE2)
// and the scalar tile epilogue that every kernel set may use for its edges.
#include "gemm_kernels.h"

#include "elem.h"

namespace peft {
namespace gemm_detail {

void finish_tile_scalar(const float* acc, int64_t ld, const Tile& t, int nr) {
  bool first = t.flags & kFirst, last = t.flags & kLast;
  for (int i = 0; i < t.m; i++) {
    for (int j = 0; j < t.n; j++) {
      float v = t.alpha * acc[i * ld + j];
      if (last) {
        for (int64_t r = 0; r < t.kr; r++) v += t.a2[r * t.a2_stride + i] * t.b2[r * nr + j];
        if (t.bias) v += t.bias[j];
      }
      if (t.col_scale) v *= t.col_scale[j];
      if (!first) v += t.p[i * t.ldp + j];
      else if (t.flags & kAccumulate) v += load_f32(t.c, t.c_dt, i * t.ldc + j);
      if (last) store_f32(t.c, t.c_dt, i * t.ldc + j, v);
      else t.p[i * t.ldp + j] = v;
    }
  }
}

namespace {

constexpr int kMr = 4, kNr = 16;

template <int M>
void kernel(const Tile& t) {
  float acc[M][kNr] = {};
  const float* a = static_cast<const float*>(t.a);
  const float* b = static_cast<const float*>(t.b);
  for (int64_t k = 0; k < t.kc; k++, a += M, b += t.ldb)
    for (int i = 0; i < M; i++)
      for (int j = 0; j < kNr; j++) acc[i][j] += a[i] * b[j];
  finish_tile_scalar(&acc[0][0], kNr, t, kNr);
}

constexpr KernelSet kScalar = {
    "scalar", kMr, kNr, BLayout::F32, ALayout::F32, false, kNr * 4, 1,
    {{kernel<1>, kernel<1>}, {kernel<2>, kernel<2>}, {kernel<3>, kernel<3>}, {kernel<4>, kernel<4>}},
    nullptr, nullptr, nullptr, nullptr, true};

}  // namespace

const KernelSet* scalar_f32_kernels() { return &kScalar; }

}  // namespace gemm_detail
}  // namespace peft
