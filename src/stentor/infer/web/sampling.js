// The card's sampling in the browser, in the order and arithmetic of stentor's LogitsPipeline (and
// Hugging Face's processors): repetition penalty on every token of prompt + text, then temperature,
// top-k, top-p, min-p, softmax and one draw. Temperature 0 takes the arg-max after the penalty.

// A small seeded generator (SplitMix32 into xorshift128+ style state): the same seed gives the same
// text in this page; it does not reproduce torch's stream.
export function rng(seed) {
  let s = (seed === undefined || seed === null ? Math.floor(Math.random() * 2 ** 32) : Number(seed)) >>> 0;
  const next32 = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  return () => (next32() * 2 ** 21 + (next32() >>> 11)) / 2 ** 53; // 53 random bits in [0, 1)
}

export function checkParams(p) {
  const fail = (name, rule) => {
    throw new Error(`invalid sampling setting ${name}=${p[name]}: ${rule}`);
  };
  if (!Number.isFinite(p.temperature) || p.temperature < 0) fail("temperature", "must be 0 (greedy) or more");
  if (!(p.top_p > 0 && p.top_p <= 1)) fail("top_p", "must be in (0, 1]; use 1 to switch top-p off");
  if (!Number.isInteger(p.top_k) || p.top_k < 0) fail("top_k", "must be an integer >= 0; use 0 to switch top-k off");
  if (p.min_p !== null && !(p.min_p >= 0 && p.min_p <= 1)) fail("min_p", "must be in [0, 1]");
  if (!(p.repetition_penalty > 0) || !Number.isFinite(p.repetition_penalty)) fail("repetition_penalty", "must be > 0");
  if (!Number.isInteger(p.max_new_tokens) || p.max_new_tokens < 1) fail("max_new_tokens", "must be an integer >= 1");
}

function softmaxInPlace(x) {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += x[i] = Math.exp(x[i] - max);
  for (let i = 0; i < x.length; i++) x[i] /= sum;
  return x;
}

// The log-probabilities of the raw logits (what the page shows for a token), the chosen one and the top few.
export function logprobs(logits, chosen, top) {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const norm = max + Math.log(sum);
  const best = [];
  for (let i = 0; i < logits.length; i++) {
    if (best.length < top || logits[i] > logits[best[best.length - 1]]) {
      best.push(i);
      best.sort((a, b) => logits[b] - logits[a]);
      if (best.length > top) best.pop();
    }
  }
  return { logprob: logits[chosen] - norm, top: best.map((i) => [i, logits[i] - norm]) };
}

export class Sampler {
  constructor(params, vocabSize) {
    checkParams(params);
    this.p = params;
    this.vocabSize = vocabSize;
    this.random = rng(params.seed);
    this.seen = new Uint8Array(vocabSize);
  }

  see(ids) {
    for (const id of ids) if (id >= 0 && id < this.vocabSize) this.seen[id] = 1;
  }

  // The next token from one row of logits (length = the model's vocabulary).
  choose(logits) {
    const scores = this.penalize(logits);
    if (this.p.temperature === 0) {
      let arg = 0;
      for (let i = 1; i < this.vocabSize; i++) if (scores[i] > scores[arg]) arg = i; // the first maximum, as torch.argmax
      return arg;
    }
    const probs = softmaxInPlace(this.warp(scores));
    let u = this.random();
    for (let i = 0; i < this.vocabSize; i++) {
      u -= probs[i];
      if (u < 0 && probs[i] > 0) return i;
    }
    for (let i = this.vocabSize - 1; i >= 0; i--) if (probs[i] > 0) return i; // rounding left u just above 0
    return 0;
  }

  // HF's repetition penalty over the tokens seen so far: a new Float64Array.
  penalize(logits) {
    const penalty = this.p.repetition_penalty;
    const scores = new Float64Array(this.vocabSize);
    for (let i = 0; i < this.vocabSize; i++) {
      const l = logits[i];
      scores[i] = this.seen[i] && penalty !== 1 ? (l < 0 ? l * penalty : l / penalty) : l;
    }
    return scores;
  }

  // Temperature, top-k, top-p and min-p on penalized scores, in place: removed tokens become -Infinity.
  warp(scores) {
    const p = this.p;
    const v = this.vocabSize;
    if (p.temperature !== 1) for (let i = 0; i < v; i++) scores[i] /= p.temperature;
    if (p.top_k && p.top_k < v) {
      const kth = Float64Array.from(scores).sort()[v - p.top_k];
      for (let i = 0; i < v; i++) if (scores[i] < kth) scores[i] = -Infinity;
    }
    if (p.top_p < 1) {
      // HF removes the longest low end of the ascending order whose mass is <= 1 - top_p: what stays is the
      // fewest top tokens holding >= top_p. Only tokens above a cutoff can be among them, so only those are
      // sorted (a few dozen, not the vocabulary: a full sort cost more than the model step). Tokens tied
      // with the last one kept are all kept.
      const probs = softmaxInPlace(Float64Array.from(scores));
      let top = 0;
      for (let i = 1; i < v; i++) if (probs[i] > probs[top]) top = i;
      let cutoff = probs[top] / 64;
      let candidates;
      for (;;) {
        candidates = [];
        let mass = 0;
        for (let i = 0; i < v; i++) if (probs[i] >= cutoff) (candidates.push(i), (mass += probs[i]));
        if (mass >= p.top_p || cutoff === 0) break;
        cutoff = cutoff > 1e-300 ? cutoff / 64 : 0;
      }
      candidates.sort((a, b) => probs[b] - probs[a]);
      let held = 0;
      let last = 0;
      while (last < candidates.length - 1 && (held += probs[candidates[last]]) < p.top_p) last++;
      const kept = scores[candidates[last]];
      for (let i = 0; i < v; i++) if (scores[i] < kept) scores[i] = -Infinity;
    }
    if (p.min_p !== null && p.min_p > 0) {
      const probs = softmaxInPlace(Float64Array.from(scores));
      let arg = 0;
      for (let i = 1; i < v; i++) if (probs[i] > probs[arg]) arg = i;
      const threshold = p.min_p * probs[arg];
      for (let i = 0; i < v; i++) if (probs[i] < threshold && i !== arg) scores[i] = -Infinity;
    }
    return scores;
  }
}
