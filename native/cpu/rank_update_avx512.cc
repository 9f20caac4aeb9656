// The AVX-512 inner kernel of rank_update: 4 rows x 64 columns of C in 16 zmm accumulators while the R
// rank-1 terms are added; each 64-column slice of Rm is loaded once for the 4 rows, and the 16 independent
// FMA chains hide the FMA latency.
#include <immintrin.h>

#include "rank_update.h"

namespace peft {
namespace {

constexpr int64_t kAhead = 1024;  // floats (4 KiB) ahead of the current column

template <int ROWS>
void block(float* C, int64_t ldc, int64_t n, const float* L, const float* Rm, int64_t ldr, int64_t R) {
  int64_t j = 0;
  for (; j + 64 <= n; j += 64) {
    // Ask for the rows' data well ahead: the FMA work per line would otherwise stall the memory stream.
    for (int i = 0; i < ROWS; i++)
      for (int q = 0; q < 4; q++) _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + j + kAhead + 16 * q), _MM_HINT_T0);
    __m512 acc[ROWS][4];
    for (int i = 0; i < ROWS; i++)
      for (int q = 0; q < 4; q++) acc[i][q] = _mm512_loadu_ps(C + i * ldc + j + 16 * q);
    const float* m = Rm + j;
    for (int64_t k = 0; k < R; k++, m += ldr) {
      __m512 m0 = _mm512_loadu_ps(m), m1 = _mm512_loadu_ps(m + 16), m2 = _mm512_loadu_ps(m + 32), m3 = _mm512_loadu_ps(m + 48);
      for (int i = 0; i < ROWS; i++) {
        __m512 s = _mm512_set1_ps(L[i * R + k]);
        acc[i][0] = _mm512_fmadd_ps(s, m0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(s, m1, acc[i][1]);
        acc[i][2] = _mm512_fmadd_ps(s, m2, acc[i][2]);
        acc[i][3] = _mm512_fmadd_ps(s, m3, acc[i][3]);
      }
    }
    for (int i = 0; i < ROWS; i++)
      for (int q = 0; q < 4; q++) _mm512_storeu_ps(C + i * ldc + j + 16 * q, acc[i][q]);
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
  for (; r + 4 <= nrows; r += 4) block<4>(C + r * ldc, ldc, n, L + r * R, Rm, ldr, R);
  for (; r < nrows; r++) block<1>(C + r * ldc, ldc, n, L + r * R, Rm, ldr, R);
}

}  // namespace

RankUpdateKernel rank_update_kernel_avx512() { return kernel; }

}  // namespace peft
