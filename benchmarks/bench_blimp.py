"""BLiMP scoring speed: our length-sorted batched scorer vs a naive one-sentence-at-a-time loop.

Both run in this process on the same model, sentences and threads. The naive scorer is
timed on a subset (it is slow); the batched one on `--sentences` sentences spread evenly
over all of BLiMP (so the length mix is BLiMP's), or on everything with `--full`.
Prints sentences/s for each, the speed-up ratio, and the projected time for all 134,000
sentences (67,000 pairs); the target is <= 180 s for stentor2-12m on a 2-core CPU.

    python benchmarks/bench_blimp.py                      # ~8k sentences, stentor2-12m, random init
    python benchmarks/bench_blimp.py --full               # the real thing
    python benchmarks/bench_blimp.py --data DIR --vocab PATH.vocab
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from stentor.eval.blimp import load_blimp, sentence_logprobs
from stentor.model import get_preset
from stentor.model.build import build_model

SHARED = Path(os.environ.get("STENTOR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FULL = 134_000
TARGET_S = 180


def naive_logprobs(model, tokenizer, sentences):
    """The obvious loop: one forward per sentence, full log_softmax, gather, sum."""
    out = []
    with torch.inference_mode():
        for s in sentences:
            ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(s, add_special_tokens=False).input_ids]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            out.append(logp[:-1].gather(-1, ids[0, 1:, None]).sum().item())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "data" / "blimp"), help="dir with the 67 BLiMP .jsonl files")
    ap.add_argument("--vocab", default=str(SHARED / "tokenmonster" / "vocabs" / "english-8000-strict-cap1-oracle.vocab"))
    ap.add_argument("--preset", default="stentor2-12m")
    ap.add_argument("--sentences", type=int, default=8000, help="batched-scorer sample size")
    ap.add_argument("--naive", type=int, default=300, help="naive-scorer sample size")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--full", action="store_true", help="score all 134,000 sentences with the batched scorer")
    args = ap.parse_args()

    from stentor.tokenizer.hf import tokenizer_from_vocab

    tokenizer = tokenizer_from_vocab(args.vocab)
    model = build_model(get_preset(args.preset), seed=0).eval()
    sentences = [s for p in load_blimp(args.data) for pair in p.pairs for s in pair]
    sample = sentences if args.full else sentences[:: max(1, len(sentences) // args.sentences)][: args.sentences]
    naive_sample = sentences[:: len(sentences) // args.naive][: args.naive]
    n_tokens = sum(len(ids) + 1 for ids in tokenizer(sample, add_special_tokens=False).input_ids)
    print(f"model {args.preset} ({sum(p.numel() for p in model.parameters()):,} params), torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"sample: {len(sample):,} sentences, {n_tokens / len(sample):.1f} tokens each with BOS")

    t = time.perf_counter()
    naive = naive_logprobs(model, tokenizer, naive_sample)
    naive_rate = len(naive_sample) / (time.perf_counter() - t)

    t = time.perf_counter()
    sentence_logprobs(model, tokenizer, sample, batch_size=args.batch_size)
    fast_s = time.perf_counter() - t
    fast_rate = len(sample) / fast_s

    check = sentence_logprobs(model, tokenizer, naive_sample, batch_size=args.batch_size, progress=False)
    max_diff = max(abs(a - b) for a, b in zip(naive, check))
    projected = FULL / fast_rate
    print(f"naive   : {naive_rate:8.1f} sentences/s  ({len(naive_sample)} sentences), full run would take {FULL / naive_rate:,.0f} s")
    print(f"batched : {fast_rate:8.1f} sentences/s  ({len(sample):,} sentences in {fast_s:.1f} s, batch {args.batch_size})")
    print(f"ratio batched/naive: {fast_rate / naive_rate:.1f}x   max |score difference| {max_diff:.2e} nats")
    verdict = "meets" if projected <= TARGET_S else "misses"
    print(f"projected full BLiMP (134,000 sentences): {projected:,.0f} s -> {verdict} the {TARGET_S} s target")


if __name__ == "__main__":
    main()
