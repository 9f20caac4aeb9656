#!/usr/bin/env node
// LoRA fine-tuning of a transformers-format causal LM (Llama, Mistral, Qwen2, SmolLM, TinyLlama) on a
// JSON-lines file of texts: PEFT's default target modules for the model type (or all linear layers),
// AdamW with linear warmup and cosine decay, gradient clipping, a progress bar with loss and tokens/s, the
// loss curve as an SVG picture, the adapter saved in PEFT's format, and a generation before and after.
//
//   npm run example:finetune -- --model DIR --data file.jsonl [--bf16 | --int8] [--target all-linear]
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Command } from "commander";
import cliProgress from "cli-progress";
import { AdamW, LlamaForCausalLM, LoraConfig, Tokenizer, clipGradNorm, getCosineScheduleWithWarmup, getPeftModel, prepareModelForKbitTraining } from "../dist/index.js";
import { makeBatch, readTexts, tokenizeTexts } from "./finetune/data.mjs";
import { lossCurveSvg } from "./finetune/loss-svg.mjs";

const num = (v) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`not a number: ${v}`);
  return n;
};
const program = new Command("finetune")
  .requiredOption("--model <dir>", "transformers-format model directory (config.json, safetensors, tokenizer.json)")
  .requiredOption("--data <file>", 'JSON lines, one {"text": ...} per line')
  .option("--bf16", "bf16 base weights and activations (adapters and optimizer state stay f32)", false)
  .option("--int8", "LLM.int8 base: projections quantised while loading, prepared as PEFT's prepare_model_for_kbit_training", false)
  .option("--target <modules>", 'comma-separated module names, or "all-linear" (default: PEFT\'s defaults for the model type)')
  .option("--r <n>", "LoRA rank", num, 8)
  .option("--alpha <n>", "LoRA alpha", num, 16)
  .option("--dropout <p>", "LoRA dropout", num, 0)
  .option("--lr <lr>", "peak learning rate", num, 2e-4)
  .option("--epochs <n>", "passes over the data", num, 1)
  .option("--batch-size <n>", "sequences per step", num, 4)
  .option("--max-length <n>", "tokens per sequence (longer texts are cut)", num, 256)
  .option("--warmup <fraction>", "fraction of the steps spent warming up", num, 0.1)
  .option("--max-grad-norm <n>", "gradient clipping norm", num, 1)
  .option("--prompt <text>", "prompt for the generations before and after (default: the first words of the first text)")
  .option("--max-new-tokens <n>", "tokens generated before and after", num, 32)
  .option("--out <dir>", "where the adapter, loss.svg and summary.json go", "finetune-out")
  .option("--gradient-checkpointing", "recompute each layer in backward (less memory, ~30% more time)", false);
program.parse();
const o = program.opts();
if (o.bf16 && o.int8) program.error("finetune: --bf16 and --int8 exclude each other (an int8 base keeps its other weights in f32)");

const tokenizer = Tokenizer.fromPretrained(o.model);
const base = o.int8
  ? prepareModelForKbitTraining(await LlamaForCausalLM.fromPretrained(o.model, { quantize: "int8" }), { useGradientCheckpointing: o.gradientCheckpointing })
  : await LlamaForCausalLM.fromPretrained(o.model, { dtype: o.bf16 ? "bf16" : "f32" });
const texts = readTexts(o.data);
const rows = tokenizeTexts(tokenizer, texts, o.maxLength);
const prompt = o.prompt ?? texts[0].split(/\s+/).slice(0, 2).join(" ");
const gen = { maxNewTokens: o.maxNewTokens, tokenizer };

base.eval();
const before = await base.generateText(prompt, gen);
console.log(`before: ${JSON.stringify(prompt)} → ${JSON.stringify(before)}`);

const targets = o.target === undefined ? undefined : o.target === "all-linear" ? "all-linear" : o.target.split(",");
const peft = getPeftModel(base, new LoraConfig({ r: o.r, loraAlpha: o.alpha, loraDropout: o.dropout, targetModules: targets }));
if (o.gradientCheckpointing) base.gradientCheckpointingEnable();
const params = [...peft.parameters()].filter((p) => p.requiresGrad);
const trainable = params.reduce((n, p) => n + p.numel, 0), total = [...peft.parameters()].reduce((n, p) => n + p.numel, 0);
console.log(`LoRA r=${o.r} on ${peft.targetedModuleNames.length} modules: ${trainable} trainable of ${total} parameters (${((100 * trainable) / total).toFixed(3)}%)`);

const stepsPerEpoch = Math.ceil(rows.length / o.batchSize), steps = Math.max(1, Math.round(o.epochs * stepsPerEpoch));
const opt = new AdamW(params, { lr: o.lr, weightDecay: 0 });
const sched = getCosineScheduleWithWarmup(opt, Math.round(o.warmup * steps), steps);
const padId = tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0;
const bar = new cliProgress.SingleBar(
  { format: "train [{bar}] {value}/{total} steps | loss {loss} | lr {lr} | {tps} tokens/s", hideCursor: true, clearOnComplete: false },
  cliProgress.Presets.shades_classic,
);
bar.start(steps, 0, { loss: "-", lr: "-", tps: "-" });
const losses = [];
let tokens = 0;
const t0 = performance.now();
peft.train();
for (let step = 0; step < steps; step++) {
  const at = (step % stepsPerEpoch) * o.batchSize;
  const b = makeBatch(rows.slice(at, at + o.batchSize), padId);
  const { logits, loss } = peft.forward(b.inputIds, { attentionMask: b.attentionMask, labels: b.labels });
  loss.backward();
  clipGradNorm(params, o.maxGradNorm);
  opt.step();
  sched.step();
  opt.zeroGrad();
  const value = loss.toFloat32Array()[0];
  losses.push(value);
  tokens += b.tokens;
  for (const t of [logits, loss, b.inputIds, b.attentionMask, b.labels]) t.dispose();
  const secs = (performance.now() - t0) / 1000;
  bar.update(step + 1, { loss: value.toFixed(4), lr: opt.lr.toExponential(2), tps: (tokens / secs).toFixed(0) });
}
bar.stop();
peft.eval();

const after = await peft.generateText(prompt, gen);
console.log(`after:  ${JSON.stringify(prompt)} → ${JSON.stringify(after)}`);
mkdirSync(o.out, { recursive: true });
await peft.savePretrained(join(o.out, "adapter"));
writeFileSync(join(o.out, "loss.svg"), lossCurveSvg(losses));
const seconds = (performance.now() - t0) / 1000;
writeFileSync(join(o.out, "summary.json"), JSON.stringify({ prompt, before, after, losses, steps, tokens, seconds, tokensPerSecond: tokens / seconds }, null, 2));
console.log(`adapter: ${join(o.out, "adapter")}  loss curve: ${join(o.out, "loss.svg")}`);
peft.dispose();
