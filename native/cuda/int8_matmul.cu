// LLM.int8 on the device (bitsandbytes >= 0.45 semantics; native/cpu/int8.cc is the reference and states the
// order of rounding, which every step here follows operation for operation):
//  - outlier_mask_kernel: the input columns holding any |x16| >= threshold (x rounded to f16 as bnb casts it);
//  - quant_rows_kernel: one block per row: the absmax of the f16-rounded values that are not outliers, then
//    q = round-half-even(x16·f32(127/absmax)) clamped to ±127, 0 in outlier columns (also the weight quantiser);
//  - outlier_terms_kernel: the outlier columns as a rank term, u = x[:, cols] and bt = the dequantised weight
//    columns f32(CB)·SCB·(1/127) rounded to x's dtype (what bnb's addmm multiplies);
//  - the int8 product with int32 accumulation on tensor cores (WMMA s8 m16n16k16) or, for a few rows (a decode
//    step), with __dp4a; both end in the same epilogue: f32(acc)·f32(SCx·SCB)·6.200124e-05f, + bias, the
//    outliers added to that rounded to y's dtype, + the optional rank term, one rounding into y.
// The epilogue uses __fmul_rn/__fadd_rn/__fmaf_rn so nvcc does not contract it into FMAs the CPU does not do.
#include <algorithm>
#include <cmath>
#include <vector>

#include "block_reduce.cuh"
#include "dtype.cuh"
#include "host_checks.cuh"
#include "int8_ops.h"
#include "launch.cuh"
#include "wmma_quadrant.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

namespace wmma = nvcuda::wmma;

constexpr float kDequant = 6.200124e-05f;         // bitsandbytes' 1/127² in int8_mm_dequant
constexpr float kInv127 = 7.874015718698502e-3f;  // bitsandbytes' int8_vectorwise_dequant constant

// x as bitsandbytes quantises it: rounded to f16 (a value beyond f16's range becomes inf).
__device__ __forceinline__ float f16_round(float v) { return __half2float(__float2half_rn(v)); }

// v rounded into dt and widened back.
__device__ __forceinline__ float through(float v, DType dt) {
  if (dt == DType::F16) return f16_round(v);
  if (dt == DType::BF16) return __bfloat162float(__float2bfloat16_rn(v));
  return v;
}

// ---- quantisation -----------------------------------------------------------------------------------------

__global__ void outlier_mask_kernel(const void* x, DType dt, int64_t n, int64_t K, float threshold,
                                    unsigned char* mask) {
  // Every writer stores the same 1, so concurrent stores to one column need no atomics.
  PEFT_GRID_STRIDE(i, n) if (fabsf(f16_round(load_f32(x, dt, i))) >= threshold) gstore(mask + i % K, (unsigned char)1);
}

constexpr int kQuantThreads = 256;

// Row blockIdx.x of src (K values) into dst (row stride K) and its absmax into scale[row] (NaN when a kept value
// is NaN; 0 for a zero row, whose values quantise to 0). threshold > 0: elements with |v16| >= threshold are
// left out of the absmax and quantise to 0, as does every column marked in mask (may be null).
__global__ void __launch_bounds__(kQuantThreads) quant_rows_kernel(const void* src, DType dt, int64_t K,
                                                                   float threshold, const unsigned char* mask,
                                                                   int8_t* dst, float* scale) {
  SMEM_ARRAY(float, scratch, [kQuantThreads / 32]);
  const int64_t base = int64_t(blockIdx.x) * K;
  float amax = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = fabsf(f16_round(load_f32(src, dt, base + k)));
    if (!(threshold > 0.f && v >= threshold)) amax = MaxOp()(amax, v);  // NaN is kept, and wins
  }
  amax = block_reduce(amax, MaxOp(), &scratch[0]);
  // 127 / absmax in f32, then one f32 product per value, as torch.round(A * (127.0 / row_stats)).
  const float s = amax > 0.f ? 127.f / amax : 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const float v = f16_round(load_f32(src, dt, base + k));
    const bool skip = (mask && gload(mask + k)) || (threshold > 0.f && fabsf(v) >= threshold);
    const float r = rintf(__fmul_rn(v, s));  // round half to even
    int q = 0;
    if (!skip && r == r) q = r > 127.f ? 127 : r < -127.f ? -127 : int(r);
    gstore(dst + base + k, int8_t(q));
  }
  if (threadIdx.x == 0) gstore(scale + blockIdx.x, amax);
}

// u (M, R) = x[:, cols] widened; bt (R, N) = f32(CB[n][cols[r]])·SCB[n]·(1/127) rounded to x's dtype.
__global__ void outlier_terms_kernel(const void* x, DType dt, int64_t M, int64_t K, const int8_t* cb, const float* scb,
                                     int64_t N, const int* cols, int64_t R, float* u, float* bt) {
  PEFT_GRID_STRIDE(i, M * R) gstore(u + i, load_f32(x, dt, (i / R) * K + gload(cols + i % R)));
  PEFT_GRID_STRIDE(i, R * N) {
    const int64_t r = i / N, n = i % N;
    const float v = __fmul_rn(float(gload(cb + n * K + gload(cols + r))), gload(scb + n));
    gstore(bt + i, through(__fmul_rn(v, kInv127), dt));
  }
}

// ---- epilogue ---------------------------------------------------------------------------------------------

// What the int8 products' epilogue reads; arrays in device memory.
struct Epilogue {
  const float* scx;  // (M): each row's absmax
  const float* scb;  // (N)
  const void* bias;  // (N) or null
  DType bias_dt;
  void* y;
  DType y_dt;
  int32_t* raw;  // the int32 products instead of y, or null
  int64_t M, N;
  const float *ou, *obt;  // outlier columns (u (M, ro), bt (ro, N)), ro = 0 when none
  int64_t ro;
  const float *lu, *lbt;  // the rank term (u (M, rl), bt (rl, N)), rl = 0 when none
  int64_t rl;
};

// Σ_r u[m][r]·bt[r][n] by fused multiply-adds in order of r from 0, as the CPU's rank_rows.
__device__ __forceinline__ float rank_sum(const float* u, const float* bt, int64_t R, int64_t N, int64_t m, int64_t n) {
  float s = 0.f;
  for (int64_t r = 0; r < R; ++r) s = __fmaf_rn(gload(u + m * R + r), gload(bt + r * N + n), s);
  return s;
}

__device__ __forceinline__ void epilogue_store(const Epilogue& e, int64_t m, int64_t n, int32_t acc) {
  const int64_t at = m * e.N + n;
  if (e.raw) {
    gstore(e.raw + at, acc);
    return;
  }
  const float s = __fmul_rn(gload(e.scx + m), gload(e.scb + n));
  float out = __fmul_rn(__fmul_rn(float(acc), s), kDequant);
  if (e.bias) out = __fadd_rn(out, load_f32(e.bias, e.bias_dt, n));
  if (e.ro) out = __fadd_rn(through(out, e.y_dt), rank_sum(e.ou, e.obt, e.ro, e.N, m, n));
  if (e.rl) out = __fadd_rn(out, rank_sum(e.lu, e.lbt, e.rl, e.N, m, n));
  store_f32(e.y, e.y_dt, at, out);
}

// ---- int8 products on tensor cores ------------------------------------------------------------------------

// A block computes a 64x64 tile with 4 warps, each a 32x32 quadrant (2x2 s8 fragments, int accumulators),
// walking K in steps of 64. Shared tiles are stored as four 16-byte-wide k-slabs ([slab][row][16], slabs 32 bytes
// apart beyond their rows, so a quarter-warp's eight 16-byte stores land on distinct banks), so every fragment
// pointer is 32-byte aligned (a 16-byte k offset inside one row would not be). Chunks of 16 bytes that
// cross an edge of x or CB are zero-filled (zeros add nothing to the integer sums); the next k-tile is fetched
// into registers while the current one is multiplied.
constexpr int kI8BM = 64, kI8BN = 64, kI8BK = 64, kI8Slabs = kI8BK / 16;
constexpr int kI8Threads = 128;
constexpr int kI8Chunks = kI8BM * kI8Slabs / kI8Threads;  // 16-byte chunks per thread per operand
constexpr int kI8LdC = kI8BN + 4;                        // ints
constexpr int kI8SlabStride = kI8BM * 16 + 32;           // bytes
constexpr int kI8SmemAB = 2 * kI8Slabs * kI8SlabStride;
constexpr int kI8SmemC = kI8BM * kI8LdC * 4;
constexpr int kI8SmemBytes = kI8SmemAB > kI8SmemC ? kI8SmemAB : kI8SmemC;
static_assert(kI8Chunks * kI8Threads == kI8BM * kI8Slabs && kI8BM == kI8BN, "tile shape");
static_assert((16 * kI8LdC * 4) % 32 == 0 && kI8SlabStride % 32 == 0, "tile rows and slabs 32-byte aligned");

// Bytes [k, k + 16) of row r of a (rows, K) int8 matrix, zero where r or k is out of range.
__device__ __forceinline__ uint4 load_i8_chunk(const int8_t* __restrict__ base, int64_t rows, int64_t K, int64_t r,
                                            int64_t k, bool vec) {
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (r >= rows || k >= K) return v;
  const int8_t* p = base + r * K + k;
  if (vec) return gload(reinterpret_cast<const uint4*>(p));  // K % 16 == 0: the whole chunk is in range
  unsigned w[4] = {0u, 0u, 0u, 0u};
PEFT_UNROLL
  for (int j = 0; j < 16; ++j)
    if (k + j < K) w[j / 4] |= unsigned(uint8_t(gload(p + j))) << (8 * (j % 4));
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__global__ void __launch_bounds__(kI8Threads) i8_gemm_wmma_kernel(const int8_t* __restrict__ xq,
                                                                   const int8_t* __restrict__ cb, int64_t K, Epilogue e) {
  SMEM_ARRAY(unsigned char, smem, [kI8SmemBytes]);
  // Row r of k-slab s: xs + s * kI8SlabStride + r * 16 (and ws).
  signed char* xs = reinterpret_cast<signed char*>(smem);
  signed char* ws = xs + kI8Slabs * kI8SlabStride;
  int(*cs)[kI8LdC] = reinterpret_cast<int(*)[kI8LdC]>(smem);

  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int64_t m0 = int64_t(blockIdx.x) * kI8BM, n0 = int64_t(blockIdx.y) * kI8BN;
  const bool vec = K % 16 == 0 && reinterpret_cast<uintptr_t>(xq) % 16 == 0 && reinterpret_cast<uintptr_t>(cb) % 16 == 0;

  wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
  zero_2x2(acc);

  // Chunk c of a tile: row c / kI8Slabs, k-slab c % kI8Slabs.
  uint4 rx[kI8Chunks], rw[kI8Chunks];
  auto fetch = [&](int64_t k0) {
PEFT_UNROLL
    for (int i = 0; i < kI8Chunks; ++i) {
      const int c = tid + i * kI8Threads, row = c / kI8Slabs, slab = c % kI8Slabs;
      rx[i] = load_i8_chunk(xq, e.M, K, m0 + row, k0 + slab * 16, vec);
      rw[i] = load_i8_chunk(cb, e.N, K, n0 + row, k0 + slab * 16, vec);
    }
  };
  fetch(0);
  const int64_t ktiles = (K + kI8BK - 1) / kI8BK;
  for (int64_t kt = 0; kt < ktiles; ++kt) {
PEFT_UNROLL
    for (int i = 0; i < kI8Chunks; ++i) {
      const int c = tid + i * kI8Threads, row = c / kI8Slabs, slab = c % kI8Slabs;
      store_vec(xs + slab * kI8SlabStride + row * 16, rx[i]);
      store_vec(ws + slab * kI8SlabStride + row * 16, rw[i]);
    }
    __syncthreads();  // tiles complete before any warp reads them
    if (kt + 1 < ktiles) fetch((kt + 1) * kI8BK);
PEFT_UNROLL
    for (int s = 0; s < kI8Slabs; ++s) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> b[2];  // CB rows are B's columns
PEFT_UNROLL
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], xs + s * kI8SlabStride + (wm + i * 16) * 16, 16);
PEFT_UNROLL
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], ws + s * kI8SlabStride + (wn + j * 16) * 16, 16);
      mma_2x2(acc, a, b);
    }
    __syncthreads();  // every warp is done with the tiles before they are overwritten
  }

  // The accumulator tile reuses the input tiles' memory (the loop's last barrier ended their use); the
  // epilogue depends on each element's position, so it reads the stored tile, never fragment registers.
  store_2x2(&cs[0][0], kI8LdC, wm, wn, acc);
  __syncthreads();
  for (int t = tid; t < kI8BM * kI8BN; t += kI8Threads) {  // consecutive threads: consecutive columns
    const int r = t / kI8BN, c = t % kI8BN;
    if (m0 + r < e.M && n0 + c < e.N) epilogue_store(e, m0 + r, n0 + c, cs[r][c]);
  }
}

// ---- int8 products with __dp4a (a few rows) ---------------------------------------------------------------

// A warp per output column n: the lanes stride over K four bytes at a time, each keeping the sums of every row
// (at most kInt8Dp4aRows), then a butterfly reduction (integer sums: exact in any order). Reading CB once
// per column is what bounds a decode step, so this wastes no tensor-core tile on padding rows.
constexpr int kDp4aWarps = 4;

// The 4 bytes at k..k+3 of row r as one word, zero past K.
__device__ __forceinline__ int load_word(const int8_t* row, int64_t k, int64_t K, bool aligned) {
  if (aligned) return gload(reinterpret_cast<const int*>(row + k));  // K % 4 == 0
  unsigned w = 0;
PEFT_UNROLL
  for (int j = 0; j < 4; ++j)
    if (k + j < K) w |= unsigned(uint8_t(gload(row + k + j))) << (8 * j);
  return int(w);
}

__global__ void __launch_bounds__(kDp4aWarps * 32) i8_gemm_dp4a_kernel(const int8_t* __restrict__ xq,
                                                                         const int8_t* __restrict__ cb, int64_t K,
                                                                         Epilogue e) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kDp4aWarps + threadIdx.x / 32;
  if (n >= e.N) return;  // a whole warp leaves together
  const bool aligned = K % 4 == 0 && reinterpret_cast<uintptr_t>(xq) % 4 == 0 && reinterpret_cast<uintptr_t>(cb) % 4 == 0;
  int acc[kInt8Dp4aRows];
PEFT_UNROLL
  for (int m = 0; m < int(kInt8Dp4aRows); ++m) acc[m] = 0;
  const int8_t* wrow = cb + n * K;
  for (int64_t k = int64_t(lane) * 4; k < K; k += 32 * 4) {
    const int w = load_word(wrow, k, K, aligned);
PEFT_UNROLL
    for (int m = 0; m < int(kInt8Dp4aRows); ++m)
      if (m < e.M) acc[m] = __dp4a(load_word(xq + m * K, k, K, aligned), w, acc[m]);
  }
PEFT_UNROLL
  for (int m = 0; m < int(kInt8Dp4aRows); ++m)
PEFT_UNROLL
    for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
  if (lane == 0)
    for (int m = 0; m < int(kInt8Dp4aRows) && m < e.M; ++m) epilogue_store(e, m, n, acc[m]);
}

}  // namespace

// ---- host API ---------------------------------------------------------------------------------------------
using namespace host_checks;

namespace {
// Shape and dtype checks shared by the int8 entry points.
int check_int8_shape(const char* op, int64_t M, int64_t N, int64_t K, std::string* err) {
  int64_t mk, nk, mn;
  if (M < 0 || N < 0 || K < 0 || M > 0x7fffffff || __builtin_mul_overflow(M, K, &mk) || __builtin_mul_overflow(N, K, &nk) ||
      __builtin_mul_overflow(M, N, &mn) || mk > (int64_t(1) << 46) || nk > (int64_t(1) << 46) || mn > (int64_t(1) << 46))
    return reject(err, kInvalid, std::string(op) + fmt(": invalid shape M=%lld N=%lld K=%lld", M, N, K));
  return 0;
}
}  // namespace

int cuda_int8_quantize(const void* w, int dt, int64_t rows, int64_t cols, int8_t* cb, float* scb, int64_t* bad_row,
                       std::string* err) {
  const char* op = "cuda_int8_quantize";
  if (bad_row) *bad_row = -1;
  if (!float_dt(dt)) return reject(err, kInvalid, std::string(op) + ": weight dtype must be f32, f16 or bf16, got " + dt_name(dt));
  if (int rc = check_int8_shape(op, rows, 0, cols, err)) return rc;
  if (rows == 0) return 0;
  if (!w || !cb || !scb) return reject(err, kInvalid, std::string(op) + ": null pointer");
  LAUNCH(unsigned(rows), kQuantThreads, 0, 0, quant_rows_kernel)(w, DType(dt), cols, 0.f, nullptr, cb, scb);
  if (int rc = finish(op, cudaGetLastError(), err)) return rc;
  if (!bad_row) return 0;
  std::vector<float> s(static_cast<size_t>(rows));
  if (int rc = api(op, cudaMemcpy(s.data(), scb, s.size() * 4, cudaMemcpyDeviceToHost), err)) return rc;
  for (int64_t r = 0; r < rows; ++r)
    if (!std::isfinite(s[size_t(r)])) {
      *bad_row = r;
      break;
    }
  return 0;
}

int cuda_int8_linear(const CudaInt8Linear& a, std::string* err) {
  const char* op = "cuda_int8_linear";
  if (!float_dt(a.x_dt) || (!a.raw && !float_dt(a.y_dt)) || (a.bias && !float_dt(a.bias_dt)))
    return reject(err, kInvalid, std::string(op) + ": x, y and bias must be f32, f16 or bf16, got " + dt_name(a.x_dt) + ", " +
                                     dt_name(a.y_dt) + ", " + dt_name(a.bias_dt));
  if (int rc = check_int8_shape(op, a.M, a.N, a.K, err)) return rc;
  if (a.r < 0 || (a.r > 0 && (!a.u || !a.bt)) || a.path < 0 || a.path > 2)
    return reject(err, kInvalid, std::string(op) + fmt(": invalid rank term (r=%lld) or kernel choice %lld", a.r, a.path));
  if (a.M == 0 || a.N == 0) return 0;
  if ((a.N + kI8BN - 1) / kI8BN > 65535) return reject(err, kInvalid, std::string(op) + fmt(": N=%lld is beyond the grid limit (4194240)", a.N));
  if (!a.x || !a.cb || !a.scb || !(a.raw || a.y)) return reject(err, kInvalid, std::string(op) + ": null pointer");

  // Outlier columns: marked on the device, listed on the host (their count sizes the rank term).
  DeviceBuffer mask, cols, ou, obt;
  thread_local ScratchBuffer xq, scx;
  std::vector<int> host_cols;
  if (a.threshold > 0.f) {
    if (int rc = alloc(op, mask, size_t(a.K), err)) return rc;
    if (int rc = api(op, cudaMemset(mask.p, 0, size_t(a.K)), err)) return rc;
    if (a.K > 0) {
      LAUNCH(elt_grid(a.M * a.K), kEltThreads, 0, 0, outlier_mask_kernel)(a.x, DType(a.x_dt), a.M * a.K, a.K, a.threshold,
                                                                          mask.as<unsigned char>());
      if (int rc = finish(op, cudaGetLastError(), err)) return rc;
    }
    std::vector<unsigned char> m(static_cast<size_t>(a.K));
    if (int rc = api(op, cudaMemcpy(m.data(), mask.p, m.size(), cudaMemcpyDeviceToHost), err)) return rc;
    for (int64_t k = 0; k < a.K; ++k)
      if (m[size_t(k)]) host_cols.push_back(int(k));
  }
  const int64_t R = static_cast<int64_t>(host_cols.size());
  if (R > 0 && !a.raw) {
    if (int rc = alloc(op, cols, size_t(R) * 4, err)) return rc;
    if (int rc = api(op, cudaMemcpy(cols.p, host_cols.data(), size_t(R) * 4, cudaMemcpyHostToDevice), err)) return rc;
    if (int rc = alloc(op, ou, size_t(a.M * R) * 4, err)) return rc;
    if (int rc = alloc(op, obt, size_t(R * a.N) * 4, err)) return rc;
    LAUNCH(elt_grid(std::max(a.M, a.N) * R), kEltThreads, 0, 0, outlier_terms_kernel)(
        a.x, DType(a.x_dt), a.M, a.K, a.cb, a.scb, a.N, cols.as<int>(), R, ou.as<float>(), obt.as<float>());
    if (int rc = finish(op, cudaGetLastError(), err)) return rc;
  }
  // x quantised per row (outlier columns zero).
  if (int rc = xq.reserve(op, size_t(a.M * a.K), err)) return rc;
  if (int rc = scx.reserve(op, size_t(a.M) * 4, err)) return rc;
  LAUNCH(unsigned(a.M), kQuantThreads, 0, 0, quant_rows_kernel)(a.x, DType(a.x_dt), a.K, a.threshold,
                                                                 R > 0 ? mask.as<unsigned char>() : nullptr, xq.as<int8_t>(),
                                                                 scx.as<float>());
  if (int rc = finish(op, cudaGetLastError(), err)) return rc;

  Epilogue e{scx.as<float>(), a.scb, a.bias, DType(a.bias_dt), a.y, DType(a.y_dt), a.raw, a.M, a.N,
             ou.as<float>(), obt.as<float>(), a.raw ? 0 : R, a.u, a.bt, a.raw ? 0 : a.r};
  const bool dp4a = a.path == 1 || (a.path == 0 && a.M <= kInt8Dp4aRows);
  if (dp4a && a.M > kInt8Dp4aRows)
    return reject(err, kInvalid, std::string(op) + fmt(": the __dp4a kernel takes at most %lld rows, got M=%lld", kInt8Dp4aRows, a.M));
  if (dp4a) {
    LAUNCH(unsigned((a.N + kDp4aWarps - 1) / kDp4aWarps), kDp4aWarps * 32, 0, 0, i8_gemm_dp4a_kernel)(xq.as<int8_t>(), a.cb, a.K, e);
  } else {
    const dim3 grid(unsigned((a.M + kI8BM - 1) / kI8BM), unsigned((a.N + kI8BN - 1) / kI8BN));
    LAUNCH(grid, kI8Threads, 0, 0, i8_gemm_wmma_kernel)(xq.as<int8_t>(), a.cb, a.K, e);
  }
  return finish(op, cudaGetLastError(), err);
}

namespace {
__global__ void dequant_scale_kernel(const float* scb, float* s, int64_t n) {
  PEFT_GRID_STRIDE(i, n) gstore(s + i, gload(scb + i) * kInv127);
}
}  // namespace

int cuda_int8_linear_grad_input(const void* dy, int dy_dt, int64_t M, const int8_t* cb, const float* scb, int64_t N,
                                int64_t K, void* dx, int dx_dt, std::string* err) {
  const char* op = "cuda_int8_linear_grad_input";
  if (int rc = check_int8_shape(op, M, N, K, err)) return rc;
  if (M == 0 || K == 0) return 0;
  if (!dy || !cb || !scb || !dx) return reject(err, kInvalid, std::string(op) + ": null pointer");
  // dx = dy·(CB·SCB/127): SCB/127 per output column of the forward is a per-k scale of this product, applied
  // to dy as its tiles are staged; CB is widened exactly as it is staged (no dequantised copy of W).
  thread_local ScratchBuffer s;
  if (int rc = s.reserve(op, size_t(N) * 4, err)) return rc;
  if (N > 0) {
    LAUNCH(elt_grid(N), kEltThreads, 0, 0, dequant_scale_kernel)(scb, s.as<float>(), N);
    if (int rc = finish(op, cudaGetLastError(), err)) return rc;
  }
  CudaGemm g;
  g.M = M, g.N = K, g.K = N;
  g.A = {dy, dy_dt, N, 1};
  g.B = {cb, int(DType::I8), K, 1};
  g.a_ks = s.as<float>();
  g.C = dx, g.c_dt = dx_dt, g.ldc = K;
  return cuda_gemm(g, err);
}

}  // namespace peft::PEFT_CUDA_NS
