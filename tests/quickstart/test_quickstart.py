import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from stentor.quickstart.corpus import stdlib_documents, write_jsonl
from stentor.quickstart.run import QuickstartConfig, run_quickstart


def test_builtin_corpus_is_real_prose_and_deterministic(tmp_path):
    docs = stdlib_documents(max_chars=200_000)
    assert sum(map(len, docs)) >= 200_000
    assert all(len(d) >= 200 for d in docs)
    words = re.findall(r"[a-z]+", " ".join(docs).lower())
    common = {"the", "of", "and", "is", "to", "a"}
    assert sum(w in common for w in words) / len(words) > 0.1  # English function words, not code
    assert docs == stdlib_documents(max_chars=200_000)
    small = stdlib_documents(max_chars=50_000)
    lines = write_jsonl(tmp_path / "c.jsonl", small).read_text().splitlines()
    assert [json.loads(x)["text"] for x in lines] == small


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """A small quickstart run: (its config, the path of its report)."""
    tmp_path = tmp_path_factory.mktemp("qs")
    write_jsonl(tmp_path / "corpus.jsonl", stdlib_documents(max_chars=150_000))
    cfg = QuickstartConfig(
        out=tmp_path / "quickstart",
        data=[str(tmp_path / "corpus.jsonl")],
        preset="stentor2-tiny",
        vocab_size=1000,
        max_steps=40,
        block_size=64,
        batch_size=8,
        learning_rate=5e-3,
        max_new_tokens=8,
    )
    return cfg, run_quickstart(cfg)


def test_quickstart_end_to_end(quickstart):
    cfg, report = quickstart
    text = report.read_text()
    for stage in ("corpus", "vocabulary", "training", "evaluation", "samples"):
        assert f"| {stage} |" in text
    held_out = float(re.search(r"held-out loss / perplexity \| ([0-9.]+)", text).group(1))
    unigram = float(re.search(r"unigram entropy of the training tokens \| ([0-9.]+)", text).group(1))
    assert math.isfinite(held_out) and held_out < math.log(1024)  # far better than uniform over the vocabulary
    assert unigram > 0
    run = cfg.out / "run"
    curves = (run / "training_curves.csv").read_text().splitlines()
    assert curves[0] == "step,epoch,train_loss,eval_loss,eval_ppl,note"
    assert (run / "training_curves.png").stat().st_size > 0
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert model.config.vocab_size >= 1000
    assert (cfg.out / "tokenizer" / "tokenizer_config.json").is_file()


def test_quickstart_bad_data_is_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    res = subprocess.run(
        [sys.executable, "-m", "stentor", "quickstart", "--data", str(empty), "--out", str(tmp_path / "q")],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if not line.startswith("INFO ")]
    assert errors == [errors[0]] and errors[0].startswith("stentor: error:") and "non-empty documents" in errors[0]


def _eval_losses(run: Path) -> list[float]:
    rows = (run / "training_curves.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[3]) for r in rows if r.split(",")[3]]


@pytest.mark.parametrize("recipe", ["finetune-chat", "finetune-text"])
def test_the_quickstart_model_fine_tunes_with_the_shipped_recipes(quickstart, recipe):
    """The recipes as shipped (shortened with --set), from where `stentor quickstart` left its files."""
    cfg, _ = quickstart
    repo = Path(__file__).resolve().parents[2]
    out = cfg.out.parent / "runs" / recipe
    res = subprocess.run(
        [sys.executable, "-m", "stentor", "finetune", "--from", "quickstart/run/final", "--config",
         str(repo / "configs" / f"{recipe}.yaml"), "--out", str(out), "--set", "schedule.max_train_steps=40",
         "--set", "eval.eval_steps=20", "--set", "batch.block_size=64"],
        capture_output=True, text=True, timeout=300, cwd=cfg.out.parent,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    losses = _eval_losses(out)
    assert losses[-1] < losses[0], losses  # held-out loss (assistant turns for chat) below the start's
    if recipe == "finetune-chat":
        assert len((cfg.out / "chat.jsonl").read_text().splitlines()) > 1000  # the quickstart wrote its chat set
