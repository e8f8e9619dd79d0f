"""Training throughput: stentor's trainer vs a plain HF-Trainer-style loop, same model, same data, one run.

    python benchmarks/bench_train.py                       # stentor2-mini, 256-token blocks, CPU
    python benchmarks/bench_train.py --mixed-precision no --no-compile   # both sides fp32, eager: the loop itself
    python benchmarks/bench_train.py --preset stentor2-12m --block-size 1024 --batch-size 32 --mixed-precision fp16

The baseline is the straightforward loop: collate (with attention mask) -> model(**batch).loss.backward()
-> optimizer.step() -> zero_grad(), with torch's default AdamW. Ours is `Trainer.train_step` on the
same blocks (it also clips gradients and checks them for non-finite values every step), with the
precision the trainer would use (default: bf16 autocast where the CPU has native bf16 matmuls, as
Zen 4 / Sapphire Rapids do; fp32 otherwise). The two are measured in alternating rounds so that load
from other processes hits both alike; the printed ratio is the median of the per-round ratios. MFU uses the card-style FLOPs per token from
`stentor.train.plan.flops_per_token` (6N + attention term) and is printed when a peak is known.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_corpus(path: Path, docs: int, words: int, seed: int = 0) -> None:
    """Zipf-distributed made-up words: a realistic token distribution without any download."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(words)]
    weights = [1 / (i + 1) for i in range(words)]
    with open(path, "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choices(vocab, weights, k=rng.randint(100, 400)))}) + "\n")


def make_tokenizer(out_dir: Path, corpus: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = (json.loads(line)["text"] for line in corpus.read_text().splitlines())
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["</s>", "<s>", "<unk>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="</s>").save_pretrained(str(out_dir))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="stentor2-mini")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"],
                   help="our trainer's precision (default: fp16 on CUDA, bf16 on CPUs with native bf16, else no)")
    p.add_argument("--t4-recipe", action=argparse.BooleanOptionalAction, default=None,
                   help="the card's FP32 norms/critical layers (default: on for fp16 only; bf16 does not need it)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile our model (precision.compile; the compile time is spent in warm-up, untimed)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (GPUs in our table are known)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mixed_precision is None:
        native_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        args.mixed_precision = "fp16" if torch.cuda.is_available() else "bf16" if native_bf16 else "no"
    if args.t4_recipe is None:
        args.t4_recipe = args.mixed_precision == "fp16"

    from stentor.data import collate_blocks
    from stentor.model.build import build_model
    from stentor.model.presets import get_preset
    from stentor.train.config import load_config
    from stentor.train.plan import peak_flops
    from stentor.train.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    make_corpus(work / "corpus.jsonl", docs=400, words=6000)
    vocab = get_preset(args.preset).vocab_size
    make_tokenizer(work / "tokenizer", work / "corpus.jsonl", vocab_size=vocab - 8)
    overrides = [
        f"model.preset={args.preset}", f"tokenizer={work / 'tokenizer'}",
        f"data.sources=[{{path: {work / 'corpus.jsonl'}}}]", "data.val_docs=4", "data.source_token_budget=null",
        "prepare_workers=1", f"batch.block_size={args.block_size}", f"batch.per_device_train_batch_size={args.batch_size}",
        "batch.gradient_accumulation_steps=1", "schedule.token_budget=null", "schedule.warmup_ratio=0",
        f"precision.mixed_precision={args.mixed_precision}", f"precision.compile={str(args.compile).lower()}",
        f"precision.t4_recipe={str(args.t4_recipe).lower()}",
        "checkpoint.save_every_minutes=null",
    ]
    trainer = Trainer(load_config(None, overrides), work / "run")
    blocks, bs = trainer.train_blocks, args.batch_size
    n_batches = len(blocks) // bs
    tokens_per_step = bs * args.block_size

    # The baseline: the same architecture and data, the plain way.
    device = trainer.acc.device
    model = build_model(trainer.mcfg, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    model.train()

    def plain(step: int) -> None:
        i = step % n_batches
        batch = collate_blocks([blocks[j] for j in range(i * bs, (i + 1) * bs)], trainer.mcfg.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()

    def ours(step: int) -> None:
        i = step % n_batches
        trainer.train_step([trainer.feeder.batch(range(i * bs, (i + 1) * bs))])

    def timed(fn, start: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(start, start + args.steps):
            fn(s)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.steps * tokens_per_step / (time.perf_counter() - t0)

    for fn in (plain, ours):  # warm up: allocator, oneDNN/cuBLAS plans, torch.compile
        for s in range(3):
            fn(s)
    rates = {"plain": [], "ours": []}
    for r in range(args.rounds):
        rates["plain"].append(timed(plain, r * args.steps))
        rates["ours"].append(timed(ours, r * args.steps))
    plain_tps, ours_tps = statistics.median(rates["plain"]), statistics.median(rates["ours"])
    ratio = statistics.median(o / b for o, b in zip(rates["ours"], rates["plain"]))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name, args.peak_tflops)
    flops = trainer.plan.flops_per_token
    print(f"device {name}, torch threads {torch.get_num_threads()}, preset {args.preset} "
          f"({trainer.plan.params.total:,} params), batch {bs} x {args.block_size} tokens; plain loop fp32, "
          f"stentor {args.mixed_precision}{' + T4 recipe' if args.t4_recipe else ''}"
          f"{', compiled' if args.compile else ''}")
    print(f"plain loop     {plain_tps:>10,.0f} tokens/s   rounds: {', '.join(f'{x:,.0f}' for x in rates['plain'])}")
    print(f"stentor train  {ours_tps:>10,.0f} tokens/s   rounds: {', '.join(f'{x:,.0f}' for x in rates['ours'])}")
    print(f"FLOPs/token {flops:,} (6N + 12 x layers x hidden x block): {ours_tps * flops / 1e9:.2f} GFLOP/s ours, "
          f"{plain_tps * flops / 1e9:.2f} GFLOP/s plain" + (f"; MFU ours {100 * ours_tps * flops / peak:.1f}%" if peak else ""))
    print(f"ratio stentor/plain: {ratio:.2f}x (median of per-round ratios; target >= 1.3x on CPU)")


if __name__ == "__main__":
    main()
