// The CUDA kernels and their host API compiled by the host compiler against the emulator, so the CPU
// build of the addon (which globs native/cuda/emu/*.cc) can run them with NODE_PEFT_CUDA=emu and tests
// cover them without a GPU. Everything lands in namespace peft::cuda_emu (see compat.cuh).
// Build with -std=c++20 and -fvisibility=hidden (the emulator's names must not leak out of the addon).
#if defined(__CUDACC__)
#error "kernels_emu.cc is for the host compiler; nvcc builds the .cu files directly"
#endif

#include "../compat.cuh"

#include "../convert.cu"
#include "../elementwise.cu"
#include "../gemm_wmma.cu"
#include "../gemm_simt.cu"
#include "../gemm_tc.cu"
#include "../activation.cu"
#include "../rows.cu"
#include "../losses.cu"
#include "../embedding.cu"
#include "../adamw.cu"
#include "../cuda_ops.cu"
#include "../train_ops.cu"
#include "../lora_fused.cu"
#include "../lora_ops.cu"
#include "../int8_matmul.cu"
#include "../ia3_scale.cu"
