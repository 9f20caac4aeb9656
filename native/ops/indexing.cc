// View copies and indexing: copyStrided (the one primitive behind transpose, permute, expand, narrow, cat,
// split and stack), indexSelect / indexAdd, gather / scatterAdd. Every bound and index is checked before
// anything is written. CPU kernels only: operands elsewhere get ERR_NOT_ON_DEVICE.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "../cpu/indexing.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "op_table.h"
#include "ops.h"

namespace peft {
namespace {

std::string ints_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); i++) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// An array of integers (strides may be negative), one per dimension of `shape`.
std::vector<int64_t> arg_strides(const Napi::Value& v, size_t ndim, const char* op, const char* name) {
  if (!v.IsArray()) fail_type(cat(op, ": ", name, " must be an array of integers"));
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() != ndim)
    fail("ERR_SHAPE", cat(op, ": ", name, " has ", a.Length(), " entries but shape has ", ndim, " dimensions"));
  std::vector<int64_t> s(ndim);
  for (uint32_t i = 0; i < ndim; i++) {
    const std::string nm = cat(name, "[", i, "]");
    s[i] = arg_int(a.Get(i), op, nm.c_str(), -kMaxSafeInt, kMaxSafeInt);
  }
  return s;
}

// The view (shape, strides, offset) must only reach elements [0, numel) of `t`.
void check_view(const Shape& shape, const std::vector<int64_t>& st, int64_t off, const Tensor& t, const char* op, const char* what) {
  for (int64_t d : shape)
    if (d == 0) return;  // reads or writes nothing
  __int128 lo = off, hi = off;
  for (size_t i = 0; i < shape.size(); i++) {
    const __int128 span = static_cast<__int128>(shape[i] - 1) * st[i];
    (span < 0 ? lo : hi) += span;
  }
  if (lo < 0 || hi >= t.numel())
    fail("ERR_SHAPE", cat(op, ": the ", what, " view (shape ", shape_str(shape), ", strides ", ints_str(st), ", offset ", off,
                          ") reaches elements ", static_cast<long long>(lo), " to ", static_cast<long long>(hi), " but ", what,
                          " has ", t.numel(), " elements (shape ", shape_str(t.shape), ")"));
}

// No two written positions may coincide: sorted by |stride|, each stride must step past everything the
// smaller ones reach (a sufficient condition; what it refuses is a broadcast or overlapping view).
void check_no_overlap(const Shape& shape, const std::vector<int64_t>& st, const char* op) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (|stride|, size) over dims that have more than one element
  for (size_t i = 0; i < shape.size(); i++) {
    if (shape[i] == 0) return;
    if (shape[i] > 1) dims.push_back({st[i] < 0 ? -st[i] : st[i], shape[i]});
  }
  std::sort(dims.begin(), dims.end());
  __int128 reach = 0;  // the largest offset the smaller strides reach
  for (auto& [s, n] : dims) {
    if (s <= reach)
      fail("ERR_SHAPE", cat(op, ": dst strides ", ints_str(st), " over shape ", shape_str(shape),
                            " make several elements land on one position"));
    reach += static_cast<__int128>(s) * (n - 1);
  }
}

std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> st(shape.size());
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; i--) st[i] = s, s *= shape[i];
  return st;
}

// copyStrided(src, shape, srcStrides, srcOffset, dst | null, dstStrides, dstOffset) -> dst, or a new
// contiguous tensor of `shape` in src's dtype
Napi::Value CopyStrided(const Napi::CallbackInfo& info) {
  const char* op = "copyStrided";
  const Tensor& src = TensorHandle::From(info[0], op, "src");
  const Shape shape = arg_shape(info[1], op, "shape");
  const std::vector<int64_t> sst = arg_strides(info[2], shape.size(), op, "srcStrides");
  const int64_t soff = arg_int(info[3], op, "srcOffset", 0, kMaxSafeInt);
  const bool has_dst = !info[4].IsNull() && !info[4].IsUndefined();
  const Tensor* dst = has_dst ? &TensorHandle::From(info[4], op, "dst") : nullptr;
  std::vector<int64_t> dst_st;
  int64_t doff = 0;
  if (dst) {
    dst_st = arg_strides(info[5], shape.size(), op, "dstStrides");
    doff = arg_int(info[6], op, "dstOffset", 0, kMaxSafeInt);
  }
  require_cpu(op, {{"src", &src}, {"dst", dst}});
  check_view(shape, sst, soff, src, op, "src");
  if (!dst) {
    Tensor out = new_tensor(Device::CPU, src.dtype, shape, op, false);  // written in full
    const std::vector<int64_t> ost = contiguous_strides(shape);
    copy_strided_cpu(src.data(), src.dtype, shape.data(), sst.data(), soff, static_cast<int>(shape.size()), out.data(), out.dtype,
                     ost.data(), 0);
    return TensorHandle::Wrap(info.Env(), out);
  }
  check_view(shape, dst_st, doff, *dst, op, "dst");
  check_no_overlap(shape, dst_st, op);
  begin_write(*dst, op, "dst");
  const int nd = static_cast<int>(shape.size());
  if (src.storage == dst->storage) {
    // Reading and writing one storage: through a copy, so no element is read after it was overwritten.
    Tensor tmp = new_tensor(Device::CPU, src.dtype, shape, op, false);
    const std::vector<int64_t> tst = contiguous_strides(shape);
    copy_strided_cpu(src.data(), src.dtype, shape.data(), sst.data(), soff, nd, tmp.data(), tmp.dtype, tst.data(), 0);
    copy_strided_cpu(tmp.data(), tmp.dtype, shape.data(), tst.data(), 0, nd, dst->data(), dst->dtype, dst_st.data(), doff);
  } else {
    copy_strided_cpu(src.data(), src.dtype, shape.data(), sst.data(), soff, nd, dst->data(), dst->dtype, dst_st.data(), doff);
  }
  return info[4];
}

// A dim argument in [-ndim, ndim) (a 0-d tensor takes 0 and -1), normalized.
int arg_dim(const Napi::Value& v, const Tensor& t, const char* op, const char* tname) {
  const int64_t d = arg_int(v, op, "dim", -kMaxSafeInt, kMaxSafeInt);
  const int64_t span = std::max(t.ndim(), 1);
  if (d < -span || d >= span)
    fail("ERR_SHAPE", cat(op, ": dim ", d, " is out of range for ", tname, " of shape ", shape_str(t.shape), " (expected ", -span,
                          " <= dim < ", span, ")"));
  return static_cast<int>(d < 0 ? d + span : d);
}

// Every index in [0, bound), or a RangeError naming the first that is not.
void check_indices(const Tensor& index, int64_t bound, int dim, const char* op, const char* what) {
  const int64_t bad = first_index_out_of_range(index.data(), index.dtype, index.numel(), bound);
  if (bad < 0) return;
  const int64_t v = index.dtype == DType::I64 ? index.ptr<int64_t>()[bad] : index.ptr<int32_t>()[bad];
  fail_range(cat(op, ": index value ", v, " (element ", bad, " of index) is out of range for dimension ", dim, " of ", what,
                 ", which has size ", bound, " (expected 0 <= index < ", bound, ")"));
}

// (outer, D, inner) of t around dim.
void split_at(const Tensor& t, int dim, int64_t& outer, int64_t& D, int64_t& inner) {
  outer = 1, inner = 1, D = t.ndim() ? t.shape[dim] : 1;
  for (int d = 0; d < t.ndim(); d++) {
    if (d < dim) outer *= t.shape[d];
    if (d > dim) inner *= t.shape[d];
  }
}

// The arguments every index op starts with, checked in order: x (dst for the in-place adds), dim, index
// (i32 or i64) and, for the adds, a src; the adds' dst and src must be floats.
struct IndexArgs {
  const Tensor& x;
  int dim;
  const Tensor& index;
  const Tensor* src;
};
IndexArgs index_args(const Napi::CallbackInfo& info, const char* op, bool adds) {
  const char* xname = adds ? "dst" : "x";
  const Tensor& x = TensorHandle::From(info[0], op, xname);
  const int dim = arg_dim(info[1], x, op, xname);
  const Tensor& index = TensorHandle::From(info[2], op, "index");
  const Tensor* src = adds ? &TensorHandle::From(info[3], op, "src") : nullptr;
  if (adds) {
    require_float(x, op, "dst");
    require_float(*src, op, "src");
  }
  require_index(index, op, "index");
  return {x, dim, index, src};
}

// What an in-place add reads: src, or a copy of it when src shares dst's storage (adding a tensor to itself
// must see the values from before the call).
const Tensor& unaliased_src(const Tensor& src, const Tensor& dst, Tensor& copy, const char* op) {
  if (src.storage != dst.storage) return src;
  copy = new_tensor(Device::CPU, src.dtype, src.shape, op, false);
  if (src.nbytes()) std::memcpy(copy.data(), src.data(), src.nbytes());
  return copy;
}

// indexSelect(x, dim, index[n]) -> x with dimension dim replaced by x.select(dim, index[i]) for each i
Napi::Value IndexSelect(const Napi::CallbackInfo& info) {
  const char* op = "indexSelect";
  const auto [x, dim, index, _] = index_args(info, op, false);
  require_ndim(index, 0, 1, op, "index");
  require_cpu(op, {{"x", &x}, {"index", &index}});
  const int64_t n = index.numel();
  if (x.ndim() == 0 && n != 1)  // as PyTorch: a 0-d x takes exactly one index and stays 0-d
    fail("ERR_SHAPE", cat(op, ": x is 0-d, so index must hold exactly one value, got ", n));
  int64_t outer, D, inner;
  split_at(x, dim, outer, D, inner);
  check_indices(index, D, dim, op, "x");
  Shape os = x.shape;
  if (!os.empty()) os[dim] = n;
  Tensor out = new_tensor(Device::CPU, x.dtype, os, op, false);
  index_select_cpu(x.data(), dtype_size(x.dtype), outer, D, inner, index.data(), index.dtype, n, out.data());
  return TensorHandle::Wrap(info.Env(), out);
}

// indexAdd(dst, dim, index[n], src): dst[..., index[i], ...] += src[..., i, ...], in place
Napi::Value IndexAdd(const Napi::CallbackInfo& info) {
  const char* op = "indexAdd";
  const auto [dst, dim, index, src_arg] = index_args(info, op, true);
  const Tensor& src = *src_arg;
  require_ndim(index, 0, 1, op, "index");
  Shape want = dst.shape;
  if (!want.empty()) want[dim] = index.numel();
  if (src.shape != want && !(dst.ndim() == 0 && src.numel() == index.numel() && src.ndim() <= 1))
    fail("ERR_SHAPE", cat(op, ": src has shape ", shape_str(src.shape), " but dst ", shape_str(dst.shape), " with ", index.numel(),
                          " indices along dim ", dim, " needs ", shape_str(want)));
  require_cpu(op, {{"dst", &dst}, {"index", &index}, {"src", &src}});
  int64_t outer, D, inner;
  split_at(dst, dim, outer, D, inner);
  check_indices(index, D, dim, op, "dst");
  Tensor copy;
  const Tensor& s = unaliased_src(src, dst, copy, op);
  begin_write(dst, op, "dst");
  index_add_cpu(dst.data(), dst.dtype, outer, D, inner, index.data(), index.dtype, index.numel(), s.data(), s.dtype);
  return info.Env().Undefined();
}

// Index shape against x's (dst's) and src's for gather / scatterAdd: the same rank, every dimension no larger
// than x's except along dim (and, for scatterAdd, no larger than src's anywhere).
void check_index_shape(const Tensor& index, const Tensor& x, const char* xname, int dim, bool all_dims, const char* op) {
  if (index.ndim() != x.ndim())
    fail("ERR_SHAPE", cat(op, ": index has ", index.ndim(), " dimensions (shape ", shape_str(index.shape), ") but ", xname, " has ",
                          x.ndim(), " (shape ", shape_str(x.shape), ")"));
  for (int d = 0; d < x.ndim(); d++)
    if ((all_dims || d != dim) && index.shape[d] > x.shape[d])
      fail("ERR_SHAPE", cat(op, ": index of shape ", shape_str(index.shape), " is larger than ", xname, " of shape ",
                            shape_str(x.shape), " in dimension ", d, all_dims ? "" : cat(" (only dim ", dim, " may be)")));
}

// gather(x, dim, index) -> out shaped like index: out[p] = x[p with coordinate dim = index[p]]
Napi::Value Gather(const Napi::CallbackInfo& info) {
  const char* op = "gather";
  const auto [x, dim, index, _] = index_args(info, op, false);
  check_index_shape(index, x, "x", dim, false, op);
  require_cpu(op, {{"x", &x}, {"index", &index}});
  check_indices(index, x.ndim() ? x.shape[dim] : 1, dim, op, "x");
  Tensor out = new_tensor(Device::CPU, x.dtype, index.shape, op, false);
  gather_cpu(x.data(), dtype_size(x.dtype), x.shape.data(), x.ndim(), dim, index.data(), index.dtype, index.shape.data(), out.data());
  return TensorHandle::Wrap(info.Env(), out);
}

// scatterAdd(dst, dim, index, src): dst[p with coordinate dim = index[p]] += src[p] for p over index, in place
Napi::Value ScatterAdd(const Napi::CallbackInfo& info) {
  const char* op = "scatterAdd";
  const auto [dst, dim, index, src_arg] = index_args(info, op, true);
  const Tensor& src = *src_arg;
  check_index_shape(index, dst, "dst", dim, false, op);
  check_index_shape(index, src, "src", dim, true, op);
  require_cpu(op, {{"dst", &dst}, {"index", &index}, {"src", &src}});
  check_indices(index, dst.ndim() ? dst.shape[dim] : 1, dim, op, "dst");
  Tensor copy;
  const Tensor& s = unaliased_src(src, dst, copy, op);
  begin_write(dst, op, "dst");
  scatter_add_cpu(dst.data(), dst.dtype, dst.shape.data(), dst.ndim(), dim, index.data(), index.dtype, index.shape.data(), s.data(),
                  s.dtype, s.shape.data());
  return info.Env().Undefined();
}

}  // namespace

void register_indexing_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("copyStrided", Napi::Function::New<guarded<CopyStrided>>(env, "copyStrided"));
  exports.Set("indexSelect", Napi::Function::New<guarded<IndexSelect>>(env, "indexSelect"));
  exports.Set("indexAdd", Napi::Function::New<guarded<IndexAdd>>(env, "indexAdd"));
  exports.Set("gather", Napi::Function::New<guarded<Gather>>(env, "gather"));
  exports.Set("scatterAdd", Napi::Function::New<guarded<ScatterAdd>>(env, "scatterAdd"));
}

}  // namespace peft
