// matmul with torch.matmul's rules: 1-D operands are promoted and the added dimension removed, batch
// dimensions broadcast; the gradients of broadcast batches are summed back.
import { Tensor } from "../tensor.js";
import { native } from "../native.js";
import { record, wantsGrad } from "../autograd/record.js";
import { peftError } from "../errors.js";
import { sumTo, tensorArg } from "./raw.js";

function batched(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Tensor {
  return new Tensor(native.matmulBatched(Tensor.handle(a), Tensor.handle(b), transA, transB));
}

export function matmul(a: Tensor, b: Tensor): Tensor {
  tensorArg(a, "matmul", "a");
  tensorArg(b, "matmul", "b");
  if (!a.shape.length || !b.shape.length) throw peftError("ERR_SHAPE", "matmul: both operands need at least one dimension");
  // torch.matmul: a vector a is a row (1, K), a vector b a column (K, 1); the added dims are dropped after.
  const a2 = a.shape.length === 1 ? a.reshape([1, a.shape[0]]) : a;
  const b2 = b.shape.length === 1 ? b.reshape([b.shape[0], 1]) : b;
  const y2 = batched(a2, b2, false, false);
  const full = [...y2.shape];
  if (wantsGrad(a2, b2)) {
    record("MatmulBackward", [a2, b2], y2, ([g], [as, bs], [na, nb]) => {
      if (!g) return [null, null];
      // da = g·bᵀ, db = aᵀ·g, each summed over broadcast batch dims.
      const da = na ? batched(g, bs, false, true) : null;
      const db = nb ? batched(as, g, true, false) : null;
      const ra = da ? sumTo(da, as.shape) : null, rb = db ? sumTo(db, bs.shape) : null;
      if (da && ra !== da) da.dispose();
      if (db && rb !== db) db.dispose();
      return [ra, rb];
    }, [a2, b2]);
  }
  let outShape = full;
  if (a.shape.length === 1) outShape = [...outShape.slice(0, -2), outShape[outShape.length - 1]];
  if (b.shape.length === 1) outShape = outShape.slice(0, -1);
  let y = y2;
  if (outShape.length !== full.length) {
    y = y2.reshape(outShape);
    y2.dispose();
  }
  if (a2 !== a) a2.dispose();
  if (b2 !== b) b2.dispose();
  return y;
}
