"""benchmarks/gpu_check.py --cpu-smoke: every stage of the GPU check runs at toy size on CPU, so the check
is known to work before the rare minutes on a GPU (CI runs it; the real run is on a GPU machine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_helpers import REPO, stentor_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_cpu_smoke_runs_every_stage_and_each_passes(tmp_path):
    out = tmp_path / "check.json"
    table = tmp_path / "stdout.txt"  # a file, not a pipe: only stderr is read while the check runs
    with table.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--out", str(out), "--work",
                                 str(tmp_path / "work")], stdout=sink, stderr=subprocess.PIPE, text=True,
                                env=stentor_env(), cwd=REPO)  # fmt: skip
    log = []
    for line in proc.stderr:
        log.append(line)
        if line.startswith("gpu_check: recipe done"):  # the report on disk already holds what was measured so far
            assert list(json.loads(out.read_text())) == ["environment", "recipe"]
    code, stdout = proc.wait(timeout=280), table.read_text()
    assert code == 0, stdout[-3000:] + "".join(log)[-3000:]
    assert any(line.startswith("gpu_check: recipe done") for line in log)
    report = json.loads(out.read_text())
    assert list(report) == ["environment", "recipe", "variants", "resume", "eval", "ddp", "total_seconds"]
    assert all(report[k]["ok"] for k in report if k != "environment")
    recipe = report["recipe"]
    islands = recipe["fp32_islands"]
    assert islands["critical_linear_dtypes"] == ["torch.float32"] and islands["other_linear_dtypes"] == ["torch.bfloat16"]
    assert islands["norms_fp32"].startswith("5/5 ")  # 2 layers x 2 + the final norm, each call equal to the FP32 formula
    assert recipe["last_loss"] < recipe["first_loss"] and recipe["skipped_steps"] == 0 and recipe["host_batch_ms"] > 0
    assert {"prefetch off", "prefetch on"} <= set(report["variants"])
    assert report["resume"]["max_loss_diff_after_resume"] == 0.0  # on CPU the resumed curve is the same curve
    assert report["eval"]["ppl_rel_diff"] == 0.0 and report["ddp"]["processes"] == 2
    assert "recipe ok" in stdout and "tokens_per_s" in stdout  # the table a person reads


def test_without_a_gpu_the_real_check_says_what_to_do():
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], capture_output=True, text=True, timeout=120,
                          env=stentor_env(), cwd=REPO)  # fmt: skip
    assert done.returncode == 2 and "--cpu-smoke" in done.stdout and "Traceback" not in done.stderr
