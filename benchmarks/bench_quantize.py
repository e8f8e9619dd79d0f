"""Quantization: file size, decode speed and held-out perplexity/bpb of int8 / int8-dynamic / int4 vs float32.

Perplexity deltas of a random-init model mean nothing, so without --model the script first trains
a Stentor2-shaped preset for --train-seconds on TinyStories (../shared/data/tinystories, the
official-like TokenMonster vocabulary) and caches it under --work. Held-out text is the last 10%
of the paragraphs, never trained on. Decode speed: HF `generate`, greedy, batch 1, a fixed number
of new tokens (no EOS stop), methods interleaved over --repeats rounds, best round kept, wall and
process-CPU time (CPU time is the steadier measure on a shared machine).
Targets (issue 7): int8 perplexity within 1% and >= 1.5x decode speed; int4 perplexity within 5%.

    python benchmarks/bench_quantize.py                          # stentor2-mini, 90 s of training
    python benchmarks/bench_quantize.py --preset stentor2-12m --train-seconds 300 --threads 2
    python benchmarks/bench_quantize.py --model runs/mini/final  # any trained model dir with tokenizer
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINYSTORIES = SHARED / "data/tinystories/tinystories_validation_head.txt"
VOCABS = {4096: "english-4000-strict-cap2-oracle.vocab", 8064: "english-8000-strict-cap1-oracle.vocab"}


def paragraphs() -> tuple[list[str], list[str]]:
    """TinyStories paragraphs: the first 90% to train on, the last 10% held out."""
    docs = [p.strip() for p in TINYSTORIES.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    cut = int(len(docs) * 0.9)
    return docs[:cut], docs[cut:]


def quick_model(work: Path, preset: str, seconds: float, seed: int = 0, tag: str = "", **arch) -> Path:
    """Train `preset` (with `arch` changes) on the TinyStories paragraphs for `seconds` (plain AdamW); save it
    with its tokenizer. Cached: an existing directory for the same preset/tag/seconds/seed is reused.
    """
    from tqdm import tqdm

    from stentor.eval.perplexity import encode_corpus
    from stentor.model import get_preset
    from stentor.model.build import build_model, save_model_dir
    from stentor.tokenizer import use_fast_backend
    from stentor.tokenizer.hf import tokenizer_from_vocab

    out = work / f"{preset}{tag}-{int(seconds)}s-seed{seed}"
    if (out / "model.safetensors").is_file():
        return out
    cfg = get_preset(preset).replace(**arch)
    tokenizer = tokenizer_from_vocab(SHARED / "tokenmonster/vocabs" / VOCABS[cfg.vocab_size])
    use_fast_backend(tokenizer.vocab)
    train_docs, _ = paragraphs()
    stream = torch.tensor(encode_corpus(tokenizer, train_docs).ids)
    model = build_model(cfg, seed=seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    block, batch = 128, 16
    start, step, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    bar = tqdm(desc=f"training {preset} for {seconds:.0f}s", unit="step")
    while time.perf_counter() - start < seconds:
        offsets = torch.randint(0, len(stream) - block - 1, (batch,), generator=generator)
        x = torch.stack([stream[o : o + block] for o in offsets.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 30)
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update()
    bar.close()
    save_model_dir(model.eval(), cfg, out)
    tokenizer.save_pretrained(str(out))
    print(f"trained {preset}: {step} steps x {batch * block} tokens in {seconds:.0f}s, last loss {loss.item():.3f}"
          + (" (0 s: random init; perplexity deltas are meaningless, speed is valid)" if step == 0 else ""))
    return out


def held_out_scores(model, tokenizer, max_tokens: int) -> tuple[float, float]:
    """(perplexity, bits per byte) on the held-out paragraphs, 128-token blocks."""
    from stentor.eval.perplexity import encode_corpus, score_stream

    _, held_out = paragraphs()
    corpus = encode_corpus(tokenizer, held_out, max_tokens=max_tokens)
    nats, scored = score_stream(model, corpus.ids, block_size=128, stride=128, progress=False)
    return math.exp(nats / scored), nats / math.log(2) / corpus.text_bytes


def decode_seconds(model, new_tokens: int) -> tuple[float, float]:
    """(wall, process CPU) seconds to generate `new_tokens` greedily; CPU time is what other processes disturb least."""
    prompt = torch.tensor([[model.config.bos_token_id, 100, 200, 300]])
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            repetition_penalty=1.0, eos_token_id=None, pad_token_id=0,
        )
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a trained float model dir with its tokenizer (skips training)")
    parser.add_argument("--preset", default="stentor2-mini")
    parser.add_argument("--train-seconds", type=float, default=90)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stentor-bench"))
    parser.add_argument("--methods", nargs="+", default=["int8", "int8-dynamic", "int4"])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval-tokens", type=int, default=30_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from stentor.eval.loading import load_model, load_tokenizer
    from stentor.export.quantize import quantize_dir
    from stentor.model.quantized import load_quantized

    hf_logging.disable_progress_bar()
    model_dir = args.model or quick_model(args.work, args.preset, args.train_seconds)
    tokenizer = load_tokenizer(str(model_dir))
    models, rows = {}, {}
    for method in ["float32", *args.methods]:
        if method == "float32":
            path, model = model_dir, load_model(str(model_dir))
        else:
            path = quantize_dir(model_dir, args.work / f"{model_dir.name}-{method}", method, args.group_size)
            model = load_quantized(path)
        models[method] = model
        rows[method] = [(path / "model.safetensors").stat().st_size, *held_out_scores(model, tokenizer, args.eval_tokens)]
    # Speed: methods interleaved in each round, best round kept, so load changes on a shared machine hit all alike.
    best = {method: (float("inf"), float("inf")) for method in models}
    for _ in range(args.repeats):
        for method, model in models.items():
            wall, cpu = decode_seconds(model, args.new_tokens)
            best[method] = (min(best[method][0], wall), min(best[method][1], cpu))
    base_size, base_ppl, _ = rows["float32"]
    base_wall, base_cpu = best["float32"]
    print(f"\nmodel {model_dir} | torch threads {args.threads} | {args.new_tokens} new tokens, batch 1, greedy, HF generate")
    print(f"{'method':<13}{'file MiB':>9}{'size x':>8}{'ppl':>10}{'ppl delta':>11}{'bpb':>8}"
          f"{'tok/s':>8}{'wall x':>8}{'CPU tok/s':>10}{'CPU x':>7}")
    for method, (size, ppl, bpb) in rows.items():
        wall, cpu = best[method]
        print(
            f"{method:<13}{size / 2**20:>9.2f}{size / base_size:>8.3f}{ppl:>10.3f}{(ppl / base_ppl - 1):>+11.2%}"
            f"{bpb:>8.4f}{args.new_tokens / wall:>8.1f}{base_wall / wall:>8.2f}{args.new_tokens / cpu:>10.1f}"
            f"{base_cpu / cpu:>7.2f}"
        )


if __name__ == "__main__":
    main()
