// NF4 / FP4 quantisation as bitsandbytes' CUDA kernel does it (kQuantizeBlockwise with dQuantizeNF4 /
// dQuantizeFP4: multiply by the f32 reciprocal of the block's absmax, then the kernel's tree of strict
// comparisons against f32 midpoints, so a value on a midpoint takes the lower code), dequantisation as
// dequantize_4bit (table[code] · absmax in f32), and the 4-bit linear: the GEMM reads W through an unpacker
// that writes each B block as f32 panels just before the row groups use it (gemm.h GemmBSource).
#include "nf4.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>

#include "elem.h"
#include "gemm.h"
#include "isa.h"
#include "parallel.h"
#include "rows.h"

namespace peft {

using namespace quant4_detail;

namespace {

// bitsandbytes' get_4bit_type("nf4") (already in [-1, 1]) and get_4bit_type("fp4") / 12, in f32.
const float kNf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
const float kFp4[16] = {0.0f / 12.0f,  0.0625f / 12.0f,  8.0f / 12.0f,  12.0f / 12.0f,  4.0f / 12.0f,  6.0f / 12.0f,
                        2.0f / 12.0f,  3.0f / 12.0f,    -0.0f / 12.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f,
                        -4.0f / 12.0f, -6.0f / 12.0f,  -2.0f / 12.0f, -3.0f / 12.0f};

// dQuantizeNF4 (csrc/kernels.cu): NaN falls through every comparison to code 0.
inline uint8_t quantize_nf4(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 0b1111 : 0b1110;
      return x > 0.5016634166240692f ? 0b1101 : 0b1100;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 0b1011 : 0b1010;
    return x > 0.1202552504837513f ? 0b1001 : 0b1000;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 0b0111 : 0b0110;
    return x > -0.23460740596055984f ? 0b0101 : 0b0100;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 0b0011 : 0b0010;
  return x > -0.8480964004993439f ? 0b0001 : 0b0000;
}

// dQuantizeFP4: the sign from x < 0 (so -0 and NaN are positive), then the magnitude's tree.
inline uint8_t quantize_fp4(float x) {
  uint8_t sign = x < 0 ? 0b1000 : 0;
  x = std::fabs(x);
  if (x > 0.29166667f) {
    if (x > 0.583333f) return (x > 0.8333333f ? 0b0011 : 0b0010) + sign;
    return (x > 0.4166667f ? 0b101 : 0b100) + sign;
  }
  if (x > 0.0859375f) return (x > 0.20833333f ? 0b0111 : 0b0110) + sign;
  return (x > 0.00260417f ? 0b0001 : 0b0000) + sign;
}

inline float round_to(float v, DType dt) {
  if (dt == DType::BF16) return bf16_to_f32(f32_to_bf16(v));
  if (dt == DType::F16) return f16_to_f32(f32_to_f16(v));
  return v;
}

// The code of flat element i.
inline int code_at(const uint8_t* packed, int64_t i) { return (packed[i >> 1] >> ((i & 1) ? 0 : 4)) & 15; }

inline float value_at(const Quant4Weight& w, const float* table, int64_t i) {
  return round_to(round_to(table[code_at(w.packed, i)] * w.absmax[i / w.blocksize], w.wdt), w.cdt);
}

template <typename T, typename Widen>
int64_t quantize_typed(const T* w, int64_t n, int64_t bs, Quant4 type, uint8_t* packed, float* absmax, Widen widen) {
  const int64_t blocks = (n + bs - 1) / bs;
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
  parallel_for(blocks, std::max<int64_t>(1, 16384 / bs), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      const int64_t i0 = b * bs, i1 = std::min(n, i0 + bs);
      float amax = 0.0f;
      for (int64_t i = i0; i < i1; i++) {
        float v = widen(w[i]);
        if (!std::isfinite(v)) {
          int64_t cur = bad.load();
          while (i < cur && !bad.compare_exchange_weak(cur, i)) {}
          break;
        }
        amax = std::max(amax, std::fabs(v));
      }
      absmax[b] = amax;
      const float r = 1.0f / amax;  // inf for an all-zero block: 0 · inf is NaN, which takes code 0, as on CUDA
      auto q = [&](float v) { return type == Quant4::NF4 ? quantize_nf4(v * r) : quantize_fp4(v * r); };
      // Blocks hold an even number of values, so each byte belongs to one block; the padding value past n is
      // 0 (the kernel loads 0 there), quantised like any other.
      for (int64_t i = i0; i < i1; i += 2) {
        uint8_t hi = q(widen(w[i])), lo = q(i + 1 < n ? widen(w[i + 1]) : 0.0f);
        packed[i >> 1] = static_cast<uint8_t>(hi << 4 | lo);
      }
    }
  });
  int64_t b = bad.load();
  return b == std::numeric_limits<int64_t>::max() ? -1 : b;
}

// The GEMM's view of the weight: which unpacker, over what.
struct Source {
  GemmBSource src;
  Quant4Weight w;
  const float* table = nullptr;
  std::shared_ptr<const PanelCodes> panels;  // forward, SIMD paths: the cached panel form
  Isa isa = active_isa();                     // the path gemm() picks its kernels for (so their nr) in this call

  explicit Source(const Quant4Weight& wt) : w(wt), table(quant4_table(wt.type)) { src.state = this; }
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;

  // C (M, N) = A (M, K, row-major) · B + bias, B read through the unpacker.
  void product(int64_t M, int64_t N, int64_t K, const void* a, DType a_dt, void* c, DType c_dt, const void* bias, DType bias_dt) const {
    GemmArgs g;
    g.M = M, g.N = N, g.K = K;
    g.A = mat_rows(a, a_dt, K);
    g.B.dt = src.dt;
    g.b_src = &src;
    g.C = c, g.c_dt = c_dt, g.ldc = N;
    g.bias = bias, g.bias_dt = bias_dt;
    gemm(g);
  }
};

// Forward: B = Wᵀ, B[k][n] = W[n][k]. The portable path reads the codes where they are.
void unpack_t_scalar(const GemmBSource& s, int64_t k0, int64_t kc, int64_t n0, int nr, void* out) {
  float* dst = static_cast<float*>(out);
  const Source& src = *static_cast<const Source*>(s.state);
  const Quant4Weight& w = src.w;
  for (int j = 0; j < nr; j++) {
    const int64_t n = n0 + j;
    for (int64_t k = k0; k < k0 + kc; k++)
      dst[(k - k0) * nr + j] = n < w.N && k < w.K ? value_at(w, src.table, n * w.K + k) : 0.0f;
  }
}

void unpack_t_panels(const GemmBSource& s, int64_t k0, int64_t kc, int64_t n0, int nr, void* out) {
  float* dst = static_cast<float*>(out);
  const Source& src = *static_cast<const Source*>(s.state);
#if PEFT_X86
  if (src.isa == Isa::Avx512 && nr == kPanel) return unpack_panel_avx512(*src.panels, src.table, src.w.wdt, src.w.cdt, k0, kc, n0, dst);
  if (src.isa == Isa::Avx2 && nr == kPanel / 2) return unpack_panel_avx2(*src.panels, src.table, src.w.wdt, src.w.cdt, k0, kc, n0, dst);
#endif
  unpack_t_scalar(s, k0, kc, n0, nr, dst);
}

#if PEFT_X86
// Forward with bf16 x and bf16 compute on AVX-512 BF16 (AMX or vdpbf16ps kernels): bf16 pairs, no f32 panel.
void unpack_t_pairs(const GemmBSource& s, int64_t k0, int64_t kc, int64_t n0, int, void* out) {
  const Source& src = *static_cast<const Source*>(s.state);
  unpack_pairs_avx512bf16(*src.panels, src.table, src.w.wdt, k0, kc, n0, static_cast<uint16_t*>(out));
}
#endif

// Backward: B = W, B[k][n] = W[k][n]: each k-step is a run of one row's codes.
void unpack_rows_scalar(const GemmBSource& s, int64_t k0, int64_t kc, int64_t n0, int nr, void* out) {
  float* dst = static_cast<float*>(out);
  const Source& src = *static_cast<const Source*>(s.state);
  const Quant4Weight& w = src.w;
  for (int64_t k = k0; k < k0 + kc; k++) {
    float* d = dst + (k - k0) * nr;
    for (int j = 0; j < nr; j++) d[j] = k < w.N && n0 + j < w.K ? value_at(w, src.table, k * w.K + n0 + j) : 0.0f;
  }
}

void unpack_rows_fast(const GemmBSource& s, int64_t k0, int64_t kc, int64_t n0, int nr, void* out) {
  float* dst = static_cast<float*>(out);
  const Source& src = *static_cast<const Source*>(s.state);
#if PEFT_X86
  if (nr == kPanel && n0 + nr <= src.w.K) return unpack_rows_avx512(src.w, src.table, k0, kc, n0, dst);
#endif
  unpack_rows_scalar(s, k0, kc, n0, nr, dst);
}

#if PEFT_X86
// Backward with bf16 dy and bf16 compute on AMX: bf16 pairs of rows, no f32 panel.
void unpack_rows_pairs(const GemmBSource& s, int64_t k0, int64_t kc, int64_t n0, int, void* out) {
  const Source& src = *static_cast<const Source*>(s.state);
  unpack_rows_pairs_avx512bf16(src.w, src.table, k0, kc, n0, static_cast<uint16_t*>(out));
}
#endif

// The derived-object kind of the panel form on the codes' storage.
constexpr int kPanelKind = 0x4e463401;

struct PanelPack : PanelCodes {
  std::shared_ptr<Storage> mem;
  const uint8_t* src = nullptr;
  const float* src_absmax = nullptr;
  std::shared_ptr<Storage> absmax_storage;
  uint64_t absmax_version = 0;
  int64_t bs = 0;
};

std::shared_ptr<PanelPack> build_panels(const Quant4Weight& w, int64_t g) {
  auto p = std::make_shared<PanelPack>();
  p->N = w.N, p->K = w.K, p->g = g, p->src = w.packed, p->src_absmax = w.absmax, p->bs = w.blocksize;
  p->absmax_storage = w.absmax_storage;
  p->absmax_version = w.absmax_storage ? w.absmax_storage->version.load() : 0;
  p->panels = (w.N + kPanel - 1) / kPanel;
  const int64_t chunks = w.K / g;
  const size_t code_bytes = static_cast<size_t>(p->panels * w.K * (kPanel / 2));
  const size_t scale_bytes = sizeof(float) * static_cast<size_t>(p->panels * chunks * kPanel);
  const size_t code_aligned = (code_bytes + 63) / 64 * 64;
  p->mem = alloc_host(code_aligned + scale_bytes, false);
  uint8_t* codes = static_cast<uint8_t*>(p->mem->data);
  float* scales = reinterpret_cast<float*>(codes + code_aligned);
  p->codes = codes, p->scales = scales;
  const int64_t N = w.N, K = w.K;
  parallel_for(p->panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t pn = p0; pn < p1; pn++) {
      uint8_t* pc = codes + pn * K * (kPanel / 2);
      float* sc = scales + pn * chunks * kPanel;
      std::memset(pc, 0, static_cast<size_t>(K * (kPanel / 2)));
      for (int j = 0; j < kPanel; j++) {
        const int64_t n = pn * kPanel + j;
        for (int64_t c = 0; c < chunks; c++) sc[c * kPanel + j] = n < N ? w.absmax[(n * K + c * g) / w.blocksize] : 0.0f;
        if (n >= N) continue;  // code 0 times scale 0
        const int shift = j < 16 ? 0 : 4;
        for (int64_t k = 0; k < K; k++) pc[k * 16 + (j & 15)] |= static_cast<uint8_t>(code_at(w.packed, n * K + k) << shift);
      }
    }
  });
  return p;
}

std::shared_ptr<const PanelCodes> panels_for(const Quant4Weight& w, int64_t g) {
  auto build = [&] { return build_panels(w, g); };
  if (!w.cache || w.cache->device != Device::CPU) return build();
  auto p = w.cache->derived<PanelPack>(kPanelKind, build);
  // The absmax is not part of the codes' version: a pack made with other scales (another absmax tensor, or
  // this one written since), or through another view of the same codes, is rebuilt for this call.
  const bool same_scales = w.absmax_storage && p->absmax_storage == w.absmax_storage && p->absmax_version == w.absmax_storage->version.load();
  if (same_scales && p->src == w.packed && p->src_absmax == w.absmax && p->N == w.N && p->K == w.K && p->bs == w.blocksize) return p;
  return build();
}

bool avx512_path() { return PEFT_X86 && active_isa() == Isa::Avx512; }

bool simd_path() { return PEFT_X86 && active_isa() != Isa::Scalar; }

#if PEFT_X86
// bf16 x with bf16 compute multiplies bf16 values exactly as the bf16 kernels do, so on AMX W is unpacked
// straight into their bf16 pair layout (32-deep k-blocks). Not for vdpbf16ps alone: on Sapphire Rapids it runs
// at half the f32 FMA rate, and (512, 4096, 4096) took 1.5x the f32 panels' time there.
bool bf16_pairs(DType x_dt, const Quant4Weight& w) {
  return avx512_path() && amx_enabled() && x_dt == DType::BF16 && w.cdt == DType::BF16 && w.K % 32 == 0;
}

// Small M (decode, short prompts): the GEMM's f32 panels cost more than the products they feed (each value is
// unpacked, stored and loaded again for at most two row groups), so the kernels dequantise in registers and
// multiply at once. x is laid out k-major in f32 (exact for every input dtype) for the FMA kernel, or with bf16
// x and bf16 compute on AMX as a row of A tiles (rows past M zero).
void direct_forward(const void* x, DType x_dt, int64_t M, const Quant4Weight& w, const PanelCodes& pc, const void* bias,
                    DType bias_dt, void* y, DType y_dt) {
  const int64_t K = w.K, N = w.N;
  const bool amx = bf16_pairs(x_dt, w);
  std::unique_ptr<float, decltype(&std::free)> staged(static_cast<float*>(std::aligned_alloc(64, sizeof(float) * 16 * K)), &std::free);
  if (!staged) throw std::bad_alloc();
  float* xt = staged.get();
  uint16_t* xs = reinterpret_cast<uint16_t*>(xt);
  if (amx) {
    parallel_for(K / 32, 8, [&](int64_t b0, int64_t b1) {
      for (int64_t kb = b0; kb < b1; kb++)
        for (int64_t m = 0; m < 16; m++) {
          uint16_t* d = xs + kb * 512 + m * 32;
          if (m < M) std::memcpy(d, static_cast<const uint16_t*>(x) + m * K + kb * 32, 64);
          else std::memset(d, 0, 64);
        }
    });
  } else {
    parallel_for(K, 1024, [&](int64_t k0, int64_t k1) {
      for (int64_t m = 0; m < M; m++)
        for (int64_t k = k0; k < k1; k++) xt[k * 16 + m] = load_f32(x, x_dt, m * K + k);
    });
  }
  const float* table = quant4_table(w.type);
  // Panels are claimed one at a time, so a thread slowed by others on its core does not hold up the call (each
  // panel's sums are the same on any thread).
  std::atomic<int64_t> next{0};
  parallel_run(static_cast<int>(std::min<int64_t>(num_threads(), pc.panels)), [&](int, int) {
    alignas(64) float tile[kDirectRows * kPanel];
    if (amx) direct_amx_begin();
    for (int64_t pn; (pn = next.fetch_add(1, std::memory_order_relaxed)) < pc.panels;) {
      if (amx) direct_panel_amx(pc, table, w.wdt, xs, pn, tile);
      else direct_panel_avx512(pc, table, w.wdt, w.cdt, xt, M, pn, tile);
      const int64_t n0 = pn * kPanel, cols = std::min<int64_t>(kPanel, N - n0);
      float b[kPanel] = {};
      if (bias) load_row(bias, bias_dt, n0, b, cols);
      for (int64_t m = 0; m < M; m++) {
        float* row = tile + m * kPanel;
        for (int j = 0; j < kPanel; j++) row[j] += b[j];
        store_row(row, y, y_dt, m * N + n0, cols);
      }
    }
    if (amx) direct_amx_end();
  });
}
#endif

}  // namespace

const float* quant4_table(Quant4 t) { return t == Quant4::NF4 ? kNf4 : kFp4; }

int64_t quant4_quantize(const void* w, DType dt, int64_t n, int64_t bs, Quant4 type, uint8_t* packed, float* absmax) {
  if (dt == DType::F32) return quantize_typed(static_cast<const float*>(w), n, bs, type, packed, absmax, [](float v) { return v; });
  if (dt == DType::BF16) return quantize_typed(static_cast<const uint16_t*>(w), n, bs, type, packed, absmax, bf16_to_f32);
  return quantize_typed(static_cast<const uint16_t*>(w), n, bs, type, packed, absmax, f16_to_f32);
}

void quant4_dequantize(const Quant4Weight& w, void* out, DType out_dt) {
  const float* table = quant4_table(w.type);
  const int64_t n = w.N * w.K;
  parallel_for(n, 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) store_f32(out, out_dt, i, round_to(table[code_at(w.packed, i)] * w.absmax[i / w.blocksize], w.wdt));
  });
}

void quant4_linear_cpu(const void* x, DType x_dt, int64_t M, const Quant4Weight& w, const void* bias, DType bias_dt, void* y,
                       DType y_dt) {
  if (M <= 0 || w.N <= 0) return;
  Source src(w);
  // The panel form needs chunks of at least 16 k-steps per scale (else its scales outweigh the codes).
  const int64_t g = std::gcd(w.K, w.blocksize);
#if PEFT_X86
  if (avx512_path() && g >= 16 && w.K > 0) {
    if (M <= kDirectRows) return direct_forward(x, x_dt, M, w, *panels_for(w, g), bias, bias_dt, y, y_dt);
    if (bf16_pairs(x_dt, w)) {
      src.panels = panels_for(w, g);
      src.src.unpack = unpack_t_pairs;
      src.src.dt = DType::BF16;
      return src.product(M, w.N, w.K, x, x_dt, y, y_dt, bias, bias_dt);
    }
  }
#endif
  if (simd_path() && g >= 16 && w.K > 0) {
    src.panels = panels_for(w, g);
    src.src.unpack = unpack_t_panels;
  } else {
    src.src.unpack = unpack_t_scalar;
  }
  src.product(M, w.N, w.K, x, x_dt, y, y_dt, bias, bias_dt);
}

void quant4_linear_grad_input_cpu(const void* dy, DType dy_dt, int64_t M, const Quant4Weight& w, void* dx, DType dx_dt) {
  if (M <= 0 || w.K <= 0) return;
  Source src(w);
#if PEFT_X86
  if (M > kDirectRows && bf16_pairs(dy_dt, w)) {
    src.src.unpack = unpack_rows_pairs;
    src.src.dt = DType::BF16;
    return src.product(M, w.K, w.N, dy, dy_dt, dx, dx_dt, nullptr, DType::F32);
  }
#endif
  src.src.unpack = avx512_path() && w.K % kPanel == 0 ? unpack_rows_fast : unpack_rows_scalar;
  src.product(M, w.K, w.N, dy, dy_dt, dx, dx_dt, nullptr, DType::F32);
}

Quant4PackRegion quant4_cached_pack(Storage* s) {
  auto p = s->cached_of<PanelPack>(kPanelKind);
  if (!p) return {};
  return {p->mem->data, p->mem->bytes};
}

}  // namespace peft
