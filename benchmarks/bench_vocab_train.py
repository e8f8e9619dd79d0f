"""Vocabulary training: our strict TokenMonster trainer vs a byte-level BPE of the same size.

Both are trained on the same 90% of a corpus (thinned evenly to ~2 MB, the quickstart's
scale); characters per token are measured on the held-out 10% (more is better). The official
english-8000-strict-cap1-oracle vocabulary is
printed as an anchor (it was trained on the whole corpus, held-out part included, with the
official tools at 8,000 tokens, so it is an optimistic reference, not a like-for-like one).

    python benchmarks/bench_vocab_train.py [--corpus FILE] [--size 4000] [--train-bytes 2000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("STENTOR_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def split_corpus(text: str, train_chars: int | None, block: int = 20_000) -> tuple[str, str]:
    """90/10 split inside every ~20 kB block (cut at newlines), so both parts cover every kind of
    text in the corpus; the training part is then thinned evenly to `train_chars`."""
    blocks, start = [], 0
    while start < len(text):
        end = text.find("\n", start + block)
        end = len(text) if end < 0 else end + 1
        blocks.append(text[start:end])
        start = end
    train, held_out = [], []
    for b in blocks:
        cut = b.rfind("\n", 0, int(len(b) * 0.9)) + 1
        train.append(b[:cut])
        held_out.append(b[cut:])
    total = sum(map(len, train))
    if train_chars and total > train_chars:
        keep = train_chars / total
        train = [b for k, b in enumerate(train) if int((k + 1) * keep) > int(k * keep)]
    return "".join(train), "".join(held_out)


def train_bpe(train_text: str, size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(train_text.splitlines(keepends=True), trainer=trainer)
    return tok


def row(name, size, wall, cpu, chars_per_token) -> None:
    print(f"{name:<44} {size:>6} {wall:>7} {cpu:>7} {chars_per_token:>12}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SHARED / "tokenmonster/corpus/english.txt")
    parser.add_argument("--size", type=int, default=4000, help="vocabulary size for both trainers")
    parser.add_argument("--train-bytes", type=int, default=2_000_000, help="cap on the training text (~2 MB)")
    args = parser.parse_args()
    if not args.corpus.is_file():
        print(f"corpus {args.corpus} not found; pass --corpus FILE", file=sys.stderr)
        return 2

    from stentor.tokenizer import load_vocab
    from stentor.tokenizer.train import TrainConfig, train_vocab

    text = args.corpus.read_text(encoding="utf-8", errors="replace")
    train, held_out = split_corpus(text, args.train_bytes)
    print(f"corpus {args.corpus.name}: train {len(train.encode()):,} bytes, held out {len(held_out):,} characters")

    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text(train, encoding="utf-8")
        start, cpu = time.perf_counter(), time.process_time()
        ours = train_vocab([str(train_file)], TrainConfig(vocab_size=args.size), Path(tmp) / "ours.vocab")
        ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    bpe = train_bpe(train, args.size)
    bpe_s, bpe_cpu = time.perf_counter() - start, time.process_time() - cpu

    held_bytes = held_out.encode("utf-8")
    ours_cpt = len(held_out) / len(ours.encode(held_bytes))
    bpe_cpt = len(held_out) / len(bpe.encode(held_out).ids)
    row("tokenizer", "size", "wall s", "cpu s", "chars/token")
    row("stentor strict TokenMonster (ours)", ours.vocab_size, f"{ours_s:.1f}", f"{ours_cpu:.1f}", f"{ours_cpt:.3f}")
    row("byte-level BPE (HF tokenizers)", bpe.get_vocab_size(), f"{bpe_s:.1f}", f"{bpe_cpu:.1f}", f"{bpe_cpt:.3f}")
    oracle_path = SHARED / "tokenmonster/vocabs/english-8000-strict-cap1-oracle.vocab"
    if oracle_path.is_file():
        oracle = load_vocab(oracle_path)
        oracle_cpt = len(held_out) / len(oracle.encode(held_bytes))
        row("anchor: english-8000-strict-cap1-oracle", oracle.vocab_size, "-", "-", f"{oracle_cpt:.3f}")
    print(f"ratio chars/token ours / BPE: {ours_cpt / bpe_cpt:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
