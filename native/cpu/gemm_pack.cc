// Packing of GEMM operands into the layouts of gemm_kernels.h. Portable code: packing touches each
// element once, the kernels touch it MR or NR times, so only the loop order matters here (the inner
// loop follows whichever source stride is 1, so rows or columns are read contiguously).
#include <cstring>
#include <type_traits>

#include "gemm_kernels.h"

namespace peft {
namespace gemm_detail {
namespace {

template <DType D> struct Src;
template <> struct Src<DType::F32> { using T = float; static float f32(float v) { return v; } };
template <> struct Src<DType::F16> { using T = uint16_t; static float f32(uint16_t v) { return f16_to_f32(v); } };
template <> struct Src<DType::BF16> { using T = uint16_t; static float f32(uint16_t v) { return bf16_to_f32(v); } };
// int8 weights (LLM.int8's CB), widened as packed; only f32 layouts are chosen for them.
template <> struct Src<DType::I8> { using T = int8_t; static float f32(int8_t v) { return v; } };

// Packed element: f32 (converted), or the source's own 16-bit pattern (16-bit layouts are only chosen
// for sources of that dtype; an f32 source would be rounded to bf16).
template <DType S, typename D>
inline D convert(typename Src<S>::T v) {
  if constexpr (std::is_same_v<D, float>) return Src<S>::f32(v);
  else if constexpr (S == DType::F32) return f32_to_bf16(v);
  else if constexpr (S == DType::I8) return f32_to_bf16(v);
  else return v;
}

// put(r, c, v) for r in [0, rows), c in [0, cols) with v = src(r, c) = s[r*rs + c*cs] converted; the
// loop whose source stride is 1 runs innermost.
template <DType S, typename D, typename Put>
void copy_block(const typename Src<S>::T* s, int64_t rs, int64_t cs, int64_t rows, int64_t cols, Put put) {
  if (rs == 1 && cs != 1) {
    for (int64_t c = 0; c < cols; c++)
      for (int64_t r = 0; r < rows; r++) put(r, c, convert<S, D>(s[r + c * cs]));
  } else {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) put(r, c, convert<S, D>(s[r * rs + c * cs]));
  }
}

template <DType S>
void pack_a_typed(ALayout l, const GemmMat& a, int64_t i0, int m, int ms, int64_t K, int64_t Kp, void* dst) {
  using T = typename Src<S>::T;
  const T* s = static_cast<const T*>(a.p) + i0 * a.rs;
  if (l == ALayout::F32) {
    float* d = static_cast<float*>(dst);
    std::memset(d, 0, sizeof(float) * ms * Kp);
    // A(i, k) -> d[k*ms + i]: the block is (k, i) with strides (cs, rs).
    if (a.ks) copy_block<S, float>(s, a.cs, a.rs, K, m, [&](int64_t k, int64_t i, float v) { d[k * ms + i] = v * a.ks[k]; });
    else copy_block<S, float>(s, a.cs, a.rs, K, m, [&](int64_t k, int64_t i, float v) { d[k * ms + i] = v; });
  } else if (l == ALayout::BF16Pairs) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    std::memset(d, 0, sizeof(uint16_t) * ms * Kp);
    copy_block<S, uint16_t>(s, a.cs, a.rs, K, m, [&](int64_t k, int64_t i, uint16_t v) {
      d[((k >> 1) * ms + i) * 2 + (k & 1)] = v;
    });
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst);
    std::memset(d, 0, sizeof(uint16_t) * ms * Kp);
    copy_block<S, uint16_t>(s, a.cs, a.rs, K, m, [&](int64_t k, int64_t i, uint16_t v) {
      d[((k >> 5) * ms + i) * 32 + (k & 31)] = v;
    });
  }
}

template <DType S>
void pack_b_typed(BLayout l, int nr, const GemmMat& b, int64_t K, int64_t N, int64_t Kp, int64_t p0, int64_t p1,
                  void* dst) {
  using T = typename Src<S>::T;
  const T* s = static_cast<const T*>(b.p);
  size_t esz = blayout_size(l);
  for (int64_t p = p0; p < p1; p++) {
    int64_t j0 = p * nr, jn = N - j0 < nr ? N - j0 : nr;
    char* panel = static_cast<char*>(dst) + (p - p0) * Kp * nr * esz;
    std::memset(panel, 0, Kp * nr * esz);
    const T* src = s + j0 * b.cs;
    if (l == BLayout::F32) {
      float* d = reinterpret_cast<float*>(panel);
      copy_block<S, float>(src, b.rs, b.cs, K, jn, [&](int64_t k, int64_t j, float v) { d[k * nr + j] = v; });
    } else if (l == BLayout::BF16Pairs) {
      uint16_t* d = reinterpret_cast<uint16_t*>(panel);
      copy_block<S, uint16_t>(src, b.rs, b.cs, K, jn, [&](int64_t k, int64_t j, uint16_t v) {
        d[((k >> 1) * nr + j) * 2 + (k & 1)] = v;
      });
    } else {
      uint16_t* d = reinterpret_cast<uint16_t*>(panel);
      copy_block<S, uint16_t>(src, b.rs, b.cs, K, jn, [&](int64_t k, int64_t j, uint16_t v) { d[k * nr + j] = v; });
    }
  }
}

}  // namespace

size_t blayout_size(BLayout l) { return l == BLayout::F32 ? 4 : 2; }
size_t alayout_size(ALayout l) { return l == ALayout::F32 ? 4 : 2; }
// Pairs are padded to 32 k-steps so the same packed weight also feeds 32-deep AMX tiles.
int blayout_kalign(BLayout l) { return l == BLayout::BF16Pairs ? 32 : 1; }

void pack_a_group(ALayout l, const GemmMat& a, int64_t i0, int m, int ms, int64_t K, int64_t Kp, void* dst) {
  switch (a.dt) {
    case DType::F16: return pack_a_typed<DType::F16>(l, a, i0, m, ms, K, Kp, dst);
    case DType::BF16: return pack_a_typed<DType::BF16>(l, a, i0, m, ms, K, Kp, dst);
    default: return pack_a_typed<DType::F32>(l, a, i0, m, ms, K, Kp, dst);
  }
}

void pack_b_panels(BLayout l, int nr, const GemmMat& b, int64_t K, int64_t N, int64_t Kp, int64_t p0, int64_t p1, void* dst) {
  switch (b.dt) {
    case DType::F16: return pack_b_typed<DType::F16>(l, nr, b, K, N, Kp, p0, p1, dst);
    case DType::BF16: return pack_b_typed<DType::BF16>(l, nr, b, K, N, Kp, p0, p1, dst);
    case DType::I8: return pack_b_typed<DType::I8>(l, nr, b, K, N, Kp, p0, p1, dst);
    default: return pack_b_typed<DType::F32>(l, nr, b, K, N, Kp, p0, p1, dst);
  }
}

}  // namespace gemm_detail
}  // namespace peft
