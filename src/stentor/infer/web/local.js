// The playground's in-browser backend, written by `stentor export web`: the same interface as the
// page's server backend (config(), stream(path, body, signal) yielding OpenAI-shaped chunks), but the
// model runs in this tab on onnxruntime-web, with the tokenizer and the sampling in JavaScript.
// It also exposes window.stentor for scripts: ready, encode(text), decode(ids), generate(prompt, options).

import { StentorTokenizer, Vocab, setUnicodeTables } from "./tokenmonster.js";
import { Sampler, logprobs } from "./sampling.js";

const here = (path) => new URL(path, import.meta.url).href;
// The smallest module that uses a SIMD instruction: (func (result v128) (v128.const i32x4 0 0 0 0)).
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 22, 1, 20, 0,
  253, 12, ...new Array(16).fill(0), 11]);
const mb = (n) => `${(n / 2 ** 20).toFixed(1)} MB`;

let settings = null; // playground/config.json
let model = null; // {ort, session, tokenizer, info} once loaded
let loading = null;
let queue = Promise.resolve(); // one generation at a time: a session runs one request
let markReady, failReady;
const ready = new Promise((resolve, reject) => ([markReady, failReady] = [resolve, reject]));
ready.catch(() => {}); // a failed load is shown on the page; scripts awaiting `ready` still see it

async function download(path, bytes, progress) {
  const failed = (why) => new Error(`The download of ${path} ${why}. Reload the page to try again.`);
  let response;
  try {
    response = await fetch(here(`../${path}`));
  } catch (_) {
    throw failed("failed: the site cannot be reached");
  }
  if (!response.ok) throw failed(`failed (HTTP ${response.status})`);
  const reader = response.body.getReader();
  const data = new Uint8Array(bytes);
  let got = 0;
  for (;;) {
    let part;
    try {
      part = await reader.read();
    } catch (_) {
      throw failed(`stopped after ${mb(got)} of ${mb(bytes)}`);
    }
    if (part.done) break;
    if (got + part.value.length > bytes) throw failed(`is larger than the ${mb(bytes)} expected (a different file?)`);
    data.set(part.value, got);
    got += part.value.length;
    progress(got);
  }
  if (got !== bytes) throw failed(`stopped after ${mb(got)} of ${mb(bytes)}`);
  return data;
}

// The float32 tensors the graph refers to, from weights.bin and its manifest (stentor.export.web.split_weights):
// float32 as stored, int8 rows (or columns) times their channel's scale, or the transpose of another tensor.
function assemble(blob, manifest) {
  const out = new ArrayBuffer(manifest.bytes);
  const views = new Map();
  for (const t of manifest.tensors) {
    const [rows, cols] = t.shape.length === 1 ? [t.shape[0], 1] : t.shape;
    const dst = new Float32Array(out, t.offset, rows * cols);
    if (t.kind === "float32") {
      dst.set(new Float32Array(blob.buffer, blob.byteOffset + t.at, rows * cols));
    } else if (t.kind === "transpose") {
      const src = views.get(t.of); // [cols, rows]
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) dst[r * cols + c] = src[c * rows + r];
    } else {
      const q = new Int8Array(blob.buffer, blob.byteOffset + t.at, rows * cols);
      const byRow = t.kind === "int8_rows";
      const scales = new Float32Array(blob.buffer, blob.byteOffset + t.scales_at, byRow ? rows : cols);
      if (byRow) {
        for (let r = 0; r < rows; r++) for (let c = 0, s = scales[r]; c < cols; c++) dst[r * cols + c] = q[r * cols + c] * s;
      } else { // stored one output column per row: q[c * rows + r]
        for (let c = 0; c < cols; c++) for (let r = 0, s = scales[c]; r < rows; r++) dst[r * cols + c] = q[c * rows + r] * s;
      }
    }
    views.set(t.name, dst);
  }
  return new Uint8Array(out);
}

async function pickBackend() {
  const asked = new URLSearchParams(location.search).get("backend");
  if (asked && asked !== "wasm" && asked !== "webgpu") throw new Error(`?backend=${asked} is not wasm or webgpu.`);
  if (asked === "wasm") return "wasm";
  let adapter = null;
  try {
    adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
  } catch (_) {
    adapter = null;
  }
  if (adapter) return "webgpu";
  if (asked === "webgpu") throw new Error("This browser offers no WebGPU adapter; open the page without ?backend=webgpu.");
  return "wasm";
}

async function load(status) {
  const started = performance.now();
  if (typeof WebAssembly !== "object" || !WebAssembly.validate(SIMD_PROBE)) {
    throw new Error("This browser cannot run the model: it lacks WebAssembly SIMD (Chrome 91, Firefox 89 and " +
      "Safari 16.4 or newer have it).");
  }
  const local = settings.local;
  const files = local.files;
  let backend = await pickBackend();
  const ort = await import(here(backend === "webgpu" ? "../ort/ort.webgpu.min.mjs" : "../ort/ort.wasm.min.mjs"));
  ort.env.wasm.wasmPaths = here("../ort/");
  const asked = Number(new URLSearchParams(location.search).get("threads"));
  // Threads need SharedArrayBuffer, which browsers give only to cross-origin isolated pages (docs/web.md).
  ort.env.wasm.numThreads = crossOriginIsolated ? asked || Math.min(navigator.hardwareConcurrency || 1, 4) : 1;
  const total = files["model/weights.bin"];
  const [graph, blob, vocabBytes, tokenizerConfig, tables] = await Promise.all([
    download("model/model.onnx", files["model/model.onnx"], () => {}),
    download("model/weights.bin", total, (got) => status(`downloading the model\u2026 ${mb(got)} of ${mb(total)}`)),
    download("model/tokenizer.vocab", files["model/tokenizer.vocab"], () => {}),
    download("model/tokenizer_config.json", files["model/tokenizer_config.json"], () => {}),
    download("model/unicode.json", files["model/unicode.json"], () => {}),
  ]);
  status("starting the runtime\u2026");
  const text = new TextDecoder();
  setUnicodeTables(JSON.parse(text.decode(tables)));
  const tokenizer = StentorTokenizer.fromConfig(Vocab.fromBytes(vocabBytes, "tokenizer.vocab"),
    JSON.parse(text.decode(tokenizerConfig)));
  const externalData = [{ path: local.weights.location, data: assemble(blob, local.weights) }];
  const options = (provider) => ({ executionProviders: [provider], graphOptimizationLevel: "all", externalData });
  let session;
  try {
    session = await ort.InferenceSession.create(graph, options(backend));
  } catch (err) {
    if (backend !== "webgpu") throw new Error(`The runtime could not load the model: ${err.message}`);
    backend = "wasm"; // a WebGPU adapter that cannot run this graph: the CPU path of the same runtime
    session = await ort.InferenceSession.create(graph, options("wasm"));
  }
  const threads = backend === "wasm" ? ort.env.wasm.numThreads : 0;
  const info = { backend, threads, dtype: local.dtype, load_ms: Math.round(performance.now() - started),
    runtime: local.runtime };
  model = { ort, session, tokenizer, info };
  return info;
}

function ensureLoaded(status = () => {}) {
  if (!loading) {
    loading = load(status);
    loading.then(markReady, failReady);
  }
  return loading;
}

// The prompt as token ids: text with <s> first, or the chat messages in the card's template.
function promptIds(path, body) {
  const tokenizer = model.tokenizer;
  if (path.endsWith("chat/completions")) {
    const fmt = settings.local.chat_format;
    if (!fmt) throw new Error("This model's tokenizer has no chat template the page can use.");
    let text = "";
    for (const m of body.messages) {
      const role = fmt.roles[m.role];
      if (!role) throw new Error(`A chat message has the role ${JSON.stringify(m.role)}; use system, user or assistant.`);
      text += role.prefix + m.content + role.suffix;
    }
    return tokenizer.encode(text + fmt.generation_prompt, false);
  }
  if (typeof body.prompt !== "string") throw new Error("The prompt must be text.");
  const ids = tokenizer.encode(body.prompt, true);
  if (!ids.length && tokenizer.bosTokenId !== null) ids.push(tokenizer.bosTokenId);
  if (!ids.length) throw new Error("The prompt is empty and the tokenizer has no <s> token; type some text.");
  return ids;
}

function params(body) {
  const d = settings.defaults;
  const pick = (name, fallback) => (body[name] === undefined || body[name] === null ? fallback : Number(body[name]));
  return {
    temperature: pick("temperature", d.temperature),
    top_p: pick("top_p", d.top_p),
    top_k: pick("top_k", 0),
    min_p: body.min_p === undefined || body.min_p === null ? null : Number(body.min_p),
    repetition_penalty: pick("repetition_penalty", d.repetition_penalty),
    max_new_tokens: pick("max_tokens", pick("max_new_tokens", d.max_tokens)),
    seed: body.seed === undefined || body.seed === null ? null : Number(body.seed),
    stop_at_eos: body.stop_at_eos !== false, // false: exactly max_new_tokens tokens (benchmarks)
  };
}

// Keep the page drawing: a model step is synchronous work, and awaiting it alone never lets a frame in.
const channel = new MessageChannel();
const nextTask = () => new Promise((resolve) => {
  channel.port1.onmessage = () => resolve();
  channel.port2.postMessage(0);
});

// Token steps {id, logprob, top} for one prompt, with the KV cache kept in onnxruntime tensors.
async function* steps(ids, p, signal) {
  const { ort, session } = model;
  const local = settings.local;
  const context = settings.context;
  if (ids.length >= context) ids = ids.slice(ids.length - (context - Math.min(p.max_new_tokens, context >> 1)));
  const budget = Math.min(p.max_new_tokens, context - ids.length);
  const sampler = new Sampler(p, settings.vocab_size);
  sampler.see(ids);
  const shape = [1, local.kv_heads, 0, local.head_dim];
  let past = [];
  for (let i = 0; i < local.layers; i++) {
    for (const kind of ["key", "value"]) past.push([`past_key_values.${i}.${kind}`, new ort.Tensor("float32", new Float32Array(0), shape)]);
  }
  const int64 = (values) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), [1, values.length]);
  let input = ids;
  let done = 0;
  let yielded = performance.now();
  while (done < budget && !signal.aborted) {
    const start = done === 0 ? 0 : ids.length + done - 1;
    const feeds = { input_ids: int64(input), attention_mask: int64(new Array(start + input.length).fill(1)),
      position_ids: int64(input.map((_, k) => start + k)) };
    for (const [name, tensor] of past) feeds[name] = tensor;
    const out = await session.run(feeds);
    past = past.map(([name]) => [name, out[name.replace("past_key_values", "present")]]);
    const v = settings.vocab_size;
    const logits = out.logits.data.subarray((input.length - 1) * v, input.length * v);
    const id = sampler.choose(logits);
    sampler.see([id]);
    done += 1;
    input = [id];
    const eos = p.stop_at_eos && local.eos_token_ids.includes(id);
    yield { id, ...logprobs(logits, id, 5), finish: eos ? "stop" : done === budget ? "length" : null };
    if (eos) return;
    if (performance.now() - yielded > 12) {
      await nextTask();
      yielded = performance.now();
    }
  }
}

// One request in OpenAI's streamed shape, as the page's server backend yields it.
async function* completion(path, body, signal) {
  await ensureLoaded();
  const chat = path.endsWith("chat/completions");
  const p = params(body);
  const ids = promptIds(path, body);
  const tokenizer = model.tokenizer;
  const stream = tokenizer.streamingDecoder(true);
  const piece = (id) => tokenizer.tokenPiece(id);
  let finish = null;
  for await (const step of steps(ids, p, signal)) {
    const text = stream.push([step.id]);
    finish = step.finish; // set on the last step only
    if (chat) {
      const content = [{ id: step.id, token: piece(step.id), logprob: step.logprob,
        top_logprobs: step.top.map(([i, lp]) => ({ token: piece(i), logprob: lp })) }];
      yield { choices: [{ delta: { content: text }, logprobs: { content }, finish_reason: null }] };
    } else {
      const top = Object.fromEntries(step.top.map(([i, lp]) => [piece(i), lp]));
      yield { choices: [{ text, logprobs: { tokens: [piece(step.id)], token_ids: [step.id],
        token_logprobs: [step.logprob], top_logprobs: [top] }, finish_reason: null }] };
    }
  }
  const rest = stream.flush();
  if (signal.aborted) return;
  yield chat ? { choices: [{ delta: { content: rest }, finish_reason: finish || "length" }] }
    : { choices: [{ text: rest, finish_reason: finish || "length" }] };
}

// Runs after the previous request ends; yields its chunks as they come.
async function* serialized(path, body, signal) {
  let release;
  const previous = queue;
  queue = new Promise((resolve) => (release = resolve));
  try {
    await previous;
    yield* completion(path, body, signal);
  } finally {
    release();
  }
}

window.stentorBackend = {
  async config() {
    const response = await fetch(here("config.json"));
    if (!response.ok) throw new Error(`The page's settings did not load (HTTP ${response.status}). Reload to try again.`);
    settings = await response.json();
    return settings;
  },
  load: (status) => ensureLoaded(status),
  stream: serialized,
};

window.stentor = {
  ready, // resolves to {backend, threads, dtype, load_ms, runtime} once the model is loaded
  // Token ids of a string (added tokens such as </s> written in it become theirs), or of raw bytes
  // (a Uint8Array, which may hold invalid UTF-8: TokenMonster ids only); <s> first unless add_special_tokens is false.
  async encode(input, options = {}) {
    await ready;
    const tokenizer = model.tokenizer;
    const special = options.add_special_tokens !== false;
    if (!(input instanceof Uint8Array)) return tokenizer.encode(String(input), special);
    const bos = special && tokenizer.addBos && tokenizer.bosTokenId !== null ? [tokenizer.bosTokenId] : [];
    return [...bos, ...tokenizer.vocab.encode(input)];
  },
  async decode(ids, options = {}) {
    await ready;
    return model.tokenizer.decode(ids, Boolean(options.skip_special_tokens));
  },
  // {text, ids} of the completion (ids: the new tokens only); options as the API's fields.
  async generate(prompt, options = {}) {
    await ready;
    const body = { ...options, prompt };
    let text = "";
    const ids = [];
    for await (const chunk of serialized("v1/completions", body, new AbortController().signal)) {
      const choice = chunk.choices[0];
      text += choice.text;
      if (choice.logprobs) ids.push(...choice.logprobs.token_ids);
    }
    return { text, ids };
  },
};
