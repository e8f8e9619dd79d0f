"""A write that runs out of room half way: the previous artifact stays, no partial is left, and the command ends
with one `stentor: error:` line naming the path. The room runs out for real: each command runs in a child process
under a file-size limit (RLIMIT_FSIZE, the EFBIG a full disk or quota gives), smaller than the file it must write."""

from __future__ import annotations

import hashlib
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import REPO, make_corpus, make_tokenizer, stentor_env, tiny_recipe, tokenmonster_model, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def stentor(*args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    """`python -m stentor ARGS`, with at most `limit` bytes per written file when given."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "stentor", *map(str, args)], capture_output=True, text=True,
                          timeout=240, env=stentor_env(), cwd=REPO, preexec_fn=cap if limit else None)  # fmt: skip


def snapshot(path: Path) -> dict[str, str]:
    """Every file under `path` (or `path` itself) by relative name -> sha256: what "left as it was" means."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return {str(f.relative_to(path.parent)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def assert_refused(result: subprocess.CompletedProcess, target: Path, named: str | None = None) -> None:
    """One error line naming `target` (or the path starting with `named`) and the fix, no traceback, and no
    temporary file left beside it."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("stentor: error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and f"cannot write {named or f'{target}:'}" in errors[0], result.stderr[-3000:]
    assert "no space left" in errors[0] and "free some space or write somewhere else" in errors[0]
    partials = [p for p in target.parent.rglob(".*") if p.name.endswith(".tmp")]
    assert not partials, f"partials left behind: {partials}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model with a TokenMonster tokenizer, as `stentor` saves one (every exporter accepts it)."""
    return tokenmonster_model(tmp_path_factory.mktemp("full") / "model", "once upon a time the cat sat on mat".split())


@pytest.mark.parametrize(
    "command, output",
    [
        (["export", "gguf", "--dtype", "f32"], "tiny.gguf"),
        (["export", "onnx"], "onnx"),
        (["quantize", "--method", "int8"], "int8"),
    ],
    ids=["gguf export", "onnx export", "quantized dir"],
)
def test_an_export_that_runs_out_of_room_leaves_the_previous_one(model_dir, tmp_path, command, output):
    target = tmp_path / output
    first = stentor(*command, "--model", model_dir, "-o", target)
    assert first.returncode == 0, first.stderr[-2000:]
    before = snapshot(target)
    biggest = max((target.parent / name).stat().st_size for name in before)
    assert_refused(stentor(*command, "--model", model_dir, "-o", target, limit=biggest // 2), target)
    assert snapshot(target) == before


def test_a_vocabulary_write_that_runs_out_of_room_leaves_the_previous_one(model_dir, tmp_path):
    yaml_file = tmp_path / "tokens.yaml"
    assert stentor("vocab", "export-yaml", model_dir / "tokenizer.vocab", "-o", yaml_file).returncode == 0
    vocab = tmp_path / "my.vocab"
    assert stentor("vocab", "build", yaml_file, "-o", vocab).returncode == 0
    before = snapshot(vocab)
    assert_refused(stentor("vocab", "build", yaml_file, "-o", vocab, limit=vocab.stat().st_size // 2), vocab)
    assert snapshot(vocab) == before
    hf_dir = tmp_path / "hf"
    assert stentor("vocab", "hf", vocab, "-o", hf_dir).returncode == 0
    before = snapshot(hf_dir)
    assert_refused(stentor("vocab", "hf", vocab, "-o", hf_dir, limit=vocab.stat().st_size // 2), hf_dir)
    assert snapshot(hf_dir) == before


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full-train")
    corpus = make_corpus(root / "corpus.jsonl")
    data = tiny_recipe(corpus, make_tokenizer(root / "tokenizer", corpus),
                       schedule={"max_train_steps": 10}, checkpoint={"save_steps": 5})  # fmt: skip
    data["prepared_dir"] = str(root / "prepared")
    data["prepare_workers"] = 0
    return write_recipe(root / "tiny.yaml", data)


def test_token_files_that_run_out_of_room_leave_the_previous_ones(recipe, tmp_path):
    out = tmp_path / "prepared"
    assert stentor("data", "prepare", "--config", recipe, "--out", out).returncode == 0
    before = snapshot(out)
    result = stentor("data", "prepare", "--config", recipe, "--out", out, "--set", "data.seed=2",
                     limit=(out / "train.bin").stat().st_size // 2)  # fmt: skip
    assert_refused(result, out / "train.bin", named=f"{out}/")  # a token shard or train.bin itself
    assert {name: digest for name, digest in snapshot(out).items() if "/.work/" not in name} == before
    assert stentor("data", "prepare", "--config", recipe, "--out", out, "--set", "data.seed=2").returncode == 0


def test_a_checkpoint_that_runs_out_of_room_keeps_the_last_one_and_resumes(recipe, tmp_path):
    run = tmp_path / "run"
    # A run stopped with Ctrl-C after a few steps: it saves a resumable checkpoint and exits 130.
    proc = subprocess.Popen([sys.executable, "-m", "stentor", "train", "--config", str(recipe), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=stentor_env(), cwd=REPO)  # fmt: skip
    deadline = time.monotonic() + 120
    while len((run / "training_curves.csv").read_text().splitlines() if (run / "training_curves.csv").exists() else []) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled before it was stopped"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    checkpoints = run / "checkpoints"
    stopped = (checkpoints / "latest").read_text().strip()
    before = snapshot(checkpoints)
    optimizer = (checkpoints / stopped / "optimizer.pt").stat().st_size
    result = stentor("train", "--resume", run, limit=optimizer // 2)
    assert_refused(result, checkpoints / "step-", named=f"{checkpoints}/step-")
    assert snapshot(checkpoints) == before  # the last checkpoint whole, `latest` still names it
    again = stentor("train", "--resume", run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (checkpoints / "latest").read_text().strip() == "step-10" and (run / "final" / "model.safetensors").is_file()
