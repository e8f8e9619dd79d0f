"""Decode speed: the compiled runtime vs HF `generate`, the torch engine and llama.cpp, in one run.

Random-init stentor2-12m, the card's sampling (temperature 0.8, top-p 0.7, repetition penalty 1.2,
top-k off everywhere), a fixed number of new tokens (no EOS stop). Rounds are interleaved (every
runtime once per round) because the machine is shared; prints best-of tokens/s (new tokens over
prefill + decode wall time), the spread over rounds, and ratios to HF and to llama.cpp's best file.

llama.cpp runs from another interpreter (it is never a stentor dependency): pass `--llama-python`
with a venv that has llama-cpp-python (see its wheel's README); it gets token ids, as it has no
TokenMonster tokenizer. Without it the llama.cpp rows are skipped.

    python benchmarks/bench_generate.py --threads 2 --llama-python /tmp/lcp/bin/python --vocab my.vocab
    python benchmarks/bench_generate.py --batch 1 8 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from stentor.export.quantize import QuantConfig, quantize_model
from stentor.infer.decoding import SamplingParams
from stentor.infer.engine import Engine
from stentor.infer.native import NativeEngine, Weights
from stentor.model.build import build_model
from stentor.model.presets import SAMPLING_DEFAULTS, get_preset

LLAMA_SCRIPT = """
import json, sys, time
from llama_cpp import Llama
path, threads, prompt, new, rounds = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=1024, verbose=False)
times = []
for _ in range(rounds + 1):
    llm.reset()
    start, count = time.perf_counter(), 0
    for _token in llm.generate(prompt, temp=0.8, top_p=0.7, repeat_penalty=1.2, top_k=0, reset=True):
        count += 1
        if count == new:
            break
    times.append(time.perf_counter() - start)
print(json.dumps(times[1:]))
"""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hf_run(model, prompts: torch.Tensor, new_tokens: int):
    def run():
        with torch.inference_mode():
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                                 pad_token_id=0, **SAMPLING_DEFAULTS)
        assert out.shape[1] == prompts.shape[1] + new_tokens

    return run


def engine_run(engine, prompts: torch.Tensor, new_tokens: int):
    params = SamplingParams(max_new_tokens=new_tokens, stop_at_eos=False)
    rows = prompts.tolist()

    def run():
        assert sum(1 for _ in engine.generate(rows, params)) == new_tokens

    return run


def llama_times(python: str, gguf: Path, threads: int, prompt: list[int], new_tokens: int, rounds: int) -> list[float] | None:
    out = subprocess.run([python, "-c", LLAMA_SCRIPT, str(gguf), str(threads), json.dumps(prompt), str(new_tokens),
                          str(rounds)], capture_output=True, text=True)
    if out.returncode != 0:  # e.g. SIGILL: a llama.cpp build for another CPU; the other files still count
        print(f"  (llama.cpp on {gguf.name} failed with exit status {out.returncode}; skipped)")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="stentor2-12m")
    parser.add_argument("--prompt-tokens", type=int, default=18)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; best-of and spread are reported")
    parser.add_argument("--threads", type=int, default=2, help="threads for every runtime (default: %(default)s)")
    parser.add_argument("--llama-python", help="python of a venv with llama-cpp-python (optional anchor)")
    parser.add_argument("--vocab", default="english-8000-strict-nocapcode-v1",
                        help="TokenMonster vocabulary for the GGUF files llama.cpp loads (default: %(default)s)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    model = build_model(cfg, seed=0).eval()
    int8 = quantize_model(copy.deepcopy(model), QuantConfig("int8"))
    runtimes = {
        "HF generate": lambda p: hf_run(model, p, args.new_tokens),
        "torch engine fp32": (lambda e: lambda p: engine_run(e, p, args.new_tokens))(Engine(model)),
        "compiled fp32": (lambda e: lambda p: engine_run(e, p, args.new_tokens))(
            NativeEngine(Weights.from_model(model), threads=args.threads)),
        "compiled int8": (lambda e: lambda p: engine_run(e, p, args.new_tokens))(
            NativeEngine(Weights.from_model(int8), threads=args.threads)),
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cfg.name}: {args.prompt_tokens} prompt + {args.new_tokens} new tokens, card sampling, {args.rounds} "
          f"interleaved rounds, {args.threads} threads; {cpu_name()}, torch {torch.__version__}, load {load:.2f}")
    generator = torch.Generator().manual_seed(0)
    for batch in args.batch:
        prompts = torch.randint(0, cfg.vocab_size - 64, (batch, args.prompt_tokens), generator=generator)
        runs = {name: make(prompts) for name, make in runtimes.items()}
        for name, make in runtimes.items():  # warm-up
            make(prompts[:, :4])()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        if args.llama_python and batch == 1:
            with tempfile.TemporaryDirectory() as tmp:
                from stentor.export.gguf import write_gguf
                from stentor.tokenizer.hf import tokenizer_from_vocab

                tokenizer = tokenizer_from_vocab(args.vocab)
                for dtype in ("f32", "f16", "q8_0"):
                    gguf = Path(tmp) / f"m-{dtype}.gguf"
                    write_gguf(model, tokenizer, gguf, dtype=dtype)
                    measured = llama_times(args.llama_python, gguf, args.threads, prompts[0].tolist(),
                                           args.new_tokens, args.rounds)
                    if measured:
                        times[f"llama.cpp {dtype}"] = measured
        tokens = batch * args.new_tokens
        best = {name: tokens / min(t) for name, t in times.items()}
        hf = best["HF generate"]
        llama = max((v for k, v in best.items() if k.startswith("llama.cpp")), default=None)
        print(f"batch {batch}:")
        for name, rate in best.items():
            spread = f"{tokens / max(times[name]):7.1f}-{rate:7.1f}"
            vs_llama = f"  {rate / llama:5.2f}x llama.cpp best" if llama else ""
            print(f"  {name:18s} {rate:8.1f} tok/s (rounds {spread})  {rate / hf:6.2f}x HF{vs_llama}")


if __name__ == "__main__":
    main()
