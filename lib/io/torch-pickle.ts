// A restricted unpickler for what torch.save writes for a state dict: dicts and OrderedDicts of tensors,
// each tensor a call of torch._utils._rebuild_tensor_v2 on a storage named by a persistent id. It is a
// plain interpreter over data: no opcode can name or call anything outside the short list below (a GLOBAL
// for anything else, e.g. os.system or builtins.eval, is refused when it is read), and the listed "calls"
// only build descriptions of tensors. Nothing from the file is ever executed.
import { peftError, type PeftError } from "../errors.js";
import type { DType } from "../tensor.js";

/** A storage named by a persistent id: its data is the archive entry `data/<key>`. */
export interface StorageRef {
  readonly kind: "storage";
  readonly key: string;
  /** The tensor dtype it loads as; null for a torch dtype without one (its name is in torchType). */
  readonly dtype: DType | null;
  readonly torchType: string;
  readonly elementSize: number;
  readonly numel: number;
}

/** A tensor view of a storage, as _rebuild_tensor_v2 describes it (in elements). */
export interface TensorRef {
  readonly kind: "tensor";
  readonly storage: StorageRef;
  readonly offset: number;
  readonly shape: number[];
  readonly stride: number[];
}

class Global {
  constructor(readonly module: string, readonly name: string) {}
  get full(): string {
    return `${this.module}.${this.name}`;
  }
}

class Tuple {
  constructor(readonly items: unknown[]) {}
}

const MARK = Symbol("mark");

// torch storage classes: (tensor dtype | null, element size).
const STORAGES: Record<string, [DType | null, number]> = {
  FloatStorage: ["f32", 4], HalfStorage: ["f16", 2], BFloat16Storage: ["bf16", 2], LongStorage: ["i64", 8], IntStorage: ["i32", 4],
  CharStorage: ["i8", 1], ByteStorage: ["u8", 1], BoolStorage: ["u8", 1], DoubleStorage: [null, 8], ShortStorage: [null, 2],
  ComplexFloatStorage: [null, 8], ComplexDoubleStorage: [null, 16],
};

// The functions a REDUCE may apply; each only builds a description.
const CALLABLE = new Set(["torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter", "collections.OrderedDict"]);

const MAX_MEMO = 1_000_000;
const MAX_STACK = 1_000_000;

export function unpickleStateDict(bytes: Uint8Array, file: string): Map<string, unknown> {
  const fail = (msg: string): PeftError => peftError("ERR_CHECKPOINT", `${file}: refused by the restricted unpickler: ${msg}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const text = new TextDecoder("utf-8", { fatal: true });
  let pos = 0;
  const take = (n: number): number => {
    if (n < 0 || pos + n > bytes.length) throw fail(`the pickle ends early at byte ${pos}`);
    const at = pos;
    pos += n;
    return at;
  };
  const str = (n: number): string => {
    const at = take(n);
    try {
      return text.decode(bytes.subarray(at, at + n));
    } catch {
      throw fail(`a string at byte ${at} is not UTF-8`);
    }
  };
  const line = (): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) throw fail("a GLOBAL name has no end of line");
    const s = str(end - pos);
    take(1);
    return s;
  };

  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  const storages = new Map<string, StorageRef>();
  const push = (v: unknown) => {
    if (stack.length >= MAX_STACK) throw fail("the stack grows too deep");
    stack.push(v);
  };
  const pop = (): unknown => {
    if (stack.length === 0 || (marks.length && stack.length <= marks[marks.length - 1]!)) throw fail(`stack underflow at byte ${pos - 1}`);
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0) throw fail(`stack underflow at byte ${pos - 1}`);
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const m = marks.pop();
    if (m === undefined) throw fail(`no MARK before byte ${pos - 1}`);
    return stack.splice(m);
  };
  const put = (i: number) => {
    if (memo.size >= MAX_MEMO && !memo.has(i)) throw fail("too many memo entries");
    memo.set(i, top());
  };
  const get = (i: number) => {
    if (!memo.has(i)) throw fail(`memo entry ${i} was never stored`);
    push(memo.get(i));
  };
  const int = (v: bigint): number => {
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) throw fail(`integer ${v} is too large`);
    return Number(v);
  };
  const setItems = (target: unknown, kv: unknown[]) => {
    if (!(target instanceof Map)) throw fail("SETITEM(S) on something that is not a dict");
    if (kv.length % 2) throw fail("SETITEMS with an odd number of values");
    for (let i = 0; i < kv.length; i += 2) target.set(kv[i], kv[i + 1]);
  };

  for (;;) {
    const op = bytes[take(1)]!;
    switch (op) {
      case 0x80: // PROTO
        if (bytes[take(1)]! > 5) throw fail("pickle protocol above 5");
        break;
      case 0x95: // FRAME: a length prefix only
        take(8);
        break;
      case 0x28: // MARK
        marks.push(stack.length);
        break;
      case 0x7d: // EMPTY_DICT
        push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        push(new Tuple([]));
        break;
      case 0x74: // TUPLE
        push(new Tuple(popMark()));
        break;
      case 0x85: // TUPLE1
        push(new Tuple([pop()]));
        break;
      case 0x86: { // TUPLE2
        const b = pop(), a = pop();
        push(new Tuple([a, b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop(), b = pop(), a = pop();
        push(new Tuple([a, b, c]));
        break;
      }
      case 0x6c: // LIST
        push(popMark());
        break;
      case 0x64: { // DICT
        const d = new Map();
        setItems(d, popMark());
        push(d);
        break;
      }
      case 0x61: { // APPEND
        const v = pop(), l = top();
        if (!Array.isArray(l)) throw fail("APPEND to something that is not a list");
        l.push(v);
        break;
      }
      case 0x65: { // APPENDS
        const vs = popMark(), l = top();
        if (!Array.isArray(l)) throw fail("APPENDS to something that is not a list");
        l.push(...vs);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop(), k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const kv = popMark();
        setItems(top(), kv);
        break;
      }
      case 0x71: // BINPUT
        put(bytes[take(1)]!);
        break;
      case 0x72: // LONG_BINPUT
        put(view.getUint32(take(4), true));
        break;
      case 0x94: // MEMOIZE
        put(memo.size);
        break;
      case 0x68: // BINGET
        get(bytes[take(1)]!);
        break;
      case 0x6a: // LONG_BINGET
        get(view.getUint32(take(4), true));
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        push(top());
        break;
      case 0x4e: // NONE
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x4b: // BININT1
        push(bytes[take(1)]!);
        break;
      case 0x4d: // BININT2
        push(view.getUint16(take(2), true));
        break;
      case 0x4a: // BININT
        push(view.getInt32(take(4), true));
        break;
      case 0x8a: { // LONG1: n bytes, little-endian two's complement
        const n = bytes[take(1)]!;
        if (n > 8) throw fail(`a ${n}-byte integer`);
        const at = take(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[at + i]!);
        if (n > 0 && bytes[at + n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
        push(int(v));
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        push(view.getFloat64(take(8), false));
        break;
      case 0x58: // BINUNICODE
        push(str(view.getUint32(take(4), true)));
        break;
      case 0x8c: // SHORT_BINUNICODE
        push(str(bytes[take(1)]!));
        break;
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line(), name = line();
        push(globalOf(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop(), module = pop();
        if (typeof module !== "string" || typeof name !== "string") throw fail("STACK_GLOBAL without two strings");
        push(globalOf(module, name));
        break;
      }
      case 0x51: // BINPERSID
        push(persistent(pop()));
        break;
      case 0x52: { // REDUCE
        const args = pop(), fn = pop();
        push(reduce(fn, args));
        break;
      }
      case 0x62: { // BUILD: only the state torch attaches to a state dict (_metadata), which is dropped
        const state = pop();
        if (!(top() instanceof Map) || !(state === null || state instanceof Map)) throw fail("BUILD on something other than a dict");
        break;
      }
      case 0x2e: { // STOP
        const result = pop();
        if (!(result instanceof Map)) throw fail("the pickled object is not a dict");
        return result;
      }
      default:
        throw fail(`opcode 0x${op.toString(16).padStart(2, "0")} at byte ${pos - 1} is not allowed`);
    }
  }

  function globalOf(module: string, name: string): Global {
    const g = new Global(module, name);
    if (CALLABLE.has(g.full) || (module === "torch" && Object.hasOwn(STORAGES, name))) return g;
    throw fail(`global ${JSON.stringify(g.full.slice(0, 200))} is not allowed (only torch tensor storages and rebuild functions are)`);
  }

  // ('storage', <storage class>, key, location, numel): one StorageRef per key.
  function persistent(pid: unknown): StorageRef {
    const items = pid instanceof Tuple ? pid.items : [];
    const [tag, type, key, , numel] = items;
    if (items.length !== 5 || tag !== "storage" || !(type instanceof Global) || type.module !== "torch" || typeof key !== "string" || typeof numel !== "number" || !Number.isSafeInteger(numel) || numel < 0)
      throw fail("a persistent id that is not a torch storage");
    const [dtype, elementSize] = STORAGES[type.name]!;
    const seen = storages.get(key);
    if (seen) {
      if (seen.torchType !== type.name || seen.numel !== numel) throw fail(`storage ${JSON.stringify(key)} is described two ways`);
      return seen;
    }
    const s: StorageRef = { kind: "storage", key, dtype, torchType: type.name, elementSize, numel };
    storages.set(key, s);
    return s;
  }

  function reduce(fn: unknown, args: unknown): unknown {
    if (!(fn instanceof Global) || !CALLABLE.has(fn.full)) throw fail(`REDUCE of ${fn instanceof Global ? fn.full : "a non-function"} is not allowed`);
    if (!(args instanceof Tuple)) throw fail(`${fn.full} called without an argument tuple`);
    const a = args.items;
    switch (fn.full) {
      case "collections.OrderedDict":
        if (a.length !== 0) throw fail("OrderedDict called with arguments");
        return new Map();
      case "torch._utils._rebuild_parameter":
        if (!(a[0] as TensorRef)?.kind) throw fail("_rebuild_parameter of something that is not a tensor");
        return a[0];
      default: {
        const [storage, offset, size, stride] = a;
        if (!(storage as StorageRef)?.kind || (storage as StorageRef).kind !== "storage") throw fail(`${fn.full} without a storage`);
        const dims = (v: unknown, what: string): number[] => {
          const xs = v instanceof Tuple ? v.items : null;
          if (!xs || !xs.every((d) => typeof d === "number" && Number.isSafeInteger(d) && d >= 0) || xs.length > 16)
            throw fail(`${fn.full}: ${what} is not a tuple of at most 16 non-negative integers`);
          return xs as number[];
        };
        if (typeof offset !== "number" || !Number.isSafeInteger(offset) || offset < 0) throw fail(`${fn.full}: the storage offset is not a non-negative integer`);
        const shape = dims(size, "the size"), strides = dims(stride, "the stride");
        if (shape.length !== strides.length) throw fail(`${fn.full}: size and stride differ in length`);
        return { kind: "tensor", storage: storage as StorageRef, offset, shape, stride: strides } satisfies TensorRef;
      }
    }
  }
}
