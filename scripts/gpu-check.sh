#!/usr/bin/env bash
# Builds and runs the CUDA kernels' standalone test-and-bench programs (native/cuda/check: kernel_check for
# the training kernels, lora_check for fused LoRA, int8_check for LLM.int8 and IA3), no Node needed:
#   scripts/gpu-check.sh          on a GPU machine: nvcc build (CMake when present, else nvcc directly) for
#                                 sm_80/sm_90, every kernel checked against host references, then the bench
#                                 (the device's ceilings measured, each kernel's time and ratio to them)
#   scripts/gpu-check.sh --emu    the same program built by the host compiler against the emulator (checks
#                                 only; no GPU or CUDA toolkit needed)
# Sized to finish in under 5 minutes: the build is one nvcc pass per file, the checks use small shapes,
# the bench a few repetitions at 4096³.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--emu" ]; then
  out=build-gpu-check/emu
  mkdir -p "$out"
  flags=(-std=c++20 -O2 -fvisibility=hidden -pthread)
  objs=()
  for src in native/cuda/emu/emu_runtime.cc native/cuda/emu/emu_memory.cc native/cuda/emu/kernels_emu.cc; do
    objs+=("$out/$(basename "${src%.*}").o")
    nice -n 5 "${CXX:-g++}" "${flags[@]}" -c "$src" -o "${objs[-1]}"
  done
  status=0
  for prog in kernel_check:peft_cuda_check lora_check:peft_lora_check int8_check:peft_int8_check; do
    nice -n 5 "${CXX:-g++}" "${flags[@]}" -x c++ "native/cuda/check/${prog%%:*}.cu" -x none "${objs[@]}" -o "$out/${prog##*:}"
    "$out/${prog##*:}" || status=1
  done
  exit $status
fi

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$NVCC" ]; then
  echo "gpu-check: nvcc not found (set NVCC or put the CUDA toolkit's bin/ on PATH); --emu runs the checks on the CPU"
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "gpu-check: nvidia-smi not found"
start=$(date +%s)
if command -v cmake >/dev/null 2>&1; then
  cmake -S native/cuda/check -B build-gpu-check/cmake -DCMAKE_CUDA_COMPILER="$NVCC" >/dev/null
  cmake --build build-gpu-check/cmake -j "$(nproc)"
  bin=build-gpu-check/cmake
else
  bin=build-gpu-check/nvcc
  mkdir -p "$bin"
  gen=(-std=c++17 -O3 -lineinfo -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
  pids=()
  for prog in kernel_check:peft_cuda_check lora_check:peft_lora_check int8_check:peft_int8_check; do
    "$NVCC" "${gen[@]}" "native/cuda/check/${prog%%:*}.cu" native/cuda/*.cu -o "$bin/${prog##*:}" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
fi
echo "gpu-check: built in $(($(date +%s) - start)) s"
status=0
timeout 240 "$bin/peft_cuda_check" --bench || status=1
timeout 60 "$bin/peft_lora_check" --bench || status=1
timeout 120 "$bin/peft_int8_check" --bench || status=1
exit $status
