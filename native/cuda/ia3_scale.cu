// IA3 on a dense layer on the device, step for step as native/cpu/ia3.cc (the reference):
//   input side  y = (x ⊙ l)·Wᵀ + b: l scales x's tiles as the GEMM stages them (CudaGemm::a_ks), no extra pass;
//   output side y = (x·Wᵀ + b) ⊙ l: l is the GEMM epilogue's column scale (col_scale); while training the
//               unscaled y0 is kept (dl needs it; dividing y by l fails where l is 0) and y = y0 ⊙ l.
// The backward's products go through the same GEMM with the scale in its loader or epilogue; dl is a column
// reduction in f64 (as the CPU's); merge/unmerge scale W in place, checked first when asked to be safe.
#include "dtype.cuh"
#include "host_checks.cuh"
#include "ia3_ops.h"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

// out (R, C) in odt = f32(in) ⊙ l[column], one rounding.
__global__ void scale_columns_kernel(const void* in, DType idt, const float* l, void* out, DType odt, int64_t n, int64_t C) {
  PEFT_GRID_STRIDE(i, n) store_f32(out, odt, i, load_f32(in, idt, i) * gload(l + i % C));
}

// dl[c] += f32(Σ_r f64(a[r, c])·b[r, c]). A block takes 32 columns; its 8 row lanes each sum every 8th row in
// f64, then one thread per column adds the 8 partials in lane order (the same result in every run).
constexpr int kDotCols = 32, kDotLanes = 8;
__global__ void __launch_bounds__(kDotCols* kDotLanes) column_dots_kernel(const void* a, DType adt, const void* b,
                                                                           DType bdt, int64_t R, int64_t C, float* dl) {
  SMEM_ARRAY(double, part, [kDotLanes][kDotCols]);
  const int cx = threadIdx.x % kDotCols, lane = threadIdx.x / kDotCols;
  const int64_t c = int64_t(blockIdx.x) * kDotCols + cx;
  double s = 0;
  if (c < C)
    for (int64_t r = lane; r < R; r += kDotLanes) s += double(load_f32(a, adt, r * C + c)) * load_f32(b, bdt, r * C + c);
  part[lane][cx] = s;
  __syncthreads();
  if (lane == 0 && c < C) {
    double t = part[0][cx];
    for (int k = 1; k < kDotLanes; ++k) t += part[k][cx];
    gstore(dl + c, gload(dl + c) + float(t));
  }
}

// W (outer, mid, inner) times f[mid]: `write` stores the products; otherwise any product not finite once
// rounded to W's dtype sets *bad (an f16 product past 65504 is not finite once stored).
__global__ void scale_weight_kernel(void* W, DType dt, int64_t total, int64_t mid, int64_t inner, const float* f,
                                    bool write, int* bad) {
  PEFT_GRID_STRIDE(e, total) {
    const float v = load_f32(W, dt, e) * gload(f + (e / inner) % mid);
    if (write) {
      store_f32(W, dt, e, v);
    } else {
      float r = v;
      if (dt == DType::F16) r = __half2float(__float2half_rn(v));
      else if (dt == DType::BF16) r = __bfloat162float(__float2bfloat16_rn(v));
      if (!(fabsf(r) < INFINITY)) atomicOr(bad, 1);  // NaN or inf
    }
  }
}

}  // namespace

using namespace host_checks;

namespace {

CudaGemm product(int64_t M, int64_t N, int64_t K, CudaMat A, CudaMat B, void* C, int c_dt) {
  CudaGemm g;
  g.M = M, g.N = N, g.K = K, g.A = A, g.B = B, g.C = C, g.c_dt = c_dt, g.ldc = N;
  return g;
}

int scale_columns(const char* op, const void* in, int idt, const float* l, void* out, int odt, int64_t R, int64_t C,
                  std::string* err) {
  if (R * C == 0) return 0;
  LAUNCH(elt_grid(R * C), kEltThreads, 0, 0, scale_columns_kernel)(in, DType(idt), l, out, DType(odt), R * C, C);
  return finish(op, cudaGetLastError(), err);
}

int column_dots(const char* op, const void* a, int adt, const void* b, int bdt, int64_t R, int64_t C, float* dl,
                std::string* err) {
  if (C == 0) return 0;
  LAUNCH(unsigned((C + kDotCols - 1) / kDotCols), kDotCols * kDotLanes, 0, 0, column_dots_kernel)(a, DType(adt), b, DType(bdt), R, C, dl);
  return finish(op, cudaGetLastError(), err);
}

int check_dense(const char* op, const CudaDense& d, const float* l, std::string* err) {
  if (!float_dt(d.x_dt) || !float_dt(d.w_dt) || (d.bias && !float_dt(d.bias_dt)))
    return reject(err, kInvalid, std::string(op) + ": x, W and bias must be f32, f16 or bf16");
  if (d.M < 0 || d.N < 0 || d.K < 0) return reject(err, kInvalid, std::string(op) + fmt(": invalid shape M=%lld N=%lld K=%lld", d.M, d.N, d.K));
  if (!l) return reject(err, kInvalid, std::string(op) + ": null scale");
  return 0;
}
}  // namespace

int cuda_ia3_forward(const CudaDense& d, const float* l, bool input_side, void* y, int y_dt, void* y0, int y0_dt,
                     std::string* err) {
  const char* op = "cuda_ia3_forward";
  if (int rc = check_dense(op, d, l, err)) return rc;
  if (d.M == 0 || d.N == 0) return 0;
  CudaGemm g = product(d.M, d.N, d.K, rows_of(d.x, d.x_dt, d.K), weight_kn(d), y0 ? y0 : y, y0 ? y0_dt : y_dt);
  g.bias = d.bias, g.bias_dt = d.bias_dt;
  if (input_side) g.a_ks = l;
  if (!input_side && !y0) g.col_scale = l;
  if (int rc = cuda_gemm(g, err)) return rc;
  return y0 ? scale_columns(op, y0, y0_dt, l, y, y_dt, d.M, d.N, err) : 0;
}

int cuda_ia3_backward(const CudaDense& d, const float* l, bool input_side, const void* dy, int dy_dt, const void* y0,
                      int y0_dt, void* dx, int dx_dt, void* dW, int dW_dt, void* db, int db_dt, float* dl,
                      std::string* err) {
  const char* op = "cuda_ia3_backward";
  if (int rc = check_dense(op, d, l, err)) return rc;
  const int64_t M = d.M, K = d.K, N = d.N;
  const int f32 = int(DType::F32);
  if (input_side) {
    if (dl && M > 0) {
      // g = dy·W in f32; dl += Σ_rows x ⊙ g; dx = g ⊙ l.
      DeviceBuffer G;
      if (int rc = alloc(op, G, size_t(M * K) * 4, err)) return rc;
      if (int rc = cuda_gemm(product(M, K, N, rows_of(dy, dy_dt, N), weight_nk(d), G.p, f32), err)) return rc;
      if (int rc = column_dots(op, d.x, d.x_dt, G.p, f32, M, K, dl, err)) return rc;
      if (dx)
        if (int rc = scale_columns(op, G.p, f32, l, dx, dx_dt, M, K, err)) return rc;
    } else if (dx) {
      CudaGemm g = product(M, K, N, rows_of(dy, dy_dt, N), weight_nk(d), dx, dx_dt);
      g.col_scale = l;
      if (int rc = cuda_gemm(g, err)) return rc;
    }
    if (dW) {  // dW += dyᵀ·(x ⊙ l): l scales dW's k columns (N, K), or, stored (K, N), x's staged columns
      CudaGemm g = d.w_in_out ? product(K, N, M, cols_of(d.x, d.x_dt, K), rows_of(dy, dy_dt, N), dW, dW_dt)
                              : product(N, K, M, cols_of(dy, dy_dt, N), rows_of(d.x, d.x_dt, K), dW, dW_dt);
      g.accumulate = true;
      DeviceBuffer xs;  // stored (K, N): A(k, m) = x(m, k) scaled per row of the product, so a scaled copy
      if (d.w_in_out) {
        if (int rc = alloc(op, xs, size_t(M * K) * 4, err)) return rc;
        if (int rc = scale_columns(op, d.x, d.x_dt, l, xs.p, f32, M, K, err)) return rc;
        g.A = cols_of(xs.p, f32, K);
      } else {
        g.col_scale = l;
      }
      if (int rc = cuda_gemm(g, err)) return rc;
    }
    if (db) return cuda_sum_rows(dy, dy_dt, M, N, db, db_dt, true, err);
    return 0;
  }
  // y = (x·Wᵀ + b) ⊙ l: dl = Σ_rows dy ⊙ y0; dx = (dy ⊙ l)·W with l applied as dy is staged.
  if (dl && M > 0)
    if (int rc = column_dots(op, dy, dy_dt, y0, y0_dt, M, N, dl, err)) return rc;
  if (dx) {
    CudaGemm g = product(M, K, N, rows_of(dy, dy_dt, N), weight_nk(d), dx, dx_dt);
    g.a_ks = l;
    if (int rc = cuda_gemm(g, err)) return rc;
  }
  if (!dW && !db) return 0;
  // (dy ⊙ l), the gradient reaching the unscaled layer.
  DeviceBuffer dys;
  if (int rc = alloc(op, dys, size_t(M * N) * 4, err)) return rc;
  if (int rc = scale_columns(op, dy, dy_dt, l, dys.p, f32, M, N, err)) return rc;
  if (dW) {
    CudaGemm g = d.w_in_out ? product(K, N, M, cols_of(d.x, d.x_dt, K), rows_of(dy, dy_dt, N), dW, dW_dt)
                            : product(N, K, M, cols_of(dys.p, f32, N), rows_of(d.x, d.x_dt, K), dW, dW_dt);
    if (d.w_in_out) g.col_scale = l;
    g.accumulate = true;
    if (int rc = cuda_gemm(g, err)) return rc;
  }
  if (db) return cuda_sum_rows(dys.p, f32, M, N, db, db_dt, true, err);
  return 0;
}

int cuda_ia3_scale(void* W, int dt, int64_t outer, int64_t mid, int64_t inner, const float* f, bool safe, bool commit,
                   bool* finite, std::string* err) {
  const char* op = "cuda_ia3_scale";
  if (finite) *finite = true;
  if (!float_dt(dt)) return reject(err, kInvalid, std::string(op) + ": weight dtype must be f32, f16 or bf16, got " + dt_name(dt));
  int64_t total;
  if (outer < 0 || mid < 0 || inner < 0 || __builtin_mul_overflow(outer * mid, inner, &total))
    return reject(err, kInvalid, std::string(op) + fmt(": invalid view [%lld, %lld, %lld]", outer, mid, inner));
  if (total == 0) return 0;
  if (!W || !f) return reject(err, kInvalid, std::string(op) + ": null pointer");
  if (safe) {
    DeviceBuffer bad;
    if (int rc = alloc(op, bad, 4, err)) return rc;
    if (int rc = api(op, cudaMemset(bad.p, 0, 4), err)) return rc;
    LAUNCH(elt_grid(total), kEltThreads, 0, 0, scale_weight_kernel)(W, DType(dt), total, mid, inner, f, false, bad.as<int>());
    if (int rc = finish(op, cudaGetLastError(), err)) return rc;
    int flag = 0;
    if (int rc = api(op, cudaMemcpy(&flag, bad.p, 4, cudaMemcpyDeviceToHost), err)) return rc;
    if (flag) {
      if (finite) *finite = false;
      return 0;
    }
  }
  if (!commit) return 0;
  LAUNCH(elt_grid(total), kEltThreads, 0, 0, scale_weight_kernel)(W, DType(dt), total, mid, inner, f, true, nullptr);
  return finish(op, cudaGetLastError(), err);
}

}  // namespace peft::PEFT_CUDA_NS
