#include "convert.h"

#include <cstring>

#include "../core/philox.h"
#include "elem.h"
#include "parallel.h"

namespace peft {
namespace {

constexpr int64_t kGrain = 1 << 16;

inline double load_f64(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    default: return load_f32(p, dt, i);
  }
}

inline void store_f64(void* p, DType dt, int64_t i, double v) {
  switch (dt) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v)); break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case DType::I8: static_cast<int8_t*>(p)[i] = saturate_round<int8_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(p)[i] = saturate_round<uint8_t>(v); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = saturate_round<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(p)[i] = saturate_round<int64_t>(v); break;
  }
}

// i64 -> i64 and i64 -> narrower ints must not go through double (2^53 limit).
inline void int_to_int(const void* src, DType sdt, void* dst, DType ddt, int64_t i) {
  int64_t v = sdt == DType::I64 ? static_cast<const int64_t*>(src)[i] : static_cast<int64_t>(load_f64(src, sdt, i));
  auto clamp = [&](int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; };
  switch (ddt) {
    case DType::I8: static_cast<int8_t*>(dst)[i] = static_cast<int8_t>(clamp(-128, 127)); break;
    case DType::U8: static_cast<uint8_t*>(dst)[i] = static_cast<uint8_t>(clamp(0, 255)); break;
    case DType::I32: static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(clamp(INT32_MIN, INT32_MAX)); break;
    case DType::I64: static_cast<int64_t*>(dst)[i] = v; break;
    default: break;
  }
}

}  // namespace

void convert_cpu(const void* src, DType sdt, void* dst, DType ddt, int64_t n) {
  if (n <= 0) return;
  if (sdt == ddt) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(sdt));
    return;
  }
  bool ints = !dtype_is_float(sdt) && !dtype_is_float(ddt);
  // Floats go through f32 (exact for f16/bf16 sources); f32->f16 rounds directly, never twice.
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    if (ints) {
      for (int64_t i = b; i < e; i++) int_to_int(src, sdt, dst, ddt, i);
    } else if (dtype_is_float(sdt) && dtype_is_float(ddt)) {
      for (int64_t i = b; i < e; i++) store_f32(dst, ddt, i, load_f32(src, sdt, i));
    } else {
      for (int64_t i = b; i < e; i++) store_f64(dst, ddt, i, load_f64(src, sdt, i));
    }
  });
}

void from_f64_cpu(const double* src, void* dst, DType dt, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) store_f64(dst, dt, i, src[i]);
  });
}

namespace {
template <typename Gen>
void fill_blocks(void* dst, DType dt, int64_t n, Gen gen) {
  int64_t blocks = (n + 3) / 4;
  parallel_for(blocks, kGrain / 4, [&](int64_t b, int64_t e) {
    float v[4];
    for (int64_t blk = b; blk < e; blk++) {
      gen(static_cast<uint64_t>(blk), v);
      for (int j = 0; j < 4 && blk * 4 + j < n; j++) store_f32(dst, dt, blk * 4 + j, v[j]);
    }
  });
}
}  // namespace

void randn_cpu(void* dst, DType dt, int64_t n, uint64_t seed, uint64_t stream, float mean, float std) {
  RngKey key = rng_key(seed, stream);
  fill_blocks(dst, dt, n, [&](uint64_t blk, float* v) {
    normals4(key, blk, v);
    for (int j = 0; j < 4; j++) v[j] = mean + std * v[j];
  });
}

void rand_uniform_cpu(void* dst, DType dt, int64_t n, uint64_t seed, uint64_t stream, float lo, float hi) {
  RngKey key = rng_key(seed, stream);
  fill_blocks(dst, dt, n, [&](uint64_t blk, float* v) {
    uniforms4(key, blk, v);
    // u in (0, 1] -> [lo, hi): 1 - u is in [0, 1)
    for (int j = 0; j < 4; j++) v[j] = lo + (hi - lo) * (1.0f - v[j]);
  });
}

}  // namespace peft
