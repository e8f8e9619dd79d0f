"""`stentor card RUN`: the model card (RUN/final/README.md) of a training or fine-tuning run.

Every number comes from a file the run wrote: its config.yaml (hyperparameters, data), final/config.json
(architecture), training_curves.csv (losses), the last checkpoint's trainer_state.json (steps, tokens, time,
device) and, when `stentor eval all --model RUN/final` ran, final/eval_report.json (perplexity, bits per
byte, BLiMP). What is missing is left out with a note saying how to get it, never filled in. The samples
are generated now, with the settings stated beside them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from stentor import __version__
from stentor.errors import StentorError
from stentor.fileio import atomic_file, atomic_write_text, read_json

# Energy and carbon: stated assumptions, not measurements (the run records device and hours only).
DEVICE_WATTS = {"T4": 70, "A100": 400, "H100": 700, "H200": 700, "L4": 72, "A10G": 150, "V100": 300, "P100": 250}
CPU_WATTS = 65  # a desktop/server CPU package under load
GRID_KG_CO2_PER_KWH = 0.475  # IEA's world-average carbon intensity of electricity
SAMPLE_SEED = 0
SAMPLE_TOKENS = 80


def _device_watts(device: str) -> tuple[int, str]:
    from stentor.train.plan import device_is

    for name, watts in DEVICE_WATTS.items():
        if device_is(name, device):
            return watts, f"{name} board power {watts} W"
    return CPU_WATTS, f"a CPU at {CPU_WATTS} W"


def _evals(run: Path) -> list[dict]:
    """The curves' rows that hold an evaluation, in step order."""
    from stentor.train.curves import read_rows

    return [r for r in read_rows(run / "training_curves.csv") if r["eval_loss"]]


def _trainer_state(run: Path) -> dict | None:
    from stentor.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run)
    return read_json(latest / "trainer_state.json") if latest is not None else None


def _front_matter(cfg, name: str, tokenizer_kind: str, base_model: str | None, results: list[dict], license: str) -> dict:
    from stentor.model.presets import WIDGET_PROMPTS

    tags = ["text-generation", "llama", "stentor2", "small-language-model"]
    if tokenizer_kind == "StentorTokenizer":
        tags.append("tokenmonster")
    if cfg.task == "chat":
        tags.append("conversational")
    meta: dict = {"language": ["en"], "license": license, "library_name": "transformers", "pipeline_tag": "text-generation",
                  "tags": tags}  # fmt: skip
    datasets = [s.hf_id for s in cfg.data.sources if s.hf_id]
    if datasets:
        meta["datasets"] = datasets
    if base_model:
        meta["base_model"] = base_model
    meta["widget"] = [{"text": prompt, "example_title": title} for title, prompt in WIDGET_PROMPTS]
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    return meta


def _loss_metrics(kind: str, row: dict) -> list[dict]:
    """A curves row's eval loss and, when the trainer could write it (not an overflow), its perplexity."""
    metrics = [{"name": f"{kind} Validation Loss", "type": "loss", "value": round(float(row["eval_loss"]), 4)}]
    if row["eval_ppl"]:
        metrics.append({"name": f"{kind} Perplexity", "type": "perplexity", "value": round(float(row["eval_ppl"]), 2)})
    return metrics


def _training_results(cfg, evals: list[dict], state: dict | None) -> list[dict]:
    """model-index entries for the run's own validation split: its curves' evals (the last, and the best)."""
    if not evals:
        return []
    metrics = _loss_metrics("Final", evals[-1])
    best = next((r for r in evals if state and int(r["step"]) == state.get("best_step")), None)
    if best is not None:
        metrics += _loss_metrics("Best", best)
    what = "held-out assistant turns" if cfg.task == "chat" else "validation split"
    names = [s.hf_id or Path(s.path).name for s in cfg.data.sources]
    dataset = {"name": f"{', '.join(names)} ({what})", "type": cfg.data.sources[0].hf_id or names[0]}
    return [{"task": {"type": "text-generation", "name": "Text Generation"}, "dataset": dataset, "metrics": metrics}]


def _hyperparameters(cfg, world: int) -> list[str]:
    b, o, s, p = cfg.batch, cfg.optim, cfg.schedule, cfg.precision
    rows = [
        ("task", cfg.task), ("started from", cfg.init_from or "random init (seed {})".format(cfg.seed)),
        ("processes", world), ("per-device batch", b.per_device_train_batch_size),
        ("gradient accumulation", b.gradient_accumulation_steps),
        ("tokens per step", f"{b.per_device_train_batch_size * world * b.gradient_accumulation_steps * b.block_size:,}"),
        ("block size", b.block_size), ("optimizer", f"AdamW, betas {tuple(o.betas)}, eps {o.eps:g}"),
        ("peak learning rate", f"{o.learning_rate:g}"), ("weight decay", o.weight_decay),
        ("gradient clipping", o.max_grad_norm), ("schedule", f"{s.scheduler}, warmup {s.warmup_ratio:g}" +
                                                  (f", stable {s.stable_ratio:g}" if s.scheduler == "wsd" else "")),
        ("max steps", f"{s.max_train_steps:,}"), ("token budget", "none" if s.token_budget is None else f"{s.token_budget:,}"),
        ("epochs (at most)", s.num_train_epochs), ("mixed precision", p.mixed_precision),
        ("T4 recipe (FP32 norms and critical layers)", p.t4_recipe and p.mixed_precision != "no"),
        ("eval every", f"{cfg.eval.eval_steps} steps on {cfg.eval.max_eval_samples} held-out blocks"),
        ("seed", cfg.seed),
    ]  # fmt: skip
    return ["| Setting | Value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def _evaluation(report: dict | None, evals: list[dict]) -> list[str]:
    from stentor.eval.report import BUCKET_LABELS

    out = ["## Evaluation", ""]
    if evals:
        first, last = evals[0], evals[-1]
        ppl = f" (perplexity {float(last['eval_ppl']):.2f})" if last["eval_ppl"] else ""
        out.append(f"Held-out loss during training: {float(first['eval_loss']):.4f} at step {first['step']}"
                   f"{' (before fine-tuning)' if first['note'].startswith('before fine-tuning') else ''}, "
                   f"{float(last['eval_loss']):.4f} at step {last['step']}{ppl}.")  # fmt: skip
        out.append("")
    if report is None:
        out += ["_Perplexity, bits per byte and BLiMP are not in this card: no `eval_report.json` in the model "
                "directory. Run `stentor eval all --model RUN/final --ppl-data TEXT --blimp-data BLIMP_DIR`, then "
                "`stentor card RUN` again._", ""]  # fmt: skip
        return out
    if report.get("perplexity"):
        out += ["| Data | Tokens scored | Loss (nats/token) | Perplexity | Bits/byte |", "|---|---:|---:|---:|---:|"]
        out += [f"| {r['data']} | {r['scored_tokens']:,} | {r['loss']:.4f} | {r['perplexity']:.2f} | {r['bits_per_byte']:.4f} |"
                for r in report["perplexity"]]  # fmt: skip
        out.append("")
    blimp = report.get("blimp")
    if blimp:
        out.append(f"BLiMP: overall accuracy **{100 * blimp['overall_accuracy']:.2f}%**, mean of "
                   f"{blimp['paradigms_evaluated']} paradigms ({blimp['pairs_evaluated']:,} minimal pairs; a pair counts "
                   "when the good sentence scores strictly higher given the start token).")  # fmt: skip
        out += ["", "| Bucket | Paradigms |", "|---|---:|"]
        out += [f"| {BUCKET_LABELS[k]} | {v['count']} |" for k, v in blimp["buckets"].items()]
        out.append("")
    elif report.get("perplexity"):
        out += ["_BLiMP is not in `eval_report.json`; add `--blimp-data` to `stentor eval all`._", ""]
    return out


def _environment(state: dict | None, world: int) -> list[str]:
    out = ["## Environmental impact", ""]
    if not state or not state.get("train_seconds"):
        return out + ["_Not recorded: this run's checkpoints predate stentor's timing (the trainer state has no "
                      "`train_seconds`)._", ""]  # fmt: skip
    hours = state["train_seconds"] / 3600
    device = state.get("device") or "unknown"
    watts, basis = _device_watts(device)
    kwh = watts * world * hours / 1000
    out += [f"- Hardware: {world} × {device}", f"- Training time: {hours:.2f} h (wall time in the training loop)",
            f"- Energy (estimate): {kwh:.3f} kWh = {world} × {watts} W × {hours:.2f} h",
            f"- Carbon (estimate): {kwh * GRID_KG_CO2_PER_KWH:.3f} kg CO2eq at {GRID_KG_CO2_PER_KWH} kg/kWh",
            "", f"Assumptions: {basis} for the whole time, the world-average grid intensity "
            f"({GRID_KG_CO2_PER_KWH} kg CO2eq/kWh, IEA), no data-centre overhead; host CPU and memory are not "
            "counted. Measured energy would replace these numbers.", ""]  # fmt: skip
    return out


def build_card(run_dir: str | Path, *, name: str | None = None, base_model: str | None = None,
               license: str = "apache-2.0", samples: bool = True) -> str:
    """The model card's text for the run in `run_dir` (see the module docstring)."""
    from stentor.model.build import config_from_dir
    from stentor.model.loading import looks_like_hub_id
    from stentor.model.params import estimate_llama_params
    from stentor.model.presets import SAMPLING_DEFAULTS, WIDGET_PROMPTS
    from stentor.train.config import CONFIG_FILE, load_run_config

    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise StentorError(f"{run} is not a run directory (no {CONFIG_FILE}); give the --out of stentor train or finetune")
    final = run / "final"
    if not (final / "config.json").is_file():
        raise StentorError(f"{run} has no final/ model yet; finish the run (stentor train --resume {run}) first")
    cfg = load_run_config(run)
    mcfg = config_from_dir(final)
    name = name or run.name
    evals, state = _evals(run), _trainer_state(run)
    world = (state or {}).get("world_size", 1)
    report_path = final / "eval_report.json"
    report = read_json(report_path, fix="run `stentor eval all` again") if report_path.exists() else None
    tokenizer_kind = read_json(final / "tokenizer_config.json").get("tokenizer_class", "") if (final / "tokenizer_config.json").exists() else ""
    if base_model is None and cfg.init_from and looks_like_hub_id(cfg.init_from):
        base_model = cfg.init_from
    from stentor.eval.report import model_index_results

    results = _training_results(cfg, evals, state)
    if report:
        results += model_index_results(report.get("perplexity") or [], report.get("blimp"))
    front = yaml.safe_dump(_front_matter(cfg, name, tokenizer_kind, base_model, results, license), sort_keys=False,
                           allow_unicode=True, width=120)  # fmt: skip
    params = estimate_llama_params(mcfg)
    kind = "a chat fine-tune" if cfg.task == "chat" else ("a continued-pretraining run" if cfg.init_from else "a base model")
    body = [f"# {name}", "",
            f"{name} is {kind}: a {params.total / 1e6:.2f}M-parameter Llama-shaped decoder trained with "
            f"stentor {__version__}"
            + (f", starting from `{cfg.init_from}`." if cfg.init_from else " from random initialisation."), ""]  # fmt: skip
    if state:
        skipped = f", {state['skipped_steps']} skipped non-finite steps" if state.get("skipped_steps") else ""
        body += [f"Training: {state['step']:,} optimizer steps, {state['tokens_seen']:,} tokens{skipped}.", ""]
    body += ["## Architecture", "", "| | |", "|---|---|"]
    body += [f"| {k} | {v} |" for k, v in (
        ("layers", mcfg.num_hidden_layers), ("hidden size", mcfg.hidden_size), ("FFN size", mcfg.intermediate_size),
        ("attention heads (KV heads)", f"{mcfg.num_attention_heads} ({mcfg.num_key_value_heads})"),
        ("context", f"{mcfg.max_position_embeddings:,} tokens"), ("vocabulary", f"{mcfg.vocab_size:,}"),
        ("tied embeddings", mcfg.tie_word_embeddings), ("RoPE theta", f"{mcfg.rope_theta:g}"))]  # fmt: skip
    body += ["", "```", params.table(f"Parameters: {params.total:,}", mcfg.num_hidden_layers), "```", ""]
    body += ["## Training", "", "Data: " + ", ".join(f"`{s.hf_id or s.path}`" for s in cfg.data.sources)
             + f" ({cfg.data.val_docs:,} documents held out).", "", *_hyperparameters(cfg, world), ""]  # fmt: skip
    if (run / "training_curves.png").exists():
        with atomic_file(final / "training_curves.png") as tmp:
            shutil.copyfile(run / "training_curves.png", tmp)
        body += ["![training curves](training_curves.png)", ""]
    body += _evaluation(report, evals)
    if samples:
        import stentor

        lm = stentor.load(final)
        settings = {**SAMPLING_DEFAULTS, "max_new_tokens": SAMPLE_TOKENS, "seed": SAMPLE_SEED}
        body += ["## Samples", "", "Generated for this card with "
                 + ", ".join(f"{k} {v}" for k, v in settings.items()) + (", in the chat template" if cfg.task == "chat" else "")
                 + ". Not cherry-picked.", ""]  # fmt: skip
        for title, prompt in WIDGET_PROMPTS:
            text = lm.generate(prompt, chat=cfg.task == "chat", **settings)
            body += [f"**{title}** — `{prompt}`", "", "```", (text if cfg.task == "chat" else prompt + text).strip(), "```", ""]
    body += ["## Limitations", "",
             f"A {params.total / 1e6:.1f}M-parameter model predicts plausible next tokens, not facts: it makes "
             "things up, repeats itself, and has no safety tuning. "
             + ("Its chat fine-tune teaches the format of replies, not knowledge. " if cfg.task == "chat" else
                "It is a base model: it continues text and does not follow instructions. ")
             + "Use it for research, prototyping, speculative decoding and edge experiments.", ""]  # fmt: skip
    body += _environment(state, world)
    body += ["## Citation", "", "```bibtex", f"@misc{{{name.lower().replace('-', '_').replace('/', '_')},", f"  title = {{{name}}},",
             "  note = {Trained with stentor, a reproduction of Stentor2-12M (StentorLabs)},", "}", "```", ""]  # fmt: skip
    return f"---\n{front}---\n" + "\n".join(body)


def write_card(run_dir: str | Path, **options) -> Path:
    """Write RUN/final/README.md (atomically) and return its path."""
    text = build_card(run_dir, **options)
    return atomic_write_text(Path(run_dir) / "final" / "README.md", text)
