// A Householder reflector applied to columns of a column-major float64 matrix (the dense linear algebra
// behind adapter merging: QR and its Q, done here because the loop bounds the whole factorisation).
#pragma once
#include <cstdint>

namespace peft {

// Columns c0 .. c1-1 of x (leading dimension ld), rows row .. row+below: x ← (I − tau·v·vᵀ)·x with
// v = [1, v[1 .. below]] (v points at the reflector's leading entry, which is not read).
void apply_reflector_f64(const double* v, int64_t below, double tau, double* x, int64_t ld, int64_t row, int64_t c0, int64_t c1);

}  // namespace peft
