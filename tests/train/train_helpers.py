"""Helpers for training tests: a corpus the project generates, a real HF tokenizer trained on it,
small recipes, and running `python -m stentor`. Everything is tiny so each run takes seconds on CPU."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

NOUNS = "cat dog bird fox owl frog mouse horse lion bear".split()
VERBS = "sees chases likes finds follows hears helps meets".split()
ADJS = "small big red quiet happy old young brave".split()


def make_corpus(path: Path, docs: int = 240, seed: int = 0) -> Path:
    """Documents of templated sentences where each adjective fixes its noun and each noun its verb:
    a unigram model pays ~2.9 nats/token here, a model that learns the bigrams far less."""
    rng = random.Random(seed)
    noun_of = dict(zip(ADJS, NOUNS))
    verb_of = {noun: VERBS[i % len(VERBS)] for i, noun in enumerate(NOUNS)}
    with open(path, "w") as f:
        for _ in range(docs):
            sentences = []
            for _ in range(rng.randint(4, 12)):
                adj = rng.choice(ADJS)
                noun = noun_of[adj]
                sentences.append(f"the {adj} {noun} {verb_of[noun]} the {rng.choice(NOUNS)} .")
            f.write(json.dumps({"text": " ".join(sentences), "id": len(sentences)}) + "\n")
    return path


def make_tokenizer(out_dir: Path, corpus: Path) -> Path:
    """A word-level HF fast tokenizer (tokenizers library), saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["</s>", "<s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    fast.save_pretrained(str(out_dir))
    return out_dir


def word_tokenizer(words: list[str], extra: tuple[str, ...] = ()):
    """A StentorTokenizer whose TokenMonster vocabulary holds each word (with and without a leading space), the
    `extra` pieces and every byte (so any text encodes); it carries the card's chat template."""
    from stentor.tokenizer.hf import StentorTokenizer
    from stentor.tokenizer.tokenmonster import build_vocab_from_yaml

    lines = ["charset: utf-8", "capcode: 0", "normalization: none", "include-256-bytes: true", "tokens:"]
    lines += [f"  - token: {json.dumps(t)}" for t in [p for w in words for p in (w, f" {w}")] + list(extra)]
    return StentorTokenizer.from_vocab(build_vocab_from_yaml("\n".join(lines) + "\n"))


def tokenmonster_model(out: Path, words: list[str]) -> Path:
    """A random-init stentor2-tiny saved with `word_tokenizer(words)`, as `stentor` saves a model directory."""
    from stentor.model import get_preset
    from stentor.model.build import build_model, save_model_dir
    from stentor.model.presets import padded_vocab_size

    tokenizer = word_tokenizer(words)
    cfg = get_preset("stentor2-tiny").replace(
        vocab_size=padded_vocab_size(len(tokenizer)), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return Path(save_model_dir(build_model(cfg, seed=0), cfg, out, tokenizer=tokenizer))


def tiny_recipe(corpus: Path, tokenizer: Path, **sections) -> dict:
    """A recipe on stentor2-tiny (vocab cut to 128 for the word-level tokenizer): 64-token blocks,
    batch 4 x accumulation 2, fp32, WSD at a high LR (few steps), logged every step."""
    recipe = {
        "model": {"preset": "stentor2-tiny", "overrides": {"vocab_size": 128}},
        "tokenizer": str(tokenizer),
        "data": {"sources": [{"path": str(corpus)}], "val_docs": 20, "source_token_budget": None, "seed": 1},
        "batch": {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
                  "gradient_accumulation_steps": 2, "block_size": 64, "world_size": 1},
        "optim": {"learning_rate": 2e-2},
        "schedule": {"scheduler": "wsd", "max_train_steps": 40, "token_budget": None, "num_train_epochs": 2},
        "eval": {"eval_steps": 10, "max_eval_samples": 32, "best_eval_steps": 10, "best_eval_start_step": 10},
        "checkpoint": {"save_every_minutes": None, "save_steps": 5, "save_total_limit": 2},
        "logging": {"logging_steps": 1},
        "precision": {"mixed_precision": "no", "t4_recipe": False},
        "seed": 7,
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            recipe[section].update(values)
        else:
            recipe[section] = values
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def stentor_env() -> dict:
    # One thread per process: deterministic kernels and no oversubscription on shared CI cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}


def run_stentor(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stentor", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or stentor_env(), cwd=REPO)
