// f32 staging for kernels that take any float dtype: a kernel computes on contiguous float blocks and the
// dtype switch runs once per block, not per element, so the inner loops stay branch-free and vectorize.
// f32 operands are used in place (no copy); f16/bf16 are widened into a stack buffer and narrowed once.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../core/dtype.h"
#include "parallel.h"
#include "vec_kernels.h"

namespace peft {

// Elements per staged block: a multiple of 16 (reduction lanes) and of 4 (Philox blocks).
constexpr int64_t kStageBlock = 512;

// Elements [off, off + n) of src as f32: src itself for f32, else widened into buf.
inline const float* stage_in(const void* src, DType dt, int64_t off, int64_t n, float* buf) {
  if (dt == DType::F32) return static_cast<const float*>(src) + off;
  const uint16_t* s = static_cast<const uint16_t*>(src) + off;
  if (dt == DType::BF16) {
    vec_kernels().widen_bf16(s, buf, n);
  } else {
    for (int64_t i = 0; i < n; i++) buf[i] = f16_to_f32(s[i]);
  }
  return buf;
}

// Where a kernel writes elements [off, off + n) of dst: dst itself for f32, else buf (then stage_out).
inline float* stage_dst(void* dst, DType dt, int64_t off, float* buf) {
  return dt == DType::F32 ? static_cast<float*>(dst) + off : buf;
}

// Elements [off, off + n) of an operand updated in place, as writable f32: dst itself for f32, else
// widened into buf (then stage_out narrows the result back).
inline float* stage_inout(void* dst, DType dt, int64_t off, int64_t n, float* buf) {
  stage_in(dst, dt, off, n, buf);
  return stage_dst(dst, dt, off, buf);
}

// Narrows what stage_dst handed out into dst (nothing to do for f32: it was written in place).
inline void stage_out(void* dst, DType dt, int64_t off, int64_t n, const float* v) {
  if (dt == DType::F32) return;
  uint16_t* d = static_cast<uint16_t*>(dst) + off;
  if (dt == DType::BF16) {
    vec_kernels().narrow_bf16(v, d, n);
  } else {
    for (int64_t i = 0; i < n; i++) d[i] = f32_to_f16(v[i]);
  }
}

// Runs fn(off, len) over [0, total) in kStageBlock pieces spread over the pool. Block boundaries depend on
// the element index only, so per-element results never depend on the thread count.
template <typename F>
void for_blocks(int64_t total, int64_t grain_elems, F&& fn) {
  int64_t blocks = (total + kStageBlock - 1) / kStageBlock;
  parallel_for(blocks, std::max<int64_t>(1, grain_elems / kStageBlock), [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; blk++) {
      int64_t off = blk * kStageBlock;
      fn(off, std::min(kStageBlock, total - off));
    }
  });
}

}  // namespace peft
