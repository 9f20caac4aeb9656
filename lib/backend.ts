// What the addon runs on, and the knobs to change it.
import { native, nativePath } from "./native.js";
import { typeError } from "./errors.js";

export interface CudaState {
  available: boolean;
  emulated: boolean;
  reason?: string;
  devices: string[];
  /**
   * Whether f32 products on the cuda device may run on TF32 tensor cores (inputs rounded to 10 mantissa
   * bits, to nearest with ties away from zero). Off by default, as PyTorch's
   * torch.backends.cuda.matmul.allow_tf32; assignable: `backend.cuda.allowTf32 = true`.
   */
  allowTf32: boolean;
}

// backend.cuda: the device's state read live, and the TF32 switch.
const cudaState: CudaState = Object.freeze({
  get available() {
    return native.cudaState().available;
  },
  get emulated() {
    return native.cudaState().emulated;
  },
  get reason() {
    return native.cudaState().reason;
  },
  get devices() {
    return native.cudaState().devices;
  },
  get allowTf32() {
    return native.cudaState().allowTf32;
  },
  set allowTf32(allow: boolean) {
    if (typeof allow !== "boolean") throw typeError("backend.cuda.allowTf32 must be a boolean");
    native.setCudaAllowTf32(allow);
  },
});


export const backend = {
  /** Which build was loaded: "cmake-js" or "node-gyp". */
  get build(): string {
    return native.backendInfo().build;
  },
  get path(): string {
    return nativePath;
  },
  get isa(): "avx512" | "avx2" | "scalar" {
    return native.backendInfo().isa;
  },
  get features(): readonly string[] {
    return Object.freeze(native.backendInfo().features);
  },
  get threads(): number {
    return native.backendInfo().threads;
  },
  get caches(): { l1d: number; l2: number; l3: number } {
    return native.backendInfo().caches;
  },
  /**
   * Native memory now: live (undisposed, uncollected) tensor handles, the storages behind them and their
   * bytes on every device; `gcReportedBytes`: the host bytes this thread's handles report to V8's garbage
   * collector (each storage once, however many handles, views or autograd saves share it). A steady training
   * loop keeps them flat.
   */
  memory(): { tensors: number; storages: number; bytes: number; gcReportedBytes: number } {
    return native.memoryInfo();
  },
  setNumThreads(n: number): void {
    if (typeof n !== "number") throw typeError("backend.setNumThreads: n must be a number");
    native.setNumThreads(n);
  },
  /** Forces a kernel path (as NODE_PEFT_ISA does); a path the CPU lacks is a RangeError. */
  setIsa(isa: "avx512" | "avx2" | "scalar"): void {
    if (typeof isa !== "string") throw typeError("backend.setIsa: isa must be a string");
    native.setIsa(isa);
  },
  /** Turns AMX tiles on or off (as NODE_PEFT_AMX does). */
  setAmx(enabled: boolean): void {
    if (typeof enabled !== "boolean") throw typeError("backend.setAmx: enabled must be a boolean");
    native.setAmx(enabled);
  },
  /** Whether a cuda device exists (a GPU, or the CPU emulation with NODE_PEFT_CUDA=emu) and why not; the TF32 switch. */
  get cuda(): CudaState {
    return cudaState;
  },
  /** The emulated device's thread order: a correct kernel gives the same result in each. */
  setCudaEmulationOrder(order: "forward" | "reverse" | "random"): void {
    if (typeof order !== "string") throw typeError("backend.setCudaEmulationOrder: order must be a string");
    native.setCudaEmulationOrder(order);
  },
};
