// Registration of each op family's JS bindings (one file per family under ops/).
#pragma once
#include <napi.h>

namespace peft {

void register_factories(Napi::Env env, Napi::Object exports);
void register_linear_ops(Napi::Env env, Napi::Object exports);
void register_backend_info(Napi::Env env, Napi::Object exports);
void register_gemm_test_hook(Napi::Env env, Napi::Object exports);  // test-only
void register_bench_hooks(Napi::Env env, Napi::Object exports);     // bench-only
void register_nn_ops(Napi::Env env, Napi::Object exports);
void register_loss_ops(Napi::Env env, Napi::Object exports);
void register_optim_ops(Napi::Env env, Napi::Object exports);
void register_lora_ops(Napi::Env env, Napi::Object exports);
void register_conv_ops(Napi::Env env, Napi::Object exports);
void register_ia3_ops(Napi::Env env, Napi::Object exports);
void register_linalg_ops(Napi::Env env, Napi::Object exports);
void register_elementwise_ops(Napi::Env env, Napi::Object exports);
void register_reduce_ops(Napi::Env env, Napi::Object exports);
void register_indexing_ops(Napi::Env env, Napi::Object exports);
void register_int8_ops(Napi::Env env, Napi::Object exports);
void register_quant4_ops(Napi::Env env, Napi::Object exports);
void register_attention_ops(Napi::Env env, Napi::Object exports);
void register_rms_norm_ops(Napi::Env env, Napi::Object exports);
void register_share_ops(Napi::Env env, Napi::Object exports);  // tensors handed between worker threads

}  // namespace peft
