#!/usr/bin/env bash
# Builds the addon for linux-arm64 with a cross compiler (Debian: g++-aarch64-linux-gnu) through node-gyp,
# in a scratch copy so build/ is untouched, and checks the result: an aarch64 shared object whose only
# unresolved symbols are Node-API's and the C library's. It proves the portable (non-x86) build compiles
# and links; running it needs an arm64 machine.
# Usage: scripts/cross-check.sh [--keep]   (NODE_PEFT_CROSS_CXX overrides the compiler)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cxx="${NODE_PEFT_CROSS_CXX:-aarch64-linux-gnu-g++}"
prefix="${cxx%g++}"
if ! command -v "$cxx" >/dev/null; then
  echo "cross-check: $cxx not found (Debian: apt-get install g++-aarch64-linux-gnu)" >&2
  exit 2
fi
work="$(mktemp -d)"
trap '[[ "${1:-}" == --keep ]] || rm -rf "$work"' EXIT
cp -r "$root/native" "$root/scripts" "$root/binding.gyp" "$root/package.json" "$work/"
ln -s "$root/node_modules" "$work/node_modules"
nodedir="$(cd "$root" && node -e "import('./scripts/native-tools.mjs').then((m) => console.log(m.nodeDir()))")"
gyp="$(cd "$root" && node -e "import('./scripts/native-tools.mjs').then((m) => console.log(m.nodeGypCli()))")"
echo "cross-check: building for arm64 with $cxx (log: $work/build.log)"
if ! (cd "$work" && CC="${prefix}gcc" CXX="$cxx" LINK="$cxx" AR="${prefix}ar" \
      node "$gyp" rebuild --arch=arm64 --nodedir="$nodedir" -j "${JOBS:-2}" >"$work/build.log" 2>&1); then
  grep -n "error" "$work/build.log" | head -40 >&2
  echo "cross-check: the arm64 build failed" >&2
  exit 1
fi
so="$work/build/Release/node_peft.node"
file "$so" | grep -q "ARM aarch64" || { echo "cross-check: $so is not an aarch64 object" >&2; exit 1; }
# Anything unresolved beyond Node-API, libc/libm and the weak C++ runtime hooks would fail at load time.
unresolved="$("${prefix}nm" -u -C "$so" | awk '$1 == "U" {print $2}' | grep -v -E '^(napi_|node_api_)' || true)"
bad="$(echo "$unresolved" | grep -v -E '@GLIBC_|^$' || true)"
if [[ -n "$bad" ]]; then
  echo "cross-check: unresolved symbols in the arm64 build:" >&2
  echo "$bad" >&2
  exit 1
fi
echo "cross-check: arm64 build ok ($(stat -c %s "$so") bytes, $(grep -c 'CXX(target)' "$work/build.log") files compiled)"

# The native smoke test (scripts/cross/smoke.cc) linked with the core and portable CPU sources, run under
# qemu-user when it is installed (Debian: qemu-user).
srcs=$(cd "$root" && node scripts/list-sources.mjs base --arch arm64 --lines | grep -E '/native/(core|cpu)/')
mkdir -p "$work/smoke"
echo "$srcs" "$root/scripts/cross/smoke.cc" | tr ' ' '\n' | grep . |
  xargs -P "${JOBS:-2}" -I{} sh -c 'o="$0/smoke/$(basename "{}" .cc).o"; "$1" -std=c++20 -O2 -I"$2/native" -c "{}" -o "$o"' \
    "$work" "$cxx" "$root" || { echo "cross-check: the smoke test did not compile" >&2; exit 1; }
"$cxx" -static -o "$work/smoke/smoke" "$work"/smoke/*.o -lpthread
if command -v qemu-aarch64 >/dev/null; then
  qemu-aarch64 "$work/smoke/smoke"
else
  echo "cross-check: qemu-aarch64 not found: the smoke test was built, not run"
fi
