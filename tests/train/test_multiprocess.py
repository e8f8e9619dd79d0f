"""Two CPU processes over gloo (`accelerate launch --multi_gpu` on a machine without CUDA; in
accelerate 1.x `--cpu` with several processes needs MPI): the data is split, rank 0 alone writes."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
from serving import free_port
from train_helpers import REPO, make_corpus, stentor_env, tiny_recipe, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_two_processes_split_the_data_and_rank0_writes_once(corpus_and_tokenizer, tmp_path):
    corpus, tokenizer = corpus_and_tokenizer
    recipe = tiny_recipe(corpus, tokenizer, schedule={"max_train_steps": 8, "num_train_epochs": 1},
                         eval={"eval_steps": 4, "best_eval_steps": 4, "best_eval_start_step": 4},
                         checkpoint={"save_steps": 4}, logging={"logging_steps": 1, "record_data_order": True})
    recipe["prepare_workers"] = 1
    path = write_recipe(tmp_path / "mp.yaml", recipe)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "stentor", "train", "--config", str(path), "--out", str(run)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=stentor_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]

    with open(run / "training_curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # one writer: no duplicated rows
    evals = [r for r in rows if r["eval_loss"]]
    assert [int(r["step"]) for r in evals] == [4, 8] and "final" in evals[-1]["note"]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-4", "step-8"]
    assert (run / "final" / "model.safetensors").is_file() and (run / "best" / "tokenizer.json").is_file()
    state = json.loads((run / "checkpoints" / "step-8" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["tokens_seen"] == 8 * 4 * 2 * 2 * 64
    assert not list(run.glob(".*.tmp")) and not list((run / "checkpoints").glob(".*.tmp"))

    seen = {}
    for rank in (0, 1):
        records = [json.loads(line) for line in (run / "data_order" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(8))
        seen[rank] = [b for r in records for b in r["blocks"]]
        assert len(seen[rank]) == 8 * 4 * 2 == len(set(seen[rank]))
    assert not set(seen[0]) & set(seen[1])  # the ranks trained on disjoint blocks


def test_fewer_eval_blocks_than_processes_do_not_hang(corpus_and_tokenizer, tmp_path):
    """One eval block for two ranks: rank 1 has nothing to score. Through the DDP wrapper rank 0's eval
    forward broadcast buffers that rank 1 never joined, and the run hung; eval runs on the unwrapped model."""
    corpus, tokenizer = corpus_and_tokenizer
    recipe = tiny_recipe(corpus, tokenizer, schedule={"max_train_steps": 2, "num_train_epochs": 1},
                         eval={"eval_steps": 1, "best_eval_steps": 1, "best_eval_start_step": 1, "max_eval_samples": 1},
                         checkpoint={"save_steps": None})  # fmt: skip
    recipe["prepare_workers"] = 1
    path = write_recipe(tmp_path / "mp.yaml", recipe)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "stentor", "train", "--config", str(path), "--out", str(tmp_path / "run")]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=stentor_env(), cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("two processes with one eval block between them hung")
    assert result.returncode == 0, result.stderr[-4000:]
    with open(tmp_path / "run" / "training_curves.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f) if r["eval_loss"]] == ["1", "2"]


def test_rank1_waits_for_the_data_on_the_files_not_in_a_collective(corpus_and_tokenizer, tmp_path):
    """Rank 0 tokenizes for longer than the process-group timeout (and the model is compiled around DDP). Rank 1 used to wait in a barrier, which
    timed out (NCCL's 10 minutes against hours of streaming on a real run); it waits for meta.json now."""
    _, tokenizer = corpus_and_tokenizer
    recipe = tiny_recipe(make_corpus(tmp_path / "big.jsonl", docs=60_000), tokenizer)
    recipe["prepare_workers"], recipe["ddp_timeout"] = 0, 3
    recipe["precision"]["compile"] = True  # compiling is lazy: nothing compiles until a forward, none runs here
    path = write_recipe(tmp_path / "mp.yaml", recipe)
    script = tmp_path / "build.py"
    script.write_text(
        "import sys, time\n"
        "from stentor.train.config import load_config\n"
        "from stentor.train.trainer import Trainer\n"
        "t0 = time.monotonic()\n"
        "trainer = Trainer(load_config(sys.argv[1]), sys.argv[2])\n"
        "trainer.acc.wait_for_everyone()\n"
        "print(f'rank {trainer.rank} ready after {time.monotonic() - t0:.1f} s', flush=True)\n"
        "inner = getattr(trainer.model, '_orig_mod', None) or trainer.model.module\n"
        "print(f'rank {trainer.rank} wraps {type(trainer.model).__name__}({type(inner).__name__})', flush=True)\n"
    )
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(script), str(path), str(tmp_path / "run")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=stentor_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    ready = dict(re.findall(r"rank (\d) ready after ([\d.]+) s", result.stdout))  # the ranks' lines may interleave
    assert set(ready) == {"0", "1"}, result.stdout
    assert float(ready["1"]) > 3  # it waited past the timeout, and no collective failed
    # torch.compile wraps the DDP model, so the gradient all-reduce can overlap the compiled backward; compiled
    # before accelerate's prepare, DDP wrapped the compiled module instead (DistributedDataParallel(OptimizedModule)).
    assert sorted(re.findall(r"rank \d wraps (\w+\(\w+\))", result.stdout)) == ["OptimizedModule(DistributedDataParallel)"] * 2
