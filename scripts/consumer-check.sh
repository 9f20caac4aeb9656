#!/usr/bin/env bash
# Installs the packed tarball into a fresh project, as a user would, and checks it there: the prebuilt
# binary is used with nothing compiled, ESM import and require() load one copy of the classes, a strict
# TypeScript project (ESM and CommonJS files) type-checks against the shipped types, the CLI runs through
# npx with its documented exit codes; then a prebuilt binary that fails to load makes `npm rebuild`
# compile the addon, which leaves only the .node file behind. Prints the time of each install.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "consumer-check: $*"; exit 1; }

tgz=$(npm pack --silent --pack-destination "$work" | tail -1)
tgz="$work/$tgz"
tar -tzf "$tgz" >"$work/files"
grep -q '^package/prebuilds/linux-x64/node-peft.node$' "$work/files" || fail "the tarball has no linux-x64 prebuilt binary"
grep -q '^package/LICENSE$' "$work/files" || fail "the tarball has no LICENSE"
if grep -qE '^package/(build|build-cmake|build-asan|build-emu)/' "$work/files"; then fail "the tarball ships build folders"; fi

app="$work/app"
mkdir -p "$app"
cd "$app"
# npm 11 runs a dependency's install script only when the project allows it.
cat >package.json <<JSON
{ "name": "consumer", "version": "1.0.0", "private": true, "type": "module",
  "allowScripts": { "node-peft": true, "file:$tgz": true } }
JSON
start=$(date +%s)
npm install --no-audit --no-fund --foreground-scripts "$tgz" >install.log 2>&1 || { cat install.log; fail "npm install failed"; }
echo "consumer-check: npm install of the tarball (prebuilt binary): $(( $(date +%s) - start )) s"
grep -q "using the prebuilt binary prebuilds/linux-x64/node-peft.node" install.log || { cat install.log; fail "the install did not use the prebuilt binary"; }
pkgdir=node_modules/node-peft
[ ! -e "$pkgdir/build" ] && [ ! -e "$pkgdir/build-cmake" ] || fail "the install left build folders"

cat >esm.mjs <<'JS'
import { Tensor, backend, linear } from "node-peft";
const y = linear(Tensor.randn([2, 4]), Tensor.randn([3, 4]));
if (y.shape.join() !== "2,3") throw new Error(`shape ${y.shape}`);
if (!/prebuilds\/linux-x64\/node-peft\.node$/.test(backend.path)) throw new Error(`loaded ${backend.path}`);
console.log("esm ok", backend.isa);
JS
cat >cjs.cjs <<'JS'
const peft = require("node-peft");
import("node-peft").then((esm) => {
  if (esm.Tensor !== peft.Tensor) throw new Error("two copies of the classes");
  console.log("require ok", peft.Tensor.zeros([2, 3]).shape.join("x"));
});
JS
node esm.mjs
node cjs.cjs 2>cjs.err
[ ! -s cjs.err ] || { cat cjs.err; fail "require() printed to stderr"; }

cp "$root/scripts/consumer/app.ts" "$root/scripts/consumer/legacy.cts" .
mkdir -p node_modules/@types
ln -s "$root/node_modules/@types/node" node_modules/@types/node
cat >tsconfig.json <<'JSON'
{ "compilerOptions": { "target": "ES2022", "lib": ["ES2022", "ESNext.Disposable"], "module": "NodeNext",
    "moduleResolution": "NodeNext", "strict": true, "types": ["node"], "noEmit": true },
  "include": ["app.ts", "legacy.cts"] }
JSON
node "$root/node_modules/typescript/bin/tsc" -p tsconfig.json || fail "strict tsc failed against the shipped types"
echo "tsc ok (strict; ESM and CommonJS files)"

[ "$(npx node-peft --version)" = "$(node -p 'require("node-peft/package.json").version')" ] || fail "npx node-peft --version"
cp "$root/test/fixtures/peft-lora-example/base_model.safetensors" model.safetensors
cp -r "$root/test/fixtures/peft-lora-example/adapter" adapter
npx node-peft inspect --json model.safetensors | node -e 'const r = JSON.parse(require("fs").readFileSync(0, "utf8")); if (r.tensors.length !== 21) process.exit(1)' || fail "inspect --json"
npx node-peft merge --base model.safetensors --adapter adapter --out merged.safetensors >/dev/null || fail "merge"
set +e
npx node-peft inspect >/dev/null 2>&1; [ $? -eq 2 ] || fail "a missing argument should exit 2"
npx node-peft inspect nope.safetensors >/dev/null 2>&1; [ $? -eq 1 ] || fail "a missing file should exit 1"
set -e
echo "cli ok (npx)"

# A prebuilt binary that does not load: the install script compiles the addon instead.
echo "not a shared object" >"$pkgdir/prebuilds/linux-x64/node-peft.node"
start=$(date +%s)
npm rebuild node-peft --foreground-scripts >rebuild.log 2>&1 || { cat rebuild.log; fail "npm rebuild failed"; }
echo "consumer-check: npm rebuild with a broken prebuilt binary (compiles): $(( $(date +%s) - start )) s"
grep -q "no usable prebuilt binary" rebuild.log || { cat rebuild.log; fail "the fallback was not taken"; }
grep -qE "node-peft: cmake-js: [0-9]+% " rebuild.log || { cat rebuild.log; fail "no progress was shown"; }
# The addon, and the optional MPI module where CMake found MPI: nothing else of the build is kept.
left=$(cd "$pkgdir" && find build-cmake -type f | grep -v '^build-cmake/Release/node_peft_mpi\.node$')
[ "$left" = "build-cmake/Release/node_peft.node" ] || fail "build leftovers: $left"
node -e 'import("node-peft").then((m) => { if (!m.backend.path.endsWith("build-cmake/Release/node_peft.node")) process.exit(1); console.log("fallback ok", m.backend.build); })'
echo "consumer-check: ok"
