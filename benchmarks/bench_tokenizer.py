"""TokenMonster encode throughput: portable Python, numba single core, all cores via encode_batch.

Full encode = normalization + capcode + tokenization, MB = 10^6 bytes of input text. Prints
wall-clock and process CPU time (on a shared machine the CPU figure is the per-core speed),
and the ratio to the official Go implementation's single-core figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from stentor.tokenizer import Vocab, encode_batch, fast

SHARED = Path(__file__).resolve().parents[2] / "shared" / "tokenmonster"
GO_MB_S = 16.8  # official Go, english-8000-strict-cap1-oracle, single core (shared/tokenmonster/README.md)


def _timed(fn, repeats: int) -> tuple[float, float]:
    """Best (wall, cpu) seconds over `repeats` runs."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def _report(label: str, nbytes: int, wall: float, cpu: float | None) -> None:
    line = f"{label:<34} {nbytes / 1e6 / wall:7.2f} MB/s wall"
    if cpu:
        rate = nbytes / 1e6 / cpu
        line += f"  {rate:7.2f} MB/s cpu  ({rate / GO_MB_S:.2f}x Go's {GO_MB_S} MB/s)"
    print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "english.txt")
    parser.add_argument("--vocab", type=Path, default=SHARED / "vocabs" / "english-8000-strict-cap1-oracle.vocab")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--portable-bytes", type=int, default=300_000,
                        help="prefix of the corpus timed with the (slow) pure-Python kernels")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    for path, what in ((args.corpus, "--corpus"), (args.vocab, "--vocab")):
        if not path.is_file():
            print(f"error: {what} {path} does not exist (pass {what} or provide ../shared/tokenmonster)",
                  file=sys.stderr)
            return 2
    text = args.corpus.read_bytes()
    vocab = Vocab.load(args.vocab)
    print(f"corpus {args.corpus.name}: {len(text):,} bytes; vocab {args.vocab.name}; cpus {os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.1f}")

    sample = text[: args.portable_bytes]
    wall, cpu = _timed(lambda: vocab.encode(sample), 1)
    _report(f"portable, 1 core ({len(sample) // 1000} kB)", len(sample), wall, cpu)

    if not fast.available():
        print("numba is not installed: compiled and parallel figures skipped")
        return 0
    vocab.set_backend(fast.backend())
    vocab.encode(text[:1000])
    wall, cpu = _timed(lambda: vocab.encode(text), args.repeats)
    ids = vocab.encode(text)
    _report("numba, 1 core", len(text), wall, cpu)
    print(f"{'':<34} {len(text) / len(ids):.2f} bytes per token")

    lines = text.splitlines(keepends=True)
    step = max(1, len(lines) // (args.workers * 16))
    chunks = [b"".join(lines[i: i + step]) for i in range(0, len(lines), step)]
    startup, _ = _timed(lambda: encode_batch(args.vocab, [b"a", b"b"] * args.workers, num_workers=args.workers), 1)
    wall, _ = _timed(lambda: encode_batch(args.vocab, chunks, num_workers=args.workers), 1)
    _report(f"encode_batch, {args.workers} workers", len(text), wall, None)
    _report(f"  less {startup:.1f} s pool start-up", len(text), max(wall - startup, 1e-9), None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
