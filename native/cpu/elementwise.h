// CPU kernels of the broadcasting elementwise ops (functional autograd's building blocks): unary math,
// binary arithmetic and comparisons, and `where`. Operands are contiguous tensors of any float dtype
// (comparisons and `where`'s condition also take integers); values are computed in f32 and rounded once
// into the output dtype. ops/ has validated names, dtypes and shapes, so nothing here fails.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "../core/dtype.h"
#include "parallel.h"

namespace peft {

enum class EwOp : int {
  // unary
  Neg, Exp, Log, Sqrt, Rsqrt, Abs, Sign, Reciprocal, Square, Tanh, Sigmoid, Relu, Silu, Gelu, GeluTanh, Sin, Cos,
  Clamp,      // scalars [lo, hi] (NaN: no bound)
  PowScalar,  // scalars [p]
  Affine,     // scalars [a, b]: a x + b
  Step,       // x > 0 ? 1 : 0
  // binary
  Add, Sub, Mul, Div, Pow, Maximum, Minimum, Eq, Ne, Gt, Ge, Lt, Le,
  Axpby,  // scalars [alpha, beta]: alpha a + beta b
  // ternary
  Where,  // cond != 0 ? a : b
  Count_,
};

// The op named `name` ("add", "gelu_tanh", ...); false when there is none.
bool ew_op_from_name(const std::string& name, EwOp& op);
const char* ew_op_name(EwOp op);
// Inputs the op takes (1, 2 or 3) and scalars it reads.
int ew_arity(EwOp op);
int ew_scalar_count(EwOp op);
// eq, ne, gt, ge, lt, le: write 1 or 0.
bool ew_is_compare(EwOp op);
// Comma-separated list of every op name, for error messages.
std::string ew_op_names();

constexpr int kEwMaxDims = 16;

// One input: contiguous data of `shape` (at most kEwMaxDims dims), broadcast against the output shape.
struct EwInput {
  const void* p = nullptr;
  DType dt = DType::F32;
  const int64_t* shape = nullptr;
  int ndim = 0;
};

// out[i] = op(inputs broadcast to out_shape)[i], written contiguously in odt. out_shape must be the broadcast
// of the input shapes. Integer inputs are allowed for comparisons (compared exactly when both are integers,
// in double otherwise) and for where's condition.
void elementwise_cpu(EwOp op, const EwInput* in, int nin, const int64_t* out_shape, int out_ndim, void* out, DType odt,
                     const double* scalars);

// Calls fn(begin, end) over [0, n) in pieces of `chunk` items that the pool's threads take in turn (an
// atomic counter), so a thread the OS runs less (a busy machine) takes fewer pieces instead of holding the
// others up. Which thread runs a piece never changes what the piece computes.
template <typename F>
void dynamic_for(int64_t n, int64_t chunk, F&& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(chunk, 1);
  const int64_t pieces = (n + chunk - 1) / chunk;
  if (pieces == 1) return fn(int64_t(0), n);
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(pieces, num_threads()), 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; w++)
      for (int64_t p = next.fetch_add(1, std::memory_order_relaxed); p < pieces; p = next.fetch_add(1, std::memory_order_relaxed))
        fn(p * chunk, std::min(n, (p + 1) * chunk));
  });
}

// ---- the per-ISA f32 loops behind elementwise_cpu and the reductions (reduce.cc) ----

struct EwKernels {
  // y = op(x) for the unary ops whose math lives here (not relu/silu/gelu/gelu_tanh: vec_kernels has them).
  void (*unary)(EwOp op, const float* x, float* y, int64_t n, const float* s);
  void (*binary)(EwOp op, const float* a, const float* b, float* y, int64_t n, const float* s);
  void (*where)(const float* c, const float* a, const float* b, float* y, int64_t n);
  // f16/bf16 bits <-> f32, contiguous (round to nearest even; NaN stays NaN).
  void (*widen)(const uint16_t* src, DType dt, float* dst, int64_t n);
  void (*narrow)(const float* src, uint16_t* dst, DType dt, int64_t n);
  // Reductions, accumulated in f64 over 16 lanes folded in a fixed order.
  double (*sum)(const float* x, int64_t n);
  double (*sum_sq_dev)(const float* x, int64_t n, double mean);  // Σ (x - mean)²
  // Column-wise over nr <= 4 rows at once (one pass over acc for four rows): acc[i] += Σ_r rows[r][i], or
  // acc[i] += Σ_r (rows[r][i] - mean[i])².
  void (*col_sum)(const float* const* rows, int nr, int64_t n, double* acc);
  void (*col_sum_sq_dev)(const float* const* rows, int nr, const double* mean, int64_t n, double* acc);
  // The first maximum (want_max) or minimum of x[0, n), NaN winning (the first NaN): value and position.
  void (*arg_extreme)(const float* x, int64_t n, bool want_max, float* best, int64_t* at);
  // Column-wise: where x[i] beats best[i] (strictly, or is the first NaN), best[i] = x[i], at[i] = row.
  void (*col_extreme)(const float* x, int64_t n, bool want_max, int64_t row, float* best, int64_t* at);
};

// The build for the active ISA (backend.setIsa / NODE_PEFT_ISA).
const EwKernels& ew_kernels();
const EwKernels& ew_kernels_avx2();
const EwKernels& ew_kernels_avx512();

}  // namespace peft
