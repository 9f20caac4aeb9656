// The AVX-512 inner kernel of rank_update: kRows rows x 16·kQ columns of C in zmm accumulators while the R
// rank-1 terms are added; each slice of Rm is loaded once for all the rows, and the independent FMA chains
// hide the FMA latency.
#include <immintrin.h>

#include "rank_update.h"

namespace peft {
namespace {

constexpr int64_t kAhead = 512;  // floats (2 KiB) ahead of the current column: 1-8 KiB tried, 2 KiB best
// 6 rows x 64 columns: 24 accumulators + 4 slices of Rm + a broadcast fit the 32 zmm registers; of the
// shapes tried (4x4, 8x2, 12x2, 6x4) this one streamed W fastest on Zen 5.
constexpr int kRows = 6, kQ = 4;

template <int ROWS, int Q>
void block(float* C, int64_t ldc, int64_t n, const float* L, const float* Rm, int64_t ldr, int64_t R) {
  int64_t j = 0;
  for (; j + 16 * Q <= n; j += 16 * Q) {
    // Ask for the rows' data well ahead: the FMA work per line would otherwise stall the memory stream.
    for (int i = 0; i < ROWS; i++)
      for (int q = 0; q < Q; q++) _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + j + kAhead + 16 * q), _MM_HINT_T0);
    __m512 acc[ROWS][Q];
    for (int i = 0; i < ROWS; i++)
      for (int q = 0; q < Q; q++) acc[i][q] = _mm512_loadu_ps(C + i * ldc + j + 16 * q);
    const float* m = Rm + j;
    for (int64_t k = 0; k < R; k++, m += ldr) {
      __m512 mv[Q];
      for (int q = 0; q < Q; q++) mv[q] = _mm512_loadu_ps(m + 16 * q);
      for (int i = 0; i < ROWS; i++) {
        __m512 s = _mm512_set1_ps(L[i * R + k]);
        for (int q = 0; q < Q; q++) acc[i][q] = _mm512_fmadd_ps(s, mv[q], acc[i][q]);
      }
    }
    for (int i = 0; i < ROWS; i++)
      for (int q = 0; q < Q; q++) _mm512_storeu_ps(C + i * ldc + j + 16 * q, acc[i][q]);
  }
  for (; j < n; j += 16) {  // the tail, 16 (masked) columns at a time
    __mmask16 mask = n - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - j)) - 1);
    __m512 acc[ROWS];
    for (int i = 0; i < ROWS; i++) acc[i] = _mm512_maskz_loadu_ps(mask, C + i * ldc + j);
    const float* m = Rm + j;
    for (int64_t k = 0; k < R; k++, m += ldr) {
      __m512 mv = _mm512_maskz_loadu_ps(mask, m);
      for (int i = 0; i < ROWS; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(L[i * R + k]), mv, acc[i]);
    }
    for (int i = 0; i < ROWS; i++) _mm512_mask_storeu_ps(C + i * ldc + j, mask, acc[i]);
  }
}

void kernel(float* C, int64_t ldc, int64_t nrows, int64_t n, const float* L, const float* Rm, int64_t ldr, int64_t R) {
  int64_t r = 0;
  for (; r + kRows <= nrows; r += kRows) block<kRows, kQ>(C + r * ldc, ldc, n, L + r * R, Rm, ldr, R);
  for (; r < nrows; r++) block<1, kQ>(C + r * ldc, ldc, n, L + r * R, Rm, ldr, R);
}

}  // namespace

RankUpdateKernel rank_update_kernel_avx512() { return kernel; }

}  // namespace peft
