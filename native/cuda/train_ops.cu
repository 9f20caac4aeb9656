// The host API of the training ops (declared in cuda_ops.h): argument checks, then the kernel launchers.
// Losses and the embedding backward also do host work: targets and ids are read back to count and group
// them, and per-row partial losses are added on the host in row order (as the CPU backend adds them).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "cuda_ops.h"
#include "host_checks.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
using namespace host_checks;

namespace {

// The integer ids (i32/i64) at device pointer `ids`, copied to the host as int64.
int read_ids(const char* op, const void* ids, int idt, int64_t n, std::vector<int64_t>& out, std::string* err) {
  out.assign(size_t(n), 0);
  if (n == 0) return 0;
  if (idt == int(DType::I64)) return api(op, cudaMemcpy(out.data(), ids, size_t(n) * 8, cudaMemcpyDeviceToHost), err);
  std::vector<int32_t> narrow(static_cast<size_t>(n));
  if (int rc = api(op, cudaMemcpy(narrow.data(), ids, size_t(n) * 4, cudaMemcpyDeviceToHost), err)) return rc;
  std::copy(narrow.begin(), narrow.end(), out.begin());
  return 0;
}

// Adds `n` doubles at device pointer `partials` on the host, in order.
int ordered_sum(const char* op, const double* partials, int64_t n, double* sum, std::string* err) {
  std::vector<double> host(static_cast<size_t>(n));
  if (n && api(op, cudaMemcpy(host.data(), partials, size_t(n) * 8, cudaMemcpyDeviceToHost), err)) return kInvalid;
  double s = 0;
  for (double v : host) s += v;
  *sum = s;
  return 0;
}

// Shared checks: float dtype codes, a non-negative count, non-null pointers when there is work.
int check_floats(const char* op, std::initializer_list<int> dts, std::string* err) {
  for (int dt : dts)
    if (!float_dt(dt)) return reject(err, kInvalid, std::string(op) + ": dtype must be f32, f16 or bf16, got " + dt_name(dt));
  return 0;
}
int check_count(const char* op, int64_t n, std::string* err) {
  return n < 0 ? reject(err, kInvalid, std::string(op) + fmt(": invalid element count %lld", n)) : 0;
}
int check_ptrs(const char* op, std::initializer_list<const void*> ps, std::string* err) {
  for (const void* p : ps)
    if (!p) return reject(err, kInvalid, std::string(op) + ": null pointer");
  return 0;
}
int check_index_dt(const char* op, int dt, std::string* err) {
  return dt == int(DType::I32) || dt == int(DType::I64)
             ? 0
             : reject(err, kInvalid, std::string(op) + ": ids must be i32 or i64, got " + dt_name(dt));
}
// Row kernels run one block per row: at most 2^31 - 1 rows.
int check_rows(const char* op, int64_t rows, int64_t cols, std::string* err) {
  if (rows < 0 || cols < 0 || rows > 0x7fffffff)
    return reject(err, kInvalid, std::string(op) + fmt(": invalid shape rows=%lld cols=%lld (rows <= 2^31 - 1)", rows, cols));
  return 0;
}

}  // namespace

int cuda_gemm(const CudaGemm& g, std::string* err) {
  const char* op = "cuda_gemm";
  if (int rc = check_floats(op, {g.A.dt, g.c_dt}, err)) return rc;
  if (!(g.B.dt == int(DType::I8) && g.a_ks) && check_floats(op, {g.B.dt}, err)) return kInvalid;  // i8 B: the int8 gradient
  if (g.bias && check_floats(op, {g.bias_dt}, err)) return kInvalid;
  if (g.M < 0 || g.N < 0 || g.K < 0 || g.ldc < g.N)
    return reject(err, kInvalid, fmt("cuda_gemm: invalid shape M=%lld N=%lld K=%lld", g.M, g.N, g.K) + fmt(" ldc=%lld", g.ldc));
  if (g.M == 0 || g.N == 0) return 0;
  if ((g.N + kSimtTileN - 1) / kSimtTileN > 65535 || (g.M + kSimtTileM - 1) / kSimtTileM > 0x7fffffff)
    return reject(err, kInvalid, fmt("cuda_gemm: shape M=%lld N=%lld is beyond the grid limits (N <= 8388480)", g.M, g.N));
  if (!g.C || (g.K > 0 && (!g.A.p || !g.B.p))) return reject(err, kInvalid, "cuda_gemm: null pointer");
  if (g.rank.R < 0 || (g.rank.R > 0 && (!g.rank.A2.p || !g.rank.B2.p)))
    return reject(err, kInvalid, fmt("cuda_gemm: invalid rank term R=%lld (A2 and B2 needed when R > 0)", g.rank.R));
  if (g.rank.R > 0 && check_floats(op, {g.rank.A2.dt, g.rank.B2.dt}, err)) return kInvalid;
  // A per-k scale of A stays on the f32 SIMT kernel: on tensor cores each scaled 16-bit input would be rounded
  // back to 16 bits (the CPU multiplies in f32).
  const bool half = (g.A.dt == int(DType::F16) || g.A.dt == int(DType::BF16)) && g.B.dt == g.A.dt && !g.a_ks;
  const bool nt = g.A.cs == 1 && g.A.rs == g.K && g.B.rs == 1 && g.B.cs == g.K && g.ldc == g.N;
  // The tensor-core kernels' 64-wide tiles reach N <= 65535 * 64; wider products go to SIMT.
  const bool tc_grid = (g.N + kTcTileN - 1) / kTcTileN <= 65535;
  if (half && nt && g.alpha == 1.0f && !g.accumulate && !g.col_scale) {
    if (g.rank.R == 0) return cuda_gemm_nt(g.A.p, g.B.p, g.bias, g.C, g.A.dt, g.bias_dt, g.c_dt, g.M, g.N, g.K, err);
    if (tc_grid)
      return finish("cuda_gemm (tensor cores, rank term)",
                    launch_gemm_nt(g.A.p, g.B.p, g.bias, g.bias ? DType(g.bias_dt) : DType::F32, g.C, DType(g.A.dt),
                                   DType(g.c_dt), g.M, g.N, g.K, g.rank),
                    err);
  }
  const bool tf32 = g.allow_tf32 && g.A.dt == int(DType::F32) && g.B.dt == int(DType::F32);
  if ((half || tf32) && tc_grid) return finish(tf32 ? "cuda_gemm (tf32)" : "cuda_gemm (tensor cores)", launch_gemm_tc(g), err);
  return finish(op, launch_gemm_simt(g), err);
}

int cuda_activation(int act, const void* x, int xdt, void* y, int ydt, int64_t n, std::string* err) {
  const char* op = "cuda_activation";
  if (act < 0 || act > 3) return reject(err, kInvalid, fmt("cuda_activation: unknown activation %lld", act));
  if (int rc = check_floats(op, {xdt, ydt}, err)) return rc;
  if (int rc = check_count(op, n, err)) return rc;
  if (n == 0) return 0;
  if (int rc = check_ptrs(op, {x, y}, err)) return rc;
  return finish(op, launch_activation(act, x, DType(xdt), y, DType(ydt), n), err);
}

int cuda_activation_backward(int act, const void* x, int xdt, const void* dy, int dydt, void* dx, int dxdt, int64_t n,
                             std::string* err) {
  const char* op = "cuda_activation_backward";
  if (act < 0 || act > 3) return reject(err, kInvalid, fmt("cuda_activation_backward: unknown activation %lld", act));
  if (int rc = check_floats(op, {xdt, dydt, dxdt}, err)) return rc;
  if (int rc = check_count(op, n, err)) return rc;
  if (n == 0) return 0;
  if (int rc = check_ptrs(op, {x, dy, dx}, err)) return rc;
  return finish(op, launch_activation_backward(act, x, DType(xdt), dy, DType(dydt), dx, DType(dxdt), n), err);
}

int cuda_dropout(const void* x, int xdt, void* y, int ydt, int64_t n, double p, uint64_t seed, uint64_t stream,
                 std::string* err) {
  const char* op = "cuda_dropout";
  if (!(p >= 0 && p < 1)) return reject(err, kInvalid, "cuda_dropout: p must be in [0, 1)");
  if (int rc = check_floats(op, {x ? xdt : ydt, ydt}, err)) return rc;
  if (int rc = check_count(op, n, err)) return rc;
  if (n == 0) return 0;
  if (int rc = check_ptrs(op, {y}, err)) return rc;
  // As the CPU: u is a multiple of 2^-24, so u >= p exactly when u >= ceil(p * 2^24) / 2^24 (a float).
  const float keep_from = static_cast<float>(std::ceil(p * 16777216.0) / 16777216.0);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  return finish(op, launch_dropout(x, DType(xdt), y, DType(ydt), n, keep_from, scale, seed, stream), err);
}

int cuda_axpy(void* a, int adt, const void* b, int bdt, float alpha, int64_t n, std::string* err) {
  const char* op = "cuda_axpy";
  if (int rc = check_floats(op, {adt, bdt}, err)) return rc;
  if (int rc = check_count(op, n, err)) return rc;
  if (n == 0) return 0;
  if (int rc = check_ptrs(op, {a, b}, err)) return rc;
  return finish(op, launch_axpy(a, DType(adt), b, DType(bdt), alpha, n), err);
}

int cuda_scale_inplace(void* a, int adt, float alpha, int64_t n, std::string* err) {
  const char* op = "cuda_scale_inplace";
  if (int rc = check_floats(op, {adt}, err)) return rc;
  if (int rc = check_count(op, n, err)) return rc;
  if (n == 0) return 0;
  if (int rc = check_ptrs(op, {a}, err)) return rc;
  return finish(op, launch_scale_inplace(a, DType(adt), alpha, n), err);
}

int cuda_mul(const void* a, int adt, const void* b, int bdt, void* y, int ydt, int64_t n, std::string* err) {
  const char* op = "cuda_mul";
  if (int rc = check_floats(op, {adt, bdt, ydt}, err)) return rc;
  if (int rc = check_count(op, n, err)) return rc;
  if (n == 0) return 0;
  if (int rc = check_ptrs(op, {a, b, y}, err)) return rc;
  return finish(op, launch_mul(a, DType(adt), b, DType(bdt), y, DType(ydt), n), err);
}

int cuda_fill(void* dst, const void* value, int elem_bytes, int64_t n, std::string* err) {
  const char* op = "cuda_fill";
  if (elem_bytes != 1 && elem_bytes != 2 && elem_bytes != 4 && elem_bytes != 8)
    return reject(err, kInvalid, fmt("cuda_fill: element size must be 1, 2, 4 or 8 bytes, got %lld", elem_bytes));
  if (int rc = check_count(op, n, err)) return rc;
  if (n == 0) return 0;
  if (int rc = check_ptrs(op, {dst, value}, err)) return rc;
  uint64_t pattern = 0;
  memcpy(&pattern, value, size_t(elem_bytes));
  return finish(op, launch_fill(dst, pattern, elem_bytes, n), err);
}

int cuda_log_softmax(const void* x, int xdt, void* y, int ydt, int64_t rows, int64_t cols, std::string* err) {
  const char* op = "cuda_log_softmax";
  if (int rc = check_floats(op, {xdt, ydt}, err)) return rc;
  if (int rc = check_rows(op, rows, cols, err)) return rc;
  if (rows == 0 || cols == 0) return 0;
  if (int rc = check_ptrs(op, {x, y}, err)) return rc;
  return finish(op, launch_log_softmax(x, DType(xdt), y, DType(ydt), rows, cols), err);
}

int cuda_log_softmax_backward(const void* y, int ydt, const void* dy, int dydt, void* dx, int dxdt, int64_t rows,
                              int64_t cols, std::string* err) {
  const char* op = "cuda_log_softmax_backward";
  if (int rc = check_floats(op, {ydt, dydt, dxdt}, err)) return rc;
  if (int rc = check_rows(op, rows, cols, err)) return rc;
  if (rows == 0 || cols == 0) return 0;
  if (int rc = check_ptrs(op, {y, dy, dx}, err)) return rc;
  return finish(op, launch_log_softmax_backward(y, DType(ydt), dy, DType(dydt), dx, DType(dxdt), rows, cols), err);
}

int cuda_sum_rows(const void* x, int xdt, int64_t rows, int64_t cols, void* out, int odt, bool accumulate,
                  std::string* err) {
  const char* op = "cuda_sum_rows";
  if (int rc = check_floats(op, {xdt, odt}, err)) return rc;
  if (rows < 0 || cols < 0 || (cols + 31) / 32 > 0x7fffffff)
    return reject(err, kInvalid, fmt("cuda_sum_rows: invalid shape rows=%lld cols=%lld", rows, cols));
  if (cols == 0) return 0;
  if (int rc = check_ptrs(op, {out, rows ? x : out}, err)) return rc;
  return finish(op, launch_sum_rows(x, DType(xdt), rows, cols, out, DType(odt), accumulate), err);
}

int cuda_embedding(const void* ids, int idt, int64_t n, const void* w, void* out, int64_t row_bytes, std::string* err) {
  const char* op = "cuda_embedding";
  if (int rc = check_index_dt(op, idt, err)) return rc;
  if (n < 0 || row_bytes < 0) return reject(err, kInvalid, fmt("cuda_embedding: invalid size n=%lld row_bytes=%lld", n, row_bytes));
  if (n == 0 || row_bytes == 0) return 0;
  if (int rc = check_ptrs(op, {ids, w, out}, err)) return rc;
  return finish(op, launch_embedding(ids, DType(idt), n, w, out, row_bytes), err);
}

int cuda_embedding_backward(const void* ids, int idt, int64_t n, const void* dy, int dydt, void* dw, int dwdt,
                            int64_t dim, std::string* err) {
  const char* op = "cuda_embedding_backward";
  if (int rc = check_index_dt(op, idt, err)) return rc;
  if (int rc = check_floats(op, {dydt, dwdt}, err)) return rc;
  if (n < 0 || dim < 0 || (dim + 255) / 256 > 65535 || n > 0x7fffffff)
    return reject(err, kInvalid, fmt("cuda_embedding_backward: invalid size n=%lld dim=%lld", n, dim));
  if (n == 0 || dim == 0) return 0;
  if (int rc = check_ptrs(op, {ids, dy, dw}, err)) return rc;
  // Group the sources by destination row (a stable sort keeps each group in index order).
  std::vector<int64_t> id;
  if (int rc = read_ids(op, ids, idt, n, id, err)) return rc;
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return id[size_t(a)] < id[size_t(b)]; });
  std::vector<int64_t> rows, starts;
  for (size_t k = 0; k < order.size(); ++k)
    if (k == 0 || id[size_t(order[k])] != id[size_t(order[k - 1])]) rows.push_back(id[size_t(order[k])]), starts.push_back(int64_t(k));
  starts.push_back(n);
  DeviceBuffer drows, dstarts, dorder;
  if (int rc = alloc(op, drows, rows.size() * 8, err)) return rc;
  if (int rc = alloc(op, dstarts, starts.size() * 8, err)) return rc;
  if (int rc = alloc(op, dorder, order.size() * 8, err)) return rc;
  for (auto [dst, src] : {std::pair{&drows, &rows}, {&dstarts, &starts}, {&dorder, &order}})
    if (int rc = api(op, cudaMemcpy(dst->p, src->data(), src->size() * 8, cudaMemcpyHostToDevice), err)) return rc;
  return finish(op,
                launch_embedding_backward(drows.as<int64_t>(), dstarts.as<int64_t>(), dorder.as<int64_t>(),
                                          int64_t(rows.size()), dy, DType(dydt), dw, DType(dwdt), dim),
                err);
}

namespace {

// The checks the class losses share, and the count of rows whose target is not `ignore` (read back).
int class_loss_setup(const char* op, int ldt, const void* target, int tdt, int64_t rows, int64_t classes, int64_t ignore,
                     int gdt, const void* scores, void* grad, int64_t* count, std::string* err) {
  if (int rc = check_floats(op, {ldt, gdt}, err)) return rc;
  if (int rc = check_index_dt(op, tdt, err)) return rc;
  if (int rc = check_rows(op, rows, classes, err)) return rc;
  *count = 0;
  if (rows == 0) return 0;
  if (int rc = check_ptrs(op, {target, classes ? scores : target, classes ? grad : target}, err)) return rc;
  std::vector<int64_t> t;
  if (int rc = read_ids(op, target, tdt, rows, t, err)) return rc;
  for (int64_t v : t) *count += v != ignore;
  return 0;
}

}  // namespace

int cuda_nll_loss(const void* logp, int ldt, const void* target, int tdt, int64_t rows, int64_t classes, int64_t ignore,
                  void* grad, int gdt, double* loss, std::string* err) {
  const char* op = "cuda_nll_loss";
  int64_t count = 0;
  if (int rc = class_loss_setup(op, ldt, target, tdt, rows, classes, ignore, gdt, logp, grad, &count, err)) return rc;
  *loss = std::numeric_limits<double>::quiet_NaN();
  if (count == 0) return 0;
  DeviceBuffer part;
  if (int rc = alloc(op, part, size_t(rows) * 8, err)) return rc;
  const float g = static_cast<float>(-1.0 / static_cast<double>(count));
  if (int rc = finish(op, launch_nll_loss(logp, DType(ldt), target, DType(tdt), rows, classes, ignore, g, grad, DType(gdt),
                                          part.as<double>()),
                      err))
    return rc;
  double sum = 0;
  if (int rc = ordered_sum(op, part.as<double>(), rows, &sum, err)) return rc;
  *loss = -sum / static_cast<double>(count);
  return 0;
}

int cuda_cross_entropy(const void* logits, int ldt, const void* target, int tdt, int64_t rows, int64_t classes,
                       int64_t ignore, double smoothing, void* grad, int gdt, double* loss, std::string* err) {
  const char* op = "cuda_cross_entropy";
  if (!(smoothing >= 0 && smoothing <= 1)) return reject(err, kInvalid, "cuda_cross_entropy: smoothing must be in [0, 1]");
  int64_t count = 0;
  if (int rc = class_loss_setup(op, ldt, target, tdt, rows, classes, ignore, gdt, logits, grad, &count, err)) return rc;
  *loss = std::numeric_limits<double>::quiet_NaN();
  if (count == 0) return 0;
  DeviceBuffer nll, smooth;
  if (int rc = alloc(op, nll, size_t(rows) * 8, err)) return rc;
  if (int rc = alloc(op, smooth, size_t(rows) * 8, err)) return rc;
  const double n = static_cast<double>(count);
  const float inv = static_cast<float>(1.0 / n), on_target = static_cast<float>(1.0 - smoothing);
  const float uniform = static_cast<float>(smoothing / static_cast<double>(classes));
  if (int rc = finish(op, launch_cross_entropy(logits, DType(ldt), target, DType(tdt), rows, classes, ignore, inv, on_target,
                                               uniform, smoothing > 0, grad, DType(gdt), nll.as<double>(), smooth.as<double>()),
                      err))
    return rc;
  double nll_sum = 0, smooth_sum = 0;
  if (int rc = ordered_sum(op, nll.as<double>(), rows, &nll_sum, err)) return rc;
  *loss = nll_sum / n;
  // Only with smoothing on: an infinite -logp elsewhere in a row must not turn a plain loss into 0 * inf.
  if (smoothing > 0) {
    if (int rc = ordered_sum(op, smooth.as<double>(), rows, &smooth_sum, err)) return rc;
    *loss = (1.0 - smoothing) * *loss + smooth_sum / n * (smoothing / static_cast<double>(classes));
  }
  return 0;
}

int cuda_mse_loss(const void* y, int ydt, const void* t, int tdt, int64_t n, void* grad, int gdt, double* loss,
                  std::string* err) {
  const char* op = "cuda_mse_loss";
  if (int rc = check_floats(op, {ydt, tdt, gdt}, err)) return rc;
  if (int rc = check_count(op, n, err)) return rc;
  *loss = std::numeric_limits<double>::quiet_NaN();
  if (n == 0) return 0;
  if (int rc = check_ptrs(op, {y, t, grad}, err)) return rc;
  const int64_t chunks = (n + kMseChunk - 1) / kMseChunk;
  DeviceBuffer part;
  if (int rc = alloc(op, part, size_t(chunks) * 8, err)) return rc;
  const float norm = static_cast<float>(2.0 / static_cast<double>(n));
  if (int rc = finish(op, launch_mse_loss(y, DType(ydt), t, DType(tdt), n, norm, grad, DType(gdt), part.as<double>()), err))
    return rc;
  double sum = 0;
  if (int rc = ordered_sum(op, part.as<double>(), chunks, &sum, err)) return rc;
  *loss = sum / static_cast<double>(n);
  return 0;
}

int cuda_adamw(const CudaAdamWParam* params, int64_t count, const CudaAdamWScalars& s, std::string* err) {
  const char* op = "cuda_adamw";
  if (count < 0 || (count > 0 && !params)) return reject(err, kInvalid, "cuda_adamw: invalid parameter list");
  for (int64_t i = 0; i < count; ++i) {
    const CudaAdamWParam& p = params[i];
    if (int rc = check_floats(op, {p.p_dt, p.g_dt}, err)) return rc;
    if (int rc = check_count(op, p.n, err)) return rc;
    if (p.n && check_ptrs(op, {p.p, p.g, p.m, p.v}, err)) return kInvalid;
  }
  for (int64_t i = 0; i < count; ++i) {
    if (params[i].n == 0) continue;
    if (int rc = api(op, launch_adamw(params[i], s), err)) return rc;
  }
  return finish(op, cudaSuccess, err);
}

}  // namespace peft::PEFT_CUDA_NS
