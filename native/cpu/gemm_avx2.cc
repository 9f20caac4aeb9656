// AVX2 + FMA micro-kernels: a 6 x 16 register tile (12 ymm accumulators), A widened to f32 at pack
// time, B read as f32 or as 16-bit (f16 by vcvtph2ps, bf16 by a shift) and widened in registers.
// Full-width tiles with f32 or 16-bit C finish in registers; partial tiles use the scalar epilogue.
// GCC 12's intrinsic headers trip -Wmaybe-uninitialized on their own placeholders.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <type_traits>
#include <utility>

#include "gemm_kernels.h"

namespace peft {
namespace gemm_detail {
namespace {

constexpr int kMr = 6, kNr = 16;

inline __m256 load_c(const void* c, DType dt, int64_t off) {
  switch (dt) {
    case DType::F32: return _mm256_loadu_ps(static_cast<const float*>(c) + off);
    case DType::BF16: {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(c) + off));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    default: return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(c) + off)));
  }
}

// bf16 rounding as dtype.h's f32_to_bf16 (nearest even, NaN kept quiet).
inline __m128i to_bf16(__m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  r = _mm256_blendv_epi8(r, q, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  return _mm256_castsi256_si128(packed);
}

inline void store_c(void* c, DType dt, int64_t off, __m256 v) {
  switch (dt) {
    case DType::F32: _mm256_storeu_ps(static_cast<float*>(c) + off, v); break;
    case DType::BF16: _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(c) + off), to_bf16(v)); break;
    default:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(c) + off),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
  }
}

// The Tile result rule on register accumulators, for a full 16-column tile.
template <int M>
void finish_full(__m256 (&c)[M][2], const Tile& t) {
  const bool first = t.flags & kFirst, last = t.flags & kLast;
  __m256 al = _mm256_set1_ps(t.alpha);
  for (int i = 0; i < M; i++)
    for (int v = 0; v < 2; v++) c[i][v] = _mm256_mul_ps(c[i][v], al);
  if (last) {
    for (int64_t r = 0; r < t.kr; r++) {
      __m256 b0 = _mm256_loadu_ps(t.b2 + r * kNr), b1 = _mm256_loadu_ps(t.b2 + r * kNr + 8);
      for (int i = 0; i < M; i++) {
        __m256 av = _mm256_set1_ps(t.a2[r * t.a2_stride + i]);
        c[i][0] = _mm256_fmadd_ps(av, b0, c[i][0]);
        c[i][1] = _mm256_fmadd_ps(av, b1, c[i][1]);
      }
    }
    if (t.bias)
      for (int v = 0; v < 2; v++)
        for (int i = 0; i < M; i++) c[i][v] = _mm256_add_ps(c[i][v], _mm256_loadu_ps(t.bias + 8 * v));
  }
  if (t.col_scale)
    for (int v = 0; v < 2; v++) {
      __m256 s = _mm256_loadu_ps(t.col_scale + 8 * v);
      for (int i = 0; i < M; i++) c[i][v] = _mm256_mul_ps(c[i][v], s);
    }
  for (int i = 0; i < M; i++) {
    for (int v = 0; v < 2; v++) {
      __m256 x = c[i][v];
      if (!first) x = _mm256_add_ps(x, _mm256_loadu_ps(t.p + i * t.ldp + 8 * v));
      else if (t.flags & kAccumulate) x = _mm256_add_ps(x, load_c(t.c, t.c_dt, i * t.ldc + 8 * v));
      if (last) store_c(t.c, t.c_dt, i * t.ldc + 8 * v, x);
      else _mm256_storeu_ps(t.p + i * t.ldp + 8 * v, x);
    }
  }
}

inline __m256 load_b(const float* b) { return _mm256_loadu_ps(b); }
inline __m256 load_b(const uint16_t* b, BLayout l) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
  return l == BLayout::F16 ? _mm256_cvtph_ps(h) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <BLayout L>
struct ForLayout {
  template <int M, int NV>
  struct Kern {
    static void run(const Tile& t) {
      __m256 c[M][2];
      for (int i = 0; i < M; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
      const float* a = static_cast<const float*>(t.a);
      using E = std::conditional_t<L == BLayout::F32, float, uint16_t>;
      const E* b = static_cast<const E*>(t.b);
      for (int64_t k = 0; k < t.kc; k++, a += M, b += t.ldb) {
        __m256 bv[NV];
        for (int v = 0; v < NV; v++) {
          if constexpr (L == BLayout::F32) bv[v] = load_b(b + 8 * v);
          else bv[v] = load_b(b + 8 * v, L);
        }
        for (int i = 0; i < M; i++) {
          __m256 av = _mm256_set1_ps(a[i]);
          for (int v = 0; v < NV; v++) c[i][v] = _mm256_fmadd_ps(av, bv[v], c[i][v]);
        }
      }
      if (NV == 2 && t.n == kNr && t.m == M) return finish_full(c, t);
      alignas(32) float acc[M][kNr];
      for (int i = 0; i < M; i++) _mm256_store_ps(&acc[i][0], c[i][0]), _mm256_store_ps(&acc[i][8], c[i][1]);
      finish_tile_scalar(&acc[0][0], kNr, t, kNr);
    }
  };
};

template <BLayout L, int... Ms>
constexpr KernelSet make_set(std::integer_sequence<int, Ms...>, const char* name) {
  KernelSet s{name, kMr, kNr, L, ALayout::F32, false, static_cast<int>(kNr * (L == BLayout::F32 ? 4 : 2)), 4, {}, nullptr, nullptr, nullptr, nullptr, L == BLayout::F32};
  KernelFn table[kMaxMr][2] = {{&ForLayout<L>::template Kern<Ms + 1, 1>::run, &ForLayout<L>::template Kern<Ms + 1, 2>::run}...};
  for (int i = 0; i < kMaxMr; i++) s.kernel[i][0] = table[i][0], s.kernel[i][1] = table[i][1];
  return s;
}

using Rows = std::make_integer_sequence<int, kMr>;
constexpr KernelSet kF32 = make_set<BLayout::F32>(Rows{}, "avx2-f32");
constexpr KernelSet kF16 = make_set<BLayout::F16>(Rows{}, "avx2-f32-f16w");
constexpr KernelSet kBF16 = make_set<BLayout::BF16>(Rows{}, "avx2-f32-bf16w");

}  // namespace

const KernelSet* avx2_f32_kernels(DType b_dt) {
  return b_dt == DType::BF16 ? &kBF16 : b_dt == DType::F16 ? &kF16 : &kF32;
}

}  // namespace gemm_detail
}  // namespace peft
