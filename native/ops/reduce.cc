// Reductions (sum, mean, max, min, var over any set of axes) and the batched matrix product: the ops that
// contract dimensions. CPU kernels only: operands elsewhere get ERR_NOT_ON_DEVICE.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../cpu/parallel.h"
#include "../cpu/reduce.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

ReduceOp arg_reduce_op(const Napi::Value& v) {
  const std::string s = arg_string(v, "reduce", "op");
  if (s == "sum") return ReduceOp::Sum;
  if (s == "mean") return ReduceOp::Mean;
  if (s == "max") return ReduceOp::Max;
  if (s == "min") return ReduceOp::Min;
  if (s == "var") return ReduceOp::Var;
  fail_type(cat("reduce: op must be \"sum\", \"mean\", \"max\", \"min\" or \"var\", got \"", s, "\""));
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); i++) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// reduce(op, x, dims, keepdim, correction, outDtype) -> {values, indices}
Napi::Value Reduce(const Napi::CallbackInfo& info) {
  const ReduceOp rop = arg_reduce_op(info[0]);
  const std::string label = cat("reduce ", info[0].As<Napi::String>().Utf8Value());
  const char* op = label.c_str();
  const Tensor& x = TensorHandle::From(info[1], op, "x");
  if (!info[2].IsArray()) fail_type(cat(op, ": dims must be an array of integers"));
  Napi::Array darr = info[2].As<Napi::Array>();
  const uint32_t nd_given = darr.Length();
  if (nd_given > 16) fail("ERR_SHAPE", cat(op, ": dims has ", nd_given, " entries; a tensor has at most 16 dimensions"));
  std::vector<int64_t> dims;
  for (uint32_t i = 0; i < nd_given; i++) {
    const std::string nm = cat("dims[", i, "]");
    dims.push_back(arg_int(darr.Get(i), op, nm.c_str(), -kMaxSafeInt, kMaxSafeInt));
  }
  const bool keepdim = arg_bool(info[3], op, "keepdim");
  const double correction = arg_number(info[4], op, "correction");
  const DType odt = arg_dtype(info[5], op, "outDtype");

  if (!std::isfinite(correction)) fail_range(cat(op, ": correction must be a finite number, got ", correction));
  require_float(x, op, "x");
  if (!dtype_is_float(odt)) fail("ERR_DTYPE", cat(op, ": outDtype must be f32, f16 or bf16, got ", dtype_name(odt)));
  require_cpu(op, {{"x", &x}});
  const int nd = x.ndim();
  const int64_t span = nd == 0 ? 1 : nd;  // a 0-d tensor accepts dim 0 and -1, as in PyTorch
  bool reduced[16] = {};
  for (int64_t d : dims) {
    if (d < -span || d >= span)
      fail("ERR_SHAPE", cat(op, ": dim ", d, " is out of range for x of shape ", shape_str(x.shape), " (expected ", -span, " <= dim < ", span, ")"));
    const int64_t a = d < 0 ? d + span : d;
    if (nd > 0) {
      if (reduced[a]) fail("ERR_SHAPE", cat(op, ": dims ", dims_str(dims), " name dimension ", a, " twice"));
      reduced[a] = true;
    } else if (dims.size() > 1) {
      fail("ERR_SHAPE", cat(op, ": dims ", dims_str(dims), " name dimension 0 twice"));
    }
  }
  if (dims.empty())
    for (int d = 0; d < nd; d++) reduced[d] = true;
  int64_t n_red = 1;
  Shape os;
  for (int d = 0; d < nd; d++) {
    if (reduced[d]) {
      n_red *= x.shape[d];
      if (keepdim) os.push_back(1);
    } else {
      os.push_back(x.shape[d]);
    }
  }
  const bool ext = rop == ReduceOp::Max || rop == ReduceOp::Min;
  if (ext && n_red == 0)
    fail("ERR_SHAPE", cat(op, ": cannot take the ", rop == ReduceOp::Max ? "maximum" : "minimum", " of an empty set: x has shape ",
                          shape_str(x.shape), " and dims ", dims_str(dims), " reduce over 0 elements"));
  Tensor values = new_tensor(Device::CPU, odt, os, op, false);
  Tensor indices;
  const bool want_idx = ext && dims.size() == 1;
  if (want_idx) indices = new_tensor(Device::CPU, DType::I64, os, op, false);
  reduce_cpu(rop, x.data(), x.dtype, x.shape.data(), nd, reduced, correction, values.data(), odt,
             want_idx ? indices.ptr<int64_t>() : nullptr);
  Napi::Object res = Napi::Object::New(info.Env());
  res.Set("values", TensorHandle::Wrap(info.Env(), values));
  res.Set("indices", want_idx ? Napi::Value(TensorHandle::Wrap(info.Env(), indices)) : info.Env().Null());
  return res;
}

// matmulBatched(a[..., M, K], b[..., K, N], transA, transB) -> (broadcast batch..., M, N) in a's dtype. transA:
// a is stored (..., K, M); transB: b is stored (..., N, K).
Napi::Value MatmulBatched(const Napi::CallbackInfo& info) {
  const char* op = "matmulBatched";
  const Tensor& a = TensorHandle::From(info[0], op, "a");
  const Tensor& b = TensorHandle::From(info[1], op, "b");
  const bool ta = arg_bool(info[2], op, "transA"), tb = arg_bool(info[3], op, "transB");
  require_float(a, op, "a");
  require_float(b, op, "b");
  require_ndim(a, 2, 16, op, "a");
  require_ndim(b, 2, 16, op, "b");
  const int64_t M = ta ? a.dim(-1) : a.dim(-2), K = ta ? a.dim(-2) : a.dim(-1);
  const int64_t Kb = tb ? b.dim(-1) : b.dim(-2), N = tb ? b.dim(-2) : b.dim(-1);
  if (K != Kb)
    fail("ERR_SHAPE", cat(op, ": inner dimensions differ: a", ta ? "ᵀ" : "", " is ", M, "x", K, " (shape ", shape_str(a.shape), "), b",
                          tb ? "ᵀ" : "", " is ", Kb, "x", N, " (shape ", shape_str(b.shape), ")"));
  // Batch dims broadcast as in torch.matmul.
  const int na = a.ndim() - 2, nb = b.ndim() - 2, nbatch = std::max(na, nb);
  Shape batch(static_cast<size_t>(nbatch), 1);
  std::vector<int64_t> sa(static_cast<size_t>(nbatch), 0), sb(static_cast<size_t>(nbatch), 0);  // batch strides in matrices
  int64_t stride_a = 1, stride_b = 1;
  for (int d = nbatch - 1; d >= 0; d--) {
    const int ia = d - (nbatch - na), ib = d - (nbatch - nb);
    const int64_t da = ia >= 0 ? a.shape[ia] : 1, db = ib >= 0 ? b.shape[ib] : 1;
    if (da != db && da != 1 && db != 1)
      fail("ERR_SHAPE", cat(op, ": batch dimensions of a ", shape_str(a.shape), " and b ", shape_str(b.shape), " do not broadcast (dimension ",
                            d - nbatch - 2, ": ", da, " vs ", db, ")"));
    batch[d] = da == 1 ? db : da;
    sa[d] = da == 1 ? 0 : stride_a;
    sb[d] = db == 1 ? 0 : stride_b;
    stride_a *= da;
    stride_b *= db;
  }
  require_cpu(op, {{"a", &a}, {"b", &b}});
  Shape os = batch;
  os.push_back(M);
  os.push_back(N);
  // K = 0 writes zeros without a product; otherwise every element is written by a GEMM.
  Tensor c = new_tensor(Device::CPU, a.dtype, os, op, K == 0);
  int64_t nbat = 1;
  for (int64_t d : batch) nbat *= d;
  if (K == 0 || M == 0 || N == 0 || nbat == 0) return TensorHandle::Wrap(info.Env(), c);
  const OpTable& ops = ops_for(Device::CPU, op);
  const size_t ea = dtype_size(a.dtype), eb = dtype_size(b.dtype), ec = dtype_size(c.dtype);
  auto gemm_at = [&](int64_t ma, int64_t mb, int64_t mc, int64_t rows) {
    GemmArgs g;
    g.M = rows;
    g.N = N;
    g.K = K;
    const char* pa = static_cast<const char*>(a.data()) + static_cast<size_t>(ma * M * K) * ea;
    const char* pb = static_cast<const char*>(b.data()) + static_cast<size_t>(mb * K * N) * eb;
    g.A = ta ? GemmMat{pa, a.dtype, 1, M} : GemmMat{pa, a.dtype, K, 1};
    g.B = tb ? GemmMat{pb, b.dtype, 1, K} : GemmMat{pb, b.dtype, N, 1};
    g.C = static_cast<char*>(c.data()) + static_cast<size_t>(mc * M * N) * ec;
    g.c_dt = c.dtype;
    g.ldc = N;
    ops.gemm(g);
  };
  if (stride_b == 1 && !ta) {
    // One b for every batch and a row-major a: the batches stack into one (batch * M) x K product.
    gemm_at(0, 0, 0, nbat * M);
  } else {
    auto slice = [&](int64_t i) {
      int64_t ma = 0, mb = 0, rem = i;
      for (int d = nbatch - 1; d >= 0; d--) {
        const int64_t cd = rem % batch[d];
        rem /= batch[d];
        ma += cd * sa[d];
        mb += cd * sb[d];
      }
      gemm_at(ma, mb, i, M);
    };
    // A product too small to share among threads (the GEMM keeps those on one) runs one slice per thread.
    if (2.0 * static_cast<double>(M) * N * K < 8e6) {
      parallel_for(nbat, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0; i < b1; i++) slice(i);
      });
    } else {
      for (int64_t i = 0; i < nbat; i++) slice(i);
    }
  }
  return TensorHandle::Wrap(info.Env(), c);
}

}  // namespace

void register_reduce_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("reduce", Napi::Function::New<guarded<Reduce>>(env, "reduce"));
  exports.Set("matmulBatched", Napi::Function::New<guarded<MatmulBatched>>(env, "matmulBatched"));
}

}  // namespace peft
