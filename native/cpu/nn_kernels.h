// CPU kernels for the tape-free training ops: activations, log-softmax, dropout, embedding, bias
// gradients and in-place elementwise updates. Float operands may be f32, f16 or bf16 (computed in f32,
// rounded once); ops/ has validated dtypes, shapes and ranges, so these never fail.
#pragma once
#include <cstdint>

#include "../core/dtype.h"

namespace peft {

enum class Act { Relu, Gelu, GeluTanh, Silu };

// y = act(x) elementwise.
void activation_cpu(Act a, const void* x, DType xdt, void* y, DType ydt, int64_t n);
// dx = act'(x) * dy, from the forward input x.
void activation_backward_cpu(Act a, const void* x, DType xdt, const void* dy, DType dydt, void* dx, DType dxdt, int64_t n);

// Row-wise over `cols`: y = x - max - log(sum(exp(x - max))).
void log_softmax_cpu(const void* x, DType xdt, void* y, DType ydt, int64_t rows, int64_t cols);
// From the forward output y: dx = dy - exp(y) * sum(dy), per row.
void log_softmax_backward_cpu(const void* y, DType ydt, const void* dy, DType dydt, void* dx, DType dxdt, int64_t rows,
                              int64_t cols);

// y = x * mask, mask[i] = (u_i >= p) / (1 - p) with u_i the Philox(seed, stream) uniform of element i.
// x == nullptr writes the mask itself. 0 <= p < 1.
void dropout_cpu(const void* x, DType xdt, void* y, DType ydt, int64_t n, double p, uint64_t seed, uint64_t stream);

// Integer ids (i32 or i64) as int64. Callers have range-checked them.
int64_t load_id(const void* ids, DType idt, int64_t i);
// Index of the first id outside [0, vocab), or -1.
int64_t first_bad_id(const void* ids, DType idt, int64_t n, int64_t vocab);
// out[i, :] = weight[ids[i], :] for n ids (rows of row_bytes, out in weight's dtype).
void embedding_cpu(const void* ids, DType idt, int64_t n, const void* w, void* out, size_t row_bytes);
// dW[ids[i], :] += dy[i, :]. Each destination row sums its sources in index order, so the result is the
// same for any thread count.
void embedding_backward_cpu(const void* ids, DType idt, int64_t n, const void* dy, DType dydt, void* dw, DType dwdt,
                            int64_t dim);

// out[c] (+)= sum over rows of x[r, c], accumulated in f32 and rounded once. Fixed row chunks, summed in
// order: the result does not depend on the thread count.
void sum_rows_cpu(const void* x, DType xdt, int64_t rows, int64_t cols, void* out, DType odt, bool accumulate);

// a += alpha * b.
void axpy_cpu(void* a, DType adt, const void* b, DType bdt, float alpha, int64_t n);
// a *= alpha.
void scale_cpu(void* a, DType adt, float alpha, int64_t n);
// y = a * b.
void mul_cpu(const void* a, DType adt, const void* b, DType bdt, void* y, DType ydt, int64_t n);
// Every element set to value (converted like Tensor.fromArray: floats round to nearest even, integers
// round half to even and saturate).
void fill_cpu(void* a, DType dt, int64_t n, double value);

}  // namespace peft
