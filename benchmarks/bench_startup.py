"""Time to first token and peak memory of a cold `stentor generate`, against llama.cpp's load + 1 token.

Each measurement is a fresh process (best of --repeats, rounds interleaved): the whole command,
imports and weight loading included, as a user in a shell sees it. Peak RSS comes from GNU time
(/usr/bin/time, Debian package `time`).
The model is a random-init stentor2-12m saved with the given TokenMonster vocabulary, as a float
directory and as a `stentor quantize --method int8` directory.

    python benchmarks/bench_startup.py --vocab my.vocab --llama-python /tmp/lcp/bin/python
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA_SCRIPT = (
    "import sys\nfrom llama_cpp import Llama\n"
    "llm = Llama(model_path=sys.argv[1], n_threads=2, n_ctx=1024, verbose=False)\n"
    "next(iter(llm.generate([1, 2, 3, 4], temp=0.8, top_p=0.7, repeat_penalty=1.2, top_k=0)))\n"
)


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one fresh process.

    The peak comes from GNU time around the command: a child forked from this (large) process
    would report the parent's pages it carried until exec.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr}")
        return wall, int(report.read().split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", default="english-8000-strict-nocapcode-v1", help="TokenMonster vocabulary")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--llama-python", help="python of a venv with llama-cpp-python (optional anchor)")
    args = parser.parse_args()

    from stentor.export.gguf import write_gguf
    from stentor.export.quantize import quantize_dir
    from stentor.model.build import build_model, save_model_dir
    from stentor.model.presets import get_preset
    from stentor.tokenizer.hf import tokenizer_from_vocab

    stentor = shutil.which("stentor") or str(Path(sys.executable).with_name("stentor"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = get_preset("stentor2-12m")
        model = build_model(cfg, seed=0).eval()
        tokenizer = tokenizer_from_vocab(args.vocab)
        fp32 = save_model_dir(model, cfg, Path(tmp) / "fp32", tokenizer=tokenizer)
        int8 = quantize_dir(fp32, Path(tmp) / "int8", "int8")
        generate = [stentor, "generate", "--max-new-tokens", "1", "--seed", "0"]
        commands = {
            "stentor generate int8 (compiled, lean)": [*generate, "--model", str(int8), "Once upon a time"],
            "stentor generate fp32 (compiled, lean)": [*generate, "--model", str(fp32), "Once upon a time"],
            "stentor generate int8 --engine torch": [*generate, "--engine", "torch", "--model", str(int8), "Once"],
        }
        if args.llama_python:
            gguf = Path(tmp) / "m-f16.gguf"
            write_gguf(model, tokenizer, gguf, dtype="f16")
            commands["llama.cpp f16: load + 1 token"] = [args.llama_python, "-c", LLAMA_SCRIPT, str(gguf)]
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for name, command in commands.items():  # warm the page cache and the kernel cache
            measure(command)
        for _ in range(args.repeats):
            for name, command in commands.items():
                results[name].append(measure(command))
    llama = min((w for w, _ in results.get("llama.cpp f16: load + 1 token", [])), default=None)
    print(f"cold processes, best of {args.repeats} (interleaved), load {os.getloadavg()[0]:.2f}")
    for name, runs in results.items():
        wall, rss = min(w for w, _ in runs), min(r for _, r in runs)
        ratio = f"  {wall / llama:5.2f}x llama.cpp's time" if llama else ""
        print(f"  {name:40s} {wall:6.3f} s (worst {max(w for w, _ in runs):6.3f})  peak RSS {rss:6.1f} MiB{ratio}")


if __name__ == "__main__":
    main()
