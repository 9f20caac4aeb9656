// Decoder-LM ops on the host: rotary position embedding and flash-style scaled dot-product attention, in
// the [batch, seq, heads, headDim] layout. lib/functional/attention.ts checks arguments first; the checks
// here keep a direct call from reaching a kernel with shapes it cannot take.
#include <cstdint>
#include <limits>
#include <vector>

#include "../cpu/attention.h"
#include "../cpu/elem.h"
#include "../cpu/rotary.h"
#include "../napi_util.h"
#include "../tensor_handle.h"
#include "check.h"
#include "ops.h"

namespace peft {
namespace {

// rotaryEmbedding(x [B, T, H, D], cos, sin [B or 1, T, D] f32, backward) -> y like x (backward: x holds dy)
Napi::Value RotaryEmbedding(const Napi::CallbackInfo& info) {
  const char* op = "rotaryEmbedding";
  const Tensor& x = TensorHandle::From(info[0], op, "x");
  const Tensor& c = TensorHandle::From(info[1], op, "cos");
  const Tensor& s = TensorHandle::From(info[2], op, "sin");
  bool backward = arg_bool(info[3], op, "backward");
  require_float(x, op, "x");
  require_ndim(x, 4, 4, op, "x");
  require_cpu(op, {{"x", &x}, {"cos", &c}, {"sin", &s}});
  for (const Tensor* t : {&c, &s})
    if (t->dtype != DType::F32 || t->ndim() != 3 || (t->dim(0) != x.dim(0) && t->dim(0) != 1) || t->dim(1) != x.dim(1) ||
        t->dim(2) != x.dim(3) || t->shape != c.shape)
      fail("ERR_SHAPE", cat(op, ": cos and sin must be f32 [", x.dim(0), " or 1, ", x.dim(1), ", ", x.dim(3), "], got ",
                            shape_str(c.shape), " and ", shape_str(s.shape)));
  if (x.dim(3) % 2) fail("ERR_SHAPE", cat(op, ": headDim must be even, got ", x.dim(3)));
  Tensor y = make_tensor(x.dtype, x.shape, Device::CPU, false);
  rotary_cpu(x.data(), x.dtype, c.ptr<float>(), s.ptr<float>(), c.dim(0), y.data(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), backward);
  return TensorHandle::Wrap(info.Env(), y);
}

struct AttentionCall {
  const Tensor *q, *k, *v;
  AttentionShape shape;
  std::vector<uint8_t> key_ok;
};

// (q, k, v, mask | null, causal, scale) at info[0..5], checked; the mask as one byte per key. With
// `key_length` (>= 0) only the first key_length positions of k/v are keys (k/v are longer buffers).
AttentionCall attention_args(const Napi::CallbackInfo& info, const char* op, int64_t key_length = -1) {
  AttentionCall c;
  c.q = &TensorHandle::From(info[0], op, "q");
  c.k = &TensorHandle::From(info[1], op, "k");
  c.v = &TensorHandle::From(info[2], op, "v");
  const Tensor* mask = TensorHandle::FromOptional(info[3], op, "attentionMask");
  bool causal = arg_bool(info[4], op, "causal");
  double scale = arg_number(info[5], op, "scale");
  const Tensor &q = *c.q, &k = *c.k, &v = *c.v;
  require_cpu(op, {{"q", &q}, {"k", &k}, {"v", &v}, {"attentionMask", mask}});
  for (auto [t, n] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    require_float(*t, op, n);
    require_ndim(*t, 4, 4, op, n);
    if (t->dtype != q.dtype) fail("ERR_DTYPE", cat(op, ": ", n, " is ", dtype_name(t->dtype), " but q is ", dtype_name(q.dtype)));
  }
  require_same_shape(k, "k", v, "v", op);
  if (k.dim(0) != q.dim(0) || k.dim(3) != q.dim(3) || (k.dim(2) == 0 ? q.dim(2) != 0 : q.dim(2) % k.dim(2) != 0))
    fail("ERR_SHAPE", cat(op, ": k ", shape_str(k.shape), " does not fit q ", shape_str(q.shape),
                          " (same batch and headDim, q's heads a multiple of k's)"));
  const int64_t S = key_length >= 0 ? key_length : k.dim(1);
  if (S > k.dim(1)) fail("ERR_SHAPE", cat(op, ": keyLength ", S, " exceeds the ", k.dim(1), " positions k and v hold"));
  c.shape = {q.dim(0), q.dim(1), S, q.dim(2), k.dim(2), q.dim(3), static_cast<float>(scale), causal, nullptr, k.dim(1)};
  if (mask) {
    if (mask->ndim() != 2 || mask->dim(0) != q.dim(0) || mask->dim(1) != S)
      fail("ERR_SHAPE", cat(op, ": attentionMask must be [", q.dim(0), ", ", S, "], got ", shape_str(mask->shape)));
    c.key_ok.resize(static_cast<size_t>(mask->numel()));
    for (int64_t i = 0; i < mask->numel(); i++) c.key_ok[i] = load_f32(mask->data(), mask->dtype, i) != 0;
    c.shape.key_ok = c.key_ok.data();
  }
  return c;
}

// Nothing to compute: an empty operand (the outputs stay zero).
bool empty(const AttentionShape& s) { return !s.B || !s.T || !s.S || !s.Hq || !s.D; }

// attention(q, k, v, mask, causal, scale, keyLength?) -> [out like q, lse f32 [B, Hq, T]]
Napi::Value Attention(const Napi::CallbackInfo& info) {
  const char* op = "attention";
  const int64_t key_length = info[6].IsUndefined() ? -1 : arg_int(info[6], op, "keyLength", 0, INT64_MAX);
  AttentionCall c = attention_args(info, op, key_length);
  const AttentionShape& s = c.shape;
  Tensor out = make_tensor(c.q->dtype, c.q->shape, Device::CPU, true);
  Tensor lse = make_tensor(DType::F32, {s.B, s.Hq, s.T}, Device::CPU, true);
  if (!empty(s)) attention_forward_cpu(s, c.q->data(), c.k->data(), c.v->data(), c.q->dtype, out.data(), lse.ptr<float>());
  else if (s.T && s.Hq)
    for (int64_t i = 0; i < lse.numel(); i++) lse.ptr<float>()[i] = std::numeric_limits<float>::infinity();
  return TensorHandle::WrapAll(info.Env(), {out, lse});
}

// attentionBackward(q, k, v, mask, causal, scale, out, lse, dout) -> [dq, dk, dv]
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  const char* op = "attentionBackward";
  AttentionCall c = attention_args(info, op);
  const Tensor& out = TensorHandle::From(info[6], op, "out");
  const Tensor& lse = TensorHandle::From(info[7], op, "lse");
  const Tensor& dout = TensorHandle::From(info[8], op, "dout");
  const AttentionShape& s = c.shape;
  require_cpu(op, {{"q", c.q}, {"out", &out}, {"lse", &lse}, {"dout", &dout}});
  require_same_shape(*c.q, "q", out, "out", op);
  require_same_shape(*c.q, "q", dout, "dout", op);
  if (out.dtype != c.q->dtype || dout.dtype != c.q->dtype)
    fail("ERR_DTYPE", cat(op, ": out and dout must be ", dtype_name(c.q->dtype), " like q"));
  if (lse.dtype != DType::F32 || lse.shape != Shape{s.B, s.Hq, s.T})
    fail("ERR_SHAPE", cat(op, ": lse must be f32 [", s.B, ", ", s.Hq, ", ", s.T, "], got ", shape_str(lse.shape)));
  Tensor dq = make_tensor(c.q->dtype, c.q->shape, Device::CPU, true);
  Tensor dk = make_tensor(c.k->dtype, c.k->shape, Device::CPU, true);
  Tensor dv = make_tensor(c.v->dtype, c.v->shape, Device::CPU, true);
  if (!empty(s))
    attention_backward_cpu(s, c.q->data(), c.k->data(), c.v->data(), c.q->dtype, out.data(), lse.ptr<float>(), dout.data(),
                           dq.data(), dk.data(), dv.data());
  return TensorHandle::WrapAll(info.Env(), {dq, dk, dv});
}

}  // namespace

void register_attention_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("rotaryEmbedding", Napi::Function::New<guarded<RotaryEmbedding>>(env, "rotaryEmbedding"));
  exports.Set("attention", Napi::Function::New<guarded<Attention>>(env, "attention"));
  exports.Set("attentionBackward", Napi::Function::New<guarded<AttentionBackward>>(env, "attentionBackward"));
}

}  // namespace peft
