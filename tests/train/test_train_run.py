"""End to end on text the project makes: a real run, its outputs, and exact resume after kills.

One uninterrupted baseline run (module fixture) is compared, row for row, with a run that is
SIGKILLed mid-training, SIGKILLed again inside a checkpoint save, stopped with Ctrl-C (SIGINT)
and finally resumed to the end.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from train_helpers import REPO, run_stentor, stentor_env, tiny_recipe, write_recipe

from stentor.train.curves import COLUMNS

pytestmark = pytest.mark.timeout(180)


def rows(run: Path) -> list[dict]:
    with open(run / "training_curves.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def recipe(corpus_and_tokenizer, tmp_path_factory) -> Path:
    corpus, tokenizer = corpus_and_tokenizer
    root = tmp_path_factory.mktemp("recipe")
    data = tiny_recipe(corpus, tokenizer)
    data["prepared_dir"] = str(root / "prepared")  # tokenized once, reused by every run below
    data["prepare_workers"] = 1
    return write_recipe(root / "tiny.yaml", data)


@pytest.fixture(scope="module")
def baseline(recipe, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("baseline") / "run"
    result = run_stentor("train", "--config", str(recipe), "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_run_writes_curves_checkpoints_and_loadable_model_dirs(recipe, baseline):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stentor.data import PreparedData
    from stentor.train.plan import unigram_entropy

    got = rows(baseline)
    assert tuple(got[0]) == COLUMNS
    assert [int(r["step"]) for r in got] == list(range(1, 41))  # logging_steps 1, no duplicates
    evals = {int(r["step"]): r for r in got if r["eval_loss"]}
    assert sorted(evals) == [10, 20, 25, 30, 40]  # eval_steps 10, epoch 0 end at 25, final at 40
    assert "epoch 0 end" in evals[25]["note"] and "final" in evals[40]["note"]
    assert "best" in evals[10]["note"] and "best" in evals[20]["note"]
    for r in evals.values():
        assert float(r["eval_ppl"]) == pytest.approx(np.exp(float(r["eval_loss"])))
    assert float(got[-1]["epoch"]) > 1.0

    # It learned: eval loss ends well below a context-free model's loss on these tokens.
    entropy = unigram_entropy(PreparedData.load(recipe.parent / "prepared").train_tokens)
    final = float(evals[40]["eval_loss"])
    print(f"unigram entropy {entropy:.4f} nats; final eval loss {final:.4f}")
    assert final < entropy - 0.5

    assert (baseline / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpts = sorted(p.name for p in (baseline / "checkpoints").glob("step-*"))
    assert ckpts == ["step-35", "step-40"]  # save_total_limit 2
    assert (baseline / "checkpoints" / "latest").read_text().strip() == "step-40"

    for name in ("best", "final"):
        model = AutoModelForCausalLM.from_pretrained(baseline / name)
        tok = AutoTokenizer.from_pretrained(baseline / name)
        assert model.config.eos_token_id == tok.eos_token_id and model.config.vocab_size >= len(tok)
        ids = tok("the small cat sees", return_tensors="pt").input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
        assert out.shape[1] > ids.shape[1]


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stentor", "train", *args], cwd=REPO, env=env or stentor_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_until(pred, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def _last_step(run: Path) -> int:
    try:
        return max((int(r["step"]) for r in rows(run)), default=0)
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _latest(run: Path) -> str:
    return (run / "checkpoints" / "latest").read_text().strip()


@pytest.mark.slow
def test_killed_anywhere_then_resumed_matches_the_uninterrupted_run(recipe, baseline, tmp_path):
    run = tmp_path / "run"

    # 1. SIGKILL mid-training (past the step-5 checkpoint, before the step-10 one finishes).
    proc = _start("--config", str(recipe), "--out", str(run))
    _wait_until(lambda: _last_step(run) >= 7, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _latest(run) == "step-5"

    # 2. Resume; SIGKILL *inside* the step-10 save (files written, not yet renamed into place).
    proc = _start("--resume", str(run), env={**stentor_env(), "STENTOR_TEST_SAVE_SLEEP": "60"})
    _wait_until(lambda: any((run / "checkpoints").glob(".step-10.*.tmp")), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _latest(run) == "step-5" and not (run / "checkpoints" / "step-10").exists()

    # 3. Resume; Ctrl-C saves a resumable checkpoint at the current step and exits with 130.
    proc = _start("--resume", str(run))
    _wait_until(lambda: _last_step(run) >= 12, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-3000:]
    stopped = int(_latest(run).split("-")[1])
    assert stopped >= 12 and "stentor train --resume" in out and "Traceback" not in out

    # 4. Resume to the end: every row (train loss per step, evals, notes) equals the baseline's, bit for bit.
    result = run_stentor("train", "--resume", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows(run) == rows(baseline)
    assert not list((run / "checkpoints").glob(".*.tmp"))
    from safetensors.torch import load_file

    assert all((load_file(run / "final" / "model.safetensors")[k] == v).all()
               for k, v in load_file(baseline / "final" / "model.safetensors").items())
