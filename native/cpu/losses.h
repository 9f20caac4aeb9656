// CPU kernels for the mean-reduced losses. Each returns the loss (accumulated in double, in a fixed order,
// so it does not depend on the thread count) and writes its gradient into a zero-filled tensor in the
// gradient's dtype. ops/ has validated shapes, dtypes and target ranges.
#pragma once
#include <cstdint>

#include "../core/dtype.h"

namespace peft {

// Index of the first target outside [0, classes) that is not `ignore`, or -1.
int64_t first_bad_target(const void* target, DType tdt, int64_t n, int64_t classes, int64_t ignore);

// -mean over non-ignored rows of logp[r, target[r]]; grad[r, target[r]] = -1 / count. NaN when every row
// is ignored (count 0), as in PyTorch.
double nll_loss_cpu(const void* logp, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes,
                    int64_t ignore, void* grad, DType gdt);

// log-softmax + nll with label smoothing eps (PyTorch's cross_entropy):
// loss = (1 - eps) * mean(nll) + eps / C * mean(-sum_c logp[r, c]), means over non-ignored rows;
// grad[r, c] = (softmax[r, c] - (1 - eps) [c == target[r]] - eps / C) / count.
double cross_entropy_cpu(const void* logits, DType ldt, const void* target, DType tdt, int64_t rows, int64_t classes,
                         int64_t ignore, double smoothing, void* grad, DType gdt);

// mean((y - t)^2) over n elements; grad = 2 (y - t) / n. NaN for n == 0.
double mse_loss_cpu(const void* y, DType ydt, const void* t, DType tdt, int64_t n, void* grad, DType gdt);

}  // namespace peft
