// The prompt encoders (PEFT's PromptEmbedding, PromptEncoder, PrefixEncoder): modules that turn the virtual
// token indices 0..n-1 into the prompt: embeddings put before the input's (prompt tuning, P-tuning) or the
// keys and values every attention layer sees before the input's (prefix tuning). Parameter names as PEFT's
// (embedding.weight, mlp_head.0.weight, lstm_head.weight_ih_l0, transform.2.bias, ...).
import { Tensor } from "../../tensor.js";
import * as F from "../../functional/index.js";
import { noGrad } from "../../autograd/grad-mode.js";
import { describe, peftError, typeError } from "../../errors.js";
import { isInitSkipped } from "../../init-mode.js";
import { Module } from "../../nn/module.js";
import { Embedding } from "../../nn/embedding.js";
import { Linear } from "../../nn/linear.js";
import { Sequential } from "../../nn/containers.js";
import { ReLU } from "../../nn/activations.js";
import { LSTM } from "../../nn/lstm.js";
import { Tokenizer } from "../../tokenizer/tokenizer.js";
import { PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, type PromptLearningConfig } from "./config.js";

/** tanh as a module (PrefixEncoder's projection: Linear, Tanh, Linear). */
export class Tanh extends Module {
  forward(x: Tensor): Tensor {
    return F.tanh(x);
  }
  override clone(): Tanh {
    return new Tanh();
  }
}

/**
 * The sizes an encoder reads from its config (which must be of the encoder's config class), each checked when
 * read (getPeftModel fills them in from the model).
 */
function sizesOf(config: PromptLearningConfig & { encoderHiddenSize?: number | null }, className: string, Config: abstract new (...a: never[]) => PromptLearningConfig) {
  if (!(config instanceof Config)) throw typeError(`${className}: config must be a ${Config.name}, got ${describe(config)}`);
  const need = (value: number | null | undefined, key: string): number => {
    if (value === null || value === undefined) throw peftError("ERR_CONFIG", `${className}: ${key} is not set (getPeftModel fills it in from the model)`);
    return value;
  };
  return {
    get dim() { return need(config.tokenDim, "token_dim"); },
    get n() { return need(config.numVirtualTokens, "num_virtual_tokens"); },
    /** Virtual tokens over all transformer submodules (1 for decoder-only models). */
    get total() { return this.n * (config.numTransformerSubmodules ?? 1); },
    get layers() { return need(config.numLayers, "num_layers"); },
    get hidden() { return need(config.encoderHiddenSize, "encoder_hidden_size"); },
  };
}

/** Rows `ids` of the word embeddings, copied (in f32) into `target`'s weight. */
function copyWordRows(target: Embedding, words: Embedding, ids: number[]): void {
  noGrad(() => {
    const idx = Tensor.fromArray(ids, [ids.length], "i64");
    const rows = F.embedding(idx, words.weight);
    target.weight.copyFrom(rows);
    rows.dispose();
    idx.dispose();
  });
}

/** Base of the three encoders: every one has `embedding`, indexed by the virtual token ids. */
export abstract class PromptEncoderBase extends Module {
  embedding!: Embedding;
}

/**
 * Prompt tuning: the prompt is an embedding table of numVirtualTokens rows, initialised at random (N(0, 1)),
 * from word embeddings of random vocabulary ids (SAMPLE_VOCAB) or of a text's tokens, repeated or cut to
 * length (TEXT, through the tokenizer in tokenizerNameOrPath).
 */
export class PromptEmbedding extends PromptEncoderBase {
  constructor(config: PromptTuningConfig, wordEmbeddings: Embedding) {
    super();
    const { total, dim } = sizesOf(config, "PromptEmbedding", PromptTuningConfig);
    if (!(wordEmbeddings instanceof Embedding)) throw typeError(`PromptEmbedding: wordEmbeddings must be the model's Embedding, got ${describe(wordEmbeddings)}`);
    this.embedding = this.registerModule("embedding", new Embedding(total, dim));
    // An adapter loaded for inference gets its weights from the file; an empty model (skipInit) from elsewhere.
    if (config.inferenceMode || isInitSkipped()) return;
    if (config.promptTuningInit === "SAMPLE_VOCAB") {
      const vocab = wordEmbeddings.numEmbeddings;
      const u = Tensor.rand([total]);
      const ids = Array.from(u.toFloat64Array(), (v) => Math.min(vocab - 1, Math.floor(v * vocab)));
      u.dispose();
      copyWordRows(this.embedding, wordEmbeddings, ids);
    } else if (config.promptTuningInit === "TEXT") {
      const kwargs = Object.keys(config.tokenizerKwargs ?? {}).filter((k) => k !== "trust_remote_code");
      if (kwargs.length)
        throw peftError("ERR_UNSUPPORTED", `PromptEmbedding: tokenizer_kwargs (${kwargs.join(", ")}) are not supported; the tokenizer is read from ${config.tokenizerNameOrPath} as it is`);
      const tok = Tokenizer.fromPretrained(config.tokenizerNameOrPath!);
      let ids = tok.encode(config.promptTuningInitText!);
      if (ids.length === 0) throw peftError("ERR_CONFIG", `PromptEmbedding: prompt_tuning_init_text ${JSON.stringify(config.promptTuningInitText)} encodes to no tokens`);
      // PEFT: cut to length, or repeat until long enough and then cut.
      if (ids.length < total) ids = Array.from({ length: Math.ceil(total / ids.length) }, () => ids).flat();
      ids = ids.slice(0, total);
      const vocab = wordEmbeddings.numEmbeddings;
      const bad = ids.find((i) => i >= vocab);
      if (bad !== undefined) throw peftError("ERR_CONFIG", `PromptEmbedding: the tokenizer in ${config.tokenizerNameOrPath} gives token id ${bad}, outside the model's vocabulary of ${vocab}`);
      copyWordRows(this.embedding, wordEmbeddings, ids);
    }
  }

  forward(indices: Tensor): Tensor {
    return this.embedding.forward(indices);
  }
}

/**
 * P-tuning: embeddings reparameterised by an MLP (Linear, ReLU, Linear, ReLU, Linear through
 * encoderHiddenSize) or by a bidirectional LSTM followed by a two-layer MLP. An adapter loaded for inference
 * has only `embedding`, holding the encoder's output as it was saved.
 */
export class PromptEncoder extends PromptEncoderBase {
  readonly encoderType: "MLP" | "LSTM";
  readonly inferenceMode: boolean;
  mlp_head: Sequential | null = null;
  lstm_head: LSTM | null = null;

  constructor(config: PromptEncoderConfig) {
    super();
    const { dim, hidden, total } = sizesOf(config, "PromptEncoder", PromptEncoderConfig);
    this.encoderType = config.encoderReparameterizationType;
    this.inferenceMode = config.inferenceMode;
    this.embedding = this.registerModule("embedding", new Embedding(total, dim));
    if (config.inferenceMode) return;
    if (this.encoderType === "LSTM") {
      this.lstm_head = this.registerModule("lstm_head", new LSTM(dim, hidden, { numLayers: config.encoderNumLayers, dropout: config.encoderDropout, bidirectional: true }));
      this.mlp_head = this.registerModule("mlp_head", new Sequential(new Linear(2 * hidden, 2 * hidden), new ReLU(), new Linear(2 * hidden, dim)));
    } else {
      if (config.encoderNumLayers !== 2)
        process.emitWarning(`for MLP, the argument \`encoder_num_layers\` is ignored. Exactly 2 MLP layers are used.`, { code: "PEFT_ENCODER_NUM_LAYERS" });
      this.mlp_head = this.registerModule("mlp_head", new Sequential(new Linear(dim, hidden), new ReLU(), new Linear(hidden, hidden), new ReLU(), new Linear(hidden, dim)));
    }
  }

  forward(indices: Tensor): Tensor {
    const e = this.embedding.forward(indices);
    if (this.inferenceMode || !this.mlp_head) return e;
    if (this.lstm_head) {
      const { output, hN, cN } = this.lstm_head.forward(e);
      hN.dispose();
      cN.dispose();
      e.dispose();
      const y = this.mlp_head.forward(output) as Tensor;
      output.dispose();
      return y;
    }
    const y = this.mlp_head.forward(e) as Tensor;
    e.dispose();
    return y;
  }
}

/**
 * Prefix tuning: per virtual token, every layer's key and value (numLayers·2·tokenDim numbers), either an
 * embedding table itself or computed by a tanh MLP from a tokenDim-wide embedding (prefixProjection, train
 * only: an adapter loaded for inference holds the computed prefix as its embedding). initWeights "zero"
 * starts the table (or the projection's last layer) at zero.
 */
export class PrefixEncoder extends PromptEncoderBase {
  readonly prefixProjection: boolean;
  transform: Sequential | null = null;

  constructor(config: PrefixTuningConfig) {
    super();
    const sizes = sizesOf(config, "PrefixEncoder", PrefixTuningConfig);
    const { dim, layers, n } = sizes;
    this.prefixProjection = config.prefixProjection && !config.inferenceMode;
    const zero = (t: Tensor) => noGrad(() => t.view().fill(0 as never));
    if (this.prefixProjection) {
      const hidden = sizes.hidden;
      this.embedding = this.registerModule("embedding", new Embedding(n, dim));
      const last = new Linear(hidden, layers * 2 * dim);
      this.transform = this.registerModule("transform", new Sequential(new Linear(dim, hidden), new Tanh(), last));
      if (config.initWeights === "zero") {
        zero(last.weight);
        if (last.bias) zero(last.bias);
      }
    } else {
      this.embedding = this.registerModule("embedding", new Embedding(n, layers * 2 * dim));
      if (config.initWeights === "zero") zero(this.embedding.weight);
    }
  }

  forward(prefix: Tensor): Tensor {
    const e = this.embedding.forward(prefix);
    if (!this.transform) return e;
    const y = this.transform.forward(e) as Tensor;
    e.dispose();
    return y;
  }
}
