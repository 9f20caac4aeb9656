// Loads the native addon: a source build (cmake-js, then node-gyp) or the prebuilt binary. `lib/` and
// `dist/` sit at the same depth, so one relative path serves the TypeScript sources and the compiled package.
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { PeftError } from "./errors.js";

/** The native tensor handle (a type-tagged object owned by the addon). */
export interface NativeTensor {
  disposed(): boolean;
  dispose(): void;
  toFloat32Array(): Float32Array;
  toFloat64Array(): Float64Array;
  view(): Float32Array | Int8Array | Uint8Array | Int32Array | BigInt64Array | Uint16Array;
  bytes(writable?: boolean, transient?: boolean): Uint8Array;
  reshape(shape: readonly number[]): NativeTensor;
  copyFrom(src: NativeTensor): void;
  to(target: string): NativeTensor;
  version(): number;
  sharesStorage(other: NativeTensor): boolean;
}

export interface BackendInfo {
  build: string;
  isa: "avx512" | "avx2" | "scalar";
  features: string[];
  threads: number;
  caches: { l1d: number; l2: number; l3: number };
}

/** Everything the addon exports (kept in one place so the TS side is typed end to end). */
export interface NativeAddon {
  setErrorClass(ctor: typeof PeftError): void;
  isTensorHandle(v: unknown): boolean;
  /** Writes [dtype index (DTYPES order), device index (0 cpu, 1 cuda), ...dims] into `into`; the number of dims, -1 for no handle. */
  tensorMeta(handle: unknown, into: Float64Array): number;
  /** Detaches the ArrayBuffer under a transient view once the read/write through it is done (frees its hold on the storage). */
  releaseBytes(view: Uint8Array): void;
  zeros(shape: readonly number[], dtype: string, device: string, touch?: boolean): NativeTensor;
  fromArray(data: ArrayBufferView, shape: readonly number[], dtype: string, device: string): NativeTensor;
  fromBytes(data: ArrayBufferView, shape: readonly number[], dtype: string, device: string): NativeTensor;
  randn(shape: readonly number[], dtype: string, device: string, seed: number, stream: number, mean: number, std: number): NativeTensor;
  randUniform(shape: readonly number[], dtype: string, seed: number, stream: number, lo: number, hi: number): NativeTensor;
  // weightInOut: the weight is stored (in, out) as GPT-2's Conv1D keeps it; default (out, in).
  linear(x: NativeTensor, w: NativeTensor, b: NativeTensor | null, weightInOut?: boolean): NativeTensor;
  linearGradInput(dy: NativeTensor, w: NativeTensor, weightInOut?: boolean): NativeTensor;
  linearGradWeight(dy: NativeTensor, x: NativeTensor, dw: NativeTensor, accumulate: boolean, weightInOut?: boolean): void;
  matmul(a: NativeTensor, b: NativeTensor, transA: boolean, transB: boolean): NativeTensor;
  // LoRA on a dense layer; adapters: {A, B, scale, p, seed, stream[, dA, dB]}.
  loraForward(x: NativeTensor, w: NativeTensor, b: NativeTensor | null, weightInOut: boolean, adapters: object[]): [NativeTensor, NativeTensor];
  loraBackward(dy: NativeTensor, x: NativeTensor, w: NativeTensor, b: null, weightInOut: boolean, adapters: object[], T: NativeTensor, wantDx: boolean): NativeTensor | null;
  loraMerge(w: NativeTensor, weightInOut: boolean, adapters: object[], sign: number, safe: boolean, checkOnly?: boolean): number;
  // 2-D convolution, NCHW; geometry [strideH, strideW, padH, padW, dilationH, dilationW, groups]. dW/db accumulate.
  conv2d(x: NativeTensor, w: NativeTensor, b: NativeTensor | null, geometry: number[]): NativeTensor;
  conv2dBackward(dy: NativeTensor, x: NativeTensor | number[], w: NativeTensor, geometry: number[], wantDx: boolean, dW: NativeTensor | null, db: NativeTensor | null): NativeTensor | null;
  // LoRA on a groups = 1 convolution; adapters as loraForward's with A viewed (r, C·KH·KW) and B (OC, r).
  loraConv2dForward(x: NativeTensor, w: NativeTensor, b: NativeTensor | null, geometry: number[], adapters: object[]): [NativeTensor, NativeTensor];
  loraConv2dBackward(dy: NativeTensor, x: NativeTensor, w: NativeTensor, geometry: number[], adapters: object[], T: NativeTensor, wantDx: boolean,
    dW: NativeTensor | null, db: NativeTensor | null): NativeTensor | null;
  // IA3 on a dense layer: l (f32) scales x's K features (inputSide) or y's N outputs; saveUnscaled (output
  // side) also returns y0 = x·Wᵀ + b for dl. Backward accumulates dW, db, dl (null: not wanted).
  ia3Forward(x: NativeTensor, w: NativeTensor, b: NativeTensor | null, weightInOut: boolean, l: NativeTensor, inputSide: boolean, saveUnscaled: boolean): NativeTensor | [NativeTensor, NativeTensor];
  ia3Backward(dy: NativeTensor, x: NativeTensor, w: NativeTensor, b: null, weightInOut: boolean, l: NativeTensor, inputSide: boolean, y0: NativeTensor | null,
    wantDx: boolean, dW: NativeTensor | null, db: NativeTensor | null, dl: NativeTensor | null): NativeTensor | null;
  // IA3 merge/unmerge in place: weight viewed [outer, mid, inner] times the scales' product along mid (or divided
  // by each l + 1e-8); returns the first adapter that makes it non-finite under safe, or -1.
  ia3Scale(w: NativeTensor, view: number[], scales: NativeTensor[], divide: boolean, safe: boolean, checkOnly: boolean): number;
  // LLM.int8 (bitsandbytes semantics, native/cpu/int8.cc): W -> [CB i8 (N, K), SCB f32 (N)]; y = x·dequant(W)ᵀ + b
  // with outlier columns (|x| >= threshold > 0) in floating point, in x's dtype; dx = dy·dequant(W).
  int8Quantize(w: NativeTensor): [NativeTensor, NativeTensor];
  int8Linear(x: NativeTensor, cb: NativeTensor, scb: NativeTensor, b: NativeTensor | null, threshold: number, u?: NativeTensor | null, bt?: NativeTensor | null, down?: NativeTensor | null, scale?: number): NativeTensor;
  int8LinearGradInput(dy: NativeTensor, cb: NativeTensor, scb: NativeTensor): NativeTensor;
  // bitsandbytes' 4-bit weights (native/cpu/nf4.cc): W -> [packed codes u8 ((n+1)/2, 1), absmax f32 (blocks)]; the
  // weight arguments after that are (packed, absmax, quantType, blocksize, out, in, weight dtype, compute dtype).
  quant4Quantize(w: NativeTensor, quantType: string, blocksize: number): [NativeTensor, NativeTensor];
  quant4Dequantize(packed: NativeTensor, absmax: NativeTensor, quantType: string, blocksize: number, out: number, inF: number, wdt: string, cdt: string, outDtype: string): NativeTensor;
  quant4Linear(x: NativeTensor, packed: NativeTensor, absmax: NativeTensor, quantType: string, blocksize: number, out: number, inF: number, wdt: string, cdt: string, b: NativeTensor | null): NativeTensor;
  quant4LinearGradInput(dy: NativeTensor, packed: NativeTensor, absmax: NativeTensor, quantType: string, blocksize: number, out: number, inF: number, wdt: string, cdt: string): NativeTensor;
  // x ← (I − tau·v·vᵀ)·x on columns c0..c1−1, rows row..row+below of a column-major Float64Array (ld rows).
  applyReflector(v: Float64Array, vo: number, below: number, tau: number, x: Float64Array, ld: number, row: number, c0: number, c1: number): void;
  activation(kind: string, x: NativeTensor): NativeTensor;
  activationBackward(kind: string, x: NativeTensor, dy: NativeTensor): NativeTensor;
  logSoftmax(x: NativeTensor): NativeTensor;
  logSoftmaxBackward(y: NativeTensor, dy: NativeTensor): NativeTensor;
  // RMSNorm over the last dim: [y, rstd f32 per row]; the backward's dx/dw are null when not wanted.
  rmsNorm(x: NativeTensor, w: NativeTensor | null, eps: number): [NativeTensor, NativeTensor];
  rmsNormBackward(x: NativeTensor, w: NativeTensor | null, rstd: NativeTensor, dy: NativeTensor, wantDx: boolean, wantDw: boolean): [NativeTensor | null, NativeTensor | null];
  // Rotary embedding of x [B, T, H, D] with f32 cos/sin [B or 1, T, D]; backward: x holds dy, returns dx.
  rotaryEmbedding(x: NativeTensor, cos: NativeTensor, sin: NativeTensor, backward: boolean): NativeTensor;
  // Flash-style attention, q [B, T, Hq, D], k/v [B, S, Hkv, D], mask [B, S] or null: [out, lse f32 [B, Hq, T]].
  attention(q: NativeTensor, k: NativeTensor, v: NativeTensor, mask: NativeTensor | null, causal: boolean, scale: number, keyLength?: number): [NativeTensor, NativeTensor];
  attentionBackward(q: NativeTensor, k: NativeTensor, v: NativeTensor, mask: NativeTensor | null, causal: boolean, scale: number,
    out: NativeTensor, lse: NativeTensor, dout: NativeTensor): [NativeTensor, NativeTensor, NativeTensor];
  dropout(x: NativeTensor, p: number, seed: number, stream: number): NativeTensor;
  dropoutMask(shape: readonly number[], p: number, seed: number, stream: number): NativeTensor;
  embedding(ids: NativeTensor, weight: NativeTensor): NativeTensor;
  embeddingBackward(ids: NativeTensor, dy: NativeTensor, dw: NativeTensor): void;
  sumRows(dy: NativeTensor, out: NativeTensor, accumulate: boolean): void;
  addInPlace(a: NativeTensor, b: NativeTensor, alpha: number): void;
  scaleInPlace(a: NativeTensor, alpha: number): void;
  mul(a: NativeTensor, b: NativeTensor): NativeTensor;
  fill(a: NativeTensor, value: number): void;
  nllLoss(logProbs: NativeTensor, target: NativeTensor, ignoreIndex: number): { loss: number; grad: NativeTensor };
  crossEntropy(logits: NativeTensor, target: NativeTensor, ignoreIndex: number, labelSmoothing: number): { loss: number; grad: NativeTensor };
  mseLoss(y: NativeTensor, target: NativeTensor): { loss: number; grad: NativeTensor };
  adamwStep(params: NativeTensor[], grads: (NativeTensor | null)[], expAvg: NativeTensor[], expAvgSq: NativeTensor[],
    step: number, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number): void;
  // Functional ops (CPU kernels). elementwise: PyTorch broadcasting over the inputs; scalars per op
  // (clamp [lo, hi], pow_scalar [p], affine [a, b], axpby [alpha, beta]).
  elementwise(op: string, inputs: NativeTensor[], outDtype: string, scalars: number[]): NativeTensor;
  // op: sum | mean | max | min | var; dims [] = every axis; indices (i64) for max/min over exactly one dim.
  reduce(op: string, x: NativeTensor, dims: number[], keepdim: boolean, correction: number, outDtype: string): { values: NativeTensor; indices: NativeTensor | null };
  // Copies the strided view (shape, srcStrides, srcOffset) of src into a new contiguous tensor (dst null)
  // or into the strided view of dst (converting dtype), which it returns.
  copyStrided(src: NativeTensor, shape: number[], srcStrides: number[], srcOffset: number, dst: NativeTensor | null, dstStrides: number[], dstOffset: number): NativeTensor;
  indexSelect(x: NativeTensor, dim: number, index: NativeTensor): NativeTensor;
  indexAdd(dst: NativeTensor, dim: number, index: NativeTensor, src: NativeTensor): void;
  gather(x: NativeTensor, dim: number, index: NativeTensor): NativeTensor;
  scatterAdd(dst: NativeTensor, dim: number, index: NativeTensor, src: NativeTensor): void;
  matmulBatched(a: NativeTensor, b: NativeTensor, transA: boolean, transB: boolean): NativeTensor;
  backendInfo(): BackendInfo;
  cudaState(): { available: boolean; emulated: boolean; reason?: string; devices: string[]; allowTf32: boolean };
  setCudaAllowTf32(allow: boolean): void;
  memoryInfo(): { tensors: number; storages: number; bytes: number; gcReportedBytes: number };
  // A tensor registered under a number another worker thread of this process can wrap (same storage, no
  // copy) until it is released.
  shareTensor(t: NativeTensor): number;
  adoptSharedTensor(id: number): NativeTensor;
  releaseSharedTensor(id: number): boolean;
  setCudaEmulationOrder(order: string): void;
  setNumThreads(n: number): void;
  setIsa(isa: string): void;
  setAmx(on: boolean): void;
  /** Test hook: c (in place) = alpha·op(a)·op(b) [+ a2·b2] [+ bias] [+ c] through the GEMM or its reference. */
  _gemmTest(a: NativeTensor, b: NativeTensor, c: NativeTensor, opts: GemmTestOptions): void;
  /** Bench hooks (native/ops/bench_hooks.cc): machine ceilings, eviction, pool wake-up, GEMM kernel set. */
  _benchCeilings(): { name: string; unit: string; what: string }[];
  _benchCeiling(name: string, threads: number, seconds: number): number;
  _benchEvict(t: NativeTensor): number;
  _benchWake(): void;
  _benchGemmKernel(a: string, b: string): string;
  /** The int8 kernel set int8Linear picks on the active path. */
  _benchInt8Kernel(): string;
  /** Test hook: the raw int32 products x_q·CBᵀ (M, N) of the active int8 kernel. */
  _int8Test(x: NativeTensor, cb: NativeTensor, scb: NativeTensor, threshold: number): NativeTensor;
  [extra: string]: unknown;
}

/** Options of the `_gemmTest` hook (native/ops/gemm_test_hook.cc). */
export interface GemmTestOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  accumulate?: boolean;
  bias?: NativeTensor | null;
  a2?: NativeTensor | null;
  b2?: NativeTensor | null;
  reference?: boolean;
  cacheB?: boolean;
  colScale?: NativeTensor | null;
  aScale?: NativeTensor | null;
}

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
// Source builds first (cmake-js, then node-gyp), then the prebuilt binary node-gyp-build picks for this
// platform from prebuilds/ (what an installed package normally loads).
const BUILDS = ["cmake-js", "node-gyp", "prebuild"] as const;
const paths: Record<string, () => string | null> = {
  "cmake-js": () => join(root, "build-cmake", "Release", "node_peft.node"),
  "node-gyp": () => join(root, "build", "Release", "node_peft.node"),
  prebuild: () => prebuildPath(),
  // The sanitizer build (scripts/test-asan.sh) is loaded only when asked for by name.
  asan: () => join(root, "build-asan", "Release", "node_peft.node"),
};

function prebuildPath(): string | null {
  const require = createRequire(import.meta.url);
  // node-gyp-build reads this when first loaded: look in prebuilds/ only (the source builds are tried above).
  const saved = process.env.PREBUILDS_ONLY;
  process.env.PREBUILDS_ONLY = "1";
  try {
    return (require("node-gyp-build") as { path(dir: string): string }).path(root);
  } catch {
    return null;
  } finally {
    if (saved === undefined) delete process.env.PREBUILDS_ONLY;
    else process.env.PREBUILDS_ONLY = saved;
  }
}

function load(): { addon: NativeAddon; path: string } {
  const require = createRequire(import.meta.url);
  // NODE_PEFT_BUILD=cmake-js|node-gyp|prebuild|asan picks one build (tests of each build use it).
  const want = process.env.NODE_PEFT_BUILD;
  const tried: string[] = [];
  for (const name of want ? [want] : BUILDS) {
    if (!Object.hasOwn(paths, name)) {
      tried.push(`NODE_PEFT_BUILD=${name}: not one of ${Object.keys(paths).join(", ")}`);
      continue;
    }
    const path = paths[name]();
    if (!path || !existsSync(path)) {
      tried.push(`${name}: ${path ?? `no prebuilt binary for ${process.platform}-${process.arch}`} (not built)`);
      continue;
    }
    try {
      return { addon: require(path) as NativeAddon, path };
    } catch (e) {
      // A binary the dynamic loader refuses here (an older glibc, another architecture): try the next one.
      // Errors the addon itself raises while starting (a NODE_PEFT_ISA the CPU lacks) are the user's to see.
      if ((e as NodeJS.ErrnoException | null)?.code !== "ERR_DLOPEN_FAILED") throw e;
      tried.push(`${name}: ${path} (${String((e as Error).message).split("\n")[0]})`);
    }
  }
  throw new PeftError(
    "ERR_NATIVE",
    `node-peft: no native addon loads. Tried:\n  ${tried.join("\n  ")}\n` +
      "Compile it: `npm install-scripts approve node-peft` (npm 11 runs a dependency's install script only when allowed), " +
      "then `npm rebuild node-peft --build-from-source` (needs a C++ compiler, make and cmake or python3).",
  );
}

const loaded = load();
export const native: NativeAddon = loaded.addon;
export const nativePath: string = loaded.path;
native.setErrorClass(PeftError);
