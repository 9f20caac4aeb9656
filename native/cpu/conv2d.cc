#include "conv2d.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "convert.h"
#include "elem.h"
#include "gemm.h"
#include "isa.h"
#include "nn_kernels.h"
#include "parallel.h"

namespace peft {
namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

const void* at(const void* p, DType dt, int64_t i) { return static_cast<const char*>(p) + i * static_cast<int64_t>(dtype_size(dt)); }
void* at(void* p, DType dt, int64_t i) { return static_cast<char*>(p) + i * static_cast<int64_t>(dtype_size(dt)); }

// Grows only; per thread, so pool workers keep theirs across calls.
float* scratch(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}
thread_local std::vector<float> t_cols, t_cols2, t_grad, t_b2, t_row;

// x as f32: the tensor itself, or a converted copy kept in `keep`.
const float* as_f32(const void* p, DType dt, int64_t n, std::vector<float>& keep) {
  if (dt == DType::F32) return static_cast<const float*>(p);
  keep.resize(static_cast<size_t>(std::max<int64_t>(n, 1)));
  convert_cpu(p, dt, keep.data(), DType::F32, n);
  return keep.data();
}

// Tap kw reads input column iw = ow·sw + off; output columns [lo, hi) (within [0, OW]) read inside the image.
struct TapColumns {
  int64_t off, lo, hi;
};
TapColumns tap_columns(const ConvGeom& g, int64_t kw) {
  const int64_t off = kw * g.dw - g.pw;
  const int64_t lo = std::min(g.OW, off >= 0 ? 0 : ceil_div(-off, g.sw));
  const int64_t hi = std::clamp<int64_t>(g.W - off <= 0 ? 0 : ceil_div(g.W - off, g.sw), lo, g.OW);  // ow < hi  <=>  iw < W
  return {off, lo, hi};
}

// Calls f(oh, base, lo, hi) for every output row whose input row of tap (kh, kw) lies inside the image and has
// in-bounds columns: base = ih·W + off, so output column ow reads input element base + ow·sw.
template <class F>
void for_each_tap_run(const ConvGeom& g, int64_t kh, int64_t kw, F&& f) {
  const TapColumns tc = tap_columns(g, kw);
  if (tc.hi <= tc.lo) return;
  for (int64_t oh = 0; oh < g.OH; oh++) {
    const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
    if (ih >= 0 && ih < g.H) f(oh, ih * g.W + tc.off, tc.lo, tc.hi);
  }
}

// Visits the unfolded rows (c, kh, kw) of one group over output pixels [p0, p1): seg(row, col, src, n, step)
// for each run of in-bounds input elements (src: element index in the group's image, c·H·W + ih·W + iw;
// step: the stride between them), zero(row, col, n) for runs that fall on the padding.
template <class Seg, class Zero>
void walk_patches(const ConvGeom& g, int64_t p0, int64_t p1, Seg&& seg, Zero&& zero) {
  const int64_t Cg = g.cg();
  for (int64_t c = 0; c < Cg; c++)
    for (int64_t kh = 0; kh < g.KH; kh++)
      for (int64_t kw = 0; kw < g.KW; kw++) {
        const int64_t row = (c * g.KH + kh) * g.KW + kw;
        const auto [off, lo, hi] = tap_columns(g, kw);
        for (int64_t p = p0; p < p1;) {
          const int64_t oh = p / g.OW, ow0 = p - oh * g.OW, ow1 = std::min(g.OW, ow0 + (p1 - p));
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh, col = p - p0;
          if (ih < 0 || ih >= g.H) {
            zero(row, col, ow1 - ow0);
          } else {
            const int64_t a = std::clamp(lo, ow0, ow1), b = std::clamp(hi, a, ow1);
            if (a > ow0) zero(row, col, a - ow0);
            if (b > a) seg(row, col + a - ow0, c * g.H * g.W + ih * g.W + a * g.sw + off, b - a, g.sw);
            if (ow1 > b) zero(row, col + b - ow0, ow1 - b);
          }
          p += ow1 - ow0;
        }
      }
}

// The (kk, pc) column tile of one group's image for pixels [p0, p1).
void im2col(const ConvGeom& g, const float* img, int64_t p0, int64_t p1, float* out) {
  const int64_t pc = p1 - p0;
  walk_patches(
      g, p0, p1,
      // Runs are one output row long (tens of floats): inline loops, not library calls, per run.
      [&](int64_t row, int64_t col, int64_t src, int64_t n, int64_t step) {
        float* d = out + row * pc + col;
        const float* s = img + src;
        if (step == 1)
          for (int64_t i = 0; i < n; i++) d[i] = s[i];
        else
          for (int64_t i = 0; i < n; i++) d[i] = s[i * step];
      },
      [&](int64_t row, int64_t col, int64_t n) {
        float* d = out + row * pc + col;
        for (int64_t i = 0; i < n; i++) d[i] = 0.0f;
      });
}

// The adjoint of im2col: adds the tile's columns back into the group's image gradient.
void col2im(const ConvGeom& g, const float* tile, int64_t p0, int64_t p1, float* dimg) {
  const int64_t pc = p1 - p0;
  walk_patches(
      g, p0, p1,
      [&](int64_t row, int64_t col, int64_t src, int64_t n, int64_t step) {
        const float* s = tile + row * pc + col;
        float* d = dimg + src;
        for (int64_t i = 0; i < n; i++) d[i * step] += s[i];
      },
      [](int64_t, int64_t, int64_t) {});
}

// Output pixels per tile: the unfolded tile within half of L2 (it stays there while the GEMM reads it), at
// most 512 columns (wider tiles gained nothing: the GEMM's B panels are read in place), and enough tiles to
// keep every thread busy. The weight is the GEMM's A (OC/G rows): narrow tiles would repack it too often.
int64_t tile_cols(const ConvGeom& g) {
  const int64_t P = g.P();
  const int64_t budget = static_cast<int64_t>(cpu_features().l2_bytes) / 2;
  static const int64_t cap = [] {
    const char* e = std::getenv("NODE_PEFT_CONV_TILE");  // for tuning runs only
    return e ? std::max<int64_t>(16, std::atoll(e)) : 512;
  }();
  int64_t pc = g.pointwise() ? cap : std::clamp<int64_t>(budget / (4 * std::max<int64_t>(1, g.kk())), 64, cap);
  const int64_t per_image = ceil_div(2 * num_threads(), std::max<int64_t>(1, g.N * g.G));
  if (per_image > 1) pc = std::min(pc, ceil_div(P, per_image));
  pc = ceil_div(std::max<int64_t>(pc, 16), 16) * 16;
  return std::min(pc, P);
}

// One unit of work: image n, group gi, output pixels [p0, p1).
struct Tile {
  int64_t n, gi, p0, p1;
  int64_t pc() const { return p1 - p0; }
};
Tile tile_at(const ConvGeom& g, int64_t pc, int64_t chunks, int64_t i) {
  const int64_t ci = i % chunks, ng = i / chunks;
  return {ng / g.G, ng % g.G, ci * pc, std::min(g.P(), (ci + 1) * pc)};
}

// The GEMM operand (kk, pc) of a tile: x itself for a pointwise convolution, else the unfolded tile in `buf`.
GemmMat tile_operand(const ConvGeom& g, const float* img, const Tile& t, std::vector<float>& buf) {
  if (g.pointwise()) return mat_rows(img + t.p0, DType::F32, g.P());
  float* c = scratch(buf, g.kk() * t.pc());
  im2col(g, img, t.p0, t.p1, c);
  return mat_rows(c, DType::F32, t.pc());
}

// Its transpose (pc, kk), for the weight-gradient products.
GemmMat transposed(const GemmMat& m) { return mat_cols(m.p, DType::F32, m.rs); }

// The group image of x (f32) for tile t.
const float* image(const ConvGeom& g, const float* x, const Tile& t) { return x + (t.n * g.C + t.gi * g.cg()) * g.H * g.W; }

// dy rows of tile t: (ocg, pc) with row stride P.
const void* dy_tile(const ConvGeom& g, const void* dy, DType dt, const Tile& t) {
  return at(dy, dt, (t.n * g.OC + t.gi * g.ocg()) * g.P() + t.p0);
}

// G_a (r, pc) = s·B_aᵀ·dy_tile: the gradient reaching the adapter's T.
void adapter_grad(const ConvGeom& g, const AdapterView& a, const void* dyt, DType dy_dt, int64_t pc, float* out, int64_t ldo) {
  GemmArgs m;
  m.M = a.r, m.N = pc, m.K = g.OC;
  m.A = mat_cols(a.B, a.b_dt, a.r);
  m.B = mat_rows(dyt, dy_dt, g.P());
  m.alpha = a.scale;
  m.C = out, m.c_dt = DType::F32, m.ldc = ldo;
  gemm(m);
}

// Each adapter's dropped input (f32, whole tensor) or null when it has no dropout.
std::vector<std::vector<float>> dropped_inputs(const ConvGeom& g, const void* x, DType x_dt, const std::vector<AdapterView>& ad,
                                               bool need) {
  std::vector<std::vector<float>> out(ad.size());
  const int64_t n = g.N * g.C * g.H * g.W;
  for (size_t i = 0; i < ad.size(); i++) {
    if (!need || ad[i].p <= 0) continue;
    out[i].resize(static_cast<size_t>(std::max<int64_t>(n, 1)));
    dropout_cpu(x, x_dt, out[i].data(), DType::F32, n, ad[i].p, ad[i].seed, ad[i].stream);
  }
  return out;
}

void fill_bias(const ConvGeom& g, const void* b, DType b_dt, void* y, DType y_dt) {
  const int64_t P = g.P();
  std::vector<float> row(static_cast<size_t>(std::max<int64_t>(P, 1)));
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t o = 0; o < g.OC; o++) {
      std::fill(row.begin(), row.end(), b ? load_f32(b, b_dt, o) : 0.0f);
      convert_cpu(row.data(), DType::F32, at(y, y_dt, (n * g.OC + o) * P), y_dt, P);
    }
}

// ---- depthwise: one input channel per group, each output channel a direct 2-D stencil over its row ----

// a[0, n) += w·s[0, n): restrict parameters (not locals), so the vectorizer needs no overlap check.
__attribute__((always_inline)) inline void axpy_run(float* __restrict a, const float* __restrict s, float w, int64_t n) {
  for (int64_t i = 0; i < n; i++) a[i] += w * s[i];
}

// Per-thread buffers of the stride-1 stencil: the zero-padded input (or dx) plane and the output (or dy)
// plane at the padded width.
struct StencilBufs {
  float* padded;
  float* wide;
};

// One channel's taps: out (OH, OW) += Σ_t w[t]·(input shifted by tap t) (forward), or the adjoint, dx (H, W)
// += Σ_t w[t]·(dy shifted back) (scatter). Stride 1: over a zero-padded plane every tap is one long run
// (rows of Wp = W + 2·pw, the extra columns dropped at the end). Strided: a run per output row.
template <bool Scatter>
__attribute__((always_inline)) inline void channel_taps(const ConvGeom& g, const float* w, const float* in, float* out, StencilBufs buf) {
  if (g.sh == 1 && g.sw == 1) {
    const int64_t Wp = g.W + 2 * g.pw, Hp = g.H + 2 * g.ph, span = g.OH * Wp;
    const int64_t plane = Hp * Wp + g.KW * g.dw;  // the last tap reads past the last row by up to (KW-1)·dw
    float* xp = buf.padded;
    float* wide = buf.wide;
    std::fill(xp, xp + plane, 0.0f);
    if (!Scatter) {
      for (int64_t ih = 0; ih < g.H; ih++) std::copy(in + ih * g.W, in + (ih + 1) * g.W, xp + (ih + g.ph) * Wp + g.pw);
      for (int64_t oh = 0; oh < g.OH; oh++) std::copy(out + oh * g.OW, out + (oh + 1) * g.OW, wide + oh * Wp);
      for (int64_t t = 0; t < g.KH * g.KW; t++) axpy_run(wide, xp + (t / g.KW) * g.dh * Wp + (t % g.KW) * g.dw, w[t], span);
      for (int64_t oh = 0; oh < g.OH; oh++) std::copy(wide + oh * Wp, wide + oh * Wp + g.OW, out + oh * g.OW);
    } else {
      std::fill(wide, wide + span, 0.0f);
      for (int64_t oh = 0; oh < g.OH; oh++) std::copy(in + oh * g.OW, in + (oh + 1) * g.OW, wide + oh * Wp);
      for (int64_t t = 0; t < g.KH * g.KW; t++) axpy_run(xp + (t / g.KW) * g.dh * Wp + (t % g.KW) * g.dw, wide, w[t], span);
      for (int64_t ih = 0; ih < g.H; ih++)
        for (int64_t iw = 0; iw < g.W; iw++) out[ih * g.W + iw] += xp[(ih + g.ph) * Wp + iw + g.pw];
    }
    return;
  }
  for (int64_t kh = 0; kh < g.KH; kh++)
    for (int64_t kw = 0; kw < g.KW; kw++) {
      const float wv = w[kh * g.KW + kw];
      for_each_tap_run(g, kh, kw, [&](int64_t oh, int64_t base, int64_t lo, int64_t hi) {
        float* a = Scatter ? out + base : out + oh * g.OW;
        const float* s = Scatter ? in + oh * g.OW : in + base;
        if (Scatter)
          for (int64_t ow = lo; ow < hi; ow++) a[ow * g.sw] += wv * s[ow];
        else
          for (int64_t ow = lo; ow < hi; ow++) a[ow] += wv * s[ow * g.sw];
      });
    }
}

// The buffers channel_taps needs for g, per thread.
thread_local std::vector<float> t_padded, t_wide;
StencilBufs stencil_bufs(const ConvGeom& g) {
  const int64_t Wp = g.W + 2 * g.pw, Hp = g.H + 2 * g.ph;
  return {scratch(t_padded, Hp * Wp + g.KW * g.dw), scratch(t_wide, g.OH * Wp)};
}

// Each x86 build of the stencil is compiled for its ISA (the loops auto-vectorise); elsewhere one portable build.
#if PEFT_X86
#define PEFT_ISA_TARGET(flags) __attribute__((target(flags)))
#else
#define PEFT_ISA_TARGET(flags)
#endif
#define PEFT_STENCIL(suffix, flags)                                                                                \
  PEFT_ISA_TARGET(flags) void taps_##suffix(const ConvGeom& g, const float* w, const float* in, float* out, \
                                                     StencilBufs b) {                                               \
    channel_taps<false>(g, w, in, out, b);                                                                          \
  }                                                                                                                 \
  PEFT_ISA_TARGET(flags) void scatter_##suffix(const ConvGeom& g, const float* w, const float* in, float* out, \
                                                        StencilBufs b) {                                            \
    channel_taps<true>(g, w, in, out, b);                                                                           \
  }
#if PEFT_X86
PEFT_STENCIL(avx512, "avx512f,avx512vl,fma")
PEFT_STENCIL(avx2, "avx2,fma")
PEFT_STENCIL(base, "sse2")
#else
PEFT_STENCIL(base, "")
#endif
#undef PEFT_STENCIL
#undef PEFT_ISA_TARGET

using TapsFn = void (*)(const ConvGeom&, const float*, const float*, float*, StencilBufs);
struct Stencil {
  TapsFn taps, scatter;
};
Stencil stencil() {
  switch (active_isa()) {
#if PEFT_X86
    case Isa::Avx512: return {taps_avx512, scatter_avx512};
    case Isa::Avx2: return {taps_avx2, scatter_avx2};
#endif
    default: return {taps_base, scatter_base};
  }
}

// Output channel o's taps as f32.
void channel_weights(const ConvGeom& g, const void* w, DType w_dt, int64_t o, float* out) {
  convert_cpu(at(w, w_dt, o * g.KH * g.KW), w_dt, out, DType::F32, g.KH * g.KW);
}

void depthwise_forward(const ConvGeom& g, const float* x, const void* w, DType w_dt, const void* b, DType b_dt, void* y, DType y_dt) {
  const int64_t P = g.P(), mult = g.ocg();
  const Stencil st = stencil();
  parallel_for(g.N * g.OC, 1, [&](int64_t i0, int64_t i1) {
    float* acc = scratch(t_row, P);
    std::vector<float> wk(static_cast<size_t>(g.KH * g.KW));
    for (int64_t i = i0; i < i1; i++) {
      const int64_t n = i / g.OC, o = i % g.OC;
      std::fill(acc, acc + P, b ? load_f32(b, b_dt, o) : 0.0f);
      channel_weights(g, w, w_dt, o, wk.data());
      st.taps(g, wk.data(), x + (n * g.C + o / mult) * g.H * g.W, acc, stencil_bufs(g));
      convert_cpu(acc, DType::F32, at(y, y_dt, i * P), y_dt, P);
    }
  });
}

void depthwise_backward(const ConvGeom& g, const float* dy, const float* x, const void* w, DType w_dt, void* dx, DType dx_dt,
                        void* dW, DType dW_dt) {
  const int64_t P = g.P(), mult = g.ocg(), HW = g.H * g.W, KHW = g.KH * g.KW;
  const Stencil st = stencil();
  if (dW) {
    parallel_for(g.OC, 1, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; o++) {
        for (int64_t t = 0; t < KHW; t++) {
          double sum = 0;
          for (int64_t n = 0; n < g.N; n++) {
            const float* s = x + (n * g.C + o / mult) * HW;
            const float* d = dy + (n * g.OC + o) * P;
            float part = 0;
            for_each_tap_run(g, t / g.KW, t % g.KW, [&](int64_t oh, int64_t base, int64_t lo, int64_t hi) {
              const float* dr = d + oh * g.OW;
              for (int64_t ow = lo; ow < hi; ow++) part += dr[ow] * s[base + ow * g.sw];
            });
            sum += part;
          }
          const int64_t k = o * KHW + t;
          store_f32(dW, dW_dt, k, load_f32(dW, dW_dt, k) + static_cast<float>(sum));
        }
      }
    });
  }
  if (!dx) return;
  parallel_for(g.N * g.C, 1, [&](int64_t i0, int64_t i1) {
    float* acc = scratch(t_row, HW);
    std::vector<float> wk(static_cast<size_t>(KHW));
    for (int64_t i = i0; i < i1; i++) {
      const int64_t n = i / g.C, c = i % g.C;
      std::fill(acc, acc + HW, 0.0f);
      for (int64_t m = 0; m < mult; m++) {
        const int64_t o = c * mult + m;
        channel_weights(g, w, w_dt, o, wk.data());
        st.scatter(g, wk.data(), dy + (n * g.OC + o) * P, acc, stencil_bufs(g));
      }
      convert_cpu(acc, DType::F32, at(dx, dx_dt, i * HW), dx_dt, HW);
    }
  });
}

// ---- the GEMM path (any groups; LoRA adapters only with groups == 1) ----

void forward_gemm(const ConvGeom& g, const void* x, DType x_dt, const void* w, DType w_dt, const void* b, DType b_dt,
                  const std::vector<AdapterView>& ad, void* y, DType y_dt, float* T) {
  const int64_t P = g.P(), KK = g.kk(), OCg = g.ocg(), R = total_rank(ad);
  std::vector<float> xkeep;
  const float* xf = as_f32(x, x_dt, g.N * g.C * g.H * g.W, xkeep);
  auto xd = dropped_inputs(g, x, x_dt, ad, true);
  // A2 = [s_1·B_1 | s_2·B_2 | … | bias] (OC, R2): the adapters and the bias as R2 extra k-steps on y's tile,
  // against B2 = [T; ones] built per tile.
  const int64_t R2 = R + (b ? 1 : 0);
  std::vector<float> a2(static_cast<size_t>(std::max<int64_t>(g.OC * R2, 1)));
  for (int64_t o = 0; o < g.OC; o++) {
    int64_t off = 0;
    for (const AdapterView& a : ad) {
      for (int64_t j = 0; j < a.r; j++) a2[o * R2 + off + j] = a.scale * load_f32(a.B, a.b_dt, o * a.r + j);
      off += a.r;
    }
    if (b) a2[o * R2 + R] = load_f32(b, b_dt, o);
  }
  const int64_t pc = tile_cols(g), chunks = ceil_div(P, pc);
  parallel_for(g.N * g.G * chunks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      const Tile t = tile_at(g, pc, chunks, i);
      const GemmMat xm = tile_operand(g, image(g, xf, t), t, t_cols);
      // T for this tile: conv(drop(x), A) per adapter, then B2 = [T; ones].
      float* b2 = scratch(t_b2, std::max<int64_t>(R2 * t.pc(), 1));
      int64_t off = 0;
      for (size_t k = 0; k < ad.size(); k++) {
        const AdapterView& a = ad[k];
        GemmArgs m;
        m.M = a.r, m.N = t.pc(), m.K = KK;
        m.A = mat_rows(a.A, a.a_dt, KK);
        m.B = a.p > 0 ? tile_operand(g, image(g, xd[k].data(), t), t, t_cols2) : xm;
        float* Tt = T + (t.n * R + off) * P + t.p0;
        m.C = Tt, m.c_dt = DType::F32, m.ldc = P;
        gemm(m);
        for (int64_t j = 0; j < a.r; j++) std::memcpy(b2 + (off + j) * t.pc(), Tt + j * P, sizeof(float) * static_cast<size_t>(t.pc()));
        off += a.r;
      }
      if (b) std::fill(b2 + R * t.pc(), b2 + R2 * t.pc(), 1.0f);
      GemmArgs m;
      m.M = OCg, m.N = t.pc(), m.K = KK;
      m.A = mat_rows(at(w, w_dt, t.gi * OCg * KK), w_dt, KK);
      m.B = xm;
      m.C = at(y, y_dt, (t.n * g.OC + t.gi * OCg) * P + t.p0), m.c_dt = y_dt, m.ldc = P;
      if (R2 > 0) {
        m.R = R2;
        m.A2 = mat_rows(a2.data() + t.gi * OCg * R2, DType::F32, R2);
        m.B2 = mat_rows(b2, DType::F32, t.pc());
      }
      gemm(m);
    }
  });
}

// Sum of per-thread f32 partials, added once into `out` (rounded once into its dtype).
struct Partials {
  std::vector<std::vector<float>> per;
  int64_t n;
  Partials(int threads, int64_t n_) : per(static_cast<size_t>(threads)), n(n_) {
    for (auto& v : per) v.assign(static_cast<size_t>(std::max<int64_t>(n, 1)), 0.0f);
  }
  float* of(int tid) { return per[static_cast<size_t>(tid)].data(); }
  const float* sum() {
    for (size_t t = 1; t < per.size(); t++)
      for (int64_t i = 0; i < n; i++) per[0][static_cast<size_t>(i)] += per[t][static_cast<size_t>(i)];
    return per[0].data();
  }
};

void backward_gemm(const ConvGeom& g, const void* dy, DType dy_dt, const void* x, DType x_dt, const void* w, DType w_dt,
                   const std::vector<AdapterView>& ad, const float* T, void* dx, DType dx_dt, void* dW, DType dW_dt) {
  const int64_t P = g.P(), KK = g.kk(), OCg = g.ocg(), R = total_rank(ad), HWC = g.C * g.H * g.W;
  const int64_t pc = tile_cols(g), chunks = ceil_div(P, pc);
  bool want_da = false, want_db = false;
  for (const AdapterView& a : ad) want_da |= a.dA != nullptr, want_db |= a.dB != nullptr;

  // Pass 1, over every tile: dW, dA, dB into per-thread f32 partials (tiles of one image share them).
  if (dW || want_da || want_db) {
    std::vector<float> xkeep;
    const float* xf = dW || want_da ? as_f32(x, x_dt, g.N * HWC, xkeep) : nullptr;
    auto xd = dropped_inputs(g, x, x_dt, ad, want_da);
    const int nt = std::max(1, std::min<int>(num_threads(), static_cast<int>(std::min<int64_t>(g.N * g.G * chunks, 1 << 20))));
    const int64_t off_da = dW ? g.OC * KK : 0, off_db = off_da + R * KK;
    Partials part(nt, off_db + g.OC * R);
    const int64_t count = g.N * g.G * chunks;
    parallel_run(nt, [&](int tid, int parts) {
      float* acc = part.of(tid);
      for (int64_t i = count * tid / parts; i < count * (tid + 1) / parts; i++) {
        const Tile t = tile_at(g, pc, chunks, i);
        const void* dyt = dy_tile(g, dy, dy_dt, t);
        GemmMat xm{};
        if (xf) xm = tile_operand(g, image(g, xf, t), t, t_cols);
        if (dW) {  // dW_g += dy_t·colsᵀ
          GemmArgs m;
          m.M = OCg, m.N = KK, m.K = t.pc();
          m.A = mat_rows(dyt, dy_dt, P);
          m.B = transposed(xm);
          m.C = acc + t.gi * OCg * KK, m.ldc = KK, m.accumulate = true;
          gemm(m);
        }
        int64_t off = 0;
        for (size_t k = 0; k < ad.size(); k++) {
          const AdapterView& a = ad[k];
          if (a.dB) {  // dB += s·dy_t·T_tᵀ
            GemmArgs m;
            m.M = g.OC, m.N = a.r, m.K = t.pc();
            m.A = mat_rows(dyt, dy_dt, P);
            m.B = mat_cols(T + (t.n * R + off) * P + t.p0, DType::F32, P);
            m.alpha = a.scale;
            m.C = acc + off_db + off, m.ldc = R, m.accumulate = true;
            gemm(m);
          }
          if (a.dA) {  // dA += G·drop(cols)ᵀ
            float* G = scratch(t_grad, a.r * t.pc());
            adapter_grad(g, a, dyt, dy_dt, t.pc(), G, t.pc());
            const GemmMat src = a.p > 0 ? tile_operand(g, image(g, xd[k].data(), t), t, t_cols2) : xm;
            GemmArgs m;
            m.M = a.r, m.N = KK, m.K = t.pc();
            m.A = mat_rows(G, DType::F32, t.pc());
            m.B = transposed(src);
            m.C = acc + off_da + off * KK, m.ldc = KK, m.accumulate = true;
            gemm(m);
          }
          off += a.r;
        }
      }
    });
    const float* sum = part.sum();
    if (dW) axpy_cpu(dW, dW_dt, sum, DType::F32, 1.0f, g.OC * KK);
    int64_t off = 0;
    std::vector<float> blk;
    for (const AdapterView& a : ad) {
      if (a.dA) axpy_cpu(a.dA, a.da_dt, sum + off_da + off * KK, DType::F32, 1.0f, a.r * KK);
      if (a.dB) {
        blk.resize(static_cast<size_t>(std::max<int64_t>(g.OC * a.r, 1)));
        for (int64_t o = 0; o < g.OC; o++)
          for (int64_t j = 0; j < a.r; j++) blk[o * a.r + j] = sum[off_db + o * R + off + j];
        axpy_cpu(a.dB, a.db_dt, blk.data(), DType::F32, 1.0f, g.OC * a.r);
      }
      off += a.r;
    }
  }
  if (!dx) return;

  // Pass 2, per (image, group): dcols = Wᵀ·dy_t (+ the adapters without dropout as extra k-steps), folded back
  // into dx; adapters with dropout go to their own image, masked with the forward's mask, then added.
  const bool f32_out = dx_dt == DType::F32;
  std::vector<float> dx32v(f32_out ? 0 : static_cast<size_t>(std::max<int64_t>(g.N * HWC, 1)));
  float* dx32 = f32_out ? static_cast<float*>(dx) : dx32v.data();
  std::memset(dx32, 0, sizeof(float) * static_cast<size_t>(g.N * HWC));
  // [A_1; A_2; …] of the adapters without dropout, f32 (R0, KK).
  int64_t R0 = 0;
  for (const AdapterView& a : ad) R0 += a.p > 0 ? 0 : a.r;
  std::vector<float> acat(static_cast<size_t>(std::max<int64_t>(R0 * KK, 1)));
  {
    int64_t row = 0;
    for (const AdapterView& a : ad) {
      if (a.p > 0) continue;
      convert_cpu(a.A, a.a_dt, acat.data() + row * KK, DType::F32, a.r * KK);
      row += a.r;
    }
  }
  // Folds dcols = op·dy_t into `dst`: pointwise convolutions write the image directly.
  auto fold = [&](const Tile& t, float* dst_img, GemmArgs& m) {
    m.M = KK, m.N = t.pc();
    if (g.pointwise()) {
      m.C = dst_img + t.p0, m.ldc = P, m.accumulate = true;
      gemm(m);
    } else {
      float* c = scratch(t_cols, KK * t.pc());
      m.C = c, m.ldc = t.pc();
      gemm(m);
      col2im(g, c, t.p0, t.p1, dst_img);
    }
  };
  parallel_for(g.N * g.G, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t ng = i0; ng < i1; ng++)
      for (int64_t ci = 0; ci < chunks; ci++) {
        const Tile t = tile_at(g, pc, chunks, ng * chunks + ci);
        const void* dyt = dy_tile(g, dy, dy_dt, t);
        GemmArgs m;
        m.K = OCg;
        m.A = mat_cols(at(w, w_dt, t.gi * OCg * KK), w_dt, KK);
        m.B = mat_rows(dyt, dy_dt, P);
        if (R0 > 0) {
          float* G = scratch(t_grad, R0 * t.pc());
          int64_t row = 0;
          for (const AdapterView& a : ad)
            if (a.p <= 0) adapter_grad(g, a, dyt, dy_dt, t.pc(), G + row * t.pc(), t.pc()), row += a.r;
          m.R = R0;
          m.A2 = mat_cols(acat.data(), DType::F32, KK);
          m.B2 = mat_rows(G, DType::F32, t.pc());
        }
        fold(t, dx32 + t.n * HWC + t.gi * g.cg() * g.H * g.W, m);
      }
  });
  std::vector<float> dxa;
  for (const AdapterView& a : ad) {
    if (a.p <= 0) continue;
    dxa.assign(static_cast<size_t>(std::max<int64_t>(g.N * HWC, 1)), 0.0f);
    parallel_for(g.N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; n++)
        for (int64_t ci = 0; ci < chunks; ci++) {
          const Tile t = tile_at(g, pc, chunks, n * chunks + ci);
          float* G = scratch(t_grad, a.r * t.pc());
          adapter_grad(g, a, dy_tile(g, dy, dy_dt, t), dy_dt, t.pc(), G, t.pc());
          GemmArgs m;
          m.K = a.r;
          m.A = mat_cols(a.A, a.a_dt, KK);
          m.B = mat_rows(G, DType::F32, t.pc());
          fold(t, dxa.data() + n * HWC, m);
        }
    });
    dropout_cpu(dxa.data(), DType::F32, dxa.data(), DType::F32, g.N * HWC, a.p, a.seed, a.stream);
    axpy_cpu(dx32, DType::F32, dxa.data(), DType::F32, 1.0f, g.N * HWC);
  }
  if (!f32_out) convert_cpu(dx32, DType::F32, dx, dx_dt, g.N * HWC);
}

// db += Σ over images and pixels of dy, per output channel.
void bias_grad(const ConvGeom& g, const void* dy, DType dy_dt, void* db, DType db_dt) {
  const int64_t P = g.P();
  parallel_for(g.OC, 1, [&](int64_t o0, int64_t o1) {
    float* row = scratch(t_row, P);
    for (int64_t o = o0; o < o1; o++) {
      double s = 0;
      for (int64_t n = 0; n < g.N; n++) {
        convert_cpu(at(dy, dy_dt, (n * g.OC + o) * P), dy_dt, row, DType::F32, P);
        float part = 0;
        for (int64_t p = 0; p < P; p++) part += row[p];
        s += part;
      }
      store_f32(db, db_dt, o, load_f32(db, db_dt, o) + static_cast<float>(s));
    }
  });
}

}  // namespace

bool conv_output_size(ConvGeom& g) {
  const int64_t eh = g.dh * (g.KH - 1) + 1, ew = g.dw * (g.KW - 1) + 1;
  const int64_t nh = g.H + 2 * g.ph - eh, nw = g.W + 2 * g.pw - ew;
  if (nh < 0 || nw < 0) return false;
  g.OH = nh / g.sh + 1, g.OW = nw / g.sw + 1;
  return true;
}

void conv2d_forward_cpu(const ConvGeom& g, const void* x, DType x_dt, const void* w, DType w_dt, const void* b, DType b_dt,
                        void* y, DType y_dt) {
  if (g.N == 0 || g.OC == 0 || g.P() == 0) return;
  if (g.kk() == 0) return fill_bias(g, b, b_dt, y, y_dt);
  if (g.depthwise()) {
    std::vector<float> keep;
    return depthwise_forward(g, as_f32(x, x_dt, g.N * g.C * g.H * g.W, keep), w, w_dt, b, b_dt, y, y_dt);
  }
  forward_gemm(g, x, x_dt, w, w_dt, b, b_dt, {}, y, y_dt, nullptr);
}

void conv2d_backward_cpu(const ConvGeom& g, const void* dy, DType dy_dt, const void* x, DType x_dt, const void* w, DType w_dt,
                         void* dx, DType dx_dt, void* dW, DType dW_dt, void* db, DType db_dt) {
  lora_conv2d_backward_cpu(g, dy, dy_dt, x, x_dt, w, w_dt, {}, nullptr, dx, dx_dt, dW, dW_dt, db, db_dt);
}

void lora_conv2d_forward_cpu(const ConvGeom& g, const void* x, DType x_dt, const void* w, DType w_dt, const void* b, DType b_dt,
                             const std::vector<AdapterView>& ad, void* y, DType y_dt, float* T) {
  const int64_t R = total_rank(ad);
  if (T) std::memset(T, 0, sizeof(float) * static_cast<size_t>(g.N * R * g.P()));
  if (g.N == 0 || g.OC == 0 || g.P() == 0) return;
  if (g.kk() == 0) return fill_bias(g, b, b_dt, y, y_dt);
  forward_gemm(g, x, x_dt, w, w_dt, b, b_dt, ad, y, y_dt, T);
}

void lora_conv2d_backward_cpu(const ConvGeom& g, const void* dy, DType dy_dt, const void* x, DType x_dt, const void* w, DType w_dt,
                              const std::vector<AdapterView>& ad, const float* T, void* dx, DType dx_dt, void* dW, DType dW_dt,
                              void* db, DType db_dt) {
  const int64_t HWC = g.C * g.H * g.W;
  if (db && g.N > 0 && g.P() > 0) bias_grad(g, dy, dy_dt, db, db_dt);
  if (g.N == 0 || g.P() == 0 || g.OC == 0 || g.kk() == 0) {
    if (dx) std::memset(dx, 0, static_cast<size_t>(g.N * HWC) * dtype_size(dx_dt));  // +0 has all bits clear in every float dtype
    return;
  }
  if (g.depthwise() && ad.empty()) {
    std::vector<float> xk, dk;
    const float* xf = dW ? as_f32(x, x_dt, g.N * HWC, xk) : nullptr;
    return depthwise_backward(g, as_f32(dy, dy_dt, g.N * g.OC * g.P(), dk), xf, w, w_dt, dx, dx_dt, dW, dW_dt);
  }
  backward_gemm(g, dy, dy_dt, x, x_dt, w, w_dt, ad, T, dx, dx_dt, dW, dW_dt);
}

}  // namespace peft
