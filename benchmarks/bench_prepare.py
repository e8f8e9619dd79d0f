"""Throughput of `prepare_data` with 1 worker (baseline) and N workers, measured in the same run.

    python benchmarks/bench_prepare.py [--data DIR_OR_FILE] [--tokenizer SPEC] [--workers 2]

Defaults: ../shared/data/fineweb_legal_pilot/*.jsonl with the Stentor TokenMonster 8,000 vocabulary.
Prints docs/s, tokens/s and MB/s (UTF-8 text in) per run and the N-worker/1-worker speed ratio.
The output bytes of both runs must be identical; the script checks that too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stentor.data import DataConfig, SourceSpec, prepare_data
from stentor.data.sources import iter_documents

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data" / "fineweb_legal_pilot" / "*.jsonl"))
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenmonster" / "vocabs" / "english-8000-strict-cap1-oracle.vocab"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    # Imported here, not at the top: spawned workers re-import this script, and transformers costs them seconds.
    from stentor.tokenizer.hf import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    tokenizer.encode("warm up: compile (or load from numba's disk cache) the fast kernels before timing")
    source = SourceSpec(path=args.data)
    mb = sum(len(t.encode("utf-8")) for t in iter_documents(source)) / 1e6
    cfg = DataConfig(sources=[source], val_docs=100, source_token_budget=None)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, args.workers):
            start = time.perf_counter()
            data = prepare_data(cfg, tokenizer, Path(tmp) / f"w{workers}", num_workers=workers)
            seconds = time.perf_counter() - start
            docs = data.meta["train_docs"] + data.meta["val_docs"]
            tokens = data.meta["train_tokens"] + data.meta["val_tokens"]
            results[workers] = (seconds, (Path(tmp) / f"w{workers}" / "train.bin").read_bytes())
            print(f"workers={workers}: {seconds:.2f} s  {docs / seconds:,.0f} docs/s  {tokens / seconds:,.0f} tokens/s  "
                  f"{mb / seconds:.2f} MB/s  ({docs:,} docs, {tokens:,} tokens, {mb:.1f} MB)")
    assert results[1][1] == results[args.workers][1], "outputs differ between worker counts"
    print(f"speedup {args.workers} workers vs 1: {results[1][0] / results[args.workers][0]:.2f}x (identical output)")


if __name__ == "__main__":
    main()
