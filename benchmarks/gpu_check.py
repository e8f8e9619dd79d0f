"""The GPU check: the card's training recipe proven on a CUDA device in one command, no network, <= 8 minutes.

    python benchmarks/gpu_check.py                     # on one or more GPUs: prints a table, writes gpu_check.json
    python benchmarks/gpu_check.py --cpu-smoke         # every stage at toy size on CPU (CI runs this)

Stages (each one is a row of the table and an entry of the JSON; the exit code is 1 when a check fails):
  environment  GPU name, memory, capability, torch / CUDA versions, the peak TFLOPS used for MFU
  recipe       stentor2-12m, fp16 + GradScaler + the T4 recipe (25 FP32 RMSNorms, 2 FP32 critical layers) at the
               card's batch (32 x 1024 x 2 accumulation) on a locally made corpus: loss falls, weights stay finite,
               the scaler's scale history and skipped steps, hooks proving the FP32 islands compute in FP32 while
               the other layers run in fp16; tokens/s, MFU, peak memory, host time per step
  variants     the same step with one switch changed each: bf16 (where native), torch.compile, no prefetch, TF32
  resume       stop at step k, reload, resume: the losses after k follow the uninterrupted run's
  eval         perplexity and a BLiMP-format pair subset scored on the GPU equal the CPU's within fp tolerance
  ddp          with >= 2 GPUs (2 gloo processes in the smoke): the step over DDP via `accelerate launch`, scaling

What each figure means and the goals to compare with are in docs/training.md ("The GPU check").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_train import make_corpus, make_tokenizer  # noqa: E402  (one corpus and tokenizer maker for benchmarks)

from stentor.fileio import atomic_write_text  # noqa: E402
from stentor.train.config import load_config  # noqa: E402
from stentor.train.trainer import Trainer  # noqa: E402

FULL = {"preset": "stentor2-12m", "block": 1024, "batch": 32, "accum": 2, "steps": 300, "variant_steps": 40,
        "warmup": 10, "resume_at": 10, "critical": 2, "docs": 6000, "words": 7000, "eval_tokens": 32768, "pairs": 500}
SMOKE = {"preset": "stentor2-tiny", "block": 64, "batch": 4, "accum": 2, "steps": 12, "variant_steps": 3,
         "warmup": 2, "resume_at": 3, "critical": 1, "docs": 300, "words": 1500, "eval_tokens": 2048, "pairs": 40}


def environment(device: torch.device) -> dict:
    from stentor.train.plan import peak_flops

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": "cpu", "gpus": torch.cuda.device_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
    peak = peak_flops(env["device"])
    env["peak_tflops"] = peak / 1e12 if peak else None
    return env


def recipe_overrides(work: Path, size: dict, device: torch.device, **changes: str) -> list[str]:
    mixed = "fp16" if device.type == "cuda" else "bf16"  # fp16 needs CUDA; the smoke runs the recipe under bf16
    settings = {
        "model.preset": size["preset"], "tokenizer": str(work / "tokenizer"),
        "data.sources": f"[{{path: {work / 'corpus.jsonl'}}}]", "data.val_docs": "20", "data.source_token_budget": "null",
        "prepared_dir": str(work / "prepared"), "prepare_workers": "0",
        "batch.block_size": str(size["block"]), "batch.per_device_train_batch_size": str(size["batch"]),
        "batch.gradient_accumulation_steps": str(size["accum"]), "schedule.token_budget": "null",
        "schedule.max_train_steps": str(size["steps"]), "schedule.num_train_epochs": "1000",
        "schedule.warmup_ratio": "0.05", "precision.mixed_precision": mixed, "precision.t4_recipe": "true",
        "precision.critical_layers": str(size["critical"]), "checkpoint.save_every_minutes": "null", "checkpoint.save_steps": "null",
        "eval.eval_steps": "100000", "eval.best_eval_steps": "100000", "eval.best_eval_start_step": "100000",
        "eval.max_eval_samples": "32", "logging.logging_steps": "1",
    }
    settings.update(changes)
    return [f"{k}={v}" for k, v in settings.items()]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def island_hooks(trainer: Trainer) -> tuple[dict, list]:
    """Forward hooks that record, on the first step, what the FP32 islands and the other layers compute in."""
    seen = {"norms": 0, "norms_exact_fp32": 0, "critical_linear_dtypes": set(), "other_linear_dtypes": set()}
    critical = {id(m) for m in trainer.raw_model.modules() if type(m).__name__.startswith("FP32") and hasattr(m, "self_attn")}

    def norm_hook(module, args, out):
        with torch.autocast(out.device.type, enabled=False):
            x = args[0].float()
            ref = (module.weight.float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)))
        seen["norms"] += 1
        seen["norms_exact_fp32"] += int(torch.equal(out, ref.to(out.dtype)))

    handles = []
    for module in trainer.raw_model.modules():
        if type(module).__name__.startswith("FP32") and hasattr(module, "variance_epsilon"):
            handles.append(module.register_forward_hook(norm_hook))
        if hasattr(module, "self_attn"):
            key = "critical_linear_dtypes" if id(module) in critical else "other_linear_dtypes"
            for linear in module.modules():
                if isinstance(linear, torch.nn.Linear):
                    handles.append(linear.register_forward_hook(lambda m, a, out, key=key: seen[key].add(str(out.dtype))))
    return seen, handles


def run_steps(trainer: Trainer, steps: int, warmup: int, max_seconds: float = math.inf) -> dict:
    """Up to `steps` optimizer steps as `Trainer.fit` takes them (`Trainer.step_batches`, one sync per step for
    the finite check), cycling through epoch 0's order, fewer when `max_seconds` run out (a T4 is ~20x slower than an H100); the rate, peak memory
    and host time are measured after `warmup` steps."""
    from stentor.train.trainer import epoch_blocks

    device, b = trainer.acc.device, trainer.cfg.batch
    order = epoch_blocks(len(trainer.train_blocks), trainer.cfg.seed, 0, trainer.rank, trainer.world)
    micro_steps = trainer.micro_per_epoch // b.gradient_accumulation_steps
    losses, scales, skipped, t0 = [], [], 0, None
    for step in range(warmup + steps):
        if t0 is not None and step - warmup >= 5 and time.perf_counter() - t0 > max_seconds:
            break
        if step == warmup:
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            trainer.feeder.wait_seconds, t0 = 0.0, time.perf_counter()
        loss, applied = trainer.train_step(trainer.step_batches(order, 0, (step % micro_steps) * b.gradient_accumulation_steps))
        losses.append(loss)
        skipped += not applied
        if trainer.acc.scaler is not None:
            scales.append(trainer.acc.scaler._scale.detach().clone())
    sync(device)
    wall = time.perf_counter() - t0
    steps = len(losses) - warmup
    tokens = steps * trainer.plan.tokens_per_step
    losses = [float(x) for x in losses]
    peak_mib = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _max_rss()) / 2**20
    out = {"steps": len(losses), "tokens_per_s": tokens / wall, "step_ms": 1000 * wall / steps,
           "host_batch_ms": 1000 * trainer.feeder.wait_seconds / steps, "peak_memory_mib": round(peak_mib, 1),
           "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS",
           "first_loss": losses[0], "last_loss": sum(losses[-5:]) / len(losses[-5:]), "skipped_steps": skipped,
           "weights_finite": all(bool(torch.isfinite(p).all()) for p in trainer.raw_model.parameters())}
    if scales:
        history = [float(s) for s in scales]
        out["scale_history"] = [history[0]] + [s for prev, s in zip(history, history[1:]) if s != prev]
    from stentor.train.plan import peak_flops

    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if peak:
        out["mfu_pct"] = 100 * out["tokens_per_s"] * trainer.plan.flops_per_token / peak
    return out


def _max_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fresh_accelerate() -> None:
    """Accelerate keeps one global state per process; each trainer here gets its own (and its own precision)."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def new_trainer(work: Path, size: dict, device: torch.device, run: str, **changes: str) -> Trainer:
    fresh_accelerate()
    return Trainer(load_config(None, recipe_overrides(work, size, device, **changes)), work / run)


def stage_recipe(work: Path, size: dict, device: torch.device) -> dict:
    trainer = new_trainer(work, size, device, "recipe")
    seen, handles = island_hooks(trainer)
    trainer.train_step([trainer.feeder.batch(range(size["batch"]))])  # the hooks' step
    for h in handles:
        h.remove()
    result = run_steps(trainer, size["steps"], size["warmup"], max_seconds=150)
    half = "torch.float16" if device.type == "cuda" else "torch.bfloat16"
    result["fp32_islands"] = {"norms_fp32": f"{seen['norms_exact_fp32']}/{seen['norms']} norm calls equal the FP32 formula",
                              "fp32_norm_modules": trainer.recipe.fp32_norms, "critical_layers": trainer.recipe.critical_layers,
                              "critical_linear_dtypes": sorted(seen["critical_linear_dtypes"]),
                              "other_linear_dtypes": sorted(seen["other_linear_dtypes"])}
    result["ok"] = (result["last_loss"] < 0.97 * result["first_loss"] and result["weights_finite"]
                    and seen["norms"] > 0 and seen["norms_exact_fp32"] == seen["norms"]
                    and seen["critical_linear_dtypes"] == {"torch.float32"} and seen["other_linear_dtypes"] == {half})
    return result


def stage_variants(work: Path, size: dict, device: torch.device, env: dict) -> dict:
    cases = {"prefetch off": {"batch.prefetch": "false"}}
    if device.type == "cuda":
        cases["prefetch on (default)"] = {}
        cases["compile"] = {"precision.compile": "true"}
        cases["tf32"] = {"precision.tf32": "true"}
        if env.get("bf16_native"):
            cases["bf16, no T4 recipe"] = {"precision.mixed_precision": "bf16", "precision.t4_recipe": "false"}
            cases["bf16 + compile"] = {"precision.mixed_precision": "bf16", "precision.t4_recipe": "false",
                                       "precision.compile": "true"}
    else:
        cases["prefetch on"] = {"batch.prefetch": "true"}
    out = {}
    for name, changes in cases.items():
        trainer = new_trainer(work, size, device, f"variant-{len(out)}", **changes)
        r = run_steps(trainer, size["variant_steps"], size["warmup"], max_seconds=20)
        out[name] = {k: r[k] for k in ("tokens_per_s", "step_ms", "host_batch_ms", "peak_memory_mib", "skipped_steps")}
        out[name]["mfu_pct"] = r.get("mfu_pct")
    out["ok"] = all(v["tokens_per_s"] > 0 for v in out.values())
    return out


def _curve(run: Path) -> list[float]:
    import csv

    with open(run / "training_curves.csv", newline="") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f) if r["train_loss"]]


def stage_resume(work: Path, size: dict, device: torch.device) -> dict:
    k, total = size["resume_at"], 2 * size["resume_at"]
    steps = {"schedule.max_train_steps": str(total)}
    new_trainer(work, size, device, "whole", **steps).fit()
    first = new_trainer(work, size, device, "resumed", **steps)
    calls = []

    def stop_at_k(module, args, output):
        calls.append(1)
        if len(calls) == k * size["accum"]:
            first.stop_requested = True

    handle = first.raw_model.get_input_embeddings().register_forward_hook(stop_at_k)
    first.fit()
    handle.remove()
    fresh_accelerate()
    Trainer.resume(work / "resumed").fit()
    whole, resumed = _curve(work / "whole"), _curve(work / "resumed")
    diff = max(abs(a - b) for a, b in zip(whole[k:], resumed[k:]))
    tol = 0.0 if device.type == "cpu" else 0.02 * max(whole[k:])  # GPU kernels are not bitwise deterministic
    return {"stopped_at": k, "steps": total, "max_loss_diff_after_resume": diff, "tolerance": tol,
            "ok": len(whole) == len(resumed) == total and diff <= tol, "model": str(work / "resumed" / "final")}


def stage_eval(work: Path, size: dict, device: torch.device, model_dir: str) -> dict:
    from stentor.data import PreparedData
    from stentor.eval.blimp import Paradigm, evaluate_blimp
    from stentor.eval.perplexity import score_stream
    from stentor.model.loading import load_model
    from stentor.tokenizer.hf import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    ids = PreparedData.load(work / "prepared").val_tokens[: size["eval_tokens"]].tolist()
    docs = [json.loads(line)["text"] for line in (work / "corpus.jsonl").read_text().splitlines()[: size["pairs"]]]
    pairs = []
    for doc in docs:  # good: a real sentence; bad: the same words with two in the middle swapped
        words = doc.split()[:12]
        bad = words[:5] + [words[6], words[5]] + words[7:]
        if bad != words:
            pairs.append((" ".join(words), " ".join(bad)))
    paradigm = Paradigm("swapped_words", "syntax", "word_order", pairs)
    out = {}
    for where in ("cpu", device.type) if device.type == "cuda" else ("cpu", "cpu again"):
        model = load_model(model_dir).to("cpu" if where.startswith("cpu") else device).eval()
        nats, n = score_stream(model, ids, block_size=size["block"], stride=size["block"], progress=False)
        blimp = evaluate_blimp(model, tokenizer, [paradigm], progress=False, precision="fp32")
        out[where] = {"ppl": math.exp(nats / n), "tokens": n, "blimp_correct": blimp.paradigms[0].outcomes.count("1"),
                      "pairs": len(pairs)}
    a, b = out.values()
    out["ppl_rel_diff"] = abs(a["ppl"] - b["ppl"]) / a["ppl"]
    out["blimp_pairs_differing"] = abs(a["blimp_correct"] - b["blimp_correct"])
    out["ok"] = out["ppl_rel_diff"] < 1e-3 and out["blimp_pairs_differing"] <= max(1, len(pairs) // 200)
    return out


def stage_ddp(work: Path, size: dict, device: torch.device, smoke: bool, single_tps: float) -> dict:
    from socket import socket

    n = 2 if smoke else torch.cuda.device_count()
    if n < 2:
        return {"skipped": f"{n} GPU: DDP needs at least 2", "ok": True}
    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_file = work / "ddp.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           str(Path(__file__).resolve()), "--ddp-worker", str(work), "--out", str(out_file)] + (["--cpu-smoke"] if smoke else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if smoke else dict(os.environ)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        return {"processes": n, "error": done.stderr.strip().splitlines()[-1:] or ["failed"], "ok": False}
    result = json.loads(out_file.read_text())
    result.update(processes=n, scaling=result["tokens_per_s"] / single_tps if single_tps else None)
    result["ok"] = result["tokens_per_s"] > 0 and result["weights_finite"]
    return result


def ddp_worker(work: Path, size: dict, out: Path) -> None:
    trainer = Trainer(load_config(None, recipe_overrides(work, size, torch.device("cuda" if torch.cuda.is_available()
                                                                                     else "cpu"))), work / "ddp-run")
    result = run_steps(trainer, size["variant_steps"], size["warmup"], max_seconds=30)
    if trainer.is_main:
        out.write_text(json.dumps(result))
    trainer.acc.wait_for_everyone()


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value[:12]) + (", ..." if len(value) > 12 else "") + "]"
    return str(value)


def table(report: dict) -> str:
    """One block per stage: its mark, then `figure value` lines (variants: one line each)."""
    lines = []
    for stage, value in report.items():
        mark = "" if stage == "environment" else ("ok" if value.get("ok") else "FAIL")
        lines.append(f"{stage} {mark}".rstrip())
        for key, item in value.items():
            if key != "ok":
                lines.append(f"    {key:<28} {_shown(item)}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--cpu-smoke", action="store_true", help="every stage at toy size on CPU, in about a minute")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report (default: gpu_check.json)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--ddp-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    size = SMOKE if args.cpu_smoke else FULL
    if args.ddp_worker is not None:
        ddp_worker(args.ddp_worker, size, args.out)
        return 0
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or pass --cpu-smoke to rehearse every stage on CPU")
        return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    make_corpus(work / "corpus.jsonl", docs=size["docs"], words=size["words"])
    make_tokenizer(work / "tokenizer", work / "corpus.jsonl", vocab_size=8064 - 8)
    report = {"environment": environment(device)}
    stages = [("recipe", lambda: stage_recipe(work, size, device)),
              ("variants", lambda: stage_variants(work, size, device, report["environment"])),
              ("resume", lambda: stage_resume(work, size, device)),
              ("eval", lambda: stage_eval(work, size, device, report["resume"]["model"])),
              ("ddp", lambda: stage_ddp(work, size, device, args.cpu_smoke, report["recipe"]["tokens_per_s"]))]

    def save() -> None:  # after every stage, so a run cut short (the machine taken back) keeps what it measured
        atomic_write_text(args.out, json.dumps(report, indent=2, default=str) + "\n")

    for name, run in stages:
        t0 = time.perf_counter()
        try:
            report[name] = run()
        except Exception as exc:  # one failed stage is a row of the table, the others still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:500], "ok": False}
        report[name]["seconds"] = round(time.perf_counter() - t0, 1)
        save()
        print(f"gpu_check: {name} done in {report[name]['seconds']} s", file=sys.stderr, flush=True)
    report["total_seconds"] = {"ok": True, "seconds": round(time.perf_counter() - started, 1)}
    save()
    print(table(report))
    print(f"report: {args.out}")
    return 0 if all(v.get("ok", True) for k, v in report.items() if k != "environment") else 1


if __name__ == "__main__":
    sys.exit(main())
