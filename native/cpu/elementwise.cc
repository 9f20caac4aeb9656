// Broadcasting elementwise ops: the plan (broadcast strides, merged dimensions), the block engine that
// stages inputs as f32 and writes the output once, the baseline build of elementwise_impl.h and the
// run-time choice between the ISA builds.
#include "elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "elementwise_impl.h"
#include "isa.h"
#include "parallel.h"
#include "vec_kernels.h"

namespace peft {
namespace {

void sqrt_block(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = std::sqrt(x[i]);
}
void widen_f16(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32(src[i]);
}
void narrow_f16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

struct OpInfo {
  const char* name;
  int arity, scalars;
};
constexpr OpInfo kOps[] = {
    {"neg", 1, 0},     {"exp", 1, 0},      {"log", 1, 0},        {"sqrt", 1, 0},    {"rsqrt", 1, 0},
    {"abs", 1, 0},     {"sign", 1, 0},     {"reciprocal", 1, 0}, {"square", 1, 0},  {"tanh", 1, 0},
    {"sigmoid", 1, 0}, {"relu", 1, 0},     {"silu", 1, 0},       {"gelu", 1, 0},    {"gelu_tanh", 1, 0},
    {"sin", 1, 0},     {"cos", 1, 0},      {"clamp", 1, 2},      {"pow_scalar", 1, 1}, {"affine", 1, 2},
    {"step", 1, 0},    {"add", 2, 0},      {"sub", 2, 0},        {"mul", 2, 0},     {"div", 2, 0},
    {"pow", 2, 0},     {"maximum", 2, 0},  {"minimum", 2, 0},    {"eq", 2, 0},      {"ne", 2, 0},
    {"gt", 2, 0},      {"ge", 2, 0},       {"lt", 2, 0},         {"le", 2, 0},      {"axpby", 2, 2},
    {"where", 3, 0},
};
static_assert(sizeof(kOps) / sizeof(kOps[0]) == static_cast<size_t>(EwOp::Count_), "one entry per EwOp");

// Elements per staged block, and the least work worth handing to another thread.
constexpr int64_t kBlock = 1024;
constexpr int64_t kGrain = int64_t(1) << 15;

// ---- the plan: output dims (size-1 dims dropped, mergeable neighbours merged) and per-input strides ----

// How an input's elements line up with the output's: element i of the output reads input element
//   Full: i;  Scalar: 0;  Periodic: i % period (the input is the output's trailing dims);
//   Repeat: i / period (the input is the output's leading dims);  General: per-dim strides.
enum class Kind { Full, Scalar, Periodic, Repeat, General };

struct Src {
  const void* p = nullptr;
  DType dt = DType::F32;
  int64_t st[kEwMaxDims] = {};
  Kind kind = Kind::General;
  int64_t period = 1;
};

struct Plan {
  int nd = 0;
  int64_t dims[kEwMaxDims] = {};
  int64_t numel = 1;
  Src src[3];
  int nsrc = 0;
};

Plan make_plan(const EwInput* in, int nin, const int64_t* out_shape, int out_ndim) {
  Plan P;
  P.nsrc = nin;
  for (int d = 0; d < out_ndim; d++) P.numel *= out_shape[d];
  // Contiguous strides of each input, aligned to the output's trailing dims; 0 where it broadcasts.
  int64_t st[3][kEwMaxDims] = {};
  for (int s = 0; s < nin; s++) {
    int64_t stride = 1;
    for (int d = out_ndim - 1; d >= 0; d--) {
      int id = d - (out_ndim - in[s].ndim);
      if (id < 0) continue;
      int64_t size = in[s].shape[id];
      st[s][d] = size == 1 ? 0 : stride;
      stride *= size;
    }
    P.src[s].p = in[s].p;
    P.src[s].dt = in[s].dt;
  }
  // Drop size-1 dims, then merge a dim into its inner neighbour when every input steps through both as one.
  for (int d = 0; d < out_ndim; d++) {
    if (out_shape[d] == 1) continue;
    if (P.nd > 0) {
      bool merge = true;
      for (int s = 0; s < nin; s++)
        if (P.src[s].st[P.nd - 1] != st[s][d] * out_shape[d]) merge = false;
      if (merge) {
        P.dims[P.nd - 1] *= out_shape[d];
        for (int s = 0; s < nin; s++) P.src[s].st[P.nd - 1] = st[s][d];
        continue;
      }
    }
    P.dims[P.nd] = out_shape[d];
    for (int s = 0; s < nin; s++) P.src[s].st[P.nd] = st[s][d];
    P.nd++;
  }
  for (int s = 0; s < nin; s++) {
    Src& in = P.src[s];
    bool full = true, scalar = true;
    int64_t c = 1;
    for (int d = P.nd - 1; d >= 0; d--) {
      if (in.st[d] != c) full = false;
      if (in.st[d] != 0) scalar = false;
      c *= P.dims[d];
    }
    in.kind = scalar ? Kind::Scalar : full ? Kind::Full : Kind::General;
    if (in.kind != Kind::General) continue;
    // Periodic: zero strides on dims [0, k), contiguous strides on [k, nd).
    int k = P.nd;
    int64_t period = 1;
    while (k > 0 && in.st[k - 1] == period) period *= P.dims[--k];
    bool zeros = true;
    for (int d = 0; d < k; d++) zeros = zeros && in.st[d] == 0;
    if (zeros && k > 0 && k < P.nd) {
      in.kind = Kind::Periodic, in.period = period;
      continue;
    }
    // Repeat: zero strides on dims [k, nd), contiguous strides (as if those dims were absent) on [0, k).
    k = P.nd;
    int64_t inner = 1;
    while (k > 0 && in.st[k - 1] == 0) inner *= P.dims[--k];
    bool contig = k > 0 && k < P.nd;
    int64_t cs = 1;
    for (int d = k - 1; d >= 0 && contig; d--) contig = in.st[d] == cs, cs *= P.dims[d];
    if (contig) in.kind = Kind::Repeat, in.period = inner;
  }
  return P;
}

// ---- staging: elements of one input as T (float for the float ops; double or int64 for comparisons) ----

inline float half_to_f32(uint16_t h, DType dt) { return dt == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h); }

template <typename T, typename S>
void load_typed(const S* p, int64_t stride, int64_t n, T* dst) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; i++) dst[i] = static_cast<T>(p[i]);
  } else if (stride == 0) {
    T v = static_cast<T>(p[0]);
    for (int64_t i = 0; i < n; i++) dst[i] = v;
  } else {
    for (int64_t i = 0; i < n; i++) dst[i] = static_cast<T>(p[i * stride]);
  }
}

// n elements of input `base` (dtype dt) from element idx with the given stride, into dst as T.
template <typename T>
void load_run(const void* base, DType dt, int64_t idx, int64_t stride, int64_t n, T* dst, const EwKernels& k) {
  switch (dt) {
    case DType::F32: load_typed(static_cast<const float*>(base) + idx, stride, n, dst); break;
    case DType::F16:
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + idx;
      if constexpr (std::is_same_v<T, float>) {
        if (stride == 1) {
          k.widen(p, dt, dst, n);
          break;
        }
      }
      if (stride == 0) {
        T v = static_cast<T>(half_to_f32(p[0], dt));
        for (int64_t i = 0; i < n; i++) dst[i] = v;
      } else {
        for (int64_t i = 0; i < n; i++) dst[i] = static_cast<T>(half_to_f32(p[i * stride], dt));
      }
      break;
    }
    case DType::I8: load_typed(static_cast<const int8_t*>(base) + idx, stride, n, dst); break;
    case DType::U8: load_typed(static_cast<const uint8_t*>(base) + idx, stride, n, dst); break;
    case DType::I32: load_typed(static_cast<const int32_t*>(base) + idx, stride, n, dst); break;
    case DType::I64: load_typed(static_cast<const int64_t*>(base) + idx, stride, n, dst); break;
  }
}

// dst[j] = conv(p[(q·Q + r + j) / Q]) for j < len: each source element repeated Q times, from phase r.
template <typename T, typename S, typename Conv>
void repeat_typed(const S* p, int64_t q, int64_t r, int64_t Q, int64_t len, T* dst, Conv conv) {
  for (int64_t done = 0; done < len; q++, r = 0) {
    const int64_t run = std::min(Q - r, len - done);
    const T v = static_cast<T>(conv(p[q]));
    for (int64_t j = 0; j < run; j++) dst[done + j] = v;
    done += run;
  }
}

// Elements [off, off + len) of the broadcast input as T: the input itself when it is f32 laid out like the
// output, else staged into buf. `filled` remembers that a scalar input's buf already holds its value.
template <typename T>
const T* stage(const Plan& P, const Src& s, int64_t off, int64_t len, T* buf, bool& filled, const EwKernels& k) {
  if (s.kind == Kind::Full) {
    if constexpr (std::is_same_v<T, float>)
      if (s.dt == DType::F32) return static_cast<const float*>(s.p) + off;
    load_run<T>(s.p, s.dt, off, 1, len, buf, k);
    return buf;
  }
  if (s.kind == Kind::Scalar) {
    if (!filled) load_run<T>(s.p, s.dt, 0, 0, kBlock, buf, k), filled = true;
    return buf;
  }
  if (s.kind == Kind::Periodic) {
    int64_t pos = off % s.period;
    if constexpr (std::is_same_v<T, float>)  // a slice that does not wrap is read in place
      if (s.dt == DType::F32 && pos + len <= s.period) return static_cast<const float*>(s.p) + pos;
    // Every block starts at phase 0 when the period divides the block: the buffer is filled once.
    const bool fixed = kBlock % s.period == 0;
    if (fixed && filled) return buf;
    const int64_t n = fixed ? kBlock : len;
    for (int64_t done = 0; done < n;) {
      const int64_t run = std::min(s.period - pos, n - done);
      load_run<T>(s.p, s.dt, pos, 1, run, buf + done, k);
      done += run;
      pos = 0;
    }
    filled = fixed;
    return buf;
  }
  if (s.kind == Kind::Repeat) {
    const int64_t q = off / s.period, r = off % s.period;
    switch (s.dt) {
      case DType::F32: repeat_typed(static_cast<const float*>(s.p), q, r, s.period, len, buf, [](float v) { return v; }); break;
      case DType::F16: repeat_typed(static_cast<const uint16_t*>(s.p), q, r, s.period, len, buf, f16_to_f32); break;
      case DType::BF16: repeat_typed(static_cast<const uint16_t*>(s.p), q, r, s.period, len, buf, bf16_to_f32); break;
      case DType::I8: repeat_typed(static_cast<const int8_t*>(s.p), q, r, s.period, len, buf, [](int8_t v) { return v; }); break;
      case DType::U8: repeat_typed(static_cast<const uint8_t*>(s.p), q, r, s.period, len, buf, [](uint8_t v) { return v; }); break;
      case DType::I32: repeat_typed(static_cast<const int32_t*>(s.p), q, r, s.period, len, buf, [](int32_t v) { return v; }); break;
      case DType::I64: repeat_typed(static_cast<const int64_t*>(s.p), q, r, s.period, len, buf, [](int64_t v) { return v; }); break;
    }
    return buf;
  }
  // General: walk the output index space in runs along the innermost dim.
  const int nd = P.nd;
  int64_t idx[kEwMaxDims];
  int64_t rem = off, pos = 0;
  for (int d = nd - 1; d >= 0; d--) {
    idx[d] = rem % P.dims[d];
    rem /= P.dims[d];
    pos += idx[d] * s.st[d];
  }
  const int64_t inner = P.dims[nd - 1], ist = s.st[nd - 1];
  int64_t done = 0;
  while (done < len) {
    int64_t run = std::min(inner - idx[nd - 1], len - done);
    load_run<T>(s.p, s.dt, pos, ist, run, buf + done, k);
    done += run;
    pos += run * ist;
    idx[nd - 1] += run;
    for (int d = nd - 1; d > 0 && idx[d] == P.dims[d]; d--) {
      pos -= P.dims[d] * s.st[d];
      idx[d] = 0;
      idx[d - 1]++;
      pos += s.st[d - 1];
    }
  }
  return buf;
}

template <typename D>
void store_ints(const float* y, D* dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = static_cast<D>(y[i]);
}

// y (values already in range: any float, or 0/1 for comparisons) into out[off, off + n) of dtype odt.
void store_out(const float* y, void* out, DType odt, int64_t off, int64_t n, const EwKernels& k) {
  switch (odt) {
    case DType::F32: break;  // written in place
    case DType::F16:
    case DType::BF16: k.narrow(y, static_cast<uint16_t*>(out) + off, odt, n); break;
    case DType::I8: store_ints(y, static_cast<int8_t*>(out) + off, n); break;
    case DType::U8: store_ints(y, static_cast<uint8_t*>(out) + off, n); break;
    case DType::I32: store_ints(y, static_cast<int32_t*>(out) + off, n); break;
    case DType::I64: store_ints(y, static_cast<int64_t*>(out) + off, n); break;
  }
}

// Runs compute(inputs, y, n) over the output in blocks spread across the pool. Block boundaries depend
// on the element index only, so results never depend on the thread count.
template <typename T, typename Compute>
void run_plan(const Plan& P, void* out, DType odt, const EwKernels& k, Compute&& compute) {
  const int64_t nblocks = (P.numel + kBlock - 1) / kBlock;
  dynamic_for(nblocks, std::max<int64_t>(1, kGrain / kBlock), [&](int64_t b0, int64_t b1) {
    alignas(64) T buf[3][kBlock];
    alignas(64) float ybuf[kBlock];
    bool filled[3] = {false, false, false};
    for (int64_t blk = b0; blk < b1; blk++) {
      const int64_t off = blk * kBlock, len = std::min(kBlock, P.numel - off);
      const T* in[3] = {nullptr, nullptr, nullptr};
      for (int s = 0; s < P.nsrc; s++) in[s] = stage<T>(P, P.src[s], off, len, buf[s], filled[s], k);
      float* y = odt == DType::F32 ? static_cast<float*>(out) + off : ybuf;
      compute(in, y, len);
      store_out(y, out, odt, off, len, k);
    }
  });
}

template <typename T>
void compare_loop(EwOp op, const T* a, const T* b, float* y, int64_t n) {
  switch (op) {
    case EwOp::Eq: for (int64_t i = 0; i < n; i++) y[i] = a[i] == b[i] ? 1.0f : 0.0f; break;
    case EwOp::Ne: for (int64_t i = 0; i < n; i++) y[i] = a[i] != b[i] ? 1.0f : 0.0f; break;
    case EwOp::Gt: for (int64_t i = 0; i < n; i++) y[i] = a[i] > b[i] ? 1.0f : 0.0f; break;
    case EwOp::Ge: for (int64_t i = 0; i < n; i++) y[i] = a[i] >= b[i] ? 1.0f : 0.0f; break;
    case EwOp::Lt: for (int64_t i = 0; i < n; i++) y[i] = a[i] < b[i] ? 1.0f : 0.0f; break;
    case EwOp::Le: for (int64_t i = 0; i < n; i++) y[i] = a[i] <= b[i] ? 1.0f : 0.0f; break;
    default: break;
  }
}

bool act_of(EwOp op, Act& a) {
  switch (op) {
    case EwOp::Relu: a = Act::Relu; return true;
    case EwOp::Silu: a = Act::Silu; return true;
    case EwOp::Gelu: a = Act::Gelu; return true;
    case EwOp::GeluTanh: a = Act::GeluTanh; return true;
    default: return false;
  }
}

}  // namespace

bool ew_op_from_name(const std::string& name, EwOp& op) {
  for (int i = 0; i < static_cast<int>(EwOp::Count_); i++)
    if (name == kOps[i].name) {
      op = static_cast<EwOp>(i);
      return true;
    }
  return false;
}

const char* ew_op_name(EwOp op) { return kOps[static_cast<int>(op)].name; }
int ew_arity(EwOp op) { return kOps[static_cast<int>(op)].arity; }
int ew_scalar_count(EwOp op) { return kOps[static_cast<int>(op)].scalars; }
bool ew_is_compare(EwOp op) { return op >= EwOp::Eq && op <= EwOp::Le; }

std::string ew_op_names() {
  std::string s;
  for (const OpInfo& o : kOps) s += (s.empty() ? "" : ", ") + std::string(o.name);
  return s;
}

const EwKernels& ew_kernels() {
  switch (active_isa()) {
#if PEFT_X86
    case Isa::Avx512: return ew_kernels_avx512();
    case Isa::Avx2: return ew_kernels_avx2();
#endif
    default: return kEwKernels;
  }
}

void elementwise_cpu(EwOp op, const EwInput* in, int nin, const int64_t* out_shape, int out_ndim, void* out, DType odt,
                     const double* scalars) {
  Plan P = make_plan(in, nin, out_shape, out_ndim);
  if (P.numel == 0) return;
  const EwKernels& k = ew_kernels();
  float s[2] = {0.0f, 0.0f};
  for (int i = 0; i < ew_scalar_count(op); i++) s[i] = static_cast<float>(scalars[i]);

  if (ew_is_compare(op)) {
    const bool fa = dtype_is_float(in[0].dt), fb = dtype_is_float(in[1].dt);
    if (fa && fb) {
      run_plan<float>(P, out, odt, k, [&](const float* const* x, float* y, int64_t n) { k.binary(op, x[0], x[1], y, n, s); });
    } else if (!fa && !fb) {  // integers compare exactly
      run_plan<int64_t>(P, out, odt, k, [&](const int64_t* const* x, float* y, int64_t n) { compare_loop(op, x[0], x[1], y, n); });
    } else {
      run_plan<double>(P, out, odt, k, [&](const double* const* x, float* y, int64_t n) { compare_loop(op, x[0], x[1], y, n); });
    }
    return;
  }
  if (op == EwOp::Where) {
    run_plan<float>(P, out, odt, k, [&](const float* const* x, float* y, int64_t n) { k.where(x[0], x[1], x[2], y, n); });
    return;
  }
  if (ew_arity(op) == 2) {
    run_plan<float>(P, out, odt, k, [&](const float* const* x, float* y, int64_t n) { k.binary(op, x[0], x[1], y, n, s); });
    return;
  }
  Act act;
  if (act_of(op, act)) {
    const VecKernels& vk = vec_kernels();
    run_plan<float>(P, out, odt, k, [&](const float* const* x, float* y, int64_t n) { vk.act_forward(act, x[0], y, n); });
    return;
  }
  if (op == EwOp::Clamp) {  // a NaN bound is no bound
    if (std::isnan(scalars[0])) s[0] = -INFINITY;
    if (std::isnan(scalars[1])) s[1] = INFINITY;
  }
  if (op == EwOp::PowScalar) {  // the exponents PyTorch also special-cases
    const double p = scalars[0];
    if (p == 2) op = EwOp::Square;
    else if (p == 0.5) op = EwOp::Sqrt;
    else if (p == -0.5) op = EwOp::Rsqrt;
    else if (p == -1) op = EwOp::Reciprocal;
  }
  run_plan<float>(P, out, odt, k, [&](const float* const* x, float* y, int64_t n) { k.unary(op, x[0], y, n, s); });
}

}  // namespace peft
