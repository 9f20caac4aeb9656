// Launchers of lora_fused.cu's kernels, used by the LoRA host API (lora_ops.cu). Arguments are validated there.
#pragma once
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {

// T[m, j] (row stride ldt) = Σ_k drop(x)[m, k]·A[j, k] for one adapter: x (M, K), A (r, K). With keep_from > 0
// each x element is multiplied by the CPU's Philox dropout mask (scale or 0) of (seed, stream) before use.
// K is split lora_down_splits(M, K, r, partial_floats) ways: chunks of kLoraDownChunk, at most about
// kLoraDownBlocks blocks, the splits' partial sums (splits·M·r floats) fitting the scratch `partials`.
constexpr int64_t kLoraDownChunk = 64, kLoraDownBlocks = 1024, kLoraMaxRank = 65535 * 16;
int64_t lora_down_splits(int64_t M, int64_t K, int64_t r, int64_t scratch_floats);
cudaError_t launch_lora_down(const void* x, DType xdt, int64_t M, int64_t K, const void* A, DType adt, int64_t r, float* T,
                             int64_t ldt, float* partials, int64_t partial_floats, float keep_from, float scale, uint64_t seed,
                             uint64_t stream);
// dst[i * ld + j] = f · src[i * rs + j * cs] (f32) for i < rows, j < cols: adapters' factors concatenated,
// scaled and transposed into the f32 matrices the fused products read.
cudaError_t launch_lora_gather(const void* src, DType sdt, int64_t rows, int64_t cols, int64_t rs, int64_t cs, float f,
                               float* dst, int64_t ld);
// dst (rows, cols) = src + L (rows, R)·Rm (R, cols), ranks added in order in f32 and rounded once into ddt;
// src may be dst (in-place merge). rows <= 65535 * kLoraMergeRows.
constexpr int64_t kLoraMergeRows = 32;
cudaError_t launch_lora_merge(const void* src, DType sdt, void* dst, DType ddt, int64_t rows, int64_t cols, const float* L,
                              const float* Rm, int64_t R);
// *flag (zeroed by the caller) becomes 1 when some |v[i]| < bound fails (NaN included).
cudaError_t launch_flag_not_below(const float* v, int64_t n, float bound, int* flag);

}  // namespace peft::PEFT_CUDA_NS
