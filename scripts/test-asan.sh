#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer into build-asan/ (CPU kernels and the
# emulated CUDA device; the real nvcc build is left out) and runs the native-heavy test files against it.
# Node itself is not instrumented, so the ASan runtime is preloaded; leak checking is off because Node keeps
# process-lifetime allocations at exit. Any report fails the run.
#   scripts/test-asan.sh [test files...]
set -euo pipefail
cd "$(dirname "$0")/.."

npx cmake-js build --out build-asan --CDNODE_PEFT_SANITIZE=ON >/dev/null

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=(test/tensor.test.ts test/reliability.test.ts test/conversions.test.ts test/gemm.test.ts test/lora.test.ts
         test/nn.test.ts test/kernels.test.ts test/losses.test.ts test/adamw.test.ts test/peft-model.test.ts
         test/safetensors.test.ts test/checkpoint.test.ts test/threads.test.ts test/cuda.test.ts
         test/autograd.test.ts test/functional-autograd.test.ts test/native-functional.test.ts
         test/conv2d.test.ts test/lora-conv-embedding.test.ts test/ia3-kernels.test.ts
         test/int8-kernels.test.ts test/int8-module.test.ts
         test/attention.test.ts test/rope.test.ts test/rmsnorm.test.ts)
fi

asan_rt=$(${CXX:-g++} -print-file-name=libasan.so)
ubsan_rt=$(${CXX:-g++} -print-file-name=libubsan.so)
export LD_PRELOAD="$asan_rt $ubsan_rt"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export NODE_PEFT_BUILD=asan
npx vitest run "${files[@]}"
