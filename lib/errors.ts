// Error types with stable codes, shaped like Node's own errors (`err.code`).

export type PeftErrorCode =
  | "ERR_SHAPE"
  | "ERR_DTYPE"
  | "ERR_DEVICE"
  | "ERR_NOT_ON_DEVICE"
  | "ERR_DISPOSED"
  | "ERR_TENSOR_BUSY"
  | "ERR_CONFIG"
  | "ERR_UNSUPPORTED"
  | "ERR_CHECKPOINT"
  | "ERR_SAFETENSORS"
  | "ERR_TARGET_NOT_FOUND"
  | "ERR_STATE" // an operation out of order: backward without a training forward, backward while merged
  | "ERR_GRADCHECK" // gradcheck: an analytic gradient disagrees with finite differences
  | "ERR_NATIVE";

export class PeftError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "PeftError";
    this.code = code;
  }
}

export function peftError(code: PeftErrorCode, message: string): PeftError {
  return new PeftError(code, message);
}

/** A wrong argument type, as Node reports it. */
export function typeError(message: string): TypeError {
  const e = new TypeError(message) as TypeError & { code: string };
  e.code = "ERR_INVALID_ARG_TYPE";
  return e;
}

/** A value outside what is allowed (sizes that overflow, an ISA the CPU lacks). */
export function rangeError(message: string): RangeError {
  const e = new RangeError(message) as RangeError & { code: string };
  e.code = "ERR_OUT_OF_RANGE";
  return e;
}
