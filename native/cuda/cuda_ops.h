// Host API of the CUDA kernels, for the addon's op table. Two implementations with the same signatures:
//   peft::cuda_gpu::*  real CUDA (cuda_ops.cu and the kernel files built by nvcc; only when nvcc exists)
//   peft::cuda_emu::*  the same sources built by g++ against the CPU emulator (native/cuda/emu/*.cc)
// so one binary can hold both and pick per device (NODE_PEFT_CUDA=emu selects the emulated one).
//
// Conventions:
//  - Every function returns 0 on success, otherwise a cudaError_t value (1 = cudaErrorInvalidValue for a
//    rejected argument) and, when `err` is non-null, a message naming the op, the arguments and the cause.
//  - Pointers passed as device memory come from cuda_malloc. Element counts and sizes are in elements of
//    the given dtype; dtype codes are peft::DType (F32=0, F16=1, BF16=2, I8=3, U8=4, I32=5, I64=6).
//  - Compute calls are synchronous: they return after the kernel has finished, with its error if any.
//    Emulated errors (out-of-bounds access, deadlock) fail the call; they never end the process.
//  - f16/bf16 results are computed in f32 and rounded once, to nearest even.
//
// Building:
//  - GPU: nvcc compiles native/cuda/*.cu (C++17 or later; -gencode for sm_80, sm_90 and compute_90 PTX;
//    static cudart). scripts/cuda-check.sh does the same compile and checks ptxas for spills.
//  - Emulated: the host compiler compiles native/cuda/emu/*.cc with -std=c++20 -fvisibility=hidden (and
//    -pthread); kernels_emu.cc pulls in the .cu files. scripts/cuda-emu-test.sh builds and runs the tests.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace peft {
// A strided matrix view in device memory: element (i, j) at p + (i*rs + j*cs) elements of dtype dt.
struct CudaMat {
  const void* p = nullptr;
  int dt = 0;
  int64_t rs = 0, cs = 0;
};
// Views of a matrix at p: row-major with row stride ld, and column-major with column stride ld.
inline CudaMat rows_of(const void* p, int dt, int64_t ld) { return {p, dt, ld, 1}; }
inline CudaMat cols_of(const void* p, int dt, int64_t ld) { return {p, dt, 1, ld}; }
// A dense layer's operands (native/cpu/lora.h's DenseView over device memory): x (M, K); W (N, K), or (K, N)
// when w_in_out (GPT-2's Conv1D); bias (N) or null.
struct CudaDense {
  int64_t M = 0, K = 0, N = 0;
  const void* x = nullptr;
  int x_dt = 0;
  const void* W = nullptr;
  int w_dt = 0;
  bool w_in_out = false;
  const void* bias = nullptr;
  int bias_dt = 0;
};
// W as the (K, N) operand of the forward product x·Wᵀ, and as the (N, K) one of the input gradient dy·W.
inline CudaMat weight_kn(const CudaDense& d) { return d.w_in_out ? rows_of(d.W, d.w_dt, d.N) : cols_of(d.W, d.w_dt, d.K); }
inline CudaMat weight_nk(const CudaDense& d) { return d.w_in_out ? cols_of(d.W, d.w_dt, d.N) : rows_of(d.W, d.w_dt, d.K); }
// An extra rank-R product scale·A2[M,R]·B2[R,N] (strided f32/f16/bf16 views; scale applied to A2's values as
// they are staged) on a GEMM's output tile: fused LoRA's adapters as R more k-steps (SIMT) or an f32 epilogue
// from shared memory (tensor cores). R = 0: none.
struct CudaRank {
  int64_t R = 0;
  CudaMat A2, B2;
  float scale = 1.0f;
};
// C[M,N] (=|+=) col_scale ⊙ (alpha · (A[M,K]·B[K,N] + rank) + bias[N]), C row-major with row stride ldc. A
// and B: f32/f16/bf16 in any mix (B also i8 on the f32 SIMT kernel); C and bias f32/f16/bf16; col_scale f32
// (or null); f32 accumulation, C rounded once. allow_tf32: f32 x f32 products may run on TF32 tensor cores
// (inputs rounded to 10 mantissa bits; the rank product stays f32).
struct CudaGemm {
  int64_t M = 0, N = 0, K = 0;
  CudaMat A, B;
  void* C = nullptr;
  int c_dt = 0;
  int64_t ldc = 0;
  float alpha = 1.0f;
  bool accumulate = false;
  const void* bias = nullptr;
  int bias_dt = 0;
  const float* col_scale = nullptr;
  bool allow_tf32 = false;
  CudaRank rank;
  // Per-k scale of A (f32, K values, or null): A(i, k)·a_ks[k], applied as A's tiles are staged (IA3's
  // input-side scale; the int8 weight gradient's dequantisation). B may then also be i8 (CB, widened exactly).
  const float* a_ks = nullptr;
};
// AdamW's per-step scalars (native/cpu/adamw.h derives them) and one parameter's device pointers.
struct CudaAdamWScalars {
  float decay, lerp_w, beta2, sq_w, bc2_sqrt, eps, neg_step;
};
struct CudaAdamWParam {
  void* p;
  int p_dt;
  const void* g;
  int g_dt;
  float* m;
  float* v;
  int64_t n;
};
}  // namespace peft

#define PEFT_CUDA_OPS_DECLARATIONS                                                                              \
  /* available: kernels can run; emulated: on the CPU; reason: why not, or what runs them. */                   \
  int cuda_runtime_state(bool* available, bool* emulated, std::string* reason);                                 \
  int cuda_malloc(void** ptr, size_t bytes, std::string* err);                                                  \
  int cuda_free(void* ptr, std::string* err);                                                                   \
  int cuda_memcpy_h2d(void* dst, const void* src, size_t bytes, std::string* err);                              \
  int cuda_memcpy_d2h(void* dst, const void* src, size_t bytes, std::string* err);                              \
  int cuda_memcpy_d2d(void* dst, const void* src, size_t bytes, std::string* err);                              \
  int cuda_memset(void* dst, int byte_value, size_t bytes, std::string* err);                                   \
  int cuda_synchronize(std::string* err);                                                                       \
  /* dst = src as dst_dt. f32/f16/bf16 convert into each other; equal dtypes (any) copy. No overlap. */         \
  int cuda_convert(const void* src, int src_dt, void* dst, int dst_dt, int64_t n, std::string* err);            \
  /* out = a + b (f32/f16/bf16); out may be a or b, other overlaps are rejected. */                             \
  int cuda_add(const void* a, const void* b, void* out, int dt, int64_t n, std::string* err);                   \
  /* y = alpha*x + beta*y (f32/f16/bf16); y is not read when beta == 0; x may be y (then y *= alpha + beta). */  \
  int cuda_scale(float alpha, const void* x, float beta, void* y, int dt, int64_t n, std::string* err);         \
  /* y[M,N] = x[M,K] * w[N,K]^T (+ bias[N]), row-major, contiguous. in_dt: F16 or BF16 (x and w);              \
     bias: null or bias_dt F32/F16/BF16; out_dt: F32/F16/BF16. f32 accumulation. M, N or K may be 0. */          \
  int cuda_gemm_nt(const void* x, const void* w, const void* bias, void* y, int in_dt, int bias_dt, int out_dt, \
                   int64_t M, int64_t N, int64_t K, std::string* err);                                         \
  /* The general product (see CudaGemm): tensor cores when A and B are one 16-bit dtype (the x·Wᵀ kernel,   \
     else the strided one) or f32 with allow_tf32; otherwise the f32 SIMT kernel. */                          \
  int cuda_gemm(const CudaGemm& g, std::string* err);                                                          \
  /* Element-wise ops over n elements, computed in f32, rounded once into the output dtype (float dtypes).     \
     act: 0 relu, 1 gelu (erf), 2 gelu (tanh), 3 silu, as peft::Act. */                                          \
  int cuda_activation(int act, const void* x, int xdt, void* y, int ydt, int64_t n, std::string* err);         \
  int cuda_activation_backward(int act, const void* x, int xdt, const void* dy, int dydt, void* dx, int dxdt,  \
                               int64_t n, std::string* err);                                                   \
  /* y = x * (u >= p) / (1 - p), u the Philox(seed, stream) uniform of each element; x null writes the mask. */ \
  int cuda_dropout(const void* x, int xdt, void* y, int ydt, int64_t n, double p, uint64_t seed,              \
                   uint64_t stream, std::string* err);                                                         \
  int cuda_axpy(void* a, int adt, const void* b, int bdt, float alpha, int64_t n, std::string* err);           \
  int cuda_scale_inplace(void* a, int adt, float alpha, int64_t n, std::string* err);                          \
  int cuda_mul(const void* a, int adt, const void* b, int bdt, void* y, int ydt, int64_t n, std::string* err);   \
  /* Every element of dst (n elements of elem_bytes = 1, 2, 4 or 8) set to the bytes at host pointer value. */ \
  int cuda_fill(void* dst, const void* value, int elem_bytes, int64_t n, std::string* err);                   \
  /* Row-wise over cols: log-softmax and its backward from the output y. */                                     \
  int cuda_log_softmax(const void* x, int xdt, void* y, int ydt, int64_t rows, int64_t cols, std::string* err);  \
  int cuda_log_softmax_backward(const void* y, int ydt, const void* dy, int dydt, void* dx, int dxdt,          \
                                int64_t rows, int64_t cols, std::string* err);                                 \
  /* out[c] (+)= sum over rows of x[r, c] in f32. */                                                           \
  int cuda_sum_rows(const void* x, int xdt, int64_t rows, int64_t cols, void* out, int odt, bool accumulate,   \
                    std::string* err);                                                                         \
  /* ids (i32/i64, device, already range-checked): out[i, :] = w[ids[i], :] (rows of row_bytes); the       \
     backward dW[ids[i], :] += dy[i, :], each destination row summing its sources in index order in f32. */   \
  int cuda_embedding(const void* ids, int idt, int64_t n, const void* w, void* out, int64_t row_bytes,          \
                     std::string* err);                                                                        \
  int cuda_embedding_backward(const void* ids, int idt, int64_t n, const void* dy, int dydt, void* dw,         \
                              int dwdt, int64_t dim, std::string* err);                                        \
  /* Mean-reduced losses (native/cpu/losses.h semantics): *loss receives the loss (NaN when nothing counts), \
     grad (zero-filled by the caller) the gradient. Targets are range-checked by the caller. */               \
  int cuda_nll_loss(const void* logp, int ldt, const void* target, int tdt, int64_t rows, int64_t classes,     \
                    int64_t ignore, void* grad, int gdt, double* loss, std::string* err);                      \
  int cuda_cross_entropy(const void* logits, int ldt, const void* target, int tdt, int64_t rows,               \
                         int64_t classes, int64_t ignore, double smoothing, void* grad, int gdt, double* loss,   \
                         std::string* err);                                                                    \
  int cuda_mse_loss(const void* y, int ydt, const void* t, int tdt, int64_t n, void* grad, int gdt,             \
                    double* loss, std::string* err);                                                           \
  /* One AdamW step over `count` parameters (moments f32). */                                                 \
  int cuda_adamw(const CudaAdamWParam* params, int64_t count, const CudaAdamWScalars& s, std::string* err);

namespace peft {
namespace cuda_gpu {
PEFT_CUDA_OPS_DECLARATIONS
}
namespace cuda_emu {
PEFT_CUDA_OPS_DECLARATIONS
}
}  // namespace peft
