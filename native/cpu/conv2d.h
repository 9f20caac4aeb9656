// 2-D convolution on the CPU (NCHW, PyTorch's semantics) and LoRA on it. Dense convolutions are GEMMs over
// column tiles of the unfolded input (im2col of a few hundred output pixels at a time, so the tile stays in
// L2 while the GEMM reads it in place); 1x1 stride-1 convolutions read x directly; depthwise convolutions
// (one input channel per group) run a direct kernel instead of a GEMM per channel.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/dtype.h"
#include "lora.h"

namespace peft {

struct ConvGeom {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input (N, C, H, W)
  int64_t OC = 0, KH = 1, KW = 1;      // weight (OC, C / G, KH, KW)
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, G = 1;
  int64_t OH = 0, OW = 0;

  int64_t cg() const { return C / G; }
  int64_t ocg() const { return OC / G; }
  int64_t kk() const { return cg() * KH * KW; }  // the GEMM's K: one group's unfolded patch
  int64_t P() const { return OH * OW; }
  bool pointwise() const { return KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  bool depthwise() const { return G > 1 && cg() == 1; }
};

// Fills OH, OW from the rest (PyTorch's formula); returns false when the output would be empty or negative.
bool conv_output_size(ConvGeom& g);

// y = conv(x, w) + b (b may be null), y (N, OC, OH, OW) in y_dt; every float dtype mix.
void conv2d_forward_cpu(const ConvGeom& g, const void* x, DType x_dt, const void* w, DType w_dt, const void* b, DType b_dt,
                        void* y, DType y_dt);

// The gradients of y = conv(x, w) + b from dy: dx written when non-null; dW and db accumulated when non-null.
void conv2d_backward_cpu(const ConvGeom& g, const void* dy, DType dy_dt, const void* x, DType x_dt, const void* w, DType w_dt,
                         void* dx, DType dx_dt, void* dW, DType dW_dt, void* db, DType db_dt);

// LoRA on a groups == 1 convolution (PEFT's Conv2d: A = conv(in, r, the base's kernel, stride and padding),
// B = 1x1 conv(r, out)); adapters' A viewed (r, C·KH·KW), B (OC, r). y = conv(x, W) + b + Σ s·B·conv(drop(x), A),
// the adapters riding on the base GEMM's output tile; T (N, R, OH, OW) f32 receives conv(drop(x), A) (unscaled).
void lora_conv2d_forward_cpu(const ConvGeom& g, const void* x, DType x_dt, const void* w, DType w_dt, const void* b, DType b_dt,
                             const std::vector<AdapterView>& ad, void* y, DType y_dt, float* T);

// Accumulates each adapter's dA, dB (when set), the base's dW, db (when non-null) and writes dx (when non-null).
void lora_conv2d_backward_cpu(const ConvGeom& g, const void* dy, DType dy_dt, const void* x, DType x_dt, const void* w, DType w_dt,
                              const std::vector<AdapterView>& ad, const float* T, void* dx, DType dx_dt, void* dW, DType dW_dt,
                              void* db, DType db_dt);

}  // namespace peft
