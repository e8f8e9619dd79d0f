"""Reports, the model card update, and the `stentor eval` CLI end to end in subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from stentor.eval.blimp import BlimpResult, ParadigmScore
from stentor.eval.perplexity import PerplexityResult
from stentor.eval.report import SECTION_BEGIN, update_model_card, write_eval_report

from .conftest import english_like, save_tiny_model
from .test_blimp import write_paradigm

CARD = """---
language:
- en
license: apache-2.0
model-index:
- name: Stentor2-12M
  results:
  - task:
      type: text-generation
    dataset:
      name: FineWeb-HQ (validation split)
      type: epfml/FineWeb-HQ
    metrics:
    - name: Best Perplexity (at best checkpoint)
      type: perplexity
      value: 26.61
---
# Stentor2-12M

Hand-written text that must survive.
"""

PPL = PerplexityResult("wiki.test.raw", "blocks", 1024, 1024, 1, 5000, 4995, 4998, 20000, 19000, 4995 * 3.3)
BLIMP = BlimpResult([ParadigmScore("passive_1", "syntax", "argument_structure", 900, 1000),
                     ParadigmScore("passive_2", "syntax", "argument_structure", 520, 1000)])  # fmt: skip


def test_card_update_keeps_everything_else_and_is_idempotent(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(CARD)
    for _ in range(2):
        write_eval_report(tmp_path, str(tmp_path), [PPL], BLIMP, card=readme)
    text = readme.read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["language"] == ["en"] and meta["license"] == "apache-2.0"
    results = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "Stentor2-12M"
    assert results[0]["metrics"][0]["value"] == 26.61  # the card's own entry is untouched
    assert len(results) == 3  # + one perplexity dataset + BLiMP, not duplicated by the second run
    blimp = next(r for r in results if r["dataset"]["type"] == "nyu-mll/blimp")
    assert blimp["metrics"][0] == {"name": "BLiMP Overall Accuracy", "type": "accuracy", "value": 71.0}
    ppl = next(r for r in results if r["dataset"]["name"] == "wiki.test.raw")
    assert {m["type"]: m["value"] for m in ppl["metrics"]} == {"loss": 3.3, "perplexity": 27.11, "bits_per_byte": 1.189}
    assert "Hand-written text that must survive." in text and text.count(SECTION_BEGIN) == 1
    assert "&id" not in text and "*id" not in text  # plain YAML, no anchors
    assert "1 strong / 0 moderate / 1 weak" in text
    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert report["blimp"]["overall_accuracy"] == pytest.approx(0.71)
    assert report["perplexity"][0]["bits_per_byte"] == pytest.approx(4995 * 3.3 / 0.6931471805599453 / 20000)
    assert (tmp_path / "blimp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_without_front_matter_gets_one(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# my model\n\nnotes\n")
    update_model_card(readme, "my-model", [{"dataset": {"name": "x", "type": "x"}, "metrics": []}], "results")
    text = readme.read_text()
    assert text.startswith("---\nmodel-index:\n- name: my-model\n") and "# my model\n\nnotes\n" in text


def stentor(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "stentor", "eval", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)  # fmt: skip


def one_line_error(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("stentor: error:") and needle in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_bad_inputs(tmp_path, model_dir, capsys):
    from stentor.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["eval", "ppl", "--model", str(model_dir), "--data", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    partial = tmp_path / "blimp"
    partial.mkdir()
    write_paradigm(partial, "passive_1", [("A.", "B.")])
    assert main(["eval", "blimp", "--model", str(model_dir), "--data", str(partial)]) == 2
    assert "lacks 66 of the 67 paradigm files" in capsys.readouterr().err
    # The same path through a real process: one line on stderr, no traceback.
    bare = save_tiny_model(tmp_path / "bare")  # weights, no tokenizer
    text = tmp_path / "t.txt"
    text.write_text("Some text.")
    one_line_error(stentor("ppl", "--model", str(bare), "--data", str(text)), "tokenizer")


def test_cli_all_writes_report_and_card(tmp_path, model_dir):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    (model / "README.md").write_text("# tiny\n\nkeep me\n")
    text = tmp_path / "t.txt"
    text.write_text(english_like(20, seed=2))
    data = tmp_path / "blimp"
    data.mkdir()
    write_paradigm(data, "passive_1", [("The cat was seen.", "The cat was saw.")] * 4)
    write_paradigm(data, "passive_2", [("A dog ran.", "A dog runned.")] * 4, term="s-selection")
    proc = stentor("all", "--model", str(model), "--ppl-data", str(text), "--block-size", "64", "--blimp-data", str(data),
                   "--tasks", "passive_1", "passive_2", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((model / "eval_report.json").read_text())
    assert report["blimp"]["paradigms_evaluated"] == 2 and report["blimp"]["pairs_evaluated"] == 8
    assert report["perplexity"][0]["block_size"] == 64 and report["perplexity"][0]["text_bytes"] == len(text.read_bytes())
    card = (model / "README.md").read_text()
    assert "keep me" in card and "BLiMP Overall Accuracy" in card and "| Perplexity |" in card
