// Gradient buckets: the trainable parameters in reverse registration order (about the order backward
// finishes them), cut into flat buffers of one dtype of at most `capBytes`. A bucket's gradients are
// copied into its buffer, averaged over the ranks in one all-reduce, and copied back.
import { Tensor, transientBytes } from "../tensor.js";
import { native } from "../native.js";
import { gradOf } from "../nn/index.js";
import { untrack } from "../autograd/scope.js";
import { startAllReduce, type InFlight } from "./collectives.js";

export class Bucket {
  readonly params: Tensor[] = [];
  /** Byte offset of each parameter's gradient in the flat buffer. */
  readonly offsets: number[] = [];
  bytes = 0;
  flat: Tensor | null = null;
  inFlight: InFlight | null = null;
  /** Parameters whose gradient is final in the current backward. */
  ready = 0;

  constructor(readonly dtype: Tensor["dtype"]) {}

  add(p: Tensor, bytes: number): void {
    this.params.push(p);
    this.offsets.push(this.bytes);
    this.bytes += bytes;
  }

  /** Gathers the gradients (zeros where a parameter has none) and starts their average over the ranks. */
  launch(): void {
    // The bucket's own buffer, whatever tidy() scope the backward runs in.
    this.flat ??= untrack(Tensor.zeros([this.bytes / bytesPer(this.dtype)], { dtype: this.dtype }));
    const dst = transientBytes(this.flat, true);
    try {
      this.params.forEach((p, i) => {
        if (p.grad && !p.grad.disposed) copyBytes(p.grad, false, (b) => dst.set(b, this.offsets[i]));
        else dst.fill(0, this.offsets[i], this.offsets[i] + p.numel * bytesPer(this.dtype));
      });
    } finally {
      native.releaseBytes(dst);
    }
    this.inFlight = startAllReduce(this.flat, { op: "mean" }, "DistributedDataParallel");
  }

  /** Waits for the exchange and writes the averages into the gradients; the seconds it took on the comm thread. */
  finish(): number {
    const seconds = this.inFlight!.wait();
    this.inFlight = null;
    const src = transientBytes(this.flat!, false);
    try {
      this.params.forEach((p, i) => {
        // A parameter disposed meanwhile takes no gradient; a disposed gradient is replaced.
        if (p.disposed) return;
        if (p.grad?.disposed) p.grad = null;
        const n = p.numel * bytesPer(this.dtype);
        copyBytes(gradOf(p), true, (b) => b.set(src.subarray(this.offsets[i], this.offsets[i] + n)));
      });
    } finally {
      native.releaseBytes(src);
    }
    return seconds;
  }

  dispose(): void {
    this.flat?.dispose();
    this.flat = null;
  }
}

function copyBytes(t: Tensor, writable: boolean, use: (b: Uint8Array) => void): void {
  const b = transientBytes(t, writable);
  try {
    use(b);
  } finally {
    native.releaseBytes(b);
  }
}

function bytesPer(dtype: Tensor["dtype"]): number {
  return dtype === "f32" ? 4 : 2;
}

/** Buckets over `params` (already in the order they should be exchanged). */
export function makeBuckets(params: Tensor[], capBytes: number): Bucket[] {
  const out: Bucket[] = [];
  for (const p of params) {
    const bytes = p.numel * bytesPer(p.dtype);
    let b = out.at(-1);
    if (!b || b.dtype !== p.dtype || (b.bytes > 0 && b.bytes + bytes > capBytes)) out.push((b = new Bucket(p.dtype)));
    b.add(p, bytes);
  }
  return out;
}
