// What the AVX-512 kernel files share (each is compiled with AVX-512 flags): C loads/stores in any
// output dtype and the tile epilogue on zmm accumulators. Everything here has internal linkage, so no
// AVX-512 code can be picked by the linker for a baseline caller.
#pragma once
// GCC 12's intrinsic headers trip -Wmaybe-uninitialized on their own placeholders.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "gemm_kernels.h"

namespace peft {
namespace gemm_detail {
namespace {

constexpr int kZmmNr = 32;  // panel width of every AVX-512 set: two zmm of f32

inline __mmask16 col_mask(int n, int v) {
  int r = n - 16 * v;
  return r >= 16 ? static_cast<__mmask16>(0xffff) : r <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << r) - 1);
}

// Loads/stores of 16 C values in any output dtype; Full means all 16 columns are valid: plain forms for
// the common whole tile, masked ones only at the right edge of C.
template <bool Full>
inline __m256i load16(const void* p, __mmask16 k) {
  if constexpr (Full) return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  else return _mm256_maskz_loadu_epi16(k, p);
}
template <bool Full>
inline void store16(void* p, __mmask16 k, __m256i v) {
  if constexpr (Full) _mm256_storeu_si256(static_cast<__m256i*>(p), v);
  else _mm256_mask_storeu_epi16(p, k, v);
}
template <bool Full>
inline __m512 load_f32(const float* p, __mmask16 k) {
  if constexpr (Full) return _mm512_loadu_ps(p);
  else return _mm512_maskz_loadu_ps(k, p);
}
template <bool Full>
inline void store_f32(float* p, __mmask16 k, __m512 v) {
  if constexpr (Full) _mm512_storeu_ps(p, v);
  else _mm512_mask_storeu_ps(p, k, v);
}

template <bool Full>
inline __m512 load_c(const void* c, DType dt, int64_t off, __mmask16 k) {
  switch (dt) {
    case DType::F32: return load_f32<Full>(static_cast<const float*>(c) + off, k);
    case DType::BF16: {
      __m256i h = load16<Full>(static_cast<const uint16_t*>(c) + off, k);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    default: return _mm512_cvtph_ps(load16<Full>(static_cast<const uint16_t*>(c) + off, k));
  }
}

// Round to nearest even as dtype.h's f32_to_bf16 does (integer add; NaN stays a quiet NaN).
inline __m256i to_bf16(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

template <bool Full>
inline void store_c(void* c, DType dt, int64_t off, __mmask16 k, __m512 v) {
  switch (dt) {
    case DType::F32: store_f32<Full>(static_cast<float*>(c) + off, k, v); break;
    case DType::BF16: store16<Full>(static_cast<uint16_t*>(c) + off, k, to_bf16(v)); break;
    default: store16<Full>(static_cast<uint16_t*>(c) + off, k, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); break;
  }
}

// Pulls in the C rows the epilogue will read or write: towards L2 when the k loop starts (they come
// from L3 or memory), into L1 shortly before it ends (A and B stream through L1 in between).
template <int M, bool L1 = false>
inline void prefetch_c(const Tile& t) {
  bool from_p = !(t.flags & kFirst) && t.p;
  const char* base = from_p ? reinterpret_cast<const char*>(t.p) : static_cast<const char*>(t.c);
  int64_t ld = from_p ? t.ldp * 4 : t.ldc * static_cast<int64_t>(t.c_dt == DType::F32 ? 4 : 2);
  int64_t row_bytes = from_p || t.c_dt == DType::F32 ? 128 : 64;
#pragma GCC unroll 32
  for (int i = 0; i < M; i++) {
    for (const char* q : {base + i * ld, base + i * ld + row_bytes - 1}) L1 ? prefetch_l1(q) : prefetch_l2(q);
  }
}

// base + value, stored to C (last K block) or to the f32 partial, row by row, for any output dtype,
// from accumulators spilled to `acc` (rows of 16*nv floats). Out of line and fed a copy: only 16-bit
// outputs take it, and were the register tile's address to escape into it, the compiler would keep
// that tile in memory inside every kernel loop.
template <bool Full>
__attribute__((noinline)) void update_rows_any(const float* acc, int nv, const Tile& t) {
  const bool first = t.flags & kFirst, last = t.flags & kLast;
  for (int i = 0; i < t.m; i++) {
    for (int v = 0; v < nv; v++) {
      __mmask16 k = col_mask(t.n, v);
      __m512 x = _mm512_loadu_ps(acc + (i * nv + v) * 16);
      if (!first) x = _mm512_add_ps(x, load_f32<Full>(t.p + i * t.ldp + 16 * v, k));
      else if (t.flags & kAccumulate) x = _mm512_add_ps(x, load_c<Full>(t.c, t.c_dt, i * t.ldc + 16 * v, k));
      if (last) store_c<Full>(t.c, t.c_dt, i * t.ldc + 16 * v, k, x);
      else store_f32<Full>(t.p + i * t.ldp + 16 * v, k, x);
    }
  }
}

// The f32 output case, in registers and decided once per tile: the partial is C itself, so every block
// is the same read-add-write (or a plain write for the first block, without accumulate).
template <bool Full, int M, int NV>
__attribute__((always_inline)) inline void update_rows_f32(__m512 (&c)[M][NV], const Tile& t) {
  __mmask16 k[NV];
#pragma GCC unroll 2
  for (int v = 0; v < NV; v++) k[v] = col_mask(t.n, v);
  float* p = static_cast<float*>(t.c);
  const bool add = !(t.flags & kFirst) || (t.flags & kAccumulate);
#pragma GCC unroll 32
  for (int i = 0; i < M; i++) {
    if (i >= t.m) break;
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
      float* q = p + i * t.ldc + 16 * v;
      store_f32<Full>(q, k[v], add ? _mm512_add_ps(c[i][v], load_f32<Full>(q, k[v])) : c[i][v]);
    }
  }
}

// The Tile result rule (gemm_kernels.h) on register accumulators c[M][NV] for columns 16*v...
template <int M, int NV>
__attribute__((always_inline)) inline void finish(__m512 (&c)[M][NV], const Tile& t) {
  const bool last = t.flags & kLast;
  if (t.alpha != 1.0f) {
    __m512 al = _mm512_set1_ps(t.alpha);
#pragma GCC unroll 32
    for (int i = 0; i < M; i++)
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) c[i][v] = _mm512_mul_ps(c[i][v], al);
  }
  if (last) {
    // The fused extra k-steps, on the same register tile.
    for (int64_t r = 0; r < t.kr; r++) {
      __m512 b[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_ps(t.b2 + r * kZmmNr + 16 * v);
      const float* a2 = t.a2 + r * t.a2_stride;
#pragma GCC unroll 32
      for (int i = 0; i < M; i++) {
        __m512 av = _mm512_set1_ps(a2[i]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) c[i][v] = _mm512_fmadd_ps(av, b[v], c[i][v]);
      }
    }
    if (t.bias) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; v++) {
        __m512 bv = _mm512_loadu_ps(t.bias + 16 * v);
#pragma GCC unroll 32
        for (int i = 0; i < M; i++) c[i][v] = _mm512_add_ps(c[i][v], bv);
      }
    }
  }
  if (t.col_scale) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
      __m512 sv = _mm512_loadu_ps(t.col_scale + 16 * v);
#pragma GCC unroll 32
      for (int i = 0; i < M; i++) c[i][v] = _mm512_mul_ps(c[i][v], sv);
    }
  }
  const bool full = t.n == 16 * NV;
  if (t.c_dt == DType::F32) return full ? update_rows_f32<true>(c, t) : update_rows_f32<false>(c, t);
  alignas(64) float acc[M * NV * 16];
#pragma GCC unroll 32
  for (int i = 0; i < M; i++)
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) _mm512_store_ps(acc + (i * NV + v) * 16, c[i][v]);
  full ? update_rows_any<true>(acc, NV, t) : update_rows_any<false>(acc, NV, t);
}

// kernel[m-1] = {K<m, 1>, K<m, 2>} for m in 1..sizeof...(Ms): the half- and full-width variants.
template <template <int, int> class K, int... Ms>
constexpr KernelSet make_set(std::integer_sequence<int, Ms...>, KernelSet s) {
  KernelFn table[kMaxMr][2] = {{&K<Ms + 1, 1>::run, &K<Ms + 1, 2>::run}...};
  for (int i = 0; i < kMaxMr; i++) s.kernel[i][0] = table[i][0], s.kernel[i][1] = table[i][1];
  return s;
}

// The AVX-512 B packer (transposes) for a set.
constexpr KernelSet with_pack_b(KernelSet s) {
  s.pack_b = &pack_b_panels_avx512;
  return s;
}

// One step along Tile::pf: two lines per k-step (an f32 panel row is 128 bytes). With no stream
// (pf_step 0) it re-touches the same lines, which costs load slots and no memory traffic.
inline void prefetch_step(const char*& pf, int64_t step) {
  prefetch_l2(pf);
  prefetch_l2(pf + 64);
  pf += step;
}

}  // namespace
}  // namespace gemm_detail
}  // namespace peft
