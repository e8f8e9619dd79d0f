"""Decode speed: the stentor engine vs Hugging Face `generate`, same model, same machine, same run.

Random-init stentor2-12m, the card's sampling (temperature 0.8, top-p 0.7, repetition penalty 1.2,
top-k off in both), a fixed number of new tokens (no EOS stop), batch 1 and batch 8. Prints
tokens/s (new tokens over prefill + decode wall time, best of --repeats) and our/HF ratio.

    python benchmarks/bench_generate.py                 # 128 prompt + 256 new tokens
    python benchmarks/bench_generate.py --threads 1 --batch 1 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from stentor.infer.engine import Engine
from stentor.infer.sampling import SamplingParams
from stentor.model.build import build_model
from stentor.model.presets import SAMPLING_DEFAULTS, get_preset


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(run) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of run(); CPU time is less disturbed by other processes."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_hf(model, prompts: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    def run():
        with torch.inference_mode():
            out = model.generate(
                prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=True,
                top_k=0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                eos_token_id=None,
                pad_token_id=0,
                **SAMPLING_DEFAULTS,
            )
        assert out.shape[1] == prompts.shape[1] + new_tokens

    return timed(run)


def time_ours(engine: Engine, prompts: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    params = SamplingParams(max_new_tokens=new_tokens, stop_at_eos=False)

    def run():
        assert sum(1 for _ in engine.generate(prompts.tolist(), params)) == new_tokens

    return timed(run)


def rates(times: list[tuple[float, float]], tokens: int) -> tuple[float, float]:
    """Best-of tokens/s by wall clock and by process CPU time."""
    return tokens / min(t[0] for t in times), tokens / min(t[1] for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="stentor2-12m")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per engine")
    parser.add_argument("--threads", type=int, help="torch threads for both engines (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our engine's forward")
    parser.add_argument("--int8", action="store_true", help="also time our engine on int8 weights (`stentor quantize`)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    model = build_model(cfg, seed=0).eval()
    engine = Engine(model, compile=args.compile)
    int8_engine = None
    if args.int8:
        import copy

        from stentor.export.quantize import QuantConfig, quantize_model

        int8_engine = Engine(quantize_model(copy.deepcopy(model), QuantConfig("int8")), compile=args.compile)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(
        f"{cfg.name}: {args.prompt_tokens} prompt + {args.new_tokens} new tokens, card sampling, "
        f"best of {args.repeats}; {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, load average {load[0]:.2f}"
        f"{'; ours compiled' if args.compile else ''}"
    )
    generator = torch.Generator().manual_seed(0)
    for batch in args.batch:
        prompts = torch.randint(0, cfg.vocab_size - 64, (batch, args.prompt_tokens), generator=generator)
        time_ours(engine, prompts[:, :8], 4)  # warm-up (and compilation)
        time_hf(model, prompts[:, :8], 4)
        tokens = batch * args.new_tokens
        hf = rates([time_hf(model, prompts, args.new_tokens) for _ in range(args.repeats)], tokens)
        ours = rates([time_ours(engine, prompts, args.new_tokens) for _ in range(args.repeats)], tokens)
        print(
            f"batch {batch}: HF generate {hf[0]:8.1f} tok/s | stentor engine {ours[0]:8.1f} tok/s | "
            f"ratio {ours[0] / hf[0]:5.2f}x   (per CPU-second: HF {hf[1]:.1f}, ours {ours[1]:.1f}, "
            f"ratio {ours[1] / hf[1]:.2f}x)"
        )
        if int8_engine is not None:
            time_ours(int8_engine, prompts[:, :8], 4)
            q = rates([time_ours(int8_engine, prompts, args.new_tokens) for _ in range(args.repeats)], tokens)
            print(f"batch {batch}: stentor engine on int8 weights {q[0]:8.1f} tok/s | ratio to HF {q[0] / hf[0]:5.2f}x")


if __name__ == "__main__":
    main()
