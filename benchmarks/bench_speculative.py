"""Speculative decoding where it is meant to pay: a Stentor draft for a target >= 8x its size, same run.

Target and draft share one TokenMonster vocabulary and are trained for --train-seconds each on the same
TinyStories paragraphs (bench_quantize.quick_model; a random-init pair accepts almost nothing). Default target:
a ~107M Llama-shaped model (hidden 768, 16 layers, FFN 2048, 12 heads / 4 KV heads; 8.7x stentor2-12m, the draft).
On a CPU the target needs far more than --train-seconds 150 to out-predict its draft (see docs/deployment.md, "Speculative decoding").
Greedy: speculative tokens must equal target-only greedy (asserted). Sampled: the card's settings.
Baseline: the same engine decoding the target alone (--engine native: the compiled runtime, the default
behind `stentor generate`; --engine torch: HF `generate` with the torch pair), batch 1, fixed new tokens,
no EOS stop; speedups by wall time and by process CPU time (steadier on a shared machine).

    python benchmarks/bench_speculative.py
    python benchmarks/bench_speculative.py --target runs/big/final --draft runs/small/final --k 6
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench_quantize import paragraphs, quick_model


def target_only(model, prompt: list[int], new_tokens: int, sample: bool) -> tuple[list[int], float, float]:
    """Target-alone HF generate: (new tokens, wall seconds, process CPU seconds)."""
    from stentor.model.presets import SAMPLING_DEFAULTS

    # explicit: a saved generation_config.json carries the card's penalty, which greedy here must not get
    settings = dict(do_sample=True, top_k=0, **SAMPLING_DEFAULTS) if sample else dict(do_sample=False, repetition_penalty=1.0)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            eos_token_id=None, pad_token_id=0, **settings,
        )
    return out[0, len(prompt) :].tolist(), time.perf_counter() - start, time.process_time() - cpu


def bench_params(new_tokens: int, sample: bool, seed: int):
    """Greedy without the card's penalty, or the card's sampling with top-k off; a fixed length, no EOS stop."""
    from stentor.infer.sampling import SamplingParams

    if sample:
        return SamplingParams(top_k=0, seed=seed, max_new_tokens=new_tokens, stop_at_eos=False)
    return SamplingParams(greedy=True, repetition_penalty=1.0, max_new_tokens=new_tokens, stop_at_eos=False)


def engine_only(engine, prompt: list[int], new_tokens: int, sample: bool, seed: int) -> tuple[list[int], float, float]:
    """Target-alone decoding on the compiled runtime: (new tokens, wall seconds, process CPU seconds)."""
    start, cpu = time.perf_counter(), time.process_time()
    tokens = [step.tokens[0] for step in engine.generate([prompt], bench_params(new_tokens, sample, seed))]
    return tokens, time.perf_counter() - start, time.process_time() - cpu


BIG = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=12, num_key_value_heads=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, help="trained target model dir (default: train stentor2-mini)")
    parser.add_argument("--draft", type=Path, help="trained draft model dir with the same tokenizer")
    parser.add_argument("--train-seconds", type=float, default=90)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stentor-bench"))
    parser.add_argument("--k", nargs="+", default=["2", "4", "adaptive"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", choices=["native", "torch"], default="native",
                        help="native: the compiled runtime for both models and the baseline; torch: HF models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from stentor.eval.loading import load_model, load_tokenizer
    from stentor.infer.speculative import SpeculativeStats, check_compatible, speculative_generate

    hf_logging.disable_progress_bar()
    target_dir = args.target or quick_model(args.work, "stentor2-12m", args.train_seconds, tag="-107m", **BIG)
    draft_dir = args.draft or quick_model(args.work, "stentor2-12m", args.train_seconds)
    target, draft = load_model(str(target_dir)), load_model(str(draft_dir))
    tokenizer = load_tokenizer(str(target_dir))
    check_compatible(target, draft, tokenizer, load_tokenizer(str(draft_dir)))
    sizes = [sum(p.numel() for p in m.parameters()) for m in (target, draft)]
    if args.engine == "native":
        from stentor.infer.native import NativeEngine, Weights

        target, draft = (NativeEngine(Weights.from_dir(d), threads=args.threads) for d in (target_dir, draft_dir))
    _, held_out = paragraphs()
    prompts = [tokenizer(text)["input_ids"][:24] for text in held_out[: args.prompts]]
    print(f"target {target_dir.name} ({sizes[0]:,} params), draft {draft_dir.name} ({sizes[1]:,} params, "
          f"{sizes[0] / sizes[1]:.1f}x smaller), {args.prompts} held-out prompts x {args.new_tokens} new tokens, "
          f"engine {args.engine}, threads {args.threads}")

    def alone(prompt: list[int], sample: bool, seed: int = 0):
        if args.engine == "native":
            return engine_only(target, prompt, args.new_tokens, sample, seed)
        return target_only(target, prompt, args.new_tokens, sample)

    print(f"{'mode':<8}{'k':>9}{'accept':>9}{'tok/call':>10}{'tok/s':>8}{'base':>8}{'wall x':>8}{'CPU x':>7}")
    for mode in ("greedy", "sampled"):
        base_wall = base_cpu = 0.0
        baseline = []
        for i, prompt in enumerate(prompts):
            tokens, wall, cpu = alone(prompt, mode == "sampled", i)
            base_wall, base_cpu = base_wall + wall, base_cpu + cpu
            baseline.append(tokens)
        for k in args.k:
            k_value = k if k == "adaptive" else int(k)
            total, cpu = SpeculativeStats(), 0.0
            for i, prompt in enumerate(prompts):
                params = bench_params(args.new_tokens, mode == "sampled", i)
                start = time.process_time()
                result = speculative_generate(target, draft, prompt, k_value, params=params)
                cpu += time.process_time() - start
                if mode == "greedy":
                    assert result.tokens == baseline[i], "greedy mismatch"
                for name in ("new_tokens", "target_calls", "proposed", "accepted", "seconds"):
                    setattr(total, name, getattr(total, name) + getattr(result.stats, name))
            print(
                f"{mode:<8}{k:>9}{total.acceptance_rate:>9.1%}{total.tokens_per_target_call:>10.2f}"
                f"{total.tokens_per_second:>8.1f}{total.new_tokens / base_wall:>8.1f}"
                f"{base_wall / total.seconds:>8.2f}{base_cpu / cpu:>7.2f}"
            )


if __name__ == "__main__":
    main()
