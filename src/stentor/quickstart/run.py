"""`stentor quickstart`: the whole pipeline on a small model, offline, in minutes on a laptop CPU.

corpus -> TokenMonster vocabulary (`stentor vocab train`) -> tokenize once (`stentor.data`) -> train
(`stentor train`, the card's recipe scaled down) -> evaluate on held-out text (`stentor eval`) -> sample
generations (`stentor.load`) -> a short Markdown report with the metrics, the curves and the samples.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stentor.errors import StentorError
from stentor.fileio import atomic_write_text, ensure_writable_dir
from stentor.quickstart.corpus import write_jsonl

log = logging.getLogger(__name__)

PROMPTS = ["Once upon a time", "The laws of thermodynamics describe", "def fibonacci(n):", "Return the number of"]
HELD_OUT_EVERY = 20  # every 20th built-in document is held out for the final evaluation


@dataclass
class QuickstartConfig:
    out: Path = Path("quickstart")
    data: list[str] = field(default_factory=list)  # files/globs (txt/jsonl/parquet/csv); empty = built-in corpus
    text_field: str = "text"
    preset: str = "stentor2-mini"
    vocab_size: int = 4000
    max_steps: int = 400
    block_size: int = 256
    batch_size: int = 16
    learning_rate: float = 2e-3
    max_new_tokens: int = 60
    blimp: str | None = None  # a BLiMP jsonl dir, to add the grammar benchmark (slower)
    seed: int = 42


@dataclass
class Stage:
    name: str
    seconds: float
    detail: str


def _timed(stages: list[Stage], name: str):
    class _Timer:
        def __enter__(self):
            log.info("quickstart: %s ...", name)
            self.start = time.perf_counter()
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                stages.append(Stage(name, time.perf_counter() - self.start, getattr(self, "detail", "")))

    return _Timer()


def _corpus(cfg: QuickstartConfig, work: Path) -> tuple[list[str], list[str], str]:
    """Training documents, held-out documents and a description of where they came from."""
    if cfg.data:
        from stentor.data.sources import SourceSpec, iter_documents

        docs = [d for pattern in cfg.data for d in iter_documents(SourceSpec(path=pattern, text_field=cfg.text_field))]
        where = ", ".join(cfg.data)
    else:
        from stentor.quickstart.corpus import stdlib_documents

        docs = stdlib_documents()
        where = "docstrings of the Python standard library (built in)"
    docs = [d for d in docs if d.strip()]
    if len(docs) < 2 * HELD_OUT_EVERY:
        raise StentorError(f"{where}: only {len(docs)} non-empty documents; the quickstart needs at least {2 * HELD_OUT_EVERY}")
    held_out = docs[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY]
    train = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "held_out.jsonl", held_out)
    return train, held_out, where


def _train_recipe(cfg: QuickstartConfig, work: Path, tokenizer_dir: Path, vocab_len: int) -> dict:
    """The card's recipe scaled to a laptop: same optimizer, schedule shape and cadence, fewer steps."""
    from stentor.model import get_preset, padded_vocab_size

    preset = get_preset(cfg.preset)
    return {
        "model": {"preset": cfg.preset, "overrides": {"vocab_size": max(preset.vocab_size, padded_vocab_size(vocab_len - 2))}},
        "tokenizer": str(tokenizer_dir),
        "data": {
            "sources": [{"path": str(work / "train.jsonl"), "text_field": "text"}],
            "val_docs": 50,
            "source_token_budget": None,
            "clean": True,
            "seed": cfg.seed,
        },
        "prepare_workers": 0,
        "batch": {
            "per_device_train_batch_size": cfg.batch_size,
            "per_device_eval_batch_size": cfg.batch_size,
            "gradient_accumulation_steps": 1,
            "block_size": cfg.block_size,
            "world_size": 1,
        },
        "optim": {"learning_rate": cfg.learning_rate},
        # A small corpus is seen many times: the step count, not the epochs, ends the run.
        "schedule": {
            "scheduler": "cosine",
            "warmup_ratio": 0.05,
            "max_train_steps": cfg.max_steps,
            "token_budget": None,
            "num_train_epochs": 1000,
        },
        "eval": {
            "eval_steps": max(cfg.max_steps // 4, 1),
            "max_eval_samples": 64,
            "best_eval_steps": max(cfg.max_steps // 4, 1),
            "best_eval_start_step": max(cfg.max_steps // 2, 1),
        },
        "checkpoint": {"save_every_minutes": 10, "save_total_limit": 1},
        "logging": {"logging_steps": max(cfg.max_steps // 20, 1)},
        "precision": {"mixed_precision": "no", "t4_recipe": False},
        "seed": cfg.seed,
    }


def run_quickstart(cfg: QuickstartConfig) -> Path:
    """Run every stage; returns the path of the report."""
    from stentor.tokenizer.hf import StentorTokenizer, save_tokenizer
    from stentor.tokenizer.train import TrainConfig as VocabConfig
    from stentor.tokenizer.train import train_vocab

    out = ensure_writable_dir(cfg.out)
    stages: list[Stage] = []

    with _timed(stages, "corpus") as t:
        train_docs, held_out, where = _corpus(cfg, out)
        from stentor.quickstart.corpus import reference_documents, stdlib_conversations

        # What configs/finetune-*.yaml fine-tune the quickstart model on: a chat set and a new domain.
        write_jsonl(out / "chat.jsonl", stdlib_conversations())
        write_jsonl(out / "reference.jsonl", reference_documents())
        t.detail = (f"{len(train_docs):,} training + {len(held_out):,} held-out documents from {where}; "
                    "chat.jsonl and reference.jsonl for stentor finetune")  # fmt: skip

    with _timed(stages, "vocabulary") as t:
        vocab = train_vocab([str(out / "train.jsonl")], VocabConfig(vocab_size=cfg.vocab_size), out / "vocab.vocab")
        tokenizer = StentorTokenizer.from_vocab(vocab)
        save_tokenizer(tokenizer, out / "tokenizer")
        t.detail = f"TokenMonster strict/capcode-1 vocabulary of {vocab.vocab_size:,} tokens; HF tokenizer of {len(tokenizer):,}"

    with _timed(stages, "training") as t:
        from stentor.train import load_config, train

        recipe_path = out / "train.yaml"
        atomic_write_text(recipe_path, yaml.safe_dump(_train_recipe(cfg, out, out / "tokenizer", len(tokenizer)), sort_keys=False))
        result = train(load_config(recipe_path), out / "run")
        t.detail = f"{result.steps} steps, {result.tokens:,} tokens; recipe in train.yaml"

    model_dir = out / "run" / "final"
    with _timed(stages, "evaluation") as t:
        import stentor
        from stentor.eval.perplexity import Corpus, evaluate_perplexity

        from stentor.data import clean_text

        lm = stentor.load(model_dir)
        # Cleaned like the training text (clean_text joins lines), so the score measures the same distribution.
        held_out_clean = [c for c in map(clean_text, held_out) if c]
        ppl = evaluate_perplexity(lm.model, lm.hf_tokenizer, Corpus(held_out_clean, "held-out documents"), progress=False)
        blimp = None
        if cfg.blimp:
            from stentor.eval.blimp import evaluate_blimp, load_blimp

            blimp = evaluate_blimp(lm.model, lm.hf_tokenizer, load_blimp(cfg.blimp, limit=100))
        t.detail = f"held-out perplexity {ppl.perplexity:.2f}, {ppl.bits_per_byte:.3f} bits/byte"

    with _timed(stages, "samples") as t:
        samples = [(p, lm.generate(p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)) for p in PROMPTS]
        t.detail = f"{len(samples)} prompts, card sampling defaults"

    report = out / "report.md"
    atomic_write_text(report, _report(cfg, result, ppl, blimp, stages, samples, train_docs))
    return report


def _unigram_entropy_nats(tokens) -> float:
    import numpy as np

    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _report(cfg, result, ppl, blimp, stages, samples, train_docs) -> str:
    from stentor.data import PreparedData

    prepared = PreparedData.load(cfg.out / "run" / "data")
    unigram = _unigram_entropy_nats(prepared.train_tokens)
    lines = [
        "# stentor quickstart report",
        "",
        f"Preset `{cfg.preset}`, trained offline on {len(train_docs):,} documents. Model: `run/final/` "
        "(loads with `AutoModelForCausalLM` and `stentor.load`); curves: `run/training_curves.csv`.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| training steps / tokens | {result.steps} / {result.tokens:,} |",
        f"| final eval loss (validation docs) | {result.final_eval_loss:.4f} |" if result.final_eval_loss else "",
        f"| best eval loss | {result.best_eval_loss:.4f} (step {result.best_step}) |" if result.best_eval_loss else "",
        f"| unigram entropy of the training tokens | {unigram:.4f} nats |",
        f"| held-out loss / perplexity | {ppl.loss:.4f} / {ppl.perplexity:.2f} |",
        f"| held-out bits per byte | {ppl.bits_per_byte:.4f} |",
        f"| characters per token | {ppl.chars_per_token:.2f} |",
    ]
    if blimp is not None:
        lines.append(f"| BLiMP (100 pairs per paradigm) | {100 * blimp.overall:.2f}% |")
    lines = [line for line in lines if line]
    lines += ["", "![training curves](run/training_curves.png)", "", "## Stages", "", "| stage | seconds | what |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.seconds:.1f} | {s.detail} |" for s in stages]
    lines += ["", "## Samples", "", "Temperature 0.8, top-p 0.7, repetition penalty 1.2 (the card's defaults).", ""]
    for prompt, text in samples:
        lines += [f"**{prompt}**", "", "```", (prompt + text).strip(), "```", ""]
    if not math.isfinite(ppl.loss) or ppl.loss >= unigram:
        lines += ["> The held-out loss is not below the unigram entropy: the model learned little. Train longer (`--steps`)."]
    return "\n".join(lines) + "\n"
