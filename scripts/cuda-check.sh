#!/usr/bin/env bash
# Compiles every native/cuda/*.cu with nvcc for sm_80 and sm_90 (plus compute_90 PTX for newer GPUs),
# prints ptxas's registers, shared memory, stack and spills per kernel and architecture, and fails on a
# compile error or any register spill. Without nvcc it says so and succeeds (CPU-only machines).
#   --from-build LOG   read the report from the addon's own CUDA build (build-cmake/ptxas.log, written by
#                      scripts/build-native.mjs) instead of compiling again; compiles when LOG lacks a file.
set -uo pipefail
cd "$(dirname "$0")/.."
from_build=
if [ "${1:-}" = "--from-build" ]; then from_build=${2:?"--from-build needs the log file"}; fi

NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "cuda-check: nvcc not found; skipping the CUDA compile check"
  exit 0
fi
FILT=$(command -v cu++filt || command -v c++filt || echo cat)
GENCODE=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

srcs=(native/cuda/*.cu)
# The build's report, split into one log per file at its "Building CUDA object .../<file>.cu.o" line.
reused=0
if [ -n "$from_build" ] && [ -s "$from_build" ]; then
  reused=1
  for src in "${srcs[@]}"; do
    name=$(basename "$src")
    awk -v obj="/$name.o" 'index($0, "Building CUDA object") { on = (substr($0, length($0) - length(obj) + 1) == obj); next } on' \
      "$from_build" >"$tmp/$name.log"
    grep -q "Building CUDA object .*/$name.o\$" "$from_build" || { reused=0; break; }
    echo 0 >"$tmp/$name.rc"
  done
  if [ $reused = 1 ]; then echo "cuda-check: ptxas's report from the addon's build ($from_build)"; else echo "cuda-check: $from_build lacks a file; compiling"; fi
fi

# Two compiles at a time (the build machines have two cores), each into its own log; then one report.
pids=()
for src in "${srcs[@]}"; do
  [ $reused = 1 ] && break
  name=$(basename "$src")
  ( nice -n 5 "$NVCC" -std=c++17 "${GENCODE[@]}" -Xptxas -v -c "$src" -o "$tmp/$name.o" >"$tmp/$name.log" 2>&1
    echo $? >"$tmp/$name.rc" ) &
  pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

status=0
printf '%-16s %-48s %-6s %5s %7s %6s %7s %7s\n' file kernel arch regs smem stack spill_st spill_ld
for src in "${srcs[@]}"; do
  name=$(basename "$src")
  log="$tmp/$name.log"
  if [ "$(cat "$tmp/$name.rc")" != 0 ]; then
    echo "cuda-check: $src failed to compile:"
    cat "$log"
    status=1
    continue
  fi
  grep -i 'warning' "$log" | sed "s|^|cuda-check: $name: |" || true
  # ptxas prints, per kernel and arch: "Compiling entry function '<mangled>' for 'sm_XX'", then
  # "N bytes stack frame, S bytes spill stores, L bytes spill loads", then "Used R registers, ... B bytes smem".
  rows=$(awk -v file="$name" '
    /Compiling entry function/ { match($0, /function .[^'"'"']*/); fn = substr($0, RSTART + 10, RLENGTH - 10);
                                 match($0, /for .sm_[0-9a-z]+/); arch = substr($0, RSTART + 5, RLENGTH - 5);
                                 stack = 0; st = 0; ld = 0 }
    /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
    /Used [0-9]+ registers/ { match($0, /Used [0-9]+/); regs = substr($0, RSTART + 5, RLENGTH - 5);
                              smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11);
                              print file "\t" fn "\t" arch "\t" regs "\t" smem "\t" stack "\t" st "\t" ld }' "$log")
  while IFS=$'\t' read -r f fn arch regs smem stack st ld; do
    [ -z "$fn" ] && continue
    # Demangle, drop the namespaces and the parameter list: "gemm_nt_kernel<__half>".
    short=$(echo "$fn" | "$FILT" | sed -e 's/peft::cuda_gpu::(anonymous namespace):://g' -e 's/(.*$//' -e 's/^void //')
    printf '%-16s %-48s %-6s %5s %7s %6s %7s %7s\n' "$f" "$short" "$arch" "$regs" "$smem" "$stack" "$st" "$ld"
    if [ "$st" != 0 ] || [ "$ld" != 0 ]; then
      echo "cuda-check: register spill in $short ($arch): $st bytes stored, $ld bytes loaded"
      status=1
    fi
  done <<<"$rows"
done
[ $status -eq 0 ] && echo "cuda-check: ok (no spills)"
exit $status
