"""Fixtures for training tests: a corpus the project generates, a real HF tokenizer trained on it,
and a writer for small recipes. Everything is tiny so each run takes seconds on CPU."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

NOUNS = "cat dog bird fox owl frog mouse horse lion bear".split()
VERBS = "sees chases likes finds follows hears helps meets".split()
ADJS = "small big red quiet happy old young brave".split()


def make_corpus(path: Path, docs: int = 240, seed: int = 0) -> Path:
    """Documents of templated sentences: learnable structure, so a real loss drop is measurable."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(docs):
            sentences = [
                f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)} ."
                for _ in range(rng.randint(4, 12))
            ]
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


@pytest.fixture(scope="session")
def corpus_and_tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train-data")
    corpus = make_corpus(root / "corpus.jsonl")
    return corpus, make_tokenizer(root / "tokenizer", corpus)


def tiny_recipe(corpus: Path, tokenizer: Path, **sections) -> dict:
    """A recipe on stentor2-tiny: 64-token blocks, batch 4 x accumulation 2, fp32, logged every step."""
    recipe = {
        "model": {"preset": "stentor2-tiny"},
        "tokenizer": str(tokenizer),
        "data": {"sources": [{"path": str(corpus)}], "val_docs": 20, "source_token_budget": None, "seed": 1},
        "batch": {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
                  "gradient_accumulation_steps": 2, "block_size": 64, "world_size": 1},
        "optim": {"learning_rate": 3e-3},
        "schedule": {"max_train_steps": 30, "token_budget": None, "num_train_epochs": 1},
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
