// Element-type conversion and random fills on host memory (parallel, thread-count independent).
#pragma once
#include <cstdint>

#include "../core/dtype.h"

namespace peft {

// dst[i] = convert(src[i]) for n elements. Floats round to nearest even; float->int rounds half to even and
// saturates; int->int saturates.
void convert_cpu(const void* src, DType sdt, void* dst, DType ddt, int64_t n);
// Converts doubles (from JS numbers) into dt with the same rules.
void from_f64_cpu(const double* src, void* dst, DType dt, int64_t n);
// Standard normals (mean, std) into dt, element i from Philox(seed, stream) at counter i / 4.
void randn_cpu(void* dst, DType dt, int64_t n, uint64_t seed, uint64_t stream, float mean, float std);
// Uniform in [lo, hi).
void rand_uniform_cpu(void* dst, DType dt, int64_t n, uint64_t seed, uint64_t stream, float lo, float hi);

}  // namespace peft
