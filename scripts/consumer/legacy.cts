// A CommonJS module in TypeScript: require() of the ES module package (Node >= 20.19), types included.
import peft = require("node-peft");

const t: peft.Tensor = peft.Tensor.zeros([2, 3]);
console.log(t.shape.join("x"));
