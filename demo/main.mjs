// npm run demo: what the backend runs on, and one product through it.
import { backend, Tensor, linear } from "../dist/index.js";

const cuda = backend.cuda;
console.log("node-peft backend");
console.log(`  build     ${backend.build}`);
console.log(`  ISA       ${backend.isa}`);
console.log(`  features  ${backend.features.join(", ") || "(none)"}`);
console.log(`  threads   ${backend.threads}`);
console.log(`  CUDA      ${cuda.available ? (cuda.emulated ? "emulated on the CPU" : cuda.devices.join(", ")) : `unavailable (${cuda.reason})`}`);

const [M, K, N] = [4, 3, 2];
const x = Tensor.fromArray([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [M, K]);
const w = Tensor.fromArray([1, 0, -1, 0.5, 0.5, 0.5], [N, K]);
const b = Tensor.fromArray([0.25, -0.25], [N]);
const y = linear(x, w, b);
console.log(`\nlinear: x [${x.shape}] · Wᵀ [${w.shape}] + b -> y [${y.shape}]`);
const v = y.toFloat32Array();
for (let i = 0; i < M; i++) console.log(`  ${Array.from(v.subarray(i * N, (i + 1) * N)).join("  ")}`);
