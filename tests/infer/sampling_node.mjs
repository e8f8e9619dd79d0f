// Node driver for test_sampling_js.py: reads {"cases": [...], "draws": {...}} on stdin, writes the page sampler's
// answers: per case the tokens warp() keeps and the greedy choice, and a seeded draw histogram.
import { readFileSync } from "node:fs";
import { Sampler } from "../../src/stentor/infer/web/sampling.js";

const request = JSON.parse(readFileSync(0, "utf-8"));
const cases = request.cases.map(({ logits, seen, params }) => {
  const sampler = new Sampler(params, logits.length);
  sampler.see(seen);
  const scores = sampler.warp(sampler.penalize(Float64Array.from(logits)));
  const kept = [];
  scores.forEach((s, i) => s > -Infinity && kept.push(i));
  const greedy = new Sampler({ ...params, temperature: 0 }, logits.length);
  greedy.see(seen);
  return { kept, greedy: greedy.choose(Float64Array.from(logits)) };
});
const { logits, params, count } = request.draws;
const histogram = new Array(logits.length).fill(0);
const sampler = new Sampler(params, logits.length);
for (let i = 0; i < count; i++) histogram[sampler.choose(Float64Array.from(logits))] += 1;
const again = new Sampler(params, logits.length);
const repeat = Array.from({ length: 50 }, () => again.choose(Float64Array.from(logits)));
const first = new Sampler(params, logits.length);
process.stdout.write(JSON.stringify({ cases, histogram, seeded: Array.from({ length: 50 }, () => first.choose(Float64Array.from(logits))), repeat }));
